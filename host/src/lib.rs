//! hasp: named, hierarchical locks whose rules run inside a WebAssembly
//! component.
//!
//! This crate is the host. It runs the hasp guest component under wasmtime,
//! hands it the lock directory (a WASI preopen, opened with cap-std) and
//! carries calls in. It decides nothing itself: every rule — ownership,
//! tokens, hierarchy, fencing, the on-disk format and the messages — lives in
//! the guest.
//!
//! The whole life of a lock:
//!
//! ```
//! use hasp::{LockOptions, Registry, UnlockKey};
//! # let dir = tempfile::tempdir()?;
//! let mut registry = Registry::open(dir.path())?;
//! let grant = registry.lock("deploy/prod", &LockOptions::client("ci-42"))?;
//! assert_eq!(grant.holder.fencing, 1);
//!
//! // Taken: a second lock, or one on a parent or child, is refused at once.
//! match registry.lock("deploy", &LockOptions::client("ci-43")) {
//!     Err(hasp::Error::AlreadyLocked { holder, .. }) => assert_eq!(holder, "ci-42"),
//!     other => panic!("expected a refusal, got {other:?}"),
//! }
//!
//! registry.unlock("deploy/prod", &UnlockKey::Token(grant.token))?;
//! assert_eq!(registry.status("deploy/prod")?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs, unreachable_pub, missing_debug_implementations)]

// The modules, bottom to top (docs/ARCHITECTURE.md, "Layers"): each
// imports only from those above it in this list.
mod bindings;
mod error;
mod file_lock;
pub mod plugin;
mod process_lock;
mod registry;
mod runtime;
pub mod serve;
mod store;

pub use error::{Error, StorageKind};
pub use process_lock::{FileGuard, FileHolder, FileLock, LockFailed, LockMode, Owner, Wait};
pub use registry::{Grant, Holder, LockOptions, Registry, UnlockKey};
pub use runtime::{
    cache_dir, component_file, Limits, Runtime, GUEST_WASM, PROCESS_WASM, STORE_WASM, WIT,
};
pub use store::{EtcdUrl, Store};
