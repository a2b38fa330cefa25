//! What an attacker has: raw TCP sockets from any loopback address, bytes
//! that are not quite SSH, and a minimal SSH client of our own ([`RawSsh`])
//! that sends whatever message it is told to, in whatever order: things
//! neither OpenSSH nor the russh client library will send (channel requests
//! before login, data on channels that were never opened, oversized
//! keyboard-interactive answers).
//!
//! [`RawSsh`] speaks just enough SSH for that: the key exchanges
//! mlkem768x25519-sha256 (portvakt's default) and curve25519-sha256 (only
//! offered with `[server] classic_kex = true`), see [`Kex`];
//! aes128-gcm@openssh.com, ssh-ed25519 user keys ([`RawKey`]) and
//! sk-ssh-ed25519@openssh.com FIDO keys ([`RawSkKey`]).
//! Its cryptography is aws-lc-rs, not the RustCrypto crates the server's
//! russh uses (ml-kem, curve25519-dalek), so a shared mistake in how the
//! two encode a key exchange cannot cancel out.
//! It never checks the server's host key: it is the attacker, not a user.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{EphemeralPrivateKey, UnparsedPublicKey, X25519, agree_ephemeral};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, ML_KEM_768};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;

use super::net::random_bytes;

/// The version line our raw clients send.
pub const CLIENT_ID: &str = "SSH-2.0-portvakt-attack";

/// SSH message numbers used here (RFC 4250 §4.1).
pub mod msg {
    pub const DISCONNECT: u8 = 1;
    pub const IGNORE: u8 = 2;
    pub const UNIMPLEMENTED: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const SERVICE_REQUEST: u8 = 5;
    pub const SERVICE_ACCEPT: u8 = 6;
    pub const EXT_INFO: u8 = 7;
    pub const KEXINIT: u8 = 20;
    pub const NEWKEYS: u8 = 21;
    pub const KEX_ECDH_INIT: u8 = 30;
    pub const KEX_ECDH_REPLY: u8 = 31;
    pub const USERAUTH_REQUEST: u8 = 50;
    pub const USERAUTH_FAILURE: u8 = 51;
    pub const USERAUTH_SUCCESS: u8 = 52;
    pub const USERAUTH_BANNER: u8 = 53;
    pub const USERAUTH_INFO_REQUEST: u8 = 60;
    pub const USERAUTH_INFO_RESPONSE: u8 = 61;
    pub const GLOBAL_REQUEST: u8 = 80;
    pub const REQUEST_SUCCESS: u8 = 81;
    pub const REQUEST_FAILURE: u8 = 82;
    pub const CHANNEL_OPEN: u8 = 90;
    pub const CHANNEL_OPEN_CONFIRMATION: u8 = 91;
    pub const CHANNEL_OPEN_FAILURE: u8 = 92;
    pub const CHANNEL_WINDOW_ADJUST: u8 = 93;
    pub const CHANNEL_DATA: u8 = 94;
    pub const CHANNEL_EXTENDED_DATA: u8 = 95;
    pub const CHANNEL_EOF: u8 = 96;
    pub const CHANNEL_CLOSE: u8 = 97;
    pub const CHANNEL_REQUEST: u8 = 98;
    pub const CHANNEL_SUCCESS: u8 = 99;
    pub const CHANNEL_FAILURE: u8 = 100;
}

// ---------------------------------------------------------------------------
// Sockets

/// A runtime only for binding client sockets to a chosen source address
/// (std's TcpStream cannot bind before connecting).
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_io()
        .enable_time()
        .build()
        .expect("tokio runtime")
});

/// A TCP connection to 127.0.0.1:`port` from the loopback address `src`
/// (127.0.0.2, 127.0.0.3, ...: each is a different source to portvakt).
pub fn try_connect_from(src: Ipv4Addr, port: u16) -> io::Result<TcpStream> {
    RUNTIME.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((src, 0)))?;
        let dest = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(dest))
            .await
            .map_err(|_| io::Error::new(ErrorKind::TimedOut, "connect timed out"))??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// Like [`try_connect_from`], panicking on failure.
pub fn connect_from(src: Ipv4Addr, port: u16) -> TcpStream {
    try_connect_from(src, port).unwrap_or_else(|e| panic!("connect {src} -> 127.0.0.1:{port}: {e}"))
}

/// The loopback address 127.0.0.`n`.
pub fn loopback(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// What a server said first on a fresh connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// An SSH version line ("SSH-2.0-portvakt").
    Banner(String),
    /// The connection ended (EOF or reset) without a version line; the
    /// bytes that came before, if any.
    Closed(Vec<u8>),
    /// Nothing at all within the time allowed, and still open.
    Silent,
    /// The TCP connect itself failed (nobody listening).
    Refused,
}

