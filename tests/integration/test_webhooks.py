"""Webhooks end to end: a receiver on loopback, a server process of our own that we crash and restart.

The webhook server runs on a database of its own, so the session's server (which, without
MODELREG_WEBHOOK_ALLOW_PRIVATE, would refuse loopback targets) never competes for its deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from modelreg.v1 import lifecycle_service_pb2 as lc
from modelreg.v1 import model_pb2
from modelreg.v1 import model_registry_service_pb2 as reg
from modelreg.v1 import webhook_service_pb2 as wh
from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceStub
from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceStub
from modelreg.v1.webhook_service_pb2_grpc import WebhookServiceStub
from modelreg_server.app import open_database
from modelreg_server.config import Settings
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.audit import AuditLog
from modelreg_server.domain.pagination import PageTokenCodec
from tests.support.rpc import channel as open_channel
from tests.support.rpc import fails
from tests.support.server import ServerProcess
from tests.support.services import provision_database

if TYPE_CHECKING:
    from modelreg.v1.lifecycle_service_pb2_grpc import LifecycleServiceAsyncStub
    from modelreg.v1.model_registry_service_pb2_grpc import ModelRegistryServiceAsyncStub
    from modelreg.v1.webhook_service_pb2_grpc import WebhookServiceAsyncStub

MAX_ATTEMPTS = 3
PENDING, DELIVERED, FAILED = (
    wh.WEBHOOK_DELIVERY_STATE_PENDING,
    wh.WEBHOOK_DELIVERY_STATE_DELIVERED,
    wh.WEBHOOK_DELIVERY_STATE_FAILED,
)


# --- the receiver ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def event_id(self) -> str:
        return self.headers["x-modelreg-event-id"]


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST; it can fail the first N requests or every
    request, and hold requests unanswered until released."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.fail_first = 0
        self.fail_all = False
        self.released = threading.Event()
        self.released.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    failing = receiver.fail_all or len(receiver.requests) < receiver.fail_first
                    status = 500 if failing else 204
                    receiver.requests.append(
                        Received(
                            {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic(), status
                        )
                    )
                receiver.released.wait(timeout=60)
                with contextlib.suppress(OSError):
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/modelreg"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def by_event(self) -> dict[str, list[Received]]:
        grouped: dict[str, list[Received]] = {}
        for r in self.snapshot():
            grouped.setdefault(r.event_id, []).append(r)
        return grouped

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def signature_verifies(secret: str, r: Received) -> bool:
    """Recomputes X-Modelreg-Signature the way the docs tell receivers to."""
    signed = r.headers["x-modelreg-timestamp"].encode() + b"." + r.body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, r.headers["x-modelreg-signature"])


async def eventually(check: Callable[[], object], within: float = 20.0, what: str = "condition") -> None:
    """Polls `check` (sync) until truthy, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- a server of our own -----------------------------------------------------------------------------


class Replica:
    """The webhook server; `kill` + `start` simulate a crash and a restart."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self._env = env
        self._log_dir = log_dir
        self._starts = 0
        self.proc: ServerProcess | None = None

    def start(self) -> str:
        self._starts += 1
        self.proc = ServerProcess(self._env, self._log_dir / f"webhook-server-{self._starts}.log")
        return self.proc.address

    @property
    def address(self) -> str:
        assert self.proc is not None
        return self.proc.address

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture(scope="module")
def webhook_database() -> Iterator[str]:
    """A database for the webhook server alone."""
    yield from provision_database()


async def _bootstrap_admin(database_url: str) -> str:
    db = await open_database(Settings(database_url=database_url))
    try:
        audit_log = AuditLog(db, PageTokenCodec(await db.fetch_secret("page_token")))
        return await AccessControl(db, audit_log).bootstrap_admin("admin")
    finally:
        await db.close()


@pytest.fixture(scope="module")
def webhook_token(webhook_database: str) -> str:
    """An admin token on that database (which this also migrates)."""
    return asyncio.run(_bootstrap_admin(webhook_database))


@pytest.fixture(scope="module")
def replica(
    server_env: dict[str, str], webhook_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    env = {
        **server_env,
        "MODELREG_DATABASE_URL": webhook_database,
        "MODELREG_WEBHOOK_ALLOW_PRIVATE": "true",
        "MODELREG_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    }
    proc = Replica(env, tmp_path_factory.mktemp("webhooks"))
    proc.start()
    yield proc
    proc.stop()


class Client:
    """The stubs the tests use, over one channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.registry: ModelRegistryServiceAsyncStub = ModelRegistryServiceStub(channel)
        self.lifecycle: LifecycleServiceAsyncStub = LifecycleServiceStub(channel)
        self.webhooks: WebhookServiceAsyncStub = WebhookServiceStub(channel)

    async def subscribe(self, url: str, model_id: str, secret: str = "", **fields: object) -> wh.Webhook:
        return await self.webhooks.CreateWebhook(
            wh.CreateWebhookRequest(
                webhook_id=f"hook-{uuid.uuid4().hex[:10]}",
                webhook=wh.Webhook(url=url, models=[f"models/{model_id}"], secret=secret, **fields),  # type: ignore[arg-type]
            )
        )

    async def deliveries(self, webhook: str, filter_text: str = "") -> list[wh.WebhookDelivery]:
        response = await self.webhooks.ListWebhookDeliveries(
            wh.ListWebhookDeliveriesRequest(parent=webhook, filter=filter_text, page_size=1000)
        )
        return list(response.deliveries)


