//! Every text a user of hasp reads when a call fails.
//!
//! The three lock-rule messages are byte-exact copies of gocept.lockd's, because
//! scripts written against it grep for them.

use crate::hasp::lock::types::{Error, ErrorCode};
use wasip2::filesystem::types::{DescriptorType as FsType, ErrorCode as FsError};

/// Shown for a client id or an anonymous lock: the id, or `?`.
pub fn shown(client: Option<&str>) -> &str {
    client.unwrap_or(hasp_text::ANONYMOUS)
}

/// The WIT name of an error code's case (`already-locked`), as the host
/// names it too.
pub fn code_name(code: &ErrorCode) -> &'static str {
    match code {
        ErrorCode::AlreadyLocked(_) => "already-locked",
        ErrorCode::NotOwner(_) => "not-owner",
        ErrorCode::NotLocked => "not-locked",
        ErrorCode::InvalidInput => "invalid-input",
        ErrorCode::CorruptRecord(_) => "corrupt-record",
        ErrorCode::Storage(_) => "storage",
        ErrorCode::Busy => "busy",
        ErrorCode::WouldBlock(_) => "would-block",
        ErrorCode::LeaseExpired => "lease-expired",
    }
}

/// The resource (or a conflicting parent or child) is held by `holder`.
pub fn already_locked(holder: Option<&str>) -> Error {
    let holder = shown(holder);
    Error {
        message: format!("Resource already locked by '{holder}'"),
        code: ErrorCode::AlreadyLocked(holder.to_string()),
    }
}

/// `client` tried to release a lock that `holder` owns.
pub fn not_owner(holder: Option<&str>, client: &str) -> Error {
    let holder = shown(holder);
    Error {
        message: format!("Resource locked by '{holder}' cannot be unlocked by '{client}'"),
        code: ErrorCode::NotOwner(holder.to_string()),
    }
}

/// A token that does not match the lock's token.
pub fn wrong_token(holder: Option<&str>) -> Error {
    let holder = shown(holder);
    Error {
        message: format!("Resource locked by '{holder}' cannot be unlocked with this token"),
        code: ErrorCode::NotOwner(holder.to_string()),
    }
}

/// Nothing to release.
pub fn not_locked() -> Error {
    Error {
        message: "Resource not locked".to_string(),
        code: ErrorCode::NotLocked,
    }
}

/// The caller's lock on `resource` (held by `client`, fencing `fencing`)
/// ended because its lease ran out.
pub fn lease_expired(resource: &str, client: Option<&str>, fencing: u64) -> Error {
    Error {
        message: format!(
            "Lease expired: the lock on '{resource}' taken by '{}' (fencing {fencing}) \
             ran out before it was renewed, and is no longer held by it",
            shown(client)
        ),
        code: ErrorCode::LeaseExpired,
    }
}

/// A renewal without a length, of a lock that has no lease.
pub fn no_lease(resource: &str) -> Error {
    Error {
        message: format!("the lock on '{resource}' has no lease: give the renewal a TTL"),
        code: ErrorCode::InvalidInput,
    }
}

/// Malformed input; `what` names the argument, `why` says what is wrong.
pub fn invalid(what: &str, value: &str, why: &str) -> Error {
    Error {
        message: format!("invalid {what} {}: {why}", quoted(value)),
        code: ErrorCode::InvalidInput,
    }
}

/// A lock state that does not parse. `path` is relative to the lock directory.
pub fn corrupt(path: &str, why: &str) -> Error {
    let shown = on_one_line(path);
    Error {
        message: format!("corrupt lock state {shown}: {why}"),
        code: ErrorCode::CorruptRecord(path.to_string()),
    }
}

/// A filesystem call on `path` (relative to the lock directory) failed.
pub fn storage(action: &str, path: &str, code: FsError) -> Error {
    io_failure(action, path, crate::dir::reason(code))
}

/// Like [`storage`], with the reason given as text.
pub fn io_failure(action: &str, path: &str, reason: &str) -> Error {
    let shown = on_one_line(path);
    Error {
        message: format!("cannot {action} {shown}: {reason}"),
        code: ErrorCode::Storage(path.to_string()),
    }
}

/// The store could not be reached, or could not commit, for `action` on
/// `key`; `why` is the host's reason. Nothing was changed.
#[cfg(feature = "store")]
pub fn store_unavailable(action: &str, key: &str, why: &str) -> Error {
    let shown = on_one_line(key);
    Error {
        message: format!(
            "cannot {action} {shown}: {} ({why})",
            hasp_text::UNAVAILABLE
        ),
        code: ErrorCode::Storage(key.to_string()),
    }
}

