//! The WebAssembly side of the host: one engine, the guest component compiled
//! once and cached on disk, and the limits every guest call runs under.

use crate::bindings::process::ProcessPre;
use crate::bindings::registry::GuestPre;
use crate::bindings::registry_async::GuestPre as AsyncGuestPre;
use crate::error::Error;
use crate::file_lock::LockDirs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The guest component, built by `build.rs` from `guest/`.
pub const GUEST_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hasp_guest.wasm"));
const GUEST_HASH: &str = env!("HASP_GUEST_HASH");
/// The process-lock component (lock files), built from `guest/` with the
/// `process` feature. It imports `hasp:lock/file-lock` from this host.
pub const PROCESS_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hasp_process.wasm"));
const PROCESS_HASH: &str = env!("HASP_PROCESS_HASH");

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

struct Inner {
    /// A thread-less Tokio runtime: wasmtime-wasi's synchronous bindings run
    /// their (immediately ready) futures on whatever runtime is entered, and
    /// otherwise start a multi-threaded one of their own.
    tokio: tokio::runtime::Runtime,
    engine: Engine,
    /// The guest component, compiled for `engine`.
    component: Component,
    pre: GuestPre<State>,
    /// Loaded on first use: registry commands never pay for it.
    process: OnceLock<ProcessPre<State>>,
    /// The guest for asynchronous calls (`hasp serve`), made on first use.
    serving: OnceLock<Serving>,
    limits: Limits,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The guest linked for asynchronous calls; see [`Runtime::serving`].
pub(crate) struct Serving {
    pub pre: AsyncGuestPre<State>,
}

/// Per-instance host state.
pub(crate) struct State {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: MemoryBudget,
    /// Time spent in host functions (WASI: filesystem, clocks, random), when
    /// measured; see `Registry::time_host_calls`.
    pub host_time: HostTimer,
    /// Directories the process-lock component may lock files in.
    pub lock_dirs: LockDirs,
    /// Set by a host call that blocked on a lock: that wait does not count
    /// against the call's time limit.
    pub waited: bool,
    /// For a plugin: the runtime and lock directory its registries open.
    pub served: Option<(Runtime, PathBuf)>,
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
    pub total: std::time::Duration,
    pub entered: Option<std::time::Instant>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl crate::bindings::registry::types::Host for State {}

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
        let engine = Engine::new(&config).map_err(runtime_error)?;
        let component = load_component(&engine, GUEST_WASM, "guest", GUEST_HASH)?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(runtime_error)?;
        crate::bindings::registry::Guest::add_to_linker::<State, HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(runtime_error)?;
        let pre = linker.instantiate_pre(&component).map_err(runtime_error)?;
        let pre = GuestPre::new(pre).map_err(runtime_error)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.weak(), ticker_stop.clone());
        let tokio = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(runtime_error)?;
        Ok(Runtime {
            inner: Arc::new(Inner {
                tokio,
                engine,
                component,
                pre,
                process: OnceLock::new(),
                serving: OnceLock::new(),
                limits,
                ticker_stop,
            }),
        })
    }

    pub(crate) fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.inner.tokio.enter()
    }

    /// The process-lock component, compiled (or loaded from the cache) on
    /// first use.
    pub(crate) fn process_pre(&self) -> Result<&ProcessPre<State>, Error> {
        if let Some(pre) = self.inner.process.get() {
            return Ok(pre);
        }
        let engine = &self.inner.engine;
        let component = load_component(engine, PROCESS_WASM, "process", PROCESS_HASH)?;
        let mut linker = Linker::<State>::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(runtime_error)?;
        crate::bindings::process::Process::add_to_linker::<State, HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(runtime_error)?;
        let pre = linker.instantiate_pre(&component).map_err(runtime_error)?;
        let pre = ProcessPre::new(pre).map_err(runtime_error)?;
        Ok(self.inner.process.get_or_init(|| pre))
    }

    /// The guest component linked for asynchronous calls, each on a fiber
    /// of its own: `hasp serve` calls it from its network threads, with no
    /// handoff to another thread. Linked on first use.
    pub(crate) fn serving(&self) -> Result<&Serving, Error> {
        if let Some(serving) = self.inner.serving.get() {
            return Ok(serving);
        }
        let engine = &self.inner.engine;
        let mut linker = Linker::<State>::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(runtime_error)?;
        crate::bindings::registry_async::Guest::add_to_linker::<State, HasSelf<State>>(
            &mut linker,
            |s| s,
        )
        .map_err(runtime_error)?;
        let pre = linker
            .instantiate_pre(&self.inner.component)
            .map_err(runtime_error)?;
        let pre = AsyncGuestPre::new(pre).map_err(runtime_error)?;
        Ok(self.inner.serving.get_or_init(|| Serving { pre }))
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
            served: None,
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = self.deadline_ticks();
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_callback(move |mut ctx| {
            if std::mem::take(&mut ctx.data_mut().waited) {
                Ok(UpdateDeadline::Continue(ticks))
            } else {
                Err(wasmtime::Error::msg("the call ran past its time limit"))
            }
        });
        store
    }

    /// The bounds every call (and every plugin run) is held to.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The engine every component of this runtime is compiled for.
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
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
        load_or_make(&self.inner.engine, name, &hash, make)
    }

    /// Enters the runtime's Tokio context for the duration of the guard.
    pub(crate) fn pre(&self) -> &GuestPre<State> {
        &self.inner.pre
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

/// Where precompiled components are cached: `$HASP_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/hasp`, else `$HOME/.cache/hasp`.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |key| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("HASP_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("hasp")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("hasp")))
}

