//! The one error type of the hasp library.

use crate::bindings::registry::types as wit;
use std::path::PathBuf;

/// Why a hasp call failed. The lock-rule variants carry the message the guest
/// wrote (gocept.lockd's texts, byte for byte) and the holder it names: match
/// on the variant, show the `Display` text to people.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource, or a related parent or child, is held by `holder`
    /// (a client id, or `?` for an anonymous lock).
    #[error("{message}")]
    AlreadyLocked {
        /// Who holds the conflicting lock.
        holder: String,
        /// The guest's message, naming the holder.
        message: String,
    },
    /// The lock belongs to `holder`, not to the client or token presented.
    #[error("{message}")]
    NotOwner {
        /// Who holds the lock.
        holder: String,
        /// The guest's message, naming the holder and the client refused.
        message: String,
    },
    /// There is no lock to release.
    #[error("{message}")]
    NotLocked {
        /// The guest's message.
        message: String,
    },
    /// A resource name, client id or token was malformed; nothing changed.
    #[error("{message}")]
    InvalidInput {
        /// What is wrong, quoting the input.
        message: String,
    },
    /// A lock state in the lock directory does not parse.
    #[error("{message} (lock directory {})", dir.display())]
    CorruptRecord {
        /// The lock directory.
        dir: PathBuf,
        /// The state file (or its `.lock` directory), relative to `dir`.
        file: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A filesystem call inside the lock directory failed.
    #[error("{message} (lock directory {})", dir.display())]
    Storage {
        /// The lock directory.
        dir: PathBuf,
        /// The file or directory it failed on, relative to `dir`.
        file: PathBuf,
        /// What failed.
        message: String,
    },
    /// Concurrent changes kept the attempt from settling; nothing was granted.
    #[error("{message}")]
    Busy {
        /// Which resource, and that a retry may succeed.
        message: String,
    },
    /// The caller's lock ended because its lease ran out before this unlock
    /// or renewal (somebody else may hold it now): it is no longer the
    /// caller's.
    #[error("{message}")]
    LeaseExpired {
        /// The guest's message, naming the lock that ended.
        message: String,
    },
    /// A lock file is held by another process (`holder`: its pid, or `?`)
    /// and was not released in the time allowed.
    #[error("{message}")]
    WouldBlock {
        /// The holder's pid as recorded in the lock file, or `?`.
        holder: String,
        /// The guest's message, naming the file and its holder.
        message: String,
    },
    /// A change was made, but the sync that would have made it durable
    /// failed (`hasp serve --fsync`): a crash may undo it. The message says
    /// what became of the change.
    #[error("{message}")]
    NotSynced {
        /// The change, the failure, and what was done about it.
        message: String,
    },
    /// The lock directory itself could not be opened.
    #[error("cannot open the lock directory {}: {source}", dir.display())]
    Directory {
        /// The directory given.
        dir: PathBuf,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The component trapped or ran past its time or memory limit. The
    /// registry re-instantiates it on the next call; the disk is unchanged by
    /// whatever the trapped call had not committed.
    #[error("the hasp component stopped: {0}")]
    Trap(String),
    /// A plugin could not be composed with hasp, or failed while it ran
    /// (not a component, an import hasp does not provide, a trap, a limit).
    /// Locks and records are as the guest's rules left them.
    #[error("plugin {plugin}: {message}")]
    Plugin {
        /// The plugin, as the user named it.
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// The WebAssembly runtime could not be set up.
    #[error("the hasp runtime failed: {0}")]
    Runtime(String),
    /// `hasp serve` could not listen on its address: in use, not an
    /// address of this machine, or a port that needs privileges.
    #[error("cannot listen on {addr}: {}", listen_reason(source))]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
}

/// Why a listening socket could not be bound, in words.
fn listen_reason(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::AddrInUse => {
            "the address is already in use (another hasp serve, or another program, \
             listens there; pick another --addr, or port 0 for any free one)"
                .to_string()
        }
        ErrorKind::AddrNotAvailable => "no interface of this machine has that address".to_string(),
        ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges)".to_string()
        }
        _ => err.to_string(),
    }
}

impl Error {
    /// Whether this is a refusal by the lock rules (as opposed to bad input or
    /// a broken environment).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::AlreadyLocked { .. }
                | Error::NotOwner { .. }
                | Error::NotLocked { .. }
                | Error::Busy { .. }
                | Error::WouldBlock { .. }
                | Error::LeaseExpired { .. }
        )
    }

    /// Maps the outcome of a guest call on `dir`: the guest's own error, or
    /// a trap.
    pub(crate) fn from_call<T>(
        outcome: wasmtime::Result<Result<T, wit::Error>>,
        dir: &std::path::Path,
    ) -> Result<T, Error> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Error::from_guest(err, dir)),
            Err(trap) => Err(Error::Trap(format!("{trap:#}"))),
        }
    }

    /// Maps an error returned by the guest, in the registry on `dir`.
    pub(crate) fn from_guest(err: wit::Error, dir: &std::path::Path) -> Error {
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
            wit::ErrorCode::Storage(file) => Error::Storage {
                message: name_io_cause(message, &dir),
                dir,
                file: file.into(),
            },
            wit::ErrorCode::Busy => Error::Busy { message },
            wit::ErrorCode::WouldBlock(holder) => Error::WouldBlock { holder, message },
            wit::ErrorCode::LeaseExpired => Error::LeaseExpired { message },
        }
    }
}

/// How the guest ends a storage message for WASI's catch-all `io` error
/// (`guest/src/dir.rs`, `reason`).
const IO_ERROR: &str = ": input/output error";

/// Names the cause of a storage failure that WASI could only call an
/// input/output error: wasmtime-wasi reports `EROFS`, `EMFILE`, `ENFILE`
/// and `EDQUOT` that way. The host looks at what the guest cannot see: a
/// lock directory on a read-only mount (for a call that writes), or a
/// process out of descriptors. Anything else stays as the guest said.
fn name_io_cause(message: String, dir: &std::path::Path) -> String {
    let Some(head) = message.strip_suffix(IO_ERROR) else {
        return message;
    };
    let reads = head.starts_with("cannot read ") || head.starts_with("cannot inspect ");
    let cause = if !reads && read_only(dir) {
        "read-only filesystem"
    } else if out_of_descriptors() {
        "too many open files"
    } else {
        return message;
    };
    format!("{head}: {cause}")
}

/// Whether `dir` is on a filesystem mounted read-only.
fn read_only(dir: &std::path::Path) -> bool {
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
