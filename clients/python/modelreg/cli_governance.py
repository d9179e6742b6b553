"""Governance commands of the `modelreg` CLI: promotion requests and gates (see :mod:`modelreg.cli`).

The GovernanceService has no methods on :class:`modelreg.client.Registry`; these commands call the
generated stub on the Registry's channel and go through `Registry._call`, so errors map to the same exit
codes as every other command.

Targets: the server guards (and so accepts here) moves into the PRODUCTION stage and onto protected
aliases; `--stage` takes any stage name so that the server's INVALID_ARGUMENT explains the rule.

Two commands report a refusal through the exit code although the call itself succeeded, printing the
result either way: `modelreg gates dry-run` exits 6 (failed precondition, reason PROMOTION_GATES_FAILED)
when a rule fails, and `modelreg promotions approve` exits 6 (reason PROMOTION_FAILED) when the approval
executed the move and the server refused it (the request is FAILED, with the reasons).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TextIO, TypeAlias

from google.protobuf import duration_pb2

from modelreg import _core
from modelreg.cli import (
    _list_json,
    _message_json,
    _positive_int,
    _print_one,
    _stage,
    collect_pages,
    format_fields,
    format_table,
    format_timestamp,
    numbered_child,
    stage_label,
)
from modelreg.client import Registry
from modelreg.errors import FailedPrecondition
from modelreg.v1 import governance_service_pb2 as gov_pb2
from modelreg.v1 import governance_service_pb2_grpc as gov_grpc

__all__ = [
    "STATES",
    "add_governance_commands",
    "dry_run_text",
    "format_duration",
    "gates_text",
    "promotion_request_name",
    "promotions_table",
    "rule_text",
    "state_filter",
    "target_text",
]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

STATES: dict[str, gov_pb2.PromotionRequestState.ValueType] = {
    "pending": gov_pb2.PROMOTION_REQUEST_STATE_PENDING,
    "approved": gov_pb2.PROMOTION_REQUEST_STATE_APPROVED,
    "executed": gov_pb2.PROMOTION_REQUEST_STATE_EXECUTED,
    "rejected": gov_pb2.PROMOTION_REQUEST_STATE_REJECTED,
    "cancelled": gov_pb2.PROMOTION_REQUEST_STATE_CANCELLED,
    "expired": gov_pb2.PROMOTION_REQUEST_STATE_EXPIRED,
    "failed": gov_pb2.PROMOTION_REQUEST_STATE_FAILED,
}

_REQUESTS = "/promotionRequests/"
_OPERATORS: dict[gov_pb2.ThresholdOperator.ValueType, str] = {
    gov_pb2.THRESHOLD_OPERATOR_GREATER_OR_EQUAL: ">=",
    gov_pb2.THRESHOLD_OPERATOR_GREATER: ">",
    gov_pb2.THRESHOLD_OPERATOR_LESS_OR_EQUAL: "<=",
    gov_pb2.THRESHOLD_OPERATOR_LESS: "<",
}


def promotion_request_name(text: str) -> str:
    """`models/MODEL/promotionRequests/ID` from that name or the shorthand `MODEL/ID`."""
    return numbered_child(
        text,
        _REQUESTS,
        _core.model_name,
        "promotion request name",
        "models/MODEL/promotionRequests/ID or MODEL/ID",
    )


def _gates_name(model: str) -> str:
    return f"{_core.model_name(model)}/promotionGates"


def _alias(text: str) -> str:
    try:
        return _core._check_alias(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _governance(registry: Registry) -> gov_grpc.GovernanceServiceStub:
    return gov_grpc.GovernanceServiceStub(registry._channel)


# --- parsing -------------------------------------------------------------------------------------------


def _add_target(cmd: argparse.ArgumentParser) -> None:
    target = cmd.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--stage", type=_stage, default=None, metavar="STAGE", help="a stage; only production is guarded"
    )
    target.add_argument("--alias", type=_alias, default=None, metavar="ALIAS", help="a protected alias")


def add_governance_commands(resources: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `promotions` and `gates` to the `modelreg` parser."""
    version_help = "models/MODEL/versions/N, MODEL/N, or MODEL@ALIAS"
    request_help = "models/MODEL/promotionRequests/ID or MODEL/ID"

    promotions = resources.add_parser(
        "promotions", help="promotion requests (approvals of guarded moves)"
    ).add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd = promotions.add_parser("request", parents=[common], help="ask for approvals to promote a version")
    cmd.add_argument("version", metavar="VERSION", help=version_help)
    _add_target(cmd)
    cmd.add_argument("--archive-existing", action="store_true", help="archive the current PRODUCTION version")
    cmd.add_argument("--comment", default="", help="why, kept with the request and in the move's history")
    cmd.set_defaults(handler=_promotions_request)

    cmd = promotions.add_parser("list", parents=[common], help="list the promotion requests of a model")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("--state", choices=list(STATES), default=None, help=" | ".join(STATES))
    cmd.add_argument(
        "--filter", default="", help="AIP-160 filter over state, requester, model_version, create_time, ..."
    )
    cmd.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="stop after N requests")
    cmd.set_defaults(handler=_promotions_list)

    cmd = promotions.add_parser("show", parents=[common], help="show a promotion request")
    cmd.add_argument("name", metavar="NAME", help=request_help)
    cmd.set_defaults(handler=_promotions_show)

    cmd = promotions.add_parser(
        "approve", parents=[common], help="approve; the last approval needed executes the move"
    )
    cmd.add_argument("name", metavar="NAME", help=request_help)
    cmd.add_argument("--comment", default="")
    cmd.set_defaults(handler=_promotions_approve)

    cmd = promotions.add_parser("reject", parents=[common], help="reject a pending request (final)")
    cmd.add_argument("name", metavar="NAME", help=request_help)
    cmd.add_argument("--comment", default="", help="why")
    cmd.set_defaults(handler=_promotions_reject)

    cmd = promotions.add_parser(
        "cancel", parents=[common], help="cancel a request (its requester or an admin)"
    )
    cmd.add_argument("name", metavar="NAME", help=request_help)
    cmd.add_argument("--comment", default="", help="why")
    cmd.set_defaults(handler=_promotions_cancel)

    gates = resources.add_parser("gates", help="promotion gates of a model").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = gates.add_parser("show", parents=[common], help="show the promotion gates and approval policy")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.set_defaults(handler=_gates_show)

    cmd = gates.add_parser(
        "dry-run", parents=[common], help="evaluate the gates for a move (exit 6 when a rule fails)"
    )
    cmd.add_argument("version", metavar="VERSION", help=version_help)
    _add_target(cmd)
    cmd.set_defaults(handler=_gates_dry_run)


