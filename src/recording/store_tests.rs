//! Recordings stored and read back, on SQLite and on PostgreSQL.

use super::*;
use crate::audit::tests::on_each_store;
use crate::recording::cast;

fn meta(user: &str, target: &str, session_id: i64) -> Meta {
    Meta {
        node: "node-a".into(),
        connection_id: format!("conn-{session_id}"),
        session_id,
        channel: 0,
        user: user.into(),
        target: target.into(),
        login: "root".into(),
        kind: Kind::Shell,
        command: None,
        term: Some("xterm-256color".into()),
        width: 80,
        height: 24,
    }
}

const SETTINGS: Settings = Settings {
    max_bytes: 1 << 20,
    input: false,
};

async fn sql(store: &Store, text: &str) {
    sqlx::query(sqlx::AssertSqlSafe(text.to_string()))
        .execute(store.pool())
        .await
        .unwrap();
}

fn events(content: &Content) -> Vec<cast::Event> {
    let text = std::str::from_utf8(&content.bytes).unwrap();
    cast::parse(text).unwrap().1
}

#[test]
fn kinds_have_stable_names() {
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.as_str()), Some(k));
        assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
    }
    assert_eq!(Kind::parse("x11"), None);
}

#[tokio::test]
async fn a_recording_round_trips_with_its_sha256() {
    on_each_store(|store| async move {
        let mut m = meta("alice", "db-1", 7);
        m.kind = Kind::Exec;
        m.command = Some("uptime".into());
        let mut r = Recorder::start(store.clone(), m, SETTINGS).await.unwrap();
        let id = r.id();
        let open = get(&store, id).await.unwrap().unwrap();
        assert_eq!(
            (open.ended_at.as_deref(), open.sha256.as_deref()),
            (None, None)
        );
        assert_eq!(
            (open.kind, open.command.as_deref()),
            (Kind::Exec, Some("uptime"))
        );

        let euro = "€".as_bytes();
        assert!(!r.output(&[b'a', euro[0]]));
        assert!(!r.output(&euro[1..]));
        assert!(!r.input(b"secret\r"), "input is off");
        r.flush().await.unwrap();
        assert!(!r.resize(100, 30));
        assert!(!r.output(b"\x1b[0m\"done\"\r\n"));
        let summary = r.finish(Some(3)).await.unwrap();

        let c = content(&store, id).await.unwrap();
        assert_eq!(c.sha256_ok, Some(true));
        assert_eq!((summary.id, summary.sha256.clone()), (id, c.sha256.clone()));
        // Stored as frames (the terminal's bytes as they came), read as
        // asciicast; the SHA-256 and the size are those of what is stored.
        let st = stored(&store, id).await.unwrap();
        assert!(st.bytes.starts_with(frames::MAGIC));
        // The terminal's bytes as they came, a character cut across two
        // messages included.
        let has = |piece: &[u8]| st.bytes.windows(piece.len()).any(|w| w == piece);
        assert!(has(&[b'a', euro[0]]) && has(&euro[1..]) && has(b"\x1b[0m\"done\"\r\n"));
        assert_eq!(
            (st.sha256.as_str(), st.sha256_ok),
            (c.sha256.as_str(), Some(true))
        );
        assert_eq!(summary.bytes, st.bytes.len() as u64);
        assert_eq!((summary.truncated, summary.exit_status), (false, Some(3)));
        let text = std::str::from_utf8(&c.bytes).unwrap();
        let (header, _) = cast::parse(text).unwrap();
        assert_eq!(header["command"], "uptime");
        assert_eq!(header["env"]["TERM"], "xterm-256color");
        let ev = events(&c);
        let seen: Vec<(&str, &str)> = ev
            .iter()
            .map(|e| (e.code.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("o", "a"),
                ("o", "€"),
                ("r", "100x30"),
                ("o", "\x1b[0m\"done\"\r\n")
            ]
        );
        assert!(ev.windows(2).all(|w| w[0].time <= w[1].time));

        let row = get(&store, id).await.unwrap().unwrap();
        assert_eq!(row.sha256.as_deref(), Some(summary.sha256.as_str()));
        assert_eq!((row.bytes, row.chunks), (st.bytes.len() as i64, 2));
        assert_eq!((row.exit_status, row.truncated), (Some(3), false));
        assert!(row.ended_at.is_some() && row.duration_seconds.is_some());
        assert_eq!((row.user.as_str(), row.login.as_str()), ("alice", "root"));
        assert_eq!((row.session_id, row.connection_id.as_str()), (7, "conn-7"));
    })
    .await;
}

