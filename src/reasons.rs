//! Every reason portvakt records, in one place: why a connection ended, why
//! a forward ended or was refused, why a channel or a connection was refused
//! before the handshake, and the reasons of the rarer events (bans, lockouts,
//! grant revocations, reloads). Login refusals are `auth::AuthFailure`, policy
//! refusals `policy::Refusal`; both implement [`Reason`] too.
//!
//! Audit rows, log lines and metric labels take these types, never a string,
//! so a reason cannot be misspelt in one layer and the lists in docs/AUDIT.md
//! and the tests can be checked against `ALL`. The names are fixed by
//! DESIGN.md §5 and docs/AUDIT.md: rename a variant, never its string.

/// A reason as the audit trail and the metrics spell it.
pub trait Reason: Copy {
    /// The stable snake_case name stored in the audit trail.
    fn as_str(self) -> &'static str;
}

/// An enum of reasons with `as_str`, `ALL` and `Display` from one list.
macro_rules! reason_enum {
    (
        $(#[$doc:meta])*
        pub enum $name:ident {
            $( $(#[$vdoc:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )+
        }

        impl $name {
            /// Every variant, for docs, metrics and tests that must not drift.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl $crate::reasons::Reason for $name {
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use reason_enum;

reason_enum! {
    /// Why a connection ended (`connection.close`). The first reason given
    /// is the one recorded.
    pub enum CloseReason {
        /// The client disconnected, or just closed its socket.
        ClientClosed = "client_closed",
        /// A malformed or unexpected packet, or a failed handshake.
        ProtocolError = "protocol_error",
        /// The client sent data past its channel window (russh patch 6).
        WindowExceeded = "window_exceeded",
        /// The client sent a channel data packet larger than allowed.
        PacketTooLarge = "packet_too_large",
        /// The client stopped answering keepalives.
        KeepaliveTimeout = "keepalive_timeout",
        /// Not logged in within `login_grace_time`.
        LoginTimeout = "login_timeout",
        /// `max_auth_tries` refused attempts.
        TooManyAttempts = "too_many_attempts",
        /// The source was banned (by this connection's failures or others').
        Banned = "banned",
        /// The audit database is unavailable: fail closed.
        DatabaseUnavailable = "database_unavailable",
        /// A reload no longer allows this login.
        ConfigRevoked = "config_revoked",
        CertificateExpired = "certificate_expired",
        GrantExpired = "grant_expired",
        /// The login grant was revoked (CLI, `logout`).
        GrantRevoked = "grant_revoked",
        /// `max_duration` reached.
        MaxDuration = "max_duration",
        /// No forward and no traffic for `idle_timeout`.
        IdleTimeout = "idle_timeout",
        /// The server stopped (SIGTERM) and its drain time ran out.
        Shutdown = "shutdown",
        /// The connection ended without a more specific reason.
        ConnectionClosed = "connection_closed",
        /// Open when the node stopped without closing it (crash, kill -9);
        /// written at the next start.
        Interrupted = "interrupted",
        /// A review console admin ended it (`console.action`
        /// `connection_end`).
        EndedByReviewer = "ended_by_reviewer",
    }
}

impl CloseReason {
    /// What the client is told when portvakt ends its connection.
    pub fn user_text(self) -> &'static str {
        match self {
            CloseReason::LoginTimeout => "portvakt: login took too long",
            CloseReason::CertificateExpired => "portvakt: your certificate expired",
            CloseReason::GrantExpired => "portvakt: your login grant expired; log in again",
            CloseReason::GrantRevoked => "portvakt: your login grant was revoked",
            CloseReason::ConfigRevoked => {
                "portvakt: the bastion's configuration no longer allows your login; log in again"
            }
            CloseReason::MaxDuration => "portvakt: maximum connection time reached",
            CloseReason::IdleTimeout => "portvakt: connection idle for too long",
            CloseReason::TooManyAttempts => "portvakt: too many authentication attempts",
            CloseReason::Banned => {
                "portvakt: too many failed logins from your address; try again later"
            }
            CloseReason::DatabaseUnavailable => {
                "portvakt: the audit database is unavailable, so logins are refused for now; try again later"
            }
            CloseReason::Shutdown => "portvakt: the bastion is restarting",
            CloseReason::EndedByReviewer => "portvakt: a security reviewer ended this connection",
            _ => "portvakt: connection closed",
        }
    }

    /// The close reason of a forward that ends because its connection does:
    /// the connection's own reason where it says something about the
    /// forward (an expiry, a revocation, the shutdown), else
    /// `connection_closed`.
    pub fn for_forwards(self) -> ForwardEnd {
        match self {
            CloseReason::ClientClosed
            | CloseReason::ProtocolError
            | CloseReason::WindowExceeded
            | CloseReason::PacketTooLarge
            | CloseReason::KeepaliveTimeout
            | CloseReason::TooManyAttempts => ForwardEnd::Connection(CloseReason::ConnectionClosed),
            other => ForwardEnd::Connection(other),
        }
    }
}

reason_enum! {
    /// Why a forward ended on its own side (`forward.close`); see
    /// [`ForwardEnd`] for all of its close reasons.
    pub enum ForwardStop {
        /// Both sides finished, or one side closed.
        Closed = "closed",
        /// No byte either way for `idle_timeout`.
        IdleTimeout = "idle_timeout",
        /// The target took no bytes for the write timeout.
        WriteTimeout = "write_timeout",
        /// A read or write failed (a reset, for instance).
        Error = "error",
        /// The target refused the connection.
        ConnectRefused = "connect_refused",
        /// The target did not answer within `connect_timeout`.
        ConnectTimeout = "connect_timeout",
        /// Dialling failed otherwise (no route, ...).
        ConnectFailed = "connect_failed",
        /// A reload no longer allows this forward.
        ConfigReload = "config_reload",
        /// The approved window of the access request that allowed it ended.
        RequestWindowEnded = "request_window_ended",
        /// The access request that allowed it was revoked.
        RequestRevoked = "request_revoked",
        /// A recorded target presented a host key its `host_key` or
        /// `host_ca` does not vouch for.
        TargetHostKey = "target_host_key",
        /// portvakt could not log in to a recorded target (refused,
        /// unreachable, no SSH).
        TargetLogin = "target_login_failed",
    }
}

/// Why a forward ended: on its own side, or because its connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardEnd {
    Stop(ForwardStop),
    /// Its connection ended (see [`CloseReason::for_forwards`]).
    Connection(CloseReason),
}

impl ForwardEnd {
    /// Every forward close reason (distinct names, in a stable order).
    pub fn all() -> Vec<&'static str> {
        let mut names: Vec<&'static str> = ForwardStop::ALL.iter().map(|r| r.as_str()).collect();
        for c in CloseReason::ALL {
            let name = c.for_forwards().as_str();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

impl Reason for ForwardEnd {
    fn as_str(self) -> &'static str {
        match self {
            ForwardEnd::Stop(s) => s.as_str(),
            ForwardEnd::Connection(c) => c.as_str(),
        }
    }
}

impl From<ForwardStop> for ForwardEnd {
    fn from(s: ForwardStop) -> Self {
        ForwardEnd::Stop(s)
    }
}

reason_enum! {
    /// The `result` of a forward row.
    pub enum ForwardResult {
        Allowed = "allowed",
        /// Refused by the policy (or because it could not be audited).
        Denied = "denied",
        /// Allowed, but could not be carried out (DNS, dial).
        Failed = "failed",
    }
}

reason_enum! {
    /// Why a forward was refused for a reason outside the policy.
    pub enum ForwardRefusal {
        /// Its audit row could not be written: fail closed.
        AuditUnavailable = "audit_unavailable",
    }
}

reason_enum! {
    /// Channel requests portvakt refuses (`channel.refused`).
    pub enum ChannelRefusal {
        Shell = "shell_refused",
        Exec = "exec_refused",
        Subsystem = "subsystem_refused",
        RemoteForward = "remote_forward_refused",
        X11 = "x11_refused",
        AgentForward = "agent_forward_refused",
        Streamlocal = "streamlocal_refused",
        /// More than `max_channels_per_connection` forwards at once.
        TooManyChannels = "too_many_channels",
        /// A recorded target: a login its `logins` does not allow.
        TargetLogin = "target_login_refused",
        /// A recorded target: a forward inside the session (`-L`).
        InnerForward = "inner_forward_refused",
        /// A recorded target: an environment variable other than the
        /// locale (`LANG`, `LC_*`), not passed to the target.
        Env = "env_refused",
        /// A recorded target opened a channel to portvakt that nobody
        /// asked for (a session, X11, `direct-tcpip`, streamlocal);
        /// `request` names its type.
        TargetChannel = "target_channel_refused",
    }
}

reason_enum! {
    /// Why a connection was refused before the SSH handshake
    /// (`connection.refused`).
    pub enum ConnRefusal {
        Banned = "banned",
        MaxConnections = "max_connections",
        MaxUnauthenticated = "max_unauthenticated",
        MaxUnauthenticatedPerSource = "max_unauthenticated_per_source",
        /// A trusted balancer's connection without a valid PROXY header.
        ProxyHeader = "proxy_header",
    }
}

reason_enum! {
    /// The reasons of the rarer events: bans, lockouts, grant revocations
    /// and config reloads.
    pub enum EventReason {
        /// `lockout.ban`: too many failed logins from one source.
        TooManyFailures = "too_many_failures",
        /// `lockout.user`: too many wrong TOTP codes for one user.
        TooManyTotpFailures = "too_many_totp_failures",
        /// `grant.revoke` by `ssh user@bastion logout`.
        Logout = "logout",
        /// `grant.revoke` by `portvakt grants revoke`.
        RevokedByAdmin = "revoked_by_admin",
        /// `config.reload` refused: the new file has errors.
        InvalidConfig = "invalid_config",
        /// `audit.checkpoint` after `checkpoint_every` events.
        CheckpointEvents = "checkpoint_events",
        /// `audit.checkpoint` after `checkpoint_interval`.
        CheckpointInterval = "checkpoint_interval",
        /// `audit.checkpoint` as the writer stops (shutdown, CLI exit).
        CheckpointShutdown = "checkpoint_shutdown",
        /// `audit.checkpoint` of the rows retention is about to delete.
        CheckpointPrune = "checkpoint_prune",
    }
}

reason_enum! {
    /// Why a review console login (`console.login`) was refused.
    pub enum ConsoleRefusal {
        /// The IdP login worked, but the user is in none of
        /// `reviewer_groups` and `admin_groups`.
        NoConsoleRole = "no_console_role",
        /// The callback's `state` is unknown, expired, already used, or
        /// came without the browser's pre-login cookie.
        LoginStateInvalid = "login_state_invalid",
        /// The user declined at the IdP.
        IdpAccessDenied = "idp_access_denied",
        /// The IdP could not be reached or refused the code exchange.
        IdpError = "idp_error",
        /// The ID token failed a check (signature, issuer, audience,
        /// times, nonce).
        IdpTokenInvalid = "idp_token_invalid",
    }
}

reason_enum! {
    /// Why a review console admin's action (`console.action`) was refused.
    pub enum ActionRefusal {
        /// An action's form came without the console session's CSRF token
        /// (or with a wrong one): nothing was changed.
        CsrfInvalid = "csrf_invalid",
        /// An action by a reviewer whose groups do not make them a console
        /// admin (`admin_groups`) under the config in force.
        NotConsoleAdmin = "not_console_admin",
    }
}

reason_enum! {
    /// The SSH authentication method of a login attempt, as `auth.failure`
    /// rows and the `logins_total{method}` metric name it (a certificate is
    /// told apart from a plain key).
    pub enum SshMethod {
        None = "none",
        Password = "password",
        Publickey = "publickey",
        Certificate = "certificate",
        KeyboardInteractive = "keyboard-interactive",
    }
}

reason_enum! {
    /// How a connection logged in; the names are the `auth_method` values of
    /// the audit trail (DESIGN.md §5).
    pub enum AuthMethod {
        /// An OpenSSH user certificate from a trusted CA.
        Certificate = "certificate",
        /// A still-valid login grant for the key the client proved it holds.
        Grant = "grant",
        /// A `[[users]]` key followed by TOTP.
        PublickeyTotp = "publickey+totp",
        /// IdP device-flow login followed by TOTP.
        OidcTotp = "oidc+totp",
        /// IdP login whose ID token shows MFA (`trust_idp_amr`).
        Oidc = "oidc",
        /// A `[[users]]` key of a service account (`mfa = "none"`).
        Publickey = "publickey",
    }
}

impl AuthMethod {
    /// The method of this name (as stored on grants).
    pub fn parse(name: &str) -> Option<AuthMethod> {
        Self::ALL.iter().copied().find(|m| m.as_str() == name)
    }

    /// Did the IdP take part in this login?
    pub fn is_idp(self) -> bool {
        matches!(self, AuthMethod::OidcTotp | AuthMethod::Oidc)
    }

    /// The SSH method whose success completed such a login.
    pub fn ssh_method(self) -> SshMethod {
        match self {
            AuthMethod::Certificate => SshMethod::Certificate,
            AuthMethod::Grant | AuthMethod::Publickey => SshMethod::Publickey,
            AuthMethod::PublickeyTotp | AuthMethod::OidcTotp | AuthMethod::Oidc => {
                SshMethod::KeyboardInteractive
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_within_each_list() {
        fn check(names: &[&str]) {
            let mut seen = std::collections::HashSet::new();
            for n in names {
                assert!(seen.insert(*n), "{n} twice");
                assert!(
                    n.chars().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || c == '_'
                        || c == '-'),
                    "{n}"
                );
            }
        }
        check(
            &CloseReason::ALL
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>(),
        );
        check(&ForwardEnd::all());
        check(
            &ChannelRefusal::ALL
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>(),
        );
        check(
            &ConnRefusal::ALL
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>(),
        );
        check(
            &EventReason::ALL
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>(),
        );
        check(
            &SshMethod::ALL
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>(),
        );
    }

    /// docs/AUDIT.md is where a security team looks a reason up: every
    /// reason portvakt can record is explained there.
    #[test]
    fn every_reason_is_documented() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/AUDIT.md")).unwrap();
        let mut names: Vec<&str> = Vec::new();
        names.extend(CloseReason::ALL.iter().map(|r| r.as_str()));
        names.extend(ForwardEnd::all());
        names.extend(ForwardResult::ALL.iter().map(|r| r.as_str()));
        names.extend(ForwardRefusal::ALL.iter().map(|r| r.as_str()));
        names.extend(ChannelRefusal::ALL.iter().map(|r| r.as_str()));
        names.extend(ConnRefusal::ALL.iter().map(|r| r.as_str()));
        names.extend(EventReason::ALL.iter().map(|r| r.as_str()));
        names.extend(ConsoleRefusal::ALL.iter().map(|r| r.as_str()));
        names.extend(ActionRefusal::ALL.iter().map(|r| r.as_str()));
        names.extend(SshMethod::ALL.iter().map(|r| r.as_str()));
        names.extend(AuthMethod::ALL.iter().map(|r| r.as_str()));
        names.extend(crate::auth::AuthFailure::ALL.iter().map(|r| r.as_str()));
        names.extend(crate::policy::Refusal::ALL.iter().map(|r| r.as_str()));
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|n| !doc.contains(&format!("`{n}`")))
            .collect();
        assert!(missing.is_empty(), "not in docs/AUDIT.md: {missing:?}");
    }

    #[test]
    fn a_forward_keeps_its_connections_reason_only_where_it_says_something() {
        assert_eq!(
            CloseReason::ClientClosed.for_forwards().as_str(),
            "connection_closed"
        );
        assert_eq!(
            CloseReason::ProtocolError.for_forwards().as_str(),
            "connection_closed"
        );
        assert_eq!(
            CloseReason::GrantRevoked.for_forwards().as_str(),
            "grant_revoked"
        );
        assert_eq!(CloseReason::Shutdown.for_forwards().as_str(), "shutdown");
    }

    #[test]
    fn every_reason_the_server_ends_with_has_its_own_text() {
        for r in [
            CloseReason::LoginTimeout,
            CloseReason::Banned,
            CloseReason::ConfigRevoked,
            CloseReason::DatabaseUnavailable,
            CloseReason::GrantRevoked,
            CloseReason::Shutdown,
        ] {
            assert_ne!(r.user_text(), "portvakt: connection closed", "{r}");
        }
    }
}