def _target(args: argparse.Namespace) -> gov_pb2.PromotionTarget:
    if args.alias is not None:
        return gov_pb2.PromotionTarget(alias=args.alias)
    return gov_pb2.PromotionTarget(stage=args.stage)


def state_filter(state: str | None, filter_text: str) -> str:
    """The AIP-160 filter of `promotions list`: `--filter`, ANDed with `state = STATE` when given."""
    if state is None:
        return filter_text
    if state not in STATES:
        raise ValueError(f"unknown promotion request state {state!r}: use {', '.join(STATES)}")
    clause = f"state = {state.upper()}"
    return f"({filter_text}) AND {clause}" if filter_text.strip() else clause


# --- formatting ----------------------------------------------------------------------------------------


def target_text(target: gov_pb2.PromotionTarget) -> str:
    """`PRODUCTION` for a stage target, `@champion` for an alias target, `-` when unset."""
    which = target.WhichOneof("target")
    if which == "alias":
        return f"@{target.alias}"
    if which == "stage":
        return stage_label(target.stage)
    return "-"


def _state(state: gov_pb2.PromotionRequestState.ValueType) -> str:
    return gov_pb2.PromotionRequestState.Name(state).removeprefix("PROMOTION_REQUEST_STATE_")


def format_duration(duration: duration_pb2.Duration) -> str:
    """`1d2h`, `90s` -> `1m30s`; a zero duration is the server default of 7 days."""
    seconds = duration.seconds
    if seconds <= 0 and duration.nanos <= 0:
        return "7d (default)"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return "".join(parts)


def _rule_kind(rule: gov_pb2.PromotionRule) -> str:
    return (rule.WhichOneof("rule") or "unset").upper()


def rule_text(rule: gov_pb2.PromotionRule) -> str:
    """One rule in words, e.g. `auc >= 0.9`."""
    which = rule.WhichOneof("rule")
    if which == "metric_threshold":
        t = rule.metric_threshold
        return f"{t.metric} {_OPERATORS.get(t.operator, '?')} {t.value:.6g}"
    if which == "champion_comparison":
        c = rule.champion_comparison
        better = "higher" if c.higher_is_better else "lower"
        return (
            f"{c.metric} no worse than the champion by more than {c.max_regression:.6g} ({better} is better)"
        )
    if which == "schema_compatibility":
        return "input and output schemas compatible with PRODUCTION"
    if which == "lineage":
        lineage = rule.lineage
        required = [
            label
            for label, flag in (
                ("run_id", lineage.require_run_id),
                ("dataset digests", lineage.require_dataset_digests),
                ("code commit", lineage.require_code_commit),
            )
            if flag
        ]
        return "requires " + (", ".join(required) or "nothing")
    if which == "signature":
        return "verified signature by one of: " + ", ".join(rule.signature.trusted_key_ids)
    return "-"


