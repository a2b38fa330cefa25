-- Brute-force protection, shared by every node: counted login failures and
-- bans of source addresses (an IPv4 address or an IPv6 /64).

CREATE TABLE auth_failures (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        BIGINT NOT NULL,
    source    TEXT NOT NULL,
    user_name TEXT,
    reason    TEXT NOT NULL
);
CREATE INDEX auth_failures_source ON auth_failures (source, at);
CREATE INDEX auth_failures_user ON auth_failures (user_name, at);
CREATE INDEX auth_failures_at ON auth_failures (at);

CREATE TABLE bans (
    source     TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    until      BIGINT NOT NULL,
    failures   BIGINT NOT NULL,
    node       TEXT NOT NULL
);
CREATE INDEX bans_until ON bans (until);
