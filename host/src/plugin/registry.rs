//! `hasp:lock/registry` as plugins import it: the host serves each
//! registry a plugin opens with a [`Registry`] of its own, and serves
//! `hasp:lock@0.1.0` (`old`) with the same registries.

use crate::bindings::types as wit;
use crate::registry::{Exports, Registry};
use crate::runtime::instance::{Answer, Call, Params, GUEST_DIR};
use crate::runtime::outcome::Outcome;
use crate::runtime::State;
use v0_2::hasp::lock::registry::{Host, HostRegistry};
use wasmtime::component::{HasSelf, Linker, Resource, ResourceAny};

/// World `plugin`: what a plugin imports.
mod v0_2 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "wit",
        imports: { default: trappable },
        with: {
            "hasp:lock/types": crate::bindings::types,
            "hasp:lock/registry.registry": super::PluginRegistry,
        },
    });
}

/// World `plugin` of `hasp:lock@0.1.0` (`wit/v0.1.0/`): what a plugin built
/// before leases imports.
mod v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "wit/v0.1.0",
        imports: { default: trappable },
        with: {
            "hasp:lock/registry.registry": super::PluginRegistry,
        },
    });

    pub(crate) use self::hasp::lock::{registry, types};
}

/// Adds the `hasp:lock/registry` a plugin imports, 0.2 and 0.1, to the
/// runtime's linker (which has `hasp:lock/types` 0.2 already).
pub(super) fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    v0_2::hasp::lock::registry::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    v0_1::types::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    v0_1::registry::add_to_linker::<State, HasSelf<State>>(linker, |s| s)
}

/// A registry a plugin opened: a guest instance of its own on the lock
/// directory, in its own store.
#[derive(Debug)]
#[allow(unreachable_pub)] // bindgen re-exports it
pub struct PluginRegistry {
    registry: Registry,
}

impl Host for State {}

impl State {
    /// Runs `call` on the registry `this`, with the guest's answer as it is.
    fn answer<P: Params, T: Answer>(
        &mut self,
        this: &Resource<PluginRegistry>,
        call: impl FnOnce(&Exports, ResourceAny) -> Call<P, T>,
    ) -> Outcome<T> {
        self.table.get_mut(this)?.registry.answer(call)
    }
}

impl HostRegistry for State {
    fn open(
        &mut self,
        dir: String,
    ) -> wasmtime::Result<Result<Resource<PluginRegistry>, wit::Error>> {
        let refused = |message: String| {
            Ok(Err(wit::Error {
                code: wit::ErrorCode::Storage(dir.clone()),
                message,
            }))
        };
        let Some((runtime, locks)) = &self.registries else {
            return refused(format!("cannot open {dir}: this host serves no registry"));
        };
        if dir.trim_end_matches('/') != GUEST_DIR {
            return refused(format!(
                "cannot open {dir}: no such preopened directory (plugins get {GUEST_DIR})"
            ));
        }
        match Registry::open_with(runtime, locks) {
            Ok(registry) => Ok(Ok(self.table.push(PluginRegistry { registry })?)),
            Err(err) => refused(err.to_string()),
        }
    }

    fn lock(
        &mut self,
        this: Resource<PluginRegistry>,
        resource: String,
        options: wit::LockOptions,
    ) -> wasmtime::Result<Result<wit::Grant, wit::Error>> {
        self.answer(&this, |r, h| (r.lock, (h, &*resource, &options)))
    }

    fn unlock(
        &mut self,
        this: Resource<PluginRegistry>,
        resource: String,
        key: wit::UnlockKey,
    ) -> wasmtime::Result<Result<wit::Holder, wit::Error>> {
        self.answer(&this, |r, h| (r.unlock, (h, &*resource, &key)))
    }

