"""Hostile input at the gRPC surfaces: random, mutated and oversized requests, slow clients.

    targets = [Target("registry", "127.0.0.1:8002", server_methods("registry"))]
    result = await fuzz(targets, seed=7, duration_s=5.0)
    result.calls["/mlbus.registry.v1.RegistryService/Register"]  # Counter of status names
    result.unexpected                                            # calls outside ALLOWED

Every call goes out as raw bytes (`channel.unary_unary(path)` with no
serializers), so nothing on the client side refuses what a server must
survive. A payload is one of:

- `random`: random bytes of a random length;
- `structured`: a message of the method's request type with random fields
  set (edge integers, NaN, empty and odd strings, plausible names), so the
  bytes parse and the handler's own checks are reached;
- `mutated`: a seed (a real request, or a structured one) with bytes flipped,
  inserted, deleted, duplicated or cut off.

Each call must end with a status before its deadline (`HUNG` if the client
still waits `HANG_MARGIN_S` after it). `ALLOWED` are the statuses a server
may answer garbage with; INTERNAL and UNKNOWN mean a handler raised on input
it should have refused by name. `oversize` sends one message above a
server's receive limit (RESOURCE_EXHAUSTED, and the server keeps answering);
`SlowClients` holds server streams unread and raw connections half-open
while the fuzz runs. Nothing here knows the soak: the integration tests and
the soak's hostile phase both drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
HANG_MARGIN_S = 5.0

ALLOWED = frozenset(
    {
        "OK",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNAVAILABLE",  # inference before its first model; a server draining
        "UNAUTHENTICATED",  # mutating calls without the token
        "RESOURCE_EXHAUSTED",  # above the receive limit
    }
)
"""Statuses a server may answer hostile bytes with. Not: INTERNAL/UNKNOWN (a handler raised),
DEADLINE_EXCEEDED (it did not answer in time), HUNG (the client waited past its deadline)."""


def _descriptors() -> dict[str, tuple[ServiceDescriptor, ...]]:
    from mlbus.api.features.v1 import features_pb2
    from mlbus.api.inference.v1 import predict_pb2
    from mlbus.api.inference.v2 import grpc_predict_v2_pb2
    from mlbus.api.labeling.v1 import labeling_pb2
    from mlbus.api.registry.v1 import registry_pb2

    return {
        "inference": (
            grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
            predict_pb2.DESCRIPTOR.services_by_name["PredictionService"],
        ),
        "registry": (registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],),
        "features": (features_pb2.DESCRIPTOR.services_by_name["FeatureService"],),
        "outcomes": (labeling_pb2.DESCRIPTOR.services_by_name["Labeling"],),
    }


@dataclass(frozen=True)
class FuzzMethod:
    path: str
    """`/package.Service/Method`."""
    request: Descriptor = field(repr=False)
    server_streaming: bool = False
    seeds: tuple[bytes, ...] = field(default=(), repr=False)
    """Real requests to mutate (besides structured random ones)."""


@dataclass(frozen=True)
class Target:
    server: str
    address: str
    methods: tuple[FuzzMethod, ...]
    names: tuple[str, ...] = ()
    """Strings worth guessing (model names, aliases, entity ids): deeper code than NOT_FOUND."""
    metadata: tuple[tuple[str, str], ...] = ()


def server_methods(
    server: str, seeds: Mapping[str, Sequence[Message | bytes]] | None = None
) -> tuple[FuzzMethod, ...]:
    """Every RPC `server` serves (its own services and health Check); `seeds` by method name."""
    from grpc_health.v1 import health_pb2

    services = (*_descriptors()[server], health_pb2.DESCRIPTOR.services_by_name["Health"])
    found = []
    for service in services:
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            if path == HEALTH_WATCH:
                continue  # never ends by design: held open by `SlowClients` instead
            given = (seeds or {}).get(method.name, ())
            found.append(
                FuzzMethod(
                    path,
                    method.input_type,
                    server_streaming=method.server_streaming,
                    seeds=tuple(
                        s if isinstance(s, bytes) else s.SerializeToString() for s in given
                    ),
                )
            )
    return tuple(found)


# ── payloads ─────────────────────────────────────────────────────────────────

_INTS = (0, 1, -1, 2, 7, 255, 1 << 31, -(1 << 31), (1 << 31) - 1, (1 << 63) - 1, -(1 << 63))
_FLOATS = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e308, -1e-308, 3.4e38)
_STRINGS = (
    "",
    " ",
    "a",
    "../../etc/passwd",
    "\x00",
    "é" * 3,
    "名前",
    "x" * 2000,
    "-1",
    "99999999999999999999",
    "1e400",
    "nan",
    "{}",
    '{"a": [1, 2',
    "champion",
    "FP32",
    "BYTES",
)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_ENUM: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
}


class Payloads:
    """Seeded request bytes for one target: random, structured and mutated (module docstring)."""

    KINDS = ("random", "structured", "mutated")

    def __init__(self, rng: random.Random, names: Sequence[str] = ()) -> None:
        self.rng = rng
        self.names = tuple(names)

    def make(self, method: FuzzMethod) -> tuple[str, bytes]:
        kind = self.rng.choice(self.KINDS)
        if kind == "random":
            return kind, self.random_bytes()
        if kind == "structured":
            return kind, self.structured(method.request)
        pool = method.seeds or (self.structured(method.request),)
        return kind, self.mutate(self.rng.choice(pool))

    def random_bytes(self) -> bytes:
        size = min(int(self.rng.expovariate(1 / 64)), 4096)
        return self.rng.randbytes(size)

    def structured(self, descriptor: Descriptor) -> bytes:
        message = GetMessageClass(descriptor)()
        self._fill(message, depth=0)
        return bytes(message.SerializeToString())

    def mutate(self, seed: bytes) -> bytes:
        data = bytearray(seed or b"\x00")
        for _ in range(self.rng.randint(1, 4)):
            op = self.rng.randrange(6)
            at = self.rng.randrange(len(data) + 1)
            if op == 0 and data:  # flip one bit
                i = min(at, len(data) - 1)
                data[i] ^= 1 << self.rng.randrange(8)
            elif op == 1 and data:  # replace a byte by an edge value
                data[min(at, len(data) - 1)] = self.rng.choice((0x00, 0x7F, 0x80, 0xFF))
            elif op == 2:  # insert random bytes
                data[at:at] = self.rng.randbytes(self.rng.randint(1, 16))
            elif op == 3:  # delete a run
                del data[at : at + self.rng.randint(1, 16)]
            elif op == 4 and data:  # duplicate a chunk (repeated fields, nested lengths)
                start = self.rng.randrange(len(data))
                data[at:at] = data[start : start + self.rng.randint(1, 64)]
            else:  # cut off
                del data[at:]
        return bytes(data)

    def _fill(self, message: Message, depth: int) -> None:
        for f in message.DESCRIPTOR.fields:
            if self.rng.random() < 0.35:
                continue
            target = getattr(message, f.name)
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                key_f, value_f = (
                    f.message_type.fields_by_name["key"],
                    f.message_type.fields_by_name["value"],
                )
                for _ in range(self.rng.randint(0, 3)):
                    key = self._scalar(key_f)
                    if value_f.message_type is not None:
                        if depth < 3:
                            self._fill(target[key], depth + 1)
                    else:
                        target[key] = self._scalar(value_f)
            elif f.is_repeated:
                for _ in range(self.rng.randint(0, 4)):
                    if f.message_type is not None:
                        if depth < 3:
                            self._fill(target.add(), depth + 1)
                    else:
                        target.append(self._scalar(f))
            elif f.message_type is not None:
                if depth < 3:
                    self._fill(target, depth + 1)
                    if not target.ListFields():
                        target.SetInParent()
            else:
                setattr(message, f.name, self._scalar(f))

    def _scalar(self, f: FieldDescriptor) -> Any:
        rng = self.rng
        if f.type == FieldDescriptor.TYPE_BOOL:
            return rng.random() < 0.5
        if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            value = rng.choice(_FLOATS) if rng.random() < 0.6 else rng.uniform(-1e6, 1e6)
            return max(min(value, 3.4e38), -3.4e38) if f.type == f.TYPE_FLOAT else value
        if f.type == FieldDescriptor.TYPE_STRING:
            if self.names and rng.random() < 0.5:
                return rng.choice(self.names)
            return rng.choice(_STRINGS)
        if f.type == FieldDescriptor.TYPE_BYTES:
            return rng.randbytes(rng.choice((0, 1, 8, 64, 1024)))
        low, high = _INT_RANGES.get(f.type, (-(1 << 31), (1 << 31) - 1))
        if f.type == FieldDescriptor.TYPE_ENUM and rng.random() < 0.7:
            return rng.choice(f.enum_type.values).number
        value = rng.choice(_INTS) if rng.random() < 0.7 else rng.randint(-1000, 1000)
        return min(max(value, low), high)


# ── calls ────────────────────────────────────────────────────────────────────


async def call_raw(
    channel: grpc.aio.Channel,
    method: FuzzMethod,
    payload: bytes,
    deadline_s: float,
    metadata: Sequence[tuple[str, str]] = (),
) -> tuple[str, str]:
    """(status name, details) of one call of raw bytes; `HUNG` past deadline + margin."""

    async def once() -> None:
        if method.server_streaming:
            stream = channel.unary_stream(method.path)(
                payload, timeout=deadline_s, metadata=tuple(metadata)
            )
            async for _ in stream:
                pass
        else:
            await channel.unary_unary(method.path)(
                payload, timeout=deadline_s, metadata=tuple(metadata)
            )

    try:
        await asyncio.wait_for(once(), deadline_s + HANG_MARGIN_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    except TimeoutError:
        return "HUNG", f"no status {HANG_MARGIN_S:g} s after the {deadline_s:g} s deadline"
    return "OK", ""


async def answers(address: str, timeout_s: float = 5.0) -> bool:
    """Whether the server at `address` answers a health check with SERVING."""
    from grpc_health.v1 import health_pb2

    async with grpc.aio.insecure_channel(address) as channel:
        try:
            raw = await channel.unary_unary(HEALTH_CHECK)(b"", timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
    status = int(health_pb2.HealthCheckResponse.FromString(raw).status)
    return status == int(health_pb2.HealthCheckResponse.SERVING)


@dataclass
class FuzzResult:
    calls: dict[str, Counter[str]] = field(default_factory=dict)
    """Method path → status name → calls."""
    by_kind: Counter[str] = field(default_factory=Counter)
    unexpected: list[dict[str, Any]] = field(default_factory=list)
    """The first calls that ended outside ALLOWED: method, kind, status, details, bytes (hex)."""
    unexpected_count: int = 0
    oversized: dict[str, str] = field(default_factory=dict)
    """Target → status of one message above its receive limit."""
    slow: dict[str, Any] = field(default_factory=dict)
    answering: dict[str, bool] = field(default_factory=dict)
    """Target → whether it answered a health check after everything else."""
    seconds: float = 0.0

    def statuses(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for counts in self.calls.values():
            total.update(counts)
        return total

    def total(self) -> int:
        return sum(self.statuses().values())

    def merge(self, other: FuzzResult) -> None:
        for path, counts in other.calls.items():
            self.calls.setdefault(path, Counter()).update(counts)
        self.by_kind.update(other.by_kind)
        self.unexpected += other.unexpected[: max(0, 20 - len(self.unexpected))]
        self.unexpected_count += other.unexpected_count
        self.oversized |= other.oversized
        self.slow |= other.slow
        self.answering |= other.answering
        self.seconds += other.seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.total(),
            "seconds": round(self.seconds, 1),
            "by_status": dict(self.statuses().most_common()),
            "by_kind": dict(self.by_kind),
            "by_method": {p: dict(c.most_common()) for p, c in sorted(self.calls.items())},
            "unexpected": self.unexpected_count,
            "unexpected_examples": self.unexpected,
            "oversized": self.oversized,
            "slow_clients": self.slow,
            "answering_after": self.answering,
        }


async def fuzz(
    targets: Sequence[Target],
    *,
    seed: int,
    duration_s: float,
    deadline_s: float = 5.0,
    concurrency: int = 4,
    allowed: frozenset[str] = ALLOWED,
) -> FuzzResult:
    """Call random methods of `targets` with hostile bytes for `duration_s`, `concurrency`
    calls at a time; each call's status is counted by method."""
    rng = random.Random(seed)
    result = FuzzResult()
    channels = {t.address: grpc.aio.insecure_channel(t.address) for t in targets}
    payloads = {t.server: Payloads(random.Random(rng.random()), t.names) for t in targets}
    end = time.monotonic() + duration_s
    started = time.monotonic()

    async def worker(worker_rng: random.Random) -> None:
        while time.monotonic() < end:
            target = worker_rng.choice(targets)
            method = worker_rng.choice(target.methods)
            kind, payload = payloads[target.server].make(method)
            status, details = await call_raw(
                channels[target.address], method, payload, deadline_s, target.metadata
            )
            result.calls.setdefault(method.path, Counter())[status] += 1
            result.by_kind[kind] += 1
            if status not in allowed:
                result.unexpected_count += 1
                if len(result.unexpected) < 20:
                    result.unexpected.append(
                        {
                            "method": method.path,
                            "kind": kind,
                            "status": status,
                            "details": details[:300],
                            "bytes": payload[:200].hex(),
                        }
                    )

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker(random.Random(rng.random())))
    finally:
        for channel in channels.values():
            await channel.close()
    result.seconds = time.monotonic() - started
    return result


