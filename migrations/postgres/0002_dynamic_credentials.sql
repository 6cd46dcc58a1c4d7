-- External credentials (PostgreSQL roles): revocation state per lease, and creation intents
-- recorded before a role is created so a crash never leaves an orphan role behind.

ALTER TABLE leases ADD COLUMN revocation TEXT;             -- NULL | 'pending' | 'failed' | 'done'
ALTER TABLE leases ADD COLUMN revocation_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN revocation_next_at BIGINT;
ALTER TABLE leases ADD COLUMN revocation_error TEXT;
CREATE INDEX leases_revocation ON leases (revocation, revocation_next_at);

CREATE TABLE pg_intents (
    role_name  TEXT    PRIMARY KEY,
    target     TEXT    NOT NULL,
    env        TEXT    NOT NULL,
    lease_id   TEXT    NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX credentials_env_kind ON credentials (env, kind, expires_at);
