-- Recorded targets (DESIGN.md §10): one row per recorded channel (a shell,
-- an exec, an sftp or scp session), its content an asciicast v2 file stored
-- as compressed chunks. bytes, sha256 and chunks describe the uncompressed
-- content; sha256 is set when the recording ends, bytes and chunks at every
-- stored chunk. truncated is 0 or 1 (max_bytes reached).

CREATE TABLE recordings (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node          TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    session_id    BIGINT NOT NULL,
    channel       BIGINT NOT NULL,
    user_name     TEXT NOT NULL,
    target        TEXT NOT NULL,
    login         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    command       TEXT,
    term          TEXT,
    width         BIGINT NOT NULL,
    height        BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    ended_at      BIGINT,
    bytes         BIGINT NOT NULL DEFAULT 0,
    sha256        TEXT,
    truncated     BIGINT NOT NULL DEFAULT 0,
    exit_status   BIGINT,
    chunks        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX recordings_started_at ON recordings (started_at);
CREATE INDEX recordings_user ON recordings (user_name, started_at);
CREATE INDEX recordings_target ON recordings (target, started_at);
CREATE INDEX recordings_session ON recordings (session_id);

-- The content, in order: seq 0, 1, ... Each chunk is an LZ4 block;
-- raw_bytes is its size uncompressed.
CREATE TABLE recording_chunks (
    recording_id BIGINT NOT NULL,
    seq          BIGINT NOT NULL,
    data         BYTEA NOT NULL,
    raw_bytes    BIGINT NOT NULL,
    PRIMARY KEY (recording_id, seq)
);
