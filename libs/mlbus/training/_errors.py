"""What a training run raises when it cannot succeed on its data or spec."""

from __future__ import annotations

from typing import Literal

from mlbus.errors import PermanentError

Stage = Literal["dataset", "train", "convert", "parity", "evaluate", "register"]


class TrainingError(PermanentError):
    """A run that cannot succeed on this data or spec; `stage` says where it stopped."""

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage: Stage = stage
        self.reason = reason

    def __reduce__(self) -> tuple[type[TrainingError], tuple[Stage, str]]:
        return (TrainingError, (self.stage, self.reason))  # crosses the worker process
