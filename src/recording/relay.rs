//! One recorded session channel: the client's bytes go to the target, the
//! target's bytes go to the client and into the recording. Two tasks, one
//! per direction, so that neither side's flow control can stall the other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf, client};
use tokio::sync::mpsc;

use super::RecordJob;
use super::fileops::{FileOp, Parser};
use super::store::{Kind, Recorder};

/// The file-operation parser of an sftp or scp session, set when the
/// session starts, fed by both directions.
pub type SharedParser = Arc<std::sync::Mutex<Option<Parser>>>;

fn feed(parser: &SharedParser, f: impl FnOnce(&mut Parser) -> Vec<FileOp>) -> Option<Vec<FileOp>> {
    parser
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
        .map(f)
}

/// Stored at least this often while output flows (a crash loses less).
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// What the channel's requests tell the recording.
pub enum Control {
    Start(SessionStart),
    Resize(u32, u32),
    Input(Bytes),
    /// File operations completed by the client's bytes.
    FileOps(Vec<FileOp>),
}

/// A shell, exec or subsystem began.
pub struct SessionStart {
    pub kind: Kind,
    pub command: Option<String>,
    pub term: Option<String>,
    pub width: u32,
    pub height: u32,
}

/// Both ends of one session channel.
pub struct Relay {
    pub job: Arc<RecordJob>,
    pub login: String,
    pub inner: Channel<Msg>,
    pub inner_handle: russh::server::Handle,
    pub upstream: Channel<client::Msg>,
    pub replies: mpsc::UnboundedSender<bool>,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub control_tx: mpsc::UnboundedSender<Control>,
    pub parser: SharedParser,
}

/// Start both directions; returns the writer of the target's channel (the
/// requests of the client go through it).
pub fn start(r: Relay) -> Arc<ChannelWriteHalf<client::Msg>> {
    let (mut inner_read, inner_write) = r.inner.split();
    let (up_read, up_write) = r.upstream.split();
    let up_write = Arc::new(up_write);
    let input = r.job.config.recording.input;
    let to_target = up_write.clone();
    let control = r.control_tx.clone();
    let parser = r.parser.clone();
    // The client's side: bytes and EOF to the target.
    tokio::spawn(async move {
        while let Some(msg) = inner_read.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    // Fed before it is forwarded: the reply cannot come first.
                    match feed(&parser, |p| p.client(&data)) {
                        Some(ops) if !ops.is_empty() => {
                            let _ = control.send(Control::FileOps(ops));
                        }
                        Some(_) => {}
                        None if input => {
                            let _ = control.send(Control::Input(data.clone()));
                        }
                        None => {}
                    }
                    if to_target.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = to_target.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = to_target.close().await;
    });
    let from = FromTarget {
        job: r.job,
        login: r.login,
        up_read,
        inner: inner_write,
        handle: r.inner_handle,
        replies: r.replies,
        recorder: None,
        exit_status: None,
        failed: false,
        parser: r.parser,
    };
    tokio::spawn(from.run(r.control));
    up_write
}

/// The target's side: output to the client and the recording.
struct FromTarget {
    job: Arc<RecordJob>,
    login: String,
    up_read: russh::ChannelReadHalf,
    inner: ChannelWriteHalf<Msg>,
    handle: russh::server::Handle,
    replies: mpsc::UnboundedSender<bool>,
    recorder: Option<Recorder>,
    exit_status: Option<u32>,
    /// The recording could not be stored (and the session goes on).
    failed: bool,
    parser: SharedParser,
}

