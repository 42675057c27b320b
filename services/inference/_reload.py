"""Hot reload: a published version is fetched, verified, warmed up and swapped in, or refused.

Every replica runs a *broadcast* consumer (`group_id=None`) of
`mlbus.model.published.v1`, so each one sees every publication. For the
served alias (`champion` by default) a publication is applied as:

    fetch bytes → sha256 → ONNX Runtime load → signature check → warm-up → swap

in a worker thread (none of it blocks requests), one publication per model at
a time. Any failure is a refusal: logged with the reason, counted
(`mlbus.inference.reloads{outcome="refused", stage=…}` and `ReloadStats`), and
the served version keeps serving. Fetch failures that may pass (the registry
is down) are `RetryableError`s: the consumer retries them with backoff.

The `canary` and `shadow` aliases are applied the same way, into their own
slot beside the main alias (`ModelRepository.swap(model, alias)`); their
signature must also accept what the main version accepts, so a request can go
to either.

At start, `bootstrap` asks the registry which version holds the alias of each
model (and its canary and shadow, if any) and loads it, unless a publication
got there first.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote, urlparse

from opentelemetry.metrics import CallbackOptions, Observation

from mlbus.bus import Received
from mlbus.errors import NotFound, PermanentError, RetryableError
from mlbus.events import Event, ModelPublished, ModelSignature
from mlbus.telemetry import meter

from ._model import LoadedModel, ModelRefused, OrtThreads, load_model
from ._repository import BESIDE_ALIASES, ModelRepository

if TYPE_CHECKING:
    from mlbus.registry_client import RegistryClient

log = logging.getLogger(__name__)
_meter = meter("mlbus.inference")
_reloads = _meter.create_counter(
    "mlbus.inference.reloads",
    description="published versions applied (outcome=loaded) or refused (outcome=refused, stage)",
)
_live_reloaders: weakref.WeakSet[ModelReloader] = weakref.WeakSet()


def _observe_served_versions(options: CallbackOptions) -> Iterator[Observation]:
    for reloader in list(_live_reloaders):
        yield from reloader.version_observations()


_meter.create_observable_gauge(
    "mlbus.inference.model_version",
    callbacks=[_observe_served_versions],
    description="the version served per model and alias (champion, canary, shadow)",
)


class ArtifactFetcher(Protocol):
    """Where a version's bytes come from (the registry, a local file, a test)."""

    async def fetch(self, model: str, version: int, artifact_uri: str) -> bytes: ...


class RegistryOrFileFetcher:
    """A `file://` artifact that exists here is read directly; anything else via the registry."""

    def __init__(self, registry: RegistryClient | None = None) -> None:
        self._registry = registry

    async def fetch(self, model: str, version: int, artifact_uri: str) -> bytes:
        parsed = urlparse(artifact_uri)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
            if self._registry is None or await asyncio.to_thread(path.is_file):
                return await asyncio.to_thread(path.read_bytes)
        if self._registry is None:
            raise ModelRefused(
                "fetch",
                f"{model} v{version}: cannot fetch {artifact_uri!r} without a registry "
                "(set MLBUS_INFERENCE_REGISTRY_ADDRESS)",
            )
        return await self._registry.download_artifact(model, version)


@dataclass(frozen=True)
class Publication:
    """A version to serve: from a `ModelPublished` event or the registry's alias."""

    model: str
    version: int
    artifact_uri: str
    sha256: str
    signature: ModelSignature | None
    alias: str

    @classmethod
    def of(cls, event: ModelPublished) -> Publication:
        return cls(
            event.model,
            event.version,
            event.artifact_uri,
            event.sha256,
            event.signature,
            event.alias,
        )


@dataclass
class ReloadStats:
    """What this replica did with publications (mirrors the `reloads` metric)."""

    loaded: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    last_refusal: str | None = None

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


