//! `hasp:lock/process-lock`, the Rust API for lock files: OS-level locks
//! that die with their holder, with the holder recorded in the file
//! (zc.lockfile, locket, flock(1)). The rules run in the process-lock
//! component; the OS lock is the host's `file-lock` (`file_lock.rs`).

use crate::bindings::process::process_lock::{LockMode as WitMode, Owner as WitOwner};
use crate::bindings::process::Process;
use crate::error::Error;
use crate::runtime::instance::{
    self, Answer, Call, Component, Export, Flavour, Instance, Params, GUEST_DIR,
};
use crate::runtime::{Runtime, State};
use serde::Serialize;
use std::path::Path;
use std::time::Duration;
use wasmtime::component::ResourceAny;
use wasmtime::Store;

/// How long to wait for a lock held by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once with [`Error::WouldBlock`].
    No,
    /// Wait at most this long, then fail with [`Error::WouldBlock`].
    For(Duration),
    /// Wait until the holder releases it (or dies).
    Forever,
}

/// How a lock file is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// With any number of other shared holders, and no exclusive one.
    Shared,
    /// By one holder only.
    Exclusive,
}

/// `true` is [`LockMode::Shared`]: what [`FileLock::acquire`]'s `shared`
/// flag used to say.
impl From<bool> for LockMode {
    fn from(shared: bool) -> LockMode {
        if shared {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        }
    }
}

/// Who holds a lock file, as recorded in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// Process id of the holder.
    pub pid: u32,
    /// Host name of its machine.
    pub host: String,
    /// When it took the lock, milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// The command it runs under the lock.
    pub command: String,
}

/// Whether a lock file is held right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileHolder {
    /// Nobody holds it.
    Free,
    /// Held exclusively by the recorded owner.
    Owner(Owner),
    /// Held, but not by an exclusive holder with a readable record (shared
    /// holders record nothing).
    Unrecorded,
}

/// A lock file in a directory, opened for locking.
///
/// ```
/// use hasp::{FileLock, Wait};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir()?;
/// let guard = FileLock::open(dir.path(), "deploy.lock")?.lock(Wait::For(Duration::from_secs(30)))?;
/// // ... the work the lock protects ...
/// let lock = guard.release()?; // or drop(guard); deploy.lock stays, naming the last owner
/// let _shared = lock.lock_shared(Wait::No)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Two `FileLock`s on one path contend, in one process (two threads) or in
/// two; a lock is not re-entrant. The OS releases it if the process dies.
///
/// # Signals
///
/// A wait with a time limit ([`Wait::For`]) blocks in flock(2) on a helper
/// thread, which is interrupted with `SIGURG` at the deadline. The first
/// such wait installs a process-wide `SIGURG` handler (without
/// `SA_RESTART`); it does nothing on the helper threads and calls the
/// handler installed before it for every other `SIGURG`, so an
/// application that uses the signal itself keeps getting it (install
/// yours before the first timed wait: one installed later replaces hasp's,
/// and a timed wait may then last until the lock is free). The helper
/// threads unblock `SIGURG` for themselves.
pub struct FileLock {
    /// This process's id, this machine's name and this process's command
    /// line, read once.
    pid: u32,
    host: String,
    command: String,
    /// The lock file, relative to the directory.
    path: String,
    instance: Instance<Exports>,
}

/// The exports of the process-lock component's `lock-file` resource,
/// typed.
struct Exports {
    open: Export<(&'static str, &'static str), ResourceAny>,
    who: Export<(&'static str, &'static str), Option<Option<WitOwner>>>,
    acquire: Export<(ResourceAny, WitMode, Option<u64>, &'static WitOwner), ()>,
    holder: Export<(ResourceAny,), Option<Option<WitOwner>>>,
    release: Export<(ResourceAny,), ()>,
}

impl instance::Exports for Exports {
    const COMPONENT: Component = Component::Process;

    fn of(
        store: &mut Store<State>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Self> {
        let guest = Process::new(&mut *store, instance)?;
        let lock_file = guest.hasp_lock_process_lock().lock_file();
        Ok(Exports {
            open: lock_file.func_open().func().typed(&*store)?,
            who: lock_file.func_who().func().typed(&*store)?,
            acquire: lock_file.func_acquire().func().typed(&*store)?,
            holder: lock_file.func_holder().func().typed(&*store)?,
            release: lock_file.func_release().func().typed(&*store)?,
        })
    }
}

impl std::fmt::Debug for FileLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLock")
            .field("dir", &self.instance.dir())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A held lock; released when dropped. It owns its [`FileLock`]:
/// [`FileGuard::release`] hands the lock back for another round.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct FileGuard {
    /// `None` only once `release` has taken it.
    lock: Option<FileLock>,
}

impl FileGuard {
    /// Releases the lock now, reporting a failure instead of ignoring it,
    /// and returns the `FileLock` for another round.
    pub fn release(mut self) -> Result<FileLock, Error> {
        let mut lock = self.lock.take().expect("present until released");
        lock.release()?;
        Ok(lock)
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if let Some(lock) = &mut self.lock {
            let _ = lock.release();
        }
    }
}

impl std::fmt::Debug for FileGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileGuard").finish_non_exhaustive()
    }
}

