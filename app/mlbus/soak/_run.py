"""`run_soak`: the whole stack under steady load for minutes, optionally broken on a
schedule, then every invariant checked against what was really sent.

    report = run_soak(SoakConfig(minutes=10, faults=True), status=print)
    report["invariants"]   # name → {"passed": …, numbers}

Phases: plan the traffic (the demo's scenario, no drift) → start the embedded
stack like `mlbus up` in a fresh data folder (the demo's `EmbeddedStack`, so
every pid and port is known) → the demo's start of the loop (bootstrap
payments and labels, first model trained and served) → live: paced payments
and labels, paced Predict and ModelInfer calls with deadlines, a training
request every `train_every_s` (a version the gates do not promote is promoted
by hand, so reloads happen under load), and with `faults` the schedule of
`_faults` → drain (stop sending; wait until the stores hold what was sent) →
checks → stop everything → nothing left behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlbus.bus import Publisher
from mlbus.config import MlbusSettings
from mlbus.demo import (
    BusObserver,
    DemoConfig,
    DemoSizes,
    EmbeddedStack,
    LoopContext,
    LoopOptions,
    LoopRecord,
    ScenarioPlan,
    Scorer,
    demo_catalogue,
    plan_scenario,
    start_loop,
)
from mlbus.errors import MlbusError
from mlbus.featurestore import OnlineStore
from mlbus.registry_client import RegistryClient
from mlbus.runstate import RunState, read_state
from mlbus.spec import ProjectSpec, load_spec

from ._clients import Delivery, InferClient
from ._config import SoakConfig
from ._injection import FaultInjection
from ._report import Reporting
from ._traffic import Traffic

log = logging.getLogger(__name__)


class Soak(Traffic, FaultInjection, Reporting):
    """One soak run; `run()` returns the report (a JSON-ready dict)."""

    def run(self) -> dict[str, Any]:
        config = self.config
        root = config.data_dir or Path(tempfile.mkdtemp(prefix="mlbus-soak-"))
        spec_path = self._spec_copy(config.spec_path.resolve(), root)
        spec = load_spec(spec_path)
        settings = MlbusSettings(data_dir=root.resolve()).model_copy(update={"spec": spec_path})
        self.say(f"data folder {settings.data.root}")
        plan = self._plan(spec)
        stack = EmbeddedStack(
            settings,
            demo_catalogue(DemoConfig(retrain_min_labels=None).service_env()),
            grace_s=15.0,
        )
        self.say("starting broker, Redis and the services")
        report: dict[str, Any] = {}
        error: BaseException | None = None
        try:
            state = stack.start(config.start_timeout_s)
            self._remember(state)
            report = asyncio.run(self._main(spec, plan, settings, stack, state))
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._remember(read_state(settings.data))
            self.say("stopping every process")
            self._remember_pids(stack.child_pids())
            stack.stop()
            left = self._leftovers(settings.data.root)
            report.setdefault("invariants", {})[left.name] = left.as_json()
            report["passed"] = error is None and all(
                i["passed"] for i in report["invariants"].values()
            )
            report["data_dir"] = str(settings.data.root)
            self.report = report
        return report

    def _spec_copy(self, spec_path: Path, root: Path) -> Path:
        """The spec to run: as given, or a copy with the serving budget replaced."""
        if self.config.serving_timeout_ms is None:
            return spec_path
        import yaml

        document = yaml.safe_load(spec_path.read_text())
        serving = document.setdefault("serving", {})
        original = serving.get("timeout_ms")
        serving["timeout_ms"] = self.config.serving_timeout_ms
        copy = root / "soak-spec.yaml"
        root.mkdir(parents=True, exist_ok=True)
        copy.write_text(yaml.safe_dump(document, sort_keys=False))
        self.notes.append(
            f"serving.timeout_ms {self.config.serving_timeout_ms} instead of the spec's "
            f"{original} (a copy of the spec: {copy})"
        )
        return copy

    def _plan(self, spec: ProjectSpec) -> ScenarioPlan:
        config = self.config
        labelled = 0.93  # the example's share of payments with a known verdict (measured)
        payments_per_s = config.rate / (1 + labelled)
        live = math.ceil(payments_per_s * config.minutes * 60 * 1.3) + 1000
        self.say(f"generating {config.bootstrap + live:,} payments (seed {config.seed})")
        sizes = DemoSizes(
            payments=config.bootstrap + live,
            bootstrap=config.bootstrap,
            drift_kind="none",
            drift_age=timedelta(hours=2),
        )
        plan = plan_scenario(spec, sizes, now=datetime.now(UTC), seed=config.seed)
        used = {p.entity_id for p in plan.payments}
        self._probe_cards = (
            card for n in range(999_999, 0, -1) if (card := f"card_{n:06d}") not in used
        )
        return plan

    async def _main(
        self,
        spec: ProjectSpec,
        plan: ScenarioPlan,
        settings: MlbusSettings,
        stack: EmbeddedStack,
        state: RunState,
    ) -> dict[str, Any]:
        config = self.config
        assert state.broker is not None
        assert state.redis is not None
        inference = state.grpc_address("inference")
        registry_address = state.grpc_address("registry")
        if inference is None or registry_address is None:
            raise MlbusError(f"inference or the registry did not start; see {stack.logs}")
        kafka = settings.kafka.model_copy(
            update={"bootstrap_servers": state.broker.bootstrap_servers}
        )
        self.kafka = kafka
        self.spec = spec
        self.plan = plan
        self.settings = settings
        self.stack = stack
        self.view = next(
            v for v in spec.model_views() if spec.features[v].source == spec.training_source()
        )
        self.view_version = spec.features[self.view].version
        async with Publisher(kafka, source="soak") as publisher:
            self.publisher = publisher
            self.delivery = Delivery(publisher, self.sent)
            self.observer = BusObserver(kafka, publisher)
            watching = asyncio.create_task(self.observer.run(), name="soak-observer")
            self.scorer = Scorer(inference, plan.model, config.deadline_s)
            self.infer = InferClient(inference, plan.model)
            self.online = OnlineStore.from_url(state.redis.url, key_prefix=state.redis.key_prefix)
            self.registry = RegistryClient(registry_address, timeout_s=10.0)
            try:
                await self.observer.wait_assigned(30.0)
                ctx = LoopContext(
                    spec=spec,
                    plan=plan,
                    kafka=kafka,
                    inference_address=inference,
                    offline_url=str(settings.data.offline_store),
                    redis_url=state.redis.url,
                    key_prefix=state.redis.key_prefix,
                    logs=stack.logs,
                    options=LoopOptions(),
                    reporter=self.reporter,
                    alive=stack.failed_services,
                )
                record = LoopRecord()
                await start_loop(ctx, publisher, self.observer, self.scorer, record)
                for payment in plan.bootstrap:  # acknowledged: start_loop awaited them
                    self._accept_payment(payment.event_id, payment.entity_id, payment)
                    if payment.label is not None:
                        self.sent.labels.add(self._label_id(payment))
                self._recent.extend(plan.bootstrap[-self._recent.maxlen :])  # type: ignore[operator]
                skipped = await self.infer.prepare()
                if skipped is not None:
                    self.notes.append(f"ModelInfer not called: {skipped}")
                await self._live()
                await self._drain()
                return await self._checks()
            finally:
                self.observer.stop()
                await self.scorer.close()
                await self.infer.close()
                await self.online.aclose()
                await self.registry.close()
                try:
                    async with asyncio.timeout(10):
                        await watching
                except (TimeoutError, asyncio.CancelledError):
                    watching.cancel()

    # ── live traffic ─────────────────────────────────────────────────────────

    async def _live(self) -> None:
        config = self.config
        self._live_started_s = self.now_s()
        self.cpu_meter.start()
        end_s = self._live_started_s + config.minutes * 60
        self.say(
            f"live: {config.rate:.0f} events/s, {config.requests:.0f} requests/s for "
            f"{config.minutes:g} min"
            + (" with faults" if config.faults else " with hostile input" if config.hostile else "")
        )
        tasks = [
            asyncio.create_task(self._produce(), name="soak-produce"),
            asyncio.create_task(self._request(), name="soak-requests"),
            asyncio.create_task(self._train(), name="soak-train"),
            asyncio.create_task(self._watch(), name="soak-watch"),
            asyncio.create_task(self._report_status(), name="soak-status"),
        ]
        faults = None
        if config.faults or config.hostile:
            faults = asyncio.create_task(self._inject_faults(end_s), name="soak-faults")
        else:
            self._round_done.set()
        try:
            while self.now_s() < end_s or not self._round_done.is_set():
                for task in (*tasks, *([faults] if faults else [])):
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                failed = self.stack.failed_services()
                if failed:
                    raise MlbusError(f"the supervisor gave up on {', '.join(failed)}")
                await asyncio.sleep(0.5)
        finally:
            self._live_ended_s = self.now_s()
            self.cpu = self.cpu_meter.stop(self._components())
            self._stop.set()
            if faults is not None:
                await asyncio.gather(faults, return_exceptions=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def run_soak(config: SoakConfig, status: Callable[[str], None]) -> dict[str, Any]:
    """Run one soak; the report, also when an invariant failed (`report["passed"]`)."""
    return Soak(config, status).run()
