"""Which roles may call which RPC: the spec the role x RPC test checks and README's "Roles" table shows.

Keys are `Service.Method`, optionally followed by ` [case]` where the permission depends on the request
(a stage move into PRODUCTION needs more than one into STAGING). Every RPC of every service has at least
its plain row; a role missing from a row gets PERMISSION_DENIED. Run `python -m tests.support.access_matrix`
to print the Markdown table for README.md.
"""

from __future__ import annotations

ROLES = ("viewer", "data_scientist", "ml_engineer", "lead", "automation", "admin")

_ALL = frozenset(ROLES)
_WRITERS = frozenset(ROLES[1:])  # data_scientist and up
_ENGINEERS = frozenset(ROLES[2:])  # ml_engineer and up
_LEADS = frozenset(ROLES[3:])  # lead, automation, admin
_ADMIN = frozenset({"admin"})

MATRIX: dict[str, set[str]] = {
    # ModelRegistryService
    "ModelRegistryService.CreateModel": set(_WRITERS),
    "ModelRegistryService.CreateModel [protected_aliases without champion]": set(_LEADS),
    "ModelRegistryService.GetModel": set(_ALL),
    "ModelRegistryService.ListModels": set(_ALL),
    "ModelRegistryService.UpdateModel": set(_WRITERS),
    "ModelRegistryService.UpdateModel [promotion_policy, protected_aliases]": set(_LEADS),
    "ModelRegistryService.DeleteModel": set(_ADMIN),
    "ModelRegistryService.CreateModelVersion": set(_WRITERS),
    "ModelRegistryService.GetModelVersion": set(_ALL),
    "ModelRegistryService.ListModelVersions": set(_ALL),
    "ModelRegistryService.UpdateModelVersion": set(_WRITERS),
    "ModelRegistryService.CompareModelVersions": set(_ALL),
    # LifecycleService
    "LifecycleService.TransitionModelVersionStage": set(_ENGINEERS),
    "LifecycleService.TransitionModelVersionStage [into or out of PRODUCTION, ARCHIVED]": set(_LEADS),
    "LifecycleService.ListStageTransitions": set(_ALL),
    "LifecycleService.GetAlias": set(_ALL),
    "LifecycleService.ListAliases": set(_ALL),
    "LifecycleService.SetAlias": set(_ENGINEERS),
    "LifecycleService.SetAlias [protected alias]": set(_LEADS),
    "LifecycleService.DeleteAlias": set(_ENGINEERS),
    "LifecycleService.UpdateAliases": set(_ENGINEERS),
    "LifecycleService.ListAliasHistory": set(_ALL),
    "LifecycleService.RollbackAlias": set(_ENGINEERS),
    "LifecycleService.GetTrafficPolicy": set(_ALL),
    "LifecycleService.SetTrafficPolicy": set(_LEADS),
    # ServingService
    "ServingService.ResolveAlias": set(_ALL),
    "ServingService.BatchResolveAliases": set(_ALL),
    "ServingService.ResolveRoute": set(_ALL),
    "ServingService.WatchAliases": set(_ALL),
    # ArtifactService
    "ArtifactService.FindMissingBlobs": set(_ALL),
    "ArtifactService.StatBlob": set(_ALL),
    "ArtifactService.StartUpload": set(_WRITERS),
    "ArtifactService.QueryUploadStatus": set(_WRITERS),
    "ArtifactService.CancelUpload": set(_WRITERS),
    "ArtifactService.UploadBlob": set(_WRITERS),
    "ArtifactService.DownloadBlob": set(_ALL),
    "ArtifactService.GetBlobDownloadUrl": set(_ALL),
    "ArtifactService.CreateDirectUpload": set(_WRITERS),
    "ArtifactService.CommitDirectUpload": set(_WRITERS),
    # AccessService
    "AccessService.CreatePrincipal": set(_ADMIN),
    "AccessService.GetPrincipal": set(_ALL),
    "AccessService.ListPrincipals": set(_ALL),
    "AccessService.CreateToken": set(_ADMIN),
    "AccessService.ListTokens": set(_ADMIN),
    "AccessService.RevokeToken": set(_ADMIN),
    "AccessService.CreateRoleBinding": set(_ADMIN),
    "AccessService.DeleteRoleBinding": set(_ADMIN),
    "AccessService.ListRoleBindings": set(_ADMIN),
    "AccessService.ListRoleBindings [own]": set(_ALL),
    "AccessService.TestPermissions": set(_ALL),
    "AccessService.GetCallerIdentity": set(_ALL),
    "AccessService.ListAuditEvents": set(_LEADS),
    "AccessService.VerifyAuditChain": set(_LEADS),
    # GovernanceService
    "GovernanceService.GetPromotionGates": set(_ALL),
    "GovernanceService.UpdatePromotionGates": set(_LEADS),
    "GovernanceService.DryRunPromotion": set(_ALL),
    "GovernanceService.RequestPromotion": set(_ENGINEERS),
    "GovernanceService.GetPromotionRequest": set(_ALL),
    "GovernanceService.ListPromotionRequests": set(_ALL),
    "GovernanceService.ApprovePromotion": set(_LEADS),
    "GovernanceService.RejectPromotion": set(_LEADS),
    "GovernanceService.CancelPromotionRequest": set(_ALL),
    "GovernanceService.CancelPromotionRequest [another principal's request]": set(_ADMIN),
    # WebhookService
    "WebhookService.CreateWebhook": set(_LEADS),
    "WebhookService.GetWebhook": set(_LEADS),
    "WebhookService.ListWebhooks": set(_LEADS),
    "WebhookService.UpdateWebhook": set(_LEADS),
    "WebhookService.DeleteWebhook": set(_LEADS),
    "WebhookService.ListWebhookDeliveries": set(_LEADS),
    "WebhookService.RedeliverWebhook": set(_LEADS),
    "WebhookService.ReplayWebhook": set(_LEADS),
    # SigningService
    "SigningService.RegisterSigningKey": set(_LEADS),
    "SigningService.GetSigningKey": set(_ALL),
    "SigningService.ListSigningKeys": set(_ALL),
    "SigningService.RevokeSigningKey": set(_LEADS),
    "SigningService.AttachSignature": set(_WRITERS),
    "SigningService.ListSignatures": set(_ALL),
    "SigningService.VerifySignatures": set(_WRITERS),
}


