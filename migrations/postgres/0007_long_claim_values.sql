-- Claim values of any length are searchable (revocation and listing by claim are never
-- silently short). A B-tree entry is limited to about 2.7 kB, so the (name, value) index
-- keeps the values up to 512 bytes and a second partial index, by name only, the longer
-- ones; lookups name the length class so that each uses its index.
DROP INDEX lease_claims_name_value;
CREATE INDEX lease_claims_name_value ON lease_claims (name, value) INCLUDE (lease_id)
    WHERE octet_length(value) <= 512;
CREATE INDEX lease_claims_long_values ON lease_claims (name) INCLUDE (lease_id)
    WHERE octet_length(value) > 512;
