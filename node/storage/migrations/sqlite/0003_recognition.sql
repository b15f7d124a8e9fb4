-- mrx SQLite schema, version 3: recognition at the border (docs/recognition.md).

-- The unseal authorisation an opening cites, for the seal chain. Seal events
-- received from partners are indexed in seal_events too.
ALTER TABLE seal_events ADD COLUMN authorization_id TEXT;
CREATE INDEX seal_events_authorization ON seal_events (authorization_id) WHERE authorization_id IS NOT NULL;

-- A partner's seal event whose lock and sequence number (or event ID) this
-- node already holds under another record: kept, so that the chain shows two
-- records claiming one number instead of silently keeping the first.
CREATE TABLE seal_event_claims (
    message_id         TEXT    PRIMARY KEY REFERENCES records(message_id),
    lock_id            TEXT    NOT NULL,
    lock_seq           INTEGER NOT NULL,
    container          TEXT    NOT NULL
);
CREATE INDEX seal_event_claims_container ON seal_event_claims (container);

-- Unseal authorisations this node issued or received.
CREATE TABLE unseal_authorizations (
    authorization_id   TEXT    PRIMARY KEY,
    message_id         TEXT    NOT NULL UNIQUE REFERENCES records(message_id),
    issuer             TEXT    NOT NULL,       -- node ID
    lock_id            TEXT    NOT NULL,
    seal_id            TEXT    NOT NULL,
    container          TEXT,
    office             TEXT    NOT NULL,
    valid_from         TEXT    NOT NULL,
    valid_to           TEXT    NOT NULL
);
CREATE INDEX unseal_authorizations_lock ON unseal_authorizations (lock_id, valid_to);

-- The first arrival of a consignment at this node's office: what decisions
-- are taken at, and taken again at when late evidence comes in.
CREATE TABLE arrivals (
    ref_type           TEXT    NOT NULL,
    ref_id             TEXT    NOT NULL,
    arrived_at         TEXT    NOT NULL,
    trigger_message_id TEXT,                   -- the seal event located at the office, if that was the trigger
    containers         TEXT    NOT NULL,       -- space-separated ISO 6346 numbers
    recorded_at        TEXT    NOT NULL,
    PRIMARY KEY (ref_type, ref_id)
);

CREATE TABLE arrival_containers (
    container          TEXT    NOT NULL,
    ref_type           TEXT    NOT NULL,
    ref_id             TEXT    NOT NULL,
    PRIMARY KEY (container, ref_type, ref_id)
);

-- National targeting: the national system's instruction to inspect.
CREATE TABLE targeting (
    ref_type           TEXT    NOT NULL,
    ref_id             TEXT    NOT NULL,
    reference          TEXT    NOT NULL,
    reason             TEXT    NOT NULL,
    marked_at          TEXT    NOT NULL,
    PRIMARY KEY (ref_type, ref_id, reference)
);

-- Recognition decisions, this node's and its partners'. `fingerprint` (own
-- decisions) hashes what was decided, so a re-evaluation that changes
-- nothing makes no new decision.
CREATE TABLE decisions (
    message_id         TEXT    PRIMARY KEY REFERENCES records(message_id),
    decision_id        TEXT    NOT NULL,
    sender             TEXT    NOT NULL,
    office             TEXT    NOT NULL,
    ref_type           TEXT    NOT NULL,       -- the first consignment reference
    ref_id             TEXT    NOT NULL,
    outcome            TEXT    NOT NULL,
    decided_at         TEXT    NOT NULL,
    fingerprint        BLOB
);
CREATE INDEX decisions_consignment ON decisions (ref_type, ref_id, decided_at);

-- Alarms, this node's and its partners', with the officer's acknowledgement.
CREATE TABLE alarms (
    id                 INTEGER PRIMARY KEY,
    message_id         TEXT    NOT NULL UNIQUE REFERENCES records(message_id),
    alarm_id           TEXT    NOT NULL,
    sender             TEXT    NOT NULL,
    alarm_type         TEXT    NOT NULL,
    lock_id            TEXT    NOT NULL,
    container          TEXT    NOT NULL,
    raised_at          TEXT    NOT NULL,
    fingerprint        BLOB    UNIQUE,         -- own alarms: one per cause
    acknowledged_at    TEXT,
    acknowledged_by    TEXT
);
CREATE INDEX alarms_container ON alarms (container, id);
CREATE INDEX alarms_open ON alarms (id) WHERE acknowledged_at IS NULL;
