-- Operator tokens get a lifecycle: an expiry, who made them, and revocation.
--
-- A name is unique among unrevoked tokens only: a revoked token keeps its row, so who
-- held a name before stays readable, and the name can be given again. The hash (already
-- unique) identifies a row. Tokens that exist already, the first start's, keep working
-- as they did: no expiry, made by `system:first-start`.
ALTER TABLE operator_tokens DROP CONSTRAINT operator_tokens_pkey;
ALTER TABLE operator_tokens ALTER COLUMN name SET NOT NULL;
ALTER TABLE operator_tokens
    ADD COLUMN expires_at BIGINT,
    ADD COLUMN created_by TEXT NOT NULL DEFAULT 'system:first-start',
    ADD COLUMN revoked_at BIGINT,
    ADD COLUMN revoked_by TEXT;
ALTER TABLE operator_tokens ALTER COLUMN created_by DROP DEFAULT;
CREATE UNIQUE INDEX operator_tokens_live_name ON operator_tokens (name)
    WHERE revoked_at IS NULL;
