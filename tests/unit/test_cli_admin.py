"""`modelreg` access, audit and compare commands: parsing, and end-to-end calls against fake servicers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from modelreg import cli
from modelreg.v1 import access_service_pb2 as access_pb2
from modelreg.v1 import access_service_pb2_grpc as access_grpc
from modelreg.v1 import model_registry_service_pb2 as service_pb2
from modelreg.v1 import model_registry_service_pb2_grpc as service_grpc

# --- parsing -------------------------------------------------------------------------------------------


def test_admin_parsing() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["principals", "create", "bot", "--display-name", "Bot", "--service-account"])
    assert (args.principal_id, args.display_name, args.service_account) == ("bot", "Bot", True)
    args = parser.parse_args(["tokens", "create", "bot", "--expires-in-hours", "5", "--json"])
    assert (args.principal, args.expires_in_hours, args.description, args.json) == ("bot", 5, "", True)
    args = parser.parse_args(["bindings", "grant", "bot", "ml_engineer", "--scope", "models/m"])
    assert (args.principal, args.role, args.scope) == ("bot", "ml_engineer", "models/m")
    args = parser.parse_args(["audit", "list", "--filter", "x", "--limit", "2"])
    assert (args.filter, args.limit) == ("x", 2)
    args = parser.parse_args(["versions", "compare", "m/1", "m/2", "m/3"])
    assert args.names == ["m/1", "m/2", "m/3"]


@pytest.mark.parametrize(
    "argv",
    [
        ["bindings", "grant", "bot", "owner"],
        ["tokens", "create", "bot", "--expires-in-hours", "0"],
        ["tokens", "revoke"],
        ["versions", "compare"],
        ["audit", "list", "--limit", "-1"],
    ],
)
def test_admin_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


# --- end to end ----------------------------------------------------------------------------------------


class _Access(access_grpc.AccessServiceServicer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.chain_ok = True

    def GetCallerIdentity(self, request: Any, context: grpc.ServicerContext) -> access_pb2.CallerIdentity:
        self.calls.append(("GetCallerIdentity", request))
        return access_pb2.CallerIdentity(
            principal=access_pb2.Principal(name="principals/alice", kind=access_pb2.PRINCIPAL_KIND_USER),
            role_bindings=[
                access_pb2.RoleBinding(
                    name="roleBindings/1", principal="principals/alice", role=access_pb2.ROLE_ADMIN
                )
            ],
        )

    def CreatePrincipal(self, request: Any, context: grpc.ServicerContext) -> access_pb2.Principal:
        self.calls.append(("CreatePrincipal", request))
        principal = access_pb2.Principal()
        principal.CopyFrom(request.principal)
        principal.name = f"principals/{request.principal_id}"
        return principal

    def ListPrincipals(
        self, request: Any, context: grpc.ServicerContext
    ) -> access_pb2.ListPrincipalsResponse:
        self.calls.append(("ListPrincipals", request))
        if not request.page_token:
            return access_pb2.ListPrincipalsResponse(
                principals=[access_pb2.Principal(name="principals/a")], next_page_token="p2"
            )
        return access_pb2.ListPrincipalsResponse(principals=[access_pb2.Principal(name="principals/b")])

    def CreateToken(self, request: Any, context: grpc.ServicerContext) -> access_pb2.CreateTokenResponse:
        self.calls.append(("CreateToken", request))
        token = access_pb2.Token(name=f"{request.parent}/tokens/t1", expire_time=request.token.expire_time)
        return access_pb2.CreateTokenResponse(token=token, secret="s3cret")

    def ListTokens(self, request: Any, context: grpc.ServicerContext) -> access_pb2.ListTokensResponse:
        self.calls.append(("ListTokens", request))
        return access_pb2.ListTokensResponse(tokens=[access_pb2.Token(name=f"{request.parent}/tokens/t1")])

    def RevokeToken(self, request: Any, context: grpc.ServicerContext) -> access_pb2.Token:
        self.calls.append(("RevokeToken", request))
        if request.name.endswith("missing"):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such token")
        return access_pb2.Token(name=request.name)

    def CreateRoleBinding(self, request: Any, context: grpc.ServicerContext) -> access_pb2.RoleBinding:
        self.calls.append(("CreateRoleBinding", request))
        binding = access_pb2.RoleBinding()
        binding.CopyFrom(request.role_binding)
        binding.name = "roleBindings/7"
        return binding

    def DeleteRoleBinding(self, request: Any, context: grpc.ServicerContext) -> empty_pb2.Empty:
        self.calls.append(("DeleteRoleBinding", request))
        return empty_pb2.Empty()

    def ListRoleBindings(
        self, request: Any, context: grpc.ServicerContext
    ) -> access_pb2.ListRoleBindingsResponse:
        self.calls.append(("ListRoleBindings", request))
        binding = access_pb2.RoleBinding(
            name="roleBindings/7", principal=request.principal, role=access_pb2.ROLE_VIEWER
        )
        return access_pb2.ListRoleBindingsResponse(role_bindings=[binding])

    def ListAuditEvents(
        self, request: Any, context: grpc.ServicerContext
    ) -> access_pb2.ListAuditEventsResponse:
        self.calls.append(("ListAuditEvents", request))
        events = [access_pb2.AuditEvent(name=f"auditEvents/{i}", action="SetAlias") for i in range(3)]
        return access_pb2.ListAuditEventsResponse(audit_events=events, next_page_token="more")

    def VerifyAuditChain(
        self, request: Any, context: grpc.ServicerContext
    ) -> access_pb2.VerifyAuditChainResponse:
        self.calls.append(("VerifyAuditChain", request))
        if self.chain_ok:
            return access_pb2.VerifyAuditChainResponse(ok=True, events_checked=12)
        return access_pb2.VerifyAuditChainResponse(
            ok=False, events_checked=5, first_broken_event="auditEvents/4"
        )


class _Models(service_grpc.ModelRegistryServiceServicer):
    def __init__(self) -> None:
        self.requests: list[service_pb2.CompareModelVersionsRequest] = []

    def CompareModelVersions(
        self, request: service_pb2.CompareModelVersionsRequest, context: grpc.ServicerContext
    ) -> service_pb2.CompareModelVersionsResponse:
        self.requests.append(request)
        comparison = service_pb2.VersionComparison(
            model_version=request.names[1],
            metric_deltas=[
                service_pb2.MetricDelta(
                    name="auc",
                    baseline=0.9,
                    value=0.93,
                    delta=0.03,
                    relative=0.0333,
                    presence=service_pb2.METRIC_PRESENCE_BOTH,
                ),
                service_pb2.MetricDelta(
                    name="loss", baseline=0.2, presence=service_pb2.METRIC_PRESENCE_BASELINE_ONLY
                ),
            ],
            input_schema=service_pb2.SchemaCompatibility(compatible=True, declared=True),
            output_schema=service_pb2.SchemaCompatibility(
                compatible=False,
                declared=True,
                problems=[
                    service_pb2.SchemaProblem(
                        field="score",
                        kind=service_pb2.SCHEMA_PROBLEM_KIND_DTYPE_MISMATCH,
                        description="float32 vs float64",
                    )
                ],
            ),
        )
        return service_pb2.CompareModelVersionsResponse(baseline=request.names[0], comparisons=[comparison])


@pytest.fixture
def server() -> Iterator[tuple[_Access, _Models, str]]:
    # Only the RPCs the commands call are implemented; the rest answer UNIMPLEMENTED.
    access, models = _Access(), _Models()  # type: ignore[abstract]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    access_grpc.add_AccessServiceServicer_to_server(access, grpc_server)
    service_grpc.add_ModelRegistryServiceServicer_to_server(models, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield access, models, f"127.0.0.1:{port}"
    grpc_server.stop(grace=None)


def _run(address: str, *argv: str) -> int:
    return cli.main([*argv, "--address", address, "--token", "t", "--timeout", "5"])


def test_whoami(server: tuple[_Access, _Models, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, _, address = server
    assert _run(address, "whoami") == 0
    out = capsys.readouterr().out
    assert "principals/alice" in out and "admin" in out
    assert _run(address, "whoami", "--json") == 0
    assert json.loads(capsys.readouterr().out)["principal"]["name"] == "principals/alice"


def test_principals(server: tuple[_Access, _Models, str], capsys: pytest.CaptureFixture[str]) -> None:
    access, _, address = server
    assert _run(address, "principals", "create", "bot", "--service-account", "--display-name", "Bot") == 0
    request = access.calls[-1][1]
    assert (request.principal_id, request.principal.kind) == (
        "bot",
        access_pb2.PRINCIPAL_KIND_SERVICE_ACCOUNT,
    )
    assert "principals/bot" in capsys.readouterr().out
    assert _run(address, "principals", "list", "--json") == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == ["principals/a", "principals/b"]


def test_tokens(server: tuple[_Access, _Models, str], capsys: pytest.CaptureFixture[str]) -> None:
    access, _, address = server
    assert _run(address, "tokens", "create", "bot", "--expires-in-hours", "2") == 0
    request = access.calls[-1][1]
    assert request.parent == "principals/bot" and request.token.HasField("expire_time")
    out = capsys.readouterr().out
    assert "s3cret" in out and "only once" in out
    assert _run(address, "tokens", "list", "principals/bot") == 0
    assert "principals/bot/tokens/t1" in capsys.readouterr().out
    assert _run(address, "tokens", "revoke", "principals/bot/tokens/missing") == 3
    assert capsys.readouterr().err.startswith("error: NOT_FOUND")


def test_bindings(server: tuple[_Access, _Models, str], capsys: pytest.CaptureFixture[str]) -> None:
    access, _, address = server
    assert _run(address, "bindings", "grant", "bot", "automation", "--scope", "models/m", "--json") == 0
    binding = access.calls[-1][1].role_binding
    assert (binding.principal, binding.role, binding.scope) == ("principals/bot", 5, "models/m")
    assert json.loads(capsys.readouterr().out)["role"] == "ROLE_AUTOMATION"
    assert _run(address, "bindings", "list", "--principal", "bot") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "PRINCIPAL", "ROLE", "SCOPE"] and "viewer" in out[1]
    assert _run(address, "bindings", "revoke", "roleBindings/7") == 0
    assert capsys.readouterr().out == "deleted roleBindings/7\n"


def test_audit(server: tuple[_Access, _Models, str], capsys: pytest.CaptureFixture[str]) -> None:
    access, _, address = server
    assert _run(address, "audit", "list", "--limit", "2", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert access.calls[-1][1].page_size == 2
    assert _run(address, "audit", "verify") == 0
    assert "12" in capsys.readouterr().out
    access.chain_ok = False
    assert _run(address, "audit", "verify", "--json") == 6
    captured = capsys.readouterr()
    assert json.loads(captured.out)["firstBrokenEvent"] == "auditEvents/4"
    assert "AUDIT_CHAIN_BROKEN" in captured.err


def test_versions_compare(server: tuple[_Access, _Models, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, models, address = server
    assert _run(address, "versions", "compare", "fraud/2", "fraud/3") == 0
    assert list(models.requests[-1].names) == ["models/fraud/versions/2", "models/fraud/versions/3"]
    out = capsys.readouterr().out
    assert "+0.03" in out and "+3.33%" in out and "INCOMPATIBLE" in out and "float32 vs float64" in out
    assert _run(address, "versions", "compare", "fraud/2", "fraud/3", "--json") == 0
    assert json.loads(capsys.readouterr().out)["baseline"] == "models/fraud/versions/2"
