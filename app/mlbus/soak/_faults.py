"""What the soak breaks, in which order, and the hostile things it sends.

The schedule is seeded: the same seed injects the same faults in the same
order. Each kind appears once per round; rounds repeat, reshuffled, while the
soak runs. What a fault *does* and how its recovery is judged is in `_injection`;
here are the pieces that need no running stack (so they are unit-tested).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from mlbus.spec import Source

KILLED_SERVICES = ("ingestion", "features", "trainer", "registry", "inference", "drift", "outcomes")
"""Services killed with SIGKILL, in catalogue order (the console is the shell's, and its
kill is included when it runs)."""

STALLS = {"broker": 10.0, "redis": 5.0}
"""Component → seconds it is stopped (SIGSTOP … SIGCONT): a stall, not a loss."""

HOSTILE = "hostile:grpc"
"""A burst of hostile bytes, oversized messages and slow clients at every gRPC server."""
OTHER_FAULTS = ("malformed", "promote:corrupt", "promote:wrong-signature", HOSTILE)


def fault_kinds(services: Sequence[str]) -> list[str]:
    """Every fault kind for a stack running `services` (a service not running is not killed)."""
    kills = [f"kill:{name}" for name in (*KILLED_SERVICES, "console") if name in services]
    return [*kills, *(f"stall:{name}" for name in STALLS), *OTHER_FAULTS]


def fault_schedule(kinds: Sequence[str], seed: int) -> Iterator[str]:
    """Rounds of every kind, each round in a seeded order, forever."""
    rng = random.Random(seed)
    while True:
        yield from rng.sample(list(kinds), len(kinds))


@dataclass
class FaultRecord:
    """One injected fault: when (seconds since the soak began), what, and its recovery."""

    kind: str
    at_s: float
    detail: dict[str, Any] = field(default_factory=dict)
    recovered_at_s: float | None = None
    recovery_s: float | None = None
    """Seconds from the end of the fault (the kill, the SIGCONT, the bad promotion) until
    the component is back and what it serves works again; None: never recovered."""
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at_s": round(self.at_s, 2),
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            **({"error": self.error} if self.error else {}),
            **self.detail,
        }


# ── hostile input ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Malformed:
    """A record a contract must refuse, and why the soak expects it to."""

    case: str
    value: bytes


def malformed_records(source: Source, valid: dict[str, Any], now: datetime) -> list[Malformed]:
    """Records breaking `source`'s contract in different ways, built from a valid event.

    Each has a fresh event id, so a rejection can never be mistaken for a duplicate.
    """

    def variant(**changes: Any) -> dict[str, Any]:
        event = dict(valid)
        if source.event_id is not None:
            event[source.event_id] = str(uuid.uuid4())
        event.update(changes)
        return event

    def encode(event: dict[str, Any]) -> bytes:
        return json.dumps(event, separators=(",", ":")).encode()

    missing = variant()
    missing.pop(source.entity, None)
    max_bytes = source.contract.max_bytes or 4096
    future = (now + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    return [
        Malformed("not json", b'{"soak": not json'),
        Malformed("not an object", b"[1, 2, 3]"),
        Malformed("empty", b""),
        Malformed("missing entity", encode(missing)),
        Malformed("unknown field", encode(variant(soak_unknown_field=1))),
        Malformed("bad event time", encode(variant(**{source.event_time: "yesterday-ish"}))),
        Malformed("event time in the future", encode(variant(**{source.event_time: future}))),
        Malformed("oversized", encode(variant(soak_padding="x" * (max_bytes + 100)))),
    ]


def wrong_signature_model(width: int = 3) -> bytes:
    """A valid ONNX model whose input is not the served model's: `y = x @ w`, x [N, width]."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weights = np.linspace(-1.0, 1.0, width, dtype=np.float32).reshape(width, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "soak_wrong_signature",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def distinct_copy(artifact: bytes, note: str) -> bytes:
    """The same model with another doc string: other bytes, so another stored file
    (the artifact store is content-addressed), to corrupt without touching the original."""
    import onnx

    model = onnx.load_model_from_string(artifact)
    model.doc_string = note
    return bytes(model.SerializeToString())


def corrupt(data: bytes) -> bytes:
    """`data` damaged as a disk or a copy would: its middle bytes inverted."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


def now_utc() -> datetime:
    return datetime.now(UTC)
