"""The lifecycle and serving parts of the SDK, the alias resolvers and the CLI, against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from modelreg import (
    ABSENT,
    AliasResolver,
    AsyncAliasResolver,
    AsyncRegistry,
    Cancelled,
    Change,
    ChangeType,
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Registry,
    Stage,
    Unauthenticated,
)
from modelreg.cli import main
from modelreg.routing import pick_route
from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceStub
from modelreg_server.domain.manifest import Manifest, ManifestFile, canonical_bytes
from tests.support.packages import publish, sha
from tests.support.rpc import channel as open_channel
from tests.support.server import ServerProcess

if TYPE_CHECKING:
    from modelreg.v1.artifact_service_pb2_grpc import ArtifactServiceAsyncStub

NONE, STAGING, PRODUCTION, ARCHIVED = (
    Stage.Value(f"STAGE_{s}") for s in ("NONE", "STAGING", "PRODUCTION", "ARCHIVED")
)
ALIAS_SET, ALIAS_DELETED, STAGE_CHANGED, TRAFFIC_CHANGED = (
    ChangeType.Value(f"CHANGE_TYPE_{t}")
    for t in ("ALIAS_SET", "ALIAS_DELETED", "STAGE_CHANGED", "TRAFFIC_CHANGED")
)
DEADLINE = 30.0


def _package(model: str, version: int) -> dict[str, bytes]:
    return {"model.bin": f"{model}/{version}".encode()}


def _digest(model: str, version: int) -> str:
    """The manifest digest of the package `_publish` uploads for this version."""
    files = _package(model, version)
    manifest = Manifest.of("onnx", [ManifestFile(path, sha(data), len(data)) for path, data in files.items()])
    return sha(canonical_bytes(manifest))


async def _publish(address: str, model: str, versions: int) -> None:
    async with open_channel(address) as channel:
        stub: ArtifactServiceAsyncStub = ArtifactServiceStub(channel)
        for n in range(1, versions + 1):
            assert (await publish(stub, _package(model, n)))[0] == _digest(model, n)


def _new_model(registry: Registry, versions: int = 3) -> str:
    model_id = f"sdk-lc-{uuid.uuid4().hex[:12]}"
    asyncio.run(_publish(registry.address, model_id, versions))
    registry.create_model(model_id)
    for n in range(1, versions + 1):
        registry.create_model_version(model_id, run_id=f"run-{n}", artifact_digest=_digest(model_id, n))
    return model_id


def _eventually(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll `check` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def _resolves_to(resolver: AliasResolver | AsyncAliasResolver, model: str, alias: str, version: int) -> bool:
    try:
        return resolver.resolve(model, alias).version == version
    except NotFound:
        return False


@pytest.fixture
def registry(server_address: str, admin_token: str) -> Iterator[Registry]:
    with Registry(server_address, token=admin_token, timeout=15) as client:
        yield client


# --- SDK methods ---------------------------------------------------------------------------------------


def test_stage_transitions(registry: Registry) -> None:
    model = _new_model(registry)
    assert registry.transition_stage(f"{model}/1", "staging", comment="validating").stage == STAGING
    assert registry.transition_stage(f"models/{model}/versions/1", PRODUCTION).stage == PRODUCTION
    registry.transition_stage(f"{model}/2", "STAGING")

    with pytest.raises(FailedPrecondition) as occupied:
        registry.transition_stage(f"{model}/2", "production")
    assert occupied.value.reason == "PRODUCTION_OCCUPIED"
    assert occupied.value.precondition_violations[0][1] == f"models/{model}/versions/1"

    registry.set_alias(model, "candidate", 2)
    promoted = registry.transition_stage(f"{model}@candidate", "production", archive_existing=True)
    assert (promoted.name, promoted.stage) == (f"models/{model}/versions/2", PRODUCTION)
    assert registry.get_model_version(f"{model}/1").stage == ARCHIVED

    with pytest.raises(FailedPrecondition) as skipped:
        registry.transition_stage(f"{model}/3", "production")
    assert skipped.value.reason == "STAGE_TRANSITION_NOT_ALLOWED"
    with pytest.raises(NotFound):
        registry.transition_stage(f"{model}/99", "staging")
    with pytest.raises(ValueError, match="stage"):
        registry.transition_stage(f"{model}/3", "prod")

    moves = [
        (t.model_version.rsplit("/", 1)[1], t.from_stage, t.to_stage)
        for t in registry.list_stage_transitions(model, page_size=2)
    ]
    assert moves == [
        ("2", STAGING, PRODUCTION),
        ("1", PRODUCTION, ARCHIVED),
        ("2", NONE, STAGING),
        ("1", STAGING, PRODUCTION),
        ("1", NONE, STAGING),
    ]
    first = list(registry.list_stage_transitions(f"{model}/1"))
    assert [t.to_stage for t in first] == [ARCHIVED, PRODUCTION, STAGING]
    assert first[-1].comment == "validating"


def test_aliases_with_compare_and_swap_history_and_rollback(registry: Registry) -> None:
    model = _new_model(registry, versions=4)
    created = registry.set_alias(model, "champion", 1, expected=ABSENT, comment="first")
    assert (created.name, created.model_version, created.version) == (
        f"models/{model}/aliases/champion",
        f"models/{model}/versions/1",
        1,
    )
    assert created.revision > 0

    with pytest.raises(Conflict) as exists:
        registry.set_alias(model, "champion", 2, expected=ABSENT)
    assert exists.value.reason == "ALIAS_MOVED"
    with pytest.raises(Conflict):
        registry.set_alias(model, "champion", 2, expected=3)
    registry.set_alias(model, "champion", f"{model}/2", expected=1)
    assert registry.get_alias(model, "champion").version == 2

    assert registry.set_alias(model, "canary", "@champion").version == 2
    registry.set_alias(model, "canary", 3)
    after = registry.update_aliases(
        model, {"champion": "@canary", "canary": None}, expected={"canary": 3}, comment="promote"
    )
    assert [(a.name.rsplit("/", 1)[1], a.version) for a in after] == [("champion", 3)]
    with pytest.raises(Conflict):
        registry.update_aliases(model, {"shadow": 1, "champion": 4}, expected={"champion": 1})
    with pytest.raises(NotFound):
        registry.get_alias(model, "shadow")  # nothing of the failed batch was applied
    assert [a.name for a in registry.list_aliases(model)] == [f"models/{model}/aliases/champion"]

    champion_moves = list(registry.list_alias_history(model, "champion", page_size=1))
    assert [(e.model_version[-1:], e.previous_model_version[-1:]) for e in champion_moves] == [
        ("3", "2"),
        ("2", "1"),
        ("1", ""),
    ]
    assert champion_moves[0].comment == "promote"
    every_move = list(registry.list_alias_history(model))
    assert [e.alias.rsplit("/", 1)[1] for e in every_move].count("canary") == 3
    assert [e.revision for e in every_move] == sorted((e.revision for e in every_move), reverse=True)

    assert registry.rollback_alias(model, "champion", comment="oops").version == 2
    now = registry.resolve_alias(model, "champion")
    assert (now.version, now.artifact_digest, now.model_version) == (
        2,
        _digest(model, 2),
        f"models/{model}/versions/2",
    )
    assert registry.resolve_alias(model, "champion", as_of=created.update_time).version == 1
    at = created.update_time.ToDatetime(tzinfo=UTC)
    assert registry.resolve_alias(f"models/{model}", "champion", as_of=at).version == 1
    with pytest.raises(NotFound):
        registry.resolve_alias(model, "champion", as_of=datetime(2000, 1, 1, tzinfo=UTC))

    batch = registry.batch_resolve_aliases([(model, "champion"), f"{model}@nope", "garbage"])
    assert batch[0].resolution.version == 2
    assert [r.error_reason for r in batch] == ["", "ALIAS_NOT_FOUND", "INVALID_FIELD"]

    with pytest.raises(Conflict):
        registry.delete_alias(model, "champion", expected=1)
    registry.delete_alias(model, "champion", expected=2)
    with pytest.raises(NotFound) as gone:
        registry.resolve_alias(model, "champion")
    assert gone.value.reason == "ALIAS_NOT_FOUND"


def test_traffic_policies_and_routes(registry: Registry) -> None:
    model = _new_model(registry)
    registry.set_alias(model, "champion", 1)
    registry.set_alias(model, "canary", 2)
    unset = registry.get_traffic_policy(model)
    assert (list(unset.routes), unset.revision) == ([], 0)

    policy = registry.set_traffic_policy(model, {"champion": 80, "canary": 10, "3": 10}, comment="a/b")
    assert [(r.alias or r.model_version, r.weight) for r in policy.routes] == [
        ("champion", 80),
        ("canary", 10),
        (f"models/{model}/versions/3", 10),
    ]
    assert registry.get_traffic_policy(model).revision == policy.revision > 0
    for i in range(200):
        key = f"user-{i}"
        answer = registry.resolve_route(model, key)
        assert answer.resolution.version == [1, 2, 3][pick_route([80, 10, 10], model, key)]

    with pytest.raises(InvalidArgument):
        registry.set_traffic_policy(model, [("champion", 50)])
    with pytest.raises(FailedPrecondition) as in_use:
        registry.delete_alias(model, "canary")
    assert in_use.value.reason == "ALIAS_IN_USE"

    assert not registry.set_traffic_policy(model, {}).routes
    with pytest.raises(FailedPrecondition) as no_policy:
        registry.resolve_route(model, "user-1")
    assert no_policy.value.reason == "NO_TRAFFIC_POLICY"


def test_watch_stream_snapshot_then_changes(registry: Registry) -> None:
    model = _new_model(registry)
    registry.set_alias(model, "champion", 1)
    with registry.watch_aliases(model) as stream:
        first = next(stream)
        assert first.reset and first.snapshot
        assert [(c.alias, c.resolution.version) for c in first.changes] == [
            (f"models/{model}/aliases/champion", 1)
        ]
        assert next(stream).heartbeat
        moved = registry.set_alias(model, "champion", 2)
        change = next(c for message in stream for c in message.changes)
        assert (change.type, change.revision, change.resolution.version) == (ALIAS_SET, moved.revision, 2)
    with pytest.raises(Cancelled):
        next(stream)


async def test_async_registry_lifecycle_methods(server_address: str, admin_token: str) -> None:
    async with AsyncRegistry(server_address, token=admin_token, timeout=15) as client:
        model = f"sdk-lc-{uuid.uuid4().hex[:12]}"
        await _publish(server_address, model, 2)
        await client.create_model(model)
        for n in (1, 2):
            await client.create_model_version(model, artifact_digest=_digest(model, n))
        await client.transition_stage(f"{model}/1", "staging")
        await client.set_alias(model, "champion", 1, expected=ABSENT)
        with pytest.raises(Conflict):
            await client.set_alias(model, "champion", 2, expected=ABSENT)
        assert [t.to_stage async for t in client.list_stage_transitions(model)] == [STAGING]
        assert (await client.resolve_alias(model, "champion")).stage == STAGING
        await client.set_traffic_policy(model, {"champion": 100})
        assert (await client.resolve_route(model, "k")).route.alias == "champion"

        stream = client.watch_aliases([model])
        first = await anext(stream)
        assert first.reset and [c.type for c in first.changes] == [ALIAS_SET, TRAFFIC_CHANGED]
        assert (await anext(stream)).heartbeat
        await client.update_aliases(model, {"champion": 2, "canary": 1})
        changes: list[Change] = []
        while len(changes) < 2:
            changes.extend((await anext(stream)).changes)
        assert [(c.alias.rsplit("/", 1)[1], c.resolution.version) for c in changes] == [
            ("champion", 2),
            ("canary", 1),
        ]
        assert changes[0].revision < changes[1].revision
        stream.cancel()
        with pytest.raises(Cancelled):
            await anext(stream)
        history = [e.revision async for e in client.list_alias_history(model)]
        assert history[:2] == [changes[1].revision, changes[0].revision]
        assert [a.version for a in await client.list_aliases(model)] == [1, 2]  # canary, champion


# --- the alias resolvers -------------------------------------------------------------------------------


def test_resolver_answers_from_memory_and_follows_changes(
    registry: Registry, server_address: str, admin_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = _new_model(registry)
    other = _new_model(registry, versions=1)
    registry.set_alias(model, "champion", 1)
    registry.set_alias(other, "champion", 1)
    seen: list[Change] = []

    def flaky(change: Change) -> None:
        seen.append(change)
        raise RuntimeError("callback bug")  # logged, not fatal

    caplog.set_level(logging.ERROR, logger="modelreg.resolver")
    with AliasResolver(server_address, models=[model], token=admin_token, on_change=flaky) as resolver:
        assert resolver.ready and resolver.revision > 0
        assert resolver.resolve(model, "champion").version == 1
        assert [(c.type, c.resolution.version) for c in seen] == [(ALIAS_SET, 1)]
        with pytest.raises(NotFound):
            resolver.resolve(other, "champion")  # not watched

        moved = registry.set_alias(model, "champion", 2)
        _eventually(lambda: _resolves_to(resolver, model, "champion", 2), "the resolver to see SetAlias")
        assert resolver.revision >= moved.revision
        _eventually(lambda: seen[-1].revision == moved.revision, "on_change to be called")

        registry.set_alias(model, "canary", 3)
        registry.transition_stage(f"{model}/3", "staging")
        policy = registry.set_traffic_policy(model, [("champion", 60), ("canary", 30), (1, 10)])
        _eventually(lambda: resolver.revision >= policy.revision, "the traffic policy")
        assert resolver.resolve(model, "canary").stage == STAGING
        for i in range(100):
            key = f"user-{i}"
            local = resolver.route(model, key)
            remote = registry.resolve_route(model, key).resolution
            assert (local.version, local.model_version) == (remote.version, remote.model_version), key
    assert "on_change callback failed" in caplog.text
    assert resolver.connected_address is None


def test_resolver_start_gives_up_after_its_timeout() -> None:
    resolver = AliasResolver("127.0.0.1:1", token="")
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as timed_out:
        resolver.start(timeout=1.0)
    assert time.monotonic() - started < 10
    assert "UNAVAILABLE" in str(timed_out.value)


def test_resolver_start_reports_a_refused_watch_at_once(server_address: str) -> None:
    resolver = AliasResolver(server_address, token="not-a-token")
    started = time.monotonic()
    with pytest.raises(Unauthenticated):
        resolver.start(timeout=DEADLINE)
    assert time.monotonic() - started < DEADLINE / 2


async def test_async_resolver_follows_changes(server_address: str, admin_token: str) -> None:
    seen: list[Change] = []

    async def record(change: Change) -> None:
        seen.append(change)

    async with AsyncRegistry(server_address, token=admin_token, timeout=15) as client:
        model = f"sdk-lc-{uuid.uuid4().hex[:12]}"
        await _publish(server_address, model, 2)
        await client.create_model(model)
        for n in (1, 2):
            await client.create_model_version(model, artifact_digest=_digest(model, n))
        async with AsyncAliasResolver(
            server_address, models=model, token=admin_token, on_change=record
        ) as resolver:
            assert resolver.ready
            with pytest.raises(NotFound):
                resolver.resolve(model, "champion")
            for version in (1, 2):
                alias = await client.set_alias(model, "champion", version)
                deadline = time.monotonic() + DEADLINE
                while not _resolves_to(resolver, model, "champion", version):
                    assert time.monotonic() < deadline, "the async resolver never saw SetAlias"
                    await asyncio.sleep(0.02)
                assert resolver.resolve(model, "champion").artifact_digest == _digest(model, version)
                assert seen[-1].revision == alias.revision
        assert [c.resolution.version for c in seen] == [1, 2]


class CuttableProxy:
    """A TCP proxy in front of a server whose connections a test can cut, refusing new ones meanwhile."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refusing = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Close every connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._refusing = True
            sockets = list(self._open)
        for sock in sockets:
            self._close(sock)

    def restore(self) -> None:
        """Accept connections again."""
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        """Stop listening and close everything."""
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.fixture
def proxy(server_address: str) -> Iterator[CuttableProxy]:
    proxied = CuttableProxy(server_address)
    yield proxied
    proxied.close()


