//! `/recordings/ID`: one recording of a recorded target: the terminal
//! player (asciinema-player, see `player`) for shell and exec recordings,
//! and without JavaScript: who, where, what command, exit status, whether
//! the stored content still matches its SHA-256, its file operations, and
//! its terminal output as plain text (escape sequences and control
//! characters removed, then escaped like everything else). Opening it is a
//! `console.view`. `?format=cast` downloads the asciicast (made from the
//! stored frames, docs/RECORDING.md).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::layout::{self, or_dash};
use super::sessions::events_table;
use super::{ConsoleState, Viewer, error_page, export, internal, player};
use crate::audit::query::{self, EventFilter};
use crate::audit::{Event, EventKind};
use crate::recording::cast;
use crate::recording::store::{self as recordings, ContentError};

/// At most this much output is shown on the page (the download has all).
const SHOWN: usize = 1 << 20;

#[derive(Deserialize)]
pub struct RecordingQuery {
    format: Option<String>,
}

pub async fn page(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<i64>,
    Query(q): Query<RecordingQuery>,
) -> Response {
    let download = match q.format.as_deref() {
        None | Some("") | Some("html") => false,
        Some("cast") => true,
        Some(_) => return error_page(StatusCode::BAD_REQUEST, "format is cast"),
    };
    let rec = match recordings::get(&st.store, id).await {
        Ok(Some(r)) => r,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, "No such recording."),
        Err(e) => return internal(e).into_response(),
    };
    let content = match recordings::content(&st.store, id).await {
        Ok(c) => Ok(c),
        Err(ContentError::NotFound(_)) => {
            return error_page(StatusCode::NOT_FOUND, "No such recording.");
        }
        Err(e @ ContentError::Corrupt { .. }) => Err(e.to_string()),
        Err(e) => return internal(e).into_response(),
    };
    let mut ev = Event::new(EventKind::ConsoleView)
        .user(viewer.name.as_str())
        .detail(
            "page",
            if download {
                "recording_export"
            } else {
                "recording"
            },
        )
        .detail("recording_id", rec.id)
        .detail("session_id", rec.session_id)
        .detail("connection_id", rec.connection_id.as_str());
    ev.source = Some(viewer.source.to_string());
    if !st.record(ev).await {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The audit trail cannot be written right now; the recording is not shown.",
        );
    }
    if download {
        return match content {
            Ok(c) => (
                [
                    (header::CONTENT_TYPE, "application/x-asciicast".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"recording-{id}.cast\""),
                    ),
                ],
                c.bytes,
            )
                .into_response(),
            Err(e) => error_page(StatusCode::CONFLICT, &e),
        };
    }
    let file_ops = match query::events(
        &st.store,
        &EventFilter {
            connection_id: Some(rec.connection_id.clone()),
            kind: Some(EventKind::FileOp.as_str().to_string()),
            limit: Some(10_000),
            ..Default::default()
        },
    )
    .await
    {
        Ok(evs) => evs
            .into_iter()
            .filter(|e| e.detail["recording_id"].as_i64() == Some(rec.id))
            .collect::<Vec<_>>(),
        Err(e) => return internal(e).into_response(),
    };
    let (verdict, bad, output) = match &content {
        Ok(c) => {
            let verdict = match c.sha256_ok {
                Some(true) => "matches its SHA-256",
                Some(false) => "DOES NOT MATCH its SHA-256 (changed since it was recorded)",
                None => "not finished: no SHA-256 to check against yet",
            };
            (
                verdict.to_string(),
                c.sha256_ok == Some(false),
                output_text(&c.bytes),
            )
        }
        Err(e) => (format!("UNREADABLE: {e}"), true, None),
    };
    // Shell and exec recordings are terminal output; sftp and scp ones are
    // not worth replaying (their file operations are listed instead).
    let playable =
        matches!(rec.kind, recordings::Kind::Shell | recordings::Kind::Exec) && output.is_some();
    let body = html! {
        dl #summary {
            dt { "Session" } dd { a href={ "/sessions/" (rec.session_id) } { (rec.session_id) } }
            dt { "User" } dd.user { (rec.user) }
            dt { "Target" } dd { (rec.target) }
            dt { "Login" } dd { (rec.login) }
            dt { "Kind" } dd { (rec.kind.as_str()) }
            dt { "Command" } dd #command { code { (or_dash(&rec.command)) } }
            dt { "Exit status" } dd #exit-status { (export::opt(&rec.exit_status)) }
            dt { "Started" } dd { (rec.started_at) }
            dt { "Ended" } dd { (or_dash(&rec.ended_at)) }
            dt { "Bytes" } dd { (rec.bytes) @if rec.truncated { " (cut at max_bytes)" } }
            dt { "SHA-256" } dd { code { (or_dash(&rec.sha256)) } }
            dt { "Content" } dd #integrity class=(if bad { "bad" } else { "" }) { (verdict) }
            dt { "Node" } dd { (rec.node) }
        }
        p { a href={ "/recordings/" (rec.id) "?format=cast" } { "Download (asciicast v2)" }
            " · or replay it in a terminal: "
            code { "portvakt recordings play " (rec.id) } }
        @if playable {
            h2 { "Replay" }
            div #player data-cast-url={ "/recordings/" (rec.id) "?format=cast" } {}
        }
        @if !file_ops.is_empty() {
            h2 { "File operations" }
            (events_table("file-ops", &file_ops.iter().collect::<Vec<_>>()))
        }
        h2 { "Terminal output (plain text)" }
        @match &output {
            Some(text) => pre #output { (text) },
            None => p { "The content cannot be read as asciicast." },
        }
    };
    if !playable {
        return layout::page(&viewer, &format!("Recording {}", rec.id), None, body).into_response();
    }
    let head = html! {
        link rel="stylesheet" href=(player::stylesheet_url());
        script defer src=(player::script_url()) {}
        script defer src=(player::INIT_URL) {}
    };
    (
        [(header::CONTENT_SECURITY_POLICY, player::RECORDING_CSP)],
        layout::page_with_head(&viewer, &format!("Recording {}", rec.id), None, head, body),
    )
        .into_response()
}

