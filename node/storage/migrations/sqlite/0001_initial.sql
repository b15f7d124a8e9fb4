-- mrx SQLite schema, version 1.
-- Times are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (sortable); digests and
-- signed records are BLOBs holding the exact bytes.

-- Every signed record the node makes or accepts, in commit order. `seq` is the
-- append order the transparency log follows; it is never reused.
CREATE TABLE records (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT    NOT NULL UNIQUE,
    message_type  TEXT    NOT NULL,
    sender        TEXT    NOT NULL,
    recipients    TEXT    NOT NULL,            -- space-separated node IDs
    prepared_at   TEXT    NOT NULL,
    kid           TEXT    NOT NULL,
    digest        BLOB    NOT NULL,            -- SHA-256 of jws
    jws           BLOB    NOT NULL,
    stored_at     TEXT    NOT NULL
);

-- Seal events as indexes into their records. (lock_id, lock_seq) is unique:
-- a lock numbers its own events.
CREATE TABLE seal_events (
    id            INTEGER PRIMARY KEY,
    event_id      TEXT    NOT NULL UNIQUE,
    content_hash  BLOB    NOT NULL,
    message_id    TEXT    NOT NULL REFERENCES records(message_id),
    gateway_id    TEXT    NOT NULL,
    lock_id       TEXT    NOT NULL,
    lock_seq      INTEGER NOT NULL,
    seal_id       TEXT    NOT NULL,
    container     TEXT    NOT NULL,
    event_type    TEXT    NOT NULL,
    device_time   TEXT    NOT NULL,
    receipt_time  TEXT    NOT NULL,
    order_status  TEXT    NOT NULL,
    locode        TEXT,
    latitude      TEXT,
    longitude     TEXT,
    condition     TEXT    NOT NULL,
    UNIQUE (lock_id, lock_seq)
);
CREATE INDEX seal_events_container ON seal_events (container, device_time, id);
CREATE INDEX seal_events_seal ON seal_events (seal_id, lock_seq);

CREATE TABLE control_results (
    id            INTEGER PRIMARY KEY,
    control_id    TEXT    NOT NULL UNIQUE,
    content_hash  BLOB    NOT NULL,
    message_id    TEXT    NOT NULL REFERENCES records(message_id),
    office        TEXT    NOT NULL,
    control_type  TEXT    NOT NULL,
    result_code   TEXT    NOT NULL,
    controlled_at TEXT    NOT NULL
);

-- Which consignments a record speaks of (control results, sealing events).
CREATE TABLE consignment_links (
    ref_type      TEXT    NOT NULL,
    ref_id        TEXT    NOT NULL,
    message_id    TEXT    NOT NULL REFERENCES records(message_id),
    PRIMARY KEY (ref_type, ref_id, message_id)
);
CREATE INDEX consignment_links_message ON consignment_links (message_id);

-- Callers: gateways (scoped to lock ID patterns), the national system, auditors.
-- Only a SHA-256 of each high-entropy secret is kept.
CREATE TABLE credentials (
    name          TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL,
    lock_patterns TEXT    NOT NULL,            -- newline-separated fnmatch patterns
    secret_hash   BLOB    NOT NULL,
    created_at    TEXT    NOT NULL,
    revoked_at    TEXT
);
