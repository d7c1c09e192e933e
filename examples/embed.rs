//! Embedding the hasp guest component in your own host, with nothing from
//! the `hasp` crate: wasmtime's `bindgen!` over `wit/hasp-lock.wit`, WASI
//! from `wasmtime-wasi`, one preopened directory. The lock records it writes
//! are the same ones the `hasp` CLI, the `hasp` library and any other host of
//! the component read and write; they all share one lock directory safely.
//!
//! Run it on the component the `hasp` binary ships (or any build of it):
//!
//! ```sh
//! mkdir -p locks
//! cargo run --release --example embed -- "$(hasp component path)" ./locks deploy
//! ```
//!
//! Usage: `embed GUEST_WASM LOCK_DIR [RESOURCE]` (RESOURCE defaults to
//! `deploy`). It locks RESOURCE as client `embed`, prints the grant, shows
//! that client `embed-2` is refused, then unlocks and exits 0. If RESOURCE is
//! already held (say by `hasp lock deploy --client cli`), it prints the
//! guest's refusal on stderr and exits 1.

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::error::{bail, Context};
use wasmtime::{Engine, Result, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

// Host bindings for world `guest` (it exports `hasp:lock/registry`). This
// generates `Guest` with a typed accessor per exported function, and Rust
// types for the WIT records and variants in `hasp::lock::types`.
wasmtime::component::bindgen!({
    world: "guest",
    path: "../wit",
});

// `self::`: the generated module, not the `hasp` library crate (unused here).
use self::hasp::lock::types::{LockOptions, UnlockKey};

/// Where the guest sees the lock directory: its only preopen.
const GUEST_DIR: &str = "/locks";

/// Per-instance host state: just what WASI needs.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn options(client: &str) -> LockOptions {
    LockOptions {
        client: Some(client.to_string()),
        lock_parents: true,
        lock_children: true,
        ttl_ms: None,
        request_id: None,
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (wasm, dir, resource) = match args.as_slice() {
        [wasm, dir] => (wasm, dir, "deploy"),
        [wasm, dir, resource] => (wasm, dir, resource.as_str()),
        _ => bail!("usage: embed GUEST_WASM LOCK_DIR [RESOURCE]"),
    };

    // 1. Engine and component (the component model is on by default).
    let engine = Engine::default();
    let component = Component::from_file(&engine, wasm).with_context(|| format!("load {wasm}"))?;

    // 2. Linker: the guest imports only WASI 0.2. Extra exports it may have
    //    (e.g. `wasi:cli/run`) are simply not used by `Guest`.
    let mut linker = Linker::<State>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;

    // 3. A WASI context whose only capability is the lock directory,
    //    read-write, seen by the guest as `/locks`. No env, args or stdio.
    let wasi = WasiCtxBuilder::new()
        .preopened_dir(dir, GUEST_DIR, FsPerms::ReadWrite)
        .with_context(|| format!("preopen {dir}"))?
        .build();
    let mut store = Store::new(
        &engine,
        State {
            wasi,
            table: ResourceTable::new(),
        },
    );

    // 4. Instantiate, and open the registry kept in the preopen. Each call
    //    returns wasmtime::Result (a trap) around the WIT `result` (a refusal
    //    or failure: `error.code` to match, `error.message` to show).
    let guest = Guest::instantiate(&mut store, &component, &linker)?;
    let registry = guest.hasp_lock_registry().registry();
    let handle = match registry.call_open(&mut store, GUEST_DIR)? {
        Ok(handle) => handle,
        Err(err) => bail!("{}", err.message),
    };

    // 5. Lock as client `embed`. A refusal is the guest's own message, e.g.
    //    "Resource already locked by 'cli'": show it and exit 1, as `hasp` does.
    let grant = match registry.call_lock(&mut store, handle, resource, &options("embed"))? {
        Ok(grant) => grant,
        Err(err) => {
            eprintln!("{}", err.message);
            std::process::exit(1);
        }
    };
    let held = &grant.holder;
    println!(
        "granted {} to '{}' with fencing token {}",
        held.resource,
        held.client.as_deref().unwrap_or("?"),
        held.fencing
    );

    // 6. Another client is refused while we hold it; `code` carries the holder.
    match registry.call_lock(&mut store, handle, resource, &options("embed-2"))? {
        Ok(_) => bail!("{resource} was granted twice"),
        Err(err) => println!("refused 'embed-2': {}", err.message),
    }

    // 7. Release it with our client id (the grant's token would do as well),
    //    then drop the registry resource the guest handed us.
    let key = UnlockKey::Client("embed".to_string());
    match registry.call_unlock(&mut store, handle, resource, &key)? {
        Ok(released) => println!("released {}", released.resource),
        Err(err) => bail!("{}", err.message),
    }
    handle.resource_drop(&mut store)?;
    Ok(())
}
