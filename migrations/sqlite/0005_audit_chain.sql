-- The tamper-evident audit trail (DESIGN.md §11, docs/AUDIT.md "The hash
-- chain"): each node's single writer numbers its events gaplessly from 1
-- (seq) and links each to the one before (prev_hash), hash being the hex
-- SHA-256 of the row's canonical encoding. Rows written before this
-- migration keep NULL here: they are outside the chain.

ALTER TABLE audit_events ADD COLUMN seq BIGINT;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT;
ALTER TABLE audit_events ADD COLUMN hash TEXT;
-- One row per (node, seq); NULLs (rows before the chain) do not collide.
CREATE UNIQUE INDEX audit_events_chain ON audit_events (node, seq);
