-- External credentials (database users): sealed admin secrets per target, and the indexes
-- the revocation queue and reconciliation read.

-- A target's admin connection secret, sealed under the master key (context
-- `target-secret:<name>`); the database alone reveals nothing.
CREATE TABLE target_secrets (
    target     TEXT    PRIMARY KEY REFERENCES targets (name),
    sealed     BLOB    NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The revocation worker's queue: revoking leases by when their next attempt is due.
CREATE INDEX leases_revoking_due ON leases (next_attempt_at) WHERE state = 'revoking';

-- Reconciliation: the live leases of one target.
CREATE INDEX leases_target_live ON leases (target, state);
