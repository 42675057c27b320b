"""What the drift service needs to know about one served model version, from the registry.

Per (model, version), fetched once and cached: the reference profile (what live
windows are compared with), how categorical features were encoded for the
model (the prediction log holds the model's inputs, so categories arrive as
the trainer's integer codes and are decoded back to the profile's category
strings here), and which class is positive (for the label join).

A registry that cannot be reached is a `RetryableError`: the consumer waits and
retries, nothing is skipped. A version that does not exist or has no profile is
remembered as unmonitorable for `retry_s` (one log line, a metric per record
skipped), then asked again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from mlbus.driftstats import ABSENT, error_metric
from mlbus.errors import MlbusError, NotFound, RetryableError
from mlbus.events import Scalar
from mlbus.model_metadata import encoding_of, positive_class_of, read_onnx_metadata
from mlbus.profiles import ErrorMetric, ReferenceProfile
from mlbus.registry_client import ModelVersionInfo
from mlbus.spec import FeatureDef, ProjectSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CategoryDecoder:
    """Integer codes in the prediction log → the category strings the profile counts.

    `categories[ref][i]` is the category of code i (the trainer's `FeatureEncoding`:
    enum values in spec order, booleans `false`/`true`, free strings as seen in
    training). Strings pass through (models fed by name log their raw values);
    a code with no category (NaN was logged as null; an out-of-range number) is
    missing; a feature without a table is left as logged.
    """

    categories: Mapping[str, Sequence[str]]
    _lookups: Mapping[str, Mapping[float, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # code → category; a float code and its int hash alike (2.0 and 2 find the same)
        lookups = {r: {float(i): c for i, c in enumerate(t)} for r, t in self.categories.items()}
        object.__setattr__(self, "_lookups", lookups)

    def decode(self, features: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """One logged row with its codes decoded."""
        out = dict(features)
        for ref, lookup in self._lookups.items():
            if ref in out:
                out[ref] = _category(out[ref], lookup)
        return out

    def columns(
        self, rows: Sequence[Mapping[str, Scalar]], refs: Iterable[str]
    ) -> dict[str, Sequence[Any]]:
        """Logged rows laid out per feature ref, codes decoded; `ABSENT` where a row lacks
        the key (the monitor's batch input)."""
        refs = list(refs)
        out: dict[str, Sequence[Any]] = {}
        for ref, values in zip(refs, _laid_out(rows, refs), strict=True):
            lookup = self._lookups.get(ref)
            if lookup is not None:  # float codes (what the trainer logs) the short way
                find = lookup.get
                values = [find(v) if v.__class__ is float else _category(v, lookup) for v in values]
            out[ref] = values
        return out

    @classmethod
    def from_spec(cls, features: Sequence[FeatureDef]) -> CategoryDecoder:
        """The trainer's convention where the spec alone fixes it: enums and booleans."""
        tables: dict[str, list[str]] = {}
        for feature in features:
            if feature.kind != "categorical":
                continue
            if feature.dtype == "bool":
                tables[feature.ref] = ["false", "true"]
            elif feature.values is not None:
                tables[feature.ref] = [str(v) for v in feature.values]
        return cls(tables)

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, str], features: Sequence[FeatureDef]
    ) -> CategoryDecoder:
        """From the model's `mlbus.encoding` metadata; the spec's convention when absent.

        Raises ValueError when the metadata is present but malformed.
        """
        written = encoding_of(metadata)
        if written is None:
            return cls.from_spec(features)
        return cls({ref: list(values) for ref, values in written.categories.items()})


def _laid_out(rows: Sequence[Mapping[str, Scalar]], refs: list[str]) -> list[Sequence[Any]]:
    """Per ref, its value in each row (`ABSENT` where a row lacks the key)."""
    if len(refs) > 1 and rows:
        try:  # every row holds every ref (what inference logs): one C call per row
            return list(zip(*map(itemgetter(*refs), rows), strict=True))
        except KeyError:
            pass
    return [[row.get(ref, ABSENT) for row in rows] for ref in refs]


