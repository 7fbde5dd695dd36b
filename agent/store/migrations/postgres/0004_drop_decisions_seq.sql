-- No query looks decisions up by seq (transcripts read the recording, and
-- the API lists a session's decisions by idx), so its index only cost an
-- extra B-tree insert on every statement a proxy decides.
DROP INDEX decisions_seq;
