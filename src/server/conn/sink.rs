//! What a login may do to its connection and the server ([`LoginSink`]):
//! write its rows, count failures towards bans, end the connection.

use std::sync::Arc;

use super::ConnCtx;
use crate::audit::{Event, EventKind};
use crate::auth::AuthFailure;
use crate::auth::login::LoginSink;
use crate::reasons::{CloseReason, EventReason};
use crate::server::ServerState;

pub struct Sink {
    state: Arc<ServerState>,
    ctx: Arc<ConnCtx>,
}

impl Sink {
    pub fn new(state: Arc<ServerState>, ctx: Arc<ConnCtx>) -> Self {
        Sink { state, ctx }
    }
}

impl LoginSink for Sink {
    fn event(&self, kind: EventKind) -> Event {
        Event::new(kind).connection(self.ctx.id(), self.ctx.source())
    }

    fn emit(&self, ev: Event) {
        self.state.audit.emit(ev);
    }

    async fn record(&self, ev: Event) -> bool {
        self.state.audit.record(ev).await
    }

    /// Brute-force accounting, off the session loop; a ban it causes ends
    /// this connection and every other one of the source still logging in.
    fn count_failure(&self, user: &str, failure: AuthFailure) {
        let state = self.state.clone();
        let ctx = self.ctx.clone();
        let user = user.to_string();
        self.ctx.spawn(async move {
            let lockout = &state.services.lockout;
            let cfg = state.config.load().lockout.clone();
            let ban = match lockout
                .record_failure(ctx.source().ip(), Some(&user), failure.as_str(), &cfg)
                .await
            {
                Ok(Some(ban)) => ban,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record a login failure");
                    return;
                }
            };
            ctx.close(CloseReason::Banned);
            for other in state.live.snapshot() {
                if !other.is_authenticated() && lockout.key_of(other.source().ip()) == ban.source {
                    other.close(CloseReason::Banned);
                }
            }
            let ev = Event::new(EventKind::LockoutBan)
                .connection(ctx.id(), ctx.source())
                .user(user)
                .reason(EventReason::TooManyFailures)
                .detail("banned", ban.source)
                .detail("failures", ban.failures)
                .detail("until", crate::clock::rfc3339_micros(ban.until));
            state.audit.record(ev).await;
        });
    }

    fn close(&self, why: CloseReason) {
        self.ctx.close(why);
    }

    fn is_closing(&self) -> bool {
        self.ctx.is_closing()
    }
}
