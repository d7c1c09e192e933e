//! The hasp guest: every lock rule of hasp, compiled to a WebAssembly component.
//!
//! The host hands this component a preopened directory and carries requests in;
//! everything that decides whether a lock is granted lives here:
//!
//! - [`name`]: what a resource name or client id may be, and how it maps to disk;
//! - [`record`]: the versioned on-disk record of one granted lock;
//! - [`dir`]: the lock directory as a capability: the WASI calls hasp makes;
//! - [`disk`]: the atomic filesystem steps (commit, fence, markers) of the protocol;
//! - [`registry`]: the rules — ownership, tokens, hierarchy, fencing — built on them;
//! - [`errors`]: every message text a user sees.

wit_bindgen::generate!({
    world: "guest",
    path: "../wit",
});

mod dir;
mod disk;
mod errors;
mod name;
mod record;
mod registry;
mod token;

use exports::hasp::lock::registry::{Guest, GuestRegistry, Registry as RegistryHandle};
use hasp::lock::types::{Error, Grant, Holder, LockOptions, UnlockKey};

struct Component;

impl Guest for Component {
    type Registry = registry::Registry;
}

impl GuestRegistry for registry::Registry {
    fn open(dir: String) -> Result<RegistryHandle, Error> {
        Ok(RegistryHandle::new(registry::Registry::open(&dir)?))
    }

    fn lock(&self, resource: String, options: LockOptions) -> Result<Grant, Error> {
        registry::Registry::lock(self, &resource, &options)
    }

    fn unlock(&self, resource: String, key: UnlockKey) -> Result<Holder, Error> {
        registry::Registry::unlock(self, &resource, &key)
    }

    fn status(&self, resource: String) -> Result<Option<Holder>, Error> {
        registry::Registry::status(self, &resource)
    }

    fn list(&self, prefix: String) -> Result<Vec<Holder>, Error> {
        registry::Registry::list(self, &prefix)
    }
}

export!(Component);