class ModelReloader:
    """Applies publications of one alias to a `ModelRepository`."""

    def __init__(
        self,
        repository: ModelRepository,
        fetcher: ArtifactFetcher,
        *,
        alias: str = "champion",
        models: Iterable[str] = (),
        threads: OrtThreads | None = None,
        max_tensor_bytes: int | None = None,
    ) -> None:
        self.repository = repository
        self._max_tensor_bytes = max_tensor_bytes
        self.alias = alias
        self.models = frozenset(models)
        self._fetcher = fetcher
        self._threads = threads or OrtThreads()
        self._locks: dict[str, asyncio.Lock] = {}
        self.stats = ReloadStats()
        self.on_swap: Callable[[], Awaitable[None]] | None = None
        """Called after each swap (the server refreshes its health status)."""
        _live_reloaders.add(self)

    def version_observations(self) -> list[Observation]:
        """One observation per served (model, alias): the version number."""
        found = []
        for name in self.repository.names():
            for alias, slot in ((self.alias, None), *((a, a) for a in BESIDE_ALIASES)):
                model = self.repository.current(name, slot)
                if model is not None:
                    found.append(Observation(model.version, {"model": name, "alias": alias}))
        return found

    def wants(self, model: str, alias: str) -> bool:
        return (alias == self.alias or alias in BESIDE_ALIASES) and (
            not self.models or model in self.models
        )

    def _slot(self, alias: str) -> str | None:
        """None for the main alias, else the beside slot (`canary`, `shadow`)."""
        return None if alias == self.alias else alias

    async def apply(self, publication: Publication, *, only_if_unserved: bool = False) -> bool:
        """Serve `publication`'s version; False if refused (or skipped), the old one stays.

        Raises `RetryableError` when fetching failed in a way that may pass.
        """
        name = publication.model
        slot = self._slot(publication.alias)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            served = self.repository.current(name, slot)
            if only_if_unserved and served is not None:
                return False
            if (
                served is not None
                and served.version == publication.version
                and served.sha256 == publication.sha256
            ):
                return True  # a replay of what is served: nothing to do
            # A canary or shadow must accept what the main version accepts.
            reference = served if slot is None else self.repository.current(name) or served
            try:
                model = await self._load(publication, reference)
            except ModelRefused as refusal:
                self._refused(publication, refusal)
                return False
            self.repository.swap(model, slot)
        self.stats.loaded += 1
        _reloads.add(1, {"model": name, "outcome": "loaded"})
        log.info(
            "serving %s v%d (%s, was v%s)",
            name,
            model.version,
            publication.alias,
            served.version if served else "none",
        )
        if self.on_swap is not None:
            await self.on_swap()
        return True

    async def _load(self, publication: Publication, served: LoadedModel | None) -> LoadedModel:
        try:
            data = await self._fetcher.fetch(
                publication.model, publication.version, publication.artifact_uri
            )
        except (ModelRefused, RetryableError):
            raise
        except (PermanentError, OSError) as exc:
            raise ModelRefused(
                "fetch", f"{publication.model} v{publication.version}: {exc}"
            ) from None
        return await asyncio.to_thread(
            load_model,
            publication.model,
            publication.version,
            data,
            expected_sha256=publication.sha256,
            published_signature=publication.signature,
            served=served,
            threads=self._threads,
            max_tensor_bytes=self._max_tensor_bytes,
        )

    def _refused(self, publication: Publication, refusal: ModelRefused) -> None:
        self.stats.refused[refusal.stage] += 1
        self.stats.last_refusal = str(refusal)
        _reloads.add(1, {"model": publication.model, "outcome": "refused", "stage": refusal.stage})
        served = self.repository.current(publication.model, self._slot(publication.alias))
        log.error(
            "refused %s v%d (%s): %s; still serving %s",
            publication.model,
            publication.version,
            publication.alias,
            refusal.reason,
            f"v{served.version}" if served else "nothing",
        )

    async def on_event(self, received: Received[Event]) -> None:
        """Handler of the broadcast consumer of `ModelPublished`."""
        event = received.payload
        if isinstance(event, ModelPublished) and self.wants(event.model, event.alias):
            await self.apply(Publication.of(event))

    async def bootstrap(self, registry: RegistryClient) -> list[str]:
        """Load the version each model's alias points at now; the models loaded."""
        names = sorted(self.models) or [
            m.model for m in await registry.list_models() if self.alias in m.aliases
        ]
        loaded = []
        beside = [alias for alias in BESIDE_ALIASES if alias != self.alias]
        for name in names:
            for alias in (self.alias, *beside):
                try:
                    info = await registry.resolve_alias(name, alias)
                except NotFound:
                    if alias == self.alias:
                        log.warning("%s has no %r version yet; waiting for one", name, alias)
                    continue
                publication = Publication(
                    name, info.version, info.artifact_uri, info.sha256, info.signature, alias
                )
                if await self.apply(publication, only_if_unserved=True) and alias == self.alias:
                    loaded.append(name)
        return loaded
