-- How far recognition's work is done (mrx.node.deciding, `Recognition`):
-- every record stored before `settled_before` has had the arrival, alarm or
-- re-decision it called for. At start the node does again the work of the
-- records stored since: those a stop (a kill) may have left undone.

CREATE TABLE recognition_progress (
    id              INTEGER PRIMARY KEY CHECK (id = 1),  -- one row
    settled_before  TEXT    NOT NULL
);
