//! The Rust API: a lock registry on a directory, served by one reused
//! instance of the guest component.

use crate::bindings::registry::{types as wit, Guest};
use crate::error::Error;
use crate::file_lock::LockDirs;
use crate::runtime::{runtime_error, Runtime, State};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceAny;
use wasmtime::{CallHook, Store};

/// Where the guest sees the lock directory (its only preopen).
pub(crate) const GUEST_DIR: &str = "/locks";

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
    runtime: Runtime,
    dir: PathBuf,
    live: Option<Live>,
    time_host_calls: bool,
}

struct Live {
    store: Store<State>,
    guest: Guest,
    handle: ResourceAny,
}

impl Registry {
    /// Opens the registry in `dir` (which must exist) with the shared runtime.
    pub fn open(dir: impl AsRef<Path>) -> Result<Registry, Error> {
        Registry::open_with(&Runtime::shared()?, dir)
    }

    /// Opens the registry in `dir` with a given runtime.
    pub fn open_with(runtime: &Runtime, dir: impl AsRef<Path>) -> Result<Registry, Error> {
        let mut registry = Registry {
            runtime: runtime.clone(),
            dir: dir.as_ref().to_path_buf(),
            live: None,
            time_host_calls: false,
        };
        registry.live()?;
        Ok(registry)
    }

    /// The directory this registry keeps its records in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes a lock on `resource`. Never waits: a held resource (or a
    /// conflicting parent or child) gives [`Error::AlreadyLocked`] at once.
    pub fn lock(&mut self, resource: &str, options: &LockOptions) -> Result<Grant, Error> {
        let options = wit_options(options);
        Ok(grant(self.call(guest_lock(resource, &options))?))
    }

    /// Releases the lock on `resource` if `key` owns it; returns what was held.
    pub fn unlock(&mut self, resource: &str, key: &UnlockKey) -> Result<Holder, Error> {
        let key = wit_key(key);
        Ok(holder(self.call(guest_unlock(resource, &key))?))
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
        Ok(holder(self.call(guest_renew(resource, &key, ttl_ms))?))
    }

    /// Releases the lock on `resource` whoever holds it (the operator's
    /// tool); returns the lock it broke. [`Error::NotLocked`] when there is
    /// none.
    pub fn force_unlock(&mut self, resource: &str) -> Result<Holder, Error> {
        Ok(holder(self.call(guest_force_unlock(resource))?))
    }

    /// The lock on exactly `resource`, or `None` when it is free.
    pub fn status(&mut self, resource: &str) -> Result<Option<Holder>, Error> {
        Ok(self.call(guest_status(resource))?.map(holder))
    }

