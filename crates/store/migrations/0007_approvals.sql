-- Approval requests: one per grant that waits for (or went through) approval. The request
-- itself (needed, groups, votes, hash) is one JSON document: it is read and rewritten
-- whole, under the writer's lock, so concurrent votes are serialised.
CREATE TABLE approvals (
    grant_id    TEXT    PRIMARY KEY NOT NULL,
    state       TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    body        TEXT    NOT NULL
);
-- The sweep ends requests nobody answered or collected in time.
CREATE INDEX approvals_live_expiry ON approvals (expires_at) WHERE state IN ('pending', 'approved');
CREATE INDEX approvals_state ON approvals (state, created_at);
