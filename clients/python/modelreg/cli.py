"""`modelreg`: command-line client of the model registry.

Examples:
  modelreg models create fraud --owner-team risk --label tier=1
  modelreg versions create fraud --run-id run-42 --metric auc=0.93 --digest sha256:<64 hex>
  modelreg versions list fraud --filter 'metrics.auc >= 0.9' --json
  modelreg versions get fraud/3

Connection: --address (else $MODELREG_ADDRESS, else 127.0.0.1:50051); --token (else $MODELREG_TOKEN,
else the file .modelreg/admin.token in the current directory).

Output is an aligned table (lists) or a field/value listing (single resources); --json prints the
protobuf JSON of the resource, or a JSON array for lists. Errors print one line to stderr:
`error: <CODE> <reason>: <message>`.

Exit codes:
  0   success
  1   any other error
  2   usage error (bad arguments or resource name)
  3   not found
  4   already exists
  5   invalid argument (or out of range)
  6   failed precondition (e.g. deleting a model that has versions without --force)
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC
from typing import Any, TextIO, cast

import grpc
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from modelreg import _core
from modelreg.client import Registry
from modelreg.errors import ModelregError
from modelreg.v1 import model_pb2

__all__ = ["EXIT_CODES", "build_parser", "exit_code_for", "format_fields", "format_table", "main"]

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
    return parser


def _add_list_options(parser: argparse.ArgumentParser, *, filter_fields: str) -> None:
    parser.add_argument("--filter", default="", help=f"AIP-160 filter over {filter_fields}")
    parser.add_argument("--order-by", default="", metavar="FIELDS", help="e.g. 'create_time desc'")
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="stop after N results")


# --- formatting ----------------------------------------------------------------------------------------


def _single_line(text: str) -> str:
    return " ".join(text.split())


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
