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
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mlbus.errors import MlbusError, NotFound, RetryableError
from mlbus.events import Scalar
from mlbus.profiles import ReferenceProfile
from mlbus.registry_client import ModelVersionInfo
from mlbus.spec import FeatureDef, ProjectSpec

log = logging.getLogger(__name__)

ENCODING_KEY = "mlbus.encoding"
CLASSES_KEY = "mlbus.classes"


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

    def decode(self, features: Mapping[str, Scalar]) -> dict[str, Scalar]:
        if not self.categories:
            return dict(features)
        out = dict(features)
        for ref, table in self.categories.items():
            value = out.get(ref)
            if value is None or isinstance(value, str):
                continue
            if isinstance(value, bool):
                out[ref] = "true" if value else "false"
                continue
            code = float(value)
            index = int(code) if math.isfinite(code) and code.is_integer() else -1
            out[ref] = table[index] if 0 <= index < len(table) else None
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
        text = metadata.get(ENCODING_KEY)
        if text is None:
            return cls.from_spec(features)
        try:
            doc = json.loads(text)
            categories = doc["categories"]
            if not isinstance(categories, dict):
                raise TypeError("categories is not an object")
            tables = {str(ref): [str(c) for c in values] for ref, values in categories.items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed {ENCODING_KEY} metadata: {exc}") from None
        return cls(tables)


def positive_class(metadata: Mapping[str, str]) -> str:
    """The class a score is the probability of (the trainer writes `negative,positive`)."""
    classes = metadata.get(CLASSES_KEY)
    return classes.split(",")[-1].strip() if classes else "true"


def onnx_metadata(artifact: bytes) -> dict[str, str]:
    """The custom metadata of an ONNX model (`metadata_props`)."""
    import onnx

    try:
        model = onnx.load_model_from_string(artifact)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ValueError(f"not an ONNX model: {exc}") from None
    return {prop.key: prop.value for prop in model.metadata_props}


@dataclass(frozen=True)
class ServedVersion:
    """Everything the monitor of one model version needs, fetched once."""

    model: str
    version: int
    profile: ReferenceProfile
    decoder: CategoryDecoder
    positive: str


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
        metadata = await asyncio.to_thread(onnx_metadata, artifact)
        features = self.spec.model_features()
        return ServedVersion(
            model=model,
            version=version,
            profile=info.reference_profile,
            decoder=CategoryDecoder.from_metadata(metadata, features),
            positive=positive_class(metadata),
        )
