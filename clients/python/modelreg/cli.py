"""`modelreg`: command-line client of the model registry.

Examples:
  modelreg models create fraud --owner-team risk --label tier=1
  modelreg versions create fraud --run-id run-42 --metric auc=0.93 --digest sha256:<64 hex>
  modelreg versions list fraud --filter 'metrics.auc >= 0.9' --json
  modelreg versions get fraud/3
  modelreg stage fraud/3 production --archive-existing --comment "beats v2 on auc"
  modelreg aliases set fraud champion 3 --expected 2
  modelreg routes set fraud champion=90 canary=10
  modelreg resolve fraud champion
  modelreg watch fraud --json
  modelreg push ./model --model fraud --format onnx --run-id run-42 --metric auc=0.93
  modelreg pull fraud@champion ./serving/model
  modelreg versions compare fraud/2 fraud/3
  modelreg whoami
  modelreg tokens create ci-bot --description deploys --expires-in-hours 72
  modelreg bindings grant ci-bot automation --scope models/fraud
  modelreg audit list --filter 'action = "SetAlias"' --limit 20
  modelreg audit verify

Connection: --address (else $MODELREG_ADDRESS, else 127.0.0.1:50051); --token (else $MODELREG_TOKEN,
else the file .modelreg/admin.token in the current directory).

Output is an aligned table (lists) or a field/value listing (single resources); --json prints the
protobuf JSON of the resource, or a JSON array for lists. push and pull draw a progress bar on stderr
when it is a terminal (not with --quiet); pull --json prints the destination, digest and files.
Errors print one line to stderr: `error: <CODE> <reason>: <message>`.

Exit codes:
  0   success
  1   any other error
  2   usage error (bad arguments or resource name)
  3   not found
  4   already exists
  5   invalid argument (or out of range)
  6   failed precondition (e.g. deleting a model that has versions without --force; `audit verify`
      when the audit hash chain is broken)
  7   conflict (ABORTED: stale etag, lost race) - re-read and retry
  8   permission denied or unauthenticated
  9   unavailable (server or backend unreachable) - retrying later may help
  10  deadline exceeded
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar, cast

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from modelreg import _core, mlflow_import
from modelreg.client import Registry
from modelreg.errors import ModelregError, ResourceExhausted, Unavailable
from modelreg.packages import Manifest
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import model_pb2

__all__ = [
    "EXIT_CODES",
    "ProgressBar",
    "build_parser",
    "exit_code_for",
    "format_fields",
    "format_progress",
    "format_table",
    "main",
    "pull_result",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CODES: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.ALREADY_EXISTS: 4,
    grpc.StatusCode.INVALID_ARGUMENT: 5,
    grpc.StatusCode.OUT_OF_RANGE: 5,
    grpc.StatusCode.FAILED_PRECONDITION: 6,
    grpc.StatusCode.ABORTED: 7,
    grpc.StatusCode.PERMISSION_DENIED: 8,
    grpc.StatusCode.UNAUTHENTICATED: 8,
    grpc.StatusCode.UNAVAILABLE: 9,
    grpc.StatusCode.DEADLINE_EXCEEDED: 10,
}
EXIT_INTERRUPTED = 130

Handler = Callable[[Registry, argparse.Namespace, TextIO], None]


def exit_code_for(err: ModelregError) -> int:
    """The process exit code for a failed call (see the module docstring)."""
    return EXIT_CODES.get(err.code, EXIT_ERROR)


# --- argument parsing ----------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _metric(text: str) -> tuple[str, float]:
    key, value = _key_value(text)
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"metric {key!r}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"metric {key!r}: must be a finite number")
    return key, number


def _positive_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return number


def _positive_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return number


def _stage(text: str) -> model_pb2.Stage.ValueType:
    try:
        return _core.stage_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _route(text: str) -> tuple[str, int]:
    target, weight = _key_value(text)
    try:
        number = int(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"route {target!r}: weight {weight!r} is not an integer") from None
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"route {target!r}: weight must be between 0 and 100")
    return target, number


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time, got {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add Z or +HH:MM")
    return value


def _non_negative_int(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a revision number, got {text!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative revision, got {text!r}")
    return number


def _add_global_options(parser: argparse.ArgumentParser, *, on_subcommand: bool) -> None:
    # The options are accepted before and after the subcommand. On subcommands they default to SUPPRESS so
    # that an option given before the subcommand is not overwritten by the subcommand's default.
    def default(value: object) -> object:
        return argparse.SUPPRESS if on_subcommand else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--address",
        default=default(None),
        metavar="HOST:PORT",
        help=f"registry address (default: ${_core.ADDRESS_ENV} or {_core.DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--token",
        default=default(None),
        help=f"bearer token (default: ${_core.TOKEN_ENV} or {_core.TOKEN_FILE})",
    )
    group.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(_core.DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"deadline per call (default: {_core.DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="print protobuf JSON instead of tables"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `modelreg` command."""
    parser = argparse.ArgumentParser(
        prog="modelreg",
        description="Command-line client of the modelreg model registry.",
        epilog=(__doc__ or "").partition("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, on_subcommand=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, on_subcommand=True)

    resources = parser.add_subparsers(dest="resource", metavar="RESOURCE", required=True)

    models = resources.add_parser("models", help="registered models").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = models.add_parser("list", parents=[common], help="list models")
    _add_list_options(cmd, filter_fields="name, description, owner_team, labels.KEY, create_time, ...")
    cmd.set_defaults(handler=_models_list)

    cmd = models.add_parser("get", parents=[common], help="show a model")
    cmd.add_argument("name", metavar="NAME", help="model id or models/ID")
    cmd.set_defaults(handler=_models_get)

    cmd = models.add_parser("create", parents=[common], help="create a model")
    cmd.add_argument("model_id", metavar="ID", help="new model id: lowercase letters, digits, -, _, .")
    cmd.add_argument("--description", default="")
    cmd.add_argument(
        "--label", dest="labels", type=_key_value, action="append", default=[], metavar="KEY=VALUE"
    )
    cmd.add_argument("--owner-team", default="", metavar="TEAM")
    cmd.set_defaults(handler=_models_create)

    cmd = models.add_parser("delete", parents=[common], help="delete a model")
    cmd.add_argument("name", metavar="NAME", help="model id or models/ID")
    cmd.add_argument("--force", action="store_true", help="delete its versions too")
    cmd.set_defaults(handler=_models_delete)

    versions = resources.add_parser("versions", help="model versions").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = versions.add_parser("list", parents=[common], help="list the versions of a model")
    cmd.add_argument("model", metavar="MODEL", nargs="?", default="-", help="model id or name; - for all")
    _add_list_options(cmd, filter_fields="version, run_id, stage, labels.KEY, metrics.NAME, create_time, ...")
    cmd.set_defaults(handler=_versions_list)

    cmd = versions.add_parser("get", parents=[common], help="show a version")
    cmd.add_argument("name", metavar="NAME", help="models/MODEL/versions/N or MODEL/N")
    cmd.set_defaults(handler=_versions_get)

    cmd = versions.add_parser("create", parents=[common], help="register a new version")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("--run-id", default="", metavar="RUN")
    cmd.add_argument("--description", default="")
    cmd.add_argument(
        "--metric", dest="metrics", type=_metric, action="append", default=[], metavar="NAME=VALUE"
    )
    cmd.add_argument(
        "--label", dest="labels", type=_key_value, action="append", default=[], metavar="KEY=VALUE"
    )
    cmd.add_argument("--digest", default="", metavar="sha256:HEX", help="artifact digest")
    cmd.set_defaults(handler=_versions_create)

    from modelreg import cli_admin, cli_governance, cli_integrations  # here: they use this module's helpers

    cli_admin.add_compare_command(versions, common)
    _add_lifecycle_commands(resources, common)
    cli_admin.add_admin_commands(resources, common)
    cli_governance.add_governance_commands(resources, common)
    cli_integrations.add_integration_commands(resources, common)
    _add_package_commands(resources, common)

    cmd = resources.add_parser(
        "import-mlflow", parents=[common], help="import models, versions, stages and aliases from MLflow"
    )
    mlflow_import.add_arguments(cmd)
    cmd.set_defaults(handler=mlflow_import.run_command)
    return parser


def _add_package_commands(
    resources: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    cmd = resources.add_parser("push", parents=[common], help="upload a model package as a new version")
    cmd.add_argument("path", metavar="PATH", help="a file, or a directory (every file below it)")
    cmd.add_argument("--model", required=True, metavar="MODEL", help="model id or name (must exist)")
    cmd.add_argument("--format", default="custom", help="onnx, pytorch, sklearn, ... (default: custom)")
    cmd.add_argument("--run-id", default="", metavar="RUN")
    cmd.add_argument("--description", default="")
    cmd.add_argument(
        "--metric", dest="metrics", type=_metric, action="append", default=[], metavar="NAME=VALUE"
    )
    cmd.add_argument(
        "--label", dest="labels", type=_key_value, action="append", default=[], metavar="KEY=VALUE"
    )
    _add_transfer_options(cmd)
    cmd.set_defaults(handler=_push)

    cmd = resources.add_parser("pull", parents=[common], help="download the package of a version")
    cmd.add_argument(
        "ref",
        metavar="REF",
        help="MODEL/N, models/MODEL/versions/N, MODEL@ALIAS or a sha256: manifest digest",
    )
    cmd.add_argument("dest", metavar="DEST", help="directory to write the files into")
    cmd.add_argument("--no-verify", action="store_true", help="skip checking each file's sha256")
    cmd.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="blob cache (default: $MODELREG_CACHE_DIR or ~/.cache)",
    )
    cmd.add_argument("--no-cache", action="store_true", help="neither read nor fill the blob cache")
    _add_transfer_options(cmd)
    cmd.set_defaults(handler=_pull)


def _add_transfer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parallelism", type=_positive_int, default=4, metavar="N", help="files in flight (default: 4)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    route = parser.add_mutually_exclusive_group()
    route.add_argument(
        "--presigned",
        dest="presigned",
        action="store_const",
        const=True,
        default=None,
        help="send every blob straight to/from object storage over presigned URLs (default: blobs of "
        "16 MiB and more, falling back to the registry when object storage cannot be used)",
    )
    route.add_argument(
        "--through-registry",
        dest="presigned",
        action="store_const",
        const=False,
        help="stream every blob through the registry",
    )


def _add_lifecycle_commands(
    resources: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    version_help = "models/MODEL/versions/N, MODEL/N, or MODEL@ALIAS"
    target_help = "version number or name, or @ALIAS (another alias of the model)"

    cmd = resources.add_parser("stage", parents=[common], help="move a version to another stage")
    cmd.add_argument("version", metavar="MODEL_VERSION", help=version_help)
    cmd.add_argument("stage", metavar="STAGE", type=_stage, help="none, staging, production or archived")
    cmd.add_argument("--archive-existing", action="store_true", help="archive the current PRODUCTION version")
    cmd.add_argument("--comment", default="", help="why, kept in the stage history")
    cmd.set_defaults(handler=_stage_transition)

    aliases = resources.add_parser("aliases", help="aliases of a model").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = aliases.add_parser("list", parents=[common], help="list the aliases of a model")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.set_defaults(handler=_aliases_list)

    cmd = aliases.add_parser("set", parents=[common], help="create or move an alias")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("alias", metavar="ALIAS", help="[a-z][a-z0-9-]*")
    cmd.add_argument("version", metavar="VERSION", help=target_help)
    cmd.add_argument(
        "--expected",
        default=None,
        metavar="VERSION",
        help="only if the alias points at this version now; - if it must not exist yet",
    )
    cmd.add_argument("--comment", default="", help="why, kept in the alias history")
    cmd.set_defaults(handler=_aliases_set)

    cmd = aliases.add_parser("delete", parents=[common], help="delete an alias (not the version)")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("alias", metavar="ALIAS")
    cmd.add_argument(
        "--expected", default=None, metavar="VERSION", help="only if the alias points at this version now"
    )
    cmd.set_defaults(handler=_aliases_delete)

    cmd = aliases.add_parser("history", parents=[common], help="moves of one alias or all, newest first")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("alias", metavar="ALIAS", nargs="?", default=None, help="default: every alias")
    cmd.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="stop after N moves")
    cmd.set_defaults(handler=_aliases_history)

    cmd = aliases.add_parser("rollback", parents=[common], help="move an alias back to its previous version")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("alias", metavar="ALIAS")
    cmd.add_argument("--comment", default="", help="why, kept in the alias history")
    cmd.set_defaults(handler=_aliases_rollback)

    cmd = resources.add_parser("resolve", parents=[common], help="the version an alias points at")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("alias", metavar="ALIAS")
    cmd.add_argument(
        "--as-of", type=_aware_datetime, default=None, metavar="TIME", help="e.g. 2026-01-02T03:04:05Z"
    )
    cmd.set_defaults(handler=_resolve)

    routes = resources.add_parser("routes", help="traffic policy of a model").add_subparsers(
        dest="command", metavar="COMMAND", required=True
    )
    cmd = routes.add_parser("get", parents=[common], help="show the traffic policy")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.set_defaults(handler=_routes_get)

    cmd = routes.add_parser("set", parents=[common], help="replace the traffic policy")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument(
        "routes",
        metavar="TARGET=WEIGHT",
        type=_route,
        nargs="+",
        help="an alias or a version (number or name) and its percentage; weights sum to 100",
    )
    cmd.add_argument("--comment", default="", help="why, kept in the change feed")
    cmd.set_defaults(handler=_routes_set)

    cmd = routes.add_parser("resolve", parents=[common], help="the version serving a routing key")
    cmd.add_argument("model", metavar="MODEL", help="model id or name")
    cmd.add_argument("routing_key", metavar="KEY", help="e.g. a user id")
    cmd.set_defaults(handler=_routes_resolve)

    cmd = resources.add_parser(
        "watch", parents=[common], help="print alias, stage and traffic changes as they happen"
    )
    cmd.add_argument("models", metavar="MODEL", nargs="*", help="models to watch (default: all)")
    cmd.add_argument(
        "--since",
        type=_non_negative_int,
        default=0,
        metavar="REVISION",
        help="resume after this revision (default: print the current state first)",
    )
    cmd.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="exit after N changes")
    cmd.set_defaults(handler=_watch)


def _add_list_options(parser: argparse.ArgumentParser, *, filter_fields: str) -> None:
    parser.add_argument("--filter", default="", help=f"AIP-160 filter over {filter_fields}")
    parser.add_argument("--order-by", default="", metavar="FIELDS", help="e.g. 'create_time desc'")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="stop after N results")


