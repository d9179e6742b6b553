"""Protobuf forms of webhooks and deliveries, and the JSON body of webhook requests."""

from __future__ import annotations

from google.protobuf import json_format

from modelreg.v1 import lifecycle_service_pb2 as lc
from modelreg.v1 import webhook_service_pb2 as pb
from modelreg_server.api.convert import timestamp
from modelreg_server.api.lifecycle_convert import change_to_proto
from modelreg_server.domain.names import model_name
from modelreg_server.domain.records import Change
from modelreg_server.domain.webhook_worker import event_id, webhook_name
from modelreg_server.domain.webhooks import delivery_name, webhook_etag
from modelreg_server.storage.webhook_repo import DeliveryRow, DeliveryState, WebhookRow


def webhook_to_proto(hook: WebhookRow) -> pb.Webhook:
    """The wire form of a subscription; never carries the secret."""
    return pb.Webhook(
        name=webhook_name(hook.webhook_id),
        url=hook.url,
        event_types=[lc.ChangeType.ValueType(int(t)) for t in hook.event_types],
        models=[model_name(m) for m in hook.models],
        active=hook.active,
        create_time=timestamp(hook.create_time),
        update_time=timestamp(hook.update_time),
        creator=hook.creator,
        enqueued_revision=hook.enqueued_revision,
        etag=webhook_etag(hook),
    )


def delivery_to_proto(row: DeliveryRow) -> pb.WebhookDelivery:
    """The wire form of a delivery."""
    message = pb.WebhookDelivery(
        name=delivery_name(row.webhook_id, row.revision),
        revision=row.revision,
        event_id=event_id(row.webhook_id, row.revision),
        event_type=lc.ChangeType.ValueType(int(row.change_type)),
        model=model_name(row.model_id),
        state=pb.WebhookDeliveryState.ValueType(int(row.state)),
        attempt_count=row.attempt_count,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        create_time=timestamp(row.create_time),
    )
    if row.state is DeliveryState.PENDING:
        message.next_attempt_time.CopyFrom(timestamp(row.next_attempt_time))
    if row.last_attempt_time is not None:
        message.last_attempt_time.CopyFrom(timestamp(row.last_attempt_time))
    if row.delivered_time is not None:
        message.delivered_time.CopyFrom(timestamp(row.delivered_time))
    return message


def render_event(key: str, webhook: str, change: Change) -> str:
    """The body of a webhook request: a modelreg.v1.WebhookEvent as compact proto3 JSON."""
    event = pb.WebhookEvent(event_id=key, webhook=webhook, change=change_to_proto(change))
    return json_format.MessageToJson(event, indent=None, sort_keys=True)
