//! What hasp prints and reads as text, in one place: the status table and
//! timestamps ([`show`]), a holder or grant as JSON ([`json`]), durations as
//! typed on a command line ([`duration`]), and the words that recur.
//!
//! Plain Rust without dependencies. The guest's own command line
//! (`wasmtime run hasp.wasm ...`) and the `hasp` CLI both use it, so they
//! print byte for byte the same; the crate lives in the guest's tree
//! because the guest owns every text hasp shows.
#![warn(missing_docs)]

pub mod duration;
pub mod json;
pub mod show;

/// One granted lock, as hasp shows it (a view of a holder).
#[derive(Debug, Clone, Copy)]
pub struct Lock<'a> {
    /// The resource name.
    pub resource: &'a str,
    /// The client id; `None` for an anonymous lock.
    pub client: Option<&'a str>,
    /// The fencing token.
    pub fencing: u64,
    /// Grant time, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Whether the lock conflicts with locks on parents.
    pub lock_parents: bool,
    /// Whether the lock conflicts with locks on children.
    pub lock_children: bool,
    /// For a leased lock: when the lease ends (milliseconds since the Unix
    /// epoch) and how long it is (milliseconds).
    pub lease: Option<(u64, u64)>,
}

/// How a failure of a shared store (etcd) to answer or to commit is
/// worded; the host classifies storage errors that say it as unavailable
/// (HTTP 503).
pub const UNAVAILABLE: &str = "the store is unavailable";

/// The holder shown for a lock taken without a client id.
pub const ANONYMOUS: &str = "?";

/// `n` in decimal, written into `digits` without an allocation (state
/// names and owner records are built on every lock call).
pub fn decimal(n: u64, digits: &mut [u8; 20]) -> &str {
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&digits[at..]).unwrap_or_default()
}

/// What `status RESOURCE` prints for a resource nobody holds.
pub const NOT_LOCKED: &str = "not locked";

/// Whether the error code named `code` (the WIT `error-code` case, as
/// `already-locked`) is a refusal by the lock rules, which the command
/// lines exit 1 for, rather than bad input or a broken environment (2).
pub fn is_refusal(code: &str) -> bool {
    matches!(
        code,
        "already-locked" | "not-owner" | "not-locked" | "busy" | "would-block" | "lease-expired"
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decimal_is_what_display_writes(n in any::<u64>()) {
            let mut digits = [0; 20];
            prop_assert_eq!(super::decimal(n, &mut digits), n.to_string());
        }
    }
}
