//! Typed audit events. The `kind` names are fixed by DESIGN.md §5.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    AuthSuccess,
    AuthFailure,
    ConnectionOpen,
    ConnectionClose,
    ForwardOpen,
    ForwardDenied,
    ForwardClose,
    GrantCreate,
    GrantRevoke,
    LockoutBan,
    ConfigReload,
    ChannelRefused,
    /// Old rows were deleted under `[database] retention`.
    AuditPrune,
    /// Connections refused before the SSH handshake (bans, limits), counted
    /// per source and reason (server::refusals).
    ConnectionRefused,
    /// A TOTP secret was stored (self-enrolment at login, or the CLI).
    TotpEnroll,
    /// A TOTP secret was removed (CLI).
    TotpReset,
    /// Bans or user lockouts were lifted (CLI).
    LockoutClear,
    /// A user's TOTP step is locked after too many wrong codes.
    LockoutUser,
    /// The node signed its hash chain (audit::checkpoint).
    AuditCheckpoint,
    /// Access requests (DESIGN.md §13).
    RequestCreate,
    RequestApprove,
    RequestDeny,
    RequestExpire,
    RequestRevoke,
    /// A request's webhook could not be delivered (after its retries).
    RequestNotifyFailed,
    /// A requests command over SSH was refused (bad input, no right).
    RequestRefused,
    /// A session on a recorded target began / ended (DESIGN.md §10).
    RecordingStart,
    RecordingEnd,
    /// A file operation in a recorded sftp or scp session.
    FileOp,
    /// A recorded target used the engineer's forwarded agent (a target
    /// with `agent_forwarding = true`).
    AgentForward,
    RemoteForward,
    /// A review console login, allowed or refused (DESIGN.md §12).
    ConsoleLogin,
    /// A reviewer opened a session's detail (or a recording) in the console.
    ConsoleView,
    /// A console admin acted: revoked a grant, cleared a lockout.
    ConsoleAction,
}

impl EventKind {
    /// Every kind, for tests and docs that must not drift.
    pub const ALL: [EventKind; 34] = [
        EventKind::AuthSuccess,
        EventKind::AuthFailure,
        EventKind::ConnectionOpen,
        EventKind::ConnectionClose,
        EventKind::ForwardOpen,
        EventKind::ForwardDenied,
        EventKind::ForwardClose,
        EventKind::GrantCreate,
        EventKind::GrantRevoke,
        EventKind::LockoutBan,
        EventKind::ConfigReload,
        EventKind::ChannelRefused,
        EventKind::AuditPrune,
        EventKind::ConnectionRefused,
        EventKind::TotpEnroll,
        EventKind::TotpReset,
        EventKind::LockoutClear,
        EventKind::LockoutUser,
        EventKind::AuditCheckpoint,
        EventKind::RequestCreate,
        EventKind::RequestApprove,
        EventKind::RequestDeny,
        EventKind::RequestExpire,
        EventKind::RequestRevoke,
        EventKind::RequestNotifyFailed,
        EventKind::RequestRefused,
        EventKind::RecordingStart,
        EventKind::RecordingEnd,
        EventKind::FileOp,
        EventKind::AgentForward,
        EventKind::RemoteForward,
        EventKind::ConsoleLogin,
        EventKind::ConsoleView,
        EventKind::ConsoleAction,
    ];

    pub fn as_str(self) -> &'static str {
        use EventKind::*;
        match self {
            AuthSuccess => "auth.success",
            AuthFailure => "auth.failure",
            ConnectionOpen => "connection.open",
            ConnectionClose => "connection.close",
            ForwardOpen => "forward.open",
            ForwardDenied => "forward.denied",
            ForwardClose => "forward.close",
            GrantCreate => "grant.create",
            GrantRevoke => "grant.revoke",
            LockoutBan => "lockout.ban",
            ConfigReload => "config.reload",
            ChannelRefused => "channel.refused",
            AuditPrune => "audit.prune",
            ConnectionRefused => "connection.refused",
            TotpEnroll => "totp.enroll",
            TotpReset => "totp.reset",
            LockoutClear => "lockout.clear",
            LockoutUser => "lockout.user",
            AuditCheckpoint => "audit.checkpoint",
            RequestCreate => "request.create",
            RequestApprove => "request.approve",
            RequestDeny => "request.deny",
            RequestExpire => "request.expire",
            RequestRevoke => "request.revoke",
            RequestNotifyFailed => "request.notify_failed",
            RequestRefused => "request.refused",
            RecordingStart => "recording.start",
            RecordingEnd => "recording.end",
            FileOp => "file.op",
            AgentForward => "agent.forward",
            RemoteForward => "remote.forward",
            ConsoleLogin => "console.login",
            ConsoleView => "console.view",
            ConsoleAction => "console.action",
        }
    }
}

/// One audit event: a row in `audit_events` and a JSON log line.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub at: SystemTime,
    pub connection_id: Option<String>,
    pub user: Option<String>,
    /// `ip:port` of the client.
    pub source: Option<String>,
    /// Stable snake_case reason for refusals and closes.
    pub reason: Option<String>,
    /// Event-specific fields (method, target, bytes, ...).
    pub detail: Map<String, Value>,
}

impl Event {
    pub fn new(kind: EventKind) -> Self {
        Event {
            kind,
            at: SystemTime::now(),
            connection_id: None,
            user: None,
            source: None,
            reason: None,
            detail: Map::new(),
        }
    }

    pub fn connection(mut self, id: &str, source: SocketAddr) -> Self {
        self.connection_id = Some(clean(id));
        self.source = Some(source.to_string());
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(crate::text::user_name(&user.into()));
        self
    }

    pub fn reason(mut self, reason: impl crate::reasons::Reason) -> Self {
        self.reason = Some(reason.as_str().to_string());
        self
    }

    /// The event's time, when it must equal a time stored in a row of
    /// another table (`audit verify` compares them exactly).
    pub fn at(mut self, at: SystemTime) -> Self {
        self.at = at;
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// Client-supplied text as it may be stored: NUL (which PostgreSQL refuses
/// in text), other control characters and bidi overrides become U+FFFD, and
/// it is cut at 256 characters. An attacker must not be able to make an
/// audit write fail.
pub fn clean(s: &str) -> String {
    crate::text::clean(s, 256)
}
