"""`modelreg webhooks`, `signing-keys` and `signatures`: parsing, formatting, calls against fake servicers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from modelreg import cli, cli_integrations
from modelreg.v1 import lifecycle_service_pb2 as lc_pb2
from modelreg.v1 import signing_service_pb2 as sg_pb2
from modelreg.v1 import signing_service_pb2_grpc as sg_grpc
from modelreg.v1 import webhook_service_pb2 as wh_pb2
from modelreg.v1 import webhook_service_pb2_grpc as wh_grpc

T0 = timestamp_pb2.Timestamp(seconds=1_700_000_000)

# --- parsing -------------------------------------------------------------------------------------------


def test_webhook_parsing() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "webhooks",
            "create",
            "deploy-bot",
            "--url",
            "https://hooks.example.com/modelreg",
            "--event",
            "alias_set",
            "--event",
            "STAGE-CHANGED",
            "--event",
            "CHANGE_TYPE_VERSION_CREATED",
            "--model",
            "fraud",
            "--model",
            "models/churn",
        ]
    )
    assert (args.webhook_id, args.url, args.paused) == (
        "deploy-bot",
        "https://hooks.example.com/modelreg",
        False,
    )
    assert args.events == [
        lc_pb2.CHANGE_TYPE_ALIAS_SET,
        lc_pb2.CHANGE_TYPE_STAGE_CHANGED,
        lc_pb2.CHANGE_TYPE_VERSION_CREATED,
    ]
    assert args.models == ["models/fraud", "models/churn"]
    args = parser.parse_args(["webhooks", "create", "h", "--url", "http://x", "--paused"])
    assert (args.events, args.models, args.paused) == ([], [], True)
    args = parser.parse_args(["webhooks", "deliveries", "h", "--state", "failed", "--limit", "5", "--json"])
    assert (args.name, args.state, args.filter, args.limit, args.json) == ("h", "failed", "", 5, True)
    args = parser.parse_args(["webhooks", "redeliver", "h/12"])
    assert args.delivery == "h/12"
    args = parser.parse_args(["webhooks", "replay", "h", "--from-revision", "40"])
    assert (args.name, args.from_revision) == ("h", 40)
    args = parser.parse_args(["webhooks", "delete", "webhooks/h", "--etag", "e1"])
    assert (args.name, args.etag) == ("webhooks/h", "e1")


def test_signing_parsing() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["signing-keys", "register", "release-2025", "--public-key", "k.pem", "--description", "CI"]
    )
    assert (args.key_id, args.public_key, args.description) == ("release-2025", Path("k.pem"), "CI")
    args = parser.parse_args(["signing-keys", "revoke", "release-2025", "--reason", "leaked"])
    assert (args.key, args.reason) == ("release-2025", "leaked")
    args = parser.parse_args(["signing-keys", "list", "--limit", "2"])
    assert args.limit == 2
    args = parser.parse_args(["signatures", "list", "fraud/3", "--json"])
    assert (args.version, args.json) == ("fraud/3", True)


@pytest.mark.parametrize(
    "argv",
    [
        ["webhooks", "create", "h"],  # no --url
        ["webhooks", "create", "--url", "http://x"],  # no id
        ["webhooks", "create", "h", "--url", "http://x", "--event", "pushed"],
        ["webhooks", "create", "h", "--url", "http://x", "--event", "unspecified"],
        ["webhooks", "create", "h", "--url", "http://x", "--model", "a/b"],
        ["webhooks", "deliveries", "h", "--state", "lost"],
        ["webhooks", "deliveries", "h", "--limit", "0"],
        ["webhooks", "replay", "h"],
        ["webhooks", "update", "h"],
        ["signing-keys", "register", "k"],  # no --public-key
        ["signing-keys", "show"],
        ["signatures", "list"],
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("h/7", "webhooks/h/deliveries/7"),
        ("webhooks/h/deliveries/12", "webhooks/h/deliveries/12"),
        ("webhooks/h/7", "webhooks/h/deliveries/7"),
        ("h/deliveries/007", "webhooks/h/deliveries/7"),
    ],
)
def test_delivery_name(text: str, name: str) -> None:
    assert cli_integrations.delivery_name(text) == name


@pytest.mark.parametrize("text", ["h", "7", "h/x", "h/0", "a/b/7", "webhooks/h/deliveries/", "/7"])
def test_delivery_name_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a webhook (delivery )?name"):
        cli_integrations.delivery_name(text)


def test_webhook_and_key_names() -> None:
    assert cli_integrations.webhook_name("h") == cli_integrations.webhook_name("webhooks/h") == "webhooks/h"
    assert cli_integrations.signing_key_name("k1") == "signingKeys/k1"
    assert cli_integrations.signing_key_name("signingKeys/k1") == "signingKeys/k1"
    for bad in ("", "webhooks/", "a/b", "a b"):
        with pytest.raises(ValueError, match="not a webhook name"):
            cli_integrations.webhook_name(bad)
    with pytest.raises(ValueError, match="not a signing key name"):
        cli_integrations.signing_key_name("signingKeys/a/b")


def test_event_type_and_delivery_filter() -> None:
    assert cli_integrations.event_type(" model-deleted ") == lc_pb2.CHANGE_TYPE_MODEL_DELETED
    assert set(cli_integrations.EVENT_TYPES) >= {"alias_set", "version_created"}
    assert "unspecified" not in cli_integrations.EVENT_TYPES
    assert cli_integrations.delivery_filter(None, "") == ""
    assert cli_integrations.delivery_filter(None, "revision > 3") == "revision > 3"
    assert cli_integrations.delivery_filter("failed", "") == "state = FAILED"
    assert cli_integrations.delivery_filter("pending", "a OR b") == "(a OR b) AND state = PENDING"
    with pytest.raises(ValueError, match="unknown delivery state"):
        cli_integrations.delivery_filter("lost", "")


def test_collect_pages_stops_at_the_limit() -> None:
    seen: list[tuple[str, int]] = []

    def fetch(token: str, size: int) -> tuple[list[int], str]:
        seen.append((token, size))
        page = int(token or "0")
        return [page * 10, page * 10 + 1], str(page + 1) if page < 2 else ""

    assert cli.collect_pages(fetch, None) == [0, 1, 10, 11, 20, 21]
    assert seen == [("", 0), ("1", 0), ("2", 0)]
    seen.clear()
    assert cli.collect_pages(fetch, 3) == [0, 1, 10]
    assert seen == [("", 3), ("1", 3)]


# --- formatting ----------------------------------------------------------------------------------------


def test_webhooks_table() -> None:
    hooks = [
        wh_pb2.Webhook(
            name="webhooks/deploy",
            url="https://h.example.com/x",
            event_types=[lc_pb2.CHANGE_TYPE_ALIAS_SET, lc_pb2.CHANGE_TYPE_STAGE_CHANGED],
            models=["models/fraud"],
            create_time=T0,
        ),
        wh_pb2.Webhook(name="webhooks/all", url="https://h.example.com/y", active=False),
    ]
    lines = cli_integrations.webhooks_table(hooks).splitlines()
    assert lines[0].split() == ["NAME", "URL", "EVENTS", "MODELS", "ACTIVE", "CREATED"]
    assert lines[1].split() == [
        "webhooks/deploy",
        "https://h.example.com/x",
        "ALIAS_SET,STAGE_CHANGED",
        "fraud",
        "true",
        "2023-11-14T22:13:20Z",
    ]
    assert lines[2].split() == ["webhooks/all", "https://h.example.com/y", "*", "*", "false"]


def test_deliveries_table() -> None:
    deliveries = [
        wh_pb2.WebhookDelivery(
            name="webhooks/h/deliveries/9",
            event_type=lc_pb2.CHANGE_TYPE_VERSION_CREATED,
            model="models/fraud",
            state=wh_pb2.WEBHOOK_DELIVERY_STATE_FAILED,
            attempt_count=3,
            last_status_code=500,
            last_attempt_time=T0,
            last_error="HTTP 500\nInternal",
        ),
        wh_pb2.WebhookDelivery(
            name="webhooks/h/deliveries/8",
            event_type=lc_pb2.CHANGE_TYPE_MODEL_CREATED,
            model="models/fraud",
            state=wh_pb2.WEBHOOK_DELIVERY_STATE_PENDING,
        ),
    ]
    lines = cli_integrations.deliveries_table(deliveries).splitlines()
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
    assert lines[1].split() == [
        "webhooks/h/deliveries/9",
        "VERSION_CREATED",
        "fraud",
        "FAILED",
        "3",
        "500",
        "2023-11-14T22:13:20Z",
        "HTTP",
        "500",
        "Internal",
    ]
    assert lines[2].split() == ["webhooks/h/deliveries/8", "MODEL_CREATED", "fraud", "PENDING", "0", "-", "-"]


def test_signing_keys_and_signatures_tables() -> None:
    keys = [
        sg_pb2.SigningKey(
            name="signingKeys/release",
            algorithm="ECDSA_P256_SHA256",
            fingerprint="ab" * 32,
            create_time=T0,
            description="CI releases",
        ),
        sg_pb2.SigningKey(name="signingKeys/old", algorithm="ECDSA_P384_SHA384", revoke_time=T0),
    ]
    lines = cli_integrations.signing_keys_table(keys).splitlines()
    assert lines[0].split() == ["KEY", "ALGORITHM", "FINGERPRINT", "STATE", "CREATED", "DESCRIPTION"]
    assert lines[1].split() == [
        "release",
        "ECDSA_P256_SHA256",
        "ab" * 8,
        "trusted",
        "2023-11-14T22:13:20Z",
        "CI",
        "releases",
    ]
    assert lines[2].split() == ["old", "ECDSA_P384_SHA384", "revoked"]
    signatures = [
        sg_pb2.Signature(
            key_id="release", verified=True, verify_time=T0, create_time=T0, creator="principals/ci"
        ),
        sg_pb2.Signature(key_id="old", verified=False, verify_message="key revoked", create_time=T0),
    ]
    lines = cli_integrations.signatures_table(signatures).splitlines()
    assert lines[0].split() == ["KEY", "VERIFIED", "VERIFY_TIME", "CREATED", "CREATOR", "MESSAGE"]
    assert lines[1].split() == ["release", "true", "2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z", "ci"]
    assert lines[2].split() == ["old", "false", "-", "2023-11-14T22:13:20Z", "key", "revoked"]


# --- calls against fake servicers ----------------------------------------------------------------------


class _Webhooks(wh_grpc.WebhookServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def CreateWebhook(self, request: Any, context: grpc.ServicerContext) -> wh_pb2.Webhook:
        self.calls.append(("CreateWebhook", request))
        created = wh_pb2.Webhook()
        created.CopyFrom(request.webhook)
        created.name = f"webhooks/{request.webhook_id}"
        created.secret = "whsec_generated"
        return created

    def ListWebhooks(self, request: Any, context: grpc.ServicerContext) -> wh_pb2.ListWebhooksResponse:
        self.calls.append(("ListWebhooks", request))
        page = int(request.page_token or "0")
        return wh_pb2.ListWebhooksResponse(
            webhooks=[wh_pb2.Webhook(name=f"webhooks/h{2 * page + i}") for i in range(2)],
            next_page_token=str(page + 1) if page < 1 else "",
        )

    def ListWebhookDeliveries(
        self, request: Any, context: grpc.ServicerContext
    ) -> wh_pb2.ListWebhookDeliveriesResponse:
        self.calls.append(("ListWebhookDeliveries", request))
        page = int(request.page_token or "0")
        items = [
            wh_pb2.WebhookDelivery(name=f"{request.parent}/deliveries/{9 - 2 * page - i}") for i in range(2)
        ]
        return wh_pb2.ListWebhookDeliveriesResponse(
            deliveries=items, next_page_token=str(page + 1) if page < 2 else ""
        )

    def RedeliverWebhook(self, request: Any, context: grpc.ServicerContext) -> wh_pb2.WebhookDelivery:
        self.calls.append(("RedeliverWebhook", request))
        return wh_pb2.WebhookDelivery(name=request.name, state=wh_pb2.WEBHOOK_DELIVERY_STATE_PENDING)

    def ReplayWebhook(self, request: Any, context: grpc.ServicerContext) -> wh_pb2.ReplayWebhookResponse:
        self.calls.append(("ReplayWebhook", request))
        return wh_pb2.ReplayWebhookResponse(requeued_count=4)

    def DeleteWebhook(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls.append(("DeleteWebhook", request))
        context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")


class _Signing(sg_grpc.SigningServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def RegisterSigningKey(self, request: Any, context: grpc.ServicerContext) -> sg_pb2.SigningKey:
        self.calls.append(("RegisterSigningKey", request))
        return sg_pb2.SigningKey(
            name=f"signingKeys/{request.signing_key_id}",
            public_key_pem=request.signing_key.public_key_pem,
            description=request.signing_key.description,
            algorithm="ECDSA_P256_SHA256",
        )

    def ListSignatures(self, request: Any, context: grpc.ServicerContext) -> sg_pb2.ListSignaturesResponse:
        self.calls.append(("ListSignatures", request))
        return sg_pb2.ListSignaturesResponse(
            signatures=[sg_pb2.Signature(name=f"{request.parent}/signatures/k1", key_id="k1", verified=True)]
        )


@pytest.fixture
def fake() -> Iterator[tuple[_Webhooks, _Signing, str]]:
    # Only the RPCs exercised here are implemented; the rest answer UNIMPLEMENTED.
    webhooks = _Webhooks()  # type: ignore[abstract]
    signing = _Signing()  # type: ignore[abstract]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    wh_grpc.add_WebhookServiceServicer_to_server(webhooks, grpc_server)
    sg_grpc.add_SigningServiceServicer_to_server(signing, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield webhooks, signing, f"127.0.0.1:{port}"
    grpc_server.stop(grace=None)


def _run(address: str, *argv: str) -> int:
    return cli.main([*argv, "--address", address, "--token", "t", "--timeout", "5"])


def test_create_sends_the_filters_and_prints_the_secret_once(
    fake: tuple[_Webhooks, _Signing, str], capsys: pytest.CaptureFixture[str]
) -> None:
    webhooks, _, address = fake
    argv = ["webhooks", "create", "deploy", "--url", "https://h.example.com/x", "--event", "alias_set"]
    assert _run(address, *argv, "--model", "fraud", "--paused") == 0
    sent = webhooks.calls[-1][1]
    assert (sent.webhook_id, sent.webhook.url, sent.webhook.secret) == (
        "deploy",
        "https://h.example.com/x",
        "",
    )
    assert list(sent.webhook.event_types) == [lc_pb2.CHANGE_TYPE_ALIAS_SET]
    assert list(sent.webhook.models) == ["models/fraud"]
    assert sent.webhook.HasField("active") and not sent.webhook.active
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[:6] == [
        "name    webhooks/deploy",
        "url     https://h.example.com/x",
        "events  ALIAS_SET",
        "models  models/fraud",
        "active  false",
        "secret  whsec_generated",
    ]
    assert "shown only once" in out and out.count("whsec_generated") == 1

    assert _run(address, "webhooks", "create", "all", "--url", "https://h.example.com/y", "--json") == 0
    sent = webhooks.calls[-1][1]
    assert not sent.webhook.HasField("active") and list(sent.webhook.event_types) == []
    created = json.loads(capsys.readouterr().out)
    assert (created["name"], created["secret"]) == ("webhooks/all", "whsec_generated")


def test_lists_read_every_page_and_stop_at_the_limit(
    fake: tuple[_Webhooks, _Signing, str], capsys: pytest.CaptureFixture[str]
) -> None:
    webhooks, _, address = fake
    assert _run(address, "webhooks", "list", "--json") == 0
    assert [w["name"] for w in json.loads(capsys.readouterr().out)] == [f"webhooks/h{i}" for i in range(4)]
    webhooks.calls.clear()
    assert _run(address, "webhooks", "deliveries", "h", "--state", "failed", "--limit", "3") == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [f"webhooks/h/deliveries/{i}" for i in (9, 8, 7)]
    assert [(r.parent, r.filter, r.page_size, r.page_token) for _, r in webhooks.calls] == [
        ("webhooks/h", "state = FAILED", 3, ""),
        ("webhooks/h", "state = FAILED", 3, "1"),
    ]


def test_redeliver_normalises_the_name(
    fake: tuple[_Webhooks, _Signing, str], capsys: pytest.CaptureFixture[str]
) -> None:
    webhooks, _, address = fake
    assert _run(address, "webhooks", "redeliver", "h/12", "--json") == 0
    assert webhooks.calls[-1][1].name == "webhooks/h/deliveries/12"
    delivery = json.loads(capsys.readouterr().out)
    assert (delivery["name"], delivery["state"]) == (
        "webhooks/h/deliveries/12",
        "WEBHOOK_DELIVERY_STATE_PENDING",
    )


def test_replay_sends_the_revision_and_prints_the_count(
    fake: tuple[_Webhooks, _Signing, str], capsys: pytest.CaptureFixture[str]
) -> None:
    webhooks, _, address = fake
    assert _run(address, "webhooks", "replay", "webhooks/h", "--from-revision", "40") == 0
    sent = webhooks.calls[-1][1]
    assert (sent.name, sent.from_revision) == ("webhooks/h", 40)
    assert capsys.readouterr().out == "requeued 4 deliveries of webhooks/h\n"
    assert _run(address, "webhooks", "replay", "h", "--from-revision", "0", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"requeuedCount": "4"}


def test_server_errors_map_to_exit_codes(
    fake: tuple[_Webhooks, _Signing, str], capsys: pytest.CaptureFixture[str]
) -> None:
    webhooks, _, address = fake
    assert _run(address, "webhooks", "delete", "gone") == 3
    assert webhooks.calls[-1][1].name == "webhooks/gone"
    assert capsys.readouterr().err.startswith("error: NOT_FOUND")
    assert _run(address, "webhooks", "show", "h") == 1  # GetWebhook is not implemented by the fake
    assert "UNIMPLEMENTED" in capsys.readouterr().err


def test_register_reads_the_pem_and_refuses_private_keys(
    fake: tuple[_Webhooks, _Signing, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, signing, address = fake
    public = tmp_path / "release.pub"
    public.write_text("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n")
    argv = ["signing-keys", "register", "release", "--public-key", str(public), "--description", "CI"]
    assert _run(address, *argv) == 0
    sent = signing.calls[-1][1]
    assert (sent.signing_key_id, sent.signing_key.description) == ("release", "CI")
    assert sent.signing_key.public_key_pem == public.read_text()
    lines = capsys.readouterr().out.splitlines()
    fields = dict(line.split(None, 1) for line in lines if line[:1].strip() and " " in line)
    assert (fields["name"], fields["algorithm"]) == ("signingKeys/release", "ECDSA_P256_SHA256")

    private = tmp_path / "release.key"
    private.write_text("-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n")
    signing.calls.clear()
    assert _run(address, "signing-keys", "register", "r2", "--public-key", str(private)) == 2
    assert "holds a private key" in capsys.readouterr().err
    assert _run(address, "signing-keys", "register", "r2", "--public-key", str(tmp_path / "missing.pem")) == 1
    assert "missing.pem" in capsys.readouterr().err
    assert signing.calls == []


def test_signatures_list_takes_a_version_not_an_alias(
    fake: tuple[_Webhooks, _Signing, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, signing, address = fake
    assert _run(address, "signatures", "list", "fraud/3") == 0
    assert signing.calls[-1][1].parent == "models/fraud/versions/3"
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["k1", "true"]
    signing.calls.clear()
    assert _run(address, "signatures", "list", "fraud@champion") == 2
    assert "not a model version name" in capsys.readouterr().err
    assert signing.calls == []
