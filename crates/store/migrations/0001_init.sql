-- Mayfly schema, version 1.
--
-- Conventions: timestamps are INTEGER unix milliseconds, UUIDs are TEXT (hyphenated,
-- lowercase), JSON is TEXT, enums are their `as_str()` text, TTLs are INTEGER seconds.
-- Every index below exists for a request path; the store's EXPLAIN QUERY PLAN test checks
-- that none of them scans a large table, so that a request stays fast at 10M leases.

CREATE TABLE identities (
    id          TEXT    PRIMARY KEY NOT NULL,
    kind        TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    purpose     TEXT    NOT NULL,
    expires_at  INTEGER,
    labels      TEXT    NOT NULL,            -- JSON object
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    created_at  INTEGER NOT NULL
);
-- Revoke-by-owner follows the identity's current owner.
CREATE INDEX identities_owner ON identities (owner);

CREATE TABLE targets (
    name           TEXT    PRIMARY KEY NOT NULL,
    kind           TEXT    NOT NULL,
    actions        TEXT    NOT NULL,         -- JSON array
    default_ttl_s  INTEGER NOT NULL,
    max_ttl_s      INTEGER NOT NULL,
    allow          TEXT    NOT NULL,         -- JSON array
    settings       TEXT    NOT NULL,         -- JSON
    created_at     INTEGER NOT NULL
);

-- Grants reference identities and targets by name without a foreign key: a grant is a
-- historical record and must stay readable whatever happens to the registry later.
CREATE TABLE grants (
    id                 TEXT    PRIMARY KEY NOT NULL,
    identity           TEXT    NOT NULL,
    owner              TEXT    NOT NULL,
    target             TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    purpose            TEXT    NOT NULL,
    task               TEXT    NOT NULL,
    requested_ttl_s    INTEGER NOT NULL,
    granted_ttl_s      INTEGER,
    context            TEXT    NOT NULL,     -- JSON
    state              TEXT    NOT NULL,
    revocation_reason  TEXT,
    decision           TEXT    NOT NULL,     -- JSON
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
-- Listing is newest first; the trailing created_at lets a filtered list stop at LIMIT.
CREATE INDEX grants_identity ON grants (identity, created_at);
CREATE INDEX grants_task     ON grants (task, created_at);
CREATE INDEX grants_state    ON grants (state, created_at);
CREATE INDEX grants_created  ON grants (created_at);

-- identity, task, target and owner are copied from the grant so that bulk revocation and
-- audit events need no join.
CREATE TABLE leases (
    id                 TEXT    PRIMARY KEY NOT NULL,
    grant_id           TEXT    NOT NULL REFERENCES grants (id),
    kind               TEXT    NOT NULL,
    identity           TEXT    NOT NULL,
    owner              TEXT    NOT NULL,
    target             TEXT    NOT NULL,
    task               TEXT    NOT NULL,
    issued_at          INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    max_expires_at     INTEGER NOT NULL,
    state              TEXT    NOT NULL,
    revocation_reason  TEXT,
    external           INTEGER NOT NULL CHECK (external IN (0, 1)),
    provider_state     TEXT    NOT NULL,     -- JSON, never a secret
    revoke_attempts    INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    -- When the revocation worker should next try an external lease in state 'revoking'.
    next_attempt_at    INTEGER
);
-- Drives expiry: only live leases are in it, so it stays small however large history gets.
CREATE INDEX leases_active_expiry ON leases (expires_at) WHERE state = 'active';
CREATE INDEX leases_grant          ON leases (grant_id);
CREATE INDEX leases_task           ON leases (task, issued_at);
-- Kill switch and per-identity listing (newest first within a state).
CREATE INDEX leases_identity_state ON leases (identity, state, issued_at);
-- Revocation worker ('revoking'), stats counts and listing by state.
CREATE INDEX leases_state          ON leases (state, issued_at);
CREATE INDEX leases_issued         ON leases (issued_at);

-- The hash chain. `body` is the canonical JSON that was hashed; the other columns are
-- copies for filtering and are not trusted by verification.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY NOT NULL,
    at_ms     INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    identity  TEXT,
    task      TEXT,
    grant_id  TEXT,
    body      TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
-- seq is the rowid, so each index is also ordered by seq within a key.
CREATE INDEX audit_task     ON audit (task)     WHERE task IS NOT NULL;
CREATE INDEX audit_identity ON audit (identity) WHERE identity IS NOT NULL;
CREATE INDEX audit_grant    ON audit (grant_id) WHERE grant_id IS NOT NULL;

-- The last appended entry, written in the same transaction as every append, so that
-- cutting entries off the end of the chain is detected.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE signing_keys (
    kid             TEXT    PRIMARY KEY NOT NULL,
    alg             TEXT    NOT NULL,
    public_jwk      TEXT    NOT NULL,        -- JSON
    private_sealed  BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    retired_at      INTEGER,
    publish_until   INTEGER
);
-- At most one active key; rotation retires the old one in the same transaction.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;

CREATE TABLE operator_tokens (
    name          TEXT    PRIMARY KEY NOT NULL,
    token_sha256  BLOB    NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL
);