/// The "o" events of an asciicast as plain text, at most [`SHOWN`] bytes.
fn output_text(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let (_, events) = cast::parse(&text).ok()?;
    let mut out = String::new();
    for e in events.iter().filter(|e| e.code == "o") {
        out.push_str(&e.data);
        if out.len() > SHOWN * 2 {
            break;
        }
    }
    let mut plain = plain_text(&out);
    if plain.len() > SHOWN {
        let mut cut = SHOWN;
        while !plain.is_char_boundary(cut) {
            cut -= 1;
        }
        plain.truncate(cut);
        plain.push_str("\n[… cut: download the recording for the rest]");
    }
    Some(plain)
}

/// Terminal output without its escape sequences (CSI, OSC, others), other
/// control characters and bidi overrides; newlines and tabs kept.
fn plain_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters, then one final byte in @..~.
                Some('[') => {
                    for n in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&n) {
                            break;
                        }
                    }
                }
                // OSC (titles, hyperlinks): up to BEL or ESC \.
                Some(']') => {
                    while let Some(n) = chars.next() {
                        if n == '\x07' {
                            break;
                        }
                        if n == '\x1b' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // Two-character sequences (ESC =, ESC (B's first half...).
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            '\r' => {}
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::plain_text;

    #[test]
    fn escape_sequences_and_controls_are_removed() {
        assert_eq!(
            plain_text("\x1b[1;31mred\x1b[0m\r\nnext\tcol\x07"),
            "red\nnext\tcol"
        );
        assert_eq!(plain_text("\x1b]0;title\x07text"), "text");
        assert_eq!(plain_text("\x1b]8;;http://x\x1b\\link"), "link");
        assert_eq!(plain_text("a\u{202e}b<script>"), "ab<script>");
    }
}
