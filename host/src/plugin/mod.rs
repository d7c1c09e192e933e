//! Plugins: a user's component that imports `hasp:lock/registry`.
//!
//! [`run`] runs a plugin that is a command (`wasi:cli/run`) here and serves
//! its `hasp:lock/registry` import itself: each registry the plugin opens
//! is a guest instance of its own, in its own store, with the lock
//! directory preopened. The plugin gets no preopen at all (and no
//! environment or network), so it reaches the lock directory only through
//! the guest's rules. It runs under the runtime's [`Limits`](crate::Limits):
//! a time limit on the run, and one memory cap on all the linear memories
//! of its store together (the plugin's own, not its registries', which
//! have stores of their own).
//!
//! [`compose`] instead plugs the guest into the plugin's imports (wac), one
//! component that runs wherever components run (`wasmtime run --dir
//! ./locks::/locks`). There plugin and guest share one set of WASI imports,
//! so the plugin can reach the preopen too: it is trusted with it.

mod registry;

use crate::error::Error;
use crate::runtime::instance::Flavour;
use crate::runtime::{Runtime, GUEST_WASM};
use std::path::Path;
use wac_graph::types::{ItemKind, Package};
use wac_graph::{plug, CompositionGraph, EncodeOptions};

/// The `hasp:lock` version this host provides to plugins.
const PROVIDED: &str = "0.2.0";
/// The versions a plugin run here may import: [`PROVIDED`], and 0.1, which
/// the host serves on the same guest. A composed plugin gets the guest's
/// own exports, so only [`PROVIDED`].
const SERVED: [&str; 2] = [PROVIDED, "0.1.0"];
/// The interfaces a plugin may import from hasp.
const PLUGGABLE: [&str; 2] = ["hasp:lock/registry", "hasp:lock/types"];

/// A failure that is the plugin's, named after it.
fn plugin_error(plugin: &str, message: impl Into<String>) -> Error {
    Error::Plugin {
        plugin: plugin.to_string(),
        message: message.into(),
    }
}

/// Checks that `bytes` is a component whose imports hasp can satisfy, and
/// plugs the hasp guest into its `hasp:lock` imports. Returns the composed
/// component, or the plugin itself when it imports nothing from hasp.
pub fn compose(plugin: &str, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let mut graph = CompositionGraph::new();
    let (socket, wants_hasp) = check(plugin, bytes, &mut graph, &[PROVIDED])?;
    if !wants_hasp {
        return Ok(bytes.to_vec());
    }
    let guest = Package::from_bytes("hasp:guest", None, GUEST_WASM.to_vec(), graph.types_mut())
        .map_err(|e| Error::runtime("the hasp guest", wasmtime::Error::from_boxed(e.into())))?;
    let guest = graph
        .register_package(guest)
        .map_err(|e| Error::runtime("the hasp guest", wasmtime::Error::from_boxed(e.into())))?;
    plug(&mut graph, vec![guest], socket).map_err(|e| {
        plugin_error(
            plugin,
            format!("its hasp:lock imports do not match what hasp@{PROVIDED} exports: {e:#}"),
        )
    })?;
    let composed = graph
        .encode(EncodeOptions::default())
        .map_err(|e| plugin_error(plugin, format!("cannot compose it with hasp: {e:#}")))?;
    // wac plugs what matches and leaves the rest: refuse a half-plugged one.
    let mut check = CompositionGraph::new();
    let result = Package::from_bytes("hasp:composed", None, composed.clone(), check.types_mut())
        .map_err(|e| plugin_error(plugin, format!("cannot compose it with hasp: {e:#}")))?;
    if let Some(left) = check.types()[result.ty()]
        .imports
        .keys()
        // `types` holds only types: it needs no instance to run.
        .find(|name| name.starts_with("hasp:") && !name.starts_with("hasp:lock/types@"))
    {
        return Err(plugin_error(
            plugin,
            format!("its import `{left}` does not match what hasp@{PROVIDED} exports"),
        ));
    }
    Ok(composed)
}

/// Checks that `bytes` is a component whose imports hasp can satisfy;
/// registers it in `graph`. True when it imports from `hasp:lock`.
fn check(
    plugin: &str,
    bytes: &[u8],
    graph: &mut CompositionGraph,
    versions: &[&str],
) -> Result<(wac_graph::PackageId, bool), Error> {
    check_header(plugin, bytes)?;
    let package = Package::from_bytes("hasp:plugin", None, bytes.to_vec(), graph.types_mut())
        .map_err(|e| plugin_error(plugin, format!("cannot read it as a component: {e:#}")))?;
    let package = graph
        .register_package(package)
        .map_err(|e| plugin_error(plugin, format!("{e:#}")))?;
    let mut wants_hasp = false;
    for (name, kind) in &graph.types()[graph[package].ty()].imports {
        wants_hasp |= check_import(plugin, name, kind, versions)?;
    }
    Ok((package, wants_hasp))
}

