//! The Rust API for lock files: OS-level locks that die with their holder,
//! with the holder recorded in the file (zc.lockfile, locket, flock(1)).

use crate::bindings::process::exports::hasp::lock::process_lock::{LockMode, Owner as WitOwner};
use crate::bindings::process::Process;
use crate::error::Error;
use crate::file_lock::LockDirs;
use crate::registry::GUEST_DIR;
use crate::runtime::{runtime_error, Runtime, State};
use serde::Serialize;
use std::path::{Path, PathBuf};
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
pub struct FileLock {
    runtime: Runtime,
    /// This process's id, this machine's name and this process's command
    /// line, read once.
    pid: u32,
    host: String,
    command: String,
    dir: PathBuf,
    store: Store<State>,
    guest: Process,
    handle: ResourceAny,
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
        let dir = dir.as_ref().to_path_buf();
        let (mut store, guest) = instantiate(runtime, &dir)?;
        let _tokio = runtime.enter();
        let opened = guest
            .hasp_lock_process_lock()
            .lock_file()
            .call_open(&mut store, GUEST_DIR, path)
            .map_err(trap)?;
        let handle = opened.map_err(|err| Error::from_guest(err, &dir))?;
        Ok(FileLock {
            runtime: runtime.clone(),
            pid: std::process::id(),
            host: host_name(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            dir,
            store,
            guest,
            handle,
        })
    }

    /// Who holds the lock file `path` in `dir` right now, without creating
    /// it: a missing file is [`FileHolder::Free`].
    pub fn holder_of(dir: impl AsRef<Path>, path: &str) -> Result<FileHolder, Error> {
        let runtime = Runtime::shared()?;
        let dir = dir.as_ref();
        let (mut store, guest) = instantiate(&runtime, dir)?;
        let _tokio = runtime.enter();
        let held = guest
            .hasp_lock_process_lock()
            .lock_file()
            .call_who(&mut store, GUEST_DIR, path)
            .map_err(trap)?
            .map_err(|err| Error::from_guest(err, dir))?;
        Ok(file_holder(held))
    }

    /// Takes the lock exclusively, recording this process as its owner.
    pub fn lock(self, wait: Wait) -> Result<FileGuard, LockFailed> {
        let command = self.command.clone();
        self.acquire(false, wait, command)
    }

    /// Takes the lock shared with other shared holders.
    pub fn lock_shared(self, wait: Wait) -> Result<FileGuard, LockFailed> {
        self.acquire(true, wait, String::new())
    }

    /// Takes the lock exclusively if nobody holds it; otherwise fails at once
    /// with [`Error::WouldBlock`] naming the holder.
    pub fn try_lock(self) -> Result<FileGuard, LockFailed> {
        self.lock(Wait::No)
    }

    /// Takes the lock, recording `command` as what the owner runs.
    pub fn acquire(
        mut self,
        shared: bool,
        wait: Wait,
        command: String,
    ) -> Result<FileGuard, LockFailed> {
        let mode = if shared {
            LockMode::Shared
        } else {
            LockMode::Exclusive
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
        let acquired = self.call(|guest, handle, store| {
            guest
                .hasp_lock_process_lock()
                .lock_file()
                .call_acquire(store, handle, mode, timeout_ms, &owner)
        });
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
        let held = self.call(|guest, handle, store| {
            guest
                .hasp_lock_process_lock()
                .lock_file()
                .call_holder(store, handle)
        })?;
        Ok(file_holder(held))
    }

    fn release(&mut self) -> Result<(), Error> {
        self.call(|guest, handle, store| {
            guest
                .hasp_lock_process_lock()
                .lock_file()
                .call_release(store, handle)
        })
    }

    fn call<T>(
        &mut self,
        f: impl FnOnce(
            &Process,
            ResourceAny,
            &mut Store<State>,
        ) -> wasmtime::Result<Result<T, crate::bindings::registry::types::Error>>,
    ) -> Result<T, Error> {
        let _tokio = self.runtime.enter();
        self.store.set_epoch_deadline(self.runtime.deadline_ticks());
        Error::from_call(f(&self.guest, self.handle, &mut self.store), &self.dir)
    }
}

/// A process-lock instance whose only capability is `dir`: preopened for
/// WASI, and granted to the host's file-lock.
fn instantiate(runtime: &Runtime, dir: &Path) -> Result<(Store<State>, Process), Error> {
    let wasi = Runtime::wasi_for(dir, GUEST_DIR)?;
    let granted = cap_std::fs::Dir::open_ambient_dir(dir, cap_std::ambient_authority()).map_err(
        |source| Error::Directory {
            dir: dir.to_path_buf(),
            source,
        },
    )?;
    let mut lock_dirs = LockDirs::default();
    lock_dirs.grant(GUEST_DIR, granted);
    let _tokio = runtime.enter();
    let mut store = runtime.new_store(wasi, lock_dirs);
    let guest = runtime
        .process_pre()?
        .instantiate(&mut store)
        .map_err(runtime_error)?;
    Ok((store, guest))
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

fn trap(err: wasmtime::Error) -> Error {
    Error::Trap(format!("{err:#}"))
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
