"""Generate the committed Python gRPC stubs from the .proto sources (`make proto`).

Every ``*.proto`` under ``proto/`` is compiled with the pinned ``grpcio-tools``
(in-process, ``grpc_tools.protoc``) using ``-I proto``, so
``proto/mlbus/api/inference/v2/grpc_predict_v2.proto`` becomes the module
``mlbus.api.inference.v2.grpc_predict_v2_pb2`` (plus ``_pb2_grpc`` and a
``.pyi``) under ``--out`` (default ``libs``). An empty ``__init__.py`` is added to
every generated package below ``mlbus/api``.

The output depends only on the .proto files and the grpcio-tools version: the
same input gives identical bytes. Stale generated modules under
``<out>/mlbus/api`` (from removed .proto files) are deleted first.
``tests/unit/test_proto_stubs.py`` regenerates into a temporary directory and
fails when the committed stubs differ.

Usage: ``python tools/gen_proto.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
# Generated packages live below this prefix; mlbus/ and mlbus/api/ themselves
# hold hand-written __init__.py files and are never touched.
API_PREFIX = Path("mlbus") / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


class ProtoGenerationError(RuntimeError):
    """protoc rejected the sources or the layout is not what the generator expects."""


def find_protos(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto under ``proto_root``, as paths relative to it, in a stable order."""
    protos = sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))
    for proto in protos:
        if not proto.is_relative_to(API_PREFIX):
            raise ProtoGenerationError(
                f"{proto_root / proto}: .proto sources must live under proto/{API_PREFIX}/"
            )
    return protos


def expected_outputs(protos: list[Path]) -> list[Path]:
    """Files (relative to ``--out``) that generation produces for ``protos``."""
    outputs: set[Path] = set()
    for proto in protos:
        stem = proto.with_suffix("")
        outputs.update(stem.with_name(stem.name + suffix) for suffix in GENERATED_SUFFIXES)
        package = proto.parent
        while package != API_PREFIX:
            outputs.add(package / "__init__.py")
            package = package.parent
    return sorted(outputs)


def _remove_stale(out_dir: Path) -> None:
    api_dir = out_dir / API_PREFIX
    if not api_dir.is_dir():
        return
    for path in sorted(api_dir.rglob("*")):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES):
            path.unlink()


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every .proto into ``out_dir``; return the written files (relative)."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev dependency only

    protos = find_protos(proto_root)
    if not protos:
        raise ProtoGenerationError(f"no .proto files under {proto_root}")
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out_dir)

    # Well-known types (google/protobuf/*.proto) ship with grpcio-tools.
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root.resolve()}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        # Absolute input paths map onto the -I root, so the descriptor names
        # ("mlbus/api/...") do not depend on the working directory.
        *(str(proto_root.resolve() / proto) for proto in protos),
    ]
    if protoc.main(args) != 0:
        raise ProtoGenerationError(f"protoc failed: {' '.join(args)}")

    outputs = expected_outputs(protos)
    for init in (p for p in outputs if p.name == "__init__.py"):
        init_path = out_dir / init
        if not init_path.exists():
            init_path.write_bytes(b"")
    missing = [str(p) for p in outputs if not (out_dir / p).is_file()]
    if missing:
        raise ProtoGenerationError(f"protoc did not write: {', '.join(missing)}")
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "libs",
        help="root directory for the generated mlbus/api/... modules (default: libs)",
    )
    args = parser.parse_args(argv)
    try:
        written = generate(args.out)
    except ProtoGenerationError as exc:
        sys.stderr.write(f"gen_proto: {exc}\n")
        return 1
    sys.stdout.write(f"gen_proto: wrote {len(written)} files under {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
