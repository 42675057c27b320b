"""The end of a run: drain what is in flight, check every invariant against what was
sent, assemble the report, and look for anything left behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mlbus.events import (
    PREDICTION_LOGGED,
)
from mlbus.featurestore import OfflineStore
from mlbus.runstate import pid_alive
from mlbus.runtime import port_open

from ._checks import (
    FaultWindow,
    Invariant,
    Mismatch,
    TimedEvent,
    alias_history,
    brute_force,
    compare_values,
    dead_letters,
    died_with_inference,
    exactly_once,
    faults_recovered,
    nothing_left,
    online_values,
    recovery_summary,
    requests_answered,
)
from ._config import GRACE_S
from ._read import (
    first_values,
    label_rows,
    offline_columns,
    offline_rows,
    read_alias_history,
    read_letters,
    read_publications,
    scored_event_ids,
    stored_ids,
)
from ._surfaces import HostileSurfaces

log = logging.getLogger(__name__)


class Reporting(HostileSurfaces):
    """Drain, checks and the report."""

    async def _drain(self) -> None:
        if self.hostile_bursts:  # the end of each server's run, for its RSS growth
            self._sample_servers()
        self.say("drain: last labels, in-flight requests and deliveries")
        for _, payment in list(self._pending_labels):
            self._send_label(payment)
        self._pending_labels.clear()
        await self.delivery.drain()
        await self.publisher.flush()
        async with asyncio.timeout(self.config.deadline_s + self.config.slack_s + 30):
            while self._requests_tasks:
                await asyncio.gather(*list(self._requests_tasks), return_exceptions=True)
        self._unfinished = len(self._requests_tasks)
        self.say("drain: waiting until the stores hold what was sent")
        payments = set(self.sent.payments)
        labels = set(self.sent.labels)
        offline = OfflineStore(str(self.settings.data.offline_store))
        columns = offline_columns(self.spec.view_features(self.view))
        deadline = time.monotonic() + self.config.drain_timeout_s
        while time.monotonic() < deadline:
            rows = await asyncio.to_thread(
                offline_rows, offline, self.view, self.view_version, ["event_id"]
            )
            found = stored_ids(rows)
            stored_labels = stored_ids(
                await asyncio.to_thread(label_rows, offline, self._labels_source())
            )
            missing = len(payments - found) + len(labels - stored_labels)
            if missing == 0:
                break
            self.say(f"drain: {missing:,} events not stored yet")
            await asyncio.sleep(5.0)
        del columns

    async def _checks(self) -> dict[str, Any]:
        self.say("checks: offline store, label log, dead letters, registry, online values")
        config = self.config
        offline = OfflineStore(str(self.settings.data.offline_store))
        features = self.spec.view_features(self.view)
        columns = offline_columns(features)
        rows = await asyncio.to_thread(offline_rows, offline, self.view, self.view_version, columns)
        invariants: list[Invariant] = []
        payments_once = exactly_once(
            "every accepted payment in the offline store exactly once", self.sent.payments, rows
        )
        labels = await asyncio.to_thread(label_rows, offline, self._labels_source())
        labels_once = exactly_once(
            "every accepted label in the label log exactly once", self.sent.labels, labels
        )
        invariants += [payments_once, labels_once]
        invariants.append(dead_letters(self.sent.malformed, await read_letters(self.kafka)))
        windows = [
            FaultWindow(
                f.kind,
                f.at_s,
                (f.recovered_at_s if f.recovered_at_s is not None else math.inf) + GRACE_S,
            )
            for f in self.faults
        ]
        requests = requests_answered(
            self.outcomes, windows, slack_s=config.slack_s, unfinished=self._unfinished
        )
        invariants.append(requests)
        invariants.append(self._bad_never_served())
        invariants.append(await self._prediction_log())
        invariants.append(await self._alias_history())
        invariants.append(await self._online_values(features))
        invariants.append(self._offline_values(rows, columns, features))
        recoveries: dict[str, list[float | None]] = {}
        for fault in self.faults:
            recoveries.setdefault(fault.kind, []).append(fault.recovery_s)
        if config.faults or config.hostile:
            invariants.append(faults_recovered(recoveries, len(getattr(self, "kinds", []))))
        hostile: dict[str, Any] = {}
        if self.hostile_bursts:
            survived, hostile = self._hostile_checked()
            invariants.append(survived)
        lost = int(payments_once.detail["lost"]) + int(labels_once.detail["lost"])  # type: ignore[call-overload]
        duplicated = int(payments_once.detail["duplicated"]) + int(  # type: ignore[call-overload]
            labels_once.detail["duplicated"]  # type: ignore[call-overload]
        )
        live_s = self._live_ended_s - self._live_started_s
        return {
            "soak": {
                "minutes": config.minutes,
                "faults": config.faults,
                "hostile": config.hostile,
                "rate": config.rate,
                "requests": config.requests,
                "deadline_s": config.deadline_s,
                "seed": config.seed,
                "live_s": round(live_s, 1),
            },
            "lost": lost,
            "duplicated": duplicated,
            "events": {
                "payments": len(self.sent.payments),
                "labels": len(self.sent.labels),
                "malformed": len(self.sent.malformed),
                "producer_resends": self.sent.retries,
            },
            "requests": {
                k: requests.detail[k]
                for k in (
                    "requests",
                    "by_method",
                    "answered",
                    "failed",
                    "failed_outside_faults",
                    "late",
                    "unfinished",
                )
            },
            "failed_by_status": requests.detail["failed_by_status"],
            "failed_by_window": requests.detail["failed_by_window"],
            "failure_examples": requests.detail["failure_examples"],
            "recovery_s": recovery_summary(recoveries),
            "timeline": self._timeline(windows),
            "faults": [f.as_json() for f in self.faults],
            "training": dict(self.training),
            "versions_served": {str(k): v for k, v in sorted(self.versions_served.items())},
            "reload_s": [round(s, 2) for s in self.reload_s],
            "cpu": self.cpu,
            "notes": sorted(set(self.notes)),
            **({"hostile": hostile} if hostile else {}),
            "invariants": {i.name: i.as_json() for i in invariants},
        }

    def _timeline(self, windows: list[FaultWindow], step_s: float = 10.0) -> list[str]:
        """Requests sent and failed per `step_s` of the live phase, with the faults then."""
        buckets: dict[int, Counter[str]] = {}
        for outcome in self.outcomes:
            bucket = buckets.setdefault(int(outcome.sent_s // step_s), Counter())
            bucket["sent"] += 1
            bucket["failed"] += outcome.status != "OK"
        lines = []
        for index in sorted(buckets):
            start = index * step_s
            during = sorted(
                {w.label for w in windows if w.start_s < start + step_s and w.end_s > start}
            )
            counts = buckets[index]
            lines.append(
                f"{start:5.0f}s sent {counts['sent']:5d} failed {counts['failed']:4d}"
                + (f" [{', '.join(during)}]" if during else "")
            )
        return lines

    def _bad_never_served(self) -> Invariant:
        served = sorted(set(self.versions_served) & self.bad_versions)
        return Invariant(
            "a refused model never answers",
            passed=not served,
            detail={"bad_versions": sorted(self.bad_versions), "served_anyway": served},
        )

    async def _prediction_log(self) -> Invariant:
        """Every answered Predict was logged, or inference counted its drop, or it met an
        inference kill (`died_with_inference`: its buffer died with it, uncounted)."""
        logged = await scored_event_ids(self.kafka, PREDICTION_LOGGED)
        unlogged = {e: times for e, times in self.answered.items() if e not in logged}
        near_kill = {
            e
            for e, (sent_s, answered_s) in unlogged.items()
            if died_with_inference(sent_s, answered_s, self.inference_kills)
        }
        dropped = sum(self.dropped_by_pid.values())
        unexplained = len(unlogged) - len(near_kill) - dropped
        # the unexplained first: they are what a failed check is about
        examples = sorted(unlogged.items(), key=lambda pair: (pair[0] in near_kill, pair[1][1]))[:5]
        return Invariant(
            "every answered prediction logged, or its drop counted",
            passed=unexplained <= 0,
            detail={
                "answered_events": len(self.answered),
                "logged": len(self.answered) - len(unlogged),
                "unlogged": len(unlogged),
                "dropped_counted": dropped,
                "sent_before_and_answered_within_10s_of_an_inference_kill": len(near_kill),
                "unexplained": max(0, int(unexplained)),
                "unlogged_examples": [
                    {
                        "event_id": e,
                        "sent_at_s": round(sent_s, 2),
                        "answered_at_s": round(answered_s, 2),
                        "next_inference_kill_s": min(
                            (round(k, 2) for k in self.inference_kills if k >= sent_s),
                            default=None,
                        ),
                    }
                    for e, (sent_s, answered_s) in examples
                ],
            },
        )

    async def _alias_history(self) -> Invariant:
        found: Invariant | None = None
        for _ in range(10):  # the registry's outbox publishes after it commits
            history = await self._retry(lambda: read_alias_history(self.registry, self.plan.model))
            published = await read_publications(self.kafka, self.plan.model)
            found = alias_history(history, published)
            if found.passed:
                return found
            await asyncio.sleep(3.0)
        assert found is not None
        return found

    async def _online_values(self, features: Any) -> Invariant:
        """Each entity's online values, read just after its latest event and now, against a
        recomputation from the payments the broker acknowledged."""
        by_entity: dict[str, list[TimedEvent]] = {}
        for entity, event in self.sent.payments.values():
            by_entity.setdefault(entity, []).append(event)
        fields = list(features)
        mismatches: list[Mismatch] = []
        compared = 0
        now_ms = int(time.time() * 1000)
        for entity, events in by_entity.items():
            latest = max(e.time_ms for e in events)
            for at in (latest + 1, now_ms):
                got = await self._retry(
                    lambda a=at, e=entity: self.online.get(  # type: ignore[misc]
                        self.view, self.view_version, e, at_ms=a
                    )
                )
                expected = brute_force(fields, events, at)
                if at == now_ms:  # raw fields are not re-aged: compared once
                    expected = {f.name: expected[f.name] for f in fields if f.is_aggregate}
                found = got.values if got.found else None
                mismatches += compare_values(entity, expected, found)
                compared += len(expected)
        return online_values(len(by_entity), compared, mismatches)

    def _offline_values(self, rows: Any, columns: list[str], features: Any) -> Invariant:
        """A sample of offline rows against a recomputation: the event's own fields, each
        aggregate over the entity's events strictly before it (ADR 0020)."""
        by_entity: dict[str, list[TimedEvent]] = {}
        for entity, event in self.sent.payments.values():
            by_entity.setdefault(entity, []).append(event)
        names = [f.name for f in features]
        stored = first_values(rows, columns, names)
        sample = self._rng.sample(sorted(self.sent.payments), min(2000, len(self.sent.payments)))
        mismatches: list[Mismatch] = []
        compared = 0
        for event_id in sample:
            entity, event = self.sent.payments[event_id]
            expected = brute_force(features, by_entity[entity], event.time_ms)
            expected.update(
                {f.name: event.fields.get(f.name) for f in features if not f.is_aggregate}
            )
            got = stored.get(event_id)
            mismatches += compare_values(entity, expected, got)  # type: ignore[arg-type]
            compared += len(expected)
        checked = online_values(len(sample), compared, mismatches)
        return Invariant(
            "sampled offline rows equal a brute-force recomputation", checked.passed, checked.detail
        )

    def _leftovers(self, root: Path) -> Invariant:
        """Processes of this run still alive (by pid, or by this data folder in their
        environment: children of children too) and its ports still open."""
        marker = f"MLBUS_DATA_DIR={root}".encode()
        for _ in range(10):
            alive = {f"pid {pid}" for pid in self.pids if pid_alive(pid)}
            for proc in Path("/proc").glob("[0-9]*"):
                pid = int(proc.name)
                if pid == os.getpid():
                    continue
                with contextlib.suppress(OSError):
                    if marker in (proc / "environ").read_bytes().split(b"\0") and pid_alive(pid):
                        alive.add(f"pid {pid}")
            ports = sorted(p for p in self.ports if port_open("127.0.0.1", p))
            if not alive and not ports:
                break
            time.sleep(1.0)
        return nothing_left(sorted(alive), ports)
