"""Child processes that die with their parent, and free loopback ports.

A service's own worker processes use `mlbus.parent_death` instead (libs).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# Below Linux's ephemeral range (32768-60999 by default; macOS and Windows start higher):
# the kernel never hands these out for outgoing connections or bind(port 0), so a port
# chosen here for a child stays free until the child binds it. One the kernel picked
# (bind to 0) could be given to another process's listener in between: it happened to a
# test replica's metrics port while a dozen processes were starting beside it.
_CHOSEN_PORTS = range(20_000, 32_000)
_pick = random.Random(os.urandom(16))  # not the global random: tests seed that one


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, outside the ephemeral range."""
    for _ in range(100):
        port = _pick.choice(_CHOSEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all taken: the OS picks
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports. Ports picked one by one with `free_port` are not bound
    until their servers start, so the same one can come back twice (a CI run lost a
    Redis Cluster node to that: two nodes were given one port)."""
    chosen: list[int] = []
    for _ in range(100 * count):
        if len(chosen) == count:
            break
        port = free_port(host)
        if port not in chosen:
            chosen.append(port)
    if len(chosen) < count:
        raise RuntimeError(f"could not find {count} distinct free ports on {host}")
    return chosen


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# Runs first in the child, then becomes the real command (execv keeps the pid and the
# death signal). Not a `preexec_fn`: that makes Python fork() instead of vfork(), and
# fork() runs gRPC's at-fork handlers, which abort the child when the parent has live
# gRPC threads (the supervisor's health probes, a test process).
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent died before the death signal was set
os.execv(sys.argv[2], sys.argv[2:])
"""


def with_parent_guard(argv: Sequence[str]) -> list[str]:
    """`argv`, run so that Linux SIGTERMs it when this process dies, even by SIGKILL."""
    command = list(argv)
    if not command:
        raise ValueError("expected a command, got an empty argv")
    if "/" not in command[0]:  # execv does not search PATH; fail here, like Popen would
        found = shutil.which(command[0])
        if found is None:
            raise FileNotFoundError(f"command not found: {command[0]!r}")
        command[0] = found
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command]


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child whose output goes to `log_path` and which dies with this process.

    It runs in its own process group: Ctrl-C in the terminal reaches the parent
    only, which then stops its children in order.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            with_parent_guard(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            process_group=0,
        )


def terminate(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> int | None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL. Safe to call twice."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=grace_s)
    return proc.returncode


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], what: str, log_path: Path, timeout_s: float
) -> None:
    """Block until `host:port` accepts connections; fail clearly if the child died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with code {proc.returncode} before listening on {host}:{port}; "
                f"see {log_path}:\n{tail(log_path)}"
            )
        if port_open(host, port):
            return
        time.sleep(0.05)
    terminate(proc)
    raise TimeoutError(
        f"{what} did not listen on {host}:{port} within {timeout_s:.0f} s; see {log_path}"
    )


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
