-- jobpass schema, PostgreSQL. Times are Unix seconds. Every sealed column is AES-256-GCM under
-- the environment's data key version named beside it, with the row identity as associated data.

CREATE TABLE data_keys (
    env         TEXT    NOT NULL,
    version     BIGINT NOT NULL,
    wrapped     BYTEA,                 -- NULL once destroyed (crypto-shredding)
    created_at  BIGINT NOT NULL,
    destroyed_at BIGINT,
    PRIMARY KEY (env, version)
);

CREATE TABLE signing_keys (
    env         TEXT    NOT NULL,
    purpose     TEXT    NOT NULL,     -- 'jwt'
    kid         TEXT    NOT NULL,
    key_version BIGINT NOT NULL,
    sealed      BYTEA    NOT NULL,     -- PKCS#8 private key
    public_jwk  TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (env, purpose)
);

CREATE TABLE replay (
    key         BYTEA    PRIMARY KEY,  -- SHA-256 of issuer + jti, or of the whole token
    issuer      TEXT    NOT NULL,
    seen_at     BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX replay_expiry ON replay (expires_at);

CREATE TABLE leases (
    id             TEXT    PRIMARY KEY,
    env            TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    issuer         TEXT    NOT NULL,
    subject        TEXT    NOT NULL,
    policy_version TEXT    NOT NULL,
    issued_at      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoke_reason  TEXT,
    key_version    BIGINT NOT NULL,
    sealed         BYTEA    NOT NULL   -- source claims and credential descriptions
);
CREATE INDEX leases_env_role ON leases (env, role, id);
CREATE INDEX leases_expiry ON leases (expires_at);
CREATE INDEX leases_subject ON leases (subject);

CREATE TABLE lease_claims (
    lease_id TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (lease_id, name)
);
CREATE INDEX lease_claims_name_value ON lease_claims (name, value);

CREATE TABLE credentials (
    id          TEXT    PRIMARY KEY,
    lease_id    TEXT    NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    env         TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    token_hash  BYTEA    UNIQUE,       -- HMAC of a broker token; NULL for other kinds
    scope       TEXT    NOT NULL,     -- JSON: secret path globs of a token grant
    expires_at  BIGINT NOT NULL
);
CREATE INDEX credentials_lease ON credentials (lease_id);

CREATE TABLE secrets (
    env         TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    version     BIGINT NOT NULL,
    fields      TEXT    NOT NULL,     -- JSON array of field names (not values)
    key_version BIGINT NOT NULL,
    sealed      BYTEA    NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (env, path, version)
);

CREATE TABLE environments (
    env           TEXT    PRIMARY KEY,
    frozen        BIGINT NOT NULL DEFAULT 0,
    frozen_reason TEXT,
    frozen_at     BIGINT,
    frozen_by     TEXT
);