/// The `hasp:lock` WIT package the components are built from, for plugins
/// to put in their `wit/deps/`.
pub const WIT: &str = include_str!("../../wit/hasp-lock.wit");

/// The guest component as a `.wasm` file, for other runtimes (`wasmtime run`)
/// and for composition: written once into the cache directory, under a name
/// that changes with its content.
pub fn component_file() -> Result<PathBuf, Error> {
    let dir = cache_dir().ok_or_else(|| {
        Error::Runtime("no cache directory: set HASP_CACHE_DIR, XDG_CACHE_HOME or HOME".into())
    })?;
    let path = dir.join(format!(
        "hasp-{}-{GUEST_HASH}.wasm",
        env!("CARGO_PKG_VERSION")
    ));
    let written = std::fs::metadata(&path).is_ok_and(|m| m.len() == GUEST_WASM.len() as u64);
    if !written {
        store(&path, GUEST_WASM);
        if !path.is_file() {
            return Err(Error::Runtime(format!("cannot write {}", path.display())));
        }
    }
    Ok(path)
}

/// Loads the compiled guest from the cache, or compiles and caches it.
fn load_component(
    engine: &Engine,
    wasm: &[u8],
    name: &str,
    hash: &str,
) -> Result<Component, Error> {
    load_or_make(engine, name, hash, || Ok(wasm.to_vec()))
}

/// Loads the compiled component `name`-`hash` from the cache, or makes its
/// bytes with `make`, compiles them and caches the result.
fn load_or_make(
    engine: &Engine,
    name: &str,
    hash: &str,
    make: impl FnOnce() -> Result<Vec<u8>, Error>,
) -> Result<Component, Error> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let name = format!("{name}-{hash}-{:016x}.cwasm", hasher.finish());
    let cached = cache_dir().map(|dir| dir.join(name));
    if let Some(path) = &cached {
        if path.is_file() {
            // SAFETY: the file was written by `store` below from
            // `Engine::precompile_component`, atomically, in the user's own
            // cache directory; wasmtime checks that it matches this engine.
            // Whoever can replace it can already run code as this user.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, path) } {
                return Ok(component);
            }
        }
    }
    let compiled = engine
        .precompile_component(&make()?)
        .map_err(runtime_error)?;
    if let Some(path) = &cached {
        store(path, &compiled); // a cache that cannot be written only costs time
    }
    // SAFETY: `compiled` was produced by this very engine a moment ago.
    unsafe { Component::deserialize(engine, &compiled) }.map_err(runtime_error)
}

fn store(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Unique per process, thread and call: two writers never share a file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}-{}",
        std::process::id(),
        std::thread::current().id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

pub(crate) fn runtime_error(err: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("{err:#}"))
}
