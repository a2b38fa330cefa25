//! The SSH server portvakt runs inside a recorded target's `direct-tcpip`
//! channel: the engineer's `ssh` logs in to it without a second prompt
//! (the outer login proved who they are), and each session channel is
//! relayed to the target and recorded ([`super::relay`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::HashAlg;
use russh::keys::ssh_key::Certificate;
use russh::server::{
    Auth, ChannelOpenHandle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, Sig, client};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::RecordJob;
use super::relay::{self, Control, SessionStart};
use super::store::Kind;
use super::upstream::{self, Upstream, UpstreamError};
use crate::reasons::ChannelRefusal;

/// How long the target may take to answer a channel request.
const REPLY_WAIT: Duration = Duration::from_secs(20);

/// How many answers one session channel may owe at once: a client that
/// keeps asking while the target does not answer is disconnected rather
/// than queued for without end (OpenSSH asks a handful per session).
const MAX_OWED: usize = 256;

/// One session channel of the inner connection, as its requests see it.
struct SessionCtl {
    up: Arc<russh::ChannelWriteHalf<client::Msg>>,
    /// What the client is owed for each request, in order ([`answer`]).
    asks: mpsc::Sender<Ask>,
    control: mpsc::UnboundedSender<Control>,
    parser: relay::SharedParser,
    pty: Option<(String, u32, u32)>,
    started: bool,
}

/// The answer owed for one channel request. The inner connection's loop
/// never waits for the target: each answer is taken over
/// (`Session::defer_channel_reply`, vendor/russh patch 10) and given by the
/// channel's [`answer`] task, in the order of the requests.
struct Ask {
    what: Owed,
    /// Did the client ask for an answer at all?
    wanted: bool,
}

enum Owed {
    /// The target's answer: the request went to it with want_reply.
    Target,
    /// The target's answer to agent forwarding; if yes, the agent is lent
    /// to the target (as `login`) before the client hears it.
    Agent(String),
    /// Decided by portvakt.
    Now(bool),
}

