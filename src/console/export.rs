//! `?format=csv|json`: every list exports exactly the rows its filters
//! (and page cursor) select.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// How a list is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Csv,
    Json,
}

impl Format {
    pub fn parse(v: &Option<String>) -> Result<Format, super::Problem> {
        match v.as_deref() {
            None | Some("") | Some("html") => Ok(Format::Html),
            Some("csv") => Ok(Format::Csv),
            Some("json") => Ok(Format::Json),
            Some(_) => Err(super::Problem::new(
                StatusCode::BAD_REQUEST,
                "format is csv or json",
            )),
        }
    }
}

/// A JSON array of `rows`.
pub fn json<T: Serialize>(rows: &[T]) -> Response {
    match serde_json::to_string_pretty(rows) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => super::internal(e).into_response(),
    }
}

/// CSV (RFC 4180) with a header line; `name` is the download's file name.
pub fn csv(name: &str, columns: &[&str], rows: Vec<Vec<String>>) -> Response {
    let mut out = String::new();
    line(&mut out, columns.iter().map(|c| c.to_string()));
    for r in rows {
        line(&mut out, r.into_iter());
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.csv\""),
            ),
        ],
        out,
    )
        .into_response()
}

fn line(out: &mut String, cells: impl Iterator<Item = String>) {
    let cells: Vec<String> = cells.map(|c| cell(&c)).collect();
    out.push_str(&cells.join(","));
    out.push_str("\r\n");
}

/// One cell, quoted when needed. A cell a spreadsheet would run as a
/// formula (user names and commands are attacker-controlled) starts with
/// a `'`.
fn cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// An optional value as a cell.
pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::cell;

    #[test]
    fn cells_are_quoted_and_formulas_defused() {
        assert_eq!(cell("alice"), "alice");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("-1"), "'-1");
    }
}
