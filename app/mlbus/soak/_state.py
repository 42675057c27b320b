"""The state a soak run shares between its parts (traffic, faults, checks), and the
helpers they all use."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlparse

from mlbus.bus import Publisher
from mlbus.config import KafkaSettings, MlbusSettings
from mlbus.demo import (
    BusObserver,
    EmbeddedStack,
    Payment,
    ScenarioPlan,
    Scorer,
)
from mlbus.errors import MlbusError, RetryableError
from mlbus.featurestore import OnlineStore
from mlbus.registry_client import RegistryClient
from mlbus.runstate import RunState, read_state
from mlbus.spec import ProjectSpec

from ._checks import (
    RequestOutcome,
    TimedEvent,
)
from ._clients import Delivery, InferClient, Sent, StatusReporter, as_json_bytes, epoch_ms, parse_ms
from ._config import SoakConfig
from ._cpu import CpuMeter
from ._faults import (
    FaultRecord,
)
from ._hostile import FuzzResult


class SoakState:
    """What every part of a soak run shares: its settings, what was sent and seen, the
    clients (set in `Soak._main`), and the helpers that wait and retry."""

    # Set by `Soak._main` once the stack runs.
    kafka: KafkaSettings
    spec: ProjectSpec
    plan: ScenarioPlan
    settings: MlbusSettings
    stack: EmbeddedStack
    view: str
    view_version: int
    publisher: Publisher
    delivery: Delivery
    observer: BusObserver
    scorer: Scorer
    infer: InferClient
    online: OnlineStore
    registry: RegistryClient
    kinds: list[str]
    report: dict[str, Any]

    def __init__(self, config: SoakConfig, status: Callable[[str], None]) -> None:
        self.config = config
        self._status = status
        self._t0 = time.monotonic()
        self.reporter = StatusReporter(status, self.now_s)
        self.sent = Sent()
        self.outcomes: list[RequestOutcome] = []
        self.answered: dict[str, tuple[float, float]] = {}
        """Predict: scored event id → when its (last) request was sent and its answer came,
        seconds since the start."""
        self.versions_served: Counter[int] = Counter()
        self.bad_versions: set[int] = set()
        self.faults: list[FaultRecord] = []
        self.training: Counter[str] = Counter()
        self.reload_s: list[float] = []
        self.notes: list[str] = []
        self.pids: set[int] = set()
        self.ports: set[int] = set()
        self.dropped_by_pid: dict[int, float] = {}
        self.inference_kills: list[float] = []
        self._in_flight = 0
        self._requests_tasks: set[asyncio.Task[None]] = set()
        self._unfinished = 0
        self._recent: deque[Payment] = deque(maxlen=2000)
        self._pending_labels: deque[tuple[float, Payment]] = deque()
        self._alias_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._round_done = asyncio.Event()
        self._probe_cards: Iterable[str] = iter(())
        self._live_started_s = 0.0
        self._live_ended_s = 0.0
        self._rng = random.Random(config.seed)
        self.hostile_bursts: list[FuzzResult] = []
        self.hostile_crashed: list[str] = []
        self.rss_samples: dict[int, tuple[str, list[int]]] = {}
        """Server pid → (service, its resident bytes at each sample, in order)."""
        self.cpu_meter = CpuMeter()
        self.cpu: dict[str, Any] = {}
        """CPU per component over the live phase (`CpuMeter.stop`)."""

    def now_s(self) -> float:
        return time.monotonic() - self._t0

    def say(self, text: str) -> None:
        self._status(f"[{self.now_s():6.0f}s] {text}")

    async def _retry(self, call: Callable[[], Awaitable[Any]], timeout_s: float = 120.0) -> Any:
        """`call()` until it does not raise a retryable error (a component is down)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await call()
            except (RetryableError, TimeoutError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def _until(
        self, check: Callable[[], Awaitable[bool]], timeout_s: float, poll_s: float = 0.2
    ) -> float | None:
        """The time (seconds since start) `check()` first held, None after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if await check():
                    return self.now_s()
            except (MlbusError, TimeoutError, ConnectionError, OSError):
                pass
            await asyncio.sleep(poll_s)
        return None

    def _state(self) -> RunState:
        state = read_state(self.settings.data)
        if state is None:
            raise MlbusError("the run state is gone")
        self._remember(state)
        return state

    def _remember(self, state: RunState | None) -> None:
        if state is None:
            return
        self._remember_pids(state.pids().values())
        for service in state.services.values():
            self.ports.update(
                p for p in (service.grpc_port, service.metrics_port, service.http_port) if p
            )
        for url in (
            state.broker.bootstrap_servers if state.broker else None,
            state.redis.url if state.redis else None,
        ):
            if url:
                port = urlparse(url if "://" in url else f"tcp://{url}").port
                if port:
                    self.ports.add(port)

    def _remember_pids(self, pids: Iterable[int]) -> None:
        self.pids.update(pids)

    def _components(self) -> dict[int, str]:
        """pid → component of the stack as it runs now, and this process (the load)."""
        state = read_state(self.settings.data)
        named = {pid: name for name, pid in (state.pids() if state else {}).items()}
        named[os.getpid()] = "soak (load generator)"
        return named

    def _accept_payment(
        self,
        event_id: str,
        entity_id: str,
        payment: Payment | None,
        event: dict[str, Any] | None = None,
    ) -> None:
        body = payment.event if payment is not None else event
        assert body is not None
        time_ms = epoch_ms(payment.event_time) if payment is not None else parse_ms(body["ts"])
        self.sent.payments[event_id] = (entity_id, TimedEvent(event_id, time_ms, body))

    def _label_id(self, payment: Payment) -> str:
        assert payment.label is not None
        source = self.spec.sources[self._labels_source()]
        assert source.event_id is not None
        return str(payment.label[source.event_id])

    def _labels_source(self) -> str:
        return self.spec.topics()[self.plan.labels_topic]

    def _send_label(self, payment: Payment) -> None:
        assert payment.label is not None
        label_id = self._label_id(payment)
        self.delivery.send(
            self.plan.labels_topic,
            as_json_bytes(payment.label),
            payment.entity_id,
            lambda _: self.sent.labels.add(label_id),
        )
