"""`modelreg webhooks`, `signing-keys` and `signatures` end to end against real servers and PostgreSQL.

The session's server refuses loopback webhook targets (no MODELREG_WEBHOOK_ALLOW_PRIVATE), which is what
the refusal test checks. Deliveries are tested, as in test_webhooks.py, against a server of this module's
own, on a database of its own, that allows private targets and POSTs to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelreg.cli import main
from tests.support.server import ServerProcess
from tests.support.services import provision_database

Run = Callable[..., tuple[int, str, str]]


def _fields(text: str) -> dict[str, str]:
    """`field  value` lines as printed for single resources (continuation lines skipped)."""
    pairs = (line.partition(" ") for line in text.splitlines() if line[:1].strip())
    return {key: value.strip() for key, _, value in pairs}


def _runner(address: str, token: str, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--address", address, "--token", token, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def cli(server_address: str, admin_token: str, capsys: pytest.CaptureFixture[str]) -> Run:
    """The CLI against the session's server, as its admin."""
    return _runner(server_address, admin_token, capsys)


# --- a server that allows loopback targets, and a receiver -----------------------------------------------


@pytest.fixture(scope="module")
def private_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(address, admin token) of a server on its own database with MODELREG_WEBHOOK_ALLOW_PRIVATE."""
    for database_url in provision_database():
        result = subprocess.run(
            [sys.executable, "-m", "modelreg_server", "bootstrap-admin", "--database-url", database_url],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        token = result.stdout.strip().splitlines()[-1]
        env = {**server_env, "MODELREG_DATABASE_URL": database_url, "MODELREG_WEBHOOK_ALLOW_PRIVATE": "true"}
        proc = ServerProcess(env, tmp_path_factory.mktemp("cli-webhooks") / "server.log")
        try:
            yield proc.address, token
        finally:
            proc.stop()


@pytest.fixture
def private_cli(private_server: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> Run:
    """The CLI against that server, as its admin."""
    return _runner(*private_server, capsys)


class Receiver:
    """Records every POST to 127.0.0.1 and answers 204; `wait_for(n)` blocks until n have arrived."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with receiver._arrived:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    receiver._arrived.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        with self._arrived:
            assert self._arrived.wait_for(lambda: len(self.requests) >= count, timeout), self.requests
            return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _deliveries(cli: Run, webhook: str, *options: str) -> list[dict[str, object]]:
    code, out, err = cli("webhooks", "deliveries", webhook, "--json", *options)
    assert code == 0, err
    deliveries: list[dict[str, object]] = json.loads(out)
    return deliveries


def _settled(cli: Run, webhook: str, count: int, within: float = 30.0) -> list[dict[str, object]]:
    """The webhook's deliveries once `count` of them are DELIVERED (the server marks them after the 2xx)."""
    deadline = time.monotonic() + within
    while True:
        delivered = _deliveries(cli, webhook, "--state", "delivered")
        if len(delivered) >= count:
            return delivered
        assert time.monotonic() < deadline, f"deliveries did not settle: {_deliveries(cli, webhook)}"
        time.sleep(0.05)  # poll interval (the server marks a delivery after its 2xx, asynchronously)


# --- webhooks ------------------------------------------------------------------------------------------


def test_create_reports_a_refused_loopback_target(cli: Run) -> None:
    code, out, err = cli(
        "webhooks", "create", f"h-{uuid.uuid4().hex[:8]}", "--url", "http://127.0.0.1:9/hook"
    )
    assert code == 5 and out == ""
    assert err.startswith("error: INVALID_ARGUMENT WEBHOOK_URL_REJECTED:")
    assert "127.0.0.1" in err and "loopback" in err
    code, _, err = cli("webhooks", "create", f"h-{uuid.uuid4().hex[:8]}", "--url", "ftp://example.com/hook")
    assert code == 5 and "only http and https" in err


