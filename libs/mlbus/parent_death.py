"""A worker process that dies with its parent, however the parent dies.

Shared by a service's own worker processes (the trainer's training worker); the
shell's `mlbus.runtime` does the same for the commands it starts
(`with_parent_guard`), with SIGTERM, since those can stop gracefully.
"""

from __future__ import annotations

import os
import sys


def die_with_parent(parent_pid: int) -> None:
    """Make Linux SIGKILL this process when its parent dies, however the parent dies.

    For processes Python starts itself (a `ProcessPoolExecutor`'s `initializer`), where
    `with_parent_guard` cannot wrap the command. A worker whose parent is gone has
    nobody to hand a result to, so it is killed outright, mid-computation. Exits at
    once if the parent died before the signal was set.
    """
    import ctypes
    import signal

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)