impl Greeting {
    pub fn is_banner(&self) -> bool {
        matches!(self, Greeting::Banner(_))
    }
}

/// Reads what the server sends first, up to its first line.
pub fn read_greeting(stream: &mut TcpStream, timeout: Duration) -> Greeting {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Greeting::Silent;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Greeting::Closed(got),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.iter().position(|b| *b == b'\n') {
                    let line = String::from_utf8_lossy(&got[..end]).trim_end().to_string();
                    if line.starts_with("SSH-") {
                        return Greeting::Banner(line);
                    }
                    got.drain(..=end);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Greeting::Silent;
            }
            Err(_) => return Greeting::Closed(got),
        }
    }
}

/// Connects from `src` and reads the greeting (10 s at most).
pub fn greeting_from(src: Ipv4Addr, port: u16) -> Greeting {
    match try_connect_from(src, port) {
        Ok(mut stream) => read_greeting(&mut stream, Duration::from_secs(10)),
        Err(_) => Greeting::Refused,
    }
}

/// Reads and discards until the peer closes; returns what arrived, or
/// `None` if the connection is still open after `timeout`.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => {
                if got.len() < 1024 * 1024 {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(got),
        }
    }
}

/// Writes `data`, ignoring a peer that already closed (that is often the
/// point of the test).
pub fn send_ignoring_close(stream: &mut TcpStream, data: &[u8]) {
    let _ = stream.write_all(data);
    let _ = stream.flush();
}

// ---------------------------------------------------------------------------
// Processes and HTTP

/// Resident memory of process `pid` in KiB (VmRSS of /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> u64 {
    try_vm_rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Like [`vm_rss_kib`], `None` once the process is gone.
