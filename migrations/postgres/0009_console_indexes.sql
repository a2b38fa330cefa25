-- The review console's pages (docs/CONSOLE.md, docs/BENCHMARKS.md "Review
-- console"): without these, each of them read a whole table.
--
-- A session's timeline and a recording's file operations: the audit rows
-- of one connection (was a sequential scan of audit_events).
CREATE INDEX audit_events_connection ON audit_events (connection_id, at);
-- The audit trail filtered by user, newest first (was a backward walk of
-- audit_events_at past every other user's rows).
CREATE INDEX audit_events_user ON audit_events (user_name, at);
-- The Now page: connections still open, newest first (was a sequential
-- scan of connections).
CREATE INDEX connections_open ON connections (opened_at) WHERE closed_at IS NULL;
-- The source filter (an ip:port, or an address: the range of sources
-- from "ip:" to "ip;"), compared byte by byte (COLLATE "C") as src/audit/query.rs
-- asks (was a walk of each table by time, to its end for a rare address).
CREATE INDEX forwards_source ON forwards ((source COLLATE "C"), started_at);
CREATE INDEX audit_events_source ON audit_events ((source COLLATE "C"), at);
