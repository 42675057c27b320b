"""The one shape of a stream service: `run()` until `stop()`, and its process.

A service subclasses `StreamService` and writes `run()`: it builds its parts and
its consumers, then hands them to `consume_until_stopped` (which sets `_started`,
runs the consumers and the tasks beside them, and returns after `stop()`); it
names its consumers in `consumers()`. Its process is
`run_stream_service(name, settings, ServiceClass)`: the spec the settings name,
telemetry, and the service until SIGTERM or SIGINT. `python -m mlbus.<name>`
reaches it through `mlbus.config.run_service`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from mlbus.config import ServiceSettings
from mlbus.errors import ConfigError, RetryableError
from mlbus.spec import ProjectSpec, load_spec
from mlbus.telemetry import setup_telemetry

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


class ServiceConsumer(Protocol):
    """What the lifecycle needs of a `mlbus.bus.Consumer`."""

    def stop(self) -> None: ...

    async def wait_assigned(self, timeout_s: float = 60.0) -> None: ...

    async def run(self) -> None: ...


@dataclass
class StreamService:
    """`run()` until `stop()` (idempotent, safe from a signal handler); `wait_started()`."""

    _stop: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True, repr=False)
    _started: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True, repr=False)
    _consumed: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True, repr=False)
    """Set once every consumer has returned: work that must follow the last batch
    (the feature service's last offline flush) waits for it."""

    _consuming: Sequence[ServiceConsumer] = field(default_factory=tuple, kw_only=True, repr=False)

    def consumers(self) -> Sequence[ServiceConsumer]:
        """The consumers running (none before `run()` hands them to `consume_until_stopped`)."""
        return self._consuming

    async def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        for consumer in self.consumers():
            consumer.stop()

    async def wait_started(self, timeout_s: float = 60.0) -> None:
        """Until the consumers own partitions (their group joins are done)."""
        await asyncio.wait_for(self._started.wait(), timeout_s)
        for consumer in self.consumers():
            await consumer.wait_assigned(timeout_s)

    async def consume(self, consumer: ServiceConsumer, *, stopped_unsaved: str) -> None:
        """`consumer.run()`; a RetryableError after `stop()` is logged, not raised.

        Stopped while a dependency was down, the offsets of what was not saved were
        not committed: it is consumed again after a restart. `stopped_unsaved` is the
        log line that says so ("drift service stopped with state unsaved").
        """
        try:
            await consumer.run()
        except RetryableError as exc:
            if not self._stop.is_set():
                raise
            log.warning("%s: %s", stopped_unsaved, exc)

    async def consume_until_stopped(
        self,
        consumers: Sequence[ServiceConsumer],
        *,
        stopped_unsaved: str,
        beside: Mapping[str, Callable[[], Coroutine[Any, Any, None]]] | None = None,
    ) -> None:
        """Run `consumers` (`consume`) and the tasks `beside` them (by name) until `stop()`.

        Marks the service started first (unless `stop()` came while it was being built).
        On `stop()` the consumers finish the batch in hand and commit; the tasks beside
        them see `_stop` and return by themselves.
        """
        if self._stop.is_set():
            return
        self._consuming = tuple(consumers)
        self._started.set()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._consume_all(consumers, stopped_unsaved), name="consume")
            for name, task in (beside or {}).items():
                tasks.create_task(task(), name=name)
            await self._stop.wait()
            for consumer in consumers:
                consumer.stop()

    async def _consume_all(
        self, consumers: Sequence[ServiceConsumer], stopped_unsaved: str
    ) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for consumer in consumers:
                    tasks.create_task(self.consume(consumer, stopped_unsaved=stopped_unsaved))
        finally:
            self._consumed.set()


async def run_until_stopped(service: StreamService) -> None:
    """`service.run()`, stopped by SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    await service.run()


GC_YOUNG_THRESHOLD = 50_000
"""Container allocations between young collections (CPython's default is 700)."""


def tune_gc_for_streams() -> None:
    """Keep the cyclic garbage collector from costing a stream service a tenth of its CPU.

    A stream service decodes a fetch of up to a thousand records at once, a few
    containers each, and keeps them until the batch is applied. At CPython's
    default threshold the collector runs every 700 allocations and each run
    walks the whole batch, alive, and promotes it, so the older generations fill
    and their collections walk everything: ~200,000 objects after the imports,
    almost none of them ever garbage. Here what exists after start-up is frozen
    (skipped by every collection, still freed by reference counting) and young
    collections wait for GC_YOUNG_THRESHOLD allocations, by which time a batch is
    gone. Only cyclic garbage waits longer; measured with
    `loadtests/bench_drift.py`, the collector's share of the drift service's CPU
    went from 8-25 % to under 1 %.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_stream_service(
    name: str, settings: S, build: Callable[[S, ProjectSpec], StreamService]
) -> None:
    """A stream service's process, the same for every one: the spec the settings name
    (a ConfigError without one), telemetry, and `build(settings, spec).run()` until
    SIGTERM or SIGINT."""

    async def main(settings: S) -> None:
        if settings.spec is None:
            raise ConfigError(f"the {name} service needs a spec: set MLBUS_SPEC=path/to/mlbus.yaml")
        await run_until_stopped(build(settings, load_spec(settings.spec)))

    run_process(name, settings, main)


def run_process(name: str, settings: S, main: Callable[[S], Coroutine[Any, Any, None]]) -> None:
    """A service's process: its telemetry around `asyncio.run(main(settings))`."""
    telemetry = setup_telemetry(name, settings)
    tune_gc_for_streams()
    try:
        asyncio.run(main(settings))
    finally:
        telemetry.shutdown()
