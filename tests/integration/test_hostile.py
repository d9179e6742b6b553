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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
import pytest
from google.protobuf import message_factory
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
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb
from modelreg.v1 import lifecycle_service_pb2_grpc as lifecycle_grpc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as registry_pb
from modelreg.v1 import model_registry_service_pb2_grpc as registry_grpc
from modelreg.v1 import webhook_service_pb2 as webhook_pb
from modelreg.v1 import webhook_service_pb2_grpc as webhook_grpc
from modelreg_server.devstack import SeaweedS3
from tests.support.packages import publish, sha
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
EXAMPLES_PER_RPC = 30
# Garbage on the wire.
GARBAGE_CONNECTIONS = 60
HALF_OPEN_CONNECTIONS = 200
# Server memory: calls before the first sample, calls between the samples, allowed growth.
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
    """Hostile strings, the descriptor's own words, and real names of the seeded resources (plus variants)."""
    names = st.sampled_from(sorted(set(known)))
    return st.one_of(
        st.sampled_from(_HOSTILE_STRINGS),
        st.sampled_from(_WORDS),
        names,
        st.tuples(names, st.sampled_from(["/", "x", "\x00", "/versions/1", "@champion", " desc", "é"])).map(
            "".join
        ),
        st.text(st.characters(codec="utf-8"), max_size=40),
        st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=300),
    )


_BYTES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\x00" * 16, b"x" * MiB, b"x" * (MiB + 1)]),
)