@contextlib.asynccontextmanager
async def connect(address: str, token: str) -> AsyncIterator[Client]:
    async with open_channel(address, token) as channel:
        yield Client(channel)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def new_model_id() -> str:
    return f"wh-{uuid.uuid4().hex[:12]}"


async def make_changes(client: Client, model_id: str, versions: int) -> None:
    """A model, its versions, and an alias: 2 + versions events."""
    await client.registry.CreateModel(reg.CreateModelRequest(model_id=model_id, model=model_pb2.Model()))
    for _ in range(versions):
        await client.registry.CreateModelVersion(
            reg.CreateModelVersionRequest(parent=f"models/{model_id}", model_version=model_pb2.ModelVersion())
        )
    await client.lifecycle.SetAlias(
        lc.SetAliasRequest(
            name=f"models/{model_id}/aliases/champion", model_version=f"models/{model_id}/versions/1"
        )
    )


async def settled(client: Client, webhook: str, count: int, within: float = 20.0) -> list[wh.WebhookDelivery]:
    """Waits until the webhook has `count` deliveries, all DELIVERED, and returns them."""
    deadline = time.monotonic() + within
    while True:
        deliveries = await client.deliveries(webhook)
        if len(deliveries) == count and all(d.state == DELIVERED for d in deliveries):
            return deliveries
        if time.monotonic() > deadline:
            raise AssertionError(f"deliveries did not settle: {deliveries}")
        await asyncio.sleep(0.1)


def change_of(r: Received) -> dict[str, object]:
    event = json.loads(r.body)
    assert event["eventId"] == r.event_id
    change: dict[str, object] = event["change"]
    return change


# --- tests -------------------------------------------------------------------------------------------


async def test_ssrf_guard_refuses_internal_targets_without_the_allow_flag(server_address: str) -> None:
    async with open_channel(server_address) as channel:
        stub: WebhookServiceAsyncStub = WebhookServiceStub(channel)
        for url in (
            "http://127.0.0.1:9/hook",
            "http://localhost:9/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/hook",
            "http://192.168.1.1/hook",
            "http://[fd00::1]/hook",
            "http://0.0.0.0/hook",
            "ftp://example.com/hook",
            "http://user:password@example.com/hook",
        ):
            failure = await fails(
                stub.CreateWebhook(
                    wh.CreateWebhookRequest(
                        webhook_id=f"ssrf-{uuid.uuid4().hex[:8]}", webhook=wh.Webhook(url=url)
                    )
                )
            )
            assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, url
            assert failure.reason == "WEBHOOK_URL_REJECTED", url
            assert [f for f, _ in failure.field_violations] == ["webhook.url"], url


async def test_every_event_arrives_once_signed_and_replays_with_the_same_keys(
    replica: Replica, webhook_token: str, receiver: Receiver
) -> None:
    model_id = new_model_id()
    async with connect(replica.address, webhook_token) as client:
        hook = await client.subscribe(receiver.url, model_id)
        secret = hook.secret
        assert secret.startswith("whsec_")
        assert (await client.webhooks.GetWebhook(wh.GetWebhookRequest(name=hook.name))).secret == ""
        await make_changes(client, model_id, versions=2)

        await eventually(lambda: len(receiver.by_event()) == 4, what="4 events")
        deliveries = await settled(client, hook.name, 4)
        assert all(d.attempt_count == 1 and d.last_status_code == 204 for d in deliveries)

        received = receiver.snapshot()
        assert len(received) == 4, "each event exactly once"
        changes = sorted((change_of(r) for r in received), key=lambda c: int(str(c["revision"])))
        assert [c["type"] for c in changes] == [
            "CHANGE_TYPE_MODEL_CREATED",
            "CHANGE_TYPE_VERSION_CREATED",
            "CHANGE_TYPE_VERSION_CREATED",
            "CHANGE_TYPE_ALIAS_SET",
        ]
        hook_id = hook.name.removeprefix("webhooks/")
        for r in received:
            assert signature_verifies(secret, r)
            assert not signature_verifies(secret + "x", r)
            assert abs(int(r.headers["x-modelreg-timestamp"]) - time.time()) < 60
            assert r.headers["content-type"] == "application/json"
            assert r.headers["x-modelreg-webhook"] == hook.name
            assert r.event_id == f"{hook_id}:{change_of(r)['revision']}"

        # Replay from just before the first event: the same events again, under the same keys.
        first = min(int(str(c["revision"])) for c in changes)
        replay = await client.webhooks.ReplayWebhook(
            wh.ReplayWebhookRequest(name=hook.name, from_revision=first - 1)
        )
        assert replay.requeued_count == 4
        await eventually(lambda: len(receiver.snapshot()) == 8, what="replayed events")
        again = receiver.by_event()
        assert len(again) == 4
        assert all(len(rs) == 2 and rs[0].body == rs[1].body for rs in again.values())
        assert all(signature_verifies(secret, r) for r in receiver.snapshot())


