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

-- Witnesses this node asked to cosign its checkpoints: the largest size each
-- has cosigned (the old size of the next add-checkpoint request).
CREATE TABLE log_cosigners (
    witness       TEXT    PRIMARY KEY,            -- the witness key's name
    size          INTEGER NOT NULL,
    cosigned_at   TEXT    NOT NULL
);

-- As a witness: the latest checkpoint this node cosigned for each partner log.
CREATE TABLE witnessed (
    origin        TEXT    PRIMARY KEY,
    size          INTEGER NOT NULL,
    root          BLOB    NOT NULL,
    note          TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL
);

-- Checkpoints a partner log signed but this node refused to cosign because
-- they contradict one it cosigned before: the evidence of a rewritten history.
CREATE TABLE witness_evidence (
    id            INTEGER PRIMARY KEY,
    origin        TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    held_size     INTEGER NOT NULL,
    held_note     TEXT    NOT NULL,
    request       TEXT    NOT NULL,               -- the add-checkpoint body, as received
    received_at   TEXT    NOT NULL
);
