"""Faults on a seeded schedule: kill -9 of each service, stalls of the broker and Redis,
malformed events, bad promotions; each with the recovery that followed."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlbus.errors import InvalidInput, MlbusError, RetryableError
from mlbus.runstate import pid_alive, read_state

from ._checks import (
    healthy_since,
)
from ._clients import as_json_bytes, metric_sum, port_answers, scrape
from ._config import ACTOR, CANDIDATE, CHAMPION, HEALTHY_S, WARMUP_S
from ._faults import (
    HOSTILE,
    STALLS,
    FaultRecord,
    corrupt,
    distinct_copy,
    fault_kinds,
    fault_schedule,
    malformed_records,
    wrong_signature_model,
)
from ._surfaces import HostileSurfaces

log = logging.getLogger(__name__)


class FaultInjection(HostileSurfaces):
    """The fault schedule and each fault's recovery check."""

    async def _inject_faults(self, end_s: float) -> None:
        state = read_state(self.settings.data)
        assert state is not None
        kinds = fault_kinds(list(state.services)) if self.config.faults else [HOSTILE]
        self.kinds = kinds
        schedule = fault_schedule(kinds, self.config.seed)
        await asyncio.sleep(WARMUP_S)
        if HOSTILE in kinds:  # each server's memory once warm: the start of its RSS growth
            self._sample_servers()
        for injected, kind in enumerate(schedule, start=1):
            if self._round_done.is_set() and self.now_s() > end_s - 20:
                return
            record = FaultRecord(kind, self.now_s())
            self.faults.append(record)
            self.say(f"fault: {kind}")
            try:
                await self._inject(kind, record)
            except Exception as exc:
                record.error = f"{type(exc).__name__}: {exc}"
                log.exception("fault %s", kind)
            if record.recovery_s is not None:
                self.say(f"fault: {kind} recovered in {record.recovery_s:.1f} s")
            else:
                self.say(f"fault: {kind} did NOT recover ({record.error})")
            if injected == len(kinds):
                self._round_done.set()
            await asyncio.sleep(self.config.fault_gap_s)

    async def _inject(self, kind: str, record: FaultRecord) -> None:
        what, _, name = kind.partition(":")
        if what == "kill":
            await self._kill(name, record)
        elif what == "stall":
            await self._stall(name, record)
        elif kind == "malformed":
            await self._malformed(record)
        elif kind == "promote:corrupt":
            await self._promote_corrupt(record)
        elif kind == "promote:wrong-signature":
            await self._promote_wrong_signature(record)
        elif kind == HOSTILE:
            await self._hostile(record)
        else:
            raise ValueError(f"unknown fault {kind!r}")

    async def _kill(self, name: str, record: FaultRecord) -> None:
        old = self._state().services[name]
        assert old.pid is not None
        killed_at = self.now_s()
        os.kill(old.pid, signal.SIGKILL)
        if name == "inference":
            self.inference_kills.append(killed_at)
        record.at_s = killed_at

        async def restarted() -> bool:
            now = self._state().services[name]
            return (
                now.pid is not None
                and now.pid != old.pid
                and now.status == "running"
                and pid_alive(now.pid)
            )

        back = await self._until(restarted, self.config.recovery_timeout_s)
        if back is None:
            return
        record.detail["restarted_s"] = round(back - killed_at, 2)
        checks: list[Awaitable[float | None]] = []
        if name in ("ingestion", "features"):
            checks.append(self._pipeline_flows(killed_at))
        elif name == "inference":
            checks.append(self._predict_answers(killed_at))
        elif name == "registry":
            checks.append(self._until(self._registry_answers, self.config.recovery_timeout_s))
        service = self._state().services[name]
        port = service.http_port or service.metrics_port
        if port is not None:
            open_port = port
            checks.append(
                self._until(lambda: port_answers(open_port), self.config.recovery_timeout_s)
            )
        done = await asyncio.gather(*checks)
        if all(t is not None for t in done):
            recovered = max([back, *(t for t in done if t is not None)])
            record.recovered_at_s = recovered
            record.recovery_s = recovered - killed_at

    async def _registry_answers(self) -> bool:
        await self.registry.list_models()
        return True

    async def _stall(self, name: str, record: FaultRecord) -> None:
        state = self._state()
        pid = state.broker.pid if name == "broker" and state.broker else None
        if name == "redis" and state.redis is not None:
            pid = state.redis.pid
        if pid is None:
            raise MlbusError(f"no pid for the embedded {name}")
        seconds = STALLS[name]
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = self.now_s()
        record.detail["stopped_s"] = seconds
        flows, answers = await asyncio.gather(
            self._pipeline_flows(resumed), self._predict_answers(resumed)
        )
        if flows is not None and answers is not None:
            record.recovered_at_s = max(flows, answers)
            record.recovery_s = record.recovered_at_s - resumed

    async def _pipeline_flows(self, since_s: float) -> float | None:
        """When a payment sent after `since_s` (a probe, on a card of its own) reached the
        online store: ingestion and the feature service both work again."""
        card = next(iter(self._probe_cards))
        probes: set[str] = set()
        deadline = time.monotonic() + self.config.recovery_timeout_s
        next_probe = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_probe:
                probes.add(self._send_probe(card))
                next_probe = time.monotonic() + 3.0
            try:
                stored = await self.online.last_event_ids(self.view, self.view_version, [card])
            except (RetryableError, TimeoutError, ConnectionError, OSError):
                stored = {}
            if stored.get(card) in probes:
                return self.now_s()
            await asyncio.sleep(0.2)
        return None

    def _send_probe(self, card: str) -> str:
        template = self.plan.payments[0].event
        source = self.spec.sources[self.spec.topics()[self.plan.payments_topic]]
        assert source.event_id is not None
        event = dict(template)
        event_id = str(uuid.uuid4())
        event[source.event_id] = event_id
        event[source.entity] = card
        event[source.event_time] = (
            datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        )
        self.delivery.send(
            self.plan.payments_topic,
            as_json_bytes(event),
            card,
            lambda _, e=event: self._accept_payment(event_id, card, None, e),  # type: ignore[misc]
        )
        return event_id

    async def _predict_answers(self, since_s: float) -> float | None:
        """When requests work again after `since_s`: the start of the first `HEALTHY_S` of
        the soak's own requests all answered (what clients see, not one lucky probe).
        Without a request stream (`requests` 0), when one Predict probe is answered."""
        if self.config.requests <= 0:

            async def answers() -> bool:
                return bool(self._recent) and (await self.scorer.score(self._recent[-1])).ok

            return await self._until(answers, self.config.recovery_timeout_s)
        settle_s = self.config.deadline_s + self.config.slack_s
        deadline = time.monotonic() + self.config.recovery_timeout_s + HEALTHY_S + settle_s
        while time.monotonic() < deadline:
            # Requests sent up to `complete_s` have all returned (each has a deadline).
            complete_s = self.now_s() - settle_s
            found = healthy_since(self.outcomes, since_s, complete_s, HEALTHY_S)
            if found is not None:
                return found
            await asyncio.sleep(0.5)
        return None

    async def _malformed(self, record: FaultRecord) -> None:
        now = datetime.now(UTC)
        samples = {self.plan.payments_topic: self.plan.payments[0].event}
        labelled = next(p for p in self.plan.payments if p.label is not None)
        assert labelled.label is not None
        samples[self.plan.labels_topic] = labelled.label
        before = sum(self.observer.rejected.values())
        count = 0
        for topic, sample in samples.items():
            source = self.spec.sources[self.spec.topics()[topic]]
            for bad in malformed_records(source, sample, now):
                self.delivery.send(
                    topic,
                    bad.value,
                    "soak-malformed",
                    lambda position, v=bad.value: self.sent.malformed.__setitem__(position, v),  # type: ignore[misc]
                )
                count += 1
        sent_at = self.now_s()
        record.detail["records"] = count

        async def all_rejected() -> bool:
            return sum(self.observer.rejected.values()) >= before + count

        done = await self._until(all_rejected, self.config.recovery_timeout_s)
        if done is not None:
            record.recovered_at_s = done
            record.recovery_s = done - sent_at

    async def _refusals(self) -> float:
        state = self._state()
        metrics = await asyncio.to_thread(scrape, state.services["inference"].metrics_port)
        return metric_sum(metrics, "mlbus_inference_reloads", "outcome=refused")

    async def _promote_bad(self, record: FaultRecord, version: int, old: int) -> None:
        """Move the champion to a bad `version`; it must be refused while `old` keeps
        serving; then move the champion back."""
        model = self.plan.model
        self.bad_versions.add(version)
        before = await self._refusals()
        moved_at = self.now_s()
        await self._retry(
            lambda: self.registry.set_alias(
                model, CHAMPION, version, reason=f"soak: {record.kind}", actor=ACTOR
            )
        )

        async def refused() -> bool:
            return await self._refusals() > before

        refused_at = await self._until(refused, self.config.recovery_timeout_s)
        record.detail["refused_by"] = "inference" if refused_at is not None else None
        await self._retry(
            lambda: self.registry.set_alias(
                model, CHAMPION, old, reason="soak: back to the good version", actor=ACTOR
            )
        )

        async def old_serves() -> bool:
            return await self.scorer.ready(old)

        serving = await self._until(old_serves, self.config.recovery_timeout_s)
        if refused_at is not None and serving is not None:
            record.recovered_at_s = max(refused_at, serving)
            record.recovery_s = refused_at - moved_at

    async def _promote_corrupt(self, record: FaultRecord) -> None:
        model = self.plan.model
        async with self._alias_lock:
            champion = await self._retry(lambda: self.registry.resolve_alias(model, CHAMPION))
            try:  # garbage straight to the registry: refused at the door
                await self.registry.register(
                    model, b"\x08\x07soak: not an onnx model", alias=CANDIDATE, actor=ACTOR
                )
                record.detail["registry_refused_garbage"] = False
            except InvalidInput:
                record.detail["registry_refused_garbage"] = True
            # A good model, damaged in the artifact store after it was registered.
            data = await self._retry(
                lambda: self.registry.download_artifact(model, champion.version)
            )
            copy = distinct_copy(data, f"soak corrupt copy {uuid.uuid4()}")
            registered = await self._retry(
                lambda: self.registry.register(
                    model, copy, alias=CANDIDATE, reason="soak: to be corrupted", actor=ACTOR
                )
            )
            path = Path(unquote(urlparse(registered.version.artifact_uri).path))
            await asyncio.to_thread(path.write_bytes, corrupt(copy))
            record.detail["version"] = registered.version.version
            await self._promote_bad(record, registered.version.version, champion.version)

    async def _promote_wrong_signature(self, record: FaultRecord) -> None:
        model = self.plan.model
        async with self._alias_lock:
            champion = await self._retry(lambda: self.registry.resolve_alias(model, CHAMPION))
            try:
                registered = await self._retry(
                    lambda: self.registry.register(
                        model,
                        wrong_signature_model(),
                        alias=CANDIDATE,
                        reason="soak: a model with another signature",
                        actor=ACTOR,
                    )
                )
            except InvalidInput as exc:
                record.detail["refused_by"] = f"registry: {exc}"
                record.recovered_at_s = record.at_s
                record.recovery_s = 0.0
                return
            record.detail["version"] = registered.version.version
            await self._promote_bad(record, registered.version.version, champion.version)
