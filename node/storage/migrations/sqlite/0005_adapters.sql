-- National-system adapters (docs/adapters.md): each adapter's durable
-- position in the records table, which it reads in commit order (records.seq).

CREATE TABLE adapter_cursors (
    adapter        TEXT    PRIMARY KEY,           -- [[adapters]] name
    delivered_seq  INTEGER NOT NULL,              -- every record up to this seq was delivered or is not for it
    attempts       INTEGER NOT NULL DEFAULT 0,    -- failed attempts at the next record
    last_error     TEXT,
    updated_at     TEXT    NOT NULL
);

-- Records an adapter refused for good (a 4xx from a webhook, a mapping it
-- cannot make): delivery went on past them; an operator sees them here.
CREATE TABLE adapter_failures (
    adapter        TEXT    NOT NULL,
    record_seq     INTEGER NOT NULL,
    message_id     TEXT    NOT NULL,
    reason         TEXT    NOT NULL,
    failed_at      TEXT    NOT NULL,
    PRIMARY KEY (adapter, record_seq)
);
