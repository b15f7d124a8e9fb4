-- mrx SQLite schema, version 2: exchange with partner nodes (docs/protocol.md).

-- What this node must deliver to each partner: one row per (partner, record),
-- written in the same transaction as the record. `id` is the send order and
-- the catch-up cursor. state: queued | in-flight | delivered | failed.
CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    partner            TEXT    NOT NULL,
    message_id         TEXT    NOT NULL REFERENCES records(message_id),
    state              TEXT    NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    last_attempt_at    TEXT,
    last_error         TEXT,                   -- 'code: detail' of the last failure
    receipt_message_id TEXT,                   -- the partner's signed Receipt, kept in records
    delivered_at       TEXT,
    UNIQUE (partner, message_id)
);
CREATE INDEX outbox_pending ON outbox (partner, state, id);   -- the queue, and counts per state
CREATE INDEX outbox_partner ON outbox (partner, id);          -- catch-up, in send order
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE state = 'delivered';  -- pruning

-- Records received from partners, and the receipt this node answered with.
-- `payload_digest` tells a repeat (same payload, maybe another ES256
-- encoding) from a different message under the same ID.
CREATE TABLE received (
    message_id         TEXT    PRIMARY KEY REFERENCES records(message_id),
    partner            TEXT    NOT NULL,
    payload_digest     BLOB    NOT NULL,
    receipt_message_id TEXT    NOT NULL REFERENCES records(message_id),
    received_at        TEXT    NOT NULL
);

-- Every receipt this node signed, by the SHA-256 of the exact JWS it answers:
-- the same bytes again get the same receipt, accepted or rejected.
CREATE TABLE receipts_issued (
    received_digest    BLOB    PRIMARY KEY,
    partner            TEXT    NOT NULL,
    received_message_id TEXT,                  -- where it was legible
    receipt_message_id TEXT    NOT NULL REFERENCES records(message_id)
);

-- Consignment itineraries from the national system: the offices a consignment
-- will pass (in order) and its containers; routing reads them.
CREATE TABLE itineraries (
    ref_type           TEXT    NOT NULL,
    ref_id             TEXT    NOT NULL,
    offices            TEXT    NOT NULL,       -- space-separated UN/LOCODEs, in route order
    containers         TEXT    NOT NULL,       -- space-separated ISO 6346 numbers
    updated_at         TEXT    NOT NULL,
    PRIMARY KEY (ref_type, ref_id)
);

-- Per partner: the key-set statements accepted so far (the last known good
-- chain, newline-separated compact JWS) and the catch-up cursor into its outbox.
CREATE TABLE partner_state (
    partner            TEXT    PRIMARY KEY,
    key_statements     TEXT    NOT NULL DEFAULT '',
    keys_updated_at    TEXT,
    pull_cursor        TEXT
);
