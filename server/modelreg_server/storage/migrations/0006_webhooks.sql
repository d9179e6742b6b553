-- Webhooks: subscriptions to the change feed (registry_events, the outbox) and their delivery log.

CREATE TABLE webhook_subscriptions (
    webhook_id        text PRIMARY KEY CHECK (webhook_id ~ '^[a-z][a-z0-9._-]{0,62}$'),
    url               text NOT NULL CHECK (url ~ '^https?://'),
    -- modelreg.v1.ChangeType numbers; empty means every type.
    event_types       smallint[] NOT NULL DEFAULT '{}',
    -- Model ids; empty means every model.
    models            text[] NOT NULL DEFAULT '{}',
    -- The HMAC key must be usable to sign, so it is stored, not hashed (see the README's webhook section).
    secret            text NOT NULL CHECK (length(secret) >= 24),
    active            boolean NOT NULL DEFAULT true,
    -- Last registry revision whose events were turned into deliveries; advanced in the same transaction
    -- as the inserts, so enqueueing neither loses nor repeats an event.
    enqueued_revision bigint NOT NULL,
    -- Bumped by every update; the etag is derived from it.
    generation        bigint NOT NULL DEFAULT 1,
    creator           text NOT NULL,
    create_time       timestamptz NOT NULL DEFAULT clock_timestamp(),
    update_time       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- One row per (webhook, event): the key is also the idempotency key receivers see.
CREATE TABLE webhook_deliveries (
    webhook_id        text NOT NULL REFERENCES webhook_subscriptions (webhook_id) ON DELETE CASCADE,
    revision          bigint NOT NULL,
    change_type       smallint NOT NULL,
    model_id          text NOT NULL,
    -- The request body, rendered once at enqueue: every attempt sends the same bytes, and the delivery
    -- survives the pruning of registry_events.
    body              text NOT NULL,
    -- 1 pending, 2 delivered, 3 failed (gave up); modelreg.v1.WebhookDeliveryState.
    state             smallint NOT NULL DEFAULT 1 CHECK (state BETWEEN 1 AND 3),
    attempt_count     integer NOT NULL DEFAULT 0,
    next_attempt_time timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_attempt_time timestamptz,
    last_status_code  integer NOT NULL DEFAULT 0,
    last_error        text NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_time    timestamptz,
    PRIMARY KEY (webhook_id, revision)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_time) WHERE state = 1;
CREATE INDEX webhook_deliveries_finished_idx ON webhook_deliveries (create_time) WHERE state <> 1;
