//! The WebAssembly side of the host: one engine, the components compiled
//! once and cached on disk (`cache`), the one linker, the store every
//! instance lives in with the limits every guest call runs under, and the
//! one way to call a guest (`instance`).

mod cache;
pub(crate) mod instance;
pub(crate) mod outcome;

pub use cache::{cache_dir, component_file};

use crate::bindings::{self, LockDirs};
use crate::error::Error;
use instance::{Component as Which, Flavour};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The guest component, built by `build.rs` from `guest/`.
pub const GUEST_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hasp_guest.wasm"));
const GUEST_HASH: &str = env!("HASP_GUEST_HASH");
/// The process-lock component (lock files), built from `guest/` with the
/// `process` feature. It imports `hasp:lock/file-lock` from this host.
pub const PROCESS_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hasp_process.wasm"));
const PROCESS_HASH: &str = env!("HASP_PROCESS_HASH");
/// The registry component on a shared store (world `on-store`), built from
/// `guest/` with the `store` feature. It imports `hasp:lock/store`.
pub const STORE_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hasp_store.wasm"));
const STORE_HASH: &str = env!("HASP_STORE_HASH");

/// The `hasp:lock` WIT package the components are built from, for plugins
/// to put in their `wit/deps/`.
pub const WIT: &str = include_str!("../../wit/hasp-lock.wit");

/// How often the epoch advances; the unit of [`Limits::call_timeout`].
const TICK: Duration = Duration::from_millis(50);

/// Bounds on every guest call, so a bug in the guest traps instead of
/// hanging or exhausting the host.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock time one call may take, filesystem calls included.
    pub call_timeout: Duration,
    /// Most linear memory one store may hold, in bytes: all its memories
    /// together (a component may have several).
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_secs(30),
            memory: 256 << 20,
        }
    }
}

/// A compiled, ready-to-instantiate hasp component. Cheap to share: open as
/// many registries from one runtime as you like.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// A thread-less Tokio runtime: wasmtime-wasi's synchronous bindings run
    /// their (immediately ready) futures on whatever runtime is entered, and
    /// otherwise start a multi-threaded one of their own.
    tokio: tokio::runtime::Runtime,
    engine: Engine,
    /// The components, compiled for `engine` (or loaded from the cache) on
    /// first use: registry commands never pay for the process lock.
    components: [OnceLock<Component>; 3],
    /// Each component linked for each [`Flavour`], on first use.
    linked: [[OnceLock<InstancePre<State>>; 2]; 3],
    limits: Limits,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Per-instance host state.
pub(crate) struct State {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: MemoryBudget,
    /// Time spent in host functions (WASI: filesystem, clocks, random), when
    /// measured; see `Registry::time_host_calls`.
    pub(crate) host_time: HostTimer,
    /// Directories the process-lock component may lock files in.
    pub(crate) lock_dirs: LockDirs,
    /// Set by a host call that blocked on a lock: that wait does not count
    /// against the call's time limit.
    pub(crate) waited: bool,
    /// For a plugin: the runtime and lock directory its registries open.
    pub(crate) registries: Option<(Runtime, PathBuf)>,
    /// A call on a fiber gives its thread back at every epoch tick (other
    /// requests run meanwhile), counting the ticks against its limit.
    pub(crate) yields: bool,
    /// Epoch ticks the current call has run for, when it yields.
    pub(crate) ticks: u64,
    /// For the registry on a store: the store, and what the current call
    /// read of it (for waiters).
    pub(crate) store: Option<crate::store::Session>,
}

/// A store's limiter: wasmtime's own limits (each memory, instances, tables)
/// and one cap on all the store's linear memories together.
pub(crate) struct MemoryBudget {
    limits: StoreLimits,
    /// Bytes of linear memory granted so far, all memories together.
    used: usize,
    most: usize,
}

impl MemoryBudget {
    /// Bytes of linear memory the store's instances hold, all memories
    /// together: what they have grown to (a memory never shrinks).
    pub(crate) fn used(&self) -> usize {
        self.used
    }
}

