"""The trainer's label log: label events from the validated stream, written to the offline store.

A label source's validated events name the event they label; each becomes a
`LabelRow` buffered here and written with `write_labels` before the consumer
commits their offsets (at-least-once; readers de-duplicate by label event id), at
most every `MLBUS_TRAINER_LABEL_FLUSH_INTERVAL_S`, and before each training run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mlbus.bus import Received
from mlbus.events import Event, IngestValidated
from mlbus.featurestore import OfflineStore
from mlbus.spec import ProjectSpec
from mlbus.training import LabelRow, write_labels

from ._settings import TrainerSettings


@dataclass
class LabelLog:
    """`on_validated` is the consumer's handler, `flush` its commit hook."""

    settings: TrainerSettings
    spec: ProjectSpec
    _rows: list[tuple[str, LabelRow]] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def on_validated(self, received: Received[Event]) -> None:
        event = received.payload
        if not isinstance(event, IngestValidated):
            return
        source = self.spec.sources.get(event.source)
        if source is None or source.labels is None:
            return
        link = source.labels
        labelled = event.payload.get(link.event_id_field)
        label = event.payload.get(link.label_field)
        if labelled is None or label is None:
            return
        self._rows.append(
            (
                event.source,
                LabelRow(
                    entity_id=event.entity_id,
                    event_id=str(labelled),
                    label_time_ms=int(event.event_time.timestamp() * 1000),
                    label_event_id=event.event_id,
                    label=label,
                ),
            )
        )
        if len(self._rows) >= self.settings.label_flush_rows:
            await self.flush()

    async def flush(self) -> None:
        """Write buffered labels before their offsets commit (at-least-once; readers de-dup).

        Called by the consumer's commit and before a training run; the lock makes a commit
        wait for a write in progress, so it never commits offsets of unwritten labels.
        """
        async with self._lock:
            if not self._rows:
                return
            rows, self._rows = self._rows, []
            try:
                offline = OfflineStore(self.settings.resolved_offline_url())
                for name in {source for source, _ in rows}:
                    chunk = [row for source, row in rows if source == name]
                    await asyncio.to_thread(write_labels, offline, name, chunk)
            except BaseException:
                # Not all written: keep them for the commit's retry (a source written
                # twice is de-duplicated by readers), never commit past them.
                self._rows[:0] = rows
                raise