#[tokio::test]
async fn input_is_recorded_when_asked_for() {
    on_each_store(|store| async move {
        let settings = Settings {
            input: true,
            ..SETTINGS
        };
        let mut r = Recorder::start(store.clone(), meta("bob", "web", 1), settings)
            .await
            .unwrap();
        let id = r.id();
        r.input(b"ls\r");
        r.output(b"file\r\n");
        r.finish(None).await.unwrap();
        let c = content(&store, id).await.unwrap();
        let codes: Vec<String> = events(&c).into_iter().map(|e| e.code).collect();
        assert_eq!(codes, ["i", "o"]);
        assert_eq!(get(&store, id).await.unwrap().unwrap().exit_status, None);
    })
    .await;
}

#[tokio::test]
async fn large_output_is_stored_in_several_chunks() {
    on_each_store(|store| async move {
        let settings = Settings {
            max_bytes: 64 << 20,
            ..SETTINGS
        };
        let mut r = Recorder::start(store.clone(), meta("alice", "db-1", 2), settings)
            .await
            .unwrap();
        let id = r.id();
        let piece = vec![b'x'; 8 * 1024];
        let mut flushes = 0;
        for _ in 0..320 {
            r.output(&piece);
            if r.wants_flush() {
                r.flush().await.unwrap();
                flushes += 1;
            }
        }
        assert!(flushes >= 2, "{flushes}");
        r.settle().await.unwrap();
        let bytes_so_far = get(&store, id).await.unwrap().unwrap().bytes;
        assert!(bytes_so_far >= 2 * FLUSH_BYTES as i64);
        let s = r.finish(Some(0)).await.unwrap();
        let st = stored(&store, id).await.unwrap();
        assert_eq!((st.sha256_ok, st.bytes.len() as u64), (Some(true), s.bytes));
        let c = content(&store, id).await.unwrap();
        let out: usize = events(&c).iter().map(|e| e.data.len()).sum();
        assert_eq!(out, 320 * piece.len());
        assert_eq!(get(&store, id).await.unwrap().unwrap().chunks, flushes + 1);
    })
    .await;
}

#[tokio::test]
async fn output_past_max_bytes_is_dropped_and_marked_truncated() {
    on_each_store(|store| async move {
        // Room for the header, four frames of 16 bytes and the end frame.
        let probe = Recorder::start(store.clone(), meta("alice", "db-1", 3), SETTINGS)
            .await
            .unwrap();
        let header = probe.bytes;
        let settings = Settings {
            max_bytes: header + 80,
            input: false,
        };
        let mut r = Recorder::start(store.clone(), meta("alice", "db-1", 3), settings)
            .await
            .unwrap();
        let id = r.id();
        let mut reached = Vec::new();
        for _ in 0..6 {
            reached.push(r.output(b"abc"));
        }
        assert_eq!(reached.iter().filter(|t| **t).count(), 1, "{reached:?}");
        assert!(r.truncated());
        assert!(!r.resize(1, 1) && !r.output(b"later"));
        let s = r.finish(Some(0)).await.unwrap();
        assert!(s.truncated && s.bytes <= header + 80);
        let st = stored(&store, id).await.unwrap();
        assert_eq!((st.sha256_ok, st.bytes.len() as u64), (Some(true), s.bytes));
        let c = content(&store, id).await.unwrap();
        let kept = events(&c).len();
        assert_eq!(kept, reached.iter().position(|t| *t).unwrap());
        assert!(get(&store, id).await.unwrap().unwrap().truncated);
    })
    .await;
}

