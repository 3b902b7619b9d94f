-- Operator tokens get a lifecycle: an expiry, who made them, and revocation.
--
-- A name is unique among unrevoked tokens only: a revoked token keeps its row, so who
-- held a name before stays readable, and the name can be given again. The table is
-- therefore rebuilt with the hash as its key instead of the name (SQLite cannot drop a
-- primary key in place). Tokens that exist already, the first start's, keep working as
-- they did: no expiry, made by `system:first-start`.
CREATE TABLE operator_tokens_v2 (
    token_sha256  BLOB    PRIMARY KEY NOT NULL,
    name          TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    created_by    TEXT    NOT NULL,
    revoked_at    INTEGER,
    revoked_by    TEXT
);
INSERT INTO operator_tokens_v2 (token_sha256, name, created_at, expires_at, created_by)
SELECT token_sha256, name, created_at, NULL, 'system:first-start' FROM operator_tokens;
DROP TABLE operator_tokens;
ALTER TABLE operator_tokens_v2 RENAME TO operator_tokens;
CREATE UNIQUE INDEX operator_tokens_live_name ON operator_tokens (name)
    WHERE revoked_at IS NULL;
