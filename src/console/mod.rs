//! The review console (DESIGN.md §12, docs/CONSOLE.md): a small web
//! server on its own listener, started and stopped with `serve`, that
//! shows the shared database (every node's rows) to reviewers who logged in
//! at the `[oidc]` identity provider, and lets admins end connections,
//! revoke grants, clear lockouts and decide access requests. Server-rendered HTML (maud escapes every value), no
//! inline scripts, strict headers on every answer.
//!
//! One file per concern: `session` (console sessions, cookies, CSRF),
//! `login` (the OIDC code flow), `layout` (page frame, stylesheet),
//! `export` (CSV and JSON), one file per page, `player` (the vendored
//! terminal player of `/recordings/ID`), `tls` (HTTPS), `serve`
//! (connections: limits, timeouts, graceful stop), `chain` (the chain
//! status of `/audit`).

mod audit_page;
mod chain;
mod export;
mod grants;
mod layout;
mod lockouts;
mod login;
mod now;
mod player;
mod recordings;
mod requests;
mod serve;
mod session;
mod sessions;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::{Audit, Event};
use crate::auth::Services;
use crate::config::{ConsoleConfig, SharedConfig};
use crate::store::Store;

pub use session::Role;
pub use tls::TlsError;

/// What the console's handlers share.
pub struct ConsoleState {
    /// The config in force: roles, timeouts and `public_url` are read from
    /// it per request, so a reload applies at once.
    config: SharedConfig,
    /// The node's audit writer: console rows join its hash chain.
    audit: Audit,
    store: Store,
    /// For the IdP of `[oidc]` (swapped on reload).
    services: Arc<Services>,
    /// Console sessions and pending logins, in this process's memory.
    sessions: session::Sessions,
    /// The newest `audit verify` report, for `/audit`.
    chain: Arc<chain::ChainStatus>,
    /// The access-request webhook (decisions made here are told like
    /// those over SSH).
    webhook: crate::requests::webhook::Webhook,
}

impl ConsoleState {
    pub fn new(
        config: SharedConfig,
        audit: Audit,
        services: Arc<Services>,
        webhook: crate::requests::webhook::Webhook,
    ) -> ConsoleState {
        ConsoleState {
            webhook,
            config,
            store: audit.store().clone(),
            audit,
            services,
            sessions: session::Sessions::default(),
            chain: Arc::default(),
        }
    }

    /// `[console]` in force; `None` when a reload removed it.
    fn console(&self) -> Option<ConsoleConfig> {
        self.config.load().console.clone()
    }

    /// Write a console audit row (awaited: who looked and who acted must
    /// not be lost).
    async fn record(&self, ev: Event) -> bool {
        self.audit.record(ev).await
    }
}

/// The console's bound port, with its TLS setup when it serves HTTPS.
pub struct Bound {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Bound {
    /// Bind `[console] listen` and load its certificate and key.
    pub async fn bind(cfg: &ConsoleConfig) -> anyhow::Result<Bound> {
        use anyhow::Context;
        let tls = match &cfg.tls {
            Some(t) => Some(tls::acceptor(t)?),
            None => None,
        };
        let listener = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {} for the console", cfg.listen))?;
        Ok(Bound { listener, tls })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serve the console until `stop` fires.
pub async fn serve(
    bound: Bound,
    state: Arc<ConsoleState>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    tokio::spawn(
        state
            .chain
            .clone()
            .run(state.store.clone(), state.config.clone(), stop.clone()),
    );
    let app = router(state, bound.tls.is_some());
    let addr = bound.listener.local_addr()?;
    match bound.tls {
        Some(acceptor) => {
            tracing::info!(%addr, "console listening (https)");
            serve::run(tls::TlsListener::new(bound.listener, acceptor), app, stop).await;
        }
        None => {
            tracing::info!(%addr, "console listening (http, loopback)");
            serve::run(bound.listener, app, stop).await;
        }
    }
    Ok(())
}

fn router(state: Arc<ConsoleState>, https: bool) -> Router {
    let router = Router::new()
        .route("/", get(now::page))
        .route("/connections/{id}/end", post(now::end))
        .route("/sessions", get(sessions::list))
        .route("/sessions/{id}", get(sessions::detail))
        .route("/recordings/{id}", get(recordings::page))
        .route("/audit", get(audit_page::list))
        .route("/audit/verify", post(audit_page::verify))
        .route("/grants", get(grants::list))
        .route("/grants/{id}/revoke", post(grants::revoke))
        .route("/requests", get(requests::list))
        .route("/requests/{id}/approve", post(requests::approve))
        .route("/requests/{id}/deny", post(requests::deny))
        .route("/requests/{id}/revoke", post(requests::revoke))
        .route("/lockouts", get(lockouts::list))
        .route("/lockouts/clear", post(lockouts::clear))
        .route("/auth/login", get(login::start))
        .route("/auth/callback", get(login::callback))
        .route("/auth/logout", post(login::logout))
        .route("/static/console.css", get(layout::stylesheet))
        .route("/static/player-init.js", get(player::init_script))
        .route(
            "/static/asciinema-player/{version}/{file}",
            get(player::asset),
        )
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state);
    if https {
        // Browsers that saw the console over HTTPS never try plain HTTP.
        router.layer(axum::middleware::map_response(
            |mut res: Response| async move {
                res.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000"),
                );
                res
            },
        ))
    } else {
        router
    }
}

/// On every answer: no framing, no sniffing, no referrer, scripts and
/// styles only from the console itself, and pages never cached.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    // A page may set a policy of its own (the recording page adds
    // 'wasm-unsafe-eval' for the player); every other answer gets this one.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                 object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "No such page.")
}

