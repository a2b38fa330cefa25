-- Wrong TOTP codes per user, shared by every node: past the limit within the
-- window, the user's TOTP step is locked until `until` (portvakt lockout
-- clear --user lifts it).

CREATE TABLE user_lockouts (
    user_name    TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    until        BIGINT,
    node         TEXT NOT NULL
);
