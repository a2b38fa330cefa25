-- Recorded targets (DESIGN.md §10): how a forward was carried. "forward":
-- bytes relayed as they are; "record": portvakt ended the engineer's SSH
-- connection itself, logged in to the target and recorded the sessions
-- (recordings.session_id is this row's id).
ALTER TABLE forwards ADD COLUMN mode TEXT NOT NULL DEFAULT 'forward';
