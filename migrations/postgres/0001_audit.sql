-- Connections, forwards ("sessions") and audit events. Times are unix
-- microseconds (BIGINT) so that one query text serves SQLite and PostgreSQL.

CREATE TABLE connections (
    id               TEXT PRIMARY KEY,
    node             TEXT NOT NULL,
    source           TEXT NOT NULL,
    client_version   TEXT,
    user_name        TEXT,
    auth_method      TEXT,
    opened_at        BIGINT NOT NULL,
    authenticated_at BIGINT,
    closed_at        BIGINT,
    close_reason     TEXT
);
CREATE INDEX connections_opened_at ON connections (opened_at);

CREATE TABLE forwards (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connection_id     TEXT NOT NULL,
    node              TEXT NOT NULL,
    user_name         TEXT NOT NULL,
    auth_method       TEXT NOT NULL,
    source            TEXT NOT NULL,
    target            TEXT,
    host              TEXT NOT NULL,
    port              BIGINT NOT NULL,
    address           TEXT,
    result            TEXT NOT NULL,
    reason            TEXT,
    started_at        BIGINT NOT NULL,
    ended_at          BIGINT,
    bytes_to_target   BIGINT NOT NULL DEFAULT 0,
    bytes_from_target BIGINT NOT NULL DEFAULT 0,
    close_reason      TEXT
);
CREATE INDEX forwards_started_at ON forwards (started_at);
CREATE INDEX forwards_user ON forwards (user_name, started_at);
CREATE INDEX forwards_target ON forwards (target, started_at);
CREATE INDEX forwards_open ON forwards (ended_at) WHERE ended_at IS NULL;

CREATE TABLE audit_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    node          TEXT NOT NULL,
    connection_id TEXT,
    user_name     TEXT,
    source        TEXT,
    reason        TEXT,
    detail        TEXT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_kind ON audit_events (kind, at);
