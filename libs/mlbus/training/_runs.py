"""Where searches are recorded: one Optuna study per training run (ADR 0023).

    storage = open_storage(url)                     # Optuna RDB storage (SQLite or PostgreSQL)
    runs = list_runs(storage, model="fraud_detector")
    run = get_run(storage, "fraud_detector-3f2a…")  # RunRecord with every TrialRecord
    request_cancel(storage, study_name, "superseded by request 1b2c…")

The study's user attributes hold the run (model, run id, dataset fingerprint,
seed, budget, status, best trial, registered version); each trial holds its
params, value, state, duration, error and the worker that ran it. Several
trainer replicas pointed at one storage share a study (Optuna's own RDB
mechanism); a cancellation is a study attribute every worker reads between trials.

On PostgreSQL the tables live in their own schema (`mlbus_search`): Optuna
versions its tables with Alembic's default `alembic_version` table, which the
registry's migrations already own in the default schema.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial

SEARCH_SCHEMA = "mlbus_search"
CANCELLED_ATTR = "cancelled"

# Run statuses in the study's `status` attribute.
RUNNING = "running"
COMPLETED = "completed"
CANCELLED = "cancelled"
FAILED = "failed"


def storage_url(url: str) -> str:
    """`url` as Optuna's RDB storage takes it: psycopg 3 for PostgreSQL, in `mlbus_search`."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    parsed = parsed.set(drivername="postgresql+psycopg")
    if "options" not in parsed.query:
        parsed = parsed.update_query_dict({"options": f"-csearch_path={SEARCH_SCHEMA}"})
    return parsed.render_as_string(hide_password=False)


def _ensure_schema(url: str) -> None:
    """Create the `mlbus_search` schema a PostgreSQL storage URL points into (idempotent)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    options = str(parsed.query.get("options", ""))
    if f"search_path={SEARCH_SCHEMA}" not in options:
        return  # the user chose the schema; it is theirs to create
    engine = create_engine(parsed.difference_update_query(["options"]))
    try:
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SEARCH_SCHEMA}"'))
    finally:
        engine.dispose()


def open_storage(url: str) -> BaseStorage:
    """Optuna's RDB storage at `url` (SQLite file or PostgreSQL), its tables created if new."""
    import optuna
    from sqlalchemy.engine import make_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    resolved = storage_url(url)
    _ensure_schema(resolved)
    parsed = make_url(resolved)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        from pathlib import Path

        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    if parsed.get_backend_name() != "postgresql":
        return optuna.storages.RDBStorage(resolved, engine_kwargs=engine_kwargs)
    # Two replicas opening an empty schema at once would both create Optuna's tables and
    # one fail (a duplicate type), its engine lost with an open connection: serialize.
    from sqlalchemy import create_engine, text

    engine = create_engine(parsed)
    try:
        with engine.connect() as connection:
            connection.execute(text("select pg_advisory_lock(:key)"), {"key": _CREATE_LOCK})
            try:
                return optuna.storages.RDBStorage(resolved, engine_kwargs=engine_kwargs)
            finally:
                connection.execute(text("select pg_advisory_unlock(:key)"), {"key": _CREATE_LOCK})
    finally:
        engine.dispose()


_CREATE_LOCK = 0x6D6C6275  # "mlbu": the advisory lock that serializes creating the tables


def close_storage(storage: BaseStorage | None) -> None:
    """Release a storage's database connections (idempotent; None and in-memory: nothing)."""
    engine = getattr(storage, "engine", None)
    if engine is None:
        return
    remove = getattr(storage, "remove_session", None)
    if remove is not None:
        remove()
    engine.dispose()


@contextmanager
def storage_at(url: str) -> Iterator[BaseStorage]:
    """`open_storage(url)`, closed on exit."""
    storage = open_storage(url)
    try:
        yield storage
    finally:
        close_storage(storage)


def study_name(model: str, run_id: str) -> str:
    """The study of one training run: `<model>-<run id>`."""
    return f"{model}-{run_id}"