def _category(value: Any, lookup: Mapping[float, str]) -> Any:
    """A logged code → its category: strings (and absent values) pass, booleans read as
    false/true, a code with no category (NaN logged as null, out of range, 1.5) is missing."""
    if value is None or value is ABSENT or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return lookup.get(value)


@dataclass(frozen=True)
class ServedVersion:
    """Everything the monitor of one model version needs, fetched once."""

    model: str
    version: int
    profile: ReferenceProfile
    decoder: CategoryDecoder
    positive: str
    error_metric: ErrorMetric
    """What a joined label's error is: the profile's holdout metric, else the task's."""


class RegistryReader:
    """The two registry reads the catalogue makes (a seam for unit tests)."""

    def __init__(
        self,
        get_version: Callable[[str, int], Awaitable[ModelVersionInfo]],
        download_artifact: Callable[[str, int], Awaitable[bytes]],
    ) -> None:
        self.get_version = get_version
        self.download_artifact = download_artifact


@dataclass
class VersionCatalog:
    """Cache of `ServedVersion`s, and of versions that cannot be monitored (for `retry_s`)."""

    registry: RegistryReader
    spec: ProjectSpec
    retry_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    on_unavailable: Callable[[str, int, str], None] | None = None
    _known: dict[tuple[str, int], ServedVersion] = field(default_factory=dict)
    _unmonitorable: dict[tuple[str, int], tuple[float, str]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def cached(self, model: str, version: int) -> ServedVersion | None:
        return self._known.get((model, version))

    async def get(self, model: str, version: int) -> ServedVersion | None:
        """The version's monitoring inputs; None if it cannot be monitored (reason logged).

        Raises `RetryableError` when the registry is unreachable.
        """
        key = (model, version)
        known = self._known.get(key)
        if known is not None:
            return known
        skipped = self._unmonitorable.get(key)
        if skipped is not None and self.clock() < skipped[0]:
            return None
        async with self._lock:
            if key in self._known:
                return self._known[key]
            try:
                served = await self._fetch(model, version)
            except RetryableError:
                raise
            except (NotFound, ValueError) as exc:
                self._skip(key, str(exc))
                return None
            except MlbusError as exc:
                self._skip(key, f"registry refused: {exc}")
                return None
            self._known[key] = served
            self._unmonitorable.pop(key, None)
            log.info(
                "monitoring %s v%d: profile of %d samples, %d features",
                model,
                version,
                served.profile.n_samples,
                len(served.profile.features),
            )
            clock = served.profile.timezone
            if served.profile.seasonality != "none" and clock != self.spec.drift.timezone:
                # the profile's phases are hours of the clock it was built with (ADR 0032)
                log.warning(
                    "%s v%d's profile keys its phases by %s hours, the spec says drift.timezone "
                    "%s: monitoring by the profile's until a retrained version replaces it",
                    model,
                    version,
                    clock,
                    self.spec.drift.timezone,
                )
            return served

    def _skip(self, key: tuple[str, int], reason: str) -> None:
        model, version = key
        self._unmonitorable[key] = (self.clock() + self.retry_s, reason)
        log.warning(
            "not monitoring %s v%d: %s (asking the registry again in %.0fs)",
            model,
            version,
            reason,
            self.retry_s,
        )
        if self.on_unavailable is not None:
            self.on_unavailable(model, version, reason)

    async def _fetch(self, model: str, version: int) -> ServedVersion:
        info = await self.registry.get_version(model, version)
        if info.reference_profile is None:
            raise ValueError("the version has no reference profile (register it with one)")
        artifact = await self.registry.download_artifact(model, version)
        metadata = await asyncio.to_thread(read_onnx_metadata, artifact)
        features = self.spec.model_features()
        return ServedVersion(
            model=model,
            version=version,
            profile=info.reference_profile,
            decoder=CategoryDecoder.from_metadata(metadata, features),
            positive=positive_class_of(metadata),
            error_metric=performance.metric
            if (performance := info.reference_profile.performance) is not None
            else error_metric(self.spec.model.task),
        )
