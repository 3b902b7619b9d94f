-- Signed checkpoints of the audit chain head (see mayfly_core::checkpoint). The signature
-- (`jws`) is what counts; the other columns repeat what it signs, for reading. One row per
-- entry and key: a tick with no new entry since the last adds nothing.
CREATE TABLE audit_checkpoints (
    seq    INTEGER NOT NULL,
    kid    TEXT    NOT NULL,
    hash   TEXT    NOT NULL,
    at_ms  INTEGER NOT NULL,
    jws    TEXT    NOT NULL,
    PRIMARY KEY (seq, kid)
);