def _assert_every_change_applied_in_order(registry: Registry, model: str, seen: list[Change]) -> None:
    revisions = [c.revision for c in seen]
    assert revisions == sorted(set(revisions)), f"revisions not strictly increasing: {revisions}"
    alias_moves = sorted(e.revision for e in registry.list_alias_history(model))
    assert [c.revision for c in seen if c.type in (ALIAS_SET, ALIAS_DELETED)] == alias_moves
    stage_moves = sorted(t.revision for t in registry.list_stage_transitions(model))
    assert [c.revision for c in seen if c.type == STAGE_CHANGED] == stage_moves


def test_resolver_resumes_after_the_stream_is_cut_without_missing_a_change(
    registry: Registry, proxy: CuttableProxy, admin_token: str
) -> None:
    model = _new_model(registry, versions=6)
    seen: list[Change] = []
    with AliasResolver(proxy.address, models=[model], token=admin_token, on_change=seen.append) as resolver:
        registry.set_alias(model, "champion", 1)
        _eventually(lambda: _resolves_to(resolver, model, "champion", 1), "the first change")

        proxy.cut()
        _eventually(lambda: resolver.connected_address is None, "the resolver to notice the cut")
        # Every kind of change, while the resolver cannot reach the registry.
        registry.set_alias(model, "champion", 2)
        registry.set_alias(model, "canary", 3)
        registry.transition_stage(f"{model}/4", "staging")
        registry.delete_alias(model, "canary")
        registry.update_aliases(model, {"champion": 4, "shadow": 5})
        last = registry.set_alias(model, "champion", 6)
        assert resolver.resolve(model, "champion").version == 1
        proxy.restore()

        _eventually(lambda: resolver.revision >= last.revision, "the resolver to catch up")
        assert resolver.resolve(model, "champion").version == 6
        assert resolver.resolve(model, "shadow").version == 5
        assert resolver.resolve(model, "champion").stage == NONE
        with pytest.raises(NotFound):
            resolver.resolve(model, "canary")
    assert proxy.connections >= 2
    _assert_every_change_applied_in_order(registry, model, seen)


