-- Outgoing webhooks: one delivery cursor per configured webhook. The audit chain is the
-- outbox (every event is committed with its change), so a webhook's state is only how far
-- along the chain it is, its failures on the next entry, and which replica delivers it.
CREATE TABLE webhook_cursors (
    name            TEXT    PRIMARY KEY NOT NULL,
    delivered_seq   INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    failing_since   INTEGER,
    claimed_by      TEXT,
    claimed_until   INTEGER,
    created_at      INTEGER NOT NULL
);
