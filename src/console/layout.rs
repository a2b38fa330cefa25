//! The page frame, the stylesheet and small pieces every page uses. maud
//! escapes every value it renders; nothing here uses `PreEscaped` on data.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::Viewer;

const STYLESHEET: &str = include_str!("console.css");

/// `GET /static/console.css`, from the binary.
pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

fn head(title: &str, refresh: Option<u32>, extra: Markup) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(s) = refresh {
                meta http-equiv="refresh" content=(s);
            }
            title { (title) " · portvakt" }
            link rel="stylesheet" href="/static/console.css";
            (extra)
        }
    }
}

/// A console page for `viewer`: navigation, who is logged in, logout.
pub fn page(viewer: &Viewer, title: &str, refresh: Option<u32>, body: Markup) -> Html<String> {
    page_with_head(viewer, title, refresh, html! {}, body)
}

/// [`page`] with more in its `<head>` (stylesheets, external scripts).
pub fn page_with_head(
    viewer: &Viewer,
    title: &str,
    refresh: Option<u32>,
    extra: Markup,
    body: Markup,
) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title, refresh, extra))
                body {
                    header {
                        nav {
                            strong { "portvakt" }
                            a href="/" { "Now" }
                            a href="/sessions" { "Sessions" }
                            a href="/audit" { "Audit" }
                            a href="/grants" { "Grants" }
                            a href="/requests" { "Requests" }
                            a href="/lockouts" { "Lockouts" }
                        }
                        div.who {
                            span #viewer { (viewer.name) } " (" (viewer.role.as_str()) ") "
                            form method="post" action="/auth/logout" {
                                (csrf_field(viewer))
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// A page without navigation (errors, login results).
pub fn bare(title: &str, text: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title, None, html! {}))
                body { main {
                    h1 { (title) }
                    p #message { (text) }
                    p { a href="/" { "Go to the console" } }
                } }
            }
        }
        .into_string(),
    )
}

/// After a login: go on to `next` (a path of the console).
pub fn continue_to(next: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta http-equiv="refresh" content={ "0;url=" (next) };
                    title { "Logged in · portvakt" }
                    link rel="stylesheet" href="/static/console.css";
                }
                body { main {
                    h1 { "Logged in" }
                    p { a #continue href=(next) { "Continue" } }
                } }
            }
        }
        .into_string(),
    )
}

pub fn logged_out() -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Logged out", None, html! {}))
                body { main {
                    h1 { "Logged out" }
                    p { a href="/auth/login" { "Log in again" } }
                } }
            }
        }
        .into_string(),
    )
}

/// The hidden CSRF field of every form.
pub fn csrf_field(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.csrf()); }
}

/// Links to this list as CSV and JSON, with the same filters.
pub fn exports(path: &str, query: &str) -> Markup {
    let sep = if query.is_empty() { "" } else { "&" };
    html! {
        p.exports {
            "Export: "
            a href={ (path) "?" (query) (sep) "format=csv" } { "CSV" }
            " · "
            a href={ (path) "?" (query) (sep) "format=json" } { "JSON" }
        }
    }
}

/// Shown for a value that is absent.
pub fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("–")
}
