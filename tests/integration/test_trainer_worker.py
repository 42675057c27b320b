"""The trainer's worker process dies with the trainer, however the trainer dies.

Found by the soak (#25): after `kill -9` of the trainer, its spawned worker (and the
multiprocessing resource tracker, which waits for the worker) lived on as orphans,
one pair per kill, past the end of `mlbus up`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlbus.runstate import pid_alive
from mlbus.trainer import worker_pool

# A trainer stand-in: the trainer's own pool, one task run (the worker exists), then wait.
TRAINER = """\
import os, time
from mlbus.trainer import worker_pool

if __name__ == "__main__":  # the spawned worker imports this file again
    pool = worker_pool()
    print(pool.submit(os.getpid).result(timeout=60), flush=True)
    time.sleep(600)
"""


def test_the_worker_dies_when_the_trainer_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    trainer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        assert trainer.stdout is not None
        worker = int(trainer.stdout.readline())
        assert worker != trainer.pid
        assert pid_alive(worker)
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait(10)
        deadline = time.monotonic() + 20
        while pid_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(worker), "the trainer's worker outlived the trainer"
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        if trainer.stdout is not None:
            trainer.stdout.close()
        if worker is not None and pid_alive(worker):  # leave no orphan behind, even failing
            os.kill(worker, signal.SIGKILL)


def test_the_worker_runs_below_the_trainers_cpu_priority() -> None:
    """A fit yields the CPU to serving on a shared host (the soak measured timeouts
    while a training worker ran at the services' priority)."""
    mine = os.nice(0)
    pool = worker_pool(nice=3)
    try:
        assert pool.submit(os.nice, 0).result(timeout=60) == min(mine + 3, 19)
    finally:
        pool.shutdown()
    same = worker_pool(nice=0)
    try:
        assert same.submit(os.nice, 0).result(timeout=60) == mine
    finally:
        same.shutdown()


def _fit_threads() -> dict[str, int]:
    """The worker's OpenMP and BLAS thread counts, as a fit would use them."""
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime, as a fit does)
    from threadpoolctl import threadpool_info

    return {info["user_api"]: info["num_threads"] for info in threadpool_info()}


def test_the_workers_fits_use_the_configured_threads() -> None:
    """With one thread per core (the libraries' default) a fit took every core of the
    soak's host and inference missed deadlines in bursts (#25); the worker's fits use
    `MLBUS_TRAINER_WORKER_THREADS` threads, 1 unless set."""
    for threads, expected in ((None, 1), (2, 2)):
        pool = worker_pool() if threads is None else worker_pool(threads=threads)
        try:
            found = pool.submit(_fit_threads).result(timeout=60)
        finally:
            pool.shutdown()
        assert found == {"openmp": expected, "blas": expected}, found
