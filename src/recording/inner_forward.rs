//! `-L` inside a recorded session: the target dials for the engineer, so
//! the forward is decided by the same policy as one through the bastion
//! (the destination must be a target this user may use, under the config in
//! force), the target is given the address the policy checked, and the
//! forward has its own row, like any other.

use std::sync::Arc;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure, client};

use super::RecordJob;
use super::counted::{Counted, Counters};
use super::upstream::Upstream;
use crate::audit::{DialledForward, ForwardRecord};
use crate::policy::{self, Request, SystemResolver};
use crate::reasons::{ChannelRefusal, ForwardStop};

/// Decide, audit, open through the target and relay, answering the
/// client's channel open; on its own task, off the session loop.
pub fn spawn(
    job: Arc<RecordJob>,
    upstream: Arc<client::Handle<Upstream>>,
    channel: Channel<Msg>,
    host: String,
    port: u32,
    reply: ChannelOpenHandle,
) {
    tokio::spawn(async move {
        match open(&job, &upstream, host, port).await {
            Ok((up, row)) => {
                reply.accept().await;
                relay(channel, up, row).await;
            }
            Err(why) => reply.reject(why).await,
        }
    });
}

/// Carry bytes both ways until both sides are done, then close the row.
async fn relay(channel: Channel<Msg>, up: Channel<client::Msg>, row: DialledForward) {
    let counters = Arc::new(Counters::default());
    let mut a = Counted::new(channel.into_stream(), counters.clone());
    let mut b = up.into_stream();
    let why = match tokio::io::copy_bidirectional(&mut a, &mut b).await {
        Ok(_) => ForwardStop::Closed,
        Err(_) => ForwardStop::Error,
    };
    row.closed(counters.totals(), why.into()).await;
}

async fn open(
    job: &RecordJob,
    upstream: &client::Handle<Upstream>,
    host: String,
    port: u32,
) -> Result<(Channel<client::Msg>, DialledForward), ChannelOpenFailure> {
    if !job.port_forwarding_allowed() {
        job.refused(
            ChannelRefusal::InnerForward,
            Some(&format!("{host}:{port}")),
        );
        return Err(prohibited(format!(
            "portvakt: forwarding inside a recorded session of {} is not allowed",
            job.target
        )));
    }
    let (rec, addr) = decide(job, host, port).await?;
    let planned = addr.to_string();
    let Some(open) = job.audit.forward_open_or_refuse(&rec, &planned).await else {
        return Err(prohibited(
            "portvakt: the audit trail is unavailable, so forwarding is refused".into(),
        ));
    };
    let up = match upstream
        .channel_open_direct_tcpip(
            addr.ip().to_string(),
            u32::from(addr.port()),
            "127.0.0.1",
            0,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            open.failed(ForwardStop::ConnectFailed.into()).await;
            return Err(ChannelOpenFailure::Other {
                code: 2,
                reason: format!("portvakt: {} could not reach {planned}: {e}", job.target),
            });
        }
    };
    Ok((up, open.dialled(addr, &planned).await))
}

/// The policy's answer under the config in force (a refusal is audited):
/// the forward's record and the one address the target is to dial.
async fn decide(
    job: &RecordJob,
    host: String,
    port: u32,
) -> Result<(ForwardRecord, std::net::SocketAddr), ChannelOpenFailure> {
    let cfg = job.live_config.load_full();
    let mut rec = ForwardRecord {
        connection_id: job.connection_id.clone(),
        user: job.identity.user().to_string(),
        auth_method: job.identity.method().as_str().to_string(),
        source: job.source,
        target: None,
        host: host.clone(),
        port,
        request_id: None,
        recorded: false,
    };
    let subject = job.identity.subject(&cfg);
    let req = Request { host: &host, port };
    let authorized = match policy::decide(&cfg.policy, &subject, &req, &SystemResolver).await {
        Ok(a) => a,
        Err(denied) => {
            rec.target = denied.target;
            let why = denied.reason;
            job.audit.forward_refused(&rec, why.result(), why).await;
            return Err(prohibited(format!(
                "portvakt: target {req} is not allowed for {}",
                job.identity.user()
            )));
        }
    };
    rec.target = Some(authorized.target().to_string());
    // The target dials exactly the address the policy checked.
    let Some(addr) = authorized.addrs().first().copied() else {
        return Err(prohibited("portvakt: no address".into()));
    };
    Ok((rec, addr))
}

fn prohibited(reason: String) -> ChannelOpenFailure {
    ChannelOpenFailure::Other { code: 1, reason }
}
