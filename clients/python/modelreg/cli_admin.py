"""Access, audit and compare commands of the `modelreg` CLI (see :mod:`modelreg.cli` for conventions).

The AccessService has no methods on :class:`modelreg.client.Registry`; these commands call the generated
stub on the Registry's channel and go through `Registry._call`, so errors map to the same exit codes.

`modelreg audit verify` exits 0 when the audit hash chain is intact and 6 (failed precondition) when it is
broken; the result (events checked, first broken event) is printed either way.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import TextIO, TypeAlias

from modelreg import _core
from modelreg.cli import (
    _list_json,
    _message_json,
    _positive_int,
    _print_one,
    format_fields,
    format_table,
    format_timestamp,
)
from modelreg.client import Registry
from modelreg.errors import FailedPrecondition
from modelreg.v1 import access_service_pb2 as access_pb2
from modelreg.v1 import access_service_pb2_grpc as access_grpc
from modelreg.v1 import model_registry_service_pb2 as service_pb2

__all__ = [
    "ROLES",
    "add_admin_commands",
    "add_compare_command",
    "bindings_table",
    "comparison_text",
    "principals_table",
    "tokens_table",
]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

ROLES: dict[str, access_pb2.Role.ValueType] = {
    "viewer": access_pb2.ROLE_VIEWER,
    "data_scientist": access_pb2.ROLE_DATA_SCIENTIST,
    "ml_engineer": access_pb2.ROLE_ML_ENGINEER,
    "lead": access_pb2.ROLE_LEAD,
    "automation": access_pb2.ROLE_AUTOMATION,
    "admin": access_pb2.ROLE_ADMIN,
}


def _principal_name(text: str) -> str:
    """`principals/ID` for `ID` or `principals/ID`."""
    return text if text.startswith("principals/") else f"principals/{text}"


def _access(registry: Registry) -> access_grpc.AccessServiceStub:
    return access_grpc.AccessServiceStub(registry._channel)


# --- parsing -------------------------------------------------------------------------------------------


def add_admin_commands(resources: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `whoami`, `principals`, `tokens`, `bindings` and `audit` to the `modelreg` parser."""
    cmd = resources.add_parser("whoami", parents=[common], help="the calling principal and its role bindings")
    cmd.set_defaults(handler=_whoami)

    principals = resources.add_parser("principals", help="users and service accounts").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = principals.add_parser("create", parents=[common], help="create a principal")
    cmd.add_argument("principal_id", metavar="ID", help="new principal id")
    cmd.add_argument("--display-name", default="", metavar="TEXT")
    cmd.add_argument("--service-account", action="store_true", help="a service account, not a user")
    cmd.set_defaults(handler=_principals_create)
    cmd = principals.add_parser("list", parents=[common], help="list principals")
    cmd.set_defaults(handler=_principals_list)

    tokens = resources.add_parser("tokens", help="API tokens of principals").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = tokens.add_parser("create", parents=[common], help="create a token; the secret is printed once")
    cmd.add_argument("principal", metavar="PRINCIPAL", help="principal id or principals/ID")
    cmd.add_argument("--description", default="")
    cmd.add_argument("--expires-in-hours", type=_positive_int, default=None, metavar="H")
    cmd.set_defaults(handler=_tokens_create)
    cmd = tokens.add_parser("list", parents=[common], help="list the tokens of a principal")
    cmd.add_argument("principal", metavar="PRINCIPAL", help="principal id or principals/ID")
    cmd.set_defaults(handler=_tokens_list)
    cmd = tokens.add_parser("revoke", parents=[common], help="revoke a token")
    cmd.add_argument("name", metavar="NAME", help="token resource name")
    cmd.set_defaults(handler=_tokens_revoke)

    bindings = resources.add_parser("bindings", help="role bindings").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = bindings.add_parser("grant", parents=[common], help="grant a role to a principal")
    cmd.add_argument("principal", metavar="PRINCIPAL", help="principal id or principals/ID")
    cmd.add_argument("role", choices=sorted(ROLES), metavar="ROLE", help=" | ".join(ROLES))
    cmd.add_argument("--scope", default="", metavar="S", help="resource scope (default: everything)")
    cmd.set_defaults(handler=_bindings_grant)
    cmd = bindings.add_parser("revoke", parents=[common], help="delete a role binding")
    cmd.add_argument("name", metavar="NAME", help="role binding resource name")
    cmd.set_defaults(handler=_bindings_revoke)
    cmd = bindings.add_parser("list", parents=[common], help="list role bindings")
    cmd.add_argument("--principal", default="", metavar="P", help="only this principal's bindings")
    cmd.set_defaults(handler=_bindings_list)

    audit = resources.add_parser("audit", help="audit log").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = audit.add_parser("list", parents=[common], help="list audit events")
    cmd.add_argument("--filter", default="", help="AIP-160 filter over principal, action, resource, ...")
    cmd.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="stop after N events")
    cmd.set_defaults(handler=_audit_list)
    cmd = audit.add_parser(
        "verify", parents=[common], help="verify the audit hash chain (exit 6 when it is broken)"
    )
    cmd.set_defaults(handler=_audit_verify)


