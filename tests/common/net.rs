//! Plain TCP targets: echo, sink, source, and a "dead" listener whose SYNs hang.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::proc::local;

/// Counters shared by a server's connection threads.
#[derive(Default)]
pub struct Counters {
    pub connections: AtomicU64,
    /// Connections whose handler has not finished yet.
    pub active: AtomicU64,
    /// Bytes the server read from its peers.
    pub bytes_in: AtomicU64,
    /// Bytes the server wrote to its peers.
    pub bytes_out: AtomicU64,
}

/// A TCP server on 127.0.0.1 running `handle` for each connection in its own
/// thread. Dropping it stops the accept loop; connection threads end when
/// their peers close.
pub struct TcpServer {
    pub port: u16,
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TcpServer {
    fn start<F>(handle: F) -> TcpServer
    where
        F: Fn(TcpStream, &Counters) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let port = listener.local_addr().expect("local_addr").port();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let accept = {
            let counters = Arc::clone(&counters);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    counters.connections.fetch_add(1, Ordering::SeqCst);
                    counters.active.fetch_add(1, Ordering::SeqCst);
                    let counters = Arc::clone(&counters);
                    let handle = Arc::clone(&handle);
                    thread::spawn(move || {
                        handle(stream, &counters);
                        counters.active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        TcpServer {
            port,
            counters,
            stop,
            accept: Some(accept),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections still open (their peer has not closed them yet).
    pub fn active(&self) -> u64 {
        self.counters.active.load(Ordering::SeqCst)
    }

    /// Bytes read from peers so far.
    pub fn bytes_in(&self) -> u64 {
        self.counters.bytes_in.load(Ordering::SeqCst)
    }

    /// Bytes written to peers so far.
    pub fn bytes_out(&self) -> u64 {
        self.counters.bytes_out.load(Ordering::SeqCst)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the loop sees the stop flag.
        let _ = TcpStream::connect_timeout(&local(self.port), Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Echoes every byte back; on end-of-input it finishes writing and half-closes.
pub struct EchoServer;

impl EchoServer {
    pub fn start() -> TcpServer {
        TcpServer::start(|mut stream, counters| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        counters.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        counters.bytes_out.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        })
    }
}

/// Reads and keeps everything it is sent; closes after end-of-input.
pub struct SinkServer {
    pub server: TcpServer,
    /// Everything received, one entry per connection (filled in when it ends).
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl SinkServer {
    pub fn start() -> SinkServer {
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        let server = TcpServer::start(move |mut stream, counters| {
            let mut data = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        counters.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                        data.extend_from_slice(&buf[..n]);
                    }
                }
            }
            store.lock().unwrap().push(data);
        });
        SinkServer { server, received }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }
}

/// Accepts connections and never reads from them: a wedged service, or an
/// `nc -l` nobody types into. What a peer sends piles up in the socket
/// buffers until they are full, and then the peer's writes block. Each
/// connection is held until the server is dropped.
pub struct StallServer {
    pub server: TcpServer,
    release: Arc<AtomicBool>,
}

impl StallServer {
    /// Silent: it sends nothing either.
    pub fn start() -> StallServer {
        Self::start_with(None)
    }

    /// Sends one byte every `every` (so its connections never look idle),
    /// and still reads nothing.
    pub fn talking(every: Duration) -> StallServer {
        Self::start_with(Some(every))
    }

    fn start_with(talk: Option<Duration>) -> StallServer {
        let release = Arc::new(AtomicBool::new(false));
        let held = Arc::clone(&release);
        let server = TcpServer::start(move |mut stream, counters| {
            let step = talk.unwrap_or(Duration::from_millis(100));
            while !held.load(Ordering::SeqCst) {
                thread::sleep(step);
                if talk.is_some() && stream.write_all(b".").is_ok() {
                    counters.bytes_out.fetch_add(1, Ordering::SeqCst);
                }
            }
            drop(stream);
        });
        StallServer { server, release }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.release.store(true, Ordering::SeqCst);
    }
}

/// Sends a fixed payload to each connection, then closes it. It reads
/// nothing, so what the peer sends is not counted.
pub struct SourceServer;

impl SourceServer {
    pub fn start(payload: Vec<u8>) -> TcpServer {
        let payload = Arc::new(payload);
        TcpServer::start(move |mut stream, counters| {
            if stream.write_all(&payload).is_ok() {
                counters
                    .bytes_out
                    .fetch_add(payload.len() as u64, Ordering::SeqCst);
            }
            let _ = stream.shutdown(Shutdown::Write);
            // Wait for the peer to close its side so no RST cuts the data short.
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        })
    }
}

/// A listener on 127.0.0.1 that never accepts and whose accept queue is
/// full: the kernel drops new SYNs, so a connect to it hangs until the
/// dialler's own timeout. That is a target that is "down" without refusing.
pub struct DeadTarget {
    pub port: u16,
    /// Connections that filled the accept queue; kept open while the target lives.
    _fillers: Vec<TcpStream>,
    _listener: tokio::net::TcpListener,
    _runtime: tokio::runtime::Runtime,
}

impl DeadTarget {
    pub fn start() -> DeadTarget {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = {
            let _guard = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(local(0)).expect("bind");
            // Backlog 0: the queue holds one connection, every later SYN is dropped.
            socket.listen(0).expect("listen")
        };
        let port = listener.local_addr().expect("local_addr").port();
        let mut fillers = Vec::new();
        // Fill the queue: connect until a connect no longer completes. On
        // loopback a completing connect takes microseconds, so one that has
        // not completed after a second is the kernel dropping our SYN.
        for _ in 0..64 {
            match TcpStream::connect_timeout(&local(port), Duration::from_secs(1)) {
                Ok(stream) => fillers.push(stream),
                Err(_) => break,
            }
        }
        assert!(
            fillers.len() < 64,
            "the accept queue of 127.0.0.1:{port} never filled up"
        );
        DeadTarget {
            port,
            _fillers: fillers,
            _listener: listener,
            _runtime: runtime,
        }
    }
}

/// `len` random bytes from /dev/urandom.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("read /dev/urandom");
    data
}
