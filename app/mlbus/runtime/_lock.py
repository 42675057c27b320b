"""The exclusive right to run `mlbus up` in one data folder: `<data>/run/up.lock`.

Only `mlbus up` takes it, so it lives in the shell; the state file it guards is
the shared contract in `mlbus.runstate`.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from mlbus.config import DataDir
from mlbus.errors import MlbusError
from mlbus.runstate import read_state, remove_state

log = logging.getLogger(__name__)


class AlreadyRunningError(MlbusError):
    """Another `mlbus up` holds the data folder."""


def lock_path(data: DataDir) -> Path:
    return data.run / "up.lock"


class RunLock:
    """The exclusive right to run `mlbus up` in one data folder, held until `release`.

    The lock is an `flock`, so the kernel drops it when the holder dies, however
    it dies. The holder's pid is written into the lock file for the error message.
    The descriptor is not inherited by children, so a surviving child never
    keeps the folder locked.
    """

    def __init__(self, data: DataDir) -> None:
        self._data = data
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self._data.ensure(self._data.run)
        path = lock_path(self._data)
        handle = path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunningError(
                f"mlbus up is already running in {self._data.root} (pid {holder}); "
                "stop it first, or use another --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        stale = read_state(self._data)
        if stale is not None:  # we hold the lock, so whoever wrote it is gone
            log.warning(
                "replacing the state left by a crashed mlbus up (pid %d)", stale.supervisor_pid
            )
            remove_state(self._data)

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()
