-- The review console's data set for bench/run's console section
-- (bench/console.py): psql -v sessions=N -v events=M -v start=MICROS
-- -v span=MICROS -v now=MICROS -v chunk=HEX -v chunk_bytes=N -v chunk_sha=HEX
-- on a database that portvakt's migrations created and nothing wrote yet.
--
-- :sessions forwards ("sessions"), each in a connection of its own, spread
-- evenly over :span microseconds from :start; the newest 20 allowed ones
-- still open. Users (500), targets (200) and sources are skewed, results
-- are 90 % allowed, 8 % denied, 2 % failed; the forwards to every 20th
-- target are recorded (mode "record", a recording with one chunk each).
-- Then audit_events gets exactly :events rows: each connection's events
-- as the server writes them (connection.open, auth.success,
-- forward.open/.close or forward.denied, connection.close; recording.start
-- and .end, file.op), grant.create for the grants, and as many failed
-- logins (connection.open, auth.failure x2, connection.close) as fill the
-- rest. Audit rows are outside the hash chain (seq NULL): verifying the
-- chain is the audit section's business. Row ids ascend with time, as
-- they do when a server writes them.

\set ON_ERROR_STOP 1
SET synchronous_commit = off;
SELECT setseed(0.14) \gset

CREATE TEMP TABLE s AS
SELECT i,
       lpad(to_hex(i), 16, '0') AS cid,
       'bench-' || (1 + i % 3) AS node,
       floor(500 * power(random(), 2))::int AS u,
       floor(200 * power(random(), 1.5))::int AS t,
       random() AS r_result,
       random() AS r_method,
       (:start + floor((i - random()) * (:span::float8 / :sessions)))::bigint AS started_at,
       floor(1e6 * (0.5 + 3600 * power(random(), 3)))::bigint AS duration
FROM generate_series(1, :sessions) AS i;

CREATE TEMP TABLE f AS
SELECT s.i, s.cid, s.node, 'user' || s.u AS user_name,
       CASE WHEN s.r_method < 0.6 THEN 'certificate' WHEN s.r_method < 0.9 THEN 'oidc'
            ELSE 'publickey' END AS auth_method,
       '10.' || (s.u % 50) || '.' || (s.u / 50) || '.' || (1 + s.i % 200) || ':'
           || (30000 + s.i % 30000) AS source,
       CASE s.t % 4 WHEN 0 THEN 'db-' WHEN 1 THEN 'web-' WHEN 2 THEN 'cache-' ELSE 'build-' END
           || s.t AS target,
       '10.200.' || (s.t / 100) || '.' || (1 + s.t % 100) AS host,
       CASE WHEN s.t % 4 = 0 THEN 5432 ELSE 22 END AS port,
       CASE WHEN s.r_result < 0.90 THEN 'allowed' WHEN s.r_result < 0.98 THEN 'denied'
            ELSE 'failed' END AS result,
       s.started_at,
       s.duration,
       s.t % 20 = 0 AND s.r_result < 0.90 AS recorded
FROM s;
-- The newest allowed forwards are still open.
ALTER TABLE f ADD COLUMN open boolean NOT NULL DEFAULT false;
UPDATE f SET open = true WHERE i IN
    (SELECT i FROM f WHERE result = 'allowed' ORDER BY i DESC LIMIT 20);

INSERT INTO connections (id, node, source, client_version, user_name, auth_method, opened_at,
                         authenticated_at, closed_at, close_reason)
SELECT cid, node, source, 'SSH-2.0-OpenSSH_9.' || (i % 8) || 'p1', user_name, auth_method,
       started_at - 300000, started_at - 100000,
       CASE WHEN open THEN NULL WHEN result = 'allowed' THEN started_at + duration + 1000
            ELSE started_at + 2000 END,
       CASE WHEN open THEN NULL ELSE 'client_closed' END
FROM f ORDER BY i;

INSERT INTO forwards (connection_id, node, user_name, auth_method, source, target, host, port,
                      address, result, reason, started_at, ended_at, bytes_to_target,
                      bytes_from_target, close_reason, mode)
SELECT cid, node, user_name, auth_method, source, target, host, port,
       CASE WHEN result = 'denied' THEN NULL ELSE host || ':' || port END,
       result,
       CASE result WHEN 'denied' THEN 'not_allowed' WHEN 'failed' THEN 'connect_refused' END,
       started_at,
       CASE WHEN open THEN NULL WHEN result = 'allowed' THEN started_at + duration
            ELSE started_at END,
       CASE WHEN result = 'allowed' THEN (i::bigint * 7919) % 500000 ELSE 0 END,
       CASE WHEN result = 'allowed' THEN (i::bigint * 104729) % 5000000 ELSE 0 END,
       CASE WHEN result = 'allowed' AND NOT open THEN 'client_closed' END,
       CASE WHEN recorded THEN 'record' ELSE 'forward' END
