-- Outgoing webhooks: one delivery cursor per configured webhook. The audit chain is the
-- outbox (every event is committed with its change), so a webhook's state is only how far
-- along the chain it is, its failures on the next entry, and which replica delivers it.
CREATE TABLE webhook_cursors (
    name            TEXT    PRIMARY KEY,
    delivered_seq   BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_error      TEXT,
    failing_since   BIGINT,
    claimed_by      TEXT,
    claimed_until   BIGINT,
    created_at      BIGINT  NOT NULL
);
