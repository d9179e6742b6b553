"""`modelreg promotions` and `modelreg gates`: parsing, formatting, and calls against a fake servicer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from modelreg import cli, cli_governance
from modelreg.v1 import governance_service_pb2 as gov_pb2
from modelreg.v1 import governance_service_pb2_grpc as gov_grpc
from modelreg.v1 import model_pb2

TO_PRODUCTION = gov_pb2.PromotionTarget(stage=model_pb2.STAGE_PRODUCTION)

# --- parsing -------------------------------------------------------------------------------------------


def test_promotion_parsing() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["promotions", "request", "fraud/3", "--stage", "production", "--archive-existing", "--comment", "go"]
    )
    assert (args.version, args.stage, args.alias) == ("fraud/3", model_pb2.STAGE_PRODUCTION, None)
    assert (args.archive_existing, args.comment) == (True, "go")
    args = parser.parse_args(["promotions", "request", "models/fraud@canary", "--alias", "champion"])
    assert (args.stage, args.alias, args.archive_existing) == (None, "champion", False)
    args = parser.parse_args(["promotions", "list", "fraud", "--state", "pending", "--limit", "3", "--json"])
    assert (args.model, args.state, args.filter, args.limit, args.json) == ("fraud", "pending", "", 3, True)
    for verb in ("approve", "reject", "cancel"):
        args = parser.parse_args(["promotions", verb, "fraud/7", "--comment", "why"])
        assert (args.name, args.comment) == ("fraud/7", "why")
    args = parser.parse_args(["gates", "show", "models/fraud"])
    assert args.model == "models/fraud"
    args = parser.parse_args(["gates", "dry-run", "fraud/2", "--stage", "PRODUCTION"])
    assert (args.version, args.stage) == ("fraud/2", model_pb2.STAGE_PRODUCTION)


@pytest.mark.parametrize(
    "argv",
    [
        ["promotions", "request", "fraud/3"],  # no target
        ["promotions", "request", "fraud/3", "--stage", "production", "--alias", "champion"],
        ["promotions", "request", "fraud/3", "--stage", "live"],
        ["promotions", "request", "fraud/3", "--alias", "Champion"],
        ["promotions", "list"],
        ["promotions", "list", "fraud", "--state", "open"],
        ["promotions", "list", "fraud", "--limit", "0"],
        ["promotions", "show"],
        ["gates", "dry-run", "fraud/3"],
        ["gates", "update", "fraud"],
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("fraud/7", "models/fraud/promotionRequests/7"),
        ("models/fraud/promotionRequests/12", "models/fraud/promotionRequests/12"),
        ("models/fraud/7", "models/fraud/promotionRequests/7"),
    ],
)
def test_promotion_request_name(text: str, name: str) -> None:
    assert cli_governance.promotion_request_name(text) == name


@pytest.mark.parametrize(
    "text", ["fraud", "7", "fraud/x", "fraud/0", "a/b/7", "models/fraud/promotionRequests/", "/7"]
)
def test_promotion_request_name_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"promotion request name|model id"):
        cli_governance.promotion_request_name(text)


def test_state_filter() -> None:
    assert cli_governance.state_filter(None, "") == ""
    assert cli_governance.state_filter(None, 'requester = "principals/a"') == 'requester = "principals/a"'
    assert cli_governance.state_filter("pending", "") == "state = PENDING"
    assert cli_governance.state_filter("failed", "x = 1 OR y = 2") == "(x = 1 OR y = 2) AND state = FAILED"
    with pytest.raises(ValueError, match="unknown promotion request state"):
        cli_governance.state_filter("open", "")


# --- formatting ----------------------------------------------------------------------------------------


def test_target_text() -> None:
    assert cli_governance.target_text(TO_PRODUCTION) == "PRODUCTION"
    assert cli_governance.target_text(gov_pb2.PromotionTarget(alias="champion")) == "@champion"
    assert cli_governance.target_text(gov_pb2.PromotionTarget()) == "-"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "7d (default)"), (1, "1s"), (90, "1m30s"), (3600, "1h"), (93784, "1d2h3m4s"), (2592000, "30d")],
)
def test_format_duration(seconds: int, text: str) -> None:
    assert cli_governance.format_duration(duration_pb2.Duration(seconds=seconds)) == text


def _rules() -> list[gov_pb2.PromotionRule]:
    return [
        gov_pb2.PromotionRule(
            metric_threshold=gov_pb2.MetricThresholdRule(
                metric="auc", operator=gov_pb2.THRESHOLD_OPERATOR_GREATER_OR_EQUAL, value=0.9
            )
        ),
        gov_pb2.PromotionRule(
            champion_comparison=gov_pb2.ChampionComparisonRule(
                metric="loss", higher_is_better=False, max_regression=0.01
            )
        ),
        gov_pb2.PromotionRule(schema_compatibility=gov_pb2.SchemaCompatibilityRule()),
        gov_pb2.PromotionRule(lineage=gov_pb2.LineageRule(require_run_id=True, require_code_commit=True)),
        gov_pb2.PromotionRule(signature=gov_pb2.SignatureRule(trusted_key_ids=["k1", "k2"])),
    ]


def test_rule_text() -> None:
    assert [cli_governance.rule_text(rule) for rule in _rules()] == [
        "auc >= 0.9",
        "loss no worse than the champion by more than 0.01 (lower is better)",
        "input and output schemas compatible with PRODUCTION",
        "requires run_id, code commit",
        "verified signature by one of: k1, k2",
    ]
    assert cli_governance.rule_text(gov_pb2.PromotionRule()) == "-"


def test_gates_text() -> None:
    gates = gov_pb2.PromotionGates(
        name="models/fraud/promotionGates",
        rules=_rules()[:2],
        required_approvals=2,
        request_ttl=duration_pb2.Duration(seconds=86400),
        update_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        updater="principals/lead",
    )
    lines = cli_governance.gates_text(gates).splitlines()
    assert lines[:5] == [
        "name                models/fraud/promotionGates",
        "required_approvals  2",
        "request_ttl         1d",
        "updated             2023-11-14T22:13:20Z",
        "updater             principals/lead",
    ]
    assert lines[6].split() == ["#", "KIND", "RULE"]
    assert lines[7].split()[:3] == ["0", "METRIC_THRESHOLD", "auc"]
    assert lines[8].split()[:2] == ["1", "CHAMPION_COMPARISON"]
    empty = cli_governance.gates_text(gov_pb2.PromotionGates(name="models/m/promotionGates"))
    assert "updated             never" in empty and empty.endswith("\n\nno rules")


def test_dry_run_text() -> None:
    response = gov_pb2.DryRunPromotionResponse(
        model_version="models/fraud/versions/3",
        target=TO_PRODUCTION,
        passed=False,
        approval_required=True,
        required_approvals=1,
        production_version="models/fraud/versions/2",
        results=[
            gov_pb2.GateResult(rule_index=0, kind="METRIC_THRESHOLD", passed=False, message="auc 0.5 < 0.9"),
            gov_pb2.GateResult(rule_index=1, kind="SCHEMA_COMPATIBILITY", passed=True, message="compatible"),
        ],
    )
    lines = cli_governance.dry_run_text(response).splitlines()
    assert lines[:6] == [
        "version             models/fraud/versions/3",
        "target              PRODUCTION",
        "passed              false",
        "approval_required   true",
        "required_approvals  1",
        "production          models/fraud/versions/2",
    ]
    assert lines[7].split() == ["#", "KIND", "RESULT", "MESSAGE"]
    assert lines[8].split() == ["0", "METRIC_THRESHOLD", "FAIL", "auc", "0.5", "<", "0.9"]
    assert lines[9].split() == ["1", "SCHEMA_COMPATIBILITY", "PASS", "compatible"]


def test_promotions_table() -> None:
    requests = [
        gov_pb2.PromotionRequest(
            name="models/fraud/promotionRequests/2",
            model_version="models/fraud/versions/3",
            target=gov_pb2.PromotionTarget(alias="champion"),
            state=gov_pb2.PROMOTION_REQUEST_STATE_PENDING,
            requester="principals/eng",
            required_approvals=2,
            approvals=[gov_pb2.PromotionReview(principal="principals/lead")],
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        ),
        gov_pb2.PromotionRequest(
            name="models/fraud/promotionRequests/1",
            model_version="models/fraud/versions/2",
            target=TO_PRODUCTION,
            state=gov_pb2.PROMOTION_REQUEST_STATE_EXECUTED,
            requester="principals/eng",
            required_approvals=1,
        ),
    ]
    lines = cli_governance.promotions_table(requests).splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "TARGET", "STATE", "APPROVALS", "REQUESTER", "CREATED"]
    assert lines[1].split() == [
        "models/fraud/promotionRequests/2",
        "3",
        "@champion",
        "PENDING",
        "1/2",
        "principals/eng",
        "2023-11-14T22:13:20Z",
    ]
    assert lines[2].split() == [
        "models/fraud/promotionRequests/1",
        "2",
        "PRODUCTION",
        "EXECUTED",
        "0/1",
        "principals/eng",
    ]


# --- calls against a fake servicer ---------------------------------------------------------------------


class _Governance(gov_grpc.GovernanceServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.execution_fails = False

    def ListPromotionRequests(
        self, request: Any, context: grpc.ServicerContext
    ) -> gov_pb2.ListPromotionRequestsResponse:
        self.calls.append(("ListPromotionRequests", request))
        page = int(request.page_token or "0")
        items = [
            gov_pb2.PromotionRequest(name=f"{request.parent}/promotionRequests/{9 - 2 * page - i}")
            for i in range(2)
        ]
        return gov_pb2.ListPromotionRequestsResponse(
            promotion_requests=items, next_page_token=str(page + 1) if page < 2 else ""
        )

    def RequestPromotion(self, request: Any, context: grpc.ServicerContext) -> gov_pb2.PromotionRequest:
        self.calls.append(("RequestPromotion", request))
        return gov_pb2.PromotionRequest(
            name="models/fraud/promotionRequests/1",
            model_version=request.name,
            target=request.target,
            state=gov_pb2.PROMOTION_REQUEST_STATE_PENDING,
        )

    def ApprovePromotion(self, request: Any, context: grpc.ServicerContext) -> gov_pb2.PromotionRequest:
        self.calls.append(("ApprovePromotion", request))
        if not self.execution_fails:
            return gov_pb2.PromotionRequest(name=request.name, state=gov_pb2.PROMOTION_REQUEST_STATE_EXECUTED)
        return gov_pb2.PromotionRequest(
            name=request.name,
            state=gov_pb2.PROMOTION_REQUEST_STATE_FAILED,
            failures=[gov_pb2.PromotionFailure(type="METRIC_THRESHOLD", description="auc 0.5 < 0.9")],
        )

    def DryRunPromotion(self, request: Any, context: grpc.ServicerContext) -> gov_pb2.DryRunPromotionResponse:
        self.calls.append(("DryRunPromotion", request))
        passed = request.target.alias == "canary"
        return gov_pb2.DryRunPromotionResponse(
            model_version=request.name,
            target=request.target,
            passed=passed,
            results=[gov_pb2.GateResult(kind="METRIC_THRESHOLD", passed=passed, message="auc")],
        )


@pytest.fixture
def fake() -> Iterator[tuple[_Governance, str]]:
    # Only the RPCs exercised here are implemented; the rest answer UNIMPLEMENTED.
    governance = _Governance()  # type: ignore[abstract]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gov_grpc.add_GovernanceServiceServicer_to_server(governance, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield governance, f"127.0.0.1:{port}"
    grpc_server.stop(grace=None)


def _run(address: str, *argv: str) -> int:
    return cli.main([*argv, "--address", address, "--token", "t", "--timeout", "5"])


def test_list_reads_every_page_and_stops_at_the_limit(
    fake: tuple[_Governance, str], capsys: pytest.CaptureFixture[str]
) -> None:
    governance, address = fake
    assert _run(address, "promotions", "list", "fraud", "--state", "pending", "--json") == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names == [f"models/fraud/promotionRequests/{i}" for i in (9, 8, 7, 6, 5, 4)]
    requests = [r for call, r in governance.calls if call == "ListPromotionRequests"]
    assert [(r.parent, r.filter, r.page_token) for r in requests] == [
        ("models/fraud", "state = PENDING", ""),
        ("models/fraud", "state = PENDING", "1"),
        ("models/fraud", "state = PENDING", "2"),
    ]
    governance.calls.clear()
    assert _run(address, "promotions", "list", "models/fraud", "--limit", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [
        f"models/fraud/promotionRequests/{i}" for i in (9, 8, 7)
    ]
    assert [r.page_size for _, r in governance.calls] == [3, 3]


def test_request_sends_the_normalised_version_and_target(
    fake: tuple[_Governance, str], capsys: pytest.CaptureFixture[str]
) -> None:
    governance, address = fake
    assert _run(address, "promotions", "request", "fraud/3", "--alias", "champion", "--json") == 0
    sent = governance.calls[-1][1]
    assert (sent.name, sent.target.alias, sent.archive_existing) == (
        "models/fraud/versions/3",
        "champion",
        False,
    )
    assert json.loads(capsys.readouterr().out)["state"] == "PROMOTION_REQUEST_STATE_PENDING"
    assert _run(address, "promotions", "request", "fraud@canary", "--stage", "production") == 0
    sent = governance.calls[-1][1]
    assert (sent.name, sent.target.stage) == ("models/fraud@canary", model_pb2.STAGE_PRODUCTION)
    assert "PROMOTION_REQUEST_STATE_PENDING" in capsys.readouterr().out


def test_approve_exits_6_when_the_move_is_refused(
    fake: tuple[_Governance, str], capsys: pytest.CaptureFixture[str]
) -> None:
    governance, address = fake
    assert _run(address, "promotions", "approve", "fraud/4", "--comment", "ok") == 0
    assert (governance.calls[-1][1].name, governance.calls[-1][1].comment) == (
        "models/fraud/promotionRequests/4",
        "ok",
    )
    assert "PROMOTION_REQUEST_STATE_EXECUTED" in capsys.readouterr().out
    governance.execution_fails = True
    assert _run(address, "promotions", "approve", "fraud/4") == 6
    captured = capsys.readouterr()
    assert "PROMOTION_REQUEST_STATE_FAILED" in captured.out
    assert captured.err.startswith("error: FAILED_PRECONDITION PROMOTION_FAILED:")
    assert "METRIC_THRESHOLD: auc 0.5 < 0.9" in captured.err


def test_dry_run_exit_code_follows_the_verdict(
    fake: tuple[_Governance, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, address = fake
    assert _run(address, "gates", "dry-run", "fraud/3", "--alias", "canary") == 0
    assert "PASS" in capsys.readouterr().out
    assert _run(address, "gates", "dry-run", "fraud/3", "--stage", "production", "--json") == 6
    captured = capsys.readouterr()
    assert json.loads(captured.out)["passed"] is False
    assert "PROMOTION_GATES_FAILED" in captured.err and "fails 1 of 1" in captured.err


def test_malformed_names_are_usage_errors(
    fake: tuple[_Governance, str], capsys: pytest.CaptureFixture[str]
) -> None:
    governance, address = fake
    assert _run(address, "promotions", "show", "fraud") == 2
    assert "not a promotion request name" in capsys.readouterr().err
    assert _run(address, "promotions", "request", "fraud", "--stage", "production") == 2
    assert "not a model version name" in capsys.readouterr().err
    assert governance.calls == []