#[tokio::test]
async fn changed_or_missing_content_is_noticed() {
    on_each_store(|store| async move {
        assert!(matches!(
            content(&store, 999).await,
            Err(ContentError::NotFound(999))
        ));
        assert_eq!(get(&store, 999).await.unwrap(), None);

        let mut r = Recorder::start(store.clone(), meta("alice", "db-1", 4), SETTINGS)
            .await
            .unwrap();
        let id = r.id();
        r.output(b"one");
        r.flush().await.unwrap();
        r.output(b"two");
        r.flush().await.unwrap();
        // Not finished yet: readable, nothing to check against.
        let open = content(&store, id).await.unwrap();
        assert_eq!(open.sha256_ok, None);
        r.finish(None).await.unwrap();

        sql(
            &store,
            &format!("UPDATE recordings SET sha256 = 'ab' WHERE id = {id}"),
        )
        .await;
        assert_eq!(content(&store, id).await.unwrap().sha256_ok, Some(false));

        let other = lz4_flex::block::compress(b"[0.1, \"o\", \"forged\"]\n");
        // Another LZ4 block (the small chunk itself was stored as it is).
        sqlx::query(
            "UPDATE recording_chunks SET data = $1, codec = 'lz4' \
             WHERE recording_id = $2 AND seq = 1",
        )
        .bind(other)
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
        assert!(matches!(
            content(&store, id).await,
            Err(ContentError::Corrupt { seq: 1, .. })
        ));
        sqlx::query("UPDATE recording_chunks SET data = $1 WHERE recording_id = $2 AND seq = 1")
            .bind(b"\xff\xff not lz4".to_vec())
            .bind(id)
            .execute(store.pool())
            .await
            .unwrap();
        assert!(matches!(
            content(&store, id).await,
            Err(ContentError::Corrupt { seq: 1, .. })
        ));
        for seq in [1, 0] {
            sql(
                &store,
                &format!("DELETE FROM recording_chunks WHERE recording_id = {id} AND seq = {seq}"),
            )
            .await;
            let e = content(&store, id).await;
            assert!(
                matches!(e, Err(ContentError::Corrupt { seq: 0 | 1, .. })),
                "{e:?}"
            );
        }
    })
    .await;
}

#[test]
fn lz4_compresses_what_shrinks_and_keeps_the_rest_as_it_is() {
    let text =
        b"[0.5, \"o\", \"total 48\\r\\ndrwxr-xr-x 2 root root 4096 .\\r\\n\"]\n".repeat(2000);
    for sample in [true, false] {
        let (codec, data) = encode(&text, sample);
        assert_eq!(codec, Codec::Lz4);
        assert!(
            data.len() < text.len() / 4,
            "{} of {}",
            data.len(),
            text.len()
        );
        // Noise is stored as it is, whether LZ4 saw only its start or all.
        let noise = noise(200_000);
        assert_eq!(
            encode(&noise, sample),
            (Codec::None, Cow::Borrowed(&noise[..]))
        );
        // Shrinkable at the start only: LZ4 is tried on the whole, and
        // kept only where it saves.
        let mut mixed = text[..SAMPLE].to_vec();
        mixed.extend_from_slice(&noise);
        let (codec, data) = encode(&mixed, sample);
        assert_eq!(codec, Codec::Lz4);
        assert!(data.len() < mixed.len());
    }
    for c in [Codec::Lz4, Codec::None] {
        assert_eq!(Codec::parse(c.as_str()), Some(c));
    }
    assert_eq!(Codec::parse("zstd"), None);
}

/// Base64-like text of random bytes: JSON-safe, and nothing LZ4 can shrink.
fn noise(n: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ALPHABET[(seed >> 58) as usize]
        })
        .collect()
}