/// A plain page saying what went wrong (nothing internal).
fn error_page(status: StatusCode, text: &str) -> Response {
    (status, layout::bare("portvakt console", text)).into_response()
}

/// A request answered with an error page: its status and what the
/// reviewer is told (small, so `Result`s stay small; rendered at the edge).
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    text: std::borrow::Cow<'static, str>,
}

impl Problem {
    fn new(status: StatusCode, text: impl Into<std::borrow::Cow<'static, str>>) -> Problem {
        Problem {
            status,
            text: text.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        error_page(self.status, &self.text)
    }
}

fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "console: database error");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The database could not be read; try again.",
    )
}

/// A reviewer with a live console session, and the role the config in
/// force gives their groups now. Pages take this; without it a page
/// request is sent to the login, anything else refused.
pub struct Viewer {
    pub name: String,
    pub role: Role,
    pub source: SocketAddr,
    session: Arc<session::Session>,
}

impl Viewer {
    fn csrf(&self) -> &str {
        &self.session.csrf
    }

    /// The session's CSRF token is in `form` (constant-time compare).
    fn check_csrf(&self, given: Option<&str>) -> Result<(), Problem> {
        match given {
            Some(t) if crate::text::same_secret(t, &self.session.csrf) => Ok(()),
            _ => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "This form is stale or did not come from the console (CSRF token missing or wrong). Nothing was changed.",
            )),
        }
    }

    /// Whether an action may go ahead: the form carries the session's CSRF
    /// token and the viewer has the role it `needs` under the config in
    /// force. If not, nothing changes, the answer is 403, and a refused
    /// `console.action` row (reason `csrf_invalid` or `not_console_admin`)
    /// says who tried which action on what, from where.
    async fn permit_action(
        &self,
        st: &ConsoleState,
        needs: Role,
        action: &'static str,
        on: &[(&str, serde_json::Value)],
        csrf: Option<&str>,
    ) -> Result<(), Response> {
        let role = match needs {
            Role::Reviewer => Ok(()),
            Role::Admin => self.require_admin(),
        };
        let (why, problem) = match (self.check_csrf(csrf), role) {
            (Ok(()), Ok(())) => return Ok(()),
            (Err(p), _) => (crate::reasons::ActionRefusal::CsrfInvalid, p),
            (Ok(()), Err(p)) => (crate::reasons::ActionRefusal::NotConsoleAdmin, p),
        };
        let mut ev = Event::new(crate::audit::EventKind::ConsoleAction)
            .user(self.name.as_str())
            .reason(why)
            .detail("action", action)
            .detail("result", "refused");
        for (k, v) in on {
            ev = ev.detail(k, v.clone());
        }
        ev.source = Some(self.source.to_string());
        st.record(ev).await;
        Err(problem.into_response())
    }

    fn require_admin(&self) -> Result<(), Problem> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "Only console admins (admin_groups) may do this.",
            ))
        }
    }
}

impl FromRequestParts<Arc<ConsoleState>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ConsoleState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(cfg) = state.console() else {
            return Err(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The console is switched off in the config in force.",
            ));
        };
        let source = parts
            .extensions
            .get::<ConnectInfo<serve::Peer>>()
            .map(|c| c.0.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let cookie = session::cookie(&parts.headers, session::SESSION_COOKIE);
        let found = cookie.and_then(|id| state.sessions.find(&id, &cfg));
        let Some(s) = found else {
            // Pages send the browser to log in (and back here after);
            // anything else is refused outright.
            return Err(if parts.method == Method::GET {
                let back = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let target = format!(
                    "/auth/login?next={}",
                    percent_encoding::utf8_percent_encode(back, percent_encoding::NON_ALPHANUMERIC)
                );
                Redirect::to(&target).into_response()
            } else {
                error_page(StatusCode::FORBIDDEN, "Not logged in to the console.")
            });
        };
        let Some(role) = session::role(&cfg, &s.groups) else {
            state.sessions.remove(&s);
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "Your groups no longer give you access to the console.",
            ));
        };
        Ok(Viewer {
            name: s.name.clone(),
            role,
            source,
            session: s,
        })
    }
}

/// A query parameter given and not blank.
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A time filter: RFC 3339, a date, or an age like `2h` (as the CLI).
fn time_param(v: &Option<String>) -> Result<Option<i64>, Problem> {
    given(v)
        .map(|s| {
            crate::clock::parse_time_arg(&s, std::time::SystemTime::now())
                .map(crate::clock::micros)
                .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, e))
        })
        .transpose()
}

/// A keyset cursor `MICROS.ID`.
fn before_param(v: &Option<String>) -> Result<Option<crate::audit::query::Before>, Problem> {
    given(v)
        .map(|s| {
            s.split_once('.')
                .and_then(|(at, id)| Some((at.parse().ok()?, id.parse().ok()?)))
                .map(|(at, id)| crate::audit::query::Before { at, id })
                .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "bad page cursor"))
        })
        .transpose()
}
