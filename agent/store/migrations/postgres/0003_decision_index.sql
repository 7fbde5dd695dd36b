-- One request can carry several statements (a simple Query with "a; b"),
-- each with its own decision on the same message seq. Decisions are keyed
-- by their ordinal within the session (idx) instead; seq stays indexed.
ALTER TABLE decisions ADD COLUMN idx BIGINT;
UPDATE decisions SET idx = seq;
ALTER TABLE decisions ALTER COLUMN idx SET NOT NULL;
ALTER TABLE decisions DROP CONSTRAINT decisions_pkey;
ALTER TABLE decisions ADD PRIMARY KEY (session_id, idx);
CREATE INDEX decisions_seq ON decisions (session_id, seq);