def test_resolver_fails_over_to_another_replica(
    registry: Registry, start_replica: Callable[[], ServerProcess], admin_token: str
) -> None:
    replicas = [start_replica(), start_replica()]
    model = _new_model(registry, versions=8)
    seen: list[Change] = []
    addresses = [r.address for r in replicas]
    with AliasResolver(addresses, models=[model], token=admin_token, on_change=seen.append) as resolver:
        victim = next(r for r in replicas if r.address == resolver.connected_address)
        survivor = next(r for r in replicas if r is not victim)
        with Registry(survivor.address, token=admin_token, timeout=15) as writer:
            writer.set_alias(model, "champion", 1)
            _eventually(lambda: _resolves_to(resolver, model, "champion", 1), "the first change")

            victim.kill()
            # Changes right away, while the resolver is still failing over.
            last = None
            for version in range(2, 8):
                last = writer.set_alias(model, "champion" if version % 2 else "canary", version)
            writer.transition_stage(f"{model}/7", "staging")
            writer.delete_alias(model, "canary")
            last = writer.set_alias(model, "champion", 8)

            _eventually(
                lambda: resolver.revision >= last.revision, "the resolver to catch up on the survivor"
            )
            assert resolver.connected_address == survivor.address
            assert resolver.resolve(model, "champion").version == 8
            with pytest.raises(NotFound):
                resolver.resolve(model, "canary")
    _assert_every_change_applied_in_order(registry, model, seen)
    assert seen[-1].revision == last.revision


