"""Hostile input against a real server: every RPC of every registered service, garbage on the wire.

Requests are generated from the protobuf descriptors, so every request message of every RPC is covered
without a hand-written list: hostile strings (empty, huge, NUL bytes, odd unicode, deeply nested and
10k-character filters, malformed page tokens and etags, almost-valid resource names), integers at and
beyond their type's bounds, NaN and infinities, unknown enum numbers, random field masks and timestamps
outside the representable range. Whatever the input, the server must answer with a deliberate status —
never INTERNAL or UNKNOWN — and within the deadline.

The services come from the server's reflection list intersected with the generated descriptors, so a
service registered later is covered on its next run. Everything runs against a dedicated database and
bucket with their own admin: an admin may create principals, role bindings and webhooks, which would leak
into other tests' listings on the session database. A seeded model, versions, aliases, principal, token,
role binding, upload session and webhook give the generator real names to aim at, so that calls get past
the NOT_FOUND checks into the code behind them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib
import math
import pkgutil
import random
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, message_factory, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import modelreg.v1
from modelreg.v1 import access_service_pb2 as access_pb
from modelreg.v1 import access_service_pb2_grpc as access_grpc
from modelreg.v1 import artifact_service_pb2 as artifact_pb
from modelreg.v1 import artifact_service_pb2_grpc as artifact_grpc
from modelreg.v1 import governance_service_pb2 as governance_pb
from modelreg.v1 import governance_service_pb2_grpc as governance_grpc
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb
from modelreg.v1 import lifecycle_service_pb2_grpc as lifecycle_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as registry_pb
from modelreg.v1 import model_registry_service_pb2_grpc as registry_grpc
from modelreg.v1 import webhook_service_pb2 as webhook_pb
from modelreg.v1 import webhook_service_pb2_grpc as webhook_grpc
from modelreg_server.devstack import SeaweedS3
from tests.support.packages import publish, sha
from tests.support.rpc import bearer_interceptors
from tests.support.rpc import channel as open_channel
from tests.support.server import ServerProcess
from tests.support.services import provision_database

Code = grpc.StatusCode
T = TypeVar("T")
MiB = 1024 * 1024

# Statuses that mean "the server did not handle this input": a bug whatever the input was.
FORBIDDEN = frozenset({Code.INTERNAL, Code.UNKNOWN})
# Deadline of every hostile call. The server answers validation failures in milliseconds; hitting this
# deadline means a handler hung.
CALL_DEADLINE = 10.0
# A streaming call must deliver a message or its status within this long (heartbeats are every 0.5 s).
READ_WAIT = 5.0
# Examples per RPC. Derandomized: the same inputs on every run, so a failure reproduces and CI is stable.
EXAMPLES_PER_RPC = 20
# Garbage on the wire.
GARBAGE_CONNECTIONS = 60
HALF_OPEN_CONNECTIONS = 200
# A read answered next to the garbage connections (milliseconds normally; seconds on a loaded machine).
PROMPT_ANSWER = 3.0
# Server memory: calls between the two samples (after a warm-up pass over the pool), allowed growth.
MEMORY_CALLS = 3000
MEMORY_GROWTH_LIMIT = 64 * MiB

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

HYPOTHESIS = settings(
    max_examples=EXAMPLES_PER_RPC,
    derandomize=True,
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example),
    print_blob=False,
)


# --- the RPCs, from the generated descriptors ------------------------------------------------------------


def _generated_methods() -> list[MethodDescriptor]:
    """Every method of every service in the generated modelreg.v1 modules."""
    methods: list[MethodDescriptor] = []
    for info in sorted(pkgutil.iter_modules(modelreg.v1.__path__), key=lambda i: i.name):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"modelreg.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.extend(service.methods)
    return methods


METHODS = _generated_methods()
# Destructive RPCs last, so the seeded resources are still there while the others are fuzzed.
FUZZ_ORDER = sorted(METHODS, key=lambda m: m.name.startswith(("Delete", "Revoke", "Cancel", "Reject")))


def _method_id(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


def _path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


# --- strategies ------------------------------------------------------------------------------------------

_INT_BOUNDS: dict[int, tuple[int, int]] = {
    **dict.fromkeys(
        (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32),
        (-(2**31), 2**31 - 1),
    ),
    **dict.fromkeys(
        (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64),
        (-(2**63), 2**63 - 1),
    ),
    **dict.fromkeys((FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64), (0, 2**64 - 1)),
}
# Page sizes, versions, offsets, Unix times and the like around their interesting boundaries.
_INTERESTING_INTS = (0, 1, -1, 2, 49, 50, 51, 100, 511, 512, 1000, 1001, 10_000, 10_001, 2**31, 2**53 + 1)
_TIMESTAMP_EDGES = (-62_135_596_800, -62_135_596_801, 253_402_300_799, 253_402_300_800, 1_700_000_000)


def _integers(field_type: int) -> st.SearchStrategy[int]:
    low, high = _INT_BOUNDS[field_type]
    edges = {low, high, low + 1, high - 1, *_INTERESTING_INTS, *_TIMESTAMP_EDGES}
    inside = sorted(n for n in edges if low <= n <= high)
    return st.one_of(st.sampled_from(inside), st.integers(low, high))


def _floats(width: Literal[32, 64]) -> st.SearchStrategy[float]:
    special = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308 if width == 64 else 3e38, 5e-324, -1.0, 1.5]
    kept = [x for x in special if width == 64 or math.isnan(x) or abs(x) < 3.5e38]
    return st.one_of(st.sampled_from(kept), st.floats(width=width, allow_nan=True, allow_infinity=True))


def _nested(depth: int, inner: str = 'name = "x"') -> str:
    return "(" * depth + inner + ")" * depth


# Strings chosen to break parsers, validators and the database: each family on its own line.
_HOSTILE_STRINGS: tuple[str, ...] = (
    "", " ", "\t\n", "\x00", "a\x00b", "models/\x00", "models/a\x00/versions/1",
    "x" * 10_000, "x" * 70_000, "é" * 40_000, "\U0001d54f" * 20_000, "x" * MiB,
    "\u202e\u0000\ufeff", "\U0010ffff", "\u0085\u2028\u2029", "e\u0301" * 100, "İ", "ß",
    "\uff4d\uff4f\uff44\uff45\uff4c\uff53/a",
    "'; DROP TABLE models; --", "%", "_", "\\", "%_\\%", "${jndi:x}", "{{7*7}}", "../../etc/passwd",
    _nested(10), _nested(100), _nested(1000), _nested(10_000), "(" * 10_000, ")" * 10_000,
    "NOT " * 2000 + 'name = "x"', " AND ".join(['name = "x"'] * 2000), " OR ".join(["a=1"] * 3000),
    "x" * 10_000 + ' = "y"', 'name = "' + "y" * 10_000 + '"', 'labels.team = "red"', "labels.=1",
    "metrics.auc >= 1e400", "metrics.auc >= -inf", "metrics.auc > NaN", "version = 99999999999999999999999",
    "version = -9223372036854775809", 'create_time > "not a time"', 'create_time > "99999-01-01T00:00:00Z"',
    'create_time > "0000-00-00T00:00:00Z"', "stage = STAGE_BOGUS", "stage = 99", 'name = "\\"', 'name = "',
    "a.b.c.d.e = 1", "-", "NOT", "x = 1 OR", ":", "= =", "name :", "name = *", '"unterminated', "\"\\u0000\"",
    "name desc, desc", ",,,", "version desc desc", "metrics. desc", "labels.x", " desc", "name  desc ,",
    "AAAA", "!!!!", "====", "A" * 4000, "eyJ9", "bm90IGEgdG9rZW4=", "_-_-", "%00", "null", "0", "-1", "1e9",
    '"etag"', 'W/"x"', "*", '"' * 100,
    "models/", "models/-", "models//versions/1", "models/a/versions/-1", "models/a/versions/0",
    "models/a/versions/99999999999999999999999", "models/a/versions/1e3", "models/a/versions/ 1",
    "models/a@", "models/a@b@c", "models/@x", "models/a/aliases/", "models/a/aliases/-", "models/A",
    "principals/", "principals/-", "principals/a/tokens/zz", "principals/a/tokens/" + "0" * 32,
    "roleBindings/x", "roleBindings/00000000-0000-0000-0000-000000000000", "webhooks/", "webhooks/-",
    "sha256:", "sha256:" + "0" * 64, "sha256:" + "A" * 64, "sha256:" + "0" * 63, "sha512:" + "0" * 128,
    "md5:abcdefgh", "00000000-0000-0000-0000-000000000000", "not-a-uuid",
    "http://127.0.0.1:9/hook", "https://user:pw@example.invalid/", "http://[::1", "file:///etc/passwd",
    "ftp://x", "http://" + "a" * 3000 + ".invalid/", "http://169.254.169.254/latest/meta-data",
)  # fmt: skip


def _descriptor_words() -> list[str]:
    """Field and enum value names of every message: update-mask paths, order_by keys, stage names…"""
    words: set[str] = set()
    seen: set[str] = set()

    def walk(descriptor: Descriptor) -> None:
        if descriptor.full_name in seen:
            return
        seen.add(descriptor.full_name)
        for fd in descriptor.fields:
            words.add(fd.name)
            if fd.enum_type is not None:
                words.update(v.name for v in fd.enum_type.values)
            if fd.message_type is not None:
                for sub in fd.message_type.fields:
                    words.add(f"{fd.name}.{sub.name}")
                walk(fd.message_type)

    for method in METHODS:
        walk(method.input_type)
    return sorted(words)


_WORDS = _descriptor_words()


def _strings(known: Sequence[str]) -> st.SearchStrategy[str]:
    """Hostile strings, the descriptor's own words, and seen names with hostile variations."""
    names = st.sampled_from(sorted(set(known)) or [""])
    return st.one_of(
        st.sampled_from(_HOSTILE_STRINGS),
        st.sampled_from(_WORDS),
        st.tuples(
            names, st.sampled_from(["/", "x", "\x00", "/versions/1", "@champion", " desc", "é", "%"])
        ).map("".join),
        st.text(st.characters(codec="utf-8"), max_size=40),
        st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=300),
    )