#[tokio::test]
async fn chunks_lz4_cannot_shrink_are_stored_as_they_are_and_read_back() {
    on_each_store(|store| async move {
        let settings = Settings {
            max_bytes: 64 << 20,
            input: false,
        };
        let mut r = Recorder::start(store.clone(), meta("alice", "db-1", 9), settings)
            .await
            .unwrap();
        let id = r.id();
        for piece in noise(40 << 15).chunks(32 << 10) {
            r.output(piece);
        }
        r.flush().await.unwrap();
        for _ in 0..40 {
            r.output(&b"build step ok\r\n".repeat(2000));
        }
        r.flush().await.unwrap();
        let summary = r.finish(Some(0)).await.unwrap();
        let rows = sqlx::query(
            "SELECT codec, CAST(length(data) AS BIGINT) AS stored, raw_bytes FROM recording_chunks \
             WHERE recording_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(store.pool())
        .await
        .unwrap();
        let rows: Vec<(String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get("codec").unwrap(),
                    r.try_get("stored").unwrap(),
                    r.try_get("raw_bytes").unwrap(),
                )
            })
            .collect();
        assert!(rows.len() >= 2, "{rows:?}");
        let (codec, stored, raw) = &rows[0];
        assert_eq!((codec.as_str(), stored), ("none", raw), "{rows:?}");
        let (codec, stored, raw) = &rows[1];
        assert!(codec == "lz4" && stored * 4 < *raw, "{rows:?}");
        let c = content(&store, id).await.unwrap();
        assert_eq!(c.sha256_ok, Some(true));
        assert_eq!(super::stored(&store, id).await.unwrap().bytes.len() as u64, summary.bytes);
        let text = events(&c).into_iter().map(|e| e.data).collect::<String>();
        assert!(text.starts_with(std::str::from_utf8(&noise(64)).unwrap()));
        assert!(text.ends_with("build step ok\r\n"));

        // A stored chunk of another size, or a codec no writer makes, is
        // reported, not guessed at.
        sql(
            &store,
            &format!(
                "UPDATE recording_chunks SET raw_bytes = raw_bytes + 1 \
                 WHERE recording_id = {id} AND seq = 0"
            ),
        )
        .await;
        assert!(matches!(
            content(&store, id).await,
            Err(ContentError::Corrupt { seq: 0, .. })
        ));
        sql(
            &store,
            &format!(
                "UPDATE recording_chunks SET raw_bytes = raw_bytes - 1, codec = 'zstd' \
                 WHERE recording_id = {id} AND seq = 0"
            ),
        )
        .await;
        let e = content(&store, id).await;
        assert!(
            matches!(&e, Err(ContentError::Corrupt { seq: 0, problem, .. }) if problem.contains("zstd")),
            "{e:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn list_filters_by_user_target_time_and_session() {
    on_each_store(|store| async move {
        let mut ids = Vec::new();
        for (user, target, session) in [
            ("alice", "db-1", 10),
            ("bob", "db-1", 11),
            ("alice", "web", 12),
        ] {
            let r = Recorder::start(store.clone(), meta(user, target, session), SETTINGS)
                .await
                .unwrap();
            ids.push(r.id());
            r.finish(Some(0)).await.unwrap();
        }
        // Spread the start times: the first an hour ago.
        let hour_ago = now_micros() - 3_600_000_000;
        sql(
            &store,
            &format!(
                "UPDATE recordings SET started_at = {hour_ago} WHERE id = {}",
                ids[0]
            ),
        )
        .await;
        let of = |f: Filter| {
            let store = store.clone();
            async move {
                list(&store, &f)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(of(Filter::default()).await, [ids[2], ids[1], ids[0]]);
        let alice = |f: Filter| Filter {
            user: Some("alice".into()),
            ..f
        };
        assert_eq!(of(alice(Filter::default())).await, [ids[2], ids[0]]);
        let db1 = Filter {
            target: Some("db-1".into()),
            ..Default::default()
        };
        assert_eq!(of(db1.clone()).await, [ids[1], ids[0]]);
        assert_eq!(of(alice(db1)).await, [ids[0]]);
        let recent = Filter {
            since: Some(hour_ago + 1),
            ..Default::default()
        };
        assert_eq!(of(recent).await, [ids[2], ids[1]]);
        let session = Filter {
            session_id: Some(11),
            ..Default::default()
        };
        assert_eq!(of(session).await, [ids[1]]);
        let limited = Filter {
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(of(limited).await, [ids[2]]);

        let json =
            serde_json::to_value(&list(&store, &Filter::default()).await.unwrap()[0]).unwrap();
        for key in [
            "id",
            "connection_id",
            "session_id",
            "user",
            "target",
            "login",
            "kind",
            "command",
            "started_at",
            "ended_at",
            "bytes",
            "sha256",
            "truncated",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["kind"], "shell");
        assert_eq!(json["truncated"], false);
        assert!(json["started_at"].as_str().unwrap().ends_with('Z'));
    })
    .await;
}

#[tokio::test]
async fn the_clients_command_and_term_are_stored_cleaned() {
    on_each_store(|store| async move {
        let mut m = meta("alice", "db-1", 5);
        m.kind = Kind::Exec;
        m.command = Some(format!("echo \0\x1b[2J{}", "x".repeat(2 * COMMAND_MAX)));
        m.term = Some("xterm\u{202E}".into());
        let r = Recorder::start(store.clone(), m, SETTINGS).await.unwrap();
        let id = r.id();
        r.finish(Some(0)).await.unwrap();
        let row = get(&store, id).await.unwrap().unwrap();
        let command = row.command.unwrap();
        assert!(
            command.starts_with("echo \u{FFFD}\u{FFFD}[2J"),
            "{command:?}"
        );
        assert_eq!(command.chars().count(), COMMAND_MAX);
        assert_eq!(row.term.as_deref(), Some("xterm\u{FFFD}"));
        let c = content(&store, id).await.unwrap();
        let (header, _) = cast::parse(std::str::from_utf8(&c.bytes).unwrap()).unwrap();
        assert_eq!(header["command"].as_str(), Some(command.as_str()));
    })
    .await;
}

/// The session's task owns its recorder: it and its futures are `Send`.
#[tokio::test]
async fn a_recorder_moves_into_a_spawned_task() {
    on_each_store(|store| async move {
        let mut r = Recorder::start(store.clone(), meta("alice", "db-1", 6), SETTINGS)
            .await
            .unwrap();
        let summary = tokio::spawn(async move {
            r.output(b"hi");
            r.flush().await.unwrap();
            r.finish(Some(0)).await.unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            content(&store, summary.id).await.unwrap().sha256_ok,
            Some(true)
        );
    })
    .await;
}

#[tokio::test]
async fn retention_deletes_old_recordings_but_not_those_the_audit_trail_still_names() {
    on_each_store(|store| async move {
        let mut ids = Vec::new();
        for session in 1..=4 {
            let mut r = Recorder::start(store.clone(), meta("alice", "db-1", session), SETTINGS)
                .await
                .unwrap();
            r.output(b"hello\r\n");
            ids.push(r.id());
            if session == 4 {
                // Left unended (a crash), its forward still open.
                r.flush().await.unwrap();
                r.settle().await.unwrap();
                continue;
            }
            r.finish(Some(0)).await.unwrap();
        }
        let (old, named, recent, unended) = (ids[0], ids[1], ids[2], ids[3]);
        sql(&store, &format!("UPDATE recordings SET started_at = 1000, ended_at = 2000 WHERE id IN ({old}, {named})")).await;
        sql(&store, &format!("UPDATE recordings SET started_at = 1000 WHERE id = {unended}")).await;
        sql(
            &store,
            "INSERT INTO forwards (connection_id, user_name, auth_method, source, host, port, result, started_at, node) \
             VALUES ('conn-4', 'alice', 'certificate', '127.0.0.1:1', 'db-1', 22, 'allowed', 1000, 'node-a')",
        )
        .await;
        let forward: i64 = sqlx::query("SELECT MAX(id) AS id FROM forwards")
            .fetch_one(store.pool())
            .await
            .unwrap()
            .try_get("id")
            .unwrap();
        sql(&store, &format!("UPDATE recordings SET session_id = {forward} WHERE id = {unended}")).await;
        // The recording.end of `named` is still in the audit trail.
        sql(
            &store,
            &format!(
                "INSERT INTO audit_events (at, kind, node, detail) VALUES (2000, 'recording.end', 'node-a', \
                 '{{\"recording_id\":{named},\"bytes\":1,\"sha256\":\"x\"}}')"
            ),
        )
        .await;

        assert_eq!(prune(&store, 1_000_000).await.unwrap(), 1);
        for (id, stays) in [(old, false), (named, true), (recent, true), (unended, true)] {
            assert_eq!(get(&store, id).await.unwrap().is_some(), stays, "recording {id}");
        }
        let chunks: i64 = sqlx::query("SELECT COUNT(*) AS n FROM recording_chunks WHERE recording_id = $1")
            .bind(old)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
        assert_eq!(chunks, 0, "the chunks go with the row");

        // Once the forward ended and the event is gone, both go.
        sql(&store, &format!("UPDATE forwards SET ended_at = 3000 WHERE id = {forward}")).await;
        sql(&store, "DELETE FROM audit_events WHERE kind = 'recording.end'").await;
        assert_eq!(prune(&store, 1_000_000).await.unwrap(), 2);
        assert!(get(&store, recent).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn a_prune_that_fails_keeps_everything_and_frees_the_write_lock() {
    on_each_store(|store| async move {
        let mut r = Recorder::start(store.clone(), meta("alice", "db-1", 1), SETTINGS)
            .await
            .unwrap();
        r.output(b"hello\r\n");
        let id = r.id();
        r.finish(Some(0)).await.unwrap();
        sql(
            &store,
            &format!("UPDATE recordings SET started_at = 1000, ended_at = 2000 WHERE id = {id}"),
        )
        .await;
        // The row's DELETE fails after its chunks' DELETE ran.
        match store.backend() {
            crate::store::Backend::Sqlite => {
                sql(
                    &store,
                    "CREATE TRIGGER keep_recordings BEFORE DELETE ON recordings \
                     BEGIN SELECT RAISE(ABORT, 'kept'); END",
                )
                .await;
            }
            crate::store::Backend::Postgres => {
                sql(
                    &store,
                    "CREATE FUNCTION keep_recordings() RETURNS trigger AS \
                     $$ BEGIN RAISE EXCEPTION 'kept'; END $$ LANGUAGE plpgsql",
                )
                .await;
                sql(
                    &store,
                    "CREATE TRIGGER keep_recordings BEFORE DELETE ON recordings \
                     FOR EACH ROW EXECUTE FUNCTION keep_recordings()",
                )
                .await;
            }
        }
        let err = prune(&store, 1_000_000).await.unwrap_err();
        assert!(err.to_string().contains("kept"), "{err}");
        if store.backend() == crate::store::Backend::Sqlite {
            // The failed transaction no longer holds the write lock: a
            // writer that does not wait gets it at once.
            let mut c = store.pool().acquire().await.unwrap();
            sqlx::query("PRAGMA busy_timeout = 0")
                .execute(&mut *c)
                .await
                .unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *c)
                .await
                .unwrap();
            sqlx::query("ROLLBACK").execute(&mut *c).await.unwrap();
            sqlx::query("PRAGMA busy_timeout = 5000")
                .execute(&mut *c)
                .await
                .unwrap();
        }
        // Nothing was lost: the chunks' DELETE was rolled back with it.
        let content = content(&store, id).await.unwrap();
        assert_eq!(content.sha256_ok, Some(true));
        assert_eq!(events(&content)[0].data, "hello\r\n");
    })
    .await;
}

#[tokio::test]
async fn postgres_does_not_compress_chunks_again() {
    on_each_store(|store| async move {
        let r = Recorder::start(store.clone(), meta("alice", "db-1", 1), SETTINGS)
            .await
            .unwrap();
        let id = r.id();
        // A chunk stored as it is, though pglz could shrink it (portvakt
        // stores as it is only what LZ4 cannot shrink; this is the
        // database's side alone).
        let raw = b"build step ok\r\n".repeat(20_000);
        let (result, _) = store_chunk(&store, id, 0, (raw.clone(), None, Codec::None), 0).await;
        result.unwrap();
        match store.backend() {
            crate::store::Backend::Postgres => {
                // NULL: stored as given (EXTERNAL), not compressed by
                // PostgreSQL (it would say 'pglz').
                let row = sqlx::query(
                    "SELECT CAST(pg_column_compression(data) AS TEXT) AS how, \
                     CAST(pg_column_size(data) AS BIGINT) AS size \
                     FROM recording_chunks WHERE recording_id = $1 AND seq = 0",
                )
                .bind(id)
                .fetch_one(store.pool())
                .await
                .unwrap();
                let how: Option<String> = row.try_get("how").unwrap();
                let size: i64 = row.try_get("size").unwrap();
                assert_eq!(how, None);
                assert!(size >= raw.len() as i64, "{size}");
            }
            // SQLite never compresses a BLOB.
            crate::store::Backend::Sqlite => {}
        }
        // And it reads back as it was stored.
        let stored: Vec<u8> =
            sqlx::query("SELECT data FROM recording_chunks WHERE recording_id = $1 AND seq = 0")
                .bind(id)
                .fetch_one(store.pool())
                .await
                .unwrap()
                .try_get("data")
                .unwrap();
        assert!(stored == raw);
        drop(r);
    })
    .await;
}
