//! The network threads: one per CPU, each running a current-thread Tokio
//! runtime that owns the connections handed to it (round robin, as they
//! are accepted) from their first byte to their close. A connection's
//! socket, timers and guest calls all stay on its thread: no task moves
//! between threads, no wake-up crosses one, and each thread serves its
//! ready connections in turn. Against one work-stealing runtime for all,
//! that took 16 loopback connections from about 20 000 to 22 500 lock+unlock
//! cycles/s on two cores, at some 5 µs less CPU per cycle.
//!
//! What it gives up is stealing: a call that runs long holds up the other
//! connections of its thread. The one call that can (a list, which reads
//! every state under its prefix) is therefore run on the server's own
//! runtime instead (`Locks::list`).

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running threads; stopped (after their connections) by [`Threads::stop`].
pub(super) struct Threads {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
    next: AtomicUsize,
}

impl Threads {
    /// Starts `n` threads (at least one).
    pub(super) fn start(n: usize) -> std::io::Result<Threads> {
        let mut threads = Threads {
            handles: Vec::new(),
            stops: Vec::new(),
            joins: Vec::new(),
            next: AtomicUsize::new(0),
        };
        for _ in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            threads.handles.push(runtime.handle().clone());
            threads.stops.push(stop);
            threads
                .joins
                .push(
                    std::thread::Builder::new()
                        .name("hasp-io".into())
                        .spawn(move || {
                            runtime.block_on(async {
                                let _ = stopped.await;
                            });
                        })?,
                );
        }
        Ok(threads)
    }

    /// The runtime the next connection goes to.
    pub(super) fn next(&self) -> &Handle {
        let at = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[at]
    }

    /// Ends the threads, once their connections are done.
    pub(super) async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let joins = self.joins;
        let _ = tokio::task::spawn_blocking(move || {
            for join in joins {
                let _ = join.join();
            }
        })
        .await;
    }
}
