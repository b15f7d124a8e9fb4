-- The audit log (node/auditlog.py, node/merkle.py): every signed record the
-- node stores, in commit order, is a leaf of an RFC 6962 Merkle tree whose
-- entry is the record's exact JWS bytes. Appended in the transaction that
-- stores the record, so the log and the records never disagree.
CREATE TABLE log_leaves (
    leaf_index    INTEGER PRIMARY KEY,            -- 0, 1, 2, ... with no gaps
    record_seq    INTEGER NOT NULL UNIQUE REFERENCES records(seq),
    leaf_hash     BLOB    NOT NULL                -- SHA-256(0x00 || jws): tile level 0
);

-- Tile levels 1, 2, ...: the hash of the perfect subtree over leaves
-- [idx * 256^level, (idx + 1) * 256^level), kept once it is complete.
CREATE TABLE log_tile_hashes (
    level         INTEGER NOT NULL,
    idx           INTEGER NOT NULL,
    hash          BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- The checkpoints this node signed (C2SP tlog-checkpoint notes), with the
-- cosignatures its witnesses added later appended to the note.
CREATE TABLE log_checkpoints (
    size          INTEGER PRIMARY KEY,
    root          BLOB    NOT NULL,
    note          TEXT    NOT NULL,
    signed_at     TEXT    NOT NULL
);
