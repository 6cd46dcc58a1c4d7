-- A JWT revoked on its own (RFC 7009 by its holder: a service the job sent it to): the JWT
-- dies, its lease and the lease's other credentials stay live. NULL: not revoked by itself
-- (its lease's revocation, in lease_revocations, still ends it). Adding a NULL column rewrites
-- no row.
ALTER TABLE credentials ADD COLUMN revoked_at BIGINT;

-- The revoked-JWT list reads these few rows by environment.
CREATE INDEX credentials_revoked ON credentials (env, kind, expires_at)
    WHERE revoked_at IS NOT NULL;