impl FromTarget {
    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut control_open = true;
        loop {
            tokio::select! {
                biased;
                c = control.recv(), if control_open => match c {
                    Some(c) => {
                        if !self.control(c).await {
                            break;
                        }
                    }
                    None => control_open = false,
                },
                msg = self.up_read.wait() => {
                    if !self.on_target(msg).await {
                        break;
                    }
                }
                _ = tick.tick() => {
                    if !self.flush().await {
                        break;
                    }
                }
            }
        }
        let _ = self.inner.close().await;
        self.finish().await;
    }

    /// False when the session must end.
    async fn control(&mut self, c: Control) -> bool {
        match c {
            Control::Start(s) => self.start(s).await,
            Control::Resize(w, h) => {
                if let Some(r) = &mut self.recorder
                    && r.resize(w, h)
                {
                    self.job.truncated(r.id());
                }
                true
            }
            Control::Input(data) => {
                if let Some(r) = &mut self.recorder
                    && r.input(&data)
                {
                    self.job.truncated(r.id());
                }
                self.flush_if_due().await
            }
            Control::FileOps(ops) => {
                self.file_ops(ops);
                self.flush_if_due().await
            }
        }
    }

    async fn start(&mut self, s: SessionStart) -> bool {
        if self.recorder.is_some() {
            return true;
        }
        match self
            .job
            .start_recording(&self.login, self.inner.id(), s)
            .await
        {
            Ok(r) => {
                self.recorder = Some(r);
                true
            }
            Err(e) => self.storage_failed(&e).await,
        }
    }

    /// False when the session must end.
    async fn on_target(&mut self, msg: Option<ChannelMsg>) -> bool {
        match msg {
            Some(ChannelMsg::Data { data }) => {
                // sftp and scp: their file operations are the record, not
                // their bytes. Fed before forwarding (see fileops).
                let ops = feed(&self.parser, |p| p.server(&data));
                // The packet's bytes as they are, not copied (`data` would
                // pass them through an 8 KiB copy buffer: four packets to
                // the client, each encrypted twice, for each one of the
                // target's 32 KiB).
                if self.inner.data_bytes(data.clone()).await.is_err() {
                    return false;
                }
                match ops {
                    Some(ops) => {
                        self.file_ops(ops);
                        self.flush_if_due().await
                    }
                    None => self.output(&data).await,
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext }) => {
                if self
                    .inner
                    .extended_data_bytes(ext, data.clone())
                    .await
                    .is_err()
                {
                    return false;
                }
                self.output(&data).await
            }
            Some(ChannelMsg::Eof) => {
                let _ = self.inner.eof().await;
                true
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                self.exit_status = Some(exit_status);
                let _ = self.inner.exit_status(exit_status).await;
                true
            }
            Some(ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            }) => {
                let _ = self
                    .handle
                    .exit_signal_request(
                        self.inner.id(),
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    )
                    .await;
                true
            }
            Some(ChannelMsg::Success) => {
                let _ = self.replies.send(true);
                true
            }
            Some(ChannelMsg::Failure) => {
                let _ = self.replies.send(false);
                true
            }
            Some(ChannelMsg::Close) | None => false,
            Some(_) => true,
        }
    }

    /// Each operation as a transcript line in the recording and a
    /// `file.op` event.
    fn file_ops(&mut self, ops: Vec<FileOp>) {
        for op in ops {
            let id = self.recorder.as_ref().map(|r| r.id());
            if let Some(r) = &mut self.recorder
                && r.output(format!("{}\r\n", op.line()).as_bytes())
            {
                self.job.truncated(r.id());
            }
            self.job.file_op(id, &op);
        }
    }

    async fn output(&mut self, data: &[u8]) -> bool {
        if let Some(r) = &mut self.recorder
            && r.output(data)
        {
            self.job.truncated(r.id());
        }
        self.flush_if_due().await
    }

    async fn flush_if_due(&mut self) -> bool {
        if self.recorder.as_ref().is_some_and(|r| r.wants_flush()) {
            return self.flush().await;
        }
        true
    }

    /// Store what is pending. False when the session must end.
    async fn flush(&mut self) -> bool {
        let Some(r) = &mut self.recorder else {
            return true;
        };
        match r.flush().await {
            Ok(()) => true,
            Err(e) => self.storage_failed(&e).await,
        }
    }

    /// The recording cannot be stored: end the session (on_failure =
    /// "close"), or go on unrecorded and say so in the audit trail.
    async fn storage_failed(&mut self, e: &crate::store::StoreError) -> bool {
        let close = self.job.config.recording.close_on_failure;
        let id = self.recorder.as_ref().map(|r| r.id());
        self.job.recording_failed(id, e, close);
        self.failed = true;
        self.recorder = None;
        if !close {
            return true;
        }
        let text = format!(
            "\r\nportvakt: the recording of this session cannot be stored, so the session is ended ({})\r\n",
            self.job.target
        );
        let _ = self.inner.extended_data(1, text.as_bytes()).await;
        false
    }

    async fn finish(&mut self) {
        if let Some(ops) = feed(&self.parser, Parser::finish) {
            self.file_ops(ops);
        }
        let Some(r) = self.recorder.take() else {
            return;
        };
        let id = r.id();
        match r.finish(self.exit_status).await {
            Ok(summary) => self.job.recording_ended(&summary),
            Err(e) => {
                self.job
                    .recording_failed(Some(id), &e, self.job.config.recording.close_on_failure)
            }
        }
    }
}

/// A session channel with no target behind it: the reason on stderr, exit
/// status 1, close.
pub fn refuse(channel: Channel<Msg>, handle: russh::server::Handle, why: String) {
    tokio::spawn(async move {
        let id = channel.id();
        let _ = channel
            .extended_data(1, format!("{why}\r\n").as_bytes())
            .await;
        let _ = handle.exit_status_request(id, 1).await;
        let _ = channel.eof().await;
        let _ = channel.close().await;
    });
}
