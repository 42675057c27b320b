"""`mlbus features rebuild`: replay the validated topic into the online store.

The feature service rebuilds on its own when Redis loses its state (ADR 0012,
Redis loss). This command asks for the same replay by hand — after a Redis
restored from an older backup or an AOF that lost its last second — by deleting
the state marker: the running feature service notices within
`MLBUS_FEATURES_STATE_CHECK_S`, replays from the earliest offset (events already
counted change nothing; missing ones are counted) and writes the marker back.
The command shows the service's progress until then.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import typer

from mlbus.cli._common import DataDirOption, VerboseOption, connect, console, fail

POLL_S = 0.5


def register_rebuild(features: typer.Typer) -> None:
    @features.command("rebuild")
    def rebuild(
        timeout_s: Annotated[
            float,
            typer.Option("--timeout-s", help="Give up waiting for the feature service after this."),
        ] = 3600.0,
        spec_path: Annotated[
            Path | None, typer.Option("--spec", help="mlbus.yaml (default: the running stack's).")
        ] = None,
        data_dir: DataDirOption = None,
        verbose: VerboseOption = False,
    ) -> None:
        """Rebuild the online feature state from the validated topic's earliest offset.

        Done by the running feature service, which also does it by itself when Redis
        comes back empty; this shows its progress. Safe to repeat: an event already
        counted is not counted again.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        from mlbus.errors import MlbusError
        from mlbus.featurestore import OnlineStore
        from mlbus.redis_failures import REDIS_DOWN

        settings = connect(data_dir, spec_path, verbose=verbose).settings
        failures: tuple[type[BaseException], ...] = (MlbusError, *REDIS_DOWN)

        async def follow() -> int | None:
            """Ask for the rebuild, then show it; the records replayed (None: timed out)."""
            async with OnlineStore.from_settings(settings.redis) as store:
                keys, client = store.keys, store.client
                await client.delete(keys.state_marker(), keys.state_rebuild_progress())
                deadline = time.monotonic() + timeout_s
                with Progress(
                    *Progress.get_default_columns()[:1],
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                ) as progress:
                    task = progress.add_task("waiting for the feature service", total=None)
                    while time.monotonic() < deadline:
                        done = await client.exists(keys.state_marker())
                        # the last counts stay a minute after the marker is back
                        shown = await client.hgetall(keys.state_rebuild_progress())  # type: ignore[misc]
                        replayed = int(shown.get(b"replayed", 0))
                        if done:
                            return replayed
                        if shown:
                            progress.update(
                                task,
                                description="replaying the validated topic",
                                completed=replayed,
                                total=int(shown[b"total"]),
                            )
                        await asyncio.sleep(POLL_S)
                return None

        try:
            replayed = asyncio.run(follow())
        except failures as exc:
            fail(f"Redis at {settings.redis.url}: {exc}")
        if replayed is None:
            fail(
                f"the feature service did not rebuild within {timeout_s:g} s; is it running? "
                "It rebuilds when it next starts."
            )
        console.print(f"feature state rebuilt: {replayed:,} records replayed")
