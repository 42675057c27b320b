"""Where the host's CPU went during the live phase, per component of the stack.

At the issue's default rates the soak's failures came from a saturated host, not a
fault (#25); this puts the figures behind that in the report. Every process that
descends from the soak is read from /proc at the start and at the end of the live
phase and charged to the nearest named process above it (or itself): a service, the
broker, Redis, or the soak itself (the load generator). A process killed during the
run takes its CPU time with it: with faults, the figures are a lower bound.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds) from a /proc/<pid>/stat line. The command
    name, in parentheses, may itself hold spaces and parentheses."""
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def process_table(proc: Path = Path("/proc")) -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds) of every process readable now."""
    table: dict[int, tuple[int, float]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            table[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):  # gone between listing and reading
            continue
    return table


def charge(pid: int, table: dict[int, tuple[int, float]], named: dict[int, str]) -> str | None:
    """The name of `pid` or of its nearest named ancestor; None if it has none."""
    seen: set[int] = set()
    while pid in table and pid not in seen:
        if pid in named:
            return named[pid]
        seen.add(pid)
        pid = table[pid][0]
    return named.get(pid)


class CpuMeter:
    """`start()` at the start of the live phase, `stop(named)` at its end (`named`: pid →
    component, read at the end, since a restarted service has a new pid)."""

    def __init__(self) -> None:
        self._before: dict[int, tuple[int, float]] = {}
        self._started = 0.0

    def start(self) -> None:
        self._before = process_table()
        self._started = time.monotonic()

    def stop(self, named: dict[int, str]) -> dict[str, Any]:
        wall_s = max(time.monotonic() - self._started, 1e-9)
        now = process_table()
        used: dict[str, float] = {}
        for pid, (_, cpu_s) in now.items():
            component = charge(pid, now, named)
            if component is None:
                continue
            before = self._before.get(pid)
            # A pid that is new, or reused by another process, is charged from its start.
            spent = cpu_s - before[1] if before is not None and before[1] <= cpu_s else cpu_s
            used[component] = used.get(component, 0.0) + spent
        cores = os.cpu_count() or 1
        return {
            "live_s": round(wall_s, 1),
            "cores": cores,
            "host_busy": round(sum(used.values()) / (wall_s * cores), 3),
            "cores_used": {
                name: round(spent / wall_s, 3)
                for name, spent in sorted(used.items(), key=lambda item: -item[1])
            },
            "note": "CPU seconds per live second, by component; a process killed during "
            "the run is not counted (with faults, a lower bound)",
        }
