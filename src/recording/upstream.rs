//! portvakt's own SSH client to a recorded target: the host key is checked
//! against the target's `host_key` or `host_ca` (never trusted on first
//! use), and the login is a fresh key with a minutes-long user certificate
//! from the recording target CA.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::HashAlg;
use russh::keys::ssh_key::certificate::CertType;
use russh::{Channel, Preferred, PublicKeyOrCertificate};
use tokio::net::TcpStream;

use super::RecordJob;
use super::ca::{Cas, UserCertRights};
use crate::policy::{HostTrust, Recorded};

/// Why portvakt could not log in to a target; the names are audit reasons.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the target's host key does not match the config ({0})")]
    HostKey(String),
    #[error("the target refused the login as {0}")]
    Refused(String),
    #[error("no answer in time")]
    Timeout,
    #[error("{0}")]
    Ssh(String),
}

/// The client handler: checks the server's key, nothing else.
pub struct Upstream {
    trust: HostTrust,
    names: Vec<String>,
    /// Why the key was refused, for the error.
    refused: Arc<Mutex<Option<String>>>,
    /// Decides the target's agent channels (weak: the job holds this
    /// connection's handle).
    job: Weak<RecordJob>,
}

impl Upstream {
    /// A channel the target opened unasked: refused, and audited
    /// (`target_channel_refused`, its type).
    async fn unasked(&self, reply: client::ChannelOpenHandle, what: &str) {
        if let Some(job) = self.job.upgrade() {
            job.refused(crate::reasons::ChannelRefusal::TargetChannel, Some(what));
        }
        prohibited(reply).await;
    }

    fn check(&self, key: &PublicKeyOrCertificate) -> Result<(), String> {
        match (&self.trust, key) {
            (HostTrust::Key(want), PublicKeyOrCertificate::PublicKey { key, .. }) => {
                if key.key_data() == want.key_data() {
                    Ok(())
                } else {
                    Err(format!(
                        "offered {}, expected {}",
                        key.fingerprint(HashAlg::Sha256),
                        want.fingerprint(HashAlg::Sha256)
                    ))
                }
            }
            (HostTrust::Key(_), PublicKeyOrCertificate::Certificate(_)) => {
                Err("offered a certificate, host_key pins a key".into())
            }
            (HostTrust::Ca(_), PublicKeyOrCertificate::PublicKey { key, .. }) => Err(format!(
                "offered a plain key {}, host_ca needs a host certificate",
                key.fingerprint(HashAlg::Sha256)
            )),
            (HostTrust::Ca(ca), PublicKeyOrCertificate::Certificate(cert)) => {
                if cert.cert_type() != CertType::Host {
                    return Err("offered a user certificate as host key".into());
                }
                cert.validate(&[ca.fingerprint(HashAlg::Sha256)])
                    .map_err(|e| format!("host certificate not valid under host_ca: {e}"))?;
                let named = cert
                    .valid_principals()
                    .iter()
                    .any(|p| self.names.iter().any(|n| n.eq_ignore_ascii_case(p)));
                if named {
                    Ok(())
                } else {
                    Err(format!(
                        "host certificate names {:?}, none of {:?}",
                        cert.valid_principals(),
                        self.names
                    ))
                }
            }
        }
    }
}

impl client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        match self.check(key) {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        match self
            .job
            .upgrade()
            .and_then(|job| job.agent_route().map(|route| (job, route)))
        {
            Some((job, route)) => {
                reply.accept().await;
                job.relay_agent(route, channel);
            }
            None => prohibited(reply).await,
        }
        Ok(())
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let routed = self.job.upgrade().and_then(|job| {
            job.remote_route(connected_address, connected_port)
                .map(|route| (job, route))
        });
        match routed {
            Some((job, route)) => {
                reply.accept().await;
                let c = super::RemoteConn {
                    address: connected_address.to_string(),
                    port: connected_port,
                    originator_address: originator_address.to_string(),
                    originator_port,
                };
                job.relay_remote(route, c, channel);
            }
            None => prohibited(reply).await,
        }
        Ok(())
    }

    // A target opens no other channel to portvakt: russh would accept them
    // (and keep their buffers) by default. Refused and audited.

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.unasked(reply, "forwarded-streamlocal").await;
        Ok(())
    }

    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<client::Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.unasked(reply, "session").await;
        Ok(())
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<client::Msg>,
        _host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.unasked(reply, "direct-tcpip").await;
        Ok(())
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<client::Msg>,
        _socket_path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.unasked(reply, "direct-streamlocal").await;
        Ok(())
    }

    async fn server_channel_open_x11(
        &mut self,
        _channel: Channel<client::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.unasked(reply, "x11").await;
        Ok(())
    }
}

async fn prohibited(reply: client::ChannelOpenHandle) {
    reply
        .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
        .await;
}

/// What a login to a target needs.
pub struct Login<'a> {
    pub job: Weak<RecordJob>,
    pub cas: &'a Cas,
    pub recorded: &'a Recorded,
    /// Every name the target is dialled by (a host certificate must name one).
    pub names: &'a [String],
    pub login: &'a str,
    /// `portvakt:<user>:<connection id>`.
    pub key_id: String,
    pub validity: Duration,
    pub timeout: Duration,
    pub kex: &'static [russh::kex::Name],
}

/// Handshake with the target over `tcp` and log in as `l.login`.
pub async fn connect(
    tcp: TcpStream,
    l: Login<'_>,
) -> Result<client::Handle<Upstream>, UpstreamError> {
    let refused = Arc::new(Mutex::new(None));
    let handler = Upstream {
        trust: l.recorded.trust.clone(),
        names: l.names.to_vec(),
        refused: refused.clone(),
        job: l.job.clone(),
    };
    let certs: &'static [russh::keys::Algorithm] = match l.recorded.trust {
        HostTrust::Ca(_) => &[russh::keys::Algorithm::Ed25519],
        HostTrust::Key(_) => &[],
    };
    let config = client::Config {
        preferred: Preferred {
            kex: Cow::Borrowed(l.kex),
            host_key_certificates: Cow::Borrowed(certs),
            cipher: Cow::Borrowed(crate::server::upstream_ciphers()),
            mac: Cow::Borrowed(crate::server::MACS),
            compression: Cow::Borrowed(crate::server::COMPRESSION),
            ..Preferred::default()
        },
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    };
    let attempt = async {
        let mut handle = match client::connect_stream(Arc::new(config), tcp, handler).await {
            Ok(h) => h,
            Err(e) => {
                let why = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
                return Err(match why {
                    Some(why) => UpstreamError::HostKey(why),
                    None => UpstreamError::Ssh(e.to_string()),
                });
            }
        };
        let key = crate::keyfile::generate("portvakt").map_err(UpstreamError::Ssh)?;
        let rights = UserCertRights {
            port_forwarding: l.recorded.permit_port_forwarding,
            agent_forwarding: l.recorded.agent_forwarding,
        };
        let cert = l
            .cas
            .user_certificate(key.public_key(), l.login, &l.key_id, l.validity, rights)
            .map_err(|e| UpstreamError::Ssh(e.to_string()))?;
        match handle
            .authenticate_openssh_cert(l.login, Arc::new(key), cert)
            .await
            .map_err(|e| UpstreamError::Ssh(e.to_string()))?
        {
            AuthResult::Success => Ok(handle),
            AuthResult::Failure { .. } => Err(UpstreamError::Refused(l.login.to_string())),
        }
    };
    match tokio::time::timeout(l.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::Timeout),
    }
}