_BYTES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00" * 16, b"x" * MiB, b"x" * (MiB + 1)]),
)


@dataclass
class Corpus:
    """What the seeding calls sent and got back: successful requests by type (templates to mutate), and
    every scalar value by field name (plausible values for a field of that name in any request)."""

    templates: dict[str, list[Message]] = field(default_factory=lambda: collections.defaultdict(list))
    values: dict[str, set[Any]] = field(default_factory=lambda: collections.defaultdict(set))

    def add_exchange(self, request: Message, response: Message) -> None:
        """Records a successful call."""
        self.templates[request.DESCRIPTOR.full_name].append(request)
        self._harvest(request)
        self._harvest(response)

    def _harvest(self, message: Message) -> None:
        for fd, value in message.ListFields():
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    self.values[f"{fd.name}.key"].add(key)
                    if isinstance(item, Message):
                        self._harvest(item)
                    else:
                        self.values[f"{fd.name}.value"].add(item)
            elif fd.message_type is not None:
                for item in value if fd.is_repeated else [value]:
                    self._harvest(item)
            else:
                self.values[fd.name].update(value if fd.is_repeated else [value])

    def strings(self) -> list[str]:
        """Every string value seen."""
        return sorted({v for values in self.values.values() for v in values if isinstance(v, str)})