# --- CLI -----------------------------------------------------------------------------------------------


@pytest.fixture
def cli(
    server_address: str, admin_token: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.delenv("MODELREG_ADDRESS", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--address", server_address, "--token", admin_token, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _fields(text: str) -> dict[str, str]:
    """`field  value` lines as printed for single resources."""
    pairs = (line.partition(" ") for line in text.splitlines())
    return {key: value.strip() for key, _, value in pairs}


def test_cli_lifecycle_commands(registry: Registry, cli: Callable[..., tuple[int, str, str]]) -> None:
    model = _new_model(registry)
    code, out, err = cli("stage", f"{model}/1", "staging", "--comment", "from the cli")
    assert code == 0, err
    assert _fields(out)["stage"] == "STAGE_STAGING"
    code, out, err = cli("--json", "stage", f"{model}/1", "PRODUCTION")
    assert (code, json.loads(out)["stage"]) == (0, "STAGE_PRODUCTION"), err
    assert cli("stage", f"{model}/2", "staging")[0] == 0
    code, _, err = cli("stage", f"{model}/2", "production")
    assert code == 6 and err.startswith("error: FAILED_PRECONDITION PRODUCTION_OCCUPIED")
    assert cli("stage", f"{model}/2", "production", "--archive-existing")[0] == 0

    assert cli("aliases", "set", model, "champion", "2", "--expected", "-")[0] == 0
    code, _, err = cli("aliases", "set", model, "champion", "3", "--expected", "1")
    assert code == 7 and err.startswith("error: ABORTED ALIAS_MOVED")
    code, out, err = cli(
        "aliases", "set", model, "champion", "3", "--expected", "2", "--comment", "x", "--json"
    )
    assert (code, json.loads(out)["version"]) == (0, "3"), err
    assert cli("aliases", "set", model, "canary", "@champion")[0] == 0
    code, out, _ = cli("aliases", "list", model)
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["ALIAS", "VERSION", "REVISION"]
    assert [row[:2] for row in rows[1:]] == [["canary", "3"], ["champion", "3"]]
    code, out, _ = cli("aliases", "list", model, "--json")
    assert [a["version"] for a in json.loads(out)] == ["3", "3"]
    code, out, _ = cli("aliases", "history", model, "champion")
    assert [line.split()[1:4] for line in out.splitlines()[1:]] == [
        ["champion", "2", "3"],
        ["champion", "-", "2"],
    ]
    code, out, _ = cli("aliases", "history", model, "--limit", "1", "--json")
    assert [e["alias"] for e in json.loads(out)] == [f"models/{model}/aliases/canary"]
    code, out, _ = cli("aliases", "rollback", model, "champion", "--json")
    assert json.loads(out)["version"] == "2"

    code, out, _ = cli("resolve", model, "champion")
    resolved = _fields(out)
    assert (code, resolved["version"], resolved["artifact_digest"], resolved["stage"]) == (
        0,
        "2",
        _digest(model, 2),
        "PRODUCTION",
    )
    assert json.loads(cli("resolve", model, "champion", "--json")[1])["artifactDigest"] == _digest(model, 2)
    assert cli("resolve", model, "nope")[0] == 3

    code, out, err = cli("routes", "set", model, "champion=90", "canary=10")
    assert code == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["TARGET", "KIND", "WEIGHT"],
        ["champion", "alias", "90"],
        ["canary", "alias", "10"],
    ]
    code, out, _ = cli("routes", "get", model, "--json")
    assert [(r["alias"], r["weight"]) for r in json.loads(out)["routes"]] == [
        ("champion", 90),
        ("canary", 10),
    ]
    code, out, _ = cli("routes", "resolve", model, "user-7")
    expected_version = [2, 3][pick_route([90, 10], model, "user-7")]
    assert _fields(out)["version"] == str(expected_version)
    assert cli("routes", "set", model, "champion=90")[0] == 5
    code, _, err = cli("aliases", "delete", model, "canary")
    assert code == 6 and "ALIAS_IN_USE" in err

    code, out, _ = cli("watch", model, "--json", "--limit", "3")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [c["type"] for c in lines] == [
        "CHANGE_TYPE_ALIAS_SET",
        "CHANGE_TYPE_ALIAS_SET",
        "CHANGE_TYPE_TRAFFIC_CHANGED",
    ]
    since = registry.get_traffic_policy(model).revision
    registry.set_alias(model, "canary", 2)
    code, out, _ = cli("watch", model, "--since", str(since), "--limit", "1")
    assert code == 0
    revision, kind, alias, version, stage, digest = out.split()
    assert (kind, alias, version, stage, digest) == (
        "ALIAS_SET",
        f"models/{model}/aliases/canary",
        f"models/{model}/versions/2",
        "PRODUCTION",
        _digest(model, 2),
    )
    assert int(revision) > since

    for usage in (
        ["stage", f"{model}/1", "prod"],
        ["routes", "set", model, "champion=most"],
        ["resolve", model, "champion", "--as-of", "2026-01-01T00:00:00"],
        ["aliases", "set", model, "Not An Alias", "1"],
        ["watch", "--since", "-1"],
    ):
        assert cli(*usage)[0] == 2, usage
