-- Revocation is a narrow row of its own: revoking 10^5 leases inserts 10^5 small rows instead
-- of rewriting 10^5 wide lease rows (the sealed details sit in the lease row). The external
-- revocation state (PostgreSQL roles to drop) stays on the lease: few leases carry it.
CREATE TABLE lease_revocations (
    lease_id   TEXT   PRIMARY KEY REFERENCES leases (id) ON DELETE CASCADE,
    revoked_at BIGINT NOT NULL,
    reason     TEXT   NOT NULL,
    external   BIGINT  NOT NULL DEFAULT 0  -- 1: holds database roles the worker drops
);

INSERT INTO lease_revocations (lease_id, revoked_at, reason, external)
    SELECT l.id, l.revoked_at, COALESCE(l.revoke_reason, ''),
           CASE WHEN EXISTS (SELECT 1 FROM credentials c WHERE c.lease_id = l.id
                             AND c.kind = 'postgres') THEN 1 ELSE 0 END
    FROM leases l WHERE l.revoked_at IS NOT NULL;

ALTER TABLE leases DROP COLUMN revoked_at, DROP COLUMN revoke_reason;

-- Revocation by claim reads (name, value) → lease ids: the index covers it.
DROP INDEX lease_claims_name_value;
CREATE INDEX lease_claims_name_value ON lease_claims (name, value) INCLUDE (lease_id);