def add_compare_command(versions: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `versions compare` to the `modelreg versions` subcommands."""
    cmd = versions.add_parser(
        "compare", parents=[common], help="compare versions with the first: metrics, schemas, dependencies"
    )
    cmd.add_argument(
        "names", metavar="NAME", nargs="+", help="MODEL/N or models/MODEL/versions/N; first = baseline"
    )
    cmd.set_defaults(handler=_versions_compare)


# --- formatting ----------------------------------------------------------------------------------------


def _kind(kind: access_pb2.PrincipalKind.ValueType) -> str:
    return access_pb2.PrincipalKind.Name(kind).removeprefix("PRINCIPAL_KIND_").lower()


def _role(role: access_pb2.Role.ValueType) -> str:
    return access_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def principals_table(principals: list[access_pb2.Principal]) -> str:
    """The table printed by `modelreg principals list`."""
    return format_table(
        ["NAME", "KIND", "DISPLAY NAME", "CREATED"],
        ([p.name, _kind(p.kind), p.display_name, format_timestamp(p.create_time)] for p in principals),
    )


def tokens_table(tokens: list[access_pb2.Token]) -> str:
    """The table printed by `modelreg tokens list`."""
    return format_table(
        ["NAME", "DESCRIPTION", "CREATED", "EXPIRES", "REVOKED"],
        (
            [
                t.name,
                t.description,
                format_timestamp(t.create_time),
                format_timestamp(t.expire_time),
                format_timestamp(t.revoke_time),
            ]
            for t in tokens
        ),
    )


def bindings_table(bindings: list[access_pb2.RoleBinding]) -> str:
    """The table printed by `modelreg bindings list` and `modelreg whoami`."""
    return format_table(
        ["NAME", "PRINCIPAL", "ROLE", "SCOPE"],
        ([b.name, b.principal, _role(b.role), b.scope or "*"] for b in bindings),
    )


def audit_table(events: list[access_pb2.AuditEvent]) -> str:
    """The table printed by `modelreg audit list`."""
    return format_table(
        ["TIME", "PRINCIPAL", "ACTION", "RESOURCE", "OUTCOME"],
        ([format_timestamp(e.event_time), e.principal, e.action, e.resource, e.outcome] for e in events),
    )


def _number(value: float, present: bool, fmt: str = ".6g") -> str:
    return format(value, fmt) if present else "-"


def _schema_text(schema: service_pb2.SchemaCompatibility) -> str:
    if not schema.declared:
        return "not declared"
    if schema.compatible:
        return "compatible"
    problems = "; ".join(f"{p.field}: {p.description or p.kind}" for p in schema.problems)
    return f"INCOMPATIBLE ({problems})"


def comparison_text(response: service_pb2.CompareModelVersionsResponse) -> str:
    """Per compared version: a metric delta table, schema compatibility and dependency changes."""
    blocks = [f"baseline  {response.baseline}"]
    for comparison in response.comparisons:
        lines = [f"version   {comparison.model_version}"]
        deltas = format_table(
            ["METRIC", "BASELINE", "VALUE", "DELTA", "RELATIVE"],
            (
                [
                    d.name,
                    _number(d.baseline, d.HasField("baseline")),
                    _number(d.value, d.HasField("value")),
                    _number(d.delta, d.HasField("delta"), "+.6g"),
                    _number(d.relative * 100, d.HasField("relative"), "+.2f") + "%"
                    if d.HasField("relative")
                    else "-",
                ]
                for d in comparison.metric_deltas
            ),
        )
        lines.append(deltas)
        lines.append(
            format_fields(
                [
                    ("input schema", _schema_text(comparison.input_schema)),
                    ("output schema", _schema_text(comparison.output_schema)),
                ]
            )
        )
        for change in comparison.dependency_changes:
            lines.append(
                f"dependency {change.name}: {change.baseline_version or '-'} -> {change.version or '-'}"
            )
        if comparison.python_version_changed:
            lines.append(f"python {comparison.baseline_python_version} -> {comparison.python_version}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --- commands ------------------------------------------------------------------------------------------


def _whoami(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    identity = registry._call(_access(registry).GetCallerIdentity, access_pb2.GetCallerIdentityRequest())
    if args.json:
        print(_message_json(identity), file=out)
        return
    p = identity.principal
    print(
        format_fields([("principal", p.name), ("kind", _kind(p.kind)), ("display_name", p.display_name)]),
        file=out,
    )
    if identity.role_bindings:
        print("", file=out)
        print(bindings_table(list(identity.role_bindings)), file=out)


def _principals_create(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    kind = (
        access_pb2.PRINCIPAL_KIND_SERVICE_ACCOUNT if args.service_account else access_pb2.PRINCIPAL_KIND_USER
    )
    request = access_pb2.CreatePrincipalRequest(
        principal_id=args.principal_id,
        principal=access_pb2.Principal(display_name=args.display_name, kind=kind),
    )
    _print_one(registry._call(_access(registry).CreatePrincipal, request), args, out)


def _principals_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    stub = _access(registry)
    principals: list[access_pb2.Principal] = []
    request = access_pb2.ListPrincipalsRequest()
    while True:
        response = registry._call(stub.ListPrincipals, request)
        principals.extend(response.principals)
        if not response.next_page_token:
            break
        request = access_pb2.ListPrincipalsRequest(page_token=response.next_page_token)
    print(_list_json(principals) if args.json else principals_table(principals), file=out)


def _tokens_create(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    token = access_pb2.Token(description=args.description)
    if args.expires_in_hours is not None:
        token.expire_time.FromDatetime(datetime.now(UTC) + timedelta(hours=args.expires_in_hours))
    request = access_pb2.CreateTokenRequest(parent=_principal_name(args.principal), token=token)
    response = registry._call(_access(registry).CreateToken, request)
    if args.json:
        print(_message_json(response), file=out)
        return
    t = response.token
    print(
        format_fields(
            [
                ("name", t.name),
                ("expires", format_timestamp(t.expire_time) or "never"),
                ("secret", response.secret),
            ]
        ),
        file=out,
    )
    print("\nThe secret is shown only once; store it now.", file=out)


def _tokens_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = access_pb2.ListTokensRequest(parent=_principal_name(args.principal))
    tokens = list(registry._call(_access(registry).ListTokens, request).tokens)
    print(_list_json(tokens) if args.json else tokens_table(tokens), file=out)


def _tokens_revoke(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    token = registry._call(_access(registry).RevokeToken, access_pb2.RevokeTokenRequest(name=args.name))
    _print_one(token, args, out)


def _bindings_grant(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    binding = access_pb2.RoleBinding(
        principal=_principal_name(args.principal), role=ROLES[args.role], scope=args.scope
    )
    request = access_pb2.CreateRoleBindingRequest(role_binding=binding)
    _print_one(registry._call(_access(registry).CreateRoleBinding, request), args, out)


def _bindings_revoke(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    registry._call(_access(registry).DeleteRoleBinding, access_pb2.DeleteRoleBindingRequest(name=args.name))
    print("{}" if args.json else f"deleted {args.name}", file=out)


def _bindings_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    principal = _principal_name(args.principal) if args.principal else ""
    request = access_pb2.ListRoleBindingsRequest(principal=principal)
    bindings = list(registry._call(_access(registry).ListRoleBindings, request).role_bindings)
    print(_list_json(bindings) if args.json else bindings_table(bindings), file=out)


def _audit_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    stub = _access(registry)
    limit: int | None = args.limit
    page_size = 0 if limit is None else min(limit, _core.MAX_PAGE_SIZE)
    events: list[access_pb2.AuditEvent] = []
    request = access_pb2.ListAuditEventsRequest(filter=args.filter, page_size=page_size)
    while limit is None or len(events) < limit:
        response = registry._call(stub.ListAuditEvents, request)
        events.extend(response.audit_events)
        if not response.next_page_token:
            break
        request = access_pb2.ListAuditEventsRequest(
            filter=args.filter, page_size=page_size, page_token=response.next_page_token
        )
    if limit is not None:
        events = events[:limit]
    print(_list_json(events) if args.json else audit_table(events), file=out)


def _audit_verify(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    result = registry._call(_access(registry).VerifyAuditChain, access_pb2.VerifyAuditChainRequest())
    if args.json:
        print(_message_json(result), file=out)
    else:
        pairs = [("ok", "true" if result.ok else "false"), ("events_checked", str(result.events_checked))]
        if not result.ok:
            pairs.append(("first_broken_event", result.first_broken_event))
        print(format_fields(pairs), file=out)
    if not result.ok:
        raise FailedPrecondition(
            f"audit chain broken at {result.first_broken_event or '?'}", reason="AUDIT_CHAIN_BROKEN"
        )


def _versions_compare(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    names = [_core.model_version_name(name) for name in args.names]
    request = service_pb2.CompareModelVersionsRequest(names=names)
    response = registry._call(registry._stub.CompareModelVersions, request)
    print(_message_json(response) if args.json else comparison_text(response), file=out)