/// Gives the client the answers its requests on `channel` are owed, in
/// order; the target's answers come on `replies` in the order it was asked.
/// A target that does not answer within [`REPLY_WAIT`], or whose channel is
/// gone, is not waited for again on this channel (a late answer would be
/// paired with the wrong request): the requests after it are refused.
async fn answer(
    job: Arc<RecordJob>,
    handle: russh::server::Handle,
    channel: ChannelId,
    mut asks: mpsc::Receiver<Ask>,
    mut replies: mpsc::UnboundedReceiver<bool>,
) {
    let mut target_lost = false;
    while let Some(ask) = asks.recv().await {
        let ok = match &ask.what {
            Owed::Now(ok) => *ok,
            Owed::Target | Owed::Agent(_) if target_lost => false,
            Owed::Target | Owed::Agent(_) => {
                match tokio::time::timeout(REPLY_WAIT, replies.recv()).await {
                    Ok(Some(ok)) => ok,
                    Ok(None) | Err(_) => {
                        target_lost = true;
                        false
                    }
                }
            }
        };
        if let (true, Owed::Agent(login)) = (ok, &ask.what) {
            job.lend_agent(handle.clone(), login);
        }
        if ask.wanted {
            let sent = if ok {
                handle.channel_success(channel).await
            } else {
                handle.channel_failure(channel).await
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

/// The login to the target: `None` while it is under way, then the
/// connection or why there is none (told when a session opens).
type Upstreamed = Option<Result<Arc<client::Handle<Upstream>>, String>>;

/// The connection to the target once the login to it is done (awaited in a
/// task, never in the inner connection's loop).
async fn upstream_of(
    mut upstream: watch::Receiver<Upstreamed>,
) -> Result<Arc<client::Handle<Upstream>>, String> {
    match upstream.wait_for(Option::is_some).await {
        Ok(done) => match &*done {
            Some(result) => result.clone(),
            None => Err(NOT_LOGGED_IN.into()),
        },
        Err(_) => Err(NOT_LOGGED_IN.into()),
    }
}

const NOT_LOGGED_IN: &str = "portvakt: not logged in to the target";

/// The inner connection's handler.
pub struct Inner {
    job: Arc<RecordJob>,
    tcp: Option<TcpStream>,
    upstream: watch::Receiver<Upstreamed>,
    /// Taken by the login to the target, which sends its outcome.
    upstream_tx: Option<watch::Sender<Upstreamed>>,
    /// That login, stopped if the inner connection ends first.
    connecting: Option<tokio::task::AbortHandle>,
    login: Option<String>,
    channels: HashMap<ChannelId, SessionCtl>,
    /// Session channels the target has opened, from the tasks that opened
    /// them ([`Inner::adopt`]).
    opened: mpsc::UnboundedReceiver<(ChannelId, SessionCtl)>,
    opened_tx: mpsc::UnboundedSender<(ChannelId, SessionCtl)>,
}

impl Inner {
    pub fn new(job: Arc<RecordJob>, tcp: TcpStream) -> Inner {
        let (opened_tx, opened) = mpsc::unbounded_channel();
        let (upstream_tx, upstream) = watch::channel(None);
        Inner {
            job,
            tcp: Some(tcp),
            upstream,
            upstream_tx: Some(upstream_tx),
            connecting: None,
            login: None,
            channels: HashMap::new(),
            opened,
            opened_tx,
        }
    }

    /// Takes in the session channels opened since the last request. A
    /// channel is queued before the client hears it is open, so it is here
    /// by the time the client's first request on it is.
    fn adopt(&mut self) {
        while let Ok((id, ctl)) = self.opened.try_recv() {
            self.channels.insert(id, ctl);
        }
    }

    /// The session channel `channel`, if it is one of the target's.
    fn ctl(&mut self, channel: ChannelId) -> Option<&mut SessionCtl> {
        self.adopt();
        self.channels.get_mut(&channel)
    }

    /// Owe the client `what` for the request being handled on `channel`,
    /// answered in order by the channel's [`answer`] task. A channel that
    /// is not one of the target's sessions is refused at once (nothing on
    /// it was ever deferred).
    fn owe(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        what: Owed,
    ) -> Result<(), russh::Error> {
        let Some(ctl) = self.ctl(channel) else {
            return session.channel_failure(channel);
        };
        let wanted = session.defer_channel_reply(channel);
        ctl.asks.try_send(Ask { what, wanted }).map_err(|_| {
            tracing::warn!(
                connection_id = %self.job.connection_id,
                "recorded session: too many requests waiting for the target; disconnecting"
            );
            russh::Error::Inconsistent
        })
    }

    /// Does the config in force (not the one the forward was decided
    /// under) let this user log in to the target as `login`? A target gone
    /// or no longer recorded allows nothing.
    fn allowed(&self, login: &str) -> bool {
        self.job
            .recorded_now()
            .is_some_and(|r| r.allows_login(self.job.identity.user(), login))
    }

    /// The login is allowed: log in to the target as `login` now (in a
    /// task: the client is told it is logged in at once, and a session it
    /// opens waits for the target), so that a failure is known before a
    /// session opens.
    fn accept(&mut self, login: &str) -> Auth {
        if self.login.is_some() {
            return Auth::Accept;
        }
        self.login = Some(login.to_string());
        self.job.live.set_recorded_login(&self.job.target, login);
        let (Some(tcp), Some(done)) = (self.tcp.take(), self.upstream_tx.take()) else {
            return Auth::reject();
        };
        let job = self.job.clone();
        let login = login.to_string();
        let task = tokio::spawn(async move {
            let l = upstream::Login {
                job: Arc::downgrade(&job),
                cas: &job.cas,
                recorded: &job.recorded,
                names: &job.names,
                login: &login,
                key_id: format!("portvakt:{}:{}", job.identity.user(), job.connection_id),
                validity: job.config.recording.certificate_validity,
                timeout: job.config.sessions.connect_timeout + Duration::from_secs(10),
                kex: job.kex,
            };
            let outcome = match upstream::connect(tcp, l).await {
                Ok(h) => {
                    let h = Arc::new(h);
                    job.upstream_ok(&login, h.clone());
                    Ok(h)
                }
                Err(e) => {
                    job.upstream_failed(&login, &e);
                    Err(match e {
                        UpstreamError::HostKey(_) => format!(
                            "portvakt: {} presented a host key the config does not trust; not logged in",
                            job.target
                        ),
                        e => format!("portvakt: cannot log in to {} as {login}: {e}", job.target),
                    })
                }
            };
            let _ = done.send(Some(outcome));
        });
        self.connecting = Some(task.abort_handle());
        Auth::Accept
    }

    fn refuse_login(&self, login: &str) -> Auth {
        self.job.refused(ChannelRefusal::TargetLogin, Some(login));
        Auth::reject()
    }

    /// The client is owed the target's answer to a request, if it was
    /// sent to the target.
    fn ask(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
        sent: Result<(), russh::Error>,
    ) -> Result<(), russh::Error> {
        let what = match sent {
            Ok(()) => Owed::Target,
            Err(_) => Owed::Now(false),
        };
        self.owe(channel, session, what)
    }

    /// A shell, exec or subsystem: start the recording, then ask the target.
    async fn start(
        &mut self,
        channel: ChannelId,
        kind: Kind,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(ctl) = self.ctl(channel) else {
            return session.channel_failure(channel);
        };
        if ctl.started {
            return self.owe(channel, session, Owed::Now(false));
        }
        ctl.started = true;
        *ctl.parser.lock().unwrap_or_else(|e| e.into_inner()) =
            super::fileops::Parser::for_session(kind, command.as_deref());
        let (term, width, height) = ctl.pty.clone().unwrap_or_default();
        let _ = ctl.control.send(Control::Start(SessionStart {
            kind,
            command: command.clone(),
            term: (!term.is_empty()).then_some(term),
            width,
            height,
        }));
        let up = ctl.up.clone();
        let sent = match (kind, &command) {
            (Kind::Shell, _) => up.request_shell(true).await,
            (Kind::Sftp, _) => up.request_subsystem(true, "sftp").await,
            (_, Some(c)) => up.exec(true, c.as_bytes()).await,
            (_, None) => up.request_shell(true).await,
        };
        self.ask(channel, session, sent)
    }
}

impl Handler for Inner {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        let logins = self.job.recorded.logins_for(self.job.identity.user());
        Ok(Some(format!(
            "portvakt: this session on {} is recorded. Logins: {}\r\n",
            self.job.target,
            logins.join(", ")
        )))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if self.allowed(user) {
            return Ok(self.accept(user));
        }
        Ok(self.refuse_login(user))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let same = offer.public_key.fingerprint(HashAlg::Sha256).to_string()
            == self.job.identity.key_fingerprint();
        Ok(if same && self.allowed(user) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let same = key.public_key.fingerprint(HashAlg::Sha256).to_string()
            == self.job.identity.key_fingerprint();
        if same && self.allowed(user) {
            return Ok(self.accept(user));
        }
        Ok(self.refuse_login(user))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        cert: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let same = cert.public_key().fingerprint(HashAlg::Sha256).to_string()
            == self.job.identity.key_fingerprint();
        if same && self.allowed(user) {
            return Ok(self.accept(user));
        }
        Ok(self.refuse_login(user))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let login = self.login.clone();
        let upstream = self.upstream.clone();
        // The target is awaited beside the connection's loop, not in it;
        // the client hears that the channel is open once the target has
        // opened its own.
        let job = self.job.clone();
        let handle = session.handle();
        let opened = self.opened_tx.clone();
        tokio::spawn(async move {
            let (up, login) = match (upstream_of(upstream).await, login) {
                (Ok(up), Some(login)) => (up, login),
                (outcome, _) => {
                    // No target behind: say why on the session, then end it.
                    reply.accept().await;
                    let why = outcome.err().unwrap_or_else(|| NOT_LOGGED_IN.into());
                    relay::refuse(channel, handle, why);
                    return;
                }
            };
            let up_channel = match tokio::time::timeout(REPLY_WAIT, up.channel_open_session()).await
            {
                Ok(Ok(c)) => c,
                _ => {
                    reply
                        .reject(russh::ChannelOpenFailure::Other {
                            code: 2,
                            reason: format!("portvakt: {} did not open a session", job.target),
                        })
                        .await;
                    return;
                }
            };
            let id = channel.id();
            let (replies_tx, replies) = mpsc::unbounded_channel();
            let (asks, asks_rx) = mpsc::channel(MAX_OWED);
            let (control, control_rx) = mpsc::unbounded_channel();
            let parser = relay::SharedParser::default();
            let up_write = relay::start(relay::Relay {
                job: job.clone(),
                login,
                inner: channel,
                inner_handle: handle.clone(),
                upstream: up_channel,
                replies: replies_tx,
                control: control_rx,
                control_tx: control.clone(),
                parser: parser.clone(),
            });
            tokio::spawn(answer(job, handle, id, asks_rx, replies));
            let ctl = SessionCtl {
                up: up_write,
                asks,
                control,
                parser,
                pty: None,
                started: false,
            };
            if opened.send((id, ctl)).is_ok() {
                reply.accept().await;
            }
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ctl) = self.ctl(channel) else {
            return session.channel_failure(channel);
        };
        ctl.pty = Some((term.to_string(), col_width, row_height));
        let up = ctl.up.clone();
        let sent = up
            .request_pty(
                true, term, col_width, row_height, pix_width, pix_height, modes,
            )
            .await;
        self.ask(channel, session, sent)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only the locale, as sshd's default `AcceptEnv LANG LC_*`: a
        // target whose AcceptEnv is wider (or `*`) must not receive
        // LD_PRELOAD and the like from the client. No answer is awaited
        // (OpenSSH sends env without want_reply).
        if !accepted_env(name) {
            self.job.refused(ChannelRefusal::Env, Some(name));
            return self.owe(channel, session, Owed::Now(false));
        }
        if let Some(ctl) = self.ctl(channel) {
            let _ = ctl.up.set_env(false, name, value).await;
        }
        self.owe(channel, session, Owed::Now(true))
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Kind::Shell, None, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let kind = if is_scp(&command) {
            Kind::Scp
        } else {
            Kind::Exec
        };
        self.start(channel, kind, Some(command), session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            self.job.refused(ChannelRefusal::Subsystem, Some(name));
            return self.owe(channel, session, Owed::Now(false));
        }
        self.start(channel, Kind::Sftp, Some("sftp".into()), session)
            .await
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ctl) = self.ctl(channel) {
            let _ = ctl.control.send(Control::Resize(col_width, row_height));
            let _ = ctl
                .up
                .window_change(col_width, row_height, pix_width, pix_height)
                .await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(ctl) = self.ctl(channel) {
            let _ = ctl.up.signal(signal).await;
        }
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Lent only to a target that allows it (the config in force), and
        // only as far as the target accepts it.
        // The answer is owed through the channel's answer task like every
        // other (so in order); what this returns is then not sent.
        let login = self.login.clone();
        let allowed = self.job.agent_allowed();
        let Some(ctl) = self.ctl(channel) else {
            self.job.refused(ChannelRefusal::AgentForward, None);
            return Ok(false);
        };
        let what = match (login, allowed) {
            (Some(login), true) => match ctl.up.agent_forward(true).await {
                Ok(()) => Owed::Agent(login),
                Err(_) => Owed::Now(false),
            },
            _ => {
                self.job.refused(ChannelRefusal::AgentForward, None);
                Owed::Now(false)
            }
        };
        self.owe(channel, session, what)?;
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.job.refused(ChannelRefusal::X11, None);
        self.owe(channel, session, Owed::Now(false))
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (job, upstream, host) = (self.job.clone(), self.upstream.clone(), host.to_string());
        tokio::spawn(async move {
            match upstream_of(upstream).await {
                Ok(up) => super::inner_forward::spawn(job, up, channel, host, port, reply),
                Err(_) => drop(reply),
            }
        });
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Relayed only to a target that allows port forwarding (the config
        // in force), and only as far as the target accepts it.
        let request = format!("{address}:{port}");
        let login = match (self.login.clone(), self.job.port_forwarding_allowed()) {
            (Some(login), true) => login,
            _ => {
                self.job
                    .refused(ChannelRefusal::RemoteForward, Some(&request));
                return Ok(false);
            }
        };
        // The target's answer is awaited beside the loop; russh holds back
        // the answers to the client's later global requests (its
        // keepalives) until this one is given (vendor/russh patch 11).
        // What this returns is then not sent.
        let wanted = session.defer_request_reply();
        let (job, upstream, handle) = (self.job.clone(), self.upstream.clone(), session.handle());
        let (address, asked) = (address.to_string(), *port);
        tokio::spawn(async move {
            let bound = match upstream_of(upstream).await {
                Ok(up) => {
                    match tokio::time::timeout(REPLY_WAIT, up.tcpip_forward(&*address, asked)).await
                    {
                        Ok(Ok(bound)) => Some(if asked == 0 { bound } else { asked }),
                        _ => None,
                    }
                }
                Err(_) => {
                    job.refused(ChannelRefusal::RemoteForward, Some(&request));
                    None
                }
            };
            if let Some(port) = bound {
                job.listen_remote(handle.clone(), &login, &address, port);
            }
            if wanted {
                let _ = match bound {
                    Some(port) => handle.request_success((asked == 0).then_some(port)).await,
                    None => handle.request_failure().await,
                };
            }
        });
        Ok(false)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.job.unlisten_remote(address, port);
        // As for tcpip-forward: answered beside the loop, in order.
        let wanted = session.defer_request_reply();
        let (upstream, handle, address) =
            (self.upstream.clone(), session.handle(), address.to_string());
        tokio::spawn(async move {
            let ok = match upstream_of(upstream).await {
                Ok(up) => matches!(
                    tokio::time::timeout(REPLY_WAIT, up.cancel_tcpip_forward(&*address, port))
                        .await,
                    Ok(Ok(()))
                ),
                Err(_) => false,
            };
            if wanted {
                let _ = if ok {
                    handle.request_success(None).await
                } else {
                    handle.request_failure().await
                };
            }
        });
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.job
            .refused(ChannelRefusal::Streamlocal, Some(socket_path));
        Ok(false)
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        _reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.job
            .refused(ChannelRefusal::Streamlocal, Some(socket_path));
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.adopt();
        self.channels.remove(&channel);
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The inner connection is over: a login to the target still under
        // way is abandoned, not finished for a client that is gone.
        if let Some(task) = &self.connecting {
            task.abort();
        }
    }
}

/// The environment variables relayed to a recorded target: those sshd
/// accepts in its default config (Debian's `AcceptEnv LANG LC_*`).
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// `scp -t ...` / `scp -f ...`: the remote end of the legacy scp protocol.
fn is_scp(command: &str) -> bool {
    let mut words = command.split_whitespace();
    words
        .next()
        .is_some_and(|w| w == "scp" || w.ends_with("/scp"))
        && words.any(|w| w == "-t" || w == "-f")
}

#[cfg(test)]
mod tests {
    use super::{accepted_env, is_scp};

    #[test]
    fn only_the_locale_is_relayed() {
        for name in ["LANG", "LC_ALL", "LC_CTYPE"] {
            assert!(accepted_env(name), "{name}");
        }
        for name in ["LD_PRELOAD", "PATH", "BASH_ENV", "lang", "TERM", ""] {
            assert!(!accepted_env(name), "{name}");
        }
    }

    #[test]
    fn scp_commands() {
        assert!(is_scp("scp -t /tmp/x"));
        assert!(is_scp("scp -v -f file"));
        assert!(is_scp("/usr/bin/scp -t ."));
        assert!(!is_scp("scp"));
        assert!(!is_scp("echo scp -t"));
    }
}
