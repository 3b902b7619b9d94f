-- Approval requests: one per grant that waits for (or went through) approval. The request
-- itself (needed, groups, votes, hash) is one JSON document, read `FOR UPDATE` and
-- rewritten whole, so concurrent votes on one request are serialised.
CREATE TABLE approvals (
    grant_id    TEXT    PRIMARY KEY,
    state       TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    body        TEXT    NOT NULL
);
-- The sweep ends requests nobody answered or collected in time.
CREATE INDEX approvals_live_expiry ON approvals (expires_at) WHERE state IN ('pending', 'approved');
CREATE INDEX approvals_state ON approvals (state, created_at);