# ── records ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class TrialRecord:
    """One trial: params, validation metric, state, how long, why it failed, who ran it."""

    number: int
    state: str  # complete | failed | pruned | running | waiting
    params: dict[str, Any]
    value: float | None
    duration_s: float | None
    error: str | None = None
    worker: str | None = None
    fit_s: float | None = None
    convert_s: float | None = None


@dataclass(frozen=True)
class RunRecord:
    """One training run's search: the run's facts (study attributes) and its trials."""

    study: str
    model: str
    run_id: str
    status: str
    metric: str
    direction: str  # maximize | minimize
    seed: int | None
    dataset_fingerprint: str
    started_at: datetime | None
    best_trial: int | None
    best_value: float | None
    version: int | None
    attrs: dict[str, Any]
    trials: list[TrialRecord] = field(default_factory=list)

    def sorted_trials(self) -> list[TrialRecord]:
        """Completed trials best first (in the metric's direction), then the others by number."""
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        rest = [t for t in self.trials if t not in done]
        sign = -1.0 if self.direction == "maximize" else 1.0
        done.sort(key=lambda t: (sign * (t.value if t.value is not None else math.nan), t.number))
        rest.sort(key=lambda t: t.number)
        return done + rest

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = self.started_at.isoformat() if self.started_at else None
        out["trials"] = [asdict(t) for t in self.sorted_trials()]
        return out


def trial_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRecord(
        number=trial.number,
        state=_STATE_NAMES.get(trial.state.name, trial.state.name.lower()),
        params=dict(trial.params),
        value=trial.value if trial.state.name == "COMPLETE" else None,
        duration_s=duration,
        error=attrs.get("error"),
        worker=attrs.get("worker"),
        fit_s=attrs.get("fit_s"),
        convert_s=attrs.get("convert_s"),
    )


_STATE_NAMES = {"COMPLETE": "complete", "FAIL": "failed", "PRUNED": "pruned"}


def _run_from(
    name: str,
    attrs: dict[str, Any],
    direction: str,
    started: datetime | None,
    trials: list[TrialRecord],
) -> RunRecord:
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    best: TrialRecord | None = None
    if done:
        pick = max if direction == "maximize" else min
        best = pick(done, key=lambda t: t.value if t.value is not None else math.nan)
    return RunRecord(
        study=name,
        model=str(attrs.get("model", "")),
        run_id=str(attrs.get("run_id", "")),
        status=str(attrs.get("status", "")),
        metric=str(attrs.get("metric", "")),
        direction=direction,
        seed=attrs.get("seed"),
        dataset_fingerprint=str(attrs.get("dataset_fingerprint", "")),
        started_at=started,
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        version=attrs.get("version"),
        attrs=attrs,
        trials=trials,
    )


def _direction(study: Any) -> str:
    return "maximize" if study.direction.name == "MAXIMIZE" else "minimize"


def list_runs(storage: BaseStorage, model: str | None = None) -> list[RunRecord]:
    """Every recorded run (of `model`), newest first, with their trials."""
    import optuna

    out: list[RunRecord] = []
    for frozen in storage.get_all_studies():
        attrs = dict(frozen.user_attrs)
        if model is not None and attrs.get("model") != model:
            continue
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
        started = _started(attrs, study)
        out.append(_run_from(frozen.study_name, attrs, _direction(frozen), started, trials))
    out.sort(key=lambda r: r.started_at or datetime.min.replace(tzinfo=UTC), reverse=True)
    return out


def get_run(storage: BaseStorage, run: str) -> RunRecord:
    """One run by study name, run id or a unique prefix of either; KeyError when unknown."""
    names = [s.study_name for s in storage.get_all_studies()]
    exact = [n for n in names if n == run or n.endswith(f"-{run}")]
    matches = exact or [n for n in names if n.startswith(run) or _run_part(n).startswith(run)]
    if not matches:
        raise KeyError(f"no run {run!r} in the search storage")
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5])
        raise KeyError(f"run {run!r} is ambiguous: {shown}")
    import optuna

    study = optuna.load_study(study_name=matches[0], storage=storage)
    attrs = dict(study.user_attrs)
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    return _run_from(matches[0], attrs, _direction(study), _started(attrs, study), trials)


