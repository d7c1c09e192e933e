//! `--fsync`: a change is acknowledged only once the filesystem holding the
//! lock directory has been synced after it. One thread runs `syncfs(2)` for
//! every change that finished before the sync began (group commit), so
//! concurrent requests share one sync instead of queueing for one each.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

/// Group commit for one directory's filesystem.
pub struct Syncer {
    shared: Arc<Shared>,
    synced: watch::Receiver<u64>,
}

struct Shared {
    /// Number of changes finished so far (each takes the next ticket).
    finished: Mutex<u64>,
    wake: Condvar,
}

impl Syncer {
    /// Starts the sync thread for the filesystem of `dir`.
    pub fn start(dir: &Path) -> std::io::Result<Syncer> {
        let handle = File::open(dir)?;
        let shared = Arc::new(Shared {
            finished: Mutex::new(0),
            wake: Condvar::new(),
        });
        let (report, synced) = watch::channel(0u64);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("hasp-sync".into())
            .spawn(move || sync_loop(&handle, &thread_shared, &report))?;
        Ok(Syncer { shared, synced })
    }

    /// Returns once a sync that began after this call has finished: call it
    /// after a change is complete, before acknowledging it.
    pub async fn durable(&self) {
        let ticket = {
            let Ok(mut finished) = self.shared.finished.lock() else {
                return;
            };
            *finished += 1;
            *finished
        };
        self.shared.wake.notify_one();
        let mut synced = self.synced.clone();
        let _ = synced.wait_for(|done| *done >= ticket).await;
    }
}

fn sync_loop(dir: &File, shared: &Shared, report: &watch::Sender<u64>) {
    let mut done = 0u64;
    loop {
        let target = {
            let Ok(mut finished) = shared.finished.lock() else {
                return;
            };
            while *finished == done {
                finished = match shared.wake.wait(finished) {
                    Ok(f) => f,
                    Err(_) => return,
                };
            }
            *finished
        };
        // SAFETY: syncfs on a descriptor this thread keeps open.
        unsafe { libc::syncfs(dir.as_raw_fd()) };
        done = target;
        if report.send(done).is_err() {
            return; // nobody waits any more: the server stopped
        }
    }
}
