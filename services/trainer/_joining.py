"""Joining another replica's search: an idle trainer runs trials of a running search of its
model in its own worker until the budget is spent (ADR 0023).

The trainer decides when (idle, every `search_join_poll_s`); `SearchJoiner` finds a
search to join, runs the trials and leaves when told to: it keeps a file while it works
on the search, and the worker stops before its next trial once that file is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry import trace

from mlbus.spec import ProjectSpec
from mlbus.training import (
    Fit,
    JoinableSearch,
    JoinJob,
    joinable_searches,
    run_join,
    storage_at,
)

from ._settings import TrainerSettings

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("mlbus.trainer")


@dataclass
class SearchJoiner:
    """Finds, joins and leaves other replicas' searches of the spec's model."""

    settings: TrainerSettings
    spec: ProjectSpec
    replica: str
    fit: Fit | None
    joined: int = 0
    """Other replicas' searches this trainer ran trials for."""
    _keep: Path | None = None
    """Exists while this trainer works on another replica's search; removed to leave it."""
    _seen: set[str] = field(default_factory=set)

    @property
    def joining(self) -> bool:
        return self._keep is not None

    def leave(self, reason: str) -> None:
        """Stop working on another replica's search before the next trial (idempotent)."""
        keep, self._keep = self._keep, None
        if keep is not None:
            _discard(keep)
            log.info("leaving the joined search: %s", reason)

    def joinable(self) -> tuple[list[JoinableSearch], dict[str, str]]:
        """`joinable_searches` on a storage opened and closed in this (pool) thread: a
        long-lived storage shared by pool threads leaves their sessions' connections open."""
        with storage_at(self.settings.resolved_search_storage()) as storage:
            return joinable_searches(
                storage,
                model=self.spec.model.name,
                worker=self.replica,
                spec_fingerprint=self.spec.fingerprint(),
            )

    def pick(self, found: list[JoinableSearch], refused: dict[str, str]) -> JoinableSearch | None:
        """The first search not tried yet; each refusal is logged once."""
        for name, why in refused.items():
            if name not in self._seen:
                self._seen.add(name)
                log.info("not joining search %s: %s", name, why)
        return next((f for f in found if f.study not in self._seen), None)

    async def join(self, found: JoinableSearch, executor: Executor) -> None:
        """Run trials of `found` in `executor` until its budget is spent or `leave()`.

        Failures are logged; BrokenProcessPool (the worker died) is raised, so the
        trainer replaces its worker.
        """
        self._seen.add(found.study)
        handle, path = tempfile.mkstemp(prefix="mlbus-join-", suffix=".keep")
        os.close(handle)
        keep = self._keep = Path(path)
        job = JoinJob(
            spec=self.spec,
            offline_url=self.settings.resolved_offline_url(),
            study=found.study,
            storage_url=self.settings.resolved_search_storage(),
            dataset_fingerprint=found.dataset_fingerprint,
            worker=self.replica,
            keep_path=path,
            start=found.window_start,
            end=found.window_end,
            fit=self.fit,
            n_jobs=self.settings.search_n_jobs,
            threads_per_trial=self.settings.search_threads_per_trial,
        )
        log.info(
            "joining search %s of %s (%d of %d trials taken)",
            found.study,
            found.creator,
            found.trials,
            found.budget_trials,
        )
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            with _tracer.start_as_current_span(
                "training.join_search", attributes={"mlbus.search_study": found.study}
            ):
                outcome = await loop.run_in_executor(executor, run_join, job)
        except BrokenProcessPool:
            raise
        except Exception:
            log.exception("joining search %s failed", found.study)
            return
        finally:
            if self._keep == keep:
                self._keep = None
            _discard(keep)  # a tmpfs-sized file: not worth a thread
        if outcome.refused:
            log.info("did not join search %s: %s", found.study, outcome.refused)
            return
        self.joined += 1
        log.info(
            "ran %d trial(s) %s of search %s in %.1fs",
            len(outcome.evaluated),
            outcome.evaluated,
            found.study,
            time.perf_counter() - started,
        )


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)
