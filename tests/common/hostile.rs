//! A hostile recorded target: an SSH server (russh, in the test process)
//! that lets portvakt log in and then tries to open channels to it that
//! portvakt never asked for (a session, X11, `direct-tcpip`, and a
//! `forwarded-tcpip` for a port nobody forwarded). An exec answers with what
//! became of each: `session=refused x11=refused ...`.

use std::net::TcpListener;
use std::sync::Arc;

use russh::keys::load_secret_key;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId};

use super::keys::UserKey;

pub struct HostileTarget {
    pub port: u16,
    /// The host key's public line, for the target's `host_key`.
    pub host_key: String,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl HostileTarget {
    pub fn start() -> HostileTarget {
        let dir = tempfile::tempdir().unwrap();
        let key = UserKey::ed25519(dir.path(), "hostile_host_key");
        let secret = load_secret_key(&key.path, None).expect("host key");
        let config = Arc::new(server::Config {
            keys: vec![secret],
            ..Default::default()
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    if let Ok(running) = server::run_stream(config, tcp, Hostile).await {
                        let _ = running.await;
                    }
                });
            }
        });
        HostileTarget {
            port,
            host_key: key.public_line().trim().to_string(),
            runtime: Some(runtime),
            _dir: dir,
        }
    }
}

impl Drop for HostileTarget {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Hostile;

impl server::Handler for Hostile {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        _cert: &russh::keys::ssh_key::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let h = session.handle();
        tokio::spawn(async move {
            let outcome = |r: Result<Channel<Msg>, russh::Error>| match r {
                Ok(_) => "accepted",
                Err(_) => "refused",
            };
            let session = outcome(h.channel_open_session().await);
            let x11 = outcome(h.channel_open_x11("127.0.0.1", 6010).await);
            let direct = outcome(
                h.channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 40000)
                    .await,
            );
            let forwarded = outcome(
                h.channel_open_forwarded_tcpip("127.0.0.1", 9999, "127.0.0.1", 40001)
                    .await,
            );
            let text = format!(
                "session={session} x11={x11} direct-tcpip={direct} forwarded-tcpip={forwarded}\n"
            );
            let _ = h.data(channel, text.into_bytes()).await;
            let _ = h.exit_status_request(channel, 0).await;
            let _ = h.eof(channel).await;
            let _ = h.close(channel).await;
        });
        Ok(())
    }
}