impl wasmtime::ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        if self.used.saturating_add(more) > self.most {
            return Err(wasmtime::Error::msg(format!(
                "growing memory to {} bytes in all would pass the limit of {}",
                self.used.saturating_add(more),
                self.most
            )));
        }
        let granted = self.limits.memory_growing(current, desired, maximum)?;
        if granted {
            self.used += more;
        }
        Ok(granted)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Accumulates the time the guest spends waiting on host functions.
#[derive(Default)]
pub(crate) struct HostTimer {
    pub(crate) total: std::time::Duration,
    pub(crate) entered: Option<std::time::Instant>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::types::Host for State {}

impl Runtime {
    /// The process-wide runtime with default limits, created on first use.
    pub fn shared() -> Result<Runtime, Error> {
        static SHARED: OnceLock<Runtime> = OnceLock::new();
        if let Some(rt) = SHARED.get() {
            return Ok(rt.clone());
        }
        let rt = Runtime::new(Limits::default())?;
        Ok(SHARED.get_or_init(|| rt).clone())
    }

    /// A runtime with its own engine and `limits`. Loads the precompiled
    /// component from the cache directory (see [`cache_dir`]), compiling and
    /// storing it there the first time.
    pub fn new(limits: Limits) -> Result<Runtime, Error> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(Error::Runtime)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.weak(), ticker_stop.clone());
        let tokio = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| Error::Runtime(e.into()))?;
        let runtime = Runtime {
            inner: Arc::new(Inner {
                tokio,
                engine,
                components: Default::default(),
                linked: Default::default(),
                limits,
                ticker_stop,
            }),
        };
        // Every registry needs it: made now, so that a failure shows here.
        runtime.pre(Which::Registry, Flavour::Sync)?;
        Ok(runtime)
    }

    /// Runs `call`, a guest call made the [`Flavour::Sync`] way (which never
    /// waits), to its end on this thread, inside the runtime's Tokio
    /// context.
    pub(crate) fn now<F: Future>(&self, call: impl FnOnce() -> F) -> F::Output {
        let _tokio = self.inner.tokio.enter();
        // Made here, not moved here: the future is large.
        let mut call = std::pin::pin!(call());
        match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => unreachable!("a synchronous guest call never waits"),
        }
    }

    /// The component `which`, linked for calls the `flavour` way: made on
    /// first use.
    pub(crate) fn pre(&self, which: Which, flavour: Flavour) -> Result<&InstancePre<State>, Error> {
        let cell = &self.inner.linked[which as usize][flavour as usize];
        if let Some(pre) = cell.get() {
            return Ok(pre);
        }
        let component = self.component(which)?;
        let pre = self
            .linker(flavour)?
            .instantiate_pre(component)
            .map_err(Error::Runtime)?;
        Ok(cell.get_or_init(|| pre))
    }

    /// The component `which`, compiled, or loaded from the cache.
    fn component(&self, which: Which) -> Result<&Component, Error> {
        let cell = &self.inner.components[which as usize];
        if let Some(component) = cell.get() {
            return Ok(component);
        }
        let (wasm, name, hash) = match which {
            Which::Registry => (GUEST_WASM, "guest", GUEST_HASH),
            Which::Process => (PROCESS_WASM, "process", PROCESS_HASH),
            Which::OnStore => (STORE_WASM, "store", STORE_HASH),
        };
        let component = cache::load_component(&self.inner.engine, wasm, name, hash)?;
        Ok(cell.get_or_init(|| component))
    }

    /// The one linker: WASI, with wasmtime-wasi's bindings for `flavour`;
    /// `hasp:lock/types`; the host's own `hasp:lock/file-lock`, which the
    /// process-lock component imports; and, on fibers, `hasp:lock/store`,
    /// which the registry on a store imports. (A plugin's adds the
    /// `hasp:lock/registry` it imports.)
    pub(crate) fn linker(&self, flavour: Flavour) -> Result<Linker<State>, Error> {
        let mut linker = Linker::new(&self.inner.engine);
        match flavour {
            Flavour::Sync => wasmtime_wasi::p2::add_to_linker_sync(&mut linker),
            Flavour::Fibers => wasmtime_wasi::p2::add_to_linker_async(&mut linker),
        }
        .map_err(Error::Runtime)?;
        bindings::types::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(Error::Runtime)?;
        bindings::process::file_lock::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(Error::Runtime)?;
        if flavour == Flavour::Fibers {
            bindings::on_store::store::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
                .map_err(Error::Runtime)?;
        }
        Ok(linker)
    }

    /// A WASI context whose only capability is `dir`, preopened read-write
    /// as `guest_dir`.
    pub(crate) fn wasi_for(dir: &Path, guest_dir: &str) -> Result<WasiCtx, Error> {
        Ok(Self::wasi_builder(dir, guest_dir)?.build())
    }

    /// [`Runtime::wasi_for`], still open to more (arguments, stdio).
    pub(crate) fn wasi_builder(
        dir: &Path,
        guest_dir: &str,
    ) -> Result<wasmtime_wasi::WasiCtxBuilder, Error> {
        let mut builder = wasmtime_wasi::WasiCtxBuilder::new();
        builder
            .allow_blocking_current_thread(true)
            .preopened_dir(dir, guest_dir, wasmtime_wasi::FsPerms::ReadWrite)
            .map_err(|e| Error::Directory {
                dir: dir.to_path_buf(),
                source: std::io::Error::other(format!("{e}")),
            })?;
        Ok(builder)
    }

    /// A store for one instance, with the runtime's limits: memory cap and
    /// a call time limit that waits for locks do not use up.
    pub(crate) fn new_store(&self, wasi: WasiCtx, lock_dirs: LockDirs) -> Store<State> {
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limits: MemoryBudget {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.inner.limits.memory)
                    .trap_on_grow_failure(true)
                    // The guest needs a few; a plugin composed with it, more.
                    .instances(64)
                    .build(),
                used: 0,
                most: self.inner.limits.memory,
            },
            host_time: HostTimer::default(),
            lock_dirs,
            waited: false,
            registries: None,
            yields: false,
            ticks: 0,
            store: None,
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = self.deadline_ticks();
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_callback(move |mut ctx| {
            let data = ctx.data_mut();
            if std::mem::take(&mut data.waited) {
                data.ticks = 0;
                return Ok(if data.yields {
                    UpdateDeadline::Yield(1)
                } else {
                    UpdateDeadline::Continue(ticks)
                });
            }
            if data.yields {
                data.ticks += 1;
                if data.ticks < ticks {
                    return Ok(UpdateDeadline::Yield(1));
                }
            }
            Err(wasmtime::Error::msg("the call ran past its time limit"))
        });
        store
    }

    /// The bounds every call (and every plugin run) is held to.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The component made from `source` by `make` (the plugin composed
    /// with the guest, say), compiled, or loaded from the cache when this
    /// `source` was made and compiled before with this guest.
    pub(crate) fn load_made(
        &self,
        name: &str,
        source: &[u8],
        make: impl FnOnce() -> Result<Vec<u8>, Error>,
    ) -> Result<Component, Error> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut hasher);
        GUEST_HASH.hash(&mut hasher);
        // A new hasp may compose differently with the same guest; `name`
        // tells how the component was made.
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        name.hash(&mut hasher);
        let hash = format!("{:016x}", hasher.finish());
        cache::load_or_make(&self.inner.engine, name, &hash, make)
    }

    /// Epoch ticks a call may run for.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        (self.inner.limits.call_timeout.as_millis() / TICK.as_millis()).max(1) as u64
    }
}

fn spawn_ticker(engine: wasmtime::EngineWeak, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("hasp-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .ok();
}