@dataclass
class RequestStrategies:
    """Strategies for every request message, aiming at the given names; built once per seeded server."""

    known: Sequence[str]
    max_depth: int = 3
    _cache: dict[tuple[str, int], st.SearchStrategy[Message]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.text = _strings(self.known)
        self.short_text = st.sampled_from(sorted({*self.known, *_WORDS[:50], "", "x"}))

    def message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Messages of this type with any subset of their fields set to hostile values."""
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            cls = _message_class(descriptor)
            if depth > self.max_depth:
                self._cache[key] = st.builds(cls)
            else:
                optional = {fd.name: self._field(fd, depth) for fd in descriptor.fields}
                self._cache[key] = st.fixed_dictionaries({}, optional=optional).map(
                    functools.partial(_build, cls)
                )
        return self._cache[key]

    def _field(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            return st.one_of(
                st.dictionaries(self._single(key_fd, depth), self._single(value_fd, depth + 1), max_size=4),
                # More entries than any limit allows (labels ≤ 64, metrics ≤ 512).
                st.integers(65, 600).map(lambda n: {f"k{i}": _zero(value_fd) for i in range(n)}),
            )
        single = self._single(fd, depth)
        if not fd.is_repeated:
            return single
        return st.one_of(
            st.lists(single, max_size=4),
            # Far more elements than any request allows (FindMissingBlobs takes 10,000 digests).
            self._short(fd).map(lambda item: [item] * 10_001),
        )

    def _short(self, fd: FieldDescriptor) -> st.SearchStrategy[Any]:
        if fd.type == FieldDescriptor.TYPE_STRING:
            return self.short_text
        if fd.message_type is not None:
            return st.just(_message_class(fd.message_type)())
        return st.just(_zero(fd))

    def _single(self, fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        kind = fd.type
        if fd.message_type is not None:
            return self.message(fd.message_type, depth + 1)
        if kind == FieldDescriptor.TYPE_STRING:
            return self.text
        if kind == FieldDescriptor.TYPE_BYTES:
            return _BYTES
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_DOUBLE:
            return _floats(64)
        if kind == FieldDescriptor.TYPE_FLOAT:
            return _floats(32)
        if fd.enum_type is not None:
            declared = [v.number for v in fd.enum_type.values]
            return st.one_of(st.sampled_from(declared), st.integers(-(2**31), 2**31 - 1))
        return _integers(kind)


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


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        fd = cls.DESCRIPTOR.fields_by_name[name]
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
    return message


def _upload_streams(strategies: RequestStrategies) -> st.SearchStrategy[list[Message]]:
    """Garbage UploadBlob streams: random messages, plus sequences that break the header/chunk protocol."""
    any_message = strategies.message(artifact_pb.UploadBlobRequest.DESCRIPTOR)
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
        return strategies.message(method.input_type).map(lambda m: [m])
    if method.input_type.full_name == artifact_pb.UploadBlobRequest.DESCRIPTOR.full_name:
        return _upload_streams(strategies)
    return st.lists(strategies.message(method.input_type), max_size=5)


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


async def invoke(channel: grpc.aio.Channel, method: MethodDescriptor, requests: Sequence[Message]) -> Outcome:
    """Calls `method` with the request(s); never raises for a status."""
    response_class = _message_class(method.output_type)
    path = _path(method)
    started = time.monotonic()
    call: Any
    try:
        if method.server_streaming:
            if method.client_streaming:
                call = channel.stream_stream(path, _serialize, response_class.FromString)(
                    iter(requests), timeout=CALL_DEADLINE
                )
            else:
                call = channel.unary_stream(path, _serialize, response_class.FromString)(
                    requests[0], timeout=CALL_DEADLINE
                )
            code, details, stalled = await _read_some(call, 3)
            return Outcome(code, details, time.monotonic() - started, stalled)
        if method.client_streaming:
            call = channel.stream_unary(path, _serialize, response_class.FromString)(
                iter(requests), timeout=CALL_DEADLINE
            )
        else:
            call = channel.unary_unary(path, _serialize, response_class.FromString)(
                requests[0], timeout=CALL_DEADLINE
            )
        await call
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "", time.monotonic() - started)
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
    channel: grpc.aio.Channel
    registered: frozenset[str]
    strategies: RequestStrategies
    log_dir: Path

    def run(self, coroutine: Any) -> Any:
        """Runs a coroutine on the client loop."""
        return self.runner.run(coroutine)

    def call(self, method: MethodDescriptor, requests: Sequence[Message]) -> Outcome:
        """One hostile call to the main server."""
        outcome: Outcome = self.run(invoke(self.channel, method, requests))
        return outcome

    def start_server(self, name: str) -> ServerProcess:
        """Another replica on the dedicated database (stop it yourself)."""
        return ServerProcess(self.env, self.log_dir / f"{name}.log")


async def _open(address: str, token: str) -> grpc.aio.Channel:
    return open_channel(address, token)


async def _registered_services(channel: grpc.aio.Channel) -> frozenset[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=10):
        return frozenset(s.name for s in response.list_services_response.service)
    raise AssertionError("reflection returned nothing")


async def _seed(channel: grpc.aio.Channel) -> list[str]:
    """Creates one of everything; returns the names, ids, digests, tokens and etags it got back."""
    artifacts = artifact_grpc.ArtifactServiceStub(channel)
    registry = registry_grpc.ModelRegistryServiceStub(channel)
    lifecycle = lifecycle_grpc.LifecycleServiceStub(channel)
    access = access_grpc.AccessServiceStub(channel)
    webhooks = webhook_grpc.WebhookServiceStub(channel)
    content = b"hostile seed weights"
    digest, _ = await publish(artifacts, {"model.bin": content})
    model = await registry.CreateModel(
        registry_pb.CreateModelRequest(
            model_id="seed", model=model_pb2.Model(description="seeded", labels={"team": "red"})
        )
    )
    versions = [
        await registry.CreateModelVersion(
            registry_pb.CreateModelVersionRequest(
                parent=model.name,
                model_version=model_pb2.ModelVersion(
                    run_id=f"run-{n}", metrics={"auc": 0.5 + n / 10}, artifact_digest=digest if n == 1 else ""
                ),
                request_id=f"seed-{n}",
            )
        )
        for n in (1, 2)
    ]
    await lifecycle.TransitionModelVersionStage(
        lifecycle_pb.TransitionModelVersionStageRequest(name=versions[0].name, stage=model_pb2.STAGE_STAGING)
    )
    alias = await lifecycle.SetAlias(
        lifecycle_pb.SetAliasRequest(name=f"{model.name}/aliases/champion", model_version=versions[0].name)
    )
    policy = await lifecycle.SetTrafficPolicy(
        lifecycle_pb.SetTrafficPolicyRequest(
            traffic_policy=lifecycle_pb.TrafficPolicy(
                name=f"{model.name}/trafficPolicy",
                routes=[lifecycle_pb.TrafficRoute(alias="champion", weight=100)],
            )
        )
    )
    page = await registry.ListModelVersions(
        registry_pb.ListModelVersionsRequest(parent=model.name, page_size=1)
    )
    principal = await access.CreatePrincipal(
        access_pb.CreatePrincipalRequest(
            principal_id="robot", principal=access_pb.Principal(display_name="R")
        )
    )
    token = await access.CreateToken(access_pb.CreateTokenRequest(parent=principal.name))
    binding = await access.CreateRoleBinding(
        access_pb.CreateRoleBindingRequest(
            role_binding=access_pb.RoleBinding(
                principal=principal.name, role=access_pb.ROLE_VIEWER, scope=model.name
            )
        )
    )
    session = await artifacts.StartUpload(artifact_pb.StartUploadRequest(digest=sha(b"pending"), size=7))
    hook = await webhooks.CreateWebhook(
        webhook_pb.CreateWebhookRequest(
            webhook_id="hook", webhook=webhook_pb.Webhook(url="http://127.0.0.1:9/hook")
        )
    )
    return [
        digest, sha(content), sha(b"pending"), model.name, "seed", model.etag, page.next_page_token,
        *(v.name for v in versions), *(v.etag for v in versions), f"{model.name}@champion", "champion",
        alias.name, str(alias.revision), policy.name, principal.name, "robot",
        token.token.name, binding.name, session.upload_id, hook.name, hook.etag, "principals/admin", "admin",
        f"{model.name}/versions/-", f"{model.name}/aliases/-", "models/-/versions/1",
    ]  # fmt: skip


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
        }
        server = ServerProcess(env, log_dir / "server.log")
        channel: grpc.aio.Channel = runner.run(_open(server.address, token))
        registered: frozenset[str] = runner.run(_registered_services(channel))
        known: list[str] = runner.run(_seed(channel))
        yield Hostile(
            env,
            server,
            token,
            runner,
            channel,
            registered,
            RequestStrategies([k for k in known if k]),
            log_dir,
        )
        runner.run(channel.close(None))
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


@pytest.mark.parametrize("method", METHODS, ids=_method_id)
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


def _oversize(method: MethodDescriptor) -> bytes:
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


async def _send_oversize(channel: grpc.aio.Channel, method: MethodDescriptor) -> Code:
    body = _oversize(method)
    path = _path(method)

    def raw(data: bytes) -> bytes:
        return data

    try:
        if method.server_streaming:
            stream = (
                channel.stream_stream(path, raw, raw)(iter([body]), timeout=CALL_DEADLINE)
                if method.client_streaming
                else channel.unary_stream(path, raw, raw)(body, timeout=CALL_DEADLINE)
            )
            async for _ in stream:
                break
            stream.cancel()
            return Code.OK
        if method.client_streaming:
            await channel.stream_unary(path, raw, raw)(iter([body]), timeout=CALL_DEADLINE)
        else:
            await channel.unary_unary(path, raw, raw)(body, timeout=CALL_DEADLINE)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return Code.OK


def test_oversize_requests_are_refused_by_size(hostile: Hostile) -> None:
    targets = [m for m in METHODS if m.containing_service.full_name in hostile.registered]
    codes = {_method_id(m): hostile.run(_send_oversize(hostile.channel, m)) for m in targets}
    assert {name: code for name, code in codes.items() if code != Code.RESOURCE_EXHAUSTED} == {}
    assert hostile.server.proc.poll() is None


# --- memory -------------------------------------------------------------------------------------------------


def _corpus(
    strategies: RequestStrategies, methods: Sequence[MethodDescriptor]
) -> list[tuple[int, list[Message]]]:
    """A derandomized pool of hostile calls over every method: (index into methods, requests)."""
    pool: list[tuple[int, list[Message]]] = []
    indexed = st.sampled_from(range(len(methods))).flatmap(
        lambda i: st.tuples(st.just(i), _requests_for(methods[i], strategies))
    )

    @settings(HYPOTHESIS, max_examples=150, phases=(Phase.generate,))
    @given(batch=st.lists(indexed, min_size=3, max_size=6))
    def collect(batch: list[tuple[int, list[Message]]]) -> None:
        pool.extend(batch)

    collect()
    return pool


async def _hammer(
    address: str,
    token: str,
    methods: Sequence[MethodDescriptor],
    pool: Sequence[tuple[int, list[Message]]],
    count: int,
) -> list[tuple[MethodDescriptor, list[Message], Outcome]]:
    """Replays the pool round-robin until `count` calls were made, 16 at a time; returns the bad ones."""
    bad: list[tuple[MethodDescriptor, list[Message], Outcome]] = []
    gate = asyncio.Semaphore(16)
    async with open_channel(address, token) as channel:

        async def one(i: int) -> None:
            index, requests = pool[i % len(pool)]
            async with gate:
                outcome = await invoke(channel, methods[index], requests)
            if outcome.code in FORBIDDEN or outcome.stalled or outcome.code == Code.DEADLINE_EXCEEDED:
                bad.append((methods[index], requests, outcome))

        await asyncio.gather(*(one(i) for i in range(count)))
    return bad


def test_server_memory_stays_flat_under_hostile_calls(hostile: Hostile) -> None:
    methods = [m for m in METHODS if m.containing_service.full_name in hostile.registered]
    pool = _corpus(hostile.strategies, methods)
    assert len(pool) >= 300
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
    """Health SERVING and a normal RPC answered; returns the RPC's latency."""
    async with open_channel(address, token) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
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
            with contextlib.closing(_connect(victim.address)) as sock:
                garbage = rng.randbytes(rng.randint(1, 64 * 1024))
                # Every third connection starts correctly and turns into garbage after the preface.
                sock.sendall((HTTP2_PREFACE if n % 3 == 0 else b"") + garbage)
        for n in range(HALF_OPEN_CONNECTIONS):
            sock = _connect(victim.address)
            held.append(sock)
            if stall := _STALLS[n % len(_STALLS)]:
                sock.sendall(stall)
        assert victim.proc.poll() is None, "the server died"
        latency = hostile.run(_healthy_and_answering(victim.address, hostile.token))
        assert latency < 2.0, f"a normal RPC took {latency:.2f}s next to {len(held)} stalled connections"
    finally:
        for sock in held:
            sock.close()
    try:
        assert victim.proc.poll() is None, "the server died"
        assert hostile.run(_healthy_and_answering(victim.address, hostile.token)) < 2.0
    finally:
        victim.stop()