    /// Every lock at or below `prefix` (`""` for all), sorted by resource.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<Holder>, Error> {
        Ok(self
            .call(guest_list(prefix))?
            .into_iter()
            .map(holder)
            .collect())
    }

    /// `lock`, with the guest's own types: for plugins, which get the
    /// guest's answer as it is. `Err` only for a trap.
    pub(crate) fn lock_wit(
        &mut self,
        resource: &str,
        options: &wit::LockOptions,
    ) -> wasmtime::Result<Result<wit::Grant, wit::Error>> {
        self.call_through(guest_lock(resource, options))
    }

    /// `unlock`, with the guest's own types (see [`Registry::lock_wit`]).
    pub(crate) fn unlock_wit(
        &mut self,
        resource: &str,
        key: &wit::UnlockKey,
    ) -> wasmtime::Result<Result<wit::Holder, wit::Error>> {
        self.call_through(guest_unlock(resource, key))
    }

    /// `renew`, with the guest's own types (see [`Registry::lock_wit`]).
    pub(crate) fn renew_wit(
        &mut self,
        resource: &str,
        key: &wit::UnlockKey,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<wit::Holder, wit::Error>> {
        self.call_through(guest_renew(resource, key, ttl_ms))
    }

    /// `force-unlock`, with the guest's own types (see [`Registry::lock_wit`]).
    pub(crate) fn force_unlock_wit(
        &mut self,
        resource: &str,
    ) -> wasmtime::Result<Result<wit::Holder, wit::Error>> {
        self.call_through(guest_force_unlock(resource))
    }

    /// `status`, with the guest's own types (see [`Registry::lock_wit`]).
    pub(crate) fn status_wit(
        &mut self,
        resource: &str,
    ) -> wasmtime::Result<Result<Option<wit::Holder>, wit::Error>> {
        self.call_through(guest_status(resource))
    }

    /// `list`, with the guest's own types (see [`Registry::lock_wit`]).
    pub(crate) fn list_wit(
        &mut self,
        prefix: &str,
    ) -> wasmtime::Result<Result<Vec<wit::Holder>, wit::Error>> {
        self.call_through(guest_list(prefix))
    }

    /// Starts measuring the time the guest spends in host functions (the
    /// filesystem, clock and random calls of WASI). For benchmarks: it adds a
    /// hook to every host call.
    pub fn time_host_calls(&mut self) {
        self.time_host_calls = true;
        if let Some(live) = &mut self.live {
            install_timer(&mut live.store);
        }
    }

    /// Total time spent in host functions since [`Registry::time_host_calls`].
    pub fn host_time(&self) -> std::time::Duration {
        self.live
            .as_ref()
            .map_or_else(Default::default, |live| live.store.data().host_time.total)
    }

    /// Runs one guest call under the runtime's limits, as `hasp::Error`.
    fn call<T>(&mut self, f: impl GuestCall<T>) -> Result<T, Error> {
        let outcome = self.call_raw(f)?;
        Error::from_call(outcome, &self.dir)
    }

    /// Runs one guest call, leaving the guest's answer as it is; a failure
    /// to start an instance becomes a trap of the caller.
    fn call_through<T>(&mut self, f: impl GuestCall<T>) -> wasmtime::Result<Result<T, wit::Error>> {
        self.call_raw(f)
            .map_err(|e| wasmtime::Error::msg(e.to_string()))?
    }

    /// Runs one guest call under the runtime's limits. A trap drops the
    /// instance; the next call starts a fresh one.
    fn call_raw<T>(
        &mut self,
        f: impl GuestCall<T>,
    ) -> Result<wasmtime::Result<Result<T, wit::Error>>, Error> {
        let ticks = self.runtime.deadline_ticks();
        let runtime = self.runtime.clone();
        let _tokio = runtime.enter();
        let live = self.live()?;
        live.store.set_epoch_deadline(ticks);
        let outcome = f(&live.guest, live.handle, &mut live.store);
        if outcome.is_err() {
            self.live = None; // trapped: the next call gets a fresh instance
        }
        Ok(outcome)
    }

    fn live(&mut self) -> Result<&mut Live, Error> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        Ok(self.live.as_mut().expect("just set"))
    }

    fn instantiate(&self) -> Result<Live, Error> {
        let wasi = Runtime::wasi_for(&self.dir, GUEST_DIR)?;
        let _tokio = self.runtime.enter();
        let mut store = self.runtime.new_store(wasi, LockDirs::default());
        if self.time_host_calls {
            install_timer(&mut store);
        }
        let guest = self
            .runtime
            .pre()
            .instantiate(&mut store)
            .map_err(runtime_error)?;
        let opened = guest
            .hasp_lock_registry()
            .registry()
            .call_open(&mut store, GUEST_DIR)
            .map_err(|trap| Error::Trap(format!("{trap:#}")))?;
        let handle = opened.map_err(|err| Error::from_guest(err, &self.dir))?;
        Ok(Live {
            store,
            guest,
            handle,
        })
    }
}

fn install_timer(store: &mut Store<State>) {
    store.call_hook(|mut ctx, hook| {
        let timer = &mut ctx.data_mut().host_time;
        match hook {
            CallHook::CallingHost => timer.entered = Some(Instant::now()),
            CallHook::ReturningFromHost => {
                if let Some(start) = timer.entered.take() {
                    timer.total += start.elapsed();
                }
            }
            CallHook::CallingWasm | CallHook::ReturningFromWasm => {}
        }
        Ok(())
    });
}

/// One call on the guest's registry handle.
trait GuestCall<T>:
    FnOnce(&Guest, ResourceAny, &mut Store<State>) -> wasmtime::Result<Result<T, wit::Error>>
{
}

impl<T, F> GuestCall<T> for F where
    F: FnOnce(&Guest, ResourceAny, &mut Store<State>) -> wasmtime::Result<Result<T, wit::Error>>
{
}

fn guest_lock<'a>(
    resource: &'a str,
    options: &'a wit::LockOptions,
) -> impl GuestCall<wit::Grant> + 'a {
    move |guest, handle, store| {
        guest
            .hasp_lock_registry()
            .registry()
            .call_lock(store, handle, resource, options)
    }
}

fn guest_unlock<'a>(
    resource: &'a str,
    key: &'a wit::UnlockKey,
) -> impl GuestCall<wit::Holder> + 'a {
    move |guest, handle, store| {
        guest
            .hasp_lock_registry()
            .registry()
            .call_unlock(store, handle, resource, key)
    }
}

fn guest_renew<'a>(
    resource: &'a str,
    key: &'a wit::UnlockKey,
    ttl_ms: Option<u64>,
) -> impl GuestCall<wit::Holder> + 'a {
    move |guest, handle, store| {
        guest
            .hasp_lock_registry()
            .registry()
            .call_renew(store, handle, resource, key, ttl_ms)
    }
}

fn guest_force_unlock(resource: &str) -> impl GuestCall<wit::Holder> + '_ {
    move |guest, handle, store| {
        guest
            .hasp_lock_registry()
            .registry()
            .call_force_unlock(store, handle, resource)
    }
}

fn guest_status(resource: &str) -> impl GuestCall<Option<wit::Holder>> + '_ {
    move |guest, handle, store| {
        guest
            .hasp_lock_registry()
            .registry()
            .call_status(store, handle, resource)
    }
}

fn guest_list(prefix: &str) -> impl GuestCall<Vec<wit::Holder>> + '_ {
    move |guest, handle, store| {
        guest
            .hasp_lock_registry()
            .registry()
            .call_list(store, handle, prefix)
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
