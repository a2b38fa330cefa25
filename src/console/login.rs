//! Console login: OpenID Connect authorization code flow with PKCE at the
//! `[oidc]` issuer, redirect `<public_url>/auth/callback`. `state`, `nonce`
//! and the PKCE verifier stay in this process, keyed by a short-lived
//! pre-login cookie; the ID token is checked as for SSH logins (signature,
//! issuer, audience, times) plus the nonce. Every login, allowed or
//! refused, is a `console.login` row.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Response};
use serde::Deserialize;

use super::session::{self, LOGIN_COOKIE, LOGIN_TTL, SESSION_COOKIE};
use super::{ConsoleState, Viewer, error_page, layout};
use crate::audit::{Event, EventKind};
use crate::auth::oidc::OidcError;
use crate::reasons::ConsoleRefusal;

#[derive(Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

/// `GET /auth/login`: send the browser to the IdP.
pub async fn start(State(st): State<Arc<ConsoleState>>, Query(q): Query<StartQuery>) -> Response {
    let (Some(cfg), Some(idp)) = (st.console(), st.services.idp()) else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The console or its identity provider is switched off in the config in force.",
        );
    };
    let flow = match idp.start_code(&redirect_uri(&cfg.public_url)).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot start a login at the identity provider");
            return error_page(StatusCode::BAD_GATEWAY, e.message());
        }
    };
    let to = flow.url.clone();
    let id = match st.sessions.add_pending(flow, local_path(q.next.as_deref())) {
        Ok(id) => id,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let cookie = session::set_cookie(
        LOGIN_COOKIE,
        &id,
        "/auth/callback",
        "Lax",
        Some(LOGIN_TTL),
        cfg.secure_cookies(),
    );
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, to), (header::SET_COOKIE, cookie)],
    )
        .into_response()
}

pub fn redirect_uri(public_url: &str) -> String {
    format!("{public_url}/auth/callback")
}

