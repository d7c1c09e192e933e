//! The one way the host calls a component: an [`Instance`] is a store of
//! its own with the component instantiated in it, the resource its calls
//! go to, the time limit every call runs under, and a fresh instance after
//! a trap. The API's registries and lock files call theirs synchronously;
//! `hasp serve`'s pool calls its instances on fibers.

use super::outcome::{self, Outcome};
use super::{Runtime, State};
use crate::bindings::{types as wit, LockDirs};
use crate::error::Error;
use crate::store::{Etcd, Session, Watch};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{ComponentNamedList, Lift, Lower, ResourceAny, TypedFunc};
use wasmtime::{CallHook, Store};

/// Where the guest sees the lock directory (its only preopen).
pub(crate) const GUEST_DIR: &str = "/locks";

/// How calls cross into a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// On the caller's stack, with wasmtime-wasi's synchronous bindings:
    /// the API, the CLI, plugins. Driven by [`Runtime::now`].
    Sync,
    /// Each on a fiber of its own, with wasmtime-wasi's asynchronous
    /// bindings: `hasp serve` calls from its network threads.
    Fibers,
}

/// A component the host instantiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Component {
    /// The registry (world `guest`).
    Registry,
    /// The process-lock component (world `process`).
    Process,
    /// The registry on a shared store (world `on-store`).
    OnStore,
}

/// The exports of a component, as an [`Instance`] calls them: typed once
/// per instance, when it starts.
pub(crate) trait Exports: Sized {
    /// The component they are exports of.
    const COMPONENT: Component;

    /// The exports of `instance`, an instance of [`Self::COMPONENT`].
    fn of(
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Self>;
}

/// An export that answers `result<T, error>`. Typed with `'static`
/// borrows in `P`, it takes arguments that live as long as a call.
pub(crate) type Export<P, T> = TypedFunc<P, (Result<T, wit::Error>,)>;

/// What an export call takes: its arguments, lowered into the guest.
pub(crate) trait Params: ComponentNamedList + Lower + Send + Sync {}
impl<P: ComponentNamedList + Lower + Send + Sync> Params for P {}

/// What an export call answers (besides its error), lifted out of the
/// guest.
pub(crate) trait Answer: Lift + Send + Sync + 'static {}
impl<T: Lift + Send + Sync + 'static> Answer for T {}

/// One call: an export and its arguments.
pub(crate) type Call<P, T> = (Export<P, T>, P);

/// A guest instance on a lock directory, preopened as [`GUEST_DIR`] (and,
/// for the process-lock component, granted to `file-lock`), started when
/// first called and again after a trap.
pub(crate) struct Instance<G> {
    runtime: Runtime,
    dir: PathBuf,
    /// The store the registry keeps its locks in instead of `dir` (which
    /// is then empty): the component on a store is instantiated.
    store: Option<Arc<Etcd>>,
    flavour: Flavour,
    /// Whether the instance is dropped after a call that grew its memory
    /// past this many bytes (a memory never shrinks).
    keep_memory: usize,
    time_host_calls: bool,
    /// `None` until needed, and again after a trap (or a call that never
    /// returned: it is out of here while it runs). Boxed, so that taking it
    /// out and putting it back moves a pointer, not the store and exports.
    live: Option<Box<Live<G>>>,
}

/// A started instance.
struct Live<G> {
    store: Store<State>,
    guest: G,
    /// The resource the calls go to, once opened.
    handle: Option<ResourceAny>,
}

impl<G: Exports> Instance<G> {
    /// An instance of `G`'s component on `dir`, called the `flavour` way;
    /// nothing is started yet.
    pub(crate) fn new(runtime: &Runtime, dir: &Path, flavour: Flavour) -> Self {
        Instance {
            runtime: runtime.clone(),
            dir: dir.to_path_buf(),
            store: None,
            flavour,
            keep_memory: usize::MAX,
            time_host_calls: false,
            live: None,
        }
    }

    /// An instance of the registry on `store`, called on fibers (its host
    /// functions wait for etcd); nothing is started yet.
    pub(crate) fn on_store(runtime: &Runtime, store: Arc<Etcd>) -> Self {
        // Errors name the store where they would name the directory.
        let url = PathBuf::from(store.url().to_string());
        let mut instance = Instance::new(runtime, &url, Flavour::Fibers);
        instance.store = Some(store);
        instance
    }

    /// The store the instance keeps its locks in, when not a directory.
    pub(crate) fn store(&self) -> Option<&Arc<Etcd>> {
        self.store.as_ref()
    }

    /// What a waiter for a change to what the last call read watches: on
    /// a store, that; on a directory, nothing.
    pub(crate) fn watch(&self) -> Option<Watch> {
        let live = self.live.as_ref()?;
        live.store.data().store.as_ref()?.watch()
    }

    /// Drops the instance after any call that leaves its linear memory
    /// larger than `most` bytes; the next call starts a fresh one.
    pub(crate) fn keep_memory(mut self, most: usize) -> Self {
        self.keep_memory = most;
        self
    }

    /// The runtime the instance runs in.
    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The lock directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the instance, if it has not started, and opens its resource
    /// with `open`: a failure shows now rather than at the first call.
    pub(crate) async fn open<Q: Params>(
        &mut self,
        open: impl FnOnce(&G) -> Call<Q, ResourceAny>,
    ) -> Result<(), Error> {
        let mut live = self.take().await?;
        live.open(self.flavour, &self.runtime, &self.dir, open)
            .await?;
        self.live = Some(live);
        Ok(())
    }

