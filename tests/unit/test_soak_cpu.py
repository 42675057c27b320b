"""The soak's CPU figures per component (`mlbus.soak._cpu`), read from /proc."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbus.soak._cpu import TICKS_PER_S, CpuMeter, charge, parse_stat, process_table

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def test_a_stat_line_whose_command_holds_parentheses_and_spaces() -> None:
    rest = " ".join(["S", "41", *["0"] * 9, str(3 * TICKS_PER_S), str(TICKS_PER_S)])
    assert parse_stat(f"1234 (a (b) c) {rest} 0 0") == (41, 4.0)


def test_a_process_is_charged_to_its_nearest_named_ancestor() -> None:
    table = {10: (1, 0.0), 11: (10, 0.0), 12: (11, 0.0), 20: (1, 0.0)}
    named = {10: "inference", 12: "worker"}
    assert charge(11, table, named) == "inference"
    assert charge(12, table, named) == "worker"
    assert charge(20, table, named) is None


def test_a_busy_process_is_charged_more_than_an_idle_one() -> None:
    meter = CpuMeter()
    meter.start()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 60
        while process_table().get(busy.pid, (0, 0.0))[1] < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        report = meter.stop({busy.pid: "busy", idle.pid: "idle"})
    finally:
        for child in (busy, idle):
            child.kill()
            child.wait()
    used = report["cores_used"]
    assert set(used) == {"busy", "idle"}  # this test's own process is named by nobody
    assert used["busy"] > used["idle"]
    assert 0 < report["host_busy"] <= 1