/// A lock that was not taken: why, and the [`FileLock`] back, for another
/// try. `?` turns it into its [`Error`] (an [`Error::WouldBlock`] when
/// somebody else holds the file).
pub struct LockFailed {
    /// Why the lock was not taken.
    pub error: Error,
    /// The lock file, still open.
    pub lock: Box<FileLock>,
}

impl std::fmt::Debug for LockFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFailed")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for LockFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for LockFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<LockFailed> for Error {
    fn from(failed: LockFailed) -> Error {
        failed.error
    }
}

impl FileLock {
    /// Opens (creating if missing) the lock file `path`, relative to `dir`,
    /// with the shared runtime. `path` must stay inside `dir`.
    pub fn open(dir: impl AsRef<Path>, path: &str) -> Result<FileLock, Error> {
        FileLock::open_with(&Runtime::shared()?, dir, path)
    }

    /// Opens the lock file `path` in `dir` with a given runtime.
    pub fn open_with(
        runtime: &Runtime,
        dir: impl AsRef<Path>,
        path: &str,
    ) -> Result<FileLock, Error> {
        let mut instance = Instance::new(runtime, dir.as_ref(), Flavour::Sync);
        runtime.now(|| instance.open(|e: &Exports| (e.open, (GUEST_DIR, path))))?;
        Ok(FileLock {
            pid: std::process::id(),
            host: host_name(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            path: path.to_string(),
            instance,
        })
    }

    /// Who holds the lock file `path` in `dir` right now, without creating
    /// it: a missing file is [`FileHolder::Free`].
    pub fn holder_of(dir: impl AsRef<Path>, path: &str) -> Result<FileHolder, Error> {
        let runtime = Runtime::shared()?;
        let mut instance = Instance::new(&runtime, dir.as_ref(), Flavour::Sync);
        let held =
            runtime.now(|| instance.call_unopened(|e: &Exports| (e.who, (GUEST_DIR, path))))?;
        Ok(file_holder(held))
    }

    /// Takes the lock exclusively, recording this process as its owner.
    pub fn lock(self, wait: Wait) -> Result<FileGuard, LockFailed> {
        let command = self.command.clone();
        self.acquire(LockMode::Exclusive, wait, command)
    }

    /// Takes the lock shared with other shared holders.
    pub fn lock_shared(self, wait: Wait) -> Result<FileGuard, LockFailed> {
        self.acquire(LockMode::Shared, wait, String::new())
    }

    /// Takes the lock exclusively if nobody holds it; otherwise fails at once
    /// with [`Error::WouldBlock`] naming the holder.
    pub fn try_lock(self) -> Result<FileGuard, LockFailed> {
        self.lock(Wait::No)
    }

    /// Takes the lock in `mode` (a [`LockMode`]; `true` still means
    /// shared), recording `command` as what the owner runs.
    pub fn acquire(
        mut self,
        mode: impl Into<LockMode>,
        wait: Wait,
        command: String,
    ) -> Result<FileGuard, LockFailed> {
        let mode = match mode.into() {
            LockMode::Shared => WitMode::Shared,
            LockMode::Exclusive => WitMode::Exclusive,
        };
        let timeout_ms = match wait {
            Wait::No => Some(0),
            Wait::For(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)),
            Wait::Forever => None,
        };
        let owner = WitOwner {
            pid: self.pid,
            host: self.host.clone(),
            since_ms: now_ms(),
            command,
        };
        let acquired = self.call(|e, h| (e.acquire, (h, mode, timeout_ms, &owner)));
        match acquired {
            Ok(()) => Ok(FileGuard { lock: Some(self) }),
            Err(error) => Err(LockFailed {
                error,
                lock: Box::new(self),
            }),
        }
    }

    /// Who holds the lock right now (call it on a `FileLock` that does not
    /// hold it itself).
    pub fn holder(&mut self) -> Result<FileHolder, Error> {
        let held = self.call(|e, h| (e.holder, (h,)))?;
        Ok(file_holder(held))
    }

    fn release(&mut self) -> Result<(), Error> {
        self.call(|e, h| (e.release, (h,)))
    }

    /// Runs one call of the `lock-file` resource on the instance, opening
    /// the file on a fresh one.
    fn call<P: Params, T: Answer>(
        &mut self,
        call: impl FnOnce(&Exports, ResourceAny) -> Call<P, T>,
    ) -> Result<T, Error> {
        let path = self.path.as_str();
        let runtime = self.instance.runtime().clone();
        runtime.now(|| self.instance.call(|e| (e.open, (GUEST_DIR, path)), call))
    }
}

fn file_holder(held: Option<Option<WitOwner>>) -> FileHolder {
    match held {
        None => FileHolder::Free,
        Some(None) => FileHolder::Unrecorded,
        Some(Some(o)) => FileHolder::Owner(Owner {
            pid: o.pid,
            host: o.host,
            since_ms: o.since_ms,
            command: o.command,
        }),
    }
}

/// The machine's host name (`?` if it cannot be read).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "?".to_string(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
