//! A fixed set of guest instances on the served directory, called from the
//! network threads themselves: each call runs the guest on a fiber, so a
//! request never waits for another thread to pick it up. Instances work in
//! parallel; the on-disk protocol, not the pool, keeps conflicting grants
//! apart, exactly as it does between processes. Nothing is cached that
//! decides a grant: every call asks the disk.
//!
//! An instance is given back once a call has grown its memory past
//! [`KEEP_MEMORY`], so the daemon returns near its idle size after big
//! calls.
//!
//! A call about one resource always goes to the same instance (chosen by a
//! hash of the name), so the directories that guest keeps open and the
//! state it saw last are the ones it needs next; other calls take turns.

use crate::bindings::registry::types as wit;
use crate::bindings::registry_async::Guest;
use crate::file_lock::LockDirs;
use crate::registry::GUEST_DIR;
use crate::runtime::{runtime_error, Serving, State};
use crate::{Error, Runtime};
use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Mutex;
use wasmtime::component::ResourceAny;
use wasmtime::Store;

/// An instance whose linear memory has grown past this is dropped after
/// the call that grew it, and a fresh one started when next needed. A
/// memory never shrinks, so one big call (a list of some ten thousand
/// locks) would otherwise stay resident for the daemon's life, in every
/// instance that ever made one. A fresh instance holds about 1 MiB, and
/// every call but a big list stays there.
const KEEP_MEMORY: usize = 4 << 20;

/// Guest instances of the served directory.
pub struct Pool {
    runtime: Runtime,
    dir: PathBuf,
    /// Each instance, or `None` until it is needed again after a trap.
    instances: Vec<Mutex<Option<Live>>>,
    turn: AtomicUsize,
}

/// One guest instance with the registry it opened.
struct Live {
    store: Store<State>,
    guest: Guest,
    handle: ResourceAny,
}

/// What one guest call returns: a trap, or the guest's answer.
type Outcome<T> = wasmtime::Result<Result<T, wit::Error>>;
/// One guest call in progress on an instance.
type Call<'a, T> = Pin<Box<dyn Future<Output = Outcome<T>> + Send + 'a>>;

impl Pool {
    /// Starts `size` instances, each with a registry open on `dir`.
    pub async fn start(runtime: &Runtime, dir: &Path, size: usize) -> Result<Pool, Error> {
        let serving = runtime.serving()?;
        let mut instances = Vec::new();
        for _ in 0..size.max(1) {
            instances.push(Mutex::new(Some(instantiate(runtime, serving, dir).await?)));
        }
        Ok(Pool {
            runtime: runtime.clone(),
            dir: dir.to_path_buf(),
            instances,
            turn: AtomicUsize::new(0),
        })
    }

    /// Runs one guest call on the instance of `resource` (or the next in
    /// turn) under the runtime's limits. A trap, or a panic, drops the
    /// instance, and so does a call that grew its memory past
    /// [`KEEP_MEMORY`]; the next call on it starts a fresh one.
    pub async fn call<T>(
        &self,
        resource: Option<&str>,
        call: impl for<'a> FnOnce(&'a Guest, ResourceAny, &'a mut Store<State>) -> Call<'a, T>,
    ) -> Result<T, Error> {
        let n = self.instances.len();
        let at = match resource {
            Some(name) => {
                let mut hasher = DefaultHasher::new();
                name.hash(&mut hasher);
                (hasher.finish() % n as u64) as usize
            }
            None => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        };
        let mut slot = self.instances[at].lock().await;
        // Out of the slot while it runs: if the call never returns (a panic
        // unwinds, or the request is dropped), the slot is left empty.
        let mut live = match slot.take() {
            Some(live) => live,
            None => instantiate(&self.runtime, self.runtime.serving()?, &self.dir).await?,
        };
        live.store.set_epoch_deadline(self.runtime.deadline_ticks());
        let outcome = call(&live.guest, live.handle, &mut live.store).await;
        if outcome.is_ok() && live.store.data().limits.used() <= KEEP_MEMORY {
            *slot = Some(live);
        }
        Error::from_call(outcome, &self.dir)
    }
}

async fn instantiate(runtime: &Runtime, serving: &Serving, dir: &Path) -> Result<Live, Error> {
    let wasi = Runtime::wasi_for(dir, GUEST_DIR)?;
    let mut store = runtime.new_store(wasi, LockDirs::default());
    let guest = serving
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(runtime_error)?;
    let opened = guest
        .hasp_lock_registry()
        .registry()
        .call_open(&mut store, GUEST_DIR)
        .await
        .map_err(|trap| Error::Trap(format!("{trap:#}")))?;
    let handle = opened.map_err(|err| Error::from_guest(err, dir))?;
    Ok(Live {
        store,
        guest,
        handle,
    })
}
