"""modelreg.v1.WebhookService: webhook subscriptions, their delivery log, redelivery and replay."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from modelreg.v1 import webhook_service_pb2 as pb
from modelreg.v1 import webhook_service_pb2_grpc as pb_grpc
from modelreg_server.api import validation as val
from modelreg_server.api.identity import caller
from modelreg_server.api.status import unary
from modelreg_server.api.webhook_convert import delivery_to_proto, webhook_to_proto
from modelreg_server.domain import errors
from modelreg_server.domain.access import AccessControl
from modelreg_server.domain.names import MODEL_ID_RE, parse_model_name
from modelreg_server.domain.permissions import Permission
from modelreg_server.domain.records import Caller, ChangeType
from modelreg_server.domain.webhooks import Webhooks, WebhookSpec

Context = grpc.aio.ServicerContext[Any, Any]

# Update mask paths; `*` means all of them but the secret, which is only rotated when named.
MUTABLE = ("url", "event_types", "models", "active", "secret")
OUTPUT_ONLY = ("name", "create_time", "update_time", "creator", "enqueued_revision", "etag")


def _webhook_id(name: str, field: str) -> str:
    prefix, _, webhook_id = name.partition("/")
    if prefix != "webhooks" or not MODEL_ID_RE.fullmatch(webhook_id):
        raise errors.invalid(field, f"expected 'webhooks/{{webhook}}', got {name[:100]!r}")
    return webhook_id


def _delivery(name: str) -> tuple[str, int]:
    parts = name.split("/")
    if len(parts) != 4 or parts[2] != "deliveries" or not parts[3].isdigit() or len(parts[3]) > 18:
        raise errors.invalid("name", "expected 'webhooks/{webhook}/deliveries/{revision}'")
    return _webhook_id("/".join(parts[:2]), "name"), int(parts[3])


def _event_types(values: Any, field: str, v: val.Violations) -> tuple[ChangeType, ...]:
    known = {int(t) for t in ChangeType}
    types: list[ChangeType] = []
    for i, value in enumerate(values):
        if value not in known:
            v.add(f"{field}[{i}]", "unknown or unspecified change type")
        elif ChangeType(value) not in types:
            types.append(ChangeType(value))
    return tuple(types)


def _models(names: Any, field: str, v: val.Violations) -> tuple[str, ...]:
    models: list[str] = []
    for i, name in enumerate(names):
        try:
            model_id = parse_model_name(name, f"{field}[{i}]")
        except errors.InvalidArgument as exc:
            v.items.extend(exc.violations)
            continue
        if model_id not in models:
            models.append(model_id)
    return tuple(models)


def _update_paths(request: pb.UpdateWebhookRequest, v: val.Violations) -> list[str]:
    """Resolves the update mask into the fields to write (AIP-134/161)."""
    hook = request.webhook
    if not request.update_mask.paths:
        populated = {fd.name for fd, _ in hook.ListFields()}
        return [f for f in MUTABLE if f in populated]
    paths: list[str] = []
    for i, path in enumerate(request.update_mask.paths):
        if path == "*":
            paths.extend(p for p in MUTABLE if p != "secret" and p not in paths)
        elif path in MUTABLE:
            if path not in paths:
                paths.append(path)
        elif path not in OUTPUT_ONLY:
            v.add(
                f"update_mask.paths[{i}]", f"{path[:60]!r} cannot be updated; updatable: {', '.join(MUTABLE)}"
            )
    return paths


class WebhookServicer(pb_grpc.WebhookServiceServicer):
    """Serves webhook management."""

    def __init__(self, webhooks: Webhooks, access: AccessControl) -> None:
        self._webhooks = webhooks
        self.access = access

    async def _manage(self, context: Context, resource: str) -> Caller:
        who = caller(context)
        await self.access.require(who, Permission.WEBHOOKS_MANAGE, resource)
        return who

    @unary
    async def CreateWebhook(self, request: pb.CreateWebhookRequest, context: Context) -> pb.Webhook:
        webhook_id = _webhook_id(f"webhooks/{request.webhook_id}", "webhook_id")
        who = await self._manage(context, f"webhooks/{webhook_id}")
        hook = request.webhook
        v = val.Violations()
        val.check_strings(request, v)
        val.require("webhook.url", hook.url, v)
        spec = WebhookSpec(
            url=hook.url,
            event_types=_event_types(hook.event_types, "webhook.event_types", v),
            models=_models(hook.models, "webhook.models", v),
            active=hook.active if hook.HasField("active") else True,
        )
        v.check()
        row, secret = await self._webhooks.create(who, webhook_id, spec, hook.secret)
        message = webhook_to_proto(row)
        if not hook.secret:
            message.secret = secret  # generated: this response is the only place it is ever shown
        return message

    @unary
    async def GetWebhook(self, request: pb.GetWebhookRequest, context: Context) -> pb.Webhook:
        webhook_id = _webhook_id(request.name, "name")
        await self._manage(context, request.name)
        return webhook_to_proto(await self._webhooks.get(webhook_id))

    @unary
    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Context
    ) -> pb.ListWebhooksResponse:
        await self._manage(context, "webhooks")
        page = await self._webhooks.list(request.page_size, request.page_token)
        return pb.ListWebhooksResponse(
            webhooks=[webhook_to_proto(h) for h in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def UpdateWebhook(self, request: pb.UpdateWebhookRequest, context: Context) -> pb.Webhook:
        hook = request.webhook
        webhook_id = _webhook_id(hook.name, "webhook.name")
        who = await self._manage(context, hook.name)
        v = val.Violations()
        val.check_strings(request, v)
        paths = _update_paths(request, v)
        changes: dict[str, Any] = {}
        for path in paths:
            if path == "url":
                val.require("webhook.url", hook.url, v)
                changes["url"] = hook.url
            elif path == "event_types":
                changes["event_types"] = _event_types(hook.event_types, "webhook.event_types", v)
            elif path == "models":
                changes["models"] = _models(hook.models, "webhook.models", v)
            elif path == "active":
                changes["active"] = hook.active
            else:
                val.require("webhook.secret", hook.secret, v)
                changes["secret"] = hook.secret
        v.check()
        return webhook_to_proto(await self._webhooks.update(who, webhook_id, changes, hook.etag))

    @unary
    async def DeleteWebhook(self, request: pb.DeleteWebhookRequest, context: Context) -> empty_pb2.Empty:
        webhook_id = _webhook_id(request.name, "name")
        who = await self._manage(context, request.name)
        await self._webhooks.delete(who, webhook_id, request.etag)
        return empty_pb2.Empty()

    @unary
    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Context
    ) -> pb.ListWebhookDeliveriesResponse:
        webhook_id = _webhook_id(request.parent, "parent")
        await self._manage(context, request.parent)
        page = await self._webhooks.list_deliveries(
            webhook_id, request.filter, request.page_size, request.page_token
        )
        return pb.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in page.items], next_page_token=page.next_page_token
        )

    @unary
    async def RedeliverWebhook(
        self, request: pb.RedeliverWebhookRequest, context: Context
    ) -> pb.WebhookDelivery:
        webhook_id, revision = _delivery(request.name)
        who = await self._manage(context, request.name)
        return delivery_to_proto(await self._webhooks.redeliver(who, webhook_id, revision))

    @unary
    async def ReplayWebhook(
        self, request: pb.ReplayWebhookRequest, context: Context
    ) -> pb.ReplayWebhookResponse:
        webhook_id = _webhook_id(request.name, "name")
        who = await self._manage(context, request.name)
        count = await self._webhooks.replay(who, webhook_id, request.from_revision)
        return pb.ReplayWebhookResponse(requeued_count=count)
