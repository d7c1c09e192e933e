//! `hasp:lock/registry`, the Rust API: a lock registry on a directory,
//! served by one reused instance of the guest component.

use crate::bindings::registry::Guest;
use crate::bindings::types as wit;
use crate::error::Error;
use crate::runtime::instance::{
    self, Answer, Call, Component, Export, Flavour, Instance, Params, GUEST_DIR,
};
use crate::runtime::outcome::Outcome;
use crate::runtime::{Runtime, State};
use crate::store::{Etcd, EtcdUrl, Store};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::ResourceAny;
use wasmtime::Store as WasmStore;

/// How to take a lock. The default is Locker's: anonymous, and conflicting
/// with locks on both parents and children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockOptions {
    /// Who takes the lock; `None` makes it anonymous (it then opens only with
    /// its token, and shows as `?`).
    pub client: Option<String>,
    /// Whether the lock conflicts with locks on its ancestors.
    pub lock_parents: bool,
    /// Whether the lock conflicts with locks on its descendants.
    pub lock_children: bool,
    /// A lease: the lock ends by itself this long after it is granted (or
    /// last renewed with [`Registry::renew`]) unless renewed. `None`: it
    /// lasts until it is unlocked. From 1 ms to 30 days.
    pub ttl: Option<Duration>,
    /// Makes a retried lock call safe: while the resource is held by the
    /// grant an earlier call with this id made, that grant (token included)
    /// is returned again. Use a random value and keep it as secret as a
    /// token.
    pub request_id: Option<String>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            client: None,
            lock_parents: true,
            lock_children: true,
            ttl: None,
            request_id: None,
        }
    }
}

impl LockOptions {
    /// Options for a lock owned by `client`.
    pub fn client(client: impl Into<String>) -> Self {
        LockOptions {
            client: Some(client.into()),
            ..LockOptions::default()
        }
    }

    /// These options with a lease of `ttl`.
    pub fn with_ttl(self, ttl: Duration) -> Self {
        LockOptions {
            ttl: Some(ttl),
            ..self
        }
    }
}

/// A held lock, as anybody may see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Holder {
    /// Canonical resource name (no leading `/`).
    pub resource: String,
    /// The owning client id; `None` for an anonymous lock.
    pub client: Option<String>,
    /// Strictly increases with every grant of this resource; never reused.
    pub fencing: u64,
    /// Grant time, milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Whether the lock conflicts with locks on ancestors.
    pub lock_parents: bool,
    /// Whether the lock conflicts with locks on descendants.
    pub lock_children: bool,
    /// When its lease runs out, milliseconds since the Unix epoch; `None`
    /// for a lock without a lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Its lease's length in milliseconds; `None` without a lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A granted lock, with the token that releases it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// What is held, by whom, with which fencing token.
    #[serde(flatten)]
    pub holder: Holder,
    /// The unlock token (UUID v4).
    pub token: String,
}

/// What proves the right to unlock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnlockKey {
    /// The client id the lock was taken with.
    Client(String),
    /// The token returned with the grant.
    Token(String),
}

/// A lock registry kept in one directory.
///
/// Any number of registries — in this process or in others, through this API,
/// the `hasp` CLI or the stock `wasmtime` CLI — may be open on the same
/// directory; they never grant conflicting locks. Each `Registry` keeps one
/// guest instance and reuses it for every call.
pub struct Registry {
    instance: Instance<Exports>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store())
            .finish_non_exhaustive()
    }
}

