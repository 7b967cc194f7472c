//! Worker runtimes: one single-threaded tokio runtime per core, each on a
//! thread of its own, that accepted connections are handed to.
//!
//! nginx runs one worker process per core; this is the same layout inside
//! one process. A connection and every task it wakes (its upstream
//! connection, its audit receipt) stay on one thread, so no request pays
//! for hand-offs between threads or for work stealing. Measured on the
//! project's 2-core VM (`docs/edge.md`): about 11 % less CPU per request
//! than connections on the shared multi-threaded runtime. The edge's HTTPS
//! listener and the control API both serve through it.
//!
//! An [`IdleHook`] runs when every worker is about to park: the edge tells
//! its audit log then that no more records are coming until the ones its
//! requests wait on are durable (`docs/edge.md`, "When the workers go
//! idle").

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What runs on a worker thread when it is the last of the workers to
/// park (all of them have nothing to do until I/O or a timer wakes one).
/// It must be quick and must not block.
pub type IdleHook = Arc<dyn Fn() + Send + Sync>;

/// The worker runtimes of one listener.
pub struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `threads` workers named `name-0`, `name-1`, …: `None` is one
    /// per core, `Some(0)` none (connections then stay on the runtime that
    /// accepted them). `on_idle` runs each time all of them are parked.
    pub fn start(
        name: &str,
        threads: Option<usize>,
        on_idle: Option<IdleHook>,
    ) -> io::Result<Workers> {
        let n =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let mut handles = Vec::with_capacity(n);
        let mut stops = Vec::with_capacity(n);
        // Workers parked now; the one that makes it `n` runs the hook.
        let parked = Arc::new(AtomicUsize::new(0));
        for i in 0..n {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all();
            if let Some(hook) = &on_idle {
                let (hook, on_park, on_unpark) =
                    (Arc::clone(hook), Arc::clone(&parked), Arc::clone(&parked));
                builder
                    .on_thread_park(move || {
                        if on_park.fetch_add(1, Ordering::SeqCst) + 1 == n {
                            hook();
                        }
                    })
                    .on_thread_unpark(move || {
                        on_unpark.fetch_sub(1, Ordering::SeqCst);
                    });
            }
            let rt = builder.build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        tokio::select! {
                            _ = rx => {}
                            () = timer_anchor() => {}
                        }
                    });
                })?;
        }
        Ok(Workers {
            handles,
            stops,
            next: AtomicUsize::new(0),
        })
    }

    /// Moves `stream` to the next worker in turn and runs `serve` with it
    /// there, in `conns`. Without workers it runs on the current runtime.
    pub fn spawn<F, Fut>(
        &self,
        conns: &mut JoinSet<()>,
        stream: TcpStream,
        peer: SocketAddr,
        serve: F,
    ) where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = match self.handles.len() {
            0 => None,
            n => self
                .handles
                .get(self.next.fetch_add(1, Ordering::Relaxed) % n)
                .cloned(),
        };
        let Some(on) = worker else {
            conns.spawn(serve(stream));
            return;
        };
        // The socket leaves this runtime's reactor for the worker's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection lost moving to its worker");
                return;
            }
        };
        conns.spawn_on(
            async move {
                match TcpStream::from_std(stream) {
                    Ok(s) => serve(s).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connection lost moving to its worker")
                    }
                }
            },
            &on,
        );
    }

    /// Stops the workers (once their connections are done or aborted).
    pub fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
    }
}

/// Accepts a connection from `l`, with Nagle's algorithm off. An accept
/// error (such as running out of descriptors) is logged and backs off for
/// 50 ms, then gives `None`, so a listener's loop does not spin.
pub async fn accept(l: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match l.accept().await {
        Ok((s, peer)) => {
            let _ = s.set_nodelay(true);
            Some((s, peer))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// How often a worker's [`timer_anchor`] wakes.
const TIMER_ANCHOR: Duration = Duration::from_millis(500);

/// Keeps a timer due within [`TIMER_ANCHOR`] on a worker's runtime, forever.
///
/// Every request arms a timer (hyper's header-read timeout, 10 s by
/// default, as each keep-alive connection waits for its next request). When
/// tokio registers a timer due earlier than the earliest one it knew of as
/// it last went to sleep, or when it knew of none, it wakes its own I/O
/// driver through an eventfd: a `write` system call, and a spurious return
/// from `epoll_wait` later. Under load a worker often sleeps with no timer
/// armed (every connection waiting for its upstream or its audit receipt),
/// so that happened on about every request (`perf trace`: 0.9 eventfd
/// writes per request from the workers). With this timer always due
/// sooner, registering a request's timer never wakes the driver. Its own
/// cost is two wake-ups a second.
async fn timer_anchor() {
    loop {
        tokio::time::sleep(TIMER_ANCHOR).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_hook_runs_once_every_worker_has_parked() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let hook: IdleHook = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let workers = Workers::start("idle-test", Some(2), Some(hook)).expect("workers");
        // Nothing to do: both park at once, and the second to park runs it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(runs.load(Ordering::SeqCst) > 0);
        workers.stop();
    }

    #[test]
    fn workers_without_a_hook_start_and_stop() {
        let workers = Workers::start("plain-test", Some(1), None).expect("workers");
        workers.stop();
    }
}
