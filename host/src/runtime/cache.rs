//! The compiled components, cached on disk: compiled once per machine, on
//! first use; later processes only map the artifact.

use super::{GUEST_HASH, GUEST_WASM};
use crate::error::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where precompiled components are cached: `$HASP_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/hasp`, else `$HOME/.cache/hasp`.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |key| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("HASP_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("hasp")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("hasp")))
}

/// The guest component as a `.wasm` file, for other runtimes (`wasmtime run`)
/// and for composition: written once into the cache directory, under a name
/// that changes with its content.
pub fn component_file() -> Result<PathBuf, Error> {
    let dir = cache_dir().ok_or_else(|| {
        Error::Runtime(wasmtime::Error::msg(
            "no cache directory: set HASP_CACHE_DIR, XDG_CACHE_HOME or HOME",
        ))
    })?;
    let path = dir.join(format!(
        "hasp-{}-{GUEST_HASH}.wasm",
        env!("CARGO_PKG_VERSION")
    ));
    let written = std::fs::metadata(&path).is_ok_and(|m| m.len() == GUEST_WASM.len() as u64);
    if !written {
        store(&path, GUEST_WASM);
        if !path.is_file() {
            return Err(Error::Runtime(wasmtime::Error::msg(format!(
                "cannot write {}",
                path.display()
            ))));
        }
    }
    Ok(path)
}

/// Loads the compiled guest from the cache, or compiles and caches it.
pub(super) fn load_component(
    engine: &Engine,
    wasm: &[u8],
    name: &str,
    hash: &str,
) -> Result<Component, Error> {
    load_or_make(engine, name, hash, || Ok(wasm.to_vec()))
}

/// Loads the compiled component `name`-`hash` from the cache, or makes its
/// bytes with `make`, compiles them and caches the result.
pub(super) fn load_or_make(
    engine: &Engine,
    name: &str,
    hash: &str,
    make: impl FnOnce() -> Result<Vec<u8>, Error>,
) -> Result<Component, Error> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let name = format!("{name}-{hash}-{:016x}.cwasm", hasher.finish());
    let cached = cache_dir().map(|dir| dir.join(name));
    if let Some(path) = &cached {
        if path.is_file() {
            // SAFETY: the file was written by `store` below from
            // `Engine::precompile_component`, atomically, in the user's own
            // cache directory; wasmtime checks that it matches this engine.
            // Whoever can replace it can already run code as this user.
            if let Ok(component) = unsafe { Component::deserialize_file(engine, path) } {
                return Ok(component);
            }
        }
    }
    let compiled = engine
        .precompile_component(&make()?)
        .map_err(Error::Runtime)?;
    if let Some(path) = &cached {
        store(path, &compiled); // a cache that cannot be written only costs time
    }
    // SAFETY: `compiled` was produced by this very engine a moment ago.
    unsafe { Component::deserialize(engine, &compiled) }.map_err(Error::Runtime)
}

fn store(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Unique per process, thread and call: two writers never share a file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}-{}",
        std::process::id(),
        std::thread::current().id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}