def gates_text(gates: gov_pb2.PromotionGates) -> str:
    """What `modelreg gates show` prints: the policy, then one row per rule."""
    fields = format_fields(
        [
            ("name", gates.name),
            ("required_approvals", str(gates.required_approvals)),
            ("request_ttl", format_duration(gates.request_ttl)),
            ("updated", format_timestamp(gates.update_time) or "never"),
            ("updater", gates.updater),
        ]
    )
    if not gates.rules:
        return f"{fields}\n\nno rules"
    rules = format_table(
        ["#", "KIND", "RULE"],
        ([str(i), _rule_kind(rule), rule_text(rule)] for i, rule in enumerate(gates.rules)),
    )
    return f"{fields}\n\n{rules}"


def dry_run_text(response: gov_pb2.DryRunPromotionResponse) -> str:
    """What `modelreg gates dry-run` prints: the verdict, then PASS/FAIL per rule."""
    pairs = [
        ("version", response.model_version),
        ("target", target_text(response.target)),
        ("passed", "true" if response.passed else "false"),
        ("approval_required", "true" if response.approval_required else "false"),
        ("required_approvals", str(response.required_approvals)),
    ]
    if response.champion_version:
        pairs.append(("champion", response.champion_version))
    if response.production_version:
        pairs.append(("production", response.production_version))
    text = format_fields(pairs)
    if not response.results:
        return f"{text}\n\nno rules"
    results = format_table(
        ["#", "KIND", "RESULT", "MESSAGE"],
        ([str(r.rule_index), r.kind, "PASS" if r.passed else "FAIL", r.message] for r in response.results),
    )
    return f"{text}\n\n{results}"


def promotions_table(requests: Sequence[gov_pb2.PromotionRequest]) -> str:
    """The table printed by `modelreg promotions list`."""
    return format_table(
        ["NAME", "VERSION", "TARGET", "STATE", "APPROVALS", "REQUESTER", "CREATED"],
        (
            [
                r.name,
                r.model_version.rpartition("/")[2] or "-",
                target_text(r.target),
                _state(r.state),
                f"{len(r.approvals)}/{r.required_approvals}",
                r.requester,
                format_timestamp(r.create_time),
            ]
            for r in requests
        ),
    )


# --- commands ------------------------------------------------------------------------------------------


def _promotions_request(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = gov_pb2.RequestPromotionRequest(
        name=_core.version_reference(args.version),
        target=_target(args),
        archive_existing=args.archive_existing,
        comment=args.comment,
    )
    _print_one(registry._call(_governance(registry).RequestPromotion, request), args, out)


def _promotions_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    stub = _governance(registry)
    parent = _core.model_name(args.model)
    filter_text = state_filter(args.state, args.filter)

    def fetch(page_token: str, page_size: int) -> tuple[Sequence[gov_pb2.PromotionRequest], str]:
        request = gov_pb2.ListPromotionRequestsRequest(
            parent=parent, filter=filter_text, page_size=page_size, page_token=page_token
        )
        response = registry._call(stub.ListPromotionRequests, request)
        return response.promotion_requests, response.next_page_token

    requests = collect_pages(fetch, args.limit)
    print(_list_json(requests) if args.json else promotions_table(requests), file=out)


def _promotions_show(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = gov_pb2.GetPromotionRequestRequest(name=promotion_request_name(args.name))
    _print_one(registry._call(_governance(registry).GetPromotionRequest, request), args, out)


def _promotions_approve(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = gov_pb2.ApprovePromotionRequest(name=promotion_request_name(args.name), comment=args.comment)
    result = registry._call(_governance(registry).ApprovePromotion, request)
    _print_one(result, args, out)
    if result.state == gov_pb2.PROMOTION_REQUEST_STATE_FAILED:
        reasons = "; ".join(f"{f.type}: {f.description}" for f in result.failures)
        raise FailedPrecondition(
            f"{result.name} was approved but the move was refused: {reasons or result.state_message}",
            reason="PROMOTION_FAILED",
        )


def _promotions_reject(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = gov_pb2.RejectPromotionRequest(name=promotion_request_name(args.name), comment=args.comment)
    _print_one(registry._call(_governance(registry).RejectPromotion, request), args, out)


def _promotions_cancel(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = gov_pb2.CancelPromotionRequestRequest(
        name=promotion_request_name(args.name), comment=args.comment
    )
    _print_one(registry._call(_governance(registry).CancelPromotionRequest, request), args, out)


def _gates_show(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = gov_pb2.GetPromotionGatesRequest(name=_gates_name(args.model))
    gates = registry._call(_governance(registry).GetPromotionGates, request)
    print(_message_json(gates) if args.json else gates_text(gates), file=out)


def _gates_dry_run(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = gov_pb2.DryRunPromotionRequest(name=_core.version_reference(args.version), target=_target(args))
    response = registry._call(_governance(registry).DryRunPromotion, request)
    print(_message_json(response) if args.json else dry_run_text(response), file=out)
    if not response.passed:
        failed = sum(1 for r in response.results if not r.passed)
        raise FailedPrecondition(
            f"{response.model_version} fails {failed} of {len(response.results)} promotion gates",
            reason="PROMOTION_GATES_FAILED",
        )
