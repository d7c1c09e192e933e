//! What a guest call comes back with, as [`Error`]: the guest's own error
//! (named more precisely where the host can see the cause), or a trap.

use crate::bindings::types as wit;
use crate::error::{Error, StorageKind};
use std::path::Path;

/// What one guest call returns: a trap, or the guest's own answer.
pub(crate) type Outcome<T> = wasmtime::Result<Result<T, wit::Error>>;

/// Maps the outcome of a guest call on `dir`: the guest's own error, or
/// a trap.
pub(crate) fn result<T>(outcome: Outcome<T>, dir: &Path) -> Result<T, Error> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(guest_error(err, dir)),
        Err(trap) => Err(Error::Trap(trap)),
    }
}

/// Maps an error returned by the guest, in the registry on `dir`.
pub(crate) fn guest_error(err: wit::Error, dir: &Path) -> Error {
    let message = err.message;
    let dir = dir.to_path_buf();
    match err.code {
        wit::ErrorCode::AlreadyLocked(holder) => Error::AlreadyLocked { holder, message },
        wit::ErrorCode::NotOwner(holder) => Error::NotOwner { holder, message },
        wit::ErrorCode::NotLocked => Error::NotLocked { message },
        wit::ErrorCode::InvalidInput => Error::InvalidInput { message },
        wit::ErrorCode::CorruptRecord(file) => Error::CorruptRecord {
            dir,
            file: file.into(),
            message,
        },
        wit::ErrorCode::Storage(file) => {
            let message = name_io_cause(message, &dir);
            Error::Storage {
                kind: storage_kind(&message),
                message,
                dir,
                file: file.into(),
            }
        }
        wit::ErrorCode::Busy => Error::Busy { message },
        wit::ErrorCode::WouldBlock(holder) => Error::WouldBlock { holder, message },
        wit::ErrorCode::LeaseExpired => Error::LeaseExpired { message },
    }
}

/// How the guest words WASI's `insufficient-space` (`guest/src/dir.rs`,
/// `reason`); the guest's `storage` error carries no code, only this text.
const NO_SPACE: &str = "no space left on the device";
/// How the guest words `read-only`, and how [`name_io_cause`] names a
/// read-only mount.
const READ_ONLY: &str = "read-only filesystem";
/// How the guest ends a storage message for WASI's catch-all `io` error
/// (`guest/src/dir.rs`, `reason`).
const IO_ERROR: &str = ": input/output error";

/// The kind of a storage failure, from the guest's message (after
/// [`name_io_cause`]): the one place that reads it for a kind.
fn storage_kind(message: &str) -> StorageKind {
    if message.contains(NO_SPACE) {
        StorageKind::Full
    } else if message.contains(READ_ONLY) {
        StorageKind::ReadOnly
    } else if message.contains(hasp_text::UNAVAILABLE) {
        StorageKind::Unavailable
    } else {
        StorageKind::Other
    }
}

/// Names the cause of a storage failure that WASI could only call an
/// input/output error: wasmtime-wasi reports `EROFS`, `EMFILE`, `ENFILE`
/// and `EDQUOT` that way. The host looks at what the guest cannot see: a
/// lock directory on a read-only mount (for a call that writes), or a
/// process out of descriptors. Anything else stays as the guest said.
fn name_io_cause(message: String, dir: &Path) -> String {
    let Some(head) = message.strip_suffix(IO_ERROR) else {
        return message;
    };
    let reads = head.starts_with("cannot read ") || head.starts_with("cannot inspect ");
    let cause = if !reads && read_only(dir) {
        READ_ONLY
    } else if out_of_descriptors() {
        "too many open files"
    } else {
        return message;
    };
    format!("{head}: {cause}")
}

/// Whether `dir` is on a filesystem mounted read-only.
fn read_only(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs(3) fills the zeroed struct it is given; `path` is a
    // NUL-terminated string that outlives the call.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        libc::statvfs(path.as_ptr(), &mut stat) == 0 && stat.f_flag & libc::ST_RDONLY != 0
    }
}

/// Whether this process is at (or within a few of) its limit of open files.
fn out_of_descriptors() -> bool {
    // SAFETY: getrlimit(2) fills the zeroed struct it is given.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return false;
        }
        limit.rlim_cur
    };
    match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => (entries.count() as u64).saturating_add(8) >= limit as u64,
        Err(err) => matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)),
    }
}