pub fn try_vm_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0); the status code and body.
pub fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, format!("no status: {text}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------
// SSH wire encoding

/// An SSH `string`: u32 length, then the bytes.
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// An SSH `uint32`.
pub fn u32be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// An SSH `mpint` of an unsigned big-endian number.
pub fn mpint(unsigned: &[u8]) -> Vec<u8> {
    let start = unsigned
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(unsigned.len());
    let mut body = Vec::new();
    if unsigned.get(start).is_some_and(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(&unsigned[start..]);
    string(&body)
}

/// Concatenates message parts: `payload(&[&[msg::X], &string(..), ...])`.
pub fn payload(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// An unencrypted SSH binary packet (before the first NEWKEYS) around `payload`.
pub fn plain_packet(payload: &[u8]) -> Vec<u8> {
    let mut padding = 8 - (4 + 1 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let length = 1 + payload.len() + padding;
    let mut out = u32be(length as u32).to_vec();
    out.push(padding as u8);
    out.extend_from_slice(payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// A KEXINIT payload with these ten name-lists (kex, host key, ciphers
/// both ways, MACs both ways, compression both ways, languages both ways).
pub fn kexinit(lists: [&[u8]; 10]) -> Vec<u8> {
    let mut out = vec![msg::KEXINIT];
    out.extend_from_slice(&random_bytes(16));
    for list in lists {
        out.extend_from_slice(&string(list));
    }
    out.push(0); // first_kex_packet_follows
    out.extend_from_slice(&[0; 4]);
    out
}

/// The key exchange a [`RawSsh`] offers (the only one it offers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kex {
    /// `mlkem768x25519-sha256`: ML-KEM-768 and X25519, SHA-256
    /// (draft-ietf-sshm-mlkem-hybrid-kex), what portvakt offers by default.
    MlKem768X25519,
    /// `curve25519-sha256` (RFC 8731), offered by portvakt only with
    /// `[server] classic_kex = true`.
    Curve25519,
}

impl Kex {
    pub fn name(self) -> &'static str {
        match self {
            Kex::MlKem768X25519 => "mlkem768x25519-sha256",
            Kex::Curve25519 => "curve25519-sha256",
        }
    }
}

/// What [`RawSsh`] offers: one algorithm of each kind, all of them ones
/// portvakt accepts (the key exchange only with the right config).
fn client_kexinit(kex: Kex) -> Vec<u8> {
    kexinit([
        kex.name().as_bytes(),
        b"ssh-ed25519",
        b"aes128-gcm@openssh.com",
        b"aes128-gcm@openssh.com",
        b"hmac-sha2-256-etm@openssh.com",
        b"hmac-sha2-256-etm@openssh.com",
        b"none",
        b"none",
        b"",
        b"",
    ])
}

/// Reads an SSH `string` at `*at`, advancing it.
pub fn read_string<'a>(data: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let s = data.get(*at + 4..*at + 4 + len)?;
    *at += 4 + len;
    Some(s)
}

/// Reads an SSH `uint32` at `*at`, advancing it.
pub fn read_u32(data: &[u8], at: &mut usize) -> Option<u32> {
    let v = u32::from_be_bytes(data.get(*at..*at + 4)?.try_into().ok()?);
    *at += 4;
    Some(v)
}

// ---------------------------------------------------------------------------
// Keys

/// An ed25519 user key held in memory, for [`RawSsh::auth_publickey`].
pub struct RawKey {
    pair: Ed25519KeyPair,
}

impl RawKey {
    pub fn generate() -> RawKey {
        let seed = random_bytes(32);
        RawKey {
            pair: Ed25519KeyPair::from_seed_unchecked(&seed).expect("ed25519 key from seed"),
        }
    }

    /// The public key blob (string "ssh-ed25519", string key).
    pub fn blob(&self) -> Vec<u8> {
        payload(&[
            &string(b"ssh-ed25519"),
            &string(self.pair.public_key().as_ref()),
        ])
    }

    /// The authorized_keys line ("ssh-ed25519 AAAA... comment").
    pub fn public_line(&self) -> String {
        format!(
            "ssh-ed25519 {} raw@portvakt-test",
            base64::engine::general_purpose::STANDARD.encode(self.blob())
        )
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        let signature = self.pair.sign(data);
        payload(&[&string(b"ssh-ed25519"), &string(signature.as_ref())])
    }
}

/// A FIDO user key (`sk-ssh-ed25519@openssh.com`), for
/// [`RawSsh::auth_publickey_sk`]: an ed25519 key plus an application
/// string, signing as a security key does (OpenSSH PROTOCOL.u2f).
pub struct RawSkKey {
    pair: Ed25519KeyPair,
    application: String,
}

impl RawSkKey {
    const ALGORITHM: &'static [u8] = b"sk-ssh-ed25519@openssh.com";
    /// The flag that says a user touched the key.
    pub const USER_PRESENT: u8 = 0x01;

    pub fn generate() -> RawSkKey {
        let seed = random_bytes(32);
        RawSkKey {
            pair: Ed25519KeyPair::from_seed_unchecked(&seed).expect("ed25519 key from seed"),
            application: "ssh:".to_string(),
        }
    }

    /// The public key blob (string algorithm, string key, string application).
    pub fn blob(&self) -> Vec<u8> {
        payload(&[
            &string(Self::ALGORITHM),
            &string(self.pair.public_key().as_ref()),
            &string(self.application.as_bytes()),
        ])
    }

    /// The authorized_keys line ("sk-ssh-ed25519@openssh.com AAAA... comment").
    pub fn public_line(&self) -> String {
        format!(
            "sk-ssh-ed25519@openssh.com {} fido@portvakt-test",
            base64::engine::general_purpose::STANDARD.encode(self.blob())
        )
    }

    /// ed25519 over SHA256(application) || flags || counter || SHA256(data);
    /// the blob carries the flags and counter after the signature.
    fn sign(&self, data: &[u8], flags: u8) -> Vec<u8> {
        let counter = u32be(1);
        let signed = payload(&[
            digest(&SHA256, self.application.as_bytes()).as_ref(),
            &[flags],
            &counter,
            digest(&SHA256, data).as_ref(),
        ]);
        let signature = self.pair.sign(&signed);
        payload(&[
            &string(Self::ALGORITHM),
            &string(signature.as_ref()),
            &[flags],
            &counter,
        ])
    }
}

// ---------------------------------------------------------------------------
// The raw SSH client

/// One direction's AES-GCM state.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
}

impl Direction {
    fn nonce(&mut self) -> Nonce {
        let nonce = Nonce::assume_unique_for_key(self.iv);
        // The last 8 bytes are the invocation counter (RFC 5647 §7.1).
        let counter = u64::from_be_bytes(self.iv[4..].try_into().unwrap()).wrapping_add(1);
        self.iv[4..].copy_from_slice(&counter.to_be_bytes());
        nonce
    }
}

/// Reads the server's version line one byte at a time, so that nothing
/// after it (the server's KEXINIT) is consumed.
fn read_version_line(stream: &mut TcpStream) -> Result<String, Greeting> {
    stream
        .set_read_timeout(Some(READ_WAIT))
        .expect("set_read_timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(Greeting::Closed(line)),
            Ok(_) if byte[0] == b'\n' => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if text.starts_with("SSH-") {
                    return Ok(text);
                }
                line.clear();
            }
            Ok(_) if line.len() > 4096 => return Err(Greeting::Closed(line)),
            Ok(_) => line.push(byte[0]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Greeting::Silent);
            }
            Err(_) => return Err(Greeting::Closed(line)),
        }
    }
}

