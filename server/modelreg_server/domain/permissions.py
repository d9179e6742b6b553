"""Roles and the permissions they grant: the one table the role x RPC matrix test and the README follow."""

from __future__ import annotations

import enum


class Role(enum.IntEnum):
    """Numbers match modelreg.v1.Role."""

    VIEWER = 1
    DATA_SCIENTIST = 2
    ML_ENGINEER = 3
    LEAD = 4
    AUTOMATION = 5
    ADMIN = 6


class Permission(enum.StrEnum):
    """Everything a call may need. Values are what TestPermissions takes."""

    READ = "modelreg.registry.read"  # get, list, search, compare, resolve, watch, download
    MODELS_CREATE = "modelreg.models.create"
    MODELS_UPDATE = "modelreg.models.update"  # description, labels, owner team
    VERSIONS_CREATE = "modelreg.versions.create"
    VERSIONS_UPDATE = "modelreg.versions.update"  # description, labels
    ARTIFACTS_WRITE = "modelreg.artifacts.write"
    STAGES_STAGING = "modelreg.stages.staging"  # NONE <-> STAGING
    ALIASES_SET = "modelreg.aliases.set"  # aliases that are not protected
    STAGES_PRODUCTION = "modelreg.stages.production"  # into or out of PRODUCTION, ARCHIVED
    ALIASES_SET_PROTECTED = "modelreg.aliases.setProtected"
    TRAFFIC_SET = "modelreg.traffic.set"
    MODELS_SET_POLICY = "modelreg.models.setPolicy"  # promotion policy, protected aliases
    AUDIT_READ = "modelreg.audit.read"
    MODELS_DELETE = "modelreg.models.delete"
    ACCESS_ADMIN = "modelreg.access.admin"  # principals, tokens, role bindings
    PROMOTIONS_REQUEST = "modelreg.promotions.request"  # ask for an approved promotion
    PROMOTIONS_APPROVE = "modelreg.promotions.approve"  # approve or reject others' promotion requests
    PROMOTIONS_CANCEL_ANY = "modelreg.promotions.cancelAny"  # cancel requests of other principals
    WEBHOOKS_MANAGE = "modelreg.webhooks.manage"  # webhooks, their deliveries, redelivery, replay
    SIGNING_KEYS_MANAGE = "modelreg.signingKeys.manage"  # register and revoke trusted signing keys


_VIEWER = frozenset({Permission.READ})
_DATA_SCIENTIST = _VIEWER | {
    Permission.MODELS_CREATE,
    Permission.MODELS_UPDATE,
    Permission.VERSIONS_CREATE,
    Permission.VERSIONS_UPDATE,
    Permission.ARTIFACTS_WRITE,
}
_ML_ENGINEER = _DATA_SCIENTIST | {
    Permission.STAGES_STAGING,
    Permission.ALIASES_SET,
    Permission.PROMOTIONS_REQUEST,
}
_LEAD = _ML_ENGINEER | {
    Permission.STAGES_PRODUCTION,
    Permission.ALIASES_SET_PROTECTED,
    Permission.TRAFFIC_SET,
    Permission.MODELS_SET_POLICY,
    Permission.AUDIT_READ,
    Permission.WEBHOOKS_MANAGE,
    Permission.PROMOTIONS_APPROVE,
    Permission.SIGNING_KEYS_MANAGE,
}
_ADMIN = frozenset(Permission)

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.DATA_SCIENTIST: frozenset(_DATA_SCIENTIST),
    Role.ML_ENGINEER: frozenset(_ML_ENGINEER),
    Role.LEAD: frozenset(_LEAD),
    Role.AUTOMATION: frozenset(_LEAD),
    Role.ADMIN: _ADMIN,
}

# Permissions that only make sense registry-wide: a scoped binding never grants them.
GLOBAL_ONLY = frozenset(
    {
        Permission.ACCESS_ADMIN,
        Permission.AUDIT_READ,
        Permission.WEBHOOKS_MANAGE,
        Permission.SIGNING_KEYS_MANAGE,
    }
)