def rpc_of(key: str) -> str:
    """`Service.Method` of a matrix key."""
    return key.split(" [", 1)[0]


def render_table() -> str:
    """MATRIX as the Markdown table of README.md's "Roles" section."""
    lines = [
        "| RPC | " + " | ".join(ROLES) + " |",
        "|---|" + "---|" * len(ROLES),
    ]
    for key, allowed in MATRIX.items():
        rpc, _, case = key.partition(" [")
        label = f"`{rpc}`" + (f" ({case.rstrip(']')})" if case else "")
        lines.append(f"| {label} | " + " | ".join("✓" if r in allowed else "" for r in ROLES) + " |")
    return "\n".join(lines)


def parse_table(markdown: str) -> dict[str, set[str]]:
    """The inverse of render_table, for the first role table found in `markdown`."""
    rows: dict[str, set[str]] = {}
    header: list[str] | None = None
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            if header is not None and rows:
                break
            continue
        if header is None:
            if cells[0] == "RPC":
                header = cells[1:]
            continue
        if set(cells[0]) <= {"-", ":"}:
            continue
        label = cells[0]
        rpc, _, case = label.partition(" (")
        key = rpc.strip("`") + (f" [{case.removesuffix(')')}]" if case else "")
        rows[key] = {role for role, mark in zip(header, cells[1:], strict=True) if mark}
    return rows


if __name__ == "__main__":
    print(render_table())
