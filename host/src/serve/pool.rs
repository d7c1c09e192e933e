//! A fixed set of guest instances on the served directory, called from the
//! network threads themselves: each call runs the guest on a fiber, so a
//! request never waits for another thread to pick it up. Instances work in
//! parallel; the on-disk protocol, not the pool, keeps conflicting grants
//! apart, exactly as it does between processes. Nothing is cached that
//! decides a grant: every call asks the disk.
//!
//! An instance is given back once a call has grown its memory past
//! [`KEEP_MEMORY`], so the daemon returns near its idle size after big
//! calls.
//!
//! A call about one resource always goes to the same instance (chosen by a
//! hash of the name), so the directories that guest keeps open and the
//! state it saw last are the ones it needs next. Other calls (a list, which
//! may read many thousands of states) go to an instance of their own, the
//! last, when there are two or more: no lock waits behind a list.

use crate::registry::{self, Exports};
use crate::runtime::instance::{Answer, Call, Flavour, Instance, Params};
use crate::store::{Etcd, Store, Watch};
use crate::{Error, Runtime};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::Mutex;
use wasmtime::component::ResourceAny;

/// An instance whose linear memory has grown past this is dropped after
/// the call that grew it, and a fresh one started when next needed. A
/// memory never shrinks, so one big call (a list of some ten thousand
/// locks) would otherwise stay resident for the daemon's life, in every
/// instance that ever made one. A fresh instance holds about 1 MiB, and
/// every call but a big list stays there.
const KEEP_MEMORY: usize = 4 << 20;

/// Guest instances of the served directory.
pub(super) struct Pool {
    instances: Vec<Mutex<Instance<Exports>>>,
}

impl Pool {
    /// Starts `size` instances, each with a registry open on `store`
    /// (on etcd, all share one connection).
    pub(super) async fn start(
        runtime: &Runtime,
        store: &Store,
        size: usize,
    ) -> Result<Pool, Error> {
        // One instance after another, on the directory or on one shared
        // etcd connection.
        let make: Box<dyn Fn() -> Instance<Exports> + Send + Sync> = match store {
            Store::Etcd(url) => {
                let etcd = Arc::new(Etcd::connect(url).await?);
                let runtime = runtime.clone();
                Box::new(move || Instance::on_store(&runtime, etcd.clone()))
            }
            Store::Dir(dir) => {
                let (runtime, dir) = (runtime.clone(), dir.clone());
                Box::new(move || Instance::new(&runtime, &dir, Flavour::Fibers))
            }
        };
        let mut instances = Vec::new();
        for _ in 0..size.max(1) {
            let instance = make();
            let mut instance = instance.keep_memory(KEEP_MEMORY);
            instance.open(registry::open).await?;
            instances.push(Mutex::new(instance));
        }
        Ok(Pool { instances })
    }

    /// Runs one call on the instance of `resource` (or the next in turn)
    /// under the runtime's limits. A trap, or a panic, drops the instance,
    /// and so does a call that grew its memory past [`KEEP_MEMORY`]; the
    /// next call on it starts a fresh one.
    pub(super) async fn call<P: Params, T: Answer>(
        &self,
        resource: Option<&str>,
        call: impl FnOnce(&Exports, ResourceAny) -> Call<P, T>,
    ) -> Result<T, Error> {
        self.call_watching(resource, call).await.0
    }

    /// [`Pool::call`], with what a waiter for a change to what the call
    /// read watches (on a store; nothing on a directory).
    pub(super) async fn call_watching<P: Params, T: Answer>(
        &self,
        resource: Option<&str>,
        call: impl FnOnce(&Exports, ResourceAny) -> Call<P, T>,
    ) -> (Result<T, Error>, Option<Watch>) {
        // The last instance is kept for calls about no one resource.
        let n = self.instances.len();
        let for_resources = if n >= 2 { n - 1 } else { n };
        let at = match resource {
            Some(name) => {
                let mut hasher = DefaultHasher::new();
                name.hash(&mut hasher);
                (hasher.finish() % for_resources as u64) as usize
            }
            None => n - 1,
        };
        let mut instance = self.instances[at].lock().await;
        let result = instance.call(registry::open, call).await;
        (result, instance.watch())
    }
}
