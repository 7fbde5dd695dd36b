-- Decisions go in a batch to a row: a session's consecutive decisions as a
-- JSON array, with the first and last idx and the batch's distinct actions
-- (comma-separated), so sessions are still found by action. A row per
-- decision cost a busy proxy more than deciding the statement did. Each
-- stored decision becomes a batch of its own.
CREATE TABLE decision_batches (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    first_idx  BIGINT NOT NULL,
    last_idx   BIGINT NOT NULL,
    actions    TEXT NOT NULL,
    decisions  TEXT NOT NULL,
    PRIMARY KEY (session_id, first_idx)
);
INSERT INTO decision_batches (session_id, first_idx, last_idx, actions, decisions)
    SELECT session_id, idx, idx, action, json_build_array(json_build_object('idx', idx, 'seq', seq, 'time_ns', time_ns,
        'action', action, 'rule', rule, 'reason', reason, 'enforced', enforced,
        'statement', statement, 'approval_id', approval_id))::text
    FROM decisions;
DROP TABLE decisions;
