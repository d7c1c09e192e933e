//! A fixed set of worker threads, each with its own registry (its own guest
//! instance) on the served directory. Requests run in parallel; the on-disk
//! protocol, not the pool, keeps conflicting grants apart, exactly as it
//! does between processes. Nothing is cached that decides a grant: every
//! call asks the disk.
//!
//! A call about one resource always runs on the same worker (chosen by a
//! hash of the name), so the directories that guest keeps open and the
//! fencing mark it saw last are the ones it needs next; other calls take
//! turns.

use crate::{Error, Registry, Runtime};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

type Job = Box<dyn FnOnce(&mut Registry) + Send>;

/// Runs closures on a registry of the served directory.
pub struct Pool {
    workers: Vec<mpsc::Sender<Job>>,
    turn: AtomicUsize,
}

impl Pool {
    /// Starts `workers` threads, each with a registry open on `dir`.
    pub fn start(runtime: &Runtime, dir: &Path, workers: usize) -> Result<Pool, Error> {
        let mut senders = Vec::new();
        for n in 0..workers.max(1) {
            let registry = Registry::open_with(runtime, dir)?;
            let (jobs, queue) = mpsc::channel::<Job>();
            let (runtime, dir) = (runtime.clone(), dir.to_path_buf());
            std::thread::Builder::new()
                .name(format!("hasp-worker-{n}"))
                .spawn(move || work(registry, queue, &runtime, &dir))
                .map_err(|e| Error::Runtime(format!("cannot start a worker thread: {e}")))?;
            senders.push(jobs);
        }
        Ok(Pool {
            workers: senders,
            turn: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on one worker's registry and returns its result: the worker
    /// of `resource` when there is one, else the next in turn.
    pub async fn run<T: Send + 'static>(
        &self,
        resource: Option<&str>,
        f: impl FnOnce(&mut Registry) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let n = self.workers.len();
        let worker = match resource {
            Some(name) => {
                let mut hasher = DefaultHasher::new();
                name.hash(&mut hasher);
                (hasher.finish() % n as u64) as usize
            }
            None => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        };
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |registry| {
            let _ = done.send(f(registry));
        });
        self.workers[worker]
            .send(job)
            .map_err(|_| Error::Runtime("the worker pool has stopped".into()))?;
        result
            .await
            .map_err(|_| Error::Runtime("a worker stopped during the call".into()))
    }
}

fn work(mut registry: Registry, queue: mpsc::Receiver<Job>, runtime: &Runtime, dir: &Path) {
    // Ends when the pool is dropped.
    while let Ok(job) = queue.recv() {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut registry)));
        if ran.is_err() {
            // The caller got an error (its reply was dropped); this worker
            // goes on, with a fresh instance if one can be made.
            if let Ok(fresh) = Registry::open_with(runtime, dir) {
                registry = fresh;
            }
        }
    }
}
