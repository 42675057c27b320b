"""The soak's hostile-input fault: a burst of `mlbus.soak._hostile` at every gRPC server.

One burst (`HOSTILE`, a fault kind of its own so it never overlaps a kill or
a stall): slow clients hold streams and half-open connections on every gRPC
server of the stack (inference, registry, features, outcomes' Labeling), a
seeded fuzz calls every method of each with raw bytes for `hostile_burst_s`,
and one message above the largest receive limit goes to each. Recovery: every
server answers a health check again. Around each burst the servers' pids and
resident memory are read; the end-of-run invariant (`hostile_survived`) wants
every call ended with an allowed status, no pid gone, and no process grown
past `rss_growth_bound` from before its first burst to after its last one.

The fuzz never names the soak's model to the registry (only to inference,
which it cannot change): a mutating call on a made-up model is refused, so
the alias history the other checks read is the soak's own.
"""

from __future__ import annotations

import logging
from typing import Any

from mlbus.runstate import RunState, pid_alive

from ._checks import Invariant, ServerMemory, hostile_survived
from ._faults import FaultRecord
from ._hostile import (
    FuzzResult,
    SlowClients,
    Target,
    answers,
    fuzz,
    oversize,
    rss_bytes,
    rss_growth_bound,
    server_methods,
)
from ._state import SoakState

log = logging.getLogger(__name__)

GRPC_SERVERS = ("inference", "registry", "features", "outcomes")
OVERSIZE_BYTES = 70 << 20
"""Above every receive limit of the stack: 64 + 1 MB (inference, registry), 4 MB (others)."""


class HostileSurfaces(SoakState):
    """Hostile bursts at the gRPC servers, and what they did to each process."""

    def _hostile_targets(self, state: RunState) -> dict[str, tuple[Target, int | None]]:
        """Server name → (fuzz target, pid) for each gRPC server running now."""
        names = {
            "inference": (self.plan.model, "champion", "x", "FP32"),
            "registry": ("soak-fuzz-model", "champion"),
            "features": (),
            "outcomes": (),
        }
        found = {}
        for name in GRPC_SERVERS:
            address = state.grpc_address(name)
            service = state.services.get(name)
            if address is None or service is None:
                continue
            target = Target(name, address, server_methods(name), names=names[name])
            found[name] = (target, service.pid)
        return found

    def _sample_servers(self) -> None:
        """Every gRPC server's resident memory now (the start and the end of the run)."""
        state = self._state()
        self._sample_rss(
            {name: state.services[name].pid for name in GRPC_SERVERS if name in state.services}
        )

    def _sample_rss(self, pids: dict[str, int | None]) -> None:
        for name, pid in pids.items():
            if pid is None:
                continue
            size = rss_bytes(pid)
            if size is not None:
                self.rss_samples.setdefault(pid, (name, []))[1].append(size)

    async def _hostile(self, record: FaultRecord) -> None:
        """One burst (module docstring); recovered when every server answers again."""
        servers = self._hostile_targets(self._state())
        targets = [target for target, _ in servers.values()]
        pids = {name: pid for name, (_, pid) in servers.items()}
        self._sample_rss(pids)
        burst = len(self.hostile_bursts)
        async with SlowClients(targets, streams=2, sockets=4) as slow:
            result = await fuzz(
                targets,
                seed=self.config.seed * 1000 + burst,
                duration_s=self.config.hostile_burst_s,
                deadline_s=10.0,
                concurrency=2,
            )
            for target in targets:
                result.oversized[target.server] = await oversize(target, OVERSIZE_BYTES)
        result.slow = slow.summary
        ended_s = self.now_s()
        self._sample_rss(pids)
        now = self._state()
        for name, pid in pids.items():
            if pid is not None and (not pid_alive(pid) or now.services[name].pid != pid):
                self.hostile_crashed.append(f"{name} pid {pid}")
        self.hostile_bursts.append(result)
        record.detail["calls"] = result.total()
        record.detail["unexpected"] = result.unexpected_count
        record.detail["oversized"] = result.oversized

        async def all_answer() -> bool:
            for target in targets:
                if not await answers(target.address, timeout_s=2.0):
                    return False
            return True

        back = await self._until(all_answer, self.config.recovery_timeout_s)
        result.answering = {target.server: back is not None for target in targets}
        if back is not None:
            record.recovered_at_s = back
            record.recovery_s = back - ended_s

    def _hostile_checked(self) -> tuple[Invariant, dict[str, Any]]:
        """The invariant over every burst, and the report's `hostile` section."""
        total = FuzzResult()
        for result in self.hostile_bursts:
            total.merge(result)
        memory = [
            ServerMemory(name, pid, sizes[0], sizes[-1], rss_growth_bound(sizes[0]))
            for pid, (name, sizes) in sorted(self.rss_samples.items())
            if len(sizes) >= 2
        ]
        invariant = hostile_survived(
            total.total(), total.unexpected_count, self.hostile_crashed, memory
        )
        return invariant, {"bursts": len(self.hostile_bursts), **total.as_json()}
