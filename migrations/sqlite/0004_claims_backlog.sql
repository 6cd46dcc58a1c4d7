-- Claims of a new lease travel with its row (an append in lease order), plus its id in a
-- backlog, instead of one entry per claim on scattered pages of the claim index. The ledger
-- folds the backlog into lease_claims in sorted runs between batches, so the entries of many
-- leases share each index page written. Claim lookups read the index and the backlog.
-- JSON object: claim name → value, always as text (the backlog's lookups compare text).
ALTER TABLE leases ADD COLUMN claims TEXT NOT NULL DEFAULT '{}'
    CHECK (json_type(claims) = 'object');

UPDATE leases SET claims = (SELECT json_group_object(name, value) FROM lease_claims c
                            WHERE c.lease_id = leases.id)
    WHERE EXISTS (SELECT 1 FROM lease_claims c WHERE c.lease_id = leases.id);

-- The index loses its per-lease index and its foreign key (one probe of `leases` per entry):
-- the sweep deletes a lease's entries by their key, read from the lease's `claims`.
CREATE TABLE lease_claims_by_value (
    name     TEXT NOT NULL,
    value    TEXT NOT NULL,
    lease_id TEXT NOT NULL,
    PRIMARY KEY (name, value, lease_id)
) WITHOUT ROWID;
INSERT INTO lease_claims_by_value (name, value, lease_id)
    SELECT name, value, lease_id FROM lease_claims;
DROP TABLE lease_claims;
ALTER TABLE lease_claims_by_value RENAME TO lease_claims;

CREATE TABLE lease_claims_backlog (
    lease_id TEXT PRIMARY KEY REFERENCES leases (id) ON DELETE CASCADE
) WITHOUT ROWID;