/// The exports of the registry component's `registry` resource, typed.
/// [`Registry`] calls them, and so does `hasp serve`'s pool: a call is
/// `|exports, handle| (exports.lock, (handle, resource, &options))`.
pub(crate) struct Exports {
    pub(crate) open: Export<(&'static str,), ResourceAny>,
    pub(crate) lock: Export<(ResourceAny, &'static str, &'static wit::LockOptions), wit::Grant>,
    pub(crate) unlock: Export<(ResourceAny, &'static str, &'static wit::UnlockKey), wit::Holder>,
    pub(crate) renew: Export<
        (
            ResourceAny,
            &'static str,
            &'static wit::UnlockKey,
            Option<u64>,
        ),
        wit::Holder,
    >,
    pub(crate) force_unlock: Export<(ResourceAny, &'static str), wit::Holder>,
    pub(crate) status: Export<(ResourceAny, &'static str), Option<wit::Holder>>,
    pub(crate) list: Export<(ResourceAny, &'static str), Vec<wit::Holder>>,
    /// What `open` is given: the guest's preopen, or on a store the
    /// store's root (`""`: the prefix the host gives it).
    root: &'static str,
}

impl instance::Exports for Exports {
    const COMPONENT: Component = Component::Registry;

    fn of(
        store: &mut WasmStore<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Self> {
        let guest = Guest::new(&mut *store, instance)?;
        let registry = guest.hasp_lock_registry().registry();
        Ok(Exports {
            open: registry.func_open().func().typed(&*store)?,
            lock: registry.func_lock().func().typed(&*store)?,
            unlock: registry.func_unlock().func().typed(&*store)?,
            renew: registry.func_renew().func().typed(&*store)?,
            force_unlock: registry.func_force_unlock().func().typed(&*store)?,
            status: registry.func_status().func().typed(&*store)?,
            list: registry.func_list().func().typed(&*store)?,
            root: if store.data().store.is_some() {
                ""
            } else {
                GUEST_DIR
            },
        })
    }
}

/// Opens the registry on the guest's preopen (or its store).
pub(crate) fn open(exports: &Exports) -> Call<(&'static str,), ResourceAny> {
    (exports.open, (exports.root,))
}

impl Registry {
    /// Opens the registry in `dir` (which must exist) with the shared runtime.
    pub fn open(dir: impl AsRef<Path>) -> Result<Registry, Error> {
        Registry::open_with(&Runtime::shared()?, dir)
    }

    /// Opens the registry in `dir` with a given runtime.
    pub fn open_with(runtime: &Runtime, dir: impl AsRef<Path>) -> Result<Registry, Error> {
        let mut instance = Instance::new(runtime, dir.as_ref(), Flavour::Sync);
        runtime.now(|| instance.open(open))?;
        Ok(Registry { instance })
    }

    /// Opens the registry kept in `store`: a lock directory, or a prefix on
    /// etcd.
    pub fn open_store(store: &Store) -> Result<Registry, Error> {
        match store {
            Store::Dir(dir) => Registry::open(dir),
            Store::Etcd(url) => Registry::open_etcd(url),
        }
    }

    /// Opens the registry kept under `url`'s prefix on etcd, laying it out
    /// if the prefix holds none yet. Any number of hosts may open the same
    /// one; they never grant conflicting locks. The connection runs on a
    /// thread of its own; the calls block on etcd. Do not call this, or
    /// the registry it returns, from inside a Tokio runtime.
    ///
    /// ```no_run
    /// use hasp::{EtcdUrl, LockOptions, Registry};
    /// let url = EtcdUrl::parse("etcd://127.0.0.1:2379/team-a")?;
    /// let mut registry = Registry::open_etcd(&url)?;
    /// let grant = registry.lock("deploy", &LockOptions::client("ci-7"))?;
    /// println!("fencing {}", grant.holder.fencing);
    /// # Ok::<(), hasp::Error>(())
    /// ```
    pub fn open_etcd(url: &EtcdUrl) -> Result<Registry, Error> {
        Registry::open_etcd_with(&Runtime::shared()?, url)
    }

    /// [`Registry::open_etcd`] with a given runtime.
    pub fn open_etcd_with(runtime: &Runtime, url: &EtcdUrl) -> Result<Registry, Error> {
        let etcd = Arc::new(Etcd::connect_blocking(url)?);
        let mut instance = Instance::on_store(runtime, etcd.clone());
        etcd.block_on(instance.open(open))?;
        Ok(Registry { instance })
    }

    /// The directory this registry keeps its records in (for a registry on
    /// etcd, the store's URL: see [`Registry::store`]).
    pub fn dir(&self) -> &Path {
        self.instance.dir()
    }

    /// Where this registry keeps its locks.
    pub fn store(&self) -> Store {
        match self.instance.store() {
            Some(etcd) => Store::Etcd(etcd.url().clone()),
            None => Store::Dir(self.dir().to_path_buf()),
        }
    }

    /// Blocks until something the last call read may have changed, or
    /// `until`: for a lock that was refused, until the holder's state
    /// changes or its lease ends. On etcd, a watch on what the call read
    /// wakes it (true). A lock directory has nothing to watch: false at
    /// once, and the waiter paces its own retries.
    pub fn wait_for_change(&self, until: Option<std::time::Instant>) -> bool {
        match (self.instance.watch(), self.instance.store()) {
            (Some(watch), Some(etcd)) => {
                etcd.block_on(watch.changed(until));
                true
            }
            _ => false,
        }
    }

    /// Takes a lock on `resource`. Never waits: a held resource (or a
    /// conflicting parent or child) gives [`Error::AlreadyLocked`] at once.
    pub fn lock(&mut self, resource: &str, options: &LockOptions) -> Result<Grant, Error> {
        let options = wit_options(options);
        let granted = self.call(|r, h| (r.lock, (h, resource, &options)))?;
        Ok(grant(granted))
    }

    /// Releases the lock on `resource` if `key` owns it; returns what was held.
    pub fn unlock(&mut self, resource: &str, key: &UnlockKey) -> Result<Holder, Error> {
        let key = wit_key(key);
        Ok(holder(self.call(|r, h| (r.unlock, (h, resource, &key)))?))
    }

    /// Extends the lease of the lock on `resource` that `key` owns, to end
    /// `ttl` from now (`None`: by the lease's own length); a lock without a
    /// lease gets one. Token and fencing token stay the same. Fails with
    /// [`Error::LeaseExpired`] once the lease has run out.
    pub fn renew(
        &mut self,
        resource: &str,
        key: &UnlockKey,
        ttl: Option<Duration>,
    ) -> Result<Holder, Error> {
        let key = wit_key(key);
        let ttl_ms = ttl.map(duration_ms);
        Ok(holder(
            self.call(|r, h| (r.renew, (h, resource, &key, ttl_ms)))?,
        ))
    }

    /// Releases the lock on `resource` whoever holds it (the operator's
    /// tool); returns the lock it broke. [`Error::NotLocked`] when there is
    /// none.
    pub fn force_unlock(&mut self, resource: &str) -> Result<Holder, Error> {
        Ok(holder(self.call(|r, h| (r.force_unlock, (h, resource)))?))
    }

    /// The lock on exactly `resource`, or `None` when it is free.
    pub fn status(&mut self, resource: &str) -> Result<Option<Holder>, Error> {
        Ok(self.call(|r, h| (r.status, (h, resource)))?.map(holder))
    }

    /// Every lock at or below `prefix` (`""` for all), sorted by resource.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<Holder>, Error> {
        let all = self.call(|r, h| (r.list, (h, prefix)))?;
        Ok(all.into_iter().map(holder).collect())
    }

    /// Starts measuring the time the guest spends in host functions (the
    /// filesystem, clock and random calls of WASI). For benchmarks: it adds a
    /// hook to every host call.
    pub fn time_host_calls(&mut self) {
        self.instance.time_host_calls();
    }

    /// Total time spent in host functions since [`Registry::time_host_calls`].
    pub fn host_time(&self) -> Duration {
        self.instance.host_time()
    }

    /// Runs one call on the registry under the runtime's limits. A trap
    /// drops the instance; the next call starts a fresh one.
    fn call<P: Params, T: Answer>(
        &mut self,
        call: impl FnOnce(&Exports, ResourceAny) -> Call<P, T>,
    ) -> Result<T, Error> {
        match self.instance.store().cloned() {
            Some(etcd) => etcd.block_on(self.instance.call(open, call)),
            None => {
                let runtime = self.instance.runtime().clone();
                runtime.now(|| self.instance.call(open, call))
            }
        }
    }

    /// [`Registry::call`], with the guest's answer as it is: for plugins,
    /// which get it as the guest gave it. `Err` only for a trap (a failure
    /// to start an instance becomes one too).
    pub(crate) fn answer<P: Params, T: Answer>(
        &mut self,
        call: impl FnOnce(&Exports, ResourceAny) -> Call<P, T>,
    ) -> Outcome<T> {
        let runtime = self.instance.runtime().clone();
        runtime
            .now(|| self.instance.answer(open, call))
            .map_err(|e| wasmtime::Error::msg(e.to_string()))?
    }
}

/// Lock options as the guest takes them.
pub(crate) fn wit_options(options: &LockOptions) -> wit::LockOptions {
    wit::LockOptions {
        client: options.client.clone(),
        lock_parents: options.lock_parents,
        lock_children: options.lock_children,
        ttl_ms: options.ttl.map(duration_ms),
        request_id: options.request_id.clone(),
    }
}

/// `d` in whole milliseconds, rounded up (a positive duration never becomes
/// 0), saturating.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// An unlock key as the guest takes it.
pub(crate) fn wit_key(key: &UnlockKey) -> wit::UnlockKey {
    match key {
        UnlockKey::Client(c) => wit::UnlockKey::Client(c.clone()),
        UnlockKey::Token(t) => wit::UnlockKey::Token(t.clone()),
    }
}

/// A grant as the guest gave it.
pub(crate) fn grant(g: wit::Grant) -> Grant {
    Grant {
        holder: holder(g.holder),
        token: g.token,
    }
}

/// A holder as the guest gave it.
pub(crate) fn holder(h: wit::Holder) -> Holder {
    Holder {
        resource: h.resource,
        client: h.client,
        fencing: h.fencing,
        since_ms: h.since_ms,
        lock_parents: h.lock_parents,
        lock_children: h.lock_children,
        expires_ms: h.expires_ms,
        ttl_ms: h.ttl_ms,
    }
}