/// A lock directory laid out by another, incompatible hasp.
pub fn wrong_format(path: &str, found: &str) -> Error {
    let advice = if found == "hasp-lock-dir 1" {
        " (format 1, from an earlier hasp: release its locks with that hasp and \
         remove the directory, or use another one)"
    } else {
        ""
    };
    Error {
        message: format!(
            "{path} says {}: this lock directory was written by an incompatible hasp{advice}",
            quoted(found)
        ),
        code: ErrorCode::Storage(path.to_string()),
    }
}

/// A registry on a store laid out by another, incompatible hasp.
#[cfg(feature = "store")]
pub fn wrong_store_format(key: &str, found: &str) -> Error {
    Error {
        message: format!(
            "{key} says {}: this registry was written by an incompatible hasp \
             (use another prefix)",
            quoted(found)
        ),
        code: ErrorCode::Storage(key.to_string()),
    }
}

/// `path` is of type `found` where `wanted` belongs (a FIFO where a
/// directory or a regular file should be, say): refused, never opened.
pub fn wrong_kind(path: &str, found: FsType, wanted: &str) -> Error {
    Error {
        message: format!(
            "cannot use {path}: it is {}, not {wanted}",
            crate::dir::what(found)
        ),
        code: ErrorCode::Storage(path.to_string()),
    }
}

/// A path component that is a symlink: never followed.
pub fn symlink(path: &str) -> Error {
    Error {
        message: format!("refusing to follow the symlink {path}"),
        code: ErrorCode::Storage(path.to_string()),
    }
}

/// The walk below a lock-children attempt on `node` ran out of time.
pub fn walk_too_long(node: &str) -> Error {
    Error {
        message: format!(
            "checking the locks below {node} took too long; the attempt was withdrawn, try again"
        ),
        code: ErrorCode::Busy,
    }
}

/// Contention did not settle within the retry bound.
pub fn busy(resource: &str) -> Error {
    Error {
        message: format!("gave up on {resource} after repeated concurrent changes; try again"),
        code: ErrorCode::Busy,
    }
}

/// Shows user input safely: control characters escaped, long values cut.
/// A path as a message shows it: as it is, but for control characters
/// (a file name may hold a newline), which are escaped so that a message
/// stays one line.
fn on_one_line(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.chars().any(char::is_control) {
        return path.into();
    }
    path.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect::<String>()
        .into()
}

fn quoted(value: &str) -> String {
    const SHOWN: usize = 80;
    let mut out: String = value
        .chars()
        .take(SHOWN)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > SHOWN {
        out.push_str("...");
    }
    format!("'{out}'")
}

#[cfg(feature = "process")]
/// A lock file held by another process (`pid`, if its record says) that was
/// not released in the time allowed.
pub fn file_held(path: &str, owner: Option<(u32, &str, &str)>) -> Error {
    match owner {
        Some((pid, host, command)) => {
            let running = if command.is_empty() {
                String::new()
            } else {
                format!(", running {}", quoted(command))
            };
            Error {
                message: format!("Lock file {path} is held by pid {pid} on {host}{running}"),
                code: ErrorCode::WouldBlock(pid.to_string()),
            }
        }
        None => Error {
            message: format!("Lock file {path} is held by another process"),
            code: ErrorCode::WouldBlock(hasp_text::ANONYMOUS.to_string()),
        },
    }
}

#[cfg(feature = "process")]
/// A lock file path that is not a regular file.
pub fn not_a_regular_file(path: &str, what: &str) -> Error {
    Error {
        message: format!("cannot use {path} as a lock file: it is {what}"),
        code: ErrorCode::InvalidInput,
    }
}

#[cfg(feature = "process")]
/// A lock file path through `level`, which is not a directory but `kind`
/// (a symlink is never followed, even to a directory).
pub fn not_a_lock_file_directory(path: &str, level: &str, kind: FsType) -> Error {
    let why = match kind {
        FsType::SymbolicLink => " (symlinks are never followed)",
        _ => ", not a directory",
    };
    Error {
        message: format!(
            "cannot use {path} as a lock file: {level} is {}{why}",
            crate::dir::what(kind)
        ),
        code: ErrorCode::InvalidInput,
    }
}