def _run_part(name: str) -> str:
    return name.rsplit("-", 1)[-1]


def _started(attrs: dict[str, Any], study: Any) -> datetime | None:
    if "started_at" in attrs:
        return datetime.fromisoformat(str(attrs["started_at"]))
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    return min(starts).replace(tzinfo=UTC) if starts else None


def request_cancel(storage: BaseStorage, name: str, reason: str) -> bool:
    """Ask every worker of study `name` to stop after its current trial; False if no such study."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return False
    study.set_user_attr(CANCELLED_ATTR, reason)
    return True


def record_version(storage: BaseStorage, name: str, version: int) -> None:
    """Link the run to the registry version it produced."""
    import optuna

    optuna.load_study(study_name=name, storage=storage).set_user_attr("version", version)


# ── joining another replica's search ─────────────────────────────────────────

JOINABLE_ATTR = "joinable"
"""Set (True) on a study whose run records what a joiner needs: the spec's fingerprint,
the training window, the creator's worker name and, once loaded, the dataset's fingerprint."""


@dataclass(frozen=True)
class JoinableSearch:
    """A running search another replica may join, with what rebuilds its dataset."""

    study: str
    creator: str
    spec_fingerprint: str
    dataset_fingerprint: str
    window_start: datetime | None
    window_end: datetime | None
    budget_trials: int
    trials: int


def join_refusal(
    attrs: dict[str, Any], *, model: str, worker: str, spec_fingerprint: str, now: datetime
) -> str | None:
    """Why this worker must not join the study with `attrs` (None: it may).

    Not this model's, not running, not joinable, cancelled or started by this worker:
    silently not a candidate ("" is returned). A different spec, or a run older than
    its wall-clock budget (its creator is gone): a reason worth logging.
    """
    if attrs.get("model") != model or attrs.get("status") != RUNNING:
        return ""
    if not attrs.get(JOINABLE_ATTR) or attrs.get(CANCELLED_ATTR) or attrs.get("creator") == worker:
        return ""
    if not attrs.get("dataset_fingerprint"):
        return ""  # the creator is still loading its dataset: not yet
    if attrs.get("spec_fingerprint") != spec_fingerprint:
        return "its spec differs from this replica's (spec fingerprint)"
    started = attrs.get("started_at")
    budget_s = attrs.get("budget_timeout_s")
    if started and budget_s is not None:
        age_s = (now - datetime.fromisoformat(str(started))).total_seconds()
        if age_s > float(budget_s):
            return f"it started {age_s:.0f}s ago, beyond its {budget_s}s budget (creator gone?)"
    return None


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(str(value)) if value else None


def joinable_searches(
    storage: BaseStorage, *, model: str, worker: str, spec_fingerprint: str
) -> tuple[list[JoinableSearch], dict[str, str]]:
    """Running searches of `model` this worker may join (oldest first), and the refused
    ones with why (study name → reason); studies whose budget of trials is taken are left out."""
    now = datetime.now(UTC)
    found: list[tuple[str, JoinableSearch]] = []
    refused: dict[str, str] = {}
    for frozen in storage.get_all_studies():
        attrs = dict(frozen.user_attrs)
        why = join_refusal(
            attrs, model=model, worker=worker, spec_fingerprint=spec_fingerprint, now=now
        )
        if why:
            refused[frozen.study_name] = why
        if why is not None:
            continue
        study_id = storage.get_study_id_from_name(frozen.study_name)
        trials = len(storage.get_all_trials(study_id, deepcopy=False))
        budget = int(attrs.get("budget_trials", 0))
        if trials >= budget:
            continue
        found.append(
            (
                str(attrs.get("started_at", "")),
                JoinableSearch(
                    study=frozen.study_name,
                    creator=str(attrs.get("creator", "")),
                    spec_fingerprint=spec_fingerprint,
                    dataset_fingerprint=str(attrs["dataset_fingerprint"]),
                    window_start=_when(attrs.get("window_start")),
                    window_end=_when(attrs.get("window_end")),
                    budget_trials=budget,
                    trials=trials,
                ),
            )
        )
    found.sort(key=lambda pair: pair[0])
    return [search for _, search in found], refused