FROM f ORDER BY i;

-- The forward's id, for recordings and details.
CREATE TEMP TABLE fid AS SELECT id, connection_id FROM forwards;
CREATE INDEX ON fid (connection_id);

INSERT INTO recordings (node, connection_id, session_id, channel, user_name, target, login, kind,
                        command, term, width, height, started_at, ended_at, bytes, sha256,
                        truncated, exit_status, chunks)
SELECT f.node, f.cid, fid.id, 0, f.user_name, f.target, 'deploy',
       CASE WHEN f.i % 3 = 0 THEN 'exec' ELSE 'shell' END,
       CASE WHEN f.i % 3 = 0 THEN 'systemctl status app' END,
       'xterm-256color', 120, 40, f.started_at + 50000,
       CASE WHEN f.open THEN NULL ELSE f.started_at + f.duration - 1000 END,
       :chunk_bytes, CASE WHEN f.open THEN NULL ELSE :'chunk_sha' END, 0,
       CASE WHEN f.open THEN NULL ELSE 0 END, 1
FROM f JOIN fid ON fid.connection_id = f.cid
WHERE f.recorded ORDER BY f.i;

INSERT INTO recording_chunks (recording_id, seq, data, raw_bytes)
SELECT id, 0, decode(:'chunk', 'hex'), :chunk_bytes FROM recordings;

-- Grants: one per 20 sessions, 8 hours each; the newest still valid.
INSERT INTO grants (user_name, key_fingerprint, groups, method, node, source, created_at,
                    expires_at, revoked_at, revoked_reason)
SELECT user_name, 'SHA256:' || md5(cid), '["dev"]', 'oidc', node, source, started_at - 200000,
       CASE WHEN i > :sessions - 200 THEN :now + 8 * 3600000000::bigint
            ELSE started_at + 8 * 3600000000::bigint END,
       CASE WHEN i % 97 = 0 THEN started_at + 60000000 END,
       CASE WHEN i % 97 = 0 THEN 'revoked_by_admin' END
FROM f WHERE i % 20 = 0 ORDER BY i;

-- Lockouts: bans (the last few still in force) and TOTP-locked users.
INSERT INTO bans (source, created_at, until, failures, node)
SELECT '203.0.113.' || i, :now - (500 - i) * 3600000000::bigint,
       CASE WHEN i > 490 THEN :now + 3600000000::bigint ELSE :now - (499 - i) * 3600000000::bigint END,
       10, 'bench-1'
FROM generate_series(1, 250) AS i;
INSERT INTO user_lockouts (user_name, failures, window_start, until, node)
SELECT 'user' || (400 + i), 5, :now - 600000000, :now + 900000000, 'bench-2'
FROM generate_series(1, 5) AS i;

-- Access requests.
INSERT INTO access_requests (user_name, target, duration_seconds, reason, state,
                             approvals_needed, node, created_at, pending_until, decided_by,
                             decided_at, window_start, window_end)
SELECT user_name, target, 3600, 'ticket OPS-' || i, CASE WHEN i % 5 = 0 THEN 'denied'
       ELSE 'expired' END, 1, node, started_at, started_at + 3600000000, 'user1',
       started_at + 60000000, started_at + 60000000, started_at + 3660000000
FROM f WHERE i % 50 = 0 ORDER BY i;

-- The audit trail.
CREATE TEMP TABLE ev (at bigint, kind text, node text, connection_id text, user_name text,
                      source text, reason text, detail text);

INSERT INTO ev
SELECT started_at - 300000, 'connection.open', node, cid, NULL, source, NULL, '{}' FROM f
UNION ALL
SELECT started_at - 100000, 'auth.success', node, cid, user_name, source, NULL,
       json_build_object('method', auth_method, 'login_seconds', 0.2,
                         'key_fingerprint', 'SHA256:' || md5(user_name))::text FROM f
UNION ALL
SELECT started_at, CASE WHEN result = 'denied' THEN 'forward.denied' ELSE 'forward.open' END,
       node, cid, user_name, source, CASE WHEN result = 'denied' THEN 'not_allowed' END,
       json_build_object('target', target, 'host', host, 'port', port,
                         'forward_id', i)::text FROM f