def test_webhook_create_show_list_deliver_redeliver_delete(private_cli: Run, receiver: Receiver) -> None:
    model = f"cli-wh-{uuid.uuid4().hex[:10]}"
    hook_id = f"hook-{uuid.uuid4().hex[:10]}"
    code, out, err = private_cli(
        "webhooks", "create", hook_id, "--url", receiver.url, "--model", model, "--event", "version_created"
    )
    assert code == 0, err
    fields = _fields(out)
    name, secret = fields["name"], fields["secret"]
    assert name == f"webhooks/{hook_id}" and secret.startswith("whsec_")
    assert (fields["url"], fields["events"], fields["models"]) == (
        receiver.url,
        "VERSION_CREATED",
        f"models/{model}",
    )
    assert "shown only once" in out

    code, out, err = private_cli("webhooks", "show", hook_id)
    assert code == 0, err
    shown = _fields(out)
    assert (shown["name"], shown["url"], shown["secret"]) == (name, receiver.url, "")
    assert secret not in out
    code, out, err = private_cli("webhooks", "list")
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.startswith(name + " "))
    assert row[1:5] == [receiver.url, "VERSION_CREATED", model, "true"]

    assert private_cli("models", "create", model)[0] == 0  # MODEL_CREATED: filtered out
    assert private_cli("versions", "create", model)[0] == 0
    assert private_cli("versions", "create", model)[0] == 0
    received = receiver.wait_for(2)
    for headers, body in received:
        signed = headers["x-modelreg-timestamp"].encode() + b"." + body
        expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(expected, headers["x-modelreg-signature"])
        assert json.loads(body)["change"]["type"] == "CHANGE_TYPE_VERSION_CREATED"

    delivered = _settled(private_cli, hook_id, 2)
    assert [d["eventType"] for d in delivered] == ["CHANGE_TYPE_VERSION_CREATED"] * 2
    assert len(_deliveries(private_cli, hook_id)) == 2
    assert _deliveries(private_cli, hook_id, "--state", "failed") == []
    newest = str(delivered[0]["name"])
    assert _deliveries(private_cli, name, "--limit", "1") == [delivered[0]]

    code, out, err = private_cli("webhooks", "deliveries", hook_id)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "EVENT",
        "MODEL",
        "STATE",
        "ATTEMPTS",
        "STATUS",
        "LAST_ATTEMPT",
        "ERROR",
    ]
    assert lines[1].split()[:6] == [newest, "VERSION_CREATED", model, "DELIVERED", "1", "204"]

    webhook_id, _, revision = newest.removeprefix("webhooks/").partition("/deliveries/")
    code, out, err = private_cli("webhooks", "redeliver", f"{webhook_id}/{revision}")
    assert code == 0, err
    assert _fields(out)["name"] == newest and _fields(out)["state"] == "WEBHOOK_DELIVERY_STATE_PENDING"
    again = receiver.wait_for(3)[2][0]["x-modelreg-event-id"]
    assert again == delivered[0]["eventId"] == f"{hook_id}:{revision}"

    code, out, err = private_cli("webhooks", "delete", hook_id)
    assert (code, out.strip()) == (0, f"deleted {name}"), err
    code, _, err = private_cli("webhooks", "show", name)
    assert code == 3 and err.startswith("error: NOT_FOUND")
    code, _, err = private_cli("webhooks", "redeliver", "nohook/x")
    assert code == 2 and "not a webhook delivery name" in err


# --- signing keys and signatures -----------------------------------------------------------------------


def _key_files(tmp_path: Path) -> tuple[Path, Path]:
    """(public PEM, private PEM) files of a new ECDSA P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "release.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private = tmp_path / "release.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return public, private


def test_signing_keys_register_list_show_revoke(cli: Run, tmp_path: Path) -> None:
    public, private = _key_files(tmp_path)
    key_id = f"k-{uuid.uuid4().hex[:12]}"
    code, out, err = cli(
        "signing-keys", "register", key_id, "--public-key", str(public), "--description", "CI"
    )
    assert code == 0, err
    fields = _fields(out)
    assert (fields["name"], fields["algorithm"], fields["description"]) == (
        f"signingKeys/{key_id}",
        "ECDSA_P256_SHA256",
        "CI",
    )
    fingerprint = fields["fingerprint"]
    assert len(fingerprint) == 64 and fields["revoke_time"] == ""

    code, _, err = cli("signing-keys", "register", key_id, "--public-key", str(public))
    assert code == 4 and err.startswith("error: ALREADY_EXISTS")
    code, _, err = cli("signing-keys", "register", f"k-{uuid.uuid4().hex[:12]}", "--public-key", str(private))
    assert code == 2 and "holds a private key" in err

    code, out, err = cli("signing-keys", "list")
    assert code == 0, err
    row = next(line.split() for line in out.splitlines() if line.startswith(key_id + " "))
    assert row[:4] == [key_id, "ECDSA_P256_SHA256", fingerprint[:16], "trusted"]

    code, out, err = cli("signing-keys", "revoke", key_id, "--reason", "rotated")
    assert code == 0, err
    revoked = _fields(out)
    assert revoked["revoke_reason"] == "rotated" and revoked["revoke_time"] != ""
    code, out, err = cli("signing-keys", "show", f"signingKeys/{key_id}", "--json")
    assert code == 0, err
    assert json.loads(out)["revokeReason"] == "rotated"
    code, out, err = cli("signing-keys", "list", "--json")
    assert code == 0, err
    assert {k["name"]: k["revokeReason"] for k in json.loads(out)}[f"signingKeys/{key_id}"] == "rotated"
    code, _, err = cli("signing-keys", "show", f"k-{uuid.uuid4().hex[:12]}")
    assert code == 3 and err.startswith("error: NOT_FOUND")


def test_signatures_list_of_an_unsigned_version(cli: Run) -> None:
    model = f"cli-sig-{uuid.uuid4().hex[:10]}"
    assert cli("models", "create", model)[0] == 0
    assert cli("versions", "create", model)[0] == 0
    code, out, err = cli("signatures", "list", f"{model}/1")
    assert code == 0, err
    assert out.split() == ["KEY", "VERIFIED", "VERIFY_TIME", "CREATED", "CREATOR", "MESSAGE"]
    code, out, err = cli("signatures", "list", f"models/{model}/versions/1", "--json")
    assert (code, json.loads(out)) == (0, [])
