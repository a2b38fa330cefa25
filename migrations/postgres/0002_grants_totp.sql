-- Login grants (time-limited, bound to an SSH key) and TOTP secrets.

CREATE TABLE grants (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_name       TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    groups          TEXT NOT NULL,
    method          TEXT NOT NULL,
    node            TEXT NOT NULL,
    source          TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    revoked_reason  TEXT
);
CREATE INDEX grants_lookup ON grants (user_name, key_fingerprint, expires_at);
CREATE INDEX grants_revoked_at ON grants (revoked_at);

-- secret: base64 of nonce || AES-256-GCM(secret), the user name as
-- associated data. last_step: the newest accepted TOTP step (replay guard,
-- atomic across nodes).
CREATE TABLE totp_secrets (
    user_name  TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_step  BIGINT NOT NULL DEFAULT 0
);