/// Only a path of this console (no `//host`, no scheme): no open redirect.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.starts_with("/auth/")
                && p.chars().all(|c| !c.is_control()) =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /auth/callback`: check the login and start a console session.
pub async fn callback(
    State(st): State<Arc<ConsoleState>>,
    ConnectInfo(super::serve::Peer(source)): ConnectInfo<super::serve::Peer>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let (Some(cfg), Some(idp)) = (st.console(), st.services.idp()) else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The console or its identity provider is switched off in the config in force.",
        );
    };
    let secure = cfg.secure_cookies();
    let clear_login = session::set_cookie(
        LOGIN_COOKIE,
        "",
        "/auth/callback",
        "Lax",
        Some(std::time::Duration::ZERO),
        secure,
    );
    let pending =
        session::cookie(&headers, LOGIN_COOKIE).and_then(|id| st.sessions.take_pending(&id));
    let pending = match (pending, q.state.as_deref()) {
        (Some(p), Some(state)) if crate::text::same_secret(state, &p.flow.state) => p,
        _ => {
            return refuse(
                &st,
                source,
                None,
                ConsoleRefusal::LoginStateInvalid,
                clear_login,
            )
            .await;
        }
    };
    if let Some(e) = q.error.as_deref() {
        let why = if e == "access_denied" {
            ConsoleRefusal::IdpAccessDenied
        } else {
            ConsoleRefusal::IdpError
        };
        return refuse(&st, source, None, why, clear_login).await;
    }
    let Some(code) = q.code.as_deref() else {
        return refuse(&st, source, None, ConsoleRefusal::IdpError, clear_login).await;
    };
    let login = match idp
        .finish_code(&redirect_uri(&cfg.public_url), code, &pending.flow)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "console: login refused by the identity provider check");
            let why = match e {
                OidcError::TokenInvalid(_) => ConsoleRefusal::IdpTokenInvalid,
                OidcError::Denied => ConsoleRefusal::IdpAccessDenied,
                _ => ConsoleRefusal::IdpError,
            };
            return refuse(&st, source, None, why, clear_login).await;
        }
    };
    let Some(role) = session::role(&cfg, &login.groups) else {
        return refuse(
            &st,
            source,
            Some(&login.username),
            ConsoleRefusal::NoConsoleRole,
            clear_login,
        )
        .await;
    };
    let id = match st
        .sessions
        .create(login.username.clone(), login.groups.clone(), &cfg)
    {
        Ok(id) => id,
        Err(e) => return error_page(StatusCode::SERVICE_UNAVAILABLE, &e),
    };
    let mut ev = Event::new(EventKind::ConsoleLogin)
        .user(login.username.as_str())
        .detail("result", "allowed")
        .detail("role", role.as_str())
        .detail("subject", crate::audit::clean(&login.subject))
        .detail("groups", stored_groups(&login.groups));
    ev.source = Some(source.to_string());
    if !st.record(ev).await {
        tracing::warn!("console: the login's audit row was not stored");
    }
    let cookie = session::set_cookie(SESSION_COOKIE, &id, "/", "Strict", None, secure);
    // A page, not a redirect: the browser arrives here from the IdP (another
    // site), and a SameSite=Strict cookie set now is sent only on a
    // navigation that starts on this site, which this page's refresh is.
    (
        StatusCode::OK,
        // Appended: two headers of one name (an array would keep the last).
        AppendHeaders([
            (header::SET_COOKIE, cookie),
            (header::SET_COOKIE, clear_login),
        ]),
        layout::continue_to(&pending.next),
    )
        .into_response()
}

/// The IdP's group names as a `console.login` row keeps them: each cleaned
/// and bounded, at most [`GROUPS_MAX`] (the IdP's text is not trusted to
/// be short or printable).
fn stored_groups(groups: &[String]) -> Vec<String> {
    groups
        .iter()
        .take(GROUPS_MAX)
        .map(|g| crate::audit::clean(g))
        .collect()
}

/// Group names a `console.login` row keeps.
const GROUPS_MAX: usize = 64;

/// Answer a refused login with 403, after its `console.login` row.
async fn refuse(
    st: &ConsoleState,
    source: SocketAddr,
    user: Option<&str>,
    why: ConsoleRefusal,
    clear_login: String,
) -> Response {
    let mut ev = Event::new(EventKind::ConsoleLogin)
        .reason(why)
        .detail("result", "refused");
    ev.source = Some(source.to_string());
    if let Some(u) = user {
        ev = ev.user(u);
    }
    // Queued, not awaited: anyone can call the callback, and must not be
    // able to make the console wait on the audit queue.
    st.audit.emit(ev);
    let text = match why {
        ConsoleRefusal::NoConsoleRole => {
            "You logged in, but your groups do not give you access to the review console."
        }
        ConsoleRefusal::LoginStateInvalid => {
            "This login is unknown or expired (or was started in another browser). Start again."
        }
        ConsoleRefusal::IdpAccessDenied => "The login was declined at the identity provider.",
        ConsoleRefusal::IdpError | ConsoleRefusal::IdpTokenInvalid => {
            "The identity provider's answer did not check out."
        }
    };
    (
        StatusCode::FORBIDDEN,
        [(header::SET_COOKIE, clear_login)],
        layout::bare("Not logged in", text),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// `POST /auth/logout`: end this console session.
pub async fn logout(
    State(st): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = viewer.check_csrf(f.csrf.as_deref()) {
        return r.into_response();
    }
    st.sessions.remove(&viewer.session);
    let secure = st.console().is_some_and(|c| c.secure_cookies());
    let cookie = session::set_cookie(
        SESSION_COOKIE,
        "",
        "/",
        "Strict",
        Some(std::time::Duration::ZERO),
        secure,
    );
    (
        StatusCode::OK,
        [(header::SET_COOKIE, cookie)],
        layout::logged_out(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn stored_groups_are_cleaned_and_bounded() {
        let many: Vec<String> = (0..100).map(|i| format!("g{i}")).collect();
        assert_eq!(super::stored_groups(&many).len(), super::GROUPS_MAX);
        let odd = vec!["ops\u{0}\u{202e}x".to_string(), "a".repeat(1000)];
        let kept = super::stored_groups(&odd);
        assert!(
            !kept[0].contains('\u{0}') && !kept[0].contains('\u{202e}'),
            "{kept:?}"
        );
        assert!(kept[1].chars().count() <= 256, "{}", kept[1].len());
    }

    #[test]
    fn after_login_only_console_paths() {
        assert_eq!(local_path(Some("/sessions?user=a")), "/sessions?user=a");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "/auth/login",
            "x",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }
}
