"""`modelreg promotions` and `modelreg gates` end to end against the real server and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
from google.protobuf import field_mask_pb2

from modelreg import Registry
from modelreg.cli import main
from modelreg.v1 import governance_service_pb2 as gv
from modelreg.v1.governance_service_pb2_grpc import GovernanceServiceStub

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(server_address: str, admin_token: str, capsys: pytest.CaptureFixture[str]) -> Run:
    """Runs the CLI against the session's server, as the admin unless `token` is given."""

    def run(*argv: str, token: str = admin_token) -> tuple[int, str, str]:
        code = main(["--address", server_address, "--token", token, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _fields(text: str) -> dict[str, str]:
    """`field  value` lines as printed for single resources."""
    pairs = (line.partition(" ") for line in text.splitlines())
    return {key: value.strip() for key, _, value in pairs}


def _set_gates(server_address: str, model: str, auc: float, approvals: int) -> None:
    """`auc >= {auc}` and `approvals` required approvals, through the raw GovernanceService stub."""
    rule = gv.PromotionRule(
        metric_threshold=gv.MetricThresholdRule(
            metric="auc", operator=gv.THRESHOLD_OPERATOR_GREATER_OR_EQUAL, value=auc
        )
    )
    gates = gv.PromotionGates(
        name=f"models/{model}/promotionGates", rules=[rule], required_approvals=approvals
    )
    request = gv.UpdatePromotionGatesRequest(
        promotion_gates=gates, update_mask=field_mask_pb2.FieldMask(paths=["rules", "required_approvals"])
    )
    with Registry(server_address) as registry:
        registry._call(GovernanceServiceStub(registry._channel).UpdatePromotionGates, request)


def _lead_token(cli: Run) -> str:
    """A new principal with the lead role, created through the CLI; returns its token."""
    principal = f"cli-lead-{uuid.uuid4().hex[:10]}"
    assert cli("principals", "create", principal)[0] == 0
    assert cli("bindings", "grant", principal, "lead")[0] == 0
    code, out, err = cli("tokens", "create", principal, "--json")
    assert code == 0, err
    secret = json.loads(out)["secret"]
    assert isinstance(secret, str) and secret
    return secret


def _new_model(cli: Run, *aucs: float) -> str:
    """A new model with one version in STAGING per AUC."""
    model = f"cli-gov-{uuid.uuid4().hex[:10]}"
    assert cli("models", "create", model)[0] == 0
    for auc in aucs:
        code, out, err = cli("versions", "create", model, "--metric", f"auc={auc}")
        assert code == 0, err
        code, _, err = cli("stage", _fields(out)["name"], "staging")
        assert code == 0, err
    return model


def test_gates_show_and_dry_run(cli: Run, server_address: str) -> None:
    model = _new_model(cli, 0.95, 0.5)
    code, out, err = cli("gates", "show", model)
    assert code == 0, err
    assert _fields(out)["required_approvals"] == "0" and out.endswith("no rules\n")

    _set_gates(server_address, model, 0.9, 1)
    code, out, err = cli("gates", "show", f"models/{model}")
    assert code == 0, err
    fields = _fields(out)
    assert (fields["name"], fields["required_approvals"]) == (f"models/{model}/promotionGates", "1")
    code, out_whoami, err = cli("whoami", "--json")
    assert code == 0, err
    assert fields["updater"] == json.loads(out_whoami)["principal"]["name"].removeprefix("principals/")
    rows = out.split("\n\n")[1].splitlines()
    assert rows[0].split() == ["#", "KIND", "RULE"] and rows[1].split() == [
        "0",
        "METRIC_THRESHOLD",
        "auc",
        ">=",
        "0.9",
    ]
    code, out, err = cli("gates", "show", model, "--json")
    assert code == 0, err
    assert json.loads(out)["requiredApprovals"] == 1

    code, out, err = cli("gates", "dry-run", f"{model}/1", "--stage", "production")
    assert code == 0, err
    fields = _fields(out)
    assert (fields["version"], fields["target"], fields["passed"]) == (
        f"models/{model}/versions/1",
        "PRODUCTION",
        "true",
    )
    assert (fields["approval_required"], fields["required_approvals"]) == ("true", "1")
    result = out.split("\n\n")[1].splitlines()[1].split()
    assert result[:3] == ["0", "METRIC_THRESHOLD", "PASS"]

    code, out, err = cli("gates", "dry-run", f"models/{model}/versions/2", "--stage", "production", "--json")
    assert code == 6
    verdict = json.loads(out)
    assert verdict["passed"] is False and verdict["results"][0]["passed"] is False
    assert err.startswith("error: FAILED_PRECONDITION PROMOTION_GATES_FAILED:") and "fails 1 of 1" in err
    # Dry runs move nothing.
    code, out, _ = cli("versions", "get", f"{model}/1")
    assert code == 0 and _fields(out)["stage"] == "STAGE_STAGING"

    assert cli("gates", "show", f"nope-{uuid.uuid4().hex[:8]}")[0] == 3
    assert cli("gates", "dry-run", f"{model}/9", "--stage", "production")[0] == 3


def test_promotion_request_approve_reject_cancel(cli: Run, server_address: str) -> None:
    model = _new_model(cli, 0.95, 0.97)
    _set_gates(server_address, model, 0.9, 1)
    lead = _lead_token(cli)

    # Request, then try to approve it as its own requester: the server refuses, the CLI exits 8.
    code, out, err = cli(
        "promotions", "request", f"{model}/1", "--stage", "production", "--comment", "ship v1"
    )
    assert code == 0, err
    first = _fields(out)
    assert (first["model_version"], first["state"], first["comment"]) == (
        f"models/{model}/versions/1",
        "PROMOTION_REQUEST_STATE_PENDING",
        "ship v1",
    )
    assert first["target.stage"] == "STAGE_PRODUCTION" and first["required_approvals"] == "1"
    name = first["name"]
    assert name.startswith(f"models/{model}/promotionRequests/")
    code, out, err = cli("promotions", "approve", name)
    assert (code, out) == (8, "")
    assert err.startswith("error: PERMISSION_DENIED SELF_APPROVAL:") and "cannot approve" in err
    code, out, err = cli("promotions", "request", f"{model}/1", "--stage", "production")
    assert code == 4 and "PROMOTION_REQUEST_EXISTS" in err
    code, out, err = cli("promotions", "request", f"{model}/1", "--stage", "staging")
    assert code == 5 and "INVALID_ARGUMENT" in err and "STAGE_PRODUCTION" in err

    # Another lead approves: the single required approval executes the move.
    short = f"{model}/{name.rpartition('/')[2]}"
    code, out, err = cli("promotions", "approve", short, "--comment", "lgtm", "--json", token=lead)
    assert code == 0, err
    approved = json.loads(out)
    assert approved["state"] == "PROMOTION_REQUEST_STATE_EXECUTED"
    assert [a["comment"] for a in approved["approvals"]] == ["lgtm"]
    code, out, _ = cli("versions", "get", f"{model}/1")
    assert code == 0 and _fields(out)["stage"] == "STAGE_PRODUCTION"

    # Rejection by the lead is final.
    code, out, err = cli(
        "promotions", "request", f"{model}/2", "--stage", "production", "--archive-existing", "--json"
    )
    assert code == 0, err
    second = json.loads(out)["name"]
    code, out, err = cli("promotions", "reject", second, "--comment", "not yet", token=lead)
    assert code == 0, err
    rejected = _fields(out)
    assert (rejected["state"], rejected["rejection.comment"]) == (
        "PROMOTION_REQUEST_STATE_REJECTED",
        "not yet",
    )
    code, _, err = cli("promotions", "approve", second, token=lead)
    assert code == 6 and "PROMOTION_REQUEST_CLOSED" in err

    # The requester cancels their own request.
    code, out, err = cli(
        "promotions", "request", f"models/{model}/versions/2", "--stage", "production", "--json"
    )
    assert code == 0, err
    third = json.loads(out)["name"]
    code, out, err = cli("promotions", "cancel", third, "--comment", "wrong time")
    assert code == 0, err
    cancelled = _fields(out)
    assert (
        cancelled["state"] == "PROMOTION_REQUEST_STATE_CANCELLED"
        and "wrong time" in cancelled["state_message"]
    )

    # Approved, but the gates tightened meanwhile: the move is refused, the request FAILED, exit 6.
    code, out, err = cli(
        "promotions", "request", f"{model}/2", "--stage", "production", "--archive-existing", "--json"
    )
    assert code == 0, err
    fourth = json.loads(out)["name"]
    _set_gates(server_address, model, 0.99, 1)
    code, out, err = cli("promotions", "approve", fourth, token=lead)
    assert code == 6
    assert _fields(out)["state"] == "PROMOTION_REQUEST_STATE_FAILED"
    assert err.startswith("error: FAILED_PRECONDITION PROMOTION_FAILED:") and "METRIC_THRESHOLD" in err
    code, out, _ = cli("versions", "get", f"{model}/2")
    assert code == 0 and _fields(out)["stage"] == "STAGE_STAGING"

    # Listing, newest first, filtered by state, and one request in full.
    code, out, err = cli("promotions", "list", model)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "TARGET", "STATE", "APPROVALS", "REQUESTER", "CREATED"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (fourth, "2", "PRODUCTION", "FAILED", "1/1"),
        (third, "2", "PRODUCTION", "CANCELLED", "0/1"),
        (second, "2", "PRODUCTION", "REJECTED", "0/1"),
        (name, "1", "PRODUCTION", "EXECUTED", "1/1"),
    ]
    code, out, err = cli("promotions", "list", f"models/{model}", "--state", "rejected", "--json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)] == [second]
    code, out, err = cli("promotions", "list", model, "--limit", "2", "--json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)] == [fourth, third]
    code, out, err = cli("promotions", "show", name)
    assert code == 0, err
    shown = _fields(out)
    assert (shown["name"], shown["state"], shown["approvals[0].comment"]) == (
        name,
        "PROMOTION_REQUEST_STATE_EXECUTED",
        "lgtm",
    )
    code, _, err = cli("promotions", "show", f"{model}/999999")
    assert code == 3 and "NOT_FOUND" in err
    code, _, err = cli("promotions", "list", model, "--filter", "colour = 1")
    assert code == 5 and "INVALID_FILTER" in err