UNION ALL
SELECT started_at + CASE WHEN result = 'allowed' THEN duration ELSE 1000 END, 'forward.close',
       node, cid, user_name, source,
       CASE WHEN result = 'allowed' THEN 'client_closed' ELSE 'connect_refused' END,
       json_build_object('target', target, 'host', host, 'port', port, 'forward_id', i,
                         'bytes_to_target', (i::bigint * 7919) % 500000,
                         'bytes_from_target', (i::bigint * 104729) % 5000000)::text
FROM f WHERE result <> 'denied' AND NOT open
UNION ALL
SELECT CASE WHEN result = 'allowed' THEN started_at + duration + 1000 ELSE started_at + 2000 END,
       'connection.close', node, cid, user_name, source, 'client_closed',
       json_build_object('client_version', 'SSH-2.0-OpenSSH_9.' || (i % 8) || 'p1')::text
FROM f WHERE NOT open
UNION ALL
SELECT r.started_at, 'recording.start', r.node, r.connection_id, r.user_name, NULL, NULL,
       json_build_object('recording_id', r.id, 'session_id', r.session_id, 'kind', r.kind,
                         'login', r.login, 'target', r.target)::text FROM recordings r
UNION ALL
SELECT r.started_at + 2000000, 'file.op', r.node, r.connection_id, r.user_name, NULL, NULL,
       json_build_object('recording_id', r.id, 'session_id', r.session_id, 'op', 'write',
                         'path', '/srv/app/config.yml', 'bytes', 1234)::text
FROM recordings r WHERE r.id % 4 = 0
UNION ALL
SELECT r.ended_at, 'recording.end', r.node, r.connection_id, r.user_name, NULL, NULL,
       json_build_object('recording_id', r.id, 'bytes', r.bytes, 'sha256', r.sha256)::text
FROM recordings r WHERE r.ended_at IS NOT NULL
UNION ALL
SELECT g.created_at, 'grant.create', g.node, NULL, g.user_name, g.source, NULL,
       json_build_object('grant_id', g.id, 'key_fingerprint', g.key_fingerprint,
                         'expires_at', g.expires_at)::text FROM grants g;

SELECT :events - count(*) AS failed_events FROM ev \gset
SELECT greatest(0, ceil(:failed_events / 4.0))::int AS failed_logins \gset

-- Failed logins fill the rest, spread over the same weeks (a connection of
-- their own each, in connections too).
CREATE TEMP TABLE fl AS
SELECT j, lpad(to_hex(:sessions + j), 16, '0') AS cid, 'bench-' || (1 + j % 3) AS node,
       CASE WHEN j % 3 = 0 THEN 'root' ELSE 'user' || floor(500 * power(random(), 2))::int END
           AS user_name,
       '198.51.' || (j % 100) || '.' || (1 + j % 250) || ':' || (20000 + j % 40000) AS source,
       (:start + floor((j - random()) * (:span::float8 / greatest(:failed_logins, 1))))::bigint
           AS at
FROM generate_series(1, :failed_logins) AS j;

INSERT INTO connections (id, node, source, client_version, user_name, auth_method, opened_at,
                         authenticated_at, closed_at, close_reason)
SELECT cid, node, source, 'SSH-2.0-Go', NULL, NULL, at, NULL, at + 3000000, 'too_many_attempts'
FROM fl ORDER BY j;

INSERT INTO ev
SELECT at, kind, node, cid, u, source, reason, detail FROM (
    SELECT j, 0 AS k, at, 'connection.open' AS kind, node, cid, NULL AS u, source, NULL AS reason,
           '{}' AS detail FROM fl
    UNION ALL
    SELECT j, 1, at + 1000000, 'auth.failure', node, cid, user_name, source, 'publickey',
           json_build_object('method', 'publickey')::text FROM fl
    UNION ALL
    SELECT j, 2, at + 2000000, 'auth.failure', node, cid, user_name, source, 'password',
           json_build_object('method', 'password')::text FROM fl
    UNION ALL
    SELECT j, 3, at + 3000000, 'connection.close', node, cid, user_name, source,
           'too_many_attempts', '{}' FROM fl
    ORDER BY j, k LIMIT greatest(:failed_events, 0)
) x;

INSERT INTO audit_events (at, kind, node, connection_id, user_name, source, reason, detail)
SELECT at, kind, node, connection_id, user_name, source, reason, detail FROM ev ORDER BY at;

VACUUM ANALYZE;