async def oversize(target: Target, size_bytes: int, deadline_s: float = 30.0) -> str:
    """Status of one message of `size_bytes` (a valid length-delimited field 1) to `target`."""
    method = next(m for m in target.methods if not m.server_streaming)
    payload = b"\x0a" + _varint(size_bytes) + bytes(size_bytes)
    options = [("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(target.address, options=options) as channel:
        status, _ = await call_raw(channel, method, payload, deadline_s, target.metadata)
    return status


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


class SlowClients:
    """Streams held unread and connections left half-open on each target while work runs.

        async with SlowClients(targets, streams=4, sockets=8) as slow:
            ...                               # the servers must keep answering others
        slow.summary                          # what was held, and what ended it

    Per target: `streams` health Watch calls (server streams that never end),
    plus each seeded server-streaming method (a registry's DownloadArtifact),
    never read; and `sockets` raw TCP connections that sent half an HTTP/2
    preface and then nothing (a slowloris).
    """

    def __init__(self, targets: Sequence[Target], *, streams: int = 4, sockets: int = 8) -> None:
        self._targets = targets
        self._streams = streams
        self._sockets = sockets
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[Any] = []
        self._writers: list[asyncio.StreamWriter] = []
        self.summary: dict[str, Any] = {}

    async def __aenter__(self) -> SlowClients:
        for target in self._targets:
            channel = grpc.aio.insecure_channel(target.address)
            self._channels.append(channel)
            held = [(HEALTH_WATCH, b"")] * self._streams
            held += [(m.path, s) for m in target.methods if m.server_streaming for s in m.seeds]
            for path, payload in held:
                call = channel.unary_stream(path)(payload, metadata=target.metadata)
                await call.wait_for_connection()
                self._calls.append(call)
            host, _, port = target.address.rpartition(":")
            opened = 0
            for _ in range(self._sockets):
                with contextlib.suppress(OSError):
                    _, writer = await asyncio.open_connection(host, int(port))
                    writer.write(b"PRI * HTTP/2.0\r\n")  # half the preface, then silence
                    await writer.drain()
                    self._writers.append(writer)
                    opened += 1
            self.summary[target.server] = {"streams": len(held), "sockets": opened}
        return self

    async def __aexit__(self, *exc: object) -> None:
        closed_by_server = 0
        for writer in self._writers:
            closed_by_server += writer.is_closing() or writer.transport.is_closing()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        ended = Counter(call.done() for call in self._calls)
        for call in self._calls:
            call.cancel()
        for channel in self._channels:
            await channel.close()
        self.summary["streams_still_open"] = ended[False]
        self.summary["sockets_closed_by_server"] = int(closed_by_server)


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid` (VmRSS), None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


RSS_GROWTH_FRACTION = 0.25
RSS_GROWTH_FIXED_BYTES = 50 << 20


def rss_growth_bound(start_bytes: int) -> int:
    """How much a server's RSS may grow over a run before it counts as a leak.

    A quarter of where it started plus 50 MB: a warm process still grows a
    little (allocator arenas, gRPC's buffers, a reloaded model beside the old
    one until the old one is dropped) but not without bound; a leak of 1 KB
    per hostile call over the tens of thousands a run sends is 50 MB and more.
    """
    return int(start_bytes * RSS_GROWTH_FRACTION) + RSS_GROWTH_FIXED_BYTES
