-- Sealed recordings copied into the store in 1 MiB parts, so that in fleet
-- mode any host can replay or export a session recorded on another.
CREATE TABLE recording_parts (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    part       INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (session_id, part)
);
