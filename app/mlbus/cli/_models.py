"""`mlbus models list|show|register|promote|rollback|lineage`: the model registry from a shell.

Commands talk gRPC to the registry: `--registry host:port` (or
MLBUS_REGISTRY_ADDRESS), else the registry of the `mlbus up` running in the
data folder, else 127.0.0.1:8002. Mutating commands send MLBUS_REGISTRY_TOKEN
as a bearer token when it is set.

`register` brings in a model trained anywhere (PyTorch, XGBoost, LightGBM …
exported to ONNX). With `--sample FILE` (CSV, JSON lines or Parquet feature
rows) it runs the model on the sample with onnxruntime and ships a reference
profile, so drift can compare features and predictions; without one, drift
watches predictions only.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from mlbus.cli._common import connect, console, fail

if TYPE_CHECKING:
    import numpy as np
    from rich.table import Table

    from mlbus.events import ModelSignature
    from mlbus.profiles import ReferenceProfile
    from mlbus.registry_client import AliasChange, ModelVersionInfo, RegistryClient

T = TypeVar("T")

RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        envvar="MLBUS_REGISTRY_ADDRESS",
        help="Registry gRPC address host:port "
        "(default: the running `mlbus up`'s, or 127.0.0.1:8002).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
AliasOption = Annotated[str, typer.Option("--alias", "-a", help="The alias to move.")]
ReasonOption = Annotated[
    str, typer.Option("--reason", "-r", help="Why (recorded in the alias history).")
]


def register(app: typer.Typer) -> None:
    models = typer.Typer(
        help="The model registry: versions, aliases (champion, canary, shadow), lineage.",
        no_args_is_help=True,
    )
    app.add_typer(models, name="models")

    @models.command("list")
    def list_models(
        name: Annotated[
            str | None, typer.Argument(help="A model: list its versions.", show_default=False)
        ] = None,
        limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="At most (0: all).")] = 0,
        registry: RegistryOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """List models with their aliases, or the versions of one model, newest first."""
        if name is None:
            summaries = _call(registry, lambda c: c.list_models())
            if as_json:
                _echo_json([s.model_dump(mode="json") for s in summaries])
                return
            if not summaries:
                console.print("no models registered yet")
                return
            from rich.table import Table

            table = Table("model", "latest", "aliases", "created")
            for s in summaries:
                aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(s.aliases.items()))
                table.add_row(s.model, f"v{s.latest_version}", aliases or "-", _when(s.created_at))
            console.print(table)
            return
        versions = _call(registry, lambda c: c.list_versions(name, limit))
        if as_json:
            _echo_json([_version_json(v) for v in versions])
            return
        console.print(_versions_table(name, versions))

    @models.command("show")
    def show(
        name: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
        which: Annotated[
            str | None,
            typer.Argument(help="Version number or alias (default: latest).", show_default=False),
        ] = None,
        registry: RegistryOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Show one version: artifact, signature, metrics, gate decision, lineage fields."""

        async def fetch(client: RegistryClient) -> ModelVersionInfo:
            if which is None:
                return await client.get_version(name)
            if which.isdigit():
                return await client.get_version(name, int(which))
            return await client.resolve_alias(name, which)

        info = _call(registry, fetch)
        if as_json:
            _echo_json(_version_json(info, full=True))
            return
        _print_version(info)

    @models.command("register")
    def register_model(
        name: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
        file: Annotated[
            Path,
            typer.Argument(
                help="The ONNX file.",
                exists=True,
                dir_okay=False,
                readable=True,
                show_default=False,
            ),
        ],
        metrics: Annotated[
            str | None, typer.Option("--metrics", help="JSON object, e.g. '{\"auc\": 0.91}'.")
        ] = None,
        params: Annotated[
            str | None, typer.Option("--params", help="JSON object of training parameters.")
        ] = None,
        alias: Annotated[
            str | None,
            typer.Option(
                "--alias", "-a", help="Point this alias at the new version (needs --reason)."
            ),
        ] = None,
        reason: Annotated[str, typer.Option("--reason", "-r", help="Why (with --alias).")] = "",
        sample: Annotated[
            Path | None,
            typer.Option(
                "--sample",
                exists=True,
                dir_okay=False,
                help="Feature rows (CSV, JSON lines, Parquet) to compute the reference profile.",
            ),
        ] = None,
        description: Annotated[str, typer.Option("--description", "-d")] = "",
        run_id: Annotated[str | None, typer.Option("--run-id")] = None,
        code_version: Annotated[str | None, typer.Option("--code-version")] = None,
        registry: RegistryOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Register an ONNX model trained anywhere as the next version of NAME."""
        if alias and not reason.strip():
            fail("--alias needs --reason: say why this version should serve")
        metric_values = _json_object(metrics, "--metrics")
        try:
            parsed_metrics = {k: float(v) for k, v in metric_values.items()}
        except (TypeError, ValueError):
            fail("--metrics must map metric names to numbers")
        artifact = file.read_bytes()
        profile = None
        if sample is not None:
            try:
                profile = profile_from_sample(artifact, sample)
            except (ValueError, KeyError, ImportError) as exc:
                fail(f"cannot compute a reference profile from {sample}: {exc}")
        result = _call(
            registry,
            lambda c: c.register(
                name,
                artifact,
                metrics=parsed_metrics,
                params=_json_object(params, "--params"),
                reference_profile=profile,
                description=description,
                run_id=run_id,
                code_version=code_version,
                alias=alias,
                reason=reason,
                actor=_actor(),
            ),
        )
        if as_json:
            _echo_json(
                {
                    "version": _version_json(result.version),
                    "promoted": result.promoted,
                    "alias_changes": [c.model_dump(mode="json") for c in result.alias_changes],
                }
            )
            return
        info = result.version
        console.print(
            f"registered [bold]{info.model}[/] v{info.version} "
            f"(sha256 {info.sha256[:12]}…, {info.size_bytes:,} bytes"
            f"{', reference profile from ' + sample.name if sample else ', no reference profile'})",
            highlight=False,
        )
        for change in result.alias_changes:
            _print_change(change)
        if not result.promoted:
            console.print(f"stays a candidate: {info.gate.reason}", highlight=False)

    @models.command("promote")
    def promote(
        name: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
        version: Annotated[int, typer.Argument(min=1, help="Version to point the alias at.")],
        reason: ReasonOption,
        alias: AliasOption = "champion",
        registry: RegistryOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Point an alias (default champion) at a version, bypassing the gates."""
        change = _call(
            registry, lambda c: c.set_alias(name, alias, version, reason=reason, actor=_actor())
        )
        _print_change(change, as_json)

    @models.command("rollback")
    def rollback(
        name: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
        reason: ReasonOption,
        alias: AliasOption = "champion",
        registry: RegistryOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Move an alias (default champion) back to the version it held before."""
        change = _call(registry, lambda c: c.rollback(name, alias, reason=reason, actor=_actor()))
        _print_change(change, as_json)

    @models.command("lineage")
    def lineage(
        name: Annotated[str, typer.Argument(help="Model name.", show_default=False)],
        version: Annotated[int, typer.Argument(min=1, help="Version.")],
        registry: RegistryOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Where a version came from (run, data, features, code) and where it served."""
        found = _call(registry, lambda c: c.lineage(name, version))
        if as_json:
            _echo_json(
                {
                    "version": _version_json(found.version, full=True),
                    "alias_history": [c.model_dump(mode="json") for c in found.alias_history],
                }
            )
            return
        _print_version(found.version)
        if not found.alias_history:
            console.print("never served under an alias")
            return
        from rich.table import Table

        table = Table("when", "alias", "move", "kind", "actor", "reason", title="alias history")
        for c in found.alias_history:
            moved = f"v{c.previous_version or '-'} → v{c.version}"
            table.add_row(_when(c.at), c.alias, moved, c.kind, c.actor, c.reason)
        console.print(table)


# ── talking to the registry ─────────────────────────────────────────────────


def registry_address(explicit: str | None) -> str:
    """--registry / MLBUS_REGISTRY_ADDRESS, else the running `mlbus up`'s, else the default."""
    from mlbus.registry_client import DEFAULT_ADDRESS

    return connect().grpc_address("registry", explicit, DEFAULT_ADDRESS)


def _call(address: str | None, work: Callable[[RegistryClient], Awaitable[T]]) -> T:
    from mlbus.errors import MlbusError, RetryableError, Unauthenticated
    from mlbus.registry_client import RegistryClient

    where = registry_address(address)

    async def run() -> T:
        async with RegistryClient(where, token=os.environ.get("MLBUS_REGISTRY_TOKEN") or None) as c:
            return await work(c)

    try:
        return asyncio.run(run())
    except RetryableError as exc:
        fail(
            f"{exc}. Start the services with `mlbus up`, or point at a registry with "
            "--registry host:port (MLBUS_REGISTRY_ADDRESS)"
        )
    except Unauthenticated as exc:
        fail(str(exc))
    except MlbusError as exc:
        fail(str(exc))


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (cli)"


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{option} is not JSON: {exc}")
    if not isinstance(value, dict):
        fail(f"{option} must be a JSON object")
    return value


# ── reference profile from a sample ─────────────────────────────────────────


def read_sample(path: Path) -> dict[str, list[Any]]:
    """Feature columns from a CSV (header row), JSON-lines or Parquet file."""
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return {name: table.column(name).to_pylist() for name in table.column_names}
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not all(isinstance(row, dict) for row in rows):
            raise ValueError("each JSON line must be an object of feature values")
    else:
        import csv

        with path.open(newline="") as handle:
            rows = [{k: _csv_value(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    if not rows:
        raise ValueError("the sample has no rows")
    names = list(rows[0])
    return {name: [row.get(name) for row in rows] for name in names}


def _csv_value(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def profile_from_sample(artifact: bytes, sample: Path) -> ReferenceProfile:
    """Profile the sample's features and the model's predictions on them."""
    import numpy as np

    from mlbus.events import ModelSignature
    from mlbus.profiles import ReferenceProfile
    from mlbus.signatures import tensor_specs

    columns = read_sample(sample)
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            "onnxruntime is needed to run the model (pip install mlbus[inference])"
        ) from exc
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    # Inputs only: the profile needs what the model takes; the registry judges its outputs.
    inputs = ModelSignature(inputs=tensor_specs(session.get_inputs()), outputs=())
    feed = model_inputs(inputs, columns)
    outputs = session.run(None, feed)
    return ReferenceProfile.from_samples(
        {name: np.asarray(values, dtype=object) for name, values in columns.items()},
        predictions=prediction_column(outputs),
    )


def model_inputs(signature: ModelSignature, columns: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """The model's input feed: one column per named input, or all columns stacked into one."""
    import numpy as np

    from mlbus.signatures import OIP_TO_NUMPY

    inputs = signature.inputs
    if all(t.name in columns for t in inputs):
        feed = {}
        for t in inputs:
            array = np.asarray(columns[t.name], dtype=OIP_TO_NUMPY[t.datatype])
            feed[t.name] = array.reshape(-1, 1) if len(t.shape) == 2 else array
        return feed
    if len(inputs) == 1 and len(inputs[0].shape) == 2:
        only = inputs[0]
        width = only.shape[1]
        if width not in (-1, len(columns)):
            raise ValueError(
                f"the model's input {only.name!r} takes {width} features, the sample has "
                f"{len(columns)} columns ({', '.join(columns)})"
            )
        stacked = np.column_stack([np.asarray(v, dtype=np.float64) for v in columns.values()])
        return {only.name: stacked.astype(OIP_TO_NUMPY[only.datatype])}
    raise ValueError(
        "cannot map the sample's columns to the model's inputs "
        f"({', '.join(t.name for t in inputs)}): name the columns after the inputs"
    )


def prediction_column(outputs: list[Any]) -> np.ndarray:
    """One value per row: a score for regressors and binary classifiers, else the class."""
    import numpy as np

    arrays = [np.asarray(o) for o in outputs if isinstance(o, np.ndarray)]
    if not arrays:
        raise ValueError("the model returned no tensors")
    scores = next((a for a in arrays if a.dtype.kind == "f"), arrays[0])
    if scores.ndim == 1 or (scores.ndim == 2 and scores.shape[1] == 1):
        return scores.reshape(-1)
    if scores.ndim == 2 and scores.shape[1] == 2:
        return scores[:, 1]  # the positive class's probability
    if scores.ndim == 2:
        return np.asarray([str(i) for i in scores.argmax(axis=1)], dtype=object)
    raise ValueError(f"cannot read predictions from an output of shape {scores.shape}")


# ── printing ────────────────────────────────────────────────────────────────


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _version_json(info: ModelVersionInfo, *, full: bool = False) -> dict[str, Any]:
    data = info.model_dump(mode="json", exclude=set() if full else {"reference_profile"})
    if not full:
        data["has_reference_profile"] = info.reference_profile is not None
    return data


def _when(value: Any) -> str:
    return str(value.astimezone().strftime("%Y-%m-%d %H:%M:%S"))


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "-"


def _versions_table(name: str, versions: list[ModelVersionInfo]) -> Table:
    from rich.table import Table

    table = Table("version", "aliases", "metrics", "gate", "sha256", "created", title=name)
    for v in versions:
        gate = "passed" if v.gate.passed else ("explicit" if not v.gate.evaluated else "candidate")
        table.add_row(
            f"v{v.version}",
            ", ".join(v.aliases) or "-",
            _metrics(v.metrics),
            gate,
            v.sha256[:12],
            _when(v.created_at),
        )
    return table


def _print_version(info: ModelVersionInfo) -> None:
    from rich.table import Table

    table = Table(show_header=False, title=f"{info.model} v{info.version}", title_justify="left")
    table.add_column(style="bold")
    table.add_column()

    def tensors(specs: Any) -> str:
        return ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in specs)

    profile = info.reference_profile
    rows = [
        ("aliases", ", ".join(info.aliases) or "-"),
        ("artifact", info.artifact_uri),
        ("sha256", info.sha256),
        ("size", f"{info.size_bytes:,} bytes"),
        ("inputs", tensors(info.signature.inputs)),
        ("outputs", tensors(info.signature.outputs)),
        ("metrics", _metrics(info.metrics)),
        ("gate", info.gate.reason or "-"),
        ("params", json.dumps(info.params, sort_keys=True) if info.params else "-"),
        ("run", info.run_id or "-"),
        ("dataset", info.dataset_fingerprint or "-"),
        ("features", ", ".join(f"{k} v{v}" for k, v in info.feature_views.items()) or "-"),
        ("code", info.code_version or "-"),
        ("window", info.evaluation_window or "-"),
        (
            "profile",
            _profile_line(profile) if profile else "none (drift watches predictions only)",
        ),
        ("created", f"{_when(info.created_at)} by {info.created_by}"),
    ]
    if info.description:
        rows.append(("description", info.description))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table, highlight=False)


def _profile_line(profile: ReferenceProfile) -> str:
    line = profile.summary()
    alarming = profile.calibration is not None and profile.calibration.alarms
    return f"[bold red]{line}[/]" if alarming else line


def _print_change(change: AliasChange, as_json: bool = False) -> None:
    if as_json:
        _echo_json(change.model_dump(mode="json"))
        return
    before = f"v{change.previous_version}" if change.previous_version else "(unset)"
    console.print(
        f"{change.model}:[bold]{change.alias}[/] {before} → v{change.version} "
        f"({change.kind}; {change.reason})",
        highlight=False,
    )