    /// Runs `call` on the instance's resource, which `open` opens on a
    /// fresh instance, and maps the answer to [`Error`].
    pub(crate) async fn call<Q: Params, P: Params, T: Answer>(
        &mut self,
        open: impl FnOnce(&G) -> Call<Q, ResourceAny>,
        call: impl FnOnce(&G, ResourceAny) -> Call<P, T>,
    ) -> Result<T, Error> {
        let outcome = self.answer(open, call).await?;
        outcome::result(outcome, &self.dir)
    }

    /// [`Instance::call`], leaving the guest's answer as it is: `Err` only
    /// when no instance could be started and opened.
    pub(crate) async fn answer<Q: Params, P: Params, T: Answer>(
        &mut self,
        open: impl FnOnce(&G) -> Call<Q, ResourceAny>,
        call: impl FnOnce(&G, ResourceAny) -> Call<P, T>,
    ) -> Result<Outcome<T>, Error> {
        let mut live = self.take().await?;
        let handle = live
            .open(self.flavour, &self.runtime, &self.dir, open)
            .await?;
        let call = call(&live.guest, handle);
        let outcome = live.cross(self.flavour, &self.runtime, call).await;
        self.keep(live, outcome.is_ok());
        Ok(outcome)
    }

    /// Runs `call`, a function of the component that takes no resource,
    /// and maps the answer to [`Error`].
    pub(crate) async fn call_unopened<P: Params, T: Answer>(
        &mut self,
        call: impl FnOnce(&G) -> Call<P, T>,
    ) -> Result<T, Error> {
        let mut live = self.take().await?;
        let call = call(&live.guest);
        let outcome = live.cross(self.flavour, &self.runtime, call).await;
        self.keep(live, outcome.is_ok());
        outcome::result(outcome, &self.dir)
    }

    /// Measures the time the guest spends in host functions from now on
    /// (see [`Instance::host_time`]): a hook on every host call.
    pub(crate) fn time_host_calls(&mut self) {
        self.time_host_calls = true;
        if let Some(live) = &mut self.live {
            install_timer(&mut live.store);
        }
    }

    /// Time spent in host functions since [`Instance::time_host_calls`], by
    /// the instance running now.
    pub(crate) fn host_time(&self) -> Duration {
        self.live
            .as_ref()
            .map_or_else(Duration::default, |live| live.store.data().host_time.total)
    }

    /// The instance, out of `self` while it runs: started if there is none.
    async fn take(&mut self) -> Result<Box<Live<G>>, Error> {
        if let Some(live) = self.live.take() {
            return Ok(live);
        }
        let (wasi, which) = match &self.store {
            // No directory at all: the store is the only place it keeps
            // anything.
            Some(_) => (
                wasmtime_wasi::WasiCtxBuilder::new()
                    .allow_blocking_current_thread(true)
                    .build(),
                Component::OnStore,
            ),
            None => (Runtime::wasi_for(&self.dir, GUEST_DIR)?, G::COMPONENT),
        };
        let mut lock_dirs = LockDirs::default();
        if G::COMPONENT == Component::Process {
            let granted =
                cap_std::fs::Dir::open_ambient_dir(&self.dir, cap_std::ambient_authority())
                    .map_err(|source| Error::Directory {
                        dir: self.dir.clone(),
                        source,
                    })?;
            lock_dirs.grant(GUEST_DIR, granted);
        }
        let mut store = self.runtime.new_store(wasi, lock_dirs);
        store.data_mut().yields = self.flavour == Flavour::Fibers;
        store.data_mut().store = self.store.clone().map(Session::new);
        if self.time_host_calls {
            install_timer(&mut store);
        }
        let pre = self.runtime.pre(which, self.flavour)?;
        let instance = match self.flavour {
            Flavour::Sync => pre.instantiate(&mut store),
            Flavour::Fibers => pre.instantiate_async(&mut store).await,
        }
        .map_err(Error::Runtime)?;
        let guest = G::of(&mut store, &instance).map_err(Error::Runtime)?;
        Ok(Box::new(Live {
            store,
            guest,
            handle: None,
        }))
    }

    /// Puts `live` back for the next call, unless the call trapped (not
    /// `ok`) or left it too big.
    fn keep(&mut self, live: Box<Live<G>>, ok: bool) {
        if ok && live.store.data().limits.used() <= self.keep_memory {
            self.live = Some(live);
        }
    }
}

impl<G> Live<G> {
    /// The resource calls go to, opened with `open` if it is not yet.
    async fn open<Q: Params>(
        &mut self,
        flavour: Flavour,
        runtime: &Runtime,
        dir: &Path,
        open: impl FnOnce(&G) -> Call<Q, ResourceAny>,
    ) -> Result<ResourceAny, Error> {
        if let Some(handle) = self.handle {
            return Ok(handle);
        }
        let call = open(&self.guest);
        let opened = self.cross(flavour, runtime, call).await;
        let handle = outcome::result(opened, dir)?;
        Ok(*self.handle.insert(handle))
    }

    /// Runs one call under the runtime's time limit.
    async fn cross<P: Params, T: Answer>(
        &mut self,
        flavour: Flavour,
        runtime: &Runtime,
        call: Call<P, T>,
    ) -> Outcome<T> {
        let (export, params) = call;
        if let Some(session) = &mut self.store.data_mut().store {
            session.begin();
        }
        if self.store.data().yields {
            // Back to the thread at the next tick, and at each after it.
            self.store.data_mut().ticks = 0;
            self.store.set_epoch_deadline(1);
        } else {
            self.store.set_epoch_deadline(runtime.deadline_ticks());
        }
        let (answer,) = match flavour {
            Flavour::Sync => export.call(&mut self.store, params)?,
            Flavour::Fibers => export.call_async(&mut self.store, params).await?,
        };
        Ok(answer)
    }
}

/// Adds up the time `store`'s guest spends in host functions.
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
