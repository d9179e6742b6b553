"""Resource names: `models/{model}`, `models/{model}/versions/{version}`, `models/{model}@{alias}`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelreg_server.domain.errors import invalid

MODEL_ID_RE = re.compile(r"[a-z][a-z0-9._-]{0,62}")
ALIAS_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_VERSION_RE = re.compile(r"[1-9][0-9]{0,18}")
MAX_VERSION = 2**63 - 1
WILDCARD = "-"


def model_name(model_id: str) -> str:
    """`models/{model_id}`."""
    return f"models/{model_id}"


def version_name(model_id: str, version: int) -> str:
    """`models/{model_id}/versions/{version}`."""
    return f"models/{model_id}/versions/{version}"


def check_model_id(model_id: str, field: str = "model_id") -> str:
    """Validates a model id: lowercase letters, digits, `-`, `_`, `.`; 1-63 chars, letter first."""
    if not MODEL_ID_RE.fullmatch(model_id):
        raise invalid(
            field,
            f"invalid model id {model_id[:80]!r}: use 1-63 lowercase letters, digits, '-', '_' or '.', "
            "starting with a letter",
        )
    return model_id


def parse_model_name(name: str, field: str = "name") -> str:
    """Returns the model id of `models/{model}`."""
    prefix, _, model_id = name.partition("/")
    if prefix != "models" or not model_id:
        raise invalid(field, f"expected 'models/{{model}}', got {name[:100]!r}")
    return check_model_id(model_id, field)


def parse_parent(parent: str, field: str = "parent", *, allow_wildcard: bool = False) -> str | None:
    """Returns the model id of a parent, or None for the `models/-` wildcard when allowed."""
    if allow_wildcard and parent == f"models/{WILDCARD}":
        return None
    return parse_model_name(parent, field)


@dataclass(frozen=True)
class VersionRef:
    """A version named by number (`…/versions/3`) or through an alias (`models/m@champion`)."""

    model_id: str
    version: int | None = None
    alias: str | None = None


def parse_version_ref(name: str, field: str = "name") -> VersionRef:
    """Parses `models/{m}/versions/{v}` or `models/{m}@{alias}`."""
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == "models" and "@" in parts[1]:
        model_id, _, alias = parts[1].partition("@")
        return VersionRef(check_model_id(model_id, field), alias=check_alias_id(alias, field))
    if len(parts) != 4 or parts[0] != "models" or parts[2] != "versions":
        raise invalid(field, f"expected 'models/{{model}}/versions/{{version}}', got {name[:100]!r}")
    check_model_id(parts[1], field)
    if not _VERSION_RE.fullmatch(parts[3]) or int(parts[3]) > MAX_VERSION:
        raise invalid(field, f"version must be a positive integer, got {parts[3][:40]!r}")
    return VersionRef(parts[1], version=int(parts[3]))


def parse_version_name(name: str, field: str = "name") -> tuple[str, int]:
    """Parses `models/{m}/versions/{v}` (no alias) into (model id, version)."""
    ref = parse_version_ref(name, field)
    if ref.version is None:
        raise invalid(field, "an alias is not accepted here; name the version number")
    return ref.model_id, ref.version


def alias_name(model_id: str, alias: str) -> str:
    """`models/{model_id}/aliases/{alias}`."""
    return f"models/{model_id}/aliases/{alias}"


def check_alias_id(alias: str, field: str) -> str:
    """Validates an alias id: `[a-z][a-z0-9-]*`, at most 63 chars."""
    if not ALIAS_RE.fullmatch(alias):
        raise invalid(field, f"invalid alias {alias[:80]!r}: use [a-z][a-z0-9-]*, at most 63 chars")
    return alias


def parse_alias_name(name: str, field: str = "name") -> tuple[str, str]:
    """Parses `models/{m}/aliases/{a}` into (model id, alias)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "models" or parts[2] != "aliases":
        raise invalid(field, f"expected 'models/{{model}}/aliases/{{alias}}', got {name[:100]!r}")
    return check_model_id(parts[1], field), check_alias_id(parts[3], field)


def parse_traffic_policy_name(name: str, field: str = "name") -> str:
    """Parses `models/{m}/trafficPolicy` (or plain `models/{m}`) into the model id."""
    base = name.removesuffix("/trafficPolicy")
    return parse_model_name(base, field)


def model_of(resource: str, field: str = "resource") -> str:
    """The model id of `models/{m}`, or of any version, alias or `@alias` reference under it."""
    head = resource.split("/", 2)
    if len(head) < 2 or head[0] != "models":
        raise invalid(field, f"expected a resource under 'models/{{model}}', got {resource[:100]!r}")
    return check_model_id(head[1].partition("@")[0], field)
