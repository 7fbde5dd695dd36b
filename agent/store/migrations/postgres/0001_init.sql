-- Sessions, decisions, approvals and the audit chain. Times are Unix
-- nanoseconds (BIGINT) so both backends store exactly the same values and the
-- audit hash never depends on a backend's timestamp precision.

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    host             TEXT NOT NULL,
    identity         TEXT NOT NULL,
    pid              BIGINT NOT NULL DEFAULT 0,
    uid              BIGINT NOT NULL DEFAULT 0,
    exe              TEXT NOT NULL DEFAULT '',
    cgroup           TEXT NOT NULL DEFAULT '',
    target           TEXT NOT NULL,
    protocol         TEXT NOT NULL,
    client_addr      TEXT NOT NULL DEFAULT '',
    upstream_addr    TEXT NOT NULL DEFAULT '',
    started_ns       BIGINT NOT NULL,
    ended_ns         BIGINT,
    bytes_in         BIGINT NOT NULL DEFAULT 0,
    bytes_out        BIGINT NOT NULL DEFAULT 0,
    messages         BIGINT NOT NULL DEFAULT 0,
    outcome          TEXT NOT NULL DEFAULT '',
    recording        TEXT NOT NULL DEFAULT '',
    recording_sha256 TEXT NOT NULL DEFAULT '',
    recording_size   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_started ON sessions (started_ns);
CREATE INDEX sessions_identity ON sessions (identity, started_ns);
CREATE INDEX sessions_target ON sessions (target, started_ns);

CREATE TABLE decisions (
    session_id  TEXT NOT NULL REFERENCES sessions (id),
    seq         BIGINT NOT NULL,
    time_ns     BIGINT NOT NULL,
    action      TEXT NOT NULL,
    rule        TEXT NOT NULL DEFAULT '',
    reason      TEXT NOT NULL DEFAULT '',
    enforced    BOOLEAN NOT NULL DEFAULT TRUE,
    statement   TEXT NOT NULL DEFAULT '',
    approval_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX decisions_action ON decisions (action, session_id);

CREATE TABLE approvals (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    session_id   TEXT NOT NULL DEFAULT '',
    identity     TEXT NOT NULL,
    pid          BIGINT NOT NULL DEFAULT 0,
    exe          TEXT NOT NULL DEFAULT '',
    target       TEXT NOT NULL,
    statement    TEXT NOT NULL,
    rule         TEXT NOT NULL,
    reviewers    TEXT NOT NULL DEFAULT '[]',
    quorum       BIGINT NOT NULL DEFAULT 1,
    requested_ns BIGINT NOT NULL,
    deadline_ns  BIGINT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    decided_ns   BIGINT
);
CREATE INDEX approvals_state ON approvals (state, requested_ns);

CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approvals (id),
    reviewer    TEXT NOT NULL,
    approve     BOOLEAN NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    time_ns     BIGINT NOT NULL,
    PRIMARY KEY (approval_id, reviewer)
);

CREATE TABLE audit_records (
    host      TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    time_ns   BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    payload   TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (host, seq)
);
