"""Webhook, signing-key and signature commands of the `modelreg` CLI (see :mod:`modelreg.cli`).

The WebhookService and SigningService have no methods on :class:`modelreg.client.Registry`; these commands
call the generated stubs on the Registry's channel and go through `Registry._call`, so errors map to the
same exit codes as every other command (e.g. a webhook URL the server's SSRF guard refuses is exit 5,
`INVALID_ARGUMENT WEBHOOK_URL_REJECTED`, with the reason in the message).

`modelreg webhooks create` prints the webhook's signing secret, which the server generates and returns in
that response only. `modelreg signing-keys register` reads a PEM public key from a file and refuses,
before any call, a file that holds a private key.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO, TypeAlias, TypeVar

from modelreg import _core
from modelreg.cli import (
    _list_json,
    _message_json,
    _positive_int,
    _print_one,
    collect_pages,
    format_fields,
    format_table,
    format_timestamp,
    numbered_child,
)
from modelreg.client import Registry
from modelreg.v1 import lifecycle_service_pb2 as lifecycle_pb2
from modelreg.v1 import signing_service_pb2 as signing_pb2
from modelreg.v1 import signing_service_pb2_grpc as signing_grpc
from modelreg.v1 import webhook_service_pb2 as webhook_pb2
from modelreg.v1 import webhook_service_pb2_grpc as webhook_grpc

__all__ = [
    "DELIVERY_STATES",
    "EVENT_TYPES",
    "add_integration_commands",
    "deliveries_table",
    "delivery_filter",
    "delivery_name",
    "event_type",
    "signatures_table",
    "signing_key_name",
    "signing_keys_table",
    "webhook_name",
    "webhooks_table",
]

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
T = TypeVar("T")

_CHANGE_PREFIX = "CHANGE_TYPE_"
EVENT_TYPES: dict[str, lifecycle_pb2.ChangeType.ValueType] = {
    name.removeprefix(_CHANGE_PREFIX).lower(): value
    for name, value in lifecycle_pb2.ChangeType.items()
    if value != lifecycle_pb2.CHANGE_TYPE_UNSPECIFIED
}
DELIVERY_STATES: dict[str, webhook_pb2.WebhookDeliveryState.ValueType] = {
    "pending": webhook_pb2.WEBHOOK_DELIVERY_STATE_PENDING,
    "delivered": webhook_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED,
    "failed": webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED,
}

_WEBHOOKS = "webhooks/"
_DELIVERIES = "/deliveries/"
_SIGNING_KEYS = "signingKeys/"


# --- resource names ------------------------------------------------------------------------------------


def _resource_id(text: str, prefix: str, what: str, expected: str) -> str:
    resource_id = text.removeprefix(prefix)
    if not resource_id or "/" in resource_id or any(c.isspace() for c in resource_id):
        raise ValueError(f"not a {what}: {text!r} (expected {expected})")
    return prefix + resource_id


def webhook_name(text: str) -> str:
    """`webhooks/ID` from that name or the id alone."""
    return _resource_id(text, _WEBHOOKS, "webhook name", "webhooks/ID or ID")


def delivery_name(text: str) -> str:
    """`webhooks/ID/deliveries/REVISION` from that name or the shorthand `ID/REVISION`."""
    return numbered_child(
        text,
        _DELIVERIES,
        webhook_name,
        "webhook delivery name",
        "webhooks/ID/deliveries/REVISION or ID/REVISION",
    )


def signing_key_name(text: str) -> str:
    """`signingKeys/ID` from that name or the key id alone."""
    return _resource_id(text, _SIGNING_KEYS, "signing key name", "signingKeys/ID or ID")


def event_type(text: str) -> lifecycle_pb2.ChangeType.ValueType:
    """A change type from `alias_set`, `alias-set`, `ALIAS_SET` or `CHANGE_TYPE_ALIAS_SET`."""
    key = text.strip().upper().replace("-", "_").removeprefix(_CHANGE_PREFIX).lower()
    if key not in EVENT_TYPES:
        raise argparse.ArgumentTypeError(f"unknown event type {text!r}: use {', '.join(EVENT_TYPES)}")
    return EVENT_TYPES[key]


def _model_arg(text: str) -> str:
    try:
        return _core.model_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def delivery_filter(state: str | None, filter_text: str) -> str:
    """The AIP-160 filter of `webhooks deliveries`: `--filter`, ANDed with `state = STATE` when given."""
    if state is None:
        return filter_text
    if state not in DELIVERY_STATES:
        raise ValueError(f"unknown delivery state {state!r}: use {', '.join(DELIVERY_STATES)}")
    clause = f"state = {state.upper()}"
    return f"({filter_text}) AND {clause}" if filter_text.strip() else clause


def _webhooks(registry: Registry) -> webhook_grpc.WebhookServiceStub:
    return webhook_grpc.WebhookServiceStub(registry._channel)


def _signing(registry: Registry) -> signing_grpc.SigningServiceStub:
    return signing_grpc.SigningServiceStub(registry._channel)


# --- parsing -------------------------------------------------------------------------------------------


def _add_limit(cmd: argparse.ArgumentParser, what: str) -> None:
    cmd.add_argument("--limit", type=_positive_int, default=None, metavar="N", help=f"stop after N {what}")


def add_integration_commands(resources: SubParsers, common: argparse.ArgumentParser) -> None:
    """Add `webhooks`, `signing-keys` and `signatures` to the `modelreg` parser."""
    webhook_help = "webhooks/ID or ID"
    webhooks = resources.add_parser("webhooks", help="webhooks: registry changes POSTed to receivers")
    commands = webhooks.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd = commands.add_parser("create", parents=[common], help="create a webhook; the secret is printed once")
    cmd.add_argument("webhook_id", metavar="ID", help="new webhook id ([a-z][a-z0-9._-]*, at most 63)")
    cmd.add_argument("--url", required=True, help="http(s) URL the events are POSTed to")
    cmd.add_argument(
        "--event",
        dest="events",
        type=event_type,
        action="append",
        default=[],
        metavar="TYPE",
        help=f"only this change type (repeatable; default: all): {' | '.join(EVENT_TYPES)}",
    )
    cmd.add_argument(
        "--model",
        dest="models",
        type=_model_arg,
        action="append",
        default=[],
        metavar="MODEL",
        help="only changes of this model (repeatable; default: all models)",
    )
    cmd.add_argument(
        "--paused", action="store_true", help="create it inactive (no events sent until resumed)"
    )
    cmd.set_defaults(handler=_webhooks_create)

    cmd = commands.add_parser("list", parents=[common], help="list webhooks")
    _add_limit(cmd, "webhooks")
    cmd.set_defaults(handler=_webhooks_list)

    cmd = commands.add_parser("show", parents=[common], help="show a webhook (without its secret)")
    cmd.add_argument("name", metavar="NAME", help=webhook_help)
    cmd.set_defaults(handler=_webhooks_show)

    cmd = commands.add_parser("delete", parents=[common], help="delete a webhook and its delivery log")
    cmd.add_argument("name", metavar="NAME", help=webhook_help)
    cmd.add_argument("--etag", default="", help="delete only while the webhook still has this etag")
    cmd.set_defaults(handler=_webhooks_delete)

    cmd = commands.add_parser(
        "deliveries", parents=[common], help="list a webhook's deliveries, newest first"
    )
    cmd.add_argument("name", metavar="NAME", help=webhook_help)
    cmd.add_argument("--state", choices=list(DELIVERY_STATES), default=None, help=" | ".join(DELIVERY_STATES))
    cmd.add_argument(
        "--filter", default="", help="AIP-160 filter over state, event_type, revision, create_time"
    )
    _add_limit(cmd, "deliveries")
    cmd.set_defaults(handler=_webhooks_deliveries)

    cmd = commands.add_parser(
        "redeliver", parents=[common], help="send a delivery again (PENDING, fresh attempt budget)"
    )
    cmd.add_argument("delivery", metavar="DELIVERY", help="webhooks/ID/deliveries/REVISION or ID/REVISION")
    cmd.set_defaults(handler=_webhooks_redeliver)

    cmd = commands.add_parser(
        "replay", parents=[common], help="enqueue again every matching event after a revision"
    )
    cmd.add_argument("name", metavar="NAME", help=webhook_help)
    cmd.add_argument(
        "--from-revision", type=int, required=True, metavar="REV", help="replay events after this revision"
    )
    cmd.set_defaults(handler=_webhooks_replay)

    key_help = "signingKeys/ID or ID"
    keys = resources.add_parser("signing-keys", help="public keys trusted to sign model packages")
    commands = keys.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd = commands.add_parser("register", parents=[common], help="register a trusted public key")
    cmd.add_argument(
        "key_id", metavar="KEY_ID", help="new key id ([a-z][a-z0-9-]*, at most 63; never reused)"
    )
    cmd.add_argument(
        "--public-key",
        type=Path,
        required=True,
        metavar="PEM_FILE",
        help="ECDSA P-256/384/521 public key, PEM (-----BEGIN PUBLIC KEY-----)",
    )
    cmd.add_argument("--description", default="", help="what the key signs and who holds it")
    cmd.set_defaults(handler=_keys_register)

    cmd = commands.add_parser("list", parents=[common], help="list signing keys, revoked ones included")
    _add_limit(cmd, "keys")
    cmd.set_defaults(handler=_keys_list)

    cmd = commands.add_parser("show", parents=[common], help="show a signing key")
    cmd.add_argument("key", metavar="KEY_ID", help=key_help)
    cmd.set_defaults(handler=_keys_show)

    cmd = commands.add_parser(
        "revoke", parents=[common], help="revoke a key (final); its signatures become unverified"
    )
    cmd.add_argument("key", metavar="KEY_ID", help=key_help)
    cmd.add_argument("--reason", default="", help="why")
    cmd.set_defaults(handler=_keys_revoke)

    signatures = resources.add_parser("signatures", help="signatures attached to versions")
    commands = signatures.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd = commands.add_parser("list", parents=[common], help="list the signatures of a version")
    cmd.add_argument("version", metavar="VERSION", help="models/MODEL/versions/N or MODEL/N")
    _add_limit(cmd, "signatures")
    cmd.set_defaults(handler=_signatures_list)


# --- formatting ----------------------------------------------------------------------------------------


def _event_label(value: lifecycle_pb2.ChangeType.ValueType) -> str:
    return lifecycle_pb2.ChangeType.Name(value).removeprefix(_CHANGE_PREFIX)


def _delivery_state(state: webhook_pb2.WebhookDeliveryState.ValueType) -> str:
    return webhook_pb2.WebhookDeliveryState.Name(state).removeprefix("WEBHOOK_DELIVERY_STATE_")


def _active(webhook: webhook_pb2.Webhook) -> bool:
    return webhook.active if webhook.HasField("active") else True


def webhooks_table(webhooks: Sequence[webhook_pb2.Webhook]) -> str:
    """The table printed by `modelreg webhooks list`; `*` stands for all events or all models."""
    return format_table(
        ["NAME", "URL", "EVENTS", "MODELS", "ACTIVE", "CREATED"],
        (
            [
                w.name,
                w.url,
                ",".join(_event_label(e) for e in w.event_types) or "*",
                ",".join(m.removeprefix("models/") for m in w.models) or "*",
                "true" if _active(w) else "false",
                format_timestamp(w.create_time),
            ]
            for w in webhooks
        ),
    )


def deliveries_table(deliveries: Sequence[webhook_pb2.WebhookDelivery]) -> str:
    """The table printed by `modelreg webhooks deliveries`; STATUS is the last HTTP status, `-` if none."""
    return format_table(
        ["NAME", "EVENT", "MODEL", "STATE", "ATTEMPTS", "STATUS", "LAST_ATTEMPT", "ERROR"],
        (
            [
                d.name,
                _event_label(d.event_type),
                d.model.removeprefix("models/") or "-",
                _delivery_state(d.state),
                str(d.attempt_count),
                str(d.last_status_code) if d.last_status_code else "-",
                format_timestamp(d.last_attempt_time) or "-",
                d.last_error,
            ]
            for d in deliveries
        ),
    )


def signing_keys_table(keys: Sequence[signing_pb2.SigningKey]) -> str:
    """The table printed by `modelreg signing-keys list` (fingerprints shortened to 16 hex digits)."""
    return format_table(
        ["KEY", "ALGORITHM", "FINGERPRINT", "STATE", "CREATED", "DESCRIPTION"],
        (
            [
                k.name.removeprefix(_SIGNING_KEYS),
                k.algorithm,
                k.fingerprint[:16],
                "revoked" if k.HasField("revoke_time") else "trusted",
                format_timestamp(k.create_time),
                k.description,
            ]
            for k in keys
        ),
    )


def signatures_table(signatures: Sequence[signing_pb2.Signature]) -> str:
    """The table printed by `modelreg signatures list` (without the bundles; --json has them)."""
    return format_table(
        ["KEY", "VERIFIED", "VERIFY_TIME", "CREATED", "CREATOR", "MESSAGE"],
        (
            [
                s.key_id,
                "true" if s.verified else "false",
                format_timestamp(s.verify_time) or "-",
                format_timestamp(s.create_time),
                s.creator.removeprefix("principals/"),
                s.verify_message,
            ]
            for s in signatures
        ),
    )


def _created_webhook_text(webhook: webhook_pb2.Webhook) -> str:
    return format_fields(
        [
            ("name", webhook.name),
            ("url", webhook.url),
            ("events", ", ".join(_event_label(e) for e in webhook.event_types) or "all"),
            ("models", ", ".join(webhook.models) or "all"),
            ("active", "true" if _active(webhook) else "false"),
            ("secret", webhook.secret),
        ]
    )


# --- webhook commands ----------------------------------------------------------------------------------


def _webhooks_create(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    webhook = webhook_pb2.Webhook(url=args.url, event_types=args.events, models=args.models)
    if args.paused:
        webhook.active = False
    request = webhook_pb2.CreateWebhookRequest(webhook_id=args.webhook_id, webhook=webhook)
    created = registry._call(_webhooks(registry).CreateWebhook, request)
    if args.json:
        print(_message_json(created), file=out)
        return
    print(_created_webhook_text(created), file=out)
    if created.secret:
        print(
            "\nThe secret is shown only once; store it now. Receivers check X-Modelreg-Signature with it.",
            file=out,
        )


def _webhooks_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    stub = _webhooks(registry)

    def fetch(page_token: str, page_size: int) -> tuple[Sequence[webhook_pb2.Webhook], str]:
        request = webhook_pb2.ListWebhooksRequest(page_size=page_size, page_token=page_token)
        response = registry._call(stub.ListWebhooks, request)
        return response.webhooks, response.next_page_token

    webhooks = collect_pages(fetch, args.limit)
    print(_list_json(webhooks) if args.json else webhooks_table(webhooks), file=out)


def _webhooks_show(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = webhook_pb2.GetWebhookRequest(name=webhook_name(args.name))
    _print_one(registry._call(_webhooks(registry).GetWebhook, request), args, out)


def _webhooks_delete(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    name = webhook_name(args.name)
    registry._call(
        _webhooks(registry).DeleteWebhook, webhook_pb2.DeleteWebhookRequest(name=name, etag=args.etag)
    )
    print(f"deleted {name}", file=out)


def _webhooks_deliveries(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    stub = _webhooks(registry)
    parent = webhook_name(args.name)
    filter_text = delivery_filter(args.state, args.filter)

    def fetch(page_token: str, page_size: int) -> tuple[Sequence[webhook_pb2.WebhookDelivery], str]:
        request = webhook_pb2.ListWebhookDeliveriesRequest(
            parent=parent, filter=filter_text, page_size=page_size, page_token=page_token
        )
        response = registry._call(stub.ListWebhookDeliveries, request)
        return response.deliveries, response.next_page_token

    deliveries = collect_pages(fetch, args.limit)
    print(_list_json(deliveries) if args.json else deliveries_table(deliveries), file=out)


def _webhooks_redeliver(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = webhook_pb2.RedeliverWebhookRequest(name=delivery_name(args.delivery))
    _print_one(registry._call(_webhooks(registry).RedeliverWebhook, request), args, out)


def _webhooks_replay(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    name = webhook_name(args.name)
    request = webhook_pb2.ReplayWebhookRequest(name=name, from_revision=args.from_revision)
    response = registry._call(_webhooks(registry).ReplayWebhook, request)
    if args.json:
        print(_message_json(response), file=out)
    else:
        print(f"requeued {response.requeued_count} deliveries of {name}", file=out)


# --- signing-key and signature commands ----------------------------------------------------------------


def _read_public_key(path: Path) -> str:
    pem = path.read_text(encoding="utf-8")
    if "PRIVATE KEY" in pem:
        raise ValueError(f"{path} holds a private key: register the public key (-----BEGIN PUBLIC KEY-----)")
    return pem


def _keys_register(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    key = signing_pb2.SigningKey(
        public_key_pem=_read_public_key(args.public_key), description=args.description
    )
    request = signing_pb2.RegisterSigningKeyRequest(signing_key_id=args.key_id, signing_key=key)
    _print_one(registry._call(_signing(registry).RegisterSigningKey, request), args, out)


def _keys_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    stub = _signing(registry)

    def fetch(page_token: str, page_size: int) -> tuple[Sequence[signing_pb2.SigningKey], str]:
        request = signing_pb2.ListSigningKeysRequest(page_size=page_size, page_token=page_token)
        response = registry._call(stub.ListSigningKeys, request)
        return response.signing_keys, response.next_page_token

    keys = collect_pages(fetch, args.limit)
    print(_list_json(keys) if args.json else signing_keys_table(keys), file=out)


def _keys_show(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = signing_pb2.GetSigningKeyRequest(name=signing_key_name(args.key))
    _print_one(registry._call(_signing(registry).GetSigningKey, request), args, out)


def _keys_revoke(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    request = signing_pb2.RevokeSigningKeyRequest(name=signing_key_name(args.key), reason=args.reason)
    _print_one(registry._call(_signing(registry).RevokeSigningKey, request), args, out)


def _signatures_list(registry: Registry, args: argparse.Namespace, out: TextIO) -> None:
    stub = _signing(registry)
    parent = _core.model_version_name(args.version)

    def fetch(page_token: str, page_size: int) -> tuple[Sequence[signing_pb2.Signature], str]:
        request = signing_pb2.ListSignaturesRequest(parent=parent, page_size=page_size, page_token=page_token)
        response = registry._call(stub.ListSignatures, request)
        return response.signatures, response.next_page_token

    signatures = collect_pages(fetch, args.limit)
    print(_list_json(signatures) if args.json else signatures_table(signatures), file=out)