/// A core module, or not WebAssembly at all, gets a clear error.
fn check_header(plugin: &str, bytes: &[u8]) -> Result<(), Error> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(plugin_error(
            plugin,
            "it is a core WebAssembly module, not a component (build it for wasm32-wasip2, \
             or make it a component with `wasm-tools component new`)",
        )),
        _ => Err(plugin_error(plugin, "it is not a WebAssembly component")),
    }
}

/// Whether an import is one hasp provides; true for a `hasp:lock` one.
fn check_import(
    plugin: &str,
    name: &str,
    kind: &ItemKind,
    versions: &[&str],
) -> Result<bool, Error> {
    if name.starts_with("wasi:") {
        return Ok(false);
    }
    let (interface, version) = match name.split_once('@') {
        Some((interface, version)) => (interface, Some(version)),
        None => (name, None),
    };
    if !interface.starts_with("hasp:lock/") {
        return Err(plugin_error(
            plugin,
            format!(
                "it imports `{name}`, which hasp does not provide (plugins get WASI 0.2 and \
                 hasp:lock/registry@{PROVIDED})"
            ),
        ));
    }
    if !PLUGGABLE.contains(&interface) {
        return Err(plugin_error(
            plugin,
            format!("it imports `{name}`; plugins get only hasp:lock/registry@{PROVIDED}"),
        ));
    }
    let compatible = version.is_some_and(|v| {
        !v.contains('-')
            && versions
                .iter()
                .any(|ours| v.split('.').take(2).eq(ours.split('.').take(2)))
    });
    if !compatible || !matches!(kind, ItemKind::Instance(_)) {
        return Err(plugin_error(
            plugin,
            format!(
                "it was built against {} but this hasp provides hasp:lock@{PROVIDED}",
                match version {
                    Some(v) => format!("hasp:lock@{v} (it imports `{name}`)"),
                    None => format!("an unversioned `{name}`"),
                }
            ),
        ));
    }
    Ok(true)
}

/// Runs the command plugin `bytes` (named `plugin` in messages) with `args`,
/// the lock directory `dir` preopened as `/locks`, stdio inherited. Returns
/// its exit code.
pub fn run(
    runtime: &Runtime,
    plugin: &str,
    bytes: &[u8],
    dir: &Path,
    args: &[String],
) -> Result<i32, Error> {
    check_header(plugin, bytes)?;
    // Checked and compiled once per plugin; then from the cache.
    let component = runtime.load_made("plugin-served", bytes, || {
        check(plugin, bytes, &mut CompositionGraph::new(), &SERVED)?;
        Ok(bytes.to_vec())
    })?;
    let mut linker = runtime.linker(Flavour::Sync)?;
    registry::add_to_linker(&mut linker).map_err(Error::Runtime)?;
    // No preopen: the lock directory is the registries' alone.
    let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
    wasi.allow_blocking_current_thread(true)
        .inherit_stdio()
        .arg(plugin)
        .args(args);
    // A plugin may sleep or wait on its input: wasmtime-wasi then waits on
    // Tokio's timers and I/O, which need a runtime with threads that drive
    // them (the registry's thread-less one would wait for ever).
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.into()))?;
    let _tokio = tokio.enter();
    let mut store = runtime.new_store(wasi.build(), Default::default());
    store.data_mut().registries = Some((runtime.clone(), dir.to_path_buf()));
    let command =
        wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, &component, &linker)
            .map_err(|e| {
                let why = format!("{e:#}");
                plugin_error(
                    plugin,
                    if why.contains("wasi:cli/run") {
                        "it is not a command: it exports no `wasi:cli/run` (with the wasip2 crate: \
                 `wasip2::cli::command::export!`)"
                            .to_string()
                    } else {
                        format!("cannot start it: {why}")
                    },
                )
            })?;
    match command.wasi_cli_run().call_run(&mut store) {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(err) => match err.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(plugin_error(plugin, stopped(&err, runtime.limits()))),
        },
    }
}

/// Why a plugin was stopped, in one line (no wasm backtrace).
fn stopped(err: &wasmtime::Error, limits: &crate::Limits) -> String {
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return format!("it trapped ({trap})");
    }
    let cause = err.root_cause().to_string();
    if cause.contains("time limit") {
        format!(
            "it ran past its time limit ({} s) and was stopped",
            limits.call_timeout.as_secs_f64()
        )
    } else if cause.contains("growing memory") || cause.contains("memory") {
        format!(
            "it tried to grow its memory past the limit ({} MiB) and was stopped",
            limits.memory >> 20
        )
    } else {
        format!("it stopped: {cause}")
    }
}
