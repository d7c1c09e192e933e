//! The hasp guest: every lock rule of hasp, compiled to WebAssembly components.
//!
//! The host hands a component a preopened directory and carries requests in;
//! everything that decides whether a lock is granted lives here. One crate,
//! three components:
//!
//! - the registry (world `guest`, the default build): named, hierarchical
//!   locks kept as file names — [`name`] (what a resource name or client id may
//!   be), [`record`] (the on-disk state), [`disk`] (the atomic filesystem
//!   steps), [`registry`] (ownership, tokens, hierarchy, fencing);
//! - the same registry on a shared store (world `on-store`, feature
//!   `store`): [`registry`]'s rules unchanged, with `kv` (the same steps on
//!   the host's `hasp:lock/store`, etcd) in place of [`disk`];
//! - process locks (world `process`, feature `process`): lock files held with
//!   the host's OS locks — [`process`] (which file, what it records, messages).
//!
//! The directory ones reach the disk only through [`dir`] (the preopen as a
//! capability); all say everything a user reads through [`errors`]. The registry component is
//! also a command for the stock `wasmtime run` ([`command`]), printing
//! through the `hasp-text` crate (`guest/text/`), which the `hasp` CLI
//! shares.

#[cfg(all(feature = "process", feature = "store"))]
compile_error!("the features `process` and `store` build different components: pick one");

#[cfg(not(any(feature = "process", feature = "store")))]
wit_bindgen::generate!({
    world: "guest",
    path: "../wit",
});

#[cfg(feature = "process")]
wit_bindgen::generate!({
    world: "process",
    path: "../wit",
});

#[cfg(feature = "store")]
wit_bindgen::generate!({
    world: "on-store",
    path: "../wit",
});

// The process world uses only part of the filesystem layer and messages;
// the store world, only the messages.
#[cfg_attr(any(feature = "process", feature = "store"), allow(dead_code))]
mod dir;
#[cfg_attr(any(feature = "process", feature = "store"), allow(dead_code))]
mod errors;

#[cfg(not(feature = "process"))]
mod name;
#[cfg(not(feature = "process"))]
mod record;
#[cfg(not(feature = "process"))]
mod registry;
#[cfg(not(feature = "process"))]
mod token;

#[cfg(not(any(feature = "process", feature = "store")))]
mod disk;
#[cfg(feature = "store")]
mod kv;

#[cfg(feature = "process")]
mod process;

// The registry component is also a command (`wasi:cli/run`), for the stock
// `wasmtime run`.
#[cfg(not(any(feature = "process", feature = "store")))]
mod command;
#[cfg(not(any(feature = "process", feature = "store")))]
use command::Command;
#[cfg(not(any(feature = "process", feature = "store")))]
use hasp_text::{duration, show};
#[cfg(not(any(feature = "process", feature = "store")))]
wasip2::cli::command::export!(Command);

#[cfg(not(feature = "process"))]
mod export {
    use crate::exports::hasp::lock::registry::{Guest, GuestRegistry, Registry as Handle};
    use crate::hasp::lock::types::{Error, Grant, Holder, LockOptions, UnlockKey};
    use crate::registry::Registry;

    struct Component;

    impl Guest for Component {
        type Registry = Registry;
    }

    impl GuestRegistry for Registry {
        fn open(dir: String) -> Result<Handle, Error> {
            Ok(Handle::new(Registry::open(&dir)?))
        }

        fn lock(&self, resource: String, options: LockOptions) -> Result<Grant, Error> {
            Registry::lock(self, &resource, &options).inspect_err(|e| self.failed(e))
        }

        fn unlock(&self, resource: String, key: UnlockKey) -> Result<Holder, Error> {
            Registry::unlock(self, &resource, &key).inspect_err(|e| self.failed(e))
        }

        fn renew(
            &self,
            resource: String,
            key: UnlockKey,
            ttl_ms: Option<u64>,
        ) -> Result<Holder, Error> {
            Registry::renew(self, &resource, &key, ttl_ms).inspect_err(|e| self.failed(e))
        }

        fn force_unlock(&self, resource: String) -> Result<Holder, Error> {
            Registry::force_unlock(self, &resource).inspect_err(|e| self.failed(e))
        }

        fn status(&self, resource: String) -> Result<Option<Holder>, Error> {
            Registry::status(self, &resource).inspect_err(|e| self.failed(e))
        }

        fn list(&self, prefix: String) -> Result<Vec<Holder>, Error> {
            Registry::list(self, &prefix).inspect_err(|e| self.failed(e))
        }
    }

    crate::export!(Component with_types_in crate);
}