    fn renew(
        &mut self,
        this: Resource<PluginRegistry>,
        resource: String,
        key: wit::UnlockKey,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<wit::Holder, wit::Error>> {
        self.answer(&this, |r, h| (r.renew, (h, &*resource, &key, ttl_ms)))
    }

    fn force_unlock(
        &mut self,
        this: Resource<PluginRegistry>,
        resource: String,
    ) -> wasmtime::Result<Result<wit::Holder, wit::Error>> {
        self.answer(&this, |r, h| (r.force_unlock, (h, &*resource)))
    }

    fn status(
        &mut self,
        this: Resource<PluginRegistry>,
        resource: String,
    ) -> wasmtime::Result<Result<Option<wit::Holder>, wit::Error>> {
        self.answer(&this, |r, h| (r.status, (h, &*resource)))
    }

    fn list(
        &mut self,
        this: Resource<PluginRegistry>,
        prefix: String,
    ) -> wasmtime::Result<Result<Vec<wit::Holder>, wit::Error>> {
        self.answer(&this, |r, h| (r.list, (h, &*prefix)))
    }

    fn drop(&mut self, this: Resource<PluginRegistry>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

/// `hasp:lock@0.1.0`, for plugins built before leases: the same registries,
/// with the 0.1 types. A 0.1 plugin asks for no lease, so it meets one only
/// on a lock somebody else took; `lease-expired`, which 0.1 lacks, reaches
/// it as `not-locked` with the guest's message.
mod old {
    use super::{v0_1, wit, PluginRegistry, Resource, State};
    use v0_1::registry::{Host, HostRegistry};
    use v0_1::types as old;

    impl Host for State {}
    impl old::Host for State {}

    impl HostRegistry for State {
        fn open(
            &mut self,
            dir: String,
        ) -> wasmtime::Result<Result<Resource<PluginRegistry>, old::Error>> {
            Ok(super::HostRegistry::open(self, dir)?.map_err(error))
        }

        fn lock(
            &mut self,
            this: Resource<PluginRegistry>,
            resource: String,
            options: old::LockOptions,
        ) -> wasmtime::Result<Result<old::Grant, old::Error>> {
            let options = wit::LockOptions {
                client: options.client,
                lock_parents: options.lock_parents,
                lock_children: options.lock_children,
                ttl_ms: None,
                request_id: None,
            };
            let answer = super::HostRegistry::lock(self, this, resource, options)?;
            Ok(answer
                .map(|g| old::Grant {
                    holder: holder(g.holder),
                    token: g.token,
                })
                .map_err(error))
        }

        fn unlock(
            &mut self,
            this: Resource<PluginRegistry>,
            resource: String,
            key: old::UnlockKey,
        ) -> wasmtime::Result<Result<old::Holder, old::Error>> {
            let key = match key {
                old::UnlockKey::Client(c) => wit::UnlockKey::Client(c),
                old::UnlockKey::Token(t) => wit::UnlockKey::Token(t),
            };
            let answer = super::HostRegistry::unlock(self, this, resource, key)?;
            Ok(answer.map(holder).map_err(error))
        }

        fn status(
            &mut self,
            this: Resource<PluginRegistry>,
            resource: String,
        ) -> wasmtime::Result<Result<Option<old::Holder>, old::Error>> {
            let answer = super::HostRegistry::status(self, this, resource)?;
            Ok(answer.map(|h| h.map(holder)).map_err(error))
        }

        fn list(
            &mut self,
            this: Resource<PluginRegistry>,
            prefix: String,
        ) -> wasmtime::Result<Result<Vec<old::Holder>, old::Error>> {
            let answer = super::HostRegistry::list(self, this, prefix)?;
            Ok(answer
                .map(|all| all.into_iter().map(holder).collect())
                .map_err(error))
        }

        fn drop(&mut self, this: Resource<PluginRegistry>) -> wasmtime::Result<()> {
            super::HostRegistry::drop(self, this)
        }
    }

    fn holder(h: wit::Holder) -> old::Holder {
        old::Holder {
            resource: h.resource,
            client: h.client,
            fencing: h.fencing,
            since_ms: h.since_ms,
            lock_parents: h.lock_parents,
            lock_children: h.lock_children,
        }
    }

    fn error(e: wit::Error) -> old::Error {
        use old::ErrorCode as Old;
        use wit::ErrorCode as New;
        let code = match e.code {
            New::AlreadyLocked(h) => Old::AlreadyLocked(h),
            New::NotOwner(h) => Old::NotOwner(h),
            New::NotLocked | New::LeaseExpired => Old::NotLocked,
            New::InvalidInput => Old::InvalidInput,
            New::CorruptRecord(p) => Old::CorruptRecord(p),
            New::Storage(p) => Old::Storage(p),
            New::Busy => Old::Busy,
            New::WouldBlock(h) => Old::WouldBlock(h),
        };
        old::Error {
            code,
            message: e.message,
        }
    }
}
