-- One request can carry several statements (a simple Query with "a; b"),
-- each with its own decision on the same message seq. Decisions are keyed
-- by their ordinal within the session (idx) instead; seq stays indexed.
CREATE TABLE decisions_v3 (
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    idx         INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    time_ns     INTEGER NOT NULL,
    action      TEXT NOT NULL,
    rule        TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    enforced    INTEGER NOT NULL DEFAULT 1,
    statement   TEXT NOT NULL DEFAULT '',
    approval_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session_id, idx)
);
INSERT INTO decisions_v3 (session_id, idx, seq, time_ns, action, rule, reason, enforced, statement, approval_id)
    SELECT session_id, seq, seq, time_ns, action, rule, reason, enforced, statement, approval_id FROM decisions;
DROP TABLE decisions;
ALTER TABLE decisions_v3 RENAME TO decisions;
CREATE INDEX decisions_action ON decisions (action, session_id);
CREATE INDEX decisions_seq ON decisions (session_id, seq);
