-- Mayfly schema for PostgreSQL, version 1: the same tables, columns and meanings as the
-- SQLite schema (migrations/0001_init.sql and 0002_write_ahead.sql), in PostgreSQL types.
--
-- Conventions, kept identical to SQLite so that `copy_store` moves rows verbatim:
-- timestamps are BIGINT unix milliseconds, UUIDs are TEXT (hyphenated, lowercase), JSON is
-- TEXT (never queried into; stored exactly as written), enums are their `as_str()` text,
-- TTLs are BIGINT seconds. Flags are BOOLEAN. Listing ties on a timestamp break on the
-- primary key (SQLite breaks them on rowid, i.e. insertion order).
--
-- Many replicas share this database; nothing that correctness needs lives in a replica's
-- memory. The `audit_head` row is the serialisation point of every audited write.

CREATE TABLE identities (
    id          TEXT    PRIMARY KEY,
    kind        TEXT    NOT NULL,
    owner       TEXT    NOT NULL,
    purpose     TEXT    NOT NULL,
    expires_at  BIGINT,
    labels      TEXT    NOT NULL,            -- JSON object
    enabled     BOOLEAN NOT NULL,
    created_at  BIGINT  NOT NULL
);
-- Revoke-by-owner follows the identity's current owner.
CREATE INDEX identities_owner ON identities (owner);

CREATE TABLE targets (
    name           TEXT    PRIMARY KEY,
    kind           TEXT    NOT NULL,
    actions        TEXT    NOT NULL,         -- JSON array
    default_ttl_s  BIGINT  NOT NULL,
    max_ttl_s      BIGINT  NOT NULL,
    allow          TEXT    NOT NULL,         -- JSON array
    settings       TEXT    NOT NULL,         -- JSON
    created_at     BIGINT  NOT NULL
);

-- A target's admin connection secret, sealed under the master key (context
-- `target-secret:<name>`); the database alone reveals nothing.
CREATE TABLE target_secrets (
    target     TEXT    PRIMARY KEY REFERENCES targets (name),
    sealed     BYTEA   NOT NULL,
    updated_at BIGINT  NOT NULL
);

-- Grants reference identities and targets by name without a foreign key: a grant is a
-- historical record and must stay readable whatever happens to the registry later.
CREATE TABLE grants (
    id                 TEXT    PRIMARY KEY,
    identity           TEXT    NOT NULL,
    owner              TEXT    NOT NULL,
    target             TEXT    NOT NULL,
    action             TEXT    NOT NULL,
    purpose            TEXT    NOT NULL,
    task               TEXT    NOT NULL,
    requested_ttl_s    BIGINT  NOT NULL,
    granted_ttl_s      BIGINT,
    context            TEXT    NOT NULL,     -- JSON
    state              TEXT    NOT NULL,
    revocation_reason  TEXT,
    decision           TEXT    NOT NULL,     -- JSON
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL
);
-- Listing is newest first (ties on id); each index serves a filter and its order.
CREATE INDEX grants_identity ON grants (identity, created_at, id);
CREATE INDEX grants_task     ON grants (task, created_at, id);
CREATE INDEX grants_state    ON grants (state, created_at, id);
CREATE INDEX grants_created  ON grants (created_at, id);

-- identity, task, target and owner are copied from the grant so that bulk revocation and
-- audit events need no join.
CREATE TABLE leases (
    id                 TEXT    PRIMARY KEY,
    grant_id           TEXT    NOT NULL REFERENCES grants (id),
    kind               TEXT    NOT NULL,
    identity           TEXT    NOT NULL,
    owner              TEXT    NOT NULL,
    target             TEXT    NOT NULL,
    task               TEXT    NOT NULL,
    issued_at          BIGINT  NOT NULL,
    expires_at         BIGINT  NOT NULL,
    max_expires_at     BIGINT  NOT NULL,
    state              TEXT    NOT NULL,
    revocation_reason  TEXT,
    external           BOOLEAN NOT NULL,
    provider_state     TEXT    NOT NULL,     -- JSON, never a secret
    revoke_attempts    BIGINT  NOT NULL DEFAULT 0,
    last_error         TEXT,
    -- When the revocation worker should next try an external lease in state 'revoking'.
    -- Claiming a revocation pushes it forward: a lease on the work item.
    next_attempt_at    BIGINT
);
-- Drives expiry: only live leases are in it, so it stays small however large history gets.
CREATE INDEX leases_active_expiry  ON leases (expires_at) WHERE state = 'active';
CREATE INDEX leases_grant          ON leases (grant_id);
CREATE INDEX leases_task           ON leases (task, issued_at, id);
-- Kill switch and per-identity listing (newest first within a state).
CREATE INDEX leases_identity_state ON leases (identity, state, issued_at, id);
CREATE INDEX leases_state          ON leases (state, issued_at, id);
CREATE INDEX leases_issued         ON leases (issued_at, id);
-- The revocation worker's queue: revoking leases by when their next attempt is due.
CREATE INDEX leases_revoking_due   ON leases (next_attempt_at) WHERE state = 'revoking';
-- Reconciliation: the live leases of one target.
CREATE INDEX leases_target_live    ON leases (target, state);

-- The hash chain. `body` is the canonical JSON that was hashed; the other columns are
-- copies for filtering and are not trusted by verification.
CREATE TABLE audit (
    seq       BIGINT  PRIMARY KEY,
    at_ms     BIGINT  NOT NULL,
    kind      TEXT    NOT NULL,
    identity  TEXT,
    task      TEXT,
    grant_id  TEXT,
    body      TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
-- Filtered listing walks one key in seq order.
CREATE INDEX audit_task     ON audit (task, seq)     WHERE task IS NOT NULL;
CREATE INDEX audit_identity ON audit (identity, seq) WHERE identity IS NOT NULL;
CREATE INDEX audit_grant    ON audit (grant_id, seq) WHERE grant_id IS NOT NULL;

-- The last appended entry, written in the same transaction as every append, so that
-- cutting entries off the end of the chain is detected. Every audited write takes this row
-- with SELECT … FOR UPDATE first: across all replicas, audited writes commit one at a time
-- and the chain stays one chain.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   BIGINT  NOT NULL,
    hash  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE signing_keys (
    kid             TEXT    PRIMARY KEY,
    alg             TEXT    NOT NULL,
    public_jwk      TEXT    NOT NULL,        -- JSON
    private_sealed  BYTEA   NOT NULL,
    created_at      BIGINT  NOT NULL,
    retired_at      BIGINT,
    publish_until   BIGINT
);
-- At most one active key; rotation retires the old one in the same transaction.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL))
    WHERE retired_at IS NULL;

CREATE TABLE operator_tokens (
    name          TEXT    PRIMARY KEY,
    token_sha256  BYTEA   NOT NULL UNIQUE,
    created_at    BIGINT  NOT NULL
);