async def test_failed_attempts_back_off_then_give_up_and_redeliver(
    replica: Replica, webhook_token: str, receiver: Receiver
) -> None:
    model_id = new_model_id()
    secret = "s3cret-" + uuid.uuid4().hex
    async with connect(replica.address, webhook_token) as client:
        hook = await client.subscribe(
            receiver.url,
            model_id,
            secret,
            event_types=[lc.CHANGE_TYPE_MODEL_CREATED, lc.CHANGE_TYPE_MODEL_UPDATED],
        )
        assert hook.secret == "", "a secret the client chose is not echoed"

        # Two failures, then success on the third attempt, 1 s and 2 s (plus jitter) apart.
        receiver.fail_first = 2
        await client.registry.CreateModel(reg.CreateModelRequest(model_id=model_id, model=model_pb2.Model()))
        await eventually(lambda: len(receiver.snapshot()) == 3, what="three attempts")
        first, second, third = receiver.snapshot()
        assert [r.status for r in (first, second, third)] == [500, 500, 204]
        assert [r.headers["x-modelreg-attempt"] for r in (first, second, third)] == ["1", "2", "3"]
        assert first.event_id == second.event_id == third.event_id
        assert first.body == second.body == third.body
        assert all(signature_verifies(secret, r) for r in (first, second, third))
        assert 0.9 <= second.at - first.at <= 1.25 + 2.0
        assert 1.9 <= third.at - second.at <= 2.5 + 2.0
        [delivered] = await settled(client, hook.name, 1)
        assert (delivered.state, delivered.attempt_count, delivered.last_status_code) == (DELIVERED, 3, 204)

        # Every attempt fails: FAILED after MAX_ATTEMPTS; a redelivery then succeeds.
        receiver.fail_all = True
        await client.registry.UpdateModel(
            reg.UpdateModelRequest(model=model_pb2.Model(name=f"models/{model_id}", description="changed"))
        )
        deadline = time.monotonic() + 20
        while not (failed := await client.deliveries(hook.name, "state = FAILED")):
            assert time.monotonic() < deadline, "the delivery never failed"
            await asyncio.sleep(0.1)
        [dead] = failed
        assert dead.attempt_count == MAX_ATTEMPTS and dead.last_status_code == 500
        assert dead.last_error
        assert len(receiver.by_event()[dead.event_id]) == MAX_ATTEMPTS

        receiver.fail_all = False
        again = await client.webhooks.RedeliverWebhook(wh.RedeliverWebhookRequest(name=dead.name))
        assert (again.state, again.attempt_count) == (PENDING, 0)
        await eventually(
            lambda: len(receiver.by_event()[dead.event_id]) == MAX_ATTEMPTS + 1, what="redelivery"
        )
        last = receiver.by_event()[dead.event_id][-1]
        assert (last.status, last.headers["x-modelreg-attempt"]) == (204, "1")
        assert signature_verifies(secret, last)


async def test_a_crash_mid_delivery_loses_nothing_and_repeats_only_under_the_same_key(
    replica: Replica, webhook_token: str, receiver: Receiver
) -> None:
    model_id = new_model_id()
    async with connect(replica.address, webhook_token) as client:
        hook = await client.subscribe(receiver.url, model_id)
        receiver.released.clear()  # hold every request unanswered
        await make_changes(client, model_id, versions=4)
        await eventually(receiver.snapshot, what="a delivery in flight")

    replica.kill()  # SIGKILL while the receiver holds the request(s): none of them was committed
    in_flight = {r.event_id for r in receiver.snapshot()}
    receiver.released.set()
    address = replica.start()

    async with connect(address, webhook_token) as client:
        deliveries = await settled(client, hook.name, 6, within=30)

    grouped = receiver.by_event()
    assert set(grouped) == {d.event_id for d in deliveries}, "every event, under its own key"
    for key, requests in grouped.items():
        assert all(signature_verifies(hook.secret, r) for r in requests)
        assert len({r.body for r in requests}) == 1, "a repeat is the same event"
        if key in in_flight:
            assert len(requests) == 2, "the attempt cut short by the crash is made again"
        else:
            assert len(requests) == 1
