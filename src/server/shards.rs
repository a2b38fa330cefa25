//! Where connections run: each on one of a few threads of its own (one per
//! CPU), every task of the connection with it.
//!
//! A connection is a pipeline of tasks that hand each packet on: the russh
//! session, the forward's pump, and for a recorded target the inner
//! server, the relay, the upstream client and the recorder. On tokio's
//! work-stealing runtime those tasks spread over all the workers, and every
//! hand-over between two of them wakes a worker on another CPU: a futex, an
//! inter-processor interrupt, a context switch, caches moved between CPUs,
//! thousands of times a second per busy connection. On a thread of its own
//! (a current-thread runtime) a connection's hand-overs stay on one CPU,
//! while the connections together still use every CPU. Measured with the
//! benchmark, a recorded session then costs 15 % less CPU per GiB (25 %
//! with its chunk writers on the main runtime, below), a pass-through
//! forward about a fifth less (docs/BENCHMARKS.md, "Recorded targets").
//!
//! A new connection goes to the thread with the fewest connections. What
//! the connections share (the database pool, the audit writer, the config,
//! the background tasks) is runtime-agnostic or lives on the main runtime.
//! Work handed over in large pieces, not per packet (a recording's chunks:
//! compression, hashing, the database write), goes to the main runtime with
//! [`spawn_work`], beside the connection instead of in its way.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// How long a stopping shard gives its last tasks to end.
const STOP_WAIT: Duration = Duration::from_secs(5);

thread_local! {
    /// On a shard's thread: the main runtime.
    static MAIN: std::cell::RefCell<Option<Handle>> = const { std::cell::RefCell::new(None) };
}

/// Spawn `fut` on the main (work-stealing) runtime when called on a shard's
/// thread, else on the current runtime: for work that comes in large
/// pieces and may run on another CPU than the connection that made it.
pub fn spawn_work<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match MAIN.with(|m| m.borrow().clone()) {
        Some(main) => main.spawn(fut),
        None => tokio::spawn(fut),
    }
}

/// The connection threads.
pub struct Shards {
    shards: Vec<Shard>,
    stop: CancellationToken,
}

struct Shard {
    handle: Handle,
    /// Connections on this thread now.
    load: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

/// One connection counted on its shard until dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shards {
    /// One thread per CPU the process may use.
    pub fn start() -> anyhow::Result<Shards> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(n)
    }

    /// Must be called on the main runtime.
    fn with_threads(n: usize) -> anyhow::Result<Shards> {
        let main = Handle::current();
        // Built up in place: a thread that fails to start drops the ones
        // before it, which Drop then ends.
        let mut shards = Shards {
            shards: Vec::with_capacity(n),
            stop: CancellationToken::new(),
        };
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a connection thread's runtime")?;
            let handle = rt.handle().clone();
            let (stopped, main) = (shards.stop.clone(), main.clone());
            let thread = std::thread::Builder::new()
                .name(format!("portvakt-conn-{i}"))
                .spawn(move || {
                    MAIN.with(|m| *m.borrow_mut() = Some(main));
                    rt.block_on(stopped.cancelled());
                    rt.shutdown_timeout(STOP_WAIT);
                })
                .context("cannot start a connection thread")?;
            shards.shards.push(Shard {
                handle,
                load: Arc::default(),
                thread,
            });
        }
        Ok(shards)
    }

    /// Run `fut` on the thread with the fewest connections; it counts as a
    /// connection there until it ends. It is first polled there, so what
    /// it creates (a socket taken over with `from_std`, say) is registered
    /// with that thread's runtime.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shard = self
            .shards
            .iter()
            .min_by_key(|s| s.load.load(Ordering::Relaxed))
            .expect("at least one shard");
        shard.load.fetch_add(1, Ordering::Relaxed);
        let counted = Counted(shard.load.clone());
        shard.handle.spawn(async move {
            let _counted = counted;
            fut.await;
        });
    }

    /// Stop the threads and wait for them: tasks still running get
    /// [`STOP_WAIT`], then are dropped.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let threads: Vec<_> = std::mem::take(&mut self.shards)
            .into_iter()
            .map(|s| s.thread)
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Shards {
    /// Dropped without [`Shards::stop`] (a start that failed after they
    /// began): the threads still end, without being waited for.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task of a connection runs on its shard's thread (work handed
    /// to `spawn_work` does not), and the next connection goes to the
    /// emptiest shard.
    #[tokio::test]
    async fn a_connection_and_its_tasks_stay_on_one_thread() {
        let shards = Shards::with_threads(2).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (hold, held) = tokio::sync::watch::channel(false);
        for _ in 0..2 {
            let (tx, mut held) = (tx.clone(), held.clone());
            shards.spawn(async move {
                let me = std::thread::current().name().map(str::to_string);
                let inner = tokio::spawn(async {
                    tokio::task::yield_now().await;
                    std::thread::current().name().map(str::to_string)
                });
                let spawned = inner.await.unwrap();
                let work = spawn_work(async { std::thread::current().name().map(str::to_string) });
                let worked = work.await.unwrap();
                tx.send((me, spawned, worked)).unwrap();
                let _ = held.wait_for(|h| *h).await;
            });
        }
        let mut names = Vec::new();
        for _ in 0..2 {
            let (me, spawned, worked) = rx.recv().await.unwrap();
            assert_eq!(me, spawned, "a spawned task left its connection's thread");
            assert_ne!(worked, me, "spawn_work ran on the shard");
            names.push(me.unwrap());
        }
        names.sort();
        assert_eq!(names, ["portvakt-conn-0", "portvakt-conn-1"]);
        // Both still count; once they end, the counts are back to zero.
        assert_eq!(
            shards
                .shards
                .iter()
                .map(|s| s.load.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            [1, 1]
        );
        hold.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while shards
            .shards
            .iter()
            .any(|s| s.load.load(Ordering::Relaxed) != 0)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "counts not released"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        shards.stop().await;
    }
}