# --- formatting ----------------------------------------------------------------------------------------


def _single_line(text: str) -> str:
    return " ".join(text.split())


_Item = TypeVar("_Item")


def collect_pages(fetch: Callable[[str, int], tuple[Sequence[_Item], str]], limit: int | None) -> list[_Item]:
    """Every item of a paged list, or the first `limit`: `fetch(page_token, page_size)` returns a page's
    items and the next page token (empty on the last page)."""
    page_size = 0 if limit is None else min(limit, _core.MAX_PAGE_SIZE)
    items: list[_Item] = []
    page_token = ""
    while True:
        page, page_token = fetch(page_token, page_size)
        items.extend(page)
        if limit is not None and len(items) >= limit:
            return items[:limit]
        if not page_token:
            return items


def numbered_child(text: str, collection: str, parent: Callable[[str], str], what: str, expected: str) -> str:
    """`PARENT/COLLECTION/N` from that name or the shorthand `P/N`, where `parent(P)` gives PARENT's full
    name and `collection` is the segment between slashes (`/deliveries/`). ValueError, naming `what` and
    the `expected` forms, for anything else."""
    if collection in text:
        owner, _, number = text.partition(collection)
    else:
        owner, _, number = text.rpartition("/")
    if not owner or not number.isdigit() or int(number) < 1:
        raise ValueError(f"not a {what}: {text!r} (expected {expected})")
    return f"{parent(owner)}{collection}{int(number)}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, header first; no trailing whitespace."""
    cells = [list(headers), *([_single_line(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def format_fields(pairs: Iterable[tuple[str, str]]) -> str:
    """A `field  value` listing; continuation lines of multi-line values are indented under the value."""
    items = list(pairs)
    width = max((len(key) for key, _ in items), default=0)
    lines: list[str] = []
    for key, value in items:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{key.ljust(width)}  {first}".rstrip())
        lines.extend(f"{'':{width}}  {line}".rstrip() for line in rest)
    return "\n".join(lines)


def format_timestamp(ts: timestamp_pb2.Timestamp) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ`, or empty when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_labels(labels: Mapping[str, str]) -> str:
    """`k=v,k2=v2`, sorted by key."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))


def format_metrics(metrics: Mapping[str, float]) -> str:
    """`auc=0.93 loss=0.12`, sorted by name, 6 significant digits."""
    return " ".join(f"{name}={metrics[name]:.6g}" for name in sorted(metrics))


def stage_label(stage: model_pb2.Stage.ValueType) -> str:
    """`PRODUCTION` for STAGE_PRODUCTION."""
    return model_pb2.Stage.Name(stage).removeprefix("STAGE_")


def models_table(models: Iterable[model_pb2.Model]) -> str:
    """The table printed by `modelreg models list`."""
    return format_table(
        ["NAME", "LATEST", "OWNER", "LABELS", "UPDATED"],
        (
            [
                m.name,
                str(m.latest_version),
                m.owner_team,
                format_labels(m.labels),
                format_timestamp(m.update_time),
            ]
            for m in models
        ),
    )


def versions_table(versions: Iterable[model_pb2.ModelVersion]) -> str:
    """The table printed by `modelreg versions list`."""
    return format_table(
        ["NAME", "STAGE", "RUN", "METRICS", "CREATED"],
        (
            [
                v.name,
                stage_label(v.stage),
                v.run_id,
                format_metrics(v.metrics),
                format_timestamp(v.create_time),
            ]
            for v in versions
        ),
    )


def _version_number(name: str) -> str:
    """`3` for `models/m/versions/3`; `-` for an empty name."""
    return name.rpartition("/")[2] if name else "-"


def aliases_table(aliases: Iterable[lifecycle_pb2.Alias]) -> str:
    """The table printed by `modelreg aliases list`."""
    return format_table(
        ["ALIAS", "VERSION", "REVISION", "UPDATED", "UPDATER"],
        (
            [
                a.name.rpartition("/")[2],
                str(a.version),
                str(a.revision),
                format_timestamp(a.update_time),
                a.updater,
            ]
            for a in aliases
        ),
    )


def alias_history_table(entries: Iterable[lifecycle_pb2.AliasHistoryEntry]) -> str:
    """The table printed by `modelreg aliases history` (`-`: the alias did not exist before/after)."""
    return format_table(
        ["REVISION", "ALIAS", "FROM", "TO", "ACTOR", "TIME", "COMMENT"],
        (
            [
                str(e.revision),
                e.alias.rpartition("/")[2],
                _version_number(e.previous_model_version),
                _version_number(e.model_version),
                e.actor,
                format_timestamp(e.create_time),
                e.comment,
            ]
            for e in entries
        ),
    )


def route_target(route: lifecycle_pb2.TrafficRoute) -> str:
    """`champion` for an alias route, `models/m/versions/3` for a pinned version."""
    return route.alias if route.WhichOneof("target") == "alias" else route.model_version


def routes_table(policy: lifecycle_pb2.TrafficPolicy) -> str:
    """The table printed by `modelreg routes get|set`."""
    return format_table(
        ["TARGET", "KIND", "WEIGHT"],
        ([route_target(r), r.WhichOneof("target") or "", str(r.weight)] for r in policy.routes),
    )


def resolution_fields(resolution: lifecycle_pb2.ResolveAliasResponse) -> list[tuple[str, str]]:
    """`field value` pairs printed by `modelreg resolve`."""
    return [
        ("model_version", resolution.model_version),
        ("version", str(resolution.version)),
        ("artifact_digest", resolution.artifact_digest),
        ("stage", stage_label(resolution.stage)),
        ("revision", str(resolution.revision)),
    ]


def format_change(change: lifecycle_pb2.Change) -> str:
    """One line of `modelreg watch`: revision, change type, subject and what it became."""
    kind = lifecycle_pb2.ChangeType.Name(change.type).removeprefix("CHANGE_TYPE_")
    parts = [str(change.revision), kind]
    resolution = change.resolution
    if change.type == lifecycle_pb2.CHANGE_TYPE_ALIAS_SET:
        parts += [change.alias, resolution.model_version, stage_label(resolution.stage)]
        parts += [resolution.artifact_digest] if resolution.artifact_digest else []
    elif change.type == lifecycle_pb2.CHANGE_TYPE_ALIAS_DELETED:
        parts.append(change.alias)
    elif change.type == lifecycle_pb2.CHANGE_TYPE_STAGE_CHANGED:
        moved = stage_label(resolution.stage)
        if change.previous_stage != model_pb2.STAGE_UNSPECIFIED:
            moved = f"{stage_label(change.previous_stage)} -> {moved}"
        parts += [resolution.model_version, moved]
    elif change.type == lifecycle_pb2.CHANGE_TYPE_TRAFFIC_CHANGED:
        routes = change.traffic_policy.routes
        parts += [change.model, " ".join(f"{route_target(r)}={r.weight}" for r in routes) or "removed"]
    else:
        parts.append(change.model)
    return "  ".join(parts)


def message_fields(message: Message) -> list[tuple[str, str]]:
    """Flatten a message into `(dotted.field, value)` pairs in declaration order, for `get` output.

    Every top-level field is listed, empty or not; inside nested messages only the fields that are set.
    """
    return list(_walk(message, "", top=True))


def _walk(message: Message, prefix: str, *, top: bool) -> Iterator[tuple[str, str]]:
    descriptor = cast(Descriptor, message.DESCRIPTOR)  # the stubs type it as python-or-upb
    for field in descriptor.fields:
        key = prefix + field.name
        value: Any = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for map_key in sorted(value):
                yield from _field_value(f"{key}.{map_key}", value_field, value[map_key])
            if not value and top:
                yield key, ""
        elif field.is_repeated:
            if field.message_type is not None:
                for index, item in enumerate(value):
                    yield from _walk(item, f"{key}[{index}].", top=False)
            elif value:
                yield key, ", ".join(_scalar_text(field, item) for item in value)
            if not value and top:
                yield key, ""
        elif field.message_type is not None and not message.HasField(field.name):
            if top:
                yield key, ""
        elif top or field.message_type is not None or value != field.default_value:
            yield from _field_value(key, field, value)


def _field_value(key: str, field: FieldDescriptor, value: Any) -> Iterator[tuple[str, str]]:
    if field.message_type is None:
        yield key, _scalar_text(field, value)
    elif field.message_type.file.package == "google.protobuf":
        # Well-known types (Timestamp, Duration, ...) read best in their JSON form.
        yield key, _wkt_text(value)
    else:
        yield from _walk(value, key + ".", top=False)


def _wkt_text(value: Message) -> str:
    rendered = json.loads(json_format.MessageToJson(value, indent=None))
    return rendered if isinstance(rendered, str) else json.dumps(rendered)


def _scalar_text(field: FieldDescriptor, value: Any) -> str:
    if field.enum_type is not None:
        number = field.enum_type.values_by_number.get(value)
        return number.name if number is not None else str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _message_json(message: Message) -> str:
    return json_format.MessageToJson(message, indent=2, always_print_fields_with_no_presence=True)


def _list_json(messages: Iterable[Message]) -> str:
    items = [json_format.MessageToDict(m, always_print_fields_with_no_presence=True) for m in messages]
    return json.dumps(items, indent=2)


def _print_one(message: Message, args: argparse.Namespace, out: TextIO) -> None:
    print(_message_json(message) if args.json else format_fields(message_fields(message)), file=out)


def _limited(items: Iterator[Any], limit: int | None) -> Iterator[Any]:
    return items if limit is None else itertools.islice(items, limit)


def _page_size(limit: int | None) -> int:
    return 0 if limit is None else min(limit, _core.MAX_PAGE_SIZE)


# --- commands ------------------------------------------------------------------------------------------


def _models_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    models = _limited(
        registry.list_models(filter=args.filter, order_by=args.order_by, page_size=_page_size(args.limit)),
        args.limit,
    )
    print(_list_json(models) if args.json else models_table(models), file=out)


def _models_get(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    _print_one(registry.get_model(args.name), args, out)


def _models_create(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    model = registry.create_model(
        args.model_id, description=args.description, labels=dict(args.labels), owner_team=args.owner_team
    )
    _print_one(model, args, out)


def _models_delete(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    name = _core.model_name(args.name)
    registry.delete_model(name, force=args.force)
    print("{}" if args.json else f"deleted {name}", file=out)


def _versions_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    versions = _limited(
        registry.list_model_versions(
            args.model, filter=args.filter, order_by=args.order_by, page_size=_page_size(args.limit)
        ),
        args.limit,
    )
    print(_list_json(versions) if args.json else versions_table(versions), file=out)


def _versions_get(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    _print_one(registry.get_model_version(args.name), args, out)


def _versions_create(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    version = registry.create_model_version(
        args.model,
        run_id=args.run_id,
        description=args.description,
        labels=dict(args.labels),
        metrics=dict(args.metrics),
        artifact_digest=args.digest,
    )
    _print_one(version, args, out)


def _stage_transition(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    version = registry.transition_stage(
        args.version, args.stage, archive_existing=args.archive_existing, comment=args.comment
    )
    _print_one(version, args, out)


def _aliases_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    aliases = registry.list_aliases(args.model)
    print(_list_json(aliases) if args.json else aliases_table(aliases), file=out)


def _aliases_set(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    alias = registry.set_alias(
        args.model, args.alias, args.version, expected=args.expected, comment=args.comment
    )
    _print_one(alias, args, out)


def _aliases_delete(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    name = _core.alias_name(args.model, args.alias)
    registry.delete_alias(args.model, args.alias, expected=args.expected)
    print("{}" if args.json else f"deleted {name}", file=out)


def _aliases_history(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    entries = _limited(
        registry.list_alias_history(args.model, args.alias, page_size=_page_size(args.limit)), args.limit
    )
    print(_list_json(entries) if args.json else alias_history_table(entries), file=out)


def _aliases_rollback(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    _print_one(registry.rollback_alias(args.model, args.alias, comment=args.comment), args, out)


def _resolve(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    resolution = registry.resolve_alias(args.model, args.alias, as_of=args.as_of)
    print(_message_json(resolution) if args.json else format_fields(resolution_fields(resolution)), file=out)


def _print_policy(
    policy: lifecycle_pb2.TrafficPolicy, model: str, args: argparse.Namespace, out: TextIO
) -> None:
    if args.json:
        print(_message_json(policy), file=out)
    elif not policy.routes:
        print(f"{_core.model_name(model)} has no traffic policy", file=out)
    else:
        print(routes_table(policy), file=out)


def _routes_get(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    _print_policy(registry.get_traffic_policy(args.model), args.model, args, out)


def _routes_set(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    policy = registry.set_traffic_policy(args.model, list(args.routes), comment=args.comment)
    _print_policy(policy, args.model, args, out)


def _routes_resolve(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    answer = registry.resolve_route(args.model, args.routing_key)
    if args.json:
        print(_message_json(answer), file=out)
    else:
        fields = [*resolution_fields(answer.resolution), ("route", route_target(answer.route))]
        print(format_fields(fields), file=out)


_PROGRESS_DELAY = 0.5
_PROGRESS_INTERVAL = 0.1
_PROGRESS_WIDTH = 24
_MiB = 1024 * 1024


def format_progress(label: str, done: int, total: int, elapsed: float) -> str:
    """One progress line: `push [#######.........]  42.0%  107.5/256.0 MiB  35.1 MiB/s`."""
    fraction = min(1.0, done / total) if total else 1.0
    filled = round(fraction * _PROGRESS_WIDTH)
    bar = "#" * filled + "." * (_PROGRESS_WIDTH - filled)
    rate = done / elapsed / _MiB if elapsed > 0 else 0.0
    return (
        f"{label} [{bar}] {100 * fraction:5.1f}%  {done / _MiB:.1f}/{total / _MiB:.1f} MiB  {rate:.1f} MiB/s"
    )


class ProgressBar:
    """A transfer progress line redrawn in place on a terminal, at most ten times a second.

    It appears only once a transfer has run for half a second, so quick ones print nothing. Use it as the
    SDK's `progress` callback and call :meth:`close` at the end.
    """

    def __init__(self, label: str, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._label = label
        self._stream = stream
        self._clock = clock
        self._start = clock()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        finished = done >= total
        if now - self._start < _PROGRESS_DELAY and not self._drawn:
            return
        if not finished and now - self._last_draw < _PROGRESS_INTERVAL:
            return
        self._last_draw = now
        self._stream.write("\r" + format_progress(self._label, done, total, now - self._start))
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the line, if one was drawn."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def _progress_bar(args: argparse.Namespace, label: str) -> ProgressBar | None:
    if args.quiet or not sys.stderr.isatty():
        return None
    return ProgressBar(label, sys.stderr)


def pull_result(dest: str, manifest: Manifest) -> dict[str, Any]:
    """What `modelreg pull --json` prints: destination, manifest digest, format and files."""
    return {
        "destination": dest,
        "artifact_digest": manifest.digest,
        "format": manifest.format,
        "total_size": manifest.total_size,
        "files": [
            {"path": f.path, "digest": f.digest, "size": f.size, "mode": f.mode} for f in manifest.files
        ],
    }


def _push(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    bar = _progress_bar(args, "push")
    try:
        version = registry.upload_model(
            args.model,
            args.path,
            format=args.format,
            progress=bar,
            parallelism=args.parallelism,
            use_presigned_urls=args.presigned,
            run_id=args.run_id,
            description=args.description,
            labels=dict(args.labels),
            metrics=dict(args.metrics),
        )
    finally:
        if bar is not None:
            bar.close()
    _print_one(version, args, out)


def _pull(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    use_cache = not args.no_cache
    # Resolve the reference once, so an alias that moves meanwhile cannot mix two versions' files.
    manifest = registry.get_manifest(args.ref, cache_dir=args.cache_dir, use_cache=use_cache)
    bar = _progress_bar(args, "pull")
    try:
        dest = registry.download_model(
            manifest.digest,
            args.dest,
            verify=not args.no_verify,
            cache_dir=args.cache_dir,
            use_cache=use_cache,
            progress=bar,
            parallelism=args.parallelism,
            use_presigned_urls=args.presigned,
        )
    finally:
        if bar is not None:
            bar.close()
    result = pull_result(str(dest), manifest)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
    else:
        fields = [
            (key, str(result[key])) for key in ("destination", "artifact_digest", "format", "total_size")
        ]
        print(format_fields([*fields, ("files", str(len(manifest.files)))]), file=out)


_WATCH_RESUME_DELAY = 1.0


def _watch(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    since: int = args.since
    printed = 0
    while True:
        received = False
        try:
            with registry.watch_aliases(args.models, since_revision=since) as stream:
                for message in stream:
                    received = True
                    for change in message.changes:
                        if args.json:
                            line = json.dumps(json_format.MessageToDict(change), separators=(",", ":"))
                        else:
                            line = format_change(change)
                        print(line, file=out, flush=True)
                        printed += 1
                        if args.limit is not None and printed >= args.limit:
                            return
                    # A snapshot counts as seen only once its closing heartbeat has arrived.
                    if not message.snapshot:
                        since = max(since, message.revision)
        except (Unavailable, ResourceExhausted):
            # A stream that worked and then broke (replica restart, watcher too slow) resumes where it was;
            # one that never delivered anything reports the error.
            if not received:
                raise
        time.sleep(_WATCH_RESUME_DELAY)


# --- entry point ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: `sys.argv[1:]`) and return the exit code instead of exiting."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        with Registry(args.address, token=args.token, timeout=args.timeout) as registry:
            handler(registry, args, sys.stdout)
    except ModelregError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code_for(err)
    except ValueError as err:  # a malformed resource name, rejected before any call
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # e.g. an unreadable token file
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
