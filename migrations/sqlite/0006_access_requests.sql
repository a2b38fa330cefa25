-- Access requests (DESIGN.md §13): a user asks for a request-only target for
-- a while; approvers decide. state: pending | approved | denied | expired |
-- revoked. An approved request is usable from window_start to window_end.
-- Every change is a conditional UPDATE (WHERE state = ...), so two nodes
-- deciding at once cannot both win.

CREATE TABLE access_requests (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_name        TEXT NOT NULL,
    target           TEXT NOT NULL,
    duration_seconds BIGINT NOT NULL,
    reason           TEXT NOT NULL,
    state            TEXT NOT NULL,
    approvals_needed BIGINT NOT NULL,
    node             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    pending_until    BIGINT NOT NULL,
    decided_by       TEXT,
    decided_at       BIGINT,
    decision_reason  TEXT,
    window_start     BIGINT,
    window_end       BIGINT,
    revoked_at       BIGINT
);
CREATE INDEX access_requests_user ON access_requests (user_name, state);
CREATE INDEX access_requests_pending ON access_requests (state, pending_until);
CREATE INDEX access_requests_revoked_at ON access_requests (revoked_at);

-- One row per approver of a request: the key refuses a second approval by
-- the same person.
CREATE TABLE access_approvals (
    request_id BIGINT NOT NULL,
    approver   TEXT NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);

-- The request whose window allowed a forward.
ALTER TABLE forwards ADD COLUMN request_id BIGINT;
