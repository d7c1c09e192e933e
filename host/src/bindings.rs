//! Host bindings of the `hasp:lock` WIT package, one module per world.

/// World `guest`: the registry component.
pub mod registry {
    wasmtime::component::bindgen!({
        world: "guest",
        path: "../wit",
    });

    pub use self::hasp::lock::types;
}

/// World `guest` again, with exports called asynchronously: `hasp serve`
/// runs guest calls on its network threads, each on a fiber of its own.
pub mod registry_async {
    wasmtime::component::bindgen!({
        world: "guest",
        path: "../wit",
        exports: { default: async },
        with: {
            "hasp:lock/types": crate::bindings::registry::types,
        },
    });
}

/// World `process`: the lock-file component, which imports `file-lock`.
pub mod process {
    wasmtime::component::bindgen!({
        world: "process",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "hasp:lock/file-lock.file": crate::file_lock::LockHandle,
            "hasp:lock/types": crate::bindings::registry::types,
        },
    });

    pub use self::hasp::lock::file_lock;
}

/// World `plugin`: what a plugin imports. The host serves it (`plugin.rs`),
/// each registry backed by a guest instance of its own.
pub mod plugin {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "hasp:lock/types": crate::bindings::registry::types,
            "hasp:lock/registry.registry": crate::plugin::Served,
        },
    });

    pub use self::hasp::lock::registry;
}

/// World `plugin` of `hasp:lock@0.1.0` (`wit/v0.1.0/`): what a plugin built
/// before leases imports. The host keeps serving it, on the same guest.
pub mod plugin_v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/v0.1.0",
        imports: { default: trappable },
        with: {
            "hasp:lock/registry.registry": crate::plugin::Served,
        },
    });

    pub use self::hasp::lock::{registry, types};
}