/// How far [`RawSsh::connect_with`] got when it failed.
#[derive(Debug)]
pub enum Handshake {
    /// No SSH version line from the server: what happened instead (a
    /// banned source is closed before the server says anything).
    NoVersion(Greeting),
    /// The version lines were exchanged, the key exchange failed.
    KeyExchange(io::Error),
}

impl Handshake {
    /// The server closed the connection before its version line.
    pub fn closed_before_version(&self) -> bool {
        match self {
            Handshake::NoVersion(Greeting::Closed(bytes)) => bytes.is_empty(),
            _ => false,
        }
    }
}

/// What [`RawSsh::answers_before`] saw.
#[derive(Debug)]
pub struct Answers {
    /// The messages that came before the marker's answer (a DISCONNECT
    /// last, if the server ended the connection instead).
    pub before: Vec<Vec<u8>>,
    /// Why the marker got no answer: the connection ended.
    pub ended: Option<io::Error>,
}

impl Answers {
    /// Whether any message before the answer has a type `kind` accepts.
    pub fn any(&self, kind: impl Fn(u8) -> bool) -> bool {
        self.before.iter().any(|m| kind(m[0]))
    }
}

/// A minimal SSH client connection that does exactly what it is told.
pub struct RawSsh {
    stream: TcpStream,
    /// The server's version line.
    pub server_id: String,
    pub session_id: Vec<u8>,
    out: Option<Direction>,
    inn: Option<Direction>,
    /// Messages skipped while waiting for something else (type byte first).
    pub skipped: Vec<Vec<u8>>,
}

/// How long one read may wait before a [`RawSsh`] call gives up.
const READ_WAIT: Duration = Duration::from_secs(30);

impl RawSsh {
    /// Connects from 127.0.0.1 and completes the default key exchange.
    pub fn connect(port: u16) -> RawSsh {
        Self::connect_from(loopback(1), port).unwrap_or_else(|e| panic!("no SSH session: {e:?}"))
    }

    /// Connects from `src` and completes the default key exchange
    /// (mlkem768x25519-sha256, as portvakt's default config offers).
    pub fn connect_from(src: Ipv4Addr, port: u16) -> Result<RawSsh, Handshake> {
        Self::connect_with(src, port, Kex::MlKem768X25519)
    }

    /// Connects from `src` and completes the key exchange `kex`; `Err`
    /// says how far it got.
    pub fn connect_with(src: Ipv4Addr, port: u16, kex: Kex) -> Result<RawSsh, Handshake> {
        let mut stream =
            try_connect_from(src, port).map_err(|_| Handshake::NoVersion(Greeting::Refused))?;
        stream
            .write_all(format!("{CLIENT_ID}\r\n").as_bytes())
            .map_err(|_| Handshake::NoVersion(Greeting::Closed(Vec::new())))?;
        let server_id = read_version_line(&mut stream).map_err(Handshake::NoVersion)?;
        let mut ssh = RawSsh {
            stream,
            server_id,
            session_id: Vec::new(),
            out: None,
            inn: None,
            skipped: Vec::new(),
        };
        ssh.key_exchange(kex).map_err(Handshake::KeyExchange)?;
        Ok(ssh)
    }

