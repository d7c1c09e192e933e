//! `--fsync`: a change is acknowledged only once the filesystem holding the
//! lock directory has been synced after it. One thread runs `syncfs(2)` for
//! every change that finished before the sync began (group commit), so
//! concurrent requests share one sync instead of queueing for one each.
//!
//! Every waiter hears the result of the very sync that covered its change:
//! a failed sync fails each change it covered, and a sync thread that is
//! gone fails every change still waiting or yet to come. Nothing is ever
//! confirmed that was not synced.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::oneshot;

/// Why a change could not be confirmed durable.
#[derive(Clone, Debug)]
pub(super) enum SyncError {
    /// `syncfs(2)` failed: the change may be lost in a crash.
    Failed(Arc<std::io::Error>),
    /// The sync thread has stopped; nothing is synced any more.
    Stopped,
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Failed(err) => write!(f, "syncfs(2) failed: {err}"),
            SyncError::Stopped => f.write_str("the sync thread has stopped"),
        }
    }
}

/// What the sync thread runs once per batch of changes.
type Sync = Box<dyn FnMut() -> std::io::Result<()> + Send>;
/// Where a waiting change hears how the sync that covered it went.
type Waiter = oneshot::Sender<Result<(), SyncError>>;

/// Group commit for one directory's filesystem. Dropping it stops the
/// sync thread once the changes already waiting are synced.
pub(super) struct Syncer {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Changes finished since the last sync began.
    waiting: Vec<Waiter>,
    /// No sync will run any more: the thread ended, or the server stops.
    stopped: bool,
}

impl Syncer {
    /// Starts the sync thread for the filesystem of `dir`.
    pub(super) fn start(dir: &Path) -> std::io::Result<Syncer> {
        let handle = File::open(dir)?;
        Syncer::with(Box::new(move || {
            // SAFETY: syncfs on a descriptor the closure owns.
            if unsafe { libc::syncfs(handle.as_raw_fd()) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }))
    }

    /// Starts the sync thread with `sync` as the way to sync.
    fn with(sync: Sync) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("hasp-sync".into())
            .spawn(move || {
                // Whichever way the loop ends (a panic too), no change is
                // left waiting and none is queued after.
                let _stop = StopOnExit(&thread_shared);
                sync_loop(&thread_shared, sync);
            })?;
        Ok(Syncer { shared })
    }

    /// Returns once a sync that began after this call has finished, with
    /// its result: call it after a change is complete, before
    /// acknowledging it.
    pub(super) async fn durable(&self) -> Result<(), SyncError> {
        let (tell, told) = oneshot::channel();
        {
            let Ok(mut queue) = self.shared.queue.lock() else {
                return Err(SyncError::Stopped);
            };
            if queue.stopped {
                return Err(SyncError::Stopped);
            }
            queue.waiting.push(tell);
        }
        self.shared.wake.notify_one();
        told.await.unwrap_or(Err(SyncError::Stopped))
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        stop(&self.shared);
    }
}

/// Marks the queue stopped and fails every change still waiting.
fn stop(shared: &Shared) {
    let mut queue = shared
        .queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    queue.stopped = true;
    for waiter in queue.waiting.drain(..) {
        let _ = waiter.send(Err(SyncError::Stopped));
    }
    drop(queue);
    shared.wake.notify_all();
}

struct StopOnExit<'a>(&'a Shared);

impl Drop for StopOnExit<'_> {
    fn drop(&mut self) {
        stop(self.0);
    }
}

fn sync_loop(shared: &Shared, mut sync: Sync) {
    // Failed syncs in a row: the first of a burst is logged, and the first
    // success after one.
    let mut failing = 0u64;
    loop {
        let batch = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            while queue.waiting.is_empty() && !queue.stopped {
                queue = match shared.wake.wait(queue) {
                    Ok(queue) => queue,
                    Err(_) => return,
                };
            }
            if queue.waiting.is_empty() {
                return; // stopped, and nothing left to sync
            }
            std::mem::take(&mut queue.waiting)
        };
        let result = sync().map_err(|err| SyncError::Failed(Arc::new(err)));
        match &result {
            Err(err) => {
                if failing == 0 {
                    tracing::error!(
                        target: "hasp::serve",
                        "--fsync: {err}; changes are answered with an error until a sync \
                         succeeds"
                    );
                }
                failing += 1;
            }
            Ok(()) if failing > 0 => {
                tracing::warn!(
                    target: "hasp::serve",
                    "--fsync: syncs succeed again after {failing} failed"
                );
                failing = 0;
            }
            Ok(()) => {}
        }
        for waiter in batch {
            let _ = waiter.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_failed_sync_fails_its_changes_and_a_later_one_succeeds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let syncer = Syncer::with(Box::new(move || {
            match counted.fetch_add(1, Ordering::SeqCst) {
                1 => Err(std::io::Error::from_raw_os_error(libc::EIO)),
                _ => Ok(()),
            }
        }))
        .expect("start");
        block_on(async {
            assert!(syncer.durable().await.is_ok());
            let failed = syncer.durable().await.expect_err("the second sync fails");
            assert!(failed.to_string().contains("syncfs(2) failed"), "{failed}");
            assert!(syncer.durable().await.is_ok());
        });
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_sync_thread_that_died_fails_every_change_at_once() {
        let syncer = Syncer::with(Box::new(|| panic!("the sync broke"))).expect("start");
        block_on(async {
            for _ in 0..3 {
                assert!(matches!(syncer.durable().await, Err(SyncError::Stopped)));
            }
        });
    }

    #[test]
    fn a_poisoned_queue_fails_the_change() {
        let syncer = Syncer::with(Box::new(|| Ok(()))).expect("start");
        let shared = syncer.shared.clone();
        let _ = std::thread::spawn(move || {
            let _held = shared.queue.lock();
            panic!("poison the queue");
        })
        .join();
        block_on(async {
            assert!(matches!(syncer.durable().await, Err(SyncError::Stopped)));
        });
    }
}
