//! Host bindings of the `hasp:lock` worlds the host instantiates, and the
//! host types their resources map to. Nothing here names another module of
//! the crate: the runtime, the capabilities and the API build on it.
//! (`plugin` has the bindings of what plugins import, beside their host
//! implementation.)

use std::fs::File;
use std::sync::Arc;

/// World `guest`: the registry component. Its exports are called through
/// their typed functions (`func_lock`, ...), synchronously or on a fiber
/// (see `runtime::instance`), so one set of bindings serves both.
pub(crate) mod registry {
    wasmtime::component::bindgen!({
        world: "guest",
        path: "wit",
    });
}

// `pub` where bindgen's generated `pub use` re-exports a type: the module
// itself is the crate's own.
#[allow(unreachable_pub)]
pub use registry::hasp::lock::types;

/// World `process`: the process-lock component, which exports
/// `process-lock` and imports `file-lock` from the host.
pub(crate) mod process {
    wasmtime::component::bindgen!({
        world: "process",
        path: "wit",
        imports: { default: trappable },
        with: {
            "hasp:lock/file-lock.file": super::LockHandle,
            "hasp:lock/types": super::types,
        },
    });

    pub(crate) use self::exports::hasp::lock::process_lock;
    pub(crate) use self::hasp::lock::file_lock;
}

/// World `on-store`: the registry component built on `hasp:lock/store`,
/// which the host provides (on etcd, `crate::store`). Its exports are the
/// registry's, called through [`registry`]'s bindings; only the import is
/// bound here. The host functions are asynchronous: a call on this
/// component always runs on a fiber, and waits for etcd without holding a
/// thread.
pub(crate) mod on_store {
    wasmtime::component::bindgen!({
        world: "on-store",
        path: "wit",
        imports: { default: async | trappable },
        with: {
            "hasp:lock/types": super::types,
        },
    });

    pub(crate) use self::hasp::lock::store;
}

/// The host side of a `file-lock.file`: the open file whose lock it is.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct LockHandle {
    pub(crate) file: Arc<File>,
}

/// The directories an instance may lock files in (`file-lock`), by the
/// name it knows them.
#[derive(Debug, Default)]
pub(crate) struct LockDirs {
    dirs: Vec<(String, cap_std::fs::Dir)>,
}

impl LockDirs {
    /// Grants `dir` under the guest-visible `name`.
    pub(crate) fn grant(&mut self, name: &str, dir: cap_std::fs::Dir) {
        self.dirs.push((name.to_string(), dir));
    }

    /// The directory granted as `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Option<&cap_std::fs::Dir> {
        let name = name.trim_end_matches('/');
        self.dirs
            .iter()
            .find(|(n, _)| n.trim_end_matches('/') == name)
            .map(|(_, d)| d)
    }
}