    /// The underlying socket (to send raw bytes after the handshake).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn key_exchange(&mut self, kex: Kex) -> io::Result<()> {
        let bad = |what: &str| io::Error::new(ErrorKind::InvalidData, what.to_string());
        let i_c = client_kexinit(kex);
        self.send(&i_c)?;
        let i_s = self.recv_skipping(|t| t == msg::KEXINIT)?;
        let rng = SystemRandom::new();
        let private = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| bad("x25519"))?;
        let x25519_public = private
            .compute_public_key()
            .map_err(|_| bad("x25519 public"))?
            .as_ref()
            .to_vec();
        // The client's ephemeral value: C_INIT = ML-KEM-768 encapsulation
        // key || X25519 public key for the hybrid, Q_C for curve25519.
        let mlkem = match kex {
            Kex::MlKem768X25519 => {
                Some(DecapsulationKey::generate(&ML_KEM_768).map_err(|_| bad("ML-KEM-768 key"))?)
            }
            Kex::Curve25519 => None,
        };
        let q_c = match &mlkem {
            Some(dk) => {
                let ek = dk
                    .encapsulation_key()
                    .and_then(|ek| ek.key_bytes())
                    .map_err(|_| bad("ML-KEM-768 encapsulation key"))?;
                payload(&[ek.as_ref(), &x25519_public])
            }
            None => x25519_public,
        };
        // The hybrid's INIT and REPLY reuse the ECDH message numbers.
        self.send(&payload(&[&[msg::KEX_ECDH_INIT], &string(&q_c)]))?;
        let reply = self.recv_skipping(|t| t == msg::KEX_ECDH_REPLY)?;
        let mut at = 1;
        let k_s = read_string(&reply, &mut at)
            .ok_or_else(|| bad("K_S"))?
            .to_vec();
        // S_REPLY = ML-KEM ciphertext || X25519 public key, or Q_S.
        let q_s = read_string(&reply, &mut at)
            .ok_or_else(|| bad("Q_S"))?
            .to_vec();
        const MLKEM768_CIPHERTEXT: usize = 1088;
        let (ciphertext, server_x25519) = match &mlkem {
            Some(_) if q_s.len() != MLKEM768_CIPHERTEXT + 32 => {
                return Err(bad("S_REPLY is not 1088 + 32 bytes"));
            }
            Some(_) => q_s.split_at(MLKEM768_CIPHERTEXT),
            None => (&[][..], &q_s[..]),
        };
        let classic = agree_ephemeral(
            private,
            UnparsedPublicKey::new(&X25519, server_x25519),
            bad("x25519 agreement"),
            |k| Ok(k.to_vec()),
        )?;
        let k = match &mlkem {
            // K = SHA-256(K_PQ || K_CL), encoded as a string (not an mpint).
            Some(dk) => {
                let pq = dk
                    .decapsulate(Ciphertext::from(ciphertext))
                    .map_err(|_| bad("ML-KEM-768 decapsulation"))?;
                string(digest(&SHA256, &payload(&[pq.as_ref(), &classic])).as_ref())
            }
            None => mpint(&classic),
        };
        let exchange = payload(&[
            &string(CLIENT_ID.as_bytes()),
            &string(self.server_id.as_bytes()),
            &string(&i_c),
            &string(&i_s),
            &string(&k_s),
            &string(&q_c),
            &string(&q_s),
            &k,
        ]);
        let h = digest(&SHA256, &exchange).as_ref().to_vec();
        self.session_id = h.clone();
        self.send(&[msg::NEWKEYS])?;
        self.recv_skipping(|t| t == msg::NEWKEYS)?;
        let derive = |letter: u8| {
            digest(&SHA256, &payload(&[&k, &h, &[letter], &h]))
                .as_ref()
                .to_vec()
        };
        let direction = |iv: u8, key: u8| -> io::Result<Direction> {
            let key = UnboundKey::new(&AES_128_GCM, &derive(key)[..16]).map_err(|_| bad("key"))?;
            Ok(Direction {
                key: LessSafeKey::new(key),
                iv: derive(iv)[..12].try_into().unwrap(),
            })
        };
        self.out = Some(direction(b'A', b'C')?);
        self.inn = Some(direction(b'B', b'D')?);
        Ok(())
    }

    /// Sends one message (`payload` starts with its type byte).
    pub fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        let packet = match &mut self.out {
            None => plain_packet(payload),
            Some(dir) => {
                let mut padding = 16 - (1 + payload.len()) % 16;
                if padding < 4 {
                    padding += 16;
                }
                let length = (1 + payload.len() + padding) as u32;
                let mut body = vec![padding as u8];
                body.extend_from_slice(payload);
                body.extend(std::iter::repeat_n(0u8, padding));
                let nonce = dir.nonce();
                let tag = dir
                    .key
                    .seal_in_place_separate_tag(nonce, Aad::from(length.to_be_bytes()), &mut body)
                    .map_err(|_| io::Error::other("seal"))?;
                let mut packet = length.to_be_bytes().to_vec();
                packet.extend_from_slice(&body);
                packet.extend_from_slice(tag.as_ref());
                packet
            }
        };
        self.stream.write_all(&packet)?;
        self.stream.flush()
    }

    /// Receives one message (type byte first), waiting at most `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> io::Result<Vec<u8>> {
        self.stream.set_read_timeout(Some(wait))?;
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let len = u32::from_be_bytes(length) as usize;
        if len > 1024 * 1024 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "absurd packet length",
            ));
        }
        let tag = if self.inn.is_some() { 16 } else { 0 };
        let mut body = vec![0u8; len + tag];
        self.stream.read_exact(&mut body)?;
        let plain: &[u8] = match &mut self.inn {
            None => &body,
            Some(dir) => {
                let nonce = dir.nonce();
                &*dir
                    .key
                    .open_in_place(nonce, Aad::from(length), &mut body)
                    .map_err(|_| io::Error::new(ErrorKind::InvalidData, "bad tag"))?
            }
        };
        let padding = *plain
            .first()
            .ok_or_else(|| io::Error::other("empty packet"))? as usize;
        let end = plain
            .len()
            .checked_sub(padding)
            .filter(|e| *e >= 1)
            .ok_or_else(|| io::Error::other("bad padding"))?;
        Ok(plain[1..end].to_vec())
    }

    /// Receives one message, waiting at most [`READ_WAIT`].
    pub fn recv(&mut self) -> io::Result<Vec<u8>> {
        self.recv_within(READ_WAIT)
    }

    /// Receives messages until one whose type `want` accepts; answers the
    /// server's keepalives and notes everything else in `skipped`. A
    /// DISCONNECT is an error (`ConnectionAborted`) carrying its text.
    pub fn recv_skipping(&mut self, want: impl Fn(u8) -> bool) -> io::Result<Vec<u8>> {
        self.recv_skipping_within(READ_WAIT, want)
    }

    /// [`RawSsh::recv_skipping`] with an overall time limit.
    pub fn recv_skipping_within(
        &mut self,
        wait: Duration,
        want: impl Fn(u8) -> bool,
    ) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    ErrorKind::TimedOut,
                    "no such message in time",
                ));
            }
            let m = self.recv_within(left)?;
            let kind = m.first().copied().unwrap_or(0);
            if want(kind) {
                return Ok(m);
            }
            match kind {
                msg::DISCONNECT => {
                    let mut at = 5;
                    let text = read_string(&m, &mut at).unwrap_or_default();
                    return Err(io::Error::new(
                        ErrorKind::ConnectionAborted,
                        format!("DISCONNECT: {}", String::from_utf8_lossy(text)),
                    ));
                }
                msg::GLOBAL_REQUEST => {
                    let mut at = 1;
                    let _name = read_string(&m, &mut at);
                    if m.get(at) == Some(&1) {
                        self.send(&[msg::REQUEST_FAILURE])?;
                    }
                }
                _ => {}
            }
            self.skipped.push(m);
        }
    }

    /// Sends `marker`, a message the server always answers, and reads up
    /// to that answer (a type `answer` accepts). The server handles a
    /// connection's messages in order, so whatever it answered to the
    /// messages sent before the marker came before this answer.
    pub fn answers_before(&mut self, marker: &[u8], answer: impl Fn(u8) -> bool) -> Answers {
        let start = self.skipped.len();
        let result = self
            .send(marker)
            .and_then(|()| self.recv_skipping(|t| answer(t) || t == msg::DISCONNECT));
        let mut before = self.skipped[start..].to_vec();
        let ended = match result {
            Ok(m) if m.first() == Some(&msg::DISCONNECT) => {
                before.push(m);
                Some(io::Error::new(ErrorKind::ConnectionAborted, "DISCONNECT"))
            }
            Ok(_) => None,
            Err(e) => Some(e),
        };
        Answers { before, ended }
    }

    /// Reads until the server closes the connection (or sends DISCONNECT);
    /// false if it is still open after `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.recv_within(left) {
                Ok(m) if m.first() == Some(&msg::DISCONNECT) => return true,
                Ok(m) => self.skipped.push(m),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return false;
                }
                // The server closed the socket.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::UnexpectedEof
                            | ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    return true;
                }
                // This client could not read what came (a bad tag, bad
                // padding): that is no proof the server closed anything.
                Err(e) => panic!("the raw client failed to read the server: {e}"),
            }
        }
    }

    /// `ssh-userauth` service request; true when accepted.
    pub fn request_userauth(&mut self) -> io::Result<bool> {
        self.send(&payload(&[
            &[msg::SERVICE_REQUEST],
            &string(b"ssh-userauth"),
        ]))?;
        let m = self.recv_skipping(|t| t == msg::SERVICE_ACCEPT || t == msg::DISCONNECT)?;
        Ok(m[0] == msg::SERVICE_ACCEPT)
    }

    /// The server's answer to a userauth request: SUCCESS, FAILURE,
    /// or INFO_REQUEST (the whole message).
    fn auth_reply(&mut self) -> io::Result<Vec<u8>> {
        self.recv_skipping(|t| {
            matches!(
                t,
                msg::USERAUTH_SUCCESS | msg::USERAUTH_FAILURE | msg::USERAUTH_INFO_REQUEST
            )
        })
    }

    /// A signed `publickey` attempt as `user` with `key`.
    pub fn auth_publickey(&mut self, user: &str, key: &RawKey) -> io::Result<Vec<u8>> {
        self.auth_signed(user, b"ssh-ed25519", &key.blob(), |data| key.sign(data))
    }

    /// A signed `publickey` attempt as `user` with `key` whose signature
    /// covers other data than the request, so it does not verify.
    pub fn auth_publickey_bad_signature(
        &mut self,
        user: &str,
        key: &RawKey,
    ) -> io::Result<Vec<u8>> {
        self.auth_signed(user, b"ssh-ed25519", &key.blob(), |data| {
            key.sign(&payload(&[data, b"x"]))
        })
    }

    /// A signed `publickey` attempt as `user` with the FIDO key `key`,
    /// whose signature carries `flags` ([`RawSkKey::USER_PRESENT`] or not).
    pub fn auth_publickey_sk(
        &mut self,
        user: &str,
        key: &RawSkKey,
        flags: u8,
    ) -> io::Result<Vec<u8>> {
        self.auth_signed(user, RawSkKey::ALGORITHM, &key.blob(), |data| {
            key.sign(data, flags)
        })
    }

    /// A `publickey` request for `blob` under `algorithm`, with the
    /// signature `sign` makes of the session id and the request.
    fn auth_signed(
        &mut self,
        user: &str,
        algorithm: &[u8],
        blob: &[u8],
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> io::Result<Vec<u8>> {
        let request = payload(&[
            &[msg::USERAUTH_REQUEST],
            &string(user.as_bytes()),
            &string(b"ssh-connection"),
            &string(b"publickey"),
            &[1],
            &string(algorithm),
            &string(blob),
        ]);
        let signed = payload(&[&string(&self.session_id), &request]);
        let signature = sign(&signed);
        self.send(&payload(&[&request, &string(&signature)]))?;
        self.auth_reply()
    }

    /// A `password` attempt.
    pub fn auth_password(&mut self, user: &str, password: &[u8]) -> io::Result<Vec<u8>> {
        self.send(&payload(&[
            &[msg::USERAUTH_REQUEST],
            &string(user.as_bytes()),
            &string(b"ssh-connection"),
            &string(b"password"),
            &[0],
            &string(password),
        ]))?;
        self.auth_reply()
    }

    /// Starts `keyboard-interactive` as `user`.
    pub fn auth_keyboard_interactive(&mut self, user: &str) -> io::Result<Vec<u8>> {
        self.send(&payload(&[
            &[msg::USERAUTH_REQUEST],
            &string(user.as_bytes()),
            &string(b"ssh-connection"),
            &string(b"keyboard-interactive"),
            &string(b""),
            &string(b""),
        ]))?;
        self.auth_reply()
    }

    /// Sends USERAUTH_INFO_RESPONSE with `answers` (no answer to wait for:
    /// an oversized one may end the connection).
    pub fn send_info_response(&mut self, answers: &[Vec<u8>]) -> io::Result<()> {
        let mut m = vec![msg::USERAUTH_INFO_RESPONSE];
        m.extend_from_slice(&u32be(answers.len() as u32));
        for a in answers {
            m.extend_from_slice(&string(a));
        }
        self.send(&m)
    }

    /// Waits for the next userauth answer (after [`RawSsh::send_info_response`]).
    pub fn next_auth_reply(&mut self) -> io::Result<Vec<u8>> {
        self.auth_reply()
    }

    /// Opens a channel of `kind` with extra open data; our channel id is
    /// `local`. Returns the server's CONFIRMATION or FAILURE message.
    pub fn channel_open(&mut self, kind: &str, local: u32, extra: &[u8]) -> io::Result<Vec<u8>> {
        self.send(&payload(&[
            &[msg::CHANNEL_OPEN],
            &string(kind.as_bytes()),
            &u32be(local),
            &u32be(2 * 1024 * 1024),
            &u32be(32 * 1024),
            extra,
        ]))?;
        self.recv_skipping(|t| {
            t == msg::CHANNEL_OPEN_CONFIRMATION || t == msg::CHANNEL_OPEN_FAILURE
        })
    }

    /// Opens a `direct-tcpip` channel to `host:port` (any u32 port).
    pub fn open_direct_tcpip(&mut self, local: u32, host: &[u8], port: u32) -> io::Result<Vec<u8>> {
        let extra = payload(&[
            &string(host),
            &u32be(port),
            &string(b"127.0.0.1"),
            &u32be(40000),
        ]);
        self.channel_open("direct-tcpip", local, &extra)
    }

    /// Sends CHANNEL_REQUEST `kind` to the server's channel `remote`.
    pub fn channel_request(
        &mut self,
        remote: u32,
        kind: &str,
        want_reply: bool,
        extra: &[u8],
    ) -> io::Result<()> {
        self.send(&payload(&[
            &[msg::CHANNEL_REQUEST],
            &u32be(remote),
            &string(kind.as_bytes()),
            &[u8::from(want_reply)],
            extra,
        ]))
    }

    /// Sends `count` CHANNEL_DATA messages of `size` bytes to the server's
    /// channel `remote` as fast as the socket takes them, reading nothing:
    /// no window is waited for (a client that ignores flow control). Stops
    /// at the first failed write (the server closed the connection, or
    /// stopped reading for `stall`); returns the data bytes sent.
    pub fn flood_channel_data(
        &mut self,
        remote: u32,
        size: usize,
        count: usize,
        stall: Duration,
    ) -> usize {
        let data = vec![b'x'; size];
        let _ = self.stream.set_write_timeout(Some(stall));
        let mut sent = 0;
        for _ in 0..count {
            if self.channel_data(remote, &data).is_err() {
                break;
            }
            sent += size;
        }
        let _ = self.stream.set_write_timeout(None);
        sent
    }

    /// Sends 32 KiB CHANNEL_DATA messages to the server's channel `remote`
    /// as a well-behaved client does: only as far as the window allows,
    /// starting from `window` and adding each WINDOW_ADJUST. Other messages
    /// are kept in `skipped`. Returns the data bytes sent once the server
    /// closed the channel or the connection, or granted no window for
    /// `stall`.
    pub fn send_within_window(&mut self, remote: u32, mut window: u32, stall: Duration) -> usize {
        let data = vec![b'x'; 32 * 1024];
        let mut sent = 0;
        let mut granted = Instant::now();
        loop {
            while window > 0 {
                let n = window.min(data.len() as u32);
                if self.channel_data(remote, &data[..n as usize]).is_err() {
                    return sent;
                }
                window -= n;
                sent += n as usize;
            }
            let left = stall.saturating_sub(granted.elapsed());
            if left.is_zero() {
                return sent;
            }
            match self.recv_within(left) {
                Ok(m) if m.first() == Some(&msg::CHANNEL_WINDOW_ADJUST) => {
                    let mut at = 5;
                    window += read_u32(&m, &mut at).unwrap_or(0);
                    granted = Instant::now();
                }
                Ok(m) if matches!(m.first(), Some(&msg::CHANNEL_CLOSE | &msg::DISCONNECT)) => {
                    self.skipped.push(m);
                    return sent;
                }
                Ok(m) => self.skipped.push(m),
                Err(_) => return sent,
            }
        }
    }

    /// Sends CHANNEL_DATA to the server's channel `remote`.
    pub fn channel_data(&mut self, remote: u32, data: &[u8]) -> io::Result<()> {
        self.send(&payload(&[
            &[msg::CHANNEL_DATA],
            &u32be(remote),
            &string(data),
        ]))
    }
}

