-- Revocation is a narrow row of its own: revoking 10^5 leases inserts 10^5 small rows instead
-- of rewriting 10^5 wide lease rows (the sealed details sit in the lease row). The external
-- revocation state (PostgreSQL roles to drop) stays on the lease: few leases carry it.
CREATE TABLE lease_revocations (
    lease_id   TEXT    PRIMARY KEY REFERENCES leases (id) ON DELETE CASCADE,
    revoked_at INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    external   INTEGER NOT NULL DEFAULT 0  -- 1: holds database roles the worker drops
) WITHOUT ROWID;

INSERT INTO lease_revocations (lease_id, revoked_at, reason, external)
    SELECT l.id, l.revoked_at, COALESCE(l.revoke_reason, ''),
           CASE WHEN EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = l.id
                             AND c.kind = 'postgres') THEN 1 ELSE 0 END
    FROM leases l WHERE l.revoked_at IS NOT NULL;

ALTER TABLE leases DROP COLUMN revoked_at;
ALTER TABLE leases DROP COLUMN revoke_reason;

-- Claim rows keyed the way revocation by claim reads them: the (name, value, lease) key covers
-- the lookup, and the table has no separate rowid B-tree to write on every exchange.
CREATE TABLE lease_claims_by_value (
    name     TEXT NOT NULL,
    value    TEXT NOT NULL,
    lease_id TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    PRIMARY KEY (name, value, lease_id)
) WITHOUT ROWID;

INSERT INTO lease_claims_by_value (name, value, lease_id)
    SELECT name, value, lease_id FROM lease_claims;

DROP TABLE lease_claims;
ALTER TABLE lease_claims_by_value RENAME TO lease_claims;
CREATE INDEX lease_claims_lease ON lease_claims (lease_id);
