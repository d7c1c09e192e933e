//! A fixed set of worker threads, each with its own registry (its own guest
//! instance) on the served directory. Requests run in parallel; the on-disk
//! protocol, not the pool, keeps conflicting grants apart, exactly as it
//! does between processes. Nothing is cached: every call asks the disk.

use crate::{Error, Registry, Runtime};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

type Job = Box<dyn FnOnce(&mut Registry) + Send>;

/// Runs closures on a registry of the served directory.
pub struct Pool {
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    /// Starts `workers` threads, each with a registry open on `dir`.
    pub fn start(runtime: &Runtime, dir: &Path, workers: usize) -> Result<Pool, Error> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..workers.max(1) {
            let registry = Registry::open_with(runtime, dir)?;
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("hasp-worker-{n}"))
                .spawn(move || work(registry, &queue))
                .map_err(|e| Error::Runtime(format!("cannot start a worker thread: {e}")))?;
        }
        Ok(Pool { jobs })
    }

    /// Runs `f` on one worker's registry and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Registry) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |registry| {
            let _ = done.send(f(registry));
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::Runtime("the worker pool has stopped".into()))?;
        result
            .await
            .map_err(|_| Error::Runtime("a worker stopped during the call".into()))
    }
}

fn work(mut registry: Registry, queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(&mut registry),
            Err(_) => return, // the pool was dropped
        }
    }
}