/// A global request every server answers (after login): REQUEST_FAILURE
/// for a name it does not know. A marker for [`RawSsh::answers_before`].
pub fn keepalive_request() -> Vec<u8> {
    payload(&[
        &[msg::GLOBAL_REQUEST],
        &string(b"keepalive@openssh.com"),
        &[1],
    ])
}

/// A `none` userauth request for `user`: before login the server answers
/// it with USERAUTH_FAILURE. A marker for [`RawSsh::answers_before`].
pub fn none_auth_request(user: &str) -> Vec<u8> {
    payload(&[
        &[msg::USERAUTH_REQUEST],
        &string(user.as_bytes()),
        &string(b"ssh-connection"),
        &string(b"none"),
    ])
}

/// A SERVICE_REQUEST for `service`.
pub fn service_request(service: &str) -> Vec<u8> {
    payload(&[&[msg::SERVICE_REQUEST], &string(service.as_bytes())])
}

/// The receive window and maximum packet size the server grants in a
/// CHANNEL_OPEN_CONFIRMATION (None for a failure).
pub fn confirmed_window(reply: &[u8]) -> Option<(u32, u32)> {
    if reply.first() != Some(&msg::CHANNEL_OPEN_CONFIRMATION) {
        return None;
    }
    let mut at = 9;
    Some((read_u32(reply, &mut at)?, read_u32(reply, &mut at)?))
}

/// The server's channel id in a CHANNEL_OPEN_CONFIRMATION (None for a failure).
pub fn confirmed_channel(reply: &[u8]) -> Option<u32> {
    if reply.first() != Some(&msg::CHANNEL_OPEN_CONFIRMATION) {
        return None;
    }
    let mut at = 5;
    read_u32(reply, &mut at)
}

/// The description of a DISCONNECT message.
pub fn disconnect_text(m: &[u8]) -> String {
    let mut at = 5;
    read_string(m, &mut at)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default()
}

/// The reason text of a CHANNEL_OPEN_FAILURE.
pub fn open_failure_text(reply: &[u8]) -> String {
    let mut at = 9;
    read_string(reply, &mut at)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default()
}
