//! The one error type of the hasp library: the bottom layer, which
//! names no other module of the crate.

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
    /// A lock state in the lock directory (or the store) does not parse.
    #[error("{message} ({})", place(dir))]
    CorruptRecord {
        /// The lock directory; for a registry on etcd, the store's URL.
        dir: PathBuf,
        /// The state file (or its `.lock` directory), relative to `dir`.
        file: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A filesystem call inside the lock directory failed (or, on etcd, a
    /// call to the store).
    #[error("{message} ({})", place(dir))]
    Storage {
        /// The lock directory; for a registry on etcd, the store's URL.
        dir: PathBuf,
        /// The file or directory it failed on, relative to `dir`.
        file: PathBuf,
        /// Whether the disk is full or read-only, or something else.
        kind: StorageKind,
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
    /// whatever the trapped call had not committed. The text names the
    /// trap and its causes; [`source`](std::error::Error::source) is the
    /// trap itself.
    #[error("the hasp component stopped: {0:#}")]
    Trap(#[source] wasmtime::Error),
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
    /// The WebAssembly runtime could not be set up: what failed, as the
    /// error's outermost context, and its cause below it (the text shows
    /// them all).
    #[error("the hasp runtime failed: {0:#}")]
    Runtime(#[source] wasmtime::Error),
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

/// What kind of failure an [`Error::Storage`] is: the ones a caller acts
/// on get a kind of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageKind {
    /// The disk (or the user's quota) is full: a retry may succeed once room
    /// is made.
    Full,
    /// The lock directory is on a read-only filesystem.
    ReadOnly,
    /// The store (etcd) did not answer, or could not commit (no quorum),
    /// within the call's budget: nothing was changed; a retry may succeed.
    Unavailable,
    /// Anything else: the message says what.
    Other,
}

/// Where a registry keeps its locks, in words: `dir` is a lock directory,
/// or the URL of a store.
fn place(dir: &std::path::Path) -> String {
    let shown = dir.display().to_string();
    if shown.starts_with("etcd://") {
        format!("store {shown}")
    } else {
        format!("lock directory {shown}")
    }
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
    /// The guest decides which error codes are refusals (`hasp-text`,
    /// shared with its own command line).
    pub fn is_refusal(&self) -> bool {
        hasp_text::is_refusal(self.code())
    }

    /// What kind of error this is, in words: for the lock rules' errors the
    /// name of the WIT `error-code` case (`already-locked`, `not-owner`,
    /// ...); for the host's own, `not-synced`, `directory`, `trap`,
    /// `plugin`, `runtime` or `listen`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::AlreadyLocked { .. } => "already-locked",
            Error::NotOwner { .. } => "not-owner",
            Error::NotLocked { .. } => "not-locked",
            Error::InvalidInput { .. } => "invalid-input",
            Error::CorruptRecord { .. } => "corrupt-record",
            Error::Storage { .. } => "storage",
            Error::Busy { .. } => "busy",
            Error::LeaseExpired { .. } => "lease-expired",
            Error::WouldBlock { .. } => "would-block",
            Error::NotSynced { .. } => "not-synced",
            Error::Directory { .. } => "directory",
            Error::Trap(_) => "trap",
            Error::Plugin { .. } => "plugin",
            Error::Runtime(_) => "runtime",
            Error::Listen { .. } => "listen",
        }
    }

    /// A runtime failure: `what` failed, because of `cause`.
    pub(crate) fn runtime(
        what: impl std::fmt::Display,
        cause: impl Into<wasmtime::Error>,
    ) -> Error {
        Error::Runtime(cause.into().context(what.to_string()))
    }
}