def _mostly(benign: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Plausible three times in four: a request with one hostile field gets past the others' checks."""
    return st.integers(0, 3).flatmap(lambda i: hostile if i == 0 else benign)


Mode = Literal["plausible", "mixed", "hostile"]


@dataclass
class RequestStrategies:
    """Strategies for every request message, aimed at the seeded resources; built once per server.

    Three kinds of message: `plausible` (values seen during seeding, or ordinary ones), `hostile` (a
    plausible message with exactly one field, at any depth, made hostile: it gets past the other fields'
    checks to the one under test) and `mixed` (each field hostile one time in four).
    """

    corpus: Corpus
    max_depth: int = 3
    _cache: dict[tuple[str, int, str], st.SearchStrategy[Message]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.known = self.corpus.strings()
        self.text = _strings(self.known)

    def request(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """Seeded requests with one or several fields made hostile, and generated ones."""
        kinds = [self.message(descriptor, 0, "hostile"), self.message(descriptor, 0, "mixed")]
        templates = self.corpus.templates.get(descriptor.full_name)
        if templates and descriptor.fields:
            one = st.sampled_from(list(descriptor.fields)).flatmap(
                lambda fd: self._field(fd, 0, "hostile").map(lambda value: {fd.name: value})
            )
            several = st.fixed_dictionaries(
                {}, optional={fd.name: self._field(fd, 0, "hostile") for fd in descriptor.fields}
            )
            for overrides in (one, several):
                kinds.append(st.tuples(st.sampled_from(templates), overrides).map(lambda p: _override(*p)))
        return st.one_of(kinds)

    def message(self, descriptor: Descriptor, depth: int, mode: Mode) -> st.SearchStrategy[Message]:
        """Messages of this type (see the class docstring for the modes)."""
        key = (descriptor.full_name, depth, mode)
        if key in self._cache:
            return self._cache[key]
        cls = _message_class(descriptor)
        strategy: st.SearchStrategy[Message]
        if depth > self.max_depth or not descriptor.fields:
            strategy = st.builds(cls)
        elif mode == "hostile":
            base = self.message(descriptor, depth, "plausible")
            spoiler = st.sampled_from(list(descriptor.fields)).flatmap(
                lambda fd: self._field(fd, depth, "hostile").map(lambda value: {fd.name: value})
            )
            strategy = st.tuples(base, spoiler).map(lambda p: _override(*p))
        else:
            optional = {fd.name: self._field(fd, depth, mode) for fd in descriptor.fields}
            strategy = st.fixed_dictionaries({}, optional=optional).map(functools.partial(_build, cls))
        self._cache[key] = strategy
        return strategy

    def _field(self, fd: FieldDescriptor, depth: int, mode: Mode) -> st.SearchStrategy[Any]:
        if mode == "mixed":
            return _mostly(self._field(fd, depth, "plausible"), self._field(fd, depth, "hostile"))
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            return self._map(fd, depth, mode)
        single = self._single(fd, depth, mode)
        if not fd.is_repeated:
            return single
        if mode == "plausible":
            return st.lists(single, max_size=3)
        # Far more elements than any request allows (FindMissingBlobs takes 10,000 digests).
        flood = self._plausible(fd).map(lambda item: [item] * 10_001)
        with_hostile = st.tuples(st.lists(self._single(fd, depth, "plausible"), max_size=3), single).map(
            lambda p: [*p[0], p[1]]
        )
        return st.one_of(with_hostile, flood)

    def _map(self, fd: FieldDescriptor, depth: int, mode: Mode) -> st.SearchStrategy[dict[Any, Any]]:
        assert fd.message_type is not None
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        keys = self._scalar(key_fd, f"{fd.name}.key", mode)
        if value_fd.message_type is not None:
            items = self.message(value_fd.message_type, depth + 1, mode)
        else:
            items = self._scalar(value_fd, f"{fd.name}.value", mode)
        entries = st.dictionaries(keys, items, min_size=0 if mode == "plausible" else 1, max_size=3)
        if mode == "plausible":
            return entries
        # More entries than any limit allows (labels ≤ 64, metrics ≤ 512).
        flood = st.integers(65, 600).map(lambda n: {f"k{i}": _zero(value_fd) for i in range(n)})
        return st.one_of(entries, flood)

    def _single(self, fd: FieldDescriptor, depth: int, mode: Mode) -> st.SearchStrategy[Any]:
        if fd.message_type is not None:
            return self.message(fd.message_type, depth + 1, mode)
        return self._scalar(fd, fd.name, mode)

    def _scalar(self, fd: FieldDescriptor, name: str, mode: Mode) -> st.SearchStrategy[Any]:
        if mode == "plausible":
            return self._plausible(fd, name)
        if mode == "hostile":
            return self._hostile_scalar(fd)
        return _mostly(self._plausible(fd, name), self._hostile_scalar(fd))

    def _plausible(self, fd: FieldDescriptor, name: str | None = None) -> st.SearchStrategy[Any]:
        """Values seen in this field (by name) during seeding, else ordinary values of the field's type."""
        seen = sorted((v for v in self.corpus.values.get(name or fd.name, ()) if _fits(fd, v)), key=repr)
        if seen:
            return st.sampled_from(seen)
        if fd.enum_type is not None:
            return st.sampled_from([v.number for v in fd.enum_type.values])
        if fd.type == FieldDescriptor.TYPE_STRING:
            return st.sampled_from([*self.known, "x", ""])
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return st.sampled_from([0.0, 0.5, 1.0])
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=16)
        if fd.message_type is not None:
            return st.just(_message_class(fd.message_type)())
        return st.sampled_from([0, 1, 2, 10])

    def _hostile_scalar(self, fd: FieldDescriptor) -> st.SearchStrategy[Any]:
        if fd.type == FieldDescriptor.TYPE_STRING:
            return self.text
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return _BYTES
        if fd.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if fd.type == FieldDescriptor.TYPE_DOUBLE:
            return _floats(64)
        if fd.type == FieldDescriptor.TYPE_FLOAT:
            return _floats(32)
        if fd.enum_type is not None:
            declared = [v.number for v in fd.enum_type.values]
            return st.one_of(st.sampled_from(declared), st.integers(-(2**31), 2**31 - 1))
        return _integers(fd.type)


def _fits(fd: FieldDescriptor, value: Any) -> bool:
    """Whether a harvested value can be assigned to the field (same name, maybe another type)."""
    if fd.type == FieldDescriptor.TYPE_STRING:
        return isinstance(value, str)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return isinstance(value, bytes)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return isinstance(value, bool)
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return isinstance(value, float)
    if fd.enum_type is not None:
        return (
            isinstance(value, int) and not isinstance(value, bool) and value in fd.enum_type.values_by_number
        )
    if fd.type in _INT_BOUNDS:
        low, high = _INT_BOUNDS[fd.type]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return False


def _zero(fd: FieldDescriptor) -> Any:
    if fd.message_type is not None:
        return _message_class(fd.message_type)()
    if fd.type == FieldDescriptor.TYPE_STRING:
        return ""
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return b""
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return False
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.0
    return 0


def _assign(message: Message, name: str, value: Any) -> None:
    fd = message.DESCRIPTOR.fields_by_name[name]
    target = getattr(message, name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value_is_message = fd.message_type.fields_by_name["value"].message_type is not None
        for key, item in value.items():
            if value_is_message:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif fd.is_repeated:
        if fd.message_type is not None:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif fd.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(message, name, value)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        _assign(message, name, value)
    return message


def _override(template: Message, values: dict[str, Any]) -> Message:
    message = type(template)()
    message.CopyFrom(template)
    for name, value in values.items():
        message.ClearField(name)
        _assign(message, name, value)
    return message


def _upload_streams(strategies: RequestStrategies) -> st.SearchStrategy[list[Message]]:
    """Garbage UploadBlob streams: random messages, plus sequences that break the header/chunk protocol."""
    any_message = strategies.message(artifact_pb.UploadBlobRequest.DESCRIPTOR, 0, "mixed")
    digests = st.sampled_from([s for s in strategies.known if s.startswith("sha256:")] + ["", "sha256:x"])
    sizes = st.one_of(st.none(), st.sampled_from([0, 1, 5, -1, 2**63 - 1, 10 * MiB]))

    def header(digest: str, size: int | None, upload_id: str, offset: int) -> Message:
        h = artifact_pb.UploadHeader(digest=digest, upload_id=upload_id, write_offset=offset)
        if size is not None:
            h.size = size
        return artifact_pb.UploadBlobRequest(header=h)

    headers = st.builds(
        header,
        digests,
        sizes,
        st.sampled_from([s for s in strategies.known if len(s) == 36] + ["", "nope"]),
        st.sampled_from([0, 1, -1, 2**63 - 1, 8 * MiB]),
    )
    chunks = st.builds(
        lambda data, finish: artifact_pb.UploadBlobRequest(chunk=data, finish_write=finish),
        _BYTES,
        st.booleans(),
    )
    protocol_breaking = st.tuples(headers, st.lists(st.one_of(chunks, headers, any_message), max_size=5)).map(
        lambda pair: [pair[0], *pair[1]]
    )
    return st.one_of(st.lists(any_message, max_size=5), protocol_breaking)


def _requests_for(
    method: MethodDescriptor, strategies: RequestStrategies
) -> st.SearchStrategy[list[Message]]:
    """The request messages of one call: one for unary requests, a stream for client-streaming ones."""
    if not method.client_streaming:
        return strategies.request(method.input_type).map(lambda m: [m])
    if method.input_type.full_name == artifact_pb.UploadBlobRequest.DESCRIPTOR.full_name:
        return _upload_streams(strategies)
    return st.lists(strategies.message(method.input_type, 0, "mixed"), max_size=5)


# --- calling ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one hostile call ended."""

    code: Code
    details: str
    elapsed: float
    stalled: bool = False


async def _read_some(call: Any, limit: int) -> tuple[Code, str, bool]:
    """Reads up to `limit` messages of a server stream, then cancels it; (status, details, stalled)."""
    messages = call.__aiter__()
    try:
        for _ in range(limit):
            try:
                await asyncio.wait_for(anext(messages), READ_WAIT)
            except StopAsyncIteration:
                return await call.code(), await call.details(), False
            except TimeoutError:
                return Code.DEADLINE_EXCEEDED, f"no message or status within {READ_WAIT}s", True
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or "", False
    call.cancel()
    return Code.OK, "stream alive; cancelled by the test", False


def _identity(data: bytes) -> bytes:
    return data


class Client:
    """Both gRPC stacks on one address: grpc.aio for most calls, the blocking API for client streams.

    grpc.aio reports a client stream that the server ends before the client half-closes as INTERNAL
    "Internal error from Core" instead of the server's status (grpc/grpc#36066); the blocking API reports
    the server's status. Create it inside the event loop that will use it.
    """

    def __init__(self, address: str, token: str) -> None:
        self.channel = open_channel(address, token)
        self.blocking = grpc.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def close(self) -> None:
        """Closes both channels."""
        await self.channel.close(None)
        self.blocking.close()

    async def invoke(
        self, method: MethodDescriptor, requests: Sequence[Message | bytes], *, raw: bool = False
    ) -> Outcome:
        """Calls `method` with the request(s) (bytes when `raw`); never raises for a status."""
        serialize: Callable[[Any], bytes] = _identity if raw else _serialize
        deserialize: Callable[[bytes], Any] = (
            _identity if raw else _message_class(method.output_type).FromString
        )
        path = _path(method)
        started = time.monotonic()
        call: Any
        try:
            if method.client_streaming and not method.server_streaming:
                return await asyncio.to_thread(self._stream_unary, path, serialize, deserialize, requests)
            if method.server_streaming:
                if method.client_streaming:
                    call = self.channel.stream_stream(path, serialize, deserialize)(
                        iter(requests), timeout=CALL_DEADLINE
                    )
                else:
                    call = self.channel.unary_stream(path, serialize, deserialize)(
                        requests[0], timeout=CALL_DEADLINE
                    )
                code, details, stalled = await _read_some(call, 2)
                return Outcome(code, details, time.monotonic() - started, stalled)
            await self.channel.unary_unary(path, serialize, deserialize)(requests[0], timeout=CALL_DEADLINE)
        except grpc.aio.AioRpcError as err:
            return Outcome(err.code(), err.details() or "", time.monotonic() - started)
        return Outcome(Code.OK, "", time.monotonic() - started)

    def _stream_unary(
        self,
        path: str,
        serialize: Callable[[Any], bytes],
        deserialize: Callable[[bytes], Any],
        requests: Sequence[Message | bytes],
    ) -> Outcome:
        started = time.monotonic()
        try:
            self.blocking.stream_unary(path, serialize, deserialize)(
                iter(requests), timeout=CALL_DEADLINE, metadata=self.metadata
            )
        except grpc.RpcError as err:
            failed = cast(grpc.Call, err)
            return Outcome(failed.code(), failed.details() or "", time.monotonic() - started)
        return Outcome(Code.OK, "", time.monotonic() - started)


def _describe(requests: Sequence[Message]) -> str:
    text = " | ".join(repr(r) for r in requests)
    return text if len(text) < 2000 else text[:2000] + f"… ({len(text)} chars)"


def assert_handled(method: MethodDescriptor, requests: Sequence[Message], outcome: Outcome) -> None:
    """The server chose a status deliberately and in time."""
    where = f"{_method_id(method)} -> {outcome.code.name} {outcome.details!r}\nrequest: {_describe(requests)}"
    assert outcome.code not in FORBIDDEN, where
    assert not outcome.stalled, f"stream stalled: {where}"
    assert outcome.code != Code.DEADLINE_EXCEEDED, f"server did not answer within {CALL_DEADLINE}s: {where}"
    assert outcome.elapsed < CALL_DEADLINE + 5, where


# --- the dedicated server ----------------------------------------------------------------------------------


def bootstrap_admin(database_url: str) -> str:
    """Creates the first admin of a fresh database; returns its token."""
    result = subprocess.run(
        [sys.executable, "-m", "modelreg_server", "bootstrap-admin", "--database-url", database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip().splitlines()[-1]


def vm_rss(pid: int) -> int:
    """Resident set size of a process in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Hostile:
    """A dedicated server with seeded data, a client loop and the request strategies aimed at it."""

    env: dict[str, str]
    server: ServerProcess
    token: str
    runner: asyncio.Runner
    client: Client
    registered: frozenset[str]
    strategies: RequestStrategies
    refused_seeds: list[str]
    log_dir: Path

    def run(self, coroutine: Any) -> Any:
        """Runs a coroutine on the client loop."""
        return self.runner.run(coroutine)

    def call(self, method: MethodDescriptor, requests: Sequence[Message]) -> Outcome:
        """One hostile call to the main server."""
        outcome: Outcome = self.run(self.client.invoke(method, requests))
        return outcome

    def start_server(self, name: str) -> ServerProcess:
        """Another replica on the dedicated database (stop it yourself)."""
        return ServerProcess(self.env, self.log_dir / f"{name}.log")


async def _client(address: str, token: str) -> Client:
    return Client(address, token)


async def _registered_services(channel: grpc.aio.Channel) -> frozenset[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=10):
        return frozenset(s.name for s in response.list_services_response.service)
    raise AssertionError("reflection returned nothing")


if TYPE_CHECKING:  # generic only in the stubs
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor


class _Recorder(_UnaryUnaryInterceptor):
    """Records every successful unary call of a channel into a corpus."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        self.corpus.add_exchange(request, await call)
        return call


@dataclass
class Seeder:
    """Valid calls of (nearly) every RPC against the dedicated server, recorded as the fuzzing corpus.

    The seeded names never include the admin's own token or role binding: the fuzzer, an admin, would
    otherwise revoke its own access and spend the rest of the run on UNAUTHENTICATED.
    """

    channel: grpc.aio.Channel
    refused: list[str] = field(default_factory=list)

    async def optional(self, call: Awaitable[T]) -> T | None:
        """A call that only adds to the corpus: a refusal is noted (and reported), not fatal."""
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            self.refused.append(f"{err.code().name}: {err.details()}")
            return None

    async def run(self) -> None:
        """Creates one of everything, then exercises the read, update and delete RPCs on it."""
        ch = self.channel
        artifacts = artifact_grpc.ArtifactServiceStub(ch)
        registry = registry_grpc.ModelRegistryServiceStub(ch)
        lifecycle = lifecycle_grpc.LifecycleServiceStub(ch)
        serving = lifecycle_grpc.ServingServiceStub(ch)
        access = access_grpc.AccessServiceStub(ch)
        webhooks = webhook_grpc.WebhookServiceStub(ch)
        governance = governance_grpc.GovernanceServiceStub(ch)
        opt = self.optional

        package, _ = await publish(artifacts, {"model.bin": b"hostile seed weights"})
        await opt(
            artifacts.FindMissingBlobs(artifact_pb.FindMissingBlobsRequest(digests=[package, sha(b"-")]))
        )
        await opt(artifacts.StatBlob(artifact_pb.StatBlobRequest(digest=package)))
        await opt(
            artifacts.GetBlobDownloadUrl(
                artifact_pb.GetBlobDownloadUrlRequest(
                    digest=package, expiry=duration_pb2.Duration(seconds=600)
                )
            )
        )
        await opt(
            artifacts.CreateDirectUpload(
                artifact_pb.CreateDirectUploadRequest(
                    digest=sha(b"direct"), size=6, expiry=duration_pb2.Duration(seconds=60)
                )
            )
        )
        stored = await opt(artifacts.StatBlob(artifact_pb.StatBlobRequest(digest=package)))
        if stored is not None:
            await opt(
                artifacts.CommitDirectUpload(
                    artifact_pb.CommitDirectUploadRequest(digest=package, size=stored.size)
                )
            )
        session = await artifacts.StartUpload(artifact_pb.StartUploadRequest(digest=sha(b"pending"), size=7))
        await opt(
            artifacts.QueryUploadStatus(artifact_pb.QueryUploadStatusRequest(upload_id=session.upload_id))
        )
        doomed_upload = await artifacts.StartUpload(artifact_pb.StartUploadRequest())
        await opt(artifacts.CancelUpload(artifact_pb.CancelUploadRequest(upload_id=doomed_upload.upload_id)))

        model = await registry.CreateModel(
            registry_pb.CreateModelRequest(
                model_id="seed",
                model=model_pb2.Model(description="seeded", labels={"team": "red"}, owner_team="ml"),
            )
        )
        doomed = await registry.CreateModel(registry_pb.CreateModelRequest(model_id="doomed"))
        await opt(registry.DeleteModel(registry_pb.DeleteModelRequest(name=doomed.name, etag=doomed.etag)))
        await opt(registry.GetModel(registry_pb.GetModelRequest(name=model.name)))
        await opt(
            registry.ListModels(
                registry_pb.ListModelsRequest(page_size=1, filter='labels.team = "red"', order_by="name desc")
            )
        )
        await opt(
            registry.UpdateModel(
                registry_pb.UpdateModelRequest(
                    model=model_pb2.Model(name=model.name, description="updated"),
                    update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                )
            )
        )
        versions = [
            await registry.CreateModelVersion(
                registry_pb.CreateModelVersionRequest(
                    parent=model.name,
                    model_version=model_pb2.ModelVersion(
                        run_id=f"run-{n}",
                        labels={"seeded": "yes"},
                        metrics={"auc": 0.5 + n / 10},
                        artifact_digest=package if n == 1 else "",
                    ),
                    request_id=f"seed-{n}",
                )
            )
            for n in (1, 2, 3)
        ]
        v1, v2, v3 = (v.name for v in versions)
        await opt(registry.GetModelVersion(registry_pb.GetModelVersionRequest(name=v1)))
        await opt(
            registry.ListModelVersions(
                registry_pb.ListModelVersionsRequest(
                    parent=model.name, page_size=1, filter="metrics.auc >= 0.5", order_by="version desc"
                )
            )
        )
        await opt(
            registry.UpdateModelVersion(
                registry_pb.UpdateModelVersionRequest(
                    model_version=model_pb2.ModelVersion(name=v2, description="second"),
                    update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                )
            )
        )

        await opt(
            lifecycle.TransitionModelVersionStage(
                lifecycle_pb.TransitionModelVersionStageRequest(
                    name=v1, stage=model_pb2.STAGE_STAGING, comment="qa"
                )
            )
        )
        await opt(lifecycle.ListStageTransitions(lifecycle_pb.ListStageTransitionsRequest(parent=model.name)))
        champion, canary, temp = (f"{model.name}/aliases/{a}" for a in ("champion", "canary", "temp"))
        await opt(
            lifecycle.SetAlias(lifecycle_pb.SetAliasRequest(name=champion, model_version=v1, comment="c"))
        )
        await opt(
            lifecycle.SetAlias(
                lifecycle_pb.SetAliasRequest(name=champion, model_version=v2, expected_model_version=v1)
            )
        )
        await opt(lifecycle.SetAlias(lifecycle_pb.SetAliasRequest(name=canary, model_version=v3)))
        await opt(lifecycle.GetAlias(lifecycle_pb.GetAliasRequest(name=champion)))
        await opt(lifecycle.ListAliases(lifecycle_pb.ListAliasesRequest(parent=model.name)))
        await opt(
            lifecycle.UpdateAliases(
                lifecycle_pb.UpdateAliasesRequest(
                    parent=model.name,
                    changes=[
                        lifecycle_pb.AliasChange(name=canary, model_version=v2, expected_model_version=v3)
                    ],
                    comment="batch",
                )
            )
        )
        await opt(
            lifecycle.ListAliasHistory(lifecycle_pb.ListAliasHistoryRequest(name=champion, page_size=1))
        )
        await opt(lifecycle.RollbackAlias(lifecycle_pb.RollbackAliasRequest(name=champion, comment="back")))
        await opt(lifecycle.SetAlias(lifecycle_pb.SetAliasRequest(name=temp, model_version=v1)))
        await opt(
            lifecycle.DeleteAlias(lifecycle_pb.DeleteAliasRequest(name=temp, expected_model_version=v1))
        )
        policy = f"{model.name}/trafficPolicy"
        routes = [
            lifecycle_pb.TrafficRoute(alias="champion", weight=90),
            lifecycle_pb.TrafficRoute(model_version=v3, weight=10),
        ]
        await opt(
            lifecycle.SetTrafficPolicy(
                lifecycle_pb.SetTrafficPolicyRequest(
                    traffic_policy=lifecycle_pb.TrafficPolicy(name=policy, routes=routes), comment="split"
                )
            )
        )
        await opt(lifecycle.GetTrafficPolicy(lifecycle_pb.GetTrafficPolicyRequest(name=policy)))
        await opt(
            registry.CompareModelVersions(
                registry_pb.CompareModelVersionsRequest(names=[v1, v2, f"{model.name}@champion"])
            )
        )

        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        await opt(serving.ResolveAlias(lifecycle_pb.ResolveAliasRequest(name=champion)))
        await opt(serving.ResolveAlias(lifecycle_pb.ResolveAliasRequest(name=canary, as_of=now)))
        await opt(
            serving.BatchResolveAliases(lifecycle_pb.BatchResolveAliasesRequest(names=[champion, canary]))
        )
        await opt(
            serving.ResolveRoute(lifecycle_pb.ResolveRouteRequest(model=model.name, routing_key="user-1"))
        )

        robot = await access.CreatePrincipal(
            access_pb.CreatePrincipalRequest(
                principal_id="robot", principal=access_pb.Principal(display_name="R")
            )
        )
        await opt(access.GetPrincipal(access_pb.GetPrincipalRequest(name=robot.name)))
        await opt(access.ListPrincipals(access_pb.ListPrincipalsRequest(page_size=1)))
        await opt(
            access.CreateToken(
                access_pb.CreateTokenRequest(parent=robot.name, token=access_pb.Token(description="ci"))
            )
        )
        await opt(access.ListTokens(access_pb.ListTokensRequest(parent=robot.name)))
        doomed_token = await access.CreateToken(access_pb.CreateTokenRequest(parent=robot.name))
        await opt(access.RevokeToken(access_pb.RevokeTokenRequest(name=doomed_token.token.name)))
        binding = access_pb.RoleBinding(principal=robot.name, role=access_pb.ROLE_VIEWER, scope=model.name)
        await opt(access.CreateRoleBinding(access_pb.CreateRoleBindingRequest(role_binding=binding)))
        await opt(access.ListRoleBindings(access_pb.ListRoleBindingsRequest(principal=robot.name)))
        doomed_binding = await access.CreateRoleBinding(
            access_pb.CreateRoleBindingRequest(
                role_binding=access_pb.RoleBinding(principal=robot.name, role=access_pb.ROLE_LEAD)
            )
        )
        await opt(access.DeleteRoleBinding(access_pb.DeleteRoleBindingRequest(name=doomed_binding.name)))
        await opt(
            access.TestPermissions(
                access_pb.TestPermissionsRequest(
                    resource=model.name, permissions=["modelreg.registry.read", "modelreg.models.update"]
                )
            )
        )
        await opt(
            access.ListAuditEvents(
                access_pb.ListAuditEventsRequest(filter='outcome = "ALLOWED"', page_size=1)
            )
        )
        await opt(access.VerifyAuditChain(access_pb.VerifyAuditChainRequest()))

        hook = await webhooks.CreateWebhook(
            webhook_pb.CreateWebhookRequest(
                webhook_id="hook",
                webhook=webhook_pb.Webhook(
                    url="http://127.0.0.1:9/hook",
                    event_types=[lifecycle_pb.CHANGE_TYPE_ALIAS_SET],
                    models=[model.name],
                ),
            )
        )
        await opt(webhooks.GetWebhook(webhook_pb.GetWebhookRequest(name=hook.name)))
        await opt(webhooks.ListWebhooks(webhook_pb.ListWebhooksRequest(page_size=1)))
        await opt(
            webhooks.UpdateWebhook(
                webhook_pb.UpdateWebhookRequest(
                    webhook=webhook_pb.Webhook(name=hook.name, active=True, etag=hook.etag),
                    update_mask=field_mask_pb2.FieldMask(paths=["active"]),
                )
            )
        )
        await opt(webhooks.ReplayWebhook(webhook_pb.ReplayWebhookRequest(name=hook.name, from_revision=0)))
        deliveries = await opt(
            webhooks.ListWebhookDeliveries(
                webhook_pb.ListWebhookDeliveriesRequest(parent=hook.name, page_size=1)
            )
        )
        if deliveries is not None and deliveries.deliveries:
            name = deliveries.deliveries[0].name
            await opt(webhooks.RedeliverWebhook(webhook_pb.RedeliverWebhookRequest(name=name)))
        doomed_hook = await webhooks.CreateWebhook(
            webhook_pb.CreateWebhookRequest(
                webhook_id="doomed", webhook=webhook_pb.Webhook(url="http://127.0.0.1:9/")
            )
        )
        await opt(webhooks.DeleteWebhook(webhook_pb.DeleteWebhookRequest(name=doomed_hook.name)))

        gates = f"{model.name}/promotionGates"
        await opt(governance.GetPromotionGates(governance_pb.GetPromotionGatesRequest(name=gates)))
        rule = governance_pb.PromotionRule(
            metric_threshold=governance_pb.MetricThresholdRule(
                metric="auc", operator=governance_pb.THRESHOLD_OPERATOR_GREATER_OR_EQUAL, value=0.5
            )
        )
        await opt(
            governance.UpdatePromotionGates(
                governance_pb.UpdatePromotionGatesRequest(
                    promotion_gates=governance_pb.PromotionGates(
                        name=gates, rules=[rule], required_approvals=1
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["rules", "required_approvals"]),
                )
            )
        )
        production = governance_pb.PromotionTarget(stage=model_pb2.STAGE_PRODUCTION)
        await opt(
            governance.DryRunPromotion(governance_pb.DryRunPromotionRequest(name=v1, target=production))
        )
        for version in (v1, v2):
            request = await opt(
                governance.RequestPromotion(
                    governance_pb.RequestPromotionRequest(name=version, target=production, comment="ship it")
                )
            )
            if request is None:
                continue
            await opt(
                governance.GetPromotionRequest(governance_pb.GetPromotionRequestRequest(name=request.name))
            )
            if version == v2:
                await opt(
                    governance.CancelPromotionRequest(
                        governance_pb.CancelPromotionRequestRequest(name=request.name, comment="no")
                    )
                )
        await opt(
            governance.ListPromotionRequests(
                governance_pb.ListPromotionRequestsRequest(parent=model.name, page_size=1)
            )
        )


async def _seed(address: str, token: str) -> tuple[Corpus, list[str]]:
    corpus = Corpus()
    channel = grpc.aio.insecure_channel(
        address, interceptors=[*bearer_interceptors(token), cast(Any, _Recorder(corpus))]
    )
    async with channel:
        seeder = Seeder(channel)
        await seeder.run()
    return corpus, seeder.refused


@pytest.fixture(scope="module")
def hostile(s3: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """A dedicated database, bucket, admin and server, seeded with one resource of every kind."""
    databases = provision_database()
    database_url = next(databases)
    log_dir = tmp_path_factory.mktemp("hostile")
    server: ServerProcess | None = None
    runner = asyncio.Runner()
    try:
        token = bootstrap_admin(database_url)
        env = {
            "MODELREG_DATABASE_URL": database_url,
            "MODELREG_S3_ENDPOINT": s3.endpoint,
            "MODELREG_S3_ACCESS_KEY": s3.access_key,
            "MODELREG_S3_SECRET_KEY": s3.secret_key,
            "MODELREG_S3_BUCKET": f"hostile-{secrets.token_hex(4)}",
            "MODELREG_S3_SECURE": "false",
            "MODELREG_WATCH_HEARTBEAT_S": "0.5",
            "MODELREG_HEALTH_INTERVAL_S": "0.5",
            "MODELREG_WEBHOOK_ALLOW_PRIVATE": "true",
            "MODELREG_WEBHOOK_MAX_ATTEMPTS": "1",
            # The shared PostgreSQL has a connection limit; three replicas here need no more than this.
            "MODELREG_DB_POOL_SIZE": "6",
        }
        server = ServerProcess(env, log_dir / "server.log")
        client: Client = runner.run(_client(server.address, token))
        registered: frozenset[str] = runner.run(_registered_services(client.channel))
        corpus, refused = runner.run(_seed(server.address, token))
        yield Hostile(
            env, server, token, runner, client, registered, RequestStrategies(corpus), refused, log_dir
        )
        runner.run(client.close())
    finally:
        runner.close()
        if server is not None:
            server.stop()
        next(databases, None)  # drops the database


# --- every RPC, hostile requests -------------------------------------------------------------------------


def test_every_registered_service_is_generated(hostile: Hostile) -> None:
    generated = {m.containing_service.full_name for m in METHODS}
    ours = {name for name in hostile.registered if name.startswith("modelreg.")}
    assert ours, "the server registers no modelreg service"
    assert ours <= generated, f"registered but without generated stubs: {sorted(ours - generated)}"


def test_seed_requests_are_accepted(hostile: Hostile) -> None:
    # The corpus is only as good as its seeds: a refused seed is either a stale seed or a server regression.
    assert hostile.refused_seeds == []
    assert len(hostile.strategies.corpus.templates) >= 50


@pytest.mark.parametrize("method", FUZZ_ORDER, ids=_method_id)
def test_hostile_requests_get_a_deliberate_status(hostile: Hostile, method: MethodDescriptor) -> None:
    if method.containing_service.full_name not in hostile.registered:
        pytest.skip(f"{method.containing_service.full_name} is not registered by the server")
    codes: set[Code] = set()

    @HYPOTHESIS
    @given(requests=_requests_for(method, hostile.strategies))
    def call(requests: list[Message]) -> None:
        outcome = hostile.call(method, requests)
        codes.add(outcome.code)
        assert_handled(method, requests, outcome)

    call()
    assert hostile.server.proc.poll() is None, "the server died"
    # The generator reached the handler: something beyond transport-level refusals came back.
    assert codes - {Code.RESOURCE_EXHAUSTED, Code.UNAVAILABLE}, f"only {codes}"


def _oversize() -> bytes:
    """A request over the 4 MiB receive limit: an unknown length-delimited field of 5 MiB."""
    payload = b"x" * (5 * MiB)
    tag = (19_000 << 3) | 2  # field 19000, wire type LEN: unknown to every message here

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return varint(tag) + varint(len(payload)) + payload


def test_oversize_requests_are_refused_by_size(hostile: Hostile) -> None:
    # The limit is the transport's, before any handler: one method per service and every streaming one.
    registered = [m for m in METHODS if m.containing_service.full_name in hostile.registered]
    firsts = {m.containing_service.full_name: m for m in reversed(registered)}
    targets = [*firsts.values(), *(m for m in registered if m.client_streaming or m.server_streaming)]
    body = _oversize()
    outcomes = {_method_id(m): hostile.run(hostile.client.invoke(m, [body], raw=True)) for m in targets}
    codes = {name: outcome.code for name, outcome in outcomes.items()}
    assert {name: code for name, code in codes.items() if code != Code.RESOURCE_EXHAUSTED} == {}
    assert hostile.server.proc.poll() is None


# --- memory -------------------------------------------------------------------------------------------------


def _corpus(
    strategies: RequestStrategies, methods: Sequence[MethodDescriptor]
) -> list[tuple[int, list[Message]]]:
    """A derandomized pool of hostile calls over every method: (index into methods, requests)."""
    pool: list[tuple[int, list[Message]]] = []

    @settings(HYPOTHESIS, max_examples=100, phases=(Phase.generate,))
    @given(data=st.data(), pick=st.randoms(use_true_random=False))
    def collect(data: st.DataObject, pick: random.Random) -> None:
        # A Random drawn from the example picks methods evenly (integers() would favour the first ones).
        for _ in range(5):
            index = pick.randrange(len(methods))
            pool.append((index, data.draw(_requests_for(methods[index], strategies))))

    collect()
    return pool


async def _hammer(
    address: str,
    token: str,
    methods: Sequence[MethodDescriptor],
    pool: Sequence[tuple[int, list[Message]]],
    count: int,
) -> list[tuple[MethodDescriptor, list[Message], Outcome]]:
    """Replays the pool round-robin until `count` calls were made, 4 at a time; returns the bad ones."""
    bad: list[tuple[MethodDescriptor, list[Message], Outcome]] = []
    gate = asyncio.Semaphore(4)
    client = Client(address, token)

    async def one(i: int) -> None:
        index, requests = pool[i % len(pool)]
        async with gate:
            outcome = await client.invoke(methods[index], requests)
        if outcome.code in FORBIDDEN or outcome.stalled or outcome.code == Code.DEADLINE_EXCEEDED:
            bad.append((methods[index], requests, outcome))

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await client.close()
    return bad


@pytest.mark.filterwarnings("ignore:Generating overly large repr")  # the strategies embed the seeded corpus
def test_server_memory_stays_flat_under_hostile_calls(hostile: Hostile) -> None:
    methods = [m for m in METHODS if m.containing_service.full_name in hostile.registered]
    pool = _corpus(hostile.strategies, methods)
    assert len(pool) >= 250
    replica = hostile.start_server("memory")
    try:
        warm_up = hostile.run(_hammer(replica.address, hostile.token, methods, pool, len(pool)))
        before = vm_rss(replica.pid)
        bad = hostile.run(_hammer(replica.address, hostile.token, methods, pool, MEMORY_CALLS))
        after = vm_rss(replica.pid)
        assert replica.proc.poll() is None, "the server died"
    finally:
        replica.stop()
    failures = [
        f"{_method_id(m)} {o.code.name} {o.details!r}: {_describe(r)[:300]}" for m, r, o in warm_up + bad
    ]
    assert failures == []
    growth = after - before
    assert growth < MEMORY_GROWTH_LIMIT, f"VmRSS grew by {growth / MiB:.1f} MiB over {MEMORY_CALLS} calls"


# --- garbage on the wire ------------------------------------------------------------------------------------


def _connect(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _frame(kind: int, flags: int, stream: int, payload: bytes, declared: int | None = None) -> bytes:
    """An HTTP/2 frame; `declared` overrides the length field (to lie about it)."""
    length = len(payload) if declared is None else declared
    return struct.pack(">I", length)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


_SETTINGS = _frame(0x4, 0, 0, b"")
# What each half-open connection sends before it stalls.
_STALLS: tuple[bytes, ...] = (
    b"",
    HTTP2_PREFACE[:10],
    HTTP2_PREFACE,
    HTTP2_PREFACE + _SETTINGS,
    HTTP2_PREFACE + _SETTINGS + _frame(0x1, 0x4, 1, b"\x82\x86")[:7],  # a HEADERS frame cut short
    HTTP2_PREFACE + _SETTINGS + _frame(0x1, 0x4, 1, b"", declared=16_000),  # promises bytes never sent
    HTTP2_PREFACE + _SETTINGS + _frame(0x0, 0x0, 1, b"x" * 10),  # DATA on a stream never opened
)


async def _healthy_and_answering(address: str, token: str) -> float:
    """Live and ready (health SERVING for the process and a service) and a normal RPC answered; returns the
    RPC's latency."""
    async with open_channel(address, token) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", access_pb.DESCRIPTOR.services_by_name["AccessService"].full_name):
            status = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING, service
        started = time.monotonic()
        identity = await access_grpc.AccessServiceStub(channel).GetCallerIdentity(
            access_pb.GetCallerIdentityRequest(), timeout=5
        )
        latency = time.monotonic() - started
    assert identity.principal.name == "principals/admin"
    return latency


def test_garbage_and_half_open_connections_do_not_take_the_server_down(hostile: Hostile) -> None:
    rng = random.Random(20_240_601)
    victim = hostile.start_server("wire")
    held: list[socket.socket] = []
    try:
        for n in range(GARBAGE_CONNECTIONS):
            garbage = rng.randbytes(rng.randint(1, 64 * 1024))
            # The server may hang up mid-send: that is its right, and the point is what happens next.
            with contextlib.closing(_connect(victim.address)) as sock, contextlib.suppress(OSError):
                # Every third connection starts correctly and turns into garbage after the preface.
                sock.sendall((HTTP2_PREFACE if n % 3 == 0 else b"") + garbage)
        for n in range(HALF_OPEN_CONNECTIONS):
            sock = _connect(victim.address)
            held.append(sock)
            if stall := _STALLS[n % len(_STALLS)]:
                sock.sendall(stall)
        assert victim.proc.poll() is None, "the server died"
        latency = hostile.run(_healthy_and_answering(victim.address, hostile.token))
        assert latency < PROMPT_ANSWER, (
            f"a normal RPC took {latency:.2f}s next to {len(held)} stalled connections"
        )
    finally:
        for sock in held:
            sock.close()
    try:
        assert victim.proc.poll() is None, "the server died"
        assert hostile.run(_healthy_and_answering(victim.address, hostile.token)) < PROMPT_ANSWER
    finally:
        victim.stop()
