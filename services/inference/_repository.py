"""Which version of each model is served, swapped atomically without locks on the request path.

A request looks its model up once (`get`) and keeps that `LoadedModel` until it
has answered: a swap that happens meanwhile changes what the *next* request
sees, never the one running. The swap is one dict assignment, atomic under
the GIL and invisible to a request half-way through; the replaced version's
session is released when the last request holding it finishes (reference
counting), with no bookkeeping here.
"""

from __future__ import annotations

from mlbus.errors import NotFound

from ._model import LoadedModel


class ModelRepository:
    """Model name → the `LoadedModel` currently served."""

    def __init__(self) -> None:
        self._served: dict[str, LoadedModel] = {}

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The served model `name`; `version` ("" = whichever is served) must match it."""
        model = self._served.get(name)
        if model is None:
            known = ", ".join(repr(n) for n in sorted(self._served)) or "none yet"
            raise NotFound(f"model {name!r} is not served here (served: {known})")
        if version and version != str(model.version):
            raise NotFound(
                f"model {name!r} version {version!r} is not served here "
                f"(serving version {model.version})"
            )
        return model

    def current(self, name: str) -> LoadedModel | None:
        return self._served.get(name)

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` from the next request on; return the version it replaced."""
        previous = self._served.get(model.name)
        self._served[model.name] = model
        return previous

    def remove(self, name: str) -> LoadedModel | None:
        return self._served.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._served)

    def __len__(self) -> int:
        return len(self._served)
