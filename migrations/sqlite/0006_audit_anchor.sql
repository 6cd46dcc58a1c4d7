-- Each replica's audit head, kept with the store writes it covers (see src/audit/anchor.rs):
-- an audit file whose last line is before `seq`, or whose line `seq` does not carry `mac`,
-- was cut, replaced or emptied, and the broker refuses to start on it.
-- `replica` is audit.replica ('' for an unnamed replica); `owner` is the id of the process
-- that anchors it now (two processes sharing a replica name cannot both keep it).
CREATE TABLE audit_anchors (
    replica    TEXT    PRIMARY KEY,
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    mac        TEXT    NOT NULL,
    file       TEXT    NOT NULL,
    owner      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
