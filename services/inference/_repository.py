"""Which version of each model is served, swapped atomically without locks on the request path.

A request looks its model up once (`get`) and keeps that `LoadedModel` until it
has answered: a swap that happens meanwhile changes what the *next* request
sees, never the one running. The swap is one dict assignment, atomic under
the GIL and invisible to a request half-way through; the replaced version's
session is released when the last request holding it finishes (reference
counting), with no bookkeeping here.

Beside the main alias (`champion`), a model may have a `canary` version (a
sticky share of entities goes to it) and a `shadow` version (scored off the
response path, logged only); each is one more dict of the same kind.
"""

from __future__ import annotations

from mlbus.errors import ModelNotReady, NotFound

from ._model import LoadedModel

CANARY = "canary"
SHADOW = "shadow"
BESIDE_ALIASES = (CANARY, SHADOW)
"""Aliases loaded beside the main one."""


class ModelRepository:
    """Model name → the `LoadedModel` currently served (and its canary and shadow, if any)."""

    def __init__(self) -> None:
        self._served: dict[str, LoadedModel] = {}
        self._canary: dict[str, LoadedModel] = {}
        self._shadow: dict[str, LoadedModel] = {}
        self._beside = {CANARY: self._canary, SHADOW: self._shadow}

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The served model `name`; `version` ("" = the main alias's) must be one served here.

        A version pinned to the canary's or the shadow's gets that one. Before any
        model is loaded (a restarted process), ModelNotReady: UNAVAILABLE, which
        clients retry, not NOT_FOUND, which they do not.
        """
        model = self._served.get(name)
        if model is None:
            if not self._served:  # starting, or waiting for the first publication: retry
                raise ModelNotReady(
                    f"no model is loaded here yet (asked for {name!r}): the server is "
                    "starting or waiting for the first publication of its alias"
                )
            known = ", ".join(repr(n) for n in sorted(self._served))
            raise NotFound(f"model {name!r} is not served here (served: {known})")
        if version and version != str(model.version):
            for beside in (self._canary.get(name), self._shadow.get(name)):
                if beside is not None and version == str(beside.version):
                    return beside
            raise NotFound(
                f"model {name!r} version {version!r} is not served here "
                f"(serving version {model.version})"
            )
        return model

    def current(self, name: str, alias: str | None = None) -> LoadedModel | None:
        """The main alias's version (`alias` None), or the `canary` / `shadow` one."""
        if alias is None:
            return self._served.get(name)
        return self._slot(alias).get(name)

    def canary(self, name: str) -> LoadedModel | None:
        return self._canary.get(name)

    def shadow(self, name: str) -> LoadedModel | None:
        return self._shadow.get(name)

    def swap(self, model: LoadedModel, alias: str | None = None) -> LoadedModel | None:
        """Serve `model` (as the main alias, or as `alias` beside it); return what it replaced."""
        slot = self._served if alias is None else self._slot(alias)
        previous = slot.get(model.name)
        slot[model.name] = model
        return previous

    def remove(self, name: str, alias: str | None = None) -> LoadedModel | None:
        return (self._served if alias is None else self._slot(alias)).pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._served)

    def __len__(self) -> int:
        return len(self._served)

    def _slot(self, alias: str) -> dict[str, LoadedModel]:
        slot = self._beside.get(alias)
        if slot is None:
            raise ValueError(f"expected an alias of {BESIDE_ALIASES}, got {alias!r}")
        return slot
