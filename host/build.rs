//! Builds the guest component (`guest/`, target `wasm32-wasip2`) so that a
//! plain `cargo build` of the host needs no manual step, and embeds it.
//!
//! The guest gets its own target directory beside ours (`<target>/guest`): a
//! nested cargo on our own target directory would wait forever on its lock.
//!
//! In the repository the guest is built where it is, `../guest`. A packaged
//! crate (from crates.io, or the one `cargo package` verifies) has no
//! `../guest`: cargo packages no directory with a Cargo.toml of its own, so
//! the crate carries the guest in `bundle/guest` (in the repository, symlinks
//! to `guest/`) with its manifests named `Cargo.toml.in`, and `wit/`. This
//! script then puts the guest crate back together under OUT_DIR and builds
//! that. The example plugin (examples/plugin, for the tests) is built only in
//! the repository.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs, io};

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let (guest, plugin) = match checkout_root(&manifest_dir) {
        Some(root) => {
            let guest = root.join("guest");
            let plugin = root.join("examples").join("plugin");
            for crate_dir in [&guest, &plugin] {
                for watched in ["src", "Cargo.toml", "Cargo.lock"] {
                    println!(
                        "cargo:rerun-if-changed={}",
                        crate_dir.join(watched).display()
                    );
                }
            }
            // The guest's texts, a crate of the guest's own.
            for watched in ["src", "Cargo.toml"] {
                println!(
                    "cargo:rerun-if-changed={}",
                    guest.join("text").join(watched).display()
                );
            }
            println!("cargo:rerun-if-changed={}", root.join("wit").display());
            (guest, Some(plugin))
        }
        None => {
            for watched in ["bundle", "wit"] {
                println!(
                    "cargo:rerun-if-changed={}",
                    manifest_dir.join(watched).display()
                );
            }
            (unbundle(&manifest_dir, &out_dir.join("bundle")), None)
        }
    };

    let target_dir = guest_target_dir(&out_dir);
    ensure_wasm_target();

    // Three components from one crate: the registry, the same registry on
    // the host's store (feature `store`), and (feature `process`) the
    // lock-file rules that import the host's file-lock.
    for (features, artifact, hash_var) in [
        (None, "hasp_guest.wasm", "HASP_GUEST_HASH"),
        (Some("store"), "hasp_store.wasm", "HASP_STORE_HASH"),
        (Some("process"), "hasp_process.wasm", "HASP_PROCESS_HASH"),
    ] {
        let bytes = build_component(&guest, "hasp_guest", &target_dir, features);
        fs::write(out_dir.join(artifact), &bytes).expect("copy the component into OUT_DIR");
        println!("cargo:rustc-env={hash_var}={:016x}", fnv1a(&bytes));
    }

    // The example plugin (examples/plugin), for the tests and the README.
    if let Some(plugin) = plugin {
        let bytes = build_component(&plugin, "hasp_example_plugin", &target_dir, None);
        let path = out_dir.join("example_plugin.wasm");
        fs::write(&path, &bytes).expect("copy the example plugin into OUT_DIR");
        println!("cargo:rustc-env=HASP_EXAMPLE_PLUGIN={}", path.display());
    }
}

/// The repository's root when this is the repository's `host/` (beside
/// `guest/`), `None` in a packaged crate.
fn checkout_root(manifest_dir: &Path) -> Option<PathBuf> {
    let root = manifest_dir.parent()?;
    let is_host =
        fs::canonicalize(root.join("host")).ok()? == fs::canonicalize(manifest_dir).ok()?;
    (is_host && root.join("guest").join("Cargo.toml").is_file()).then(|| root.to_path_buf())
}

/// Puts the guest crate back together in `dest` from the packaged `bundle/`
/// and `wit/` (`dest/guest`, `dest/guest/text`, `dest/wit`, as in the
/// repository) and returns `dest/guest`. Files whose bytes are already there
/// are left alone, so that the guest's cargo sees nothing changed.
fn unbundle(manifest_dir: &Path, dest: &Path) -> PathBuf {
    let copied = copy_tree(
        &manifest_dir.join("bundle").join("guest"),
        &dest.join("guest"),
    )
    .and_then(|()| copy_tree(&manifest_dir.join("wit"), &dest.join("wit")));
    if let Err(e) = copied {
        panic!(
            "put the guest's sources together from {}: {e}",
            manifest_dir.join("bundle").display()
        );
    }
    dest.join("guest")
}

/// Copies the tree `from` into `to`, naming each `Cargo.toml.in` `Cargo.toml`.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let target = if name == "Cargo.toml.in" {
            to.join("Cargo.toml")
        } else {
            to.join(&name)
        };
        // Follows symlinks: in the repository, bundle/ is made of them.
        if fs::metadata(entry.path())?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            let bytes = fs::read(entry.path())?;
            if fs::read(&target).ok().as_deref() != Some(bytes.as_slice()) {
                fs::write(&target, bytes)?;
            }
        }
    }
    Ok(())
}

/// Builds the crate in `crate_dir` (library `name`) for `wasm32-wasip2` and
/// returns the component.
fn build_component(
    crate_dir: &Path,
    name: &str,
    target_dir: &Path,
    features: Option<&str>,
) -> Vec<u8> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--locked", "--target", WASM_TARGET])
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        // Flags and wrappers meant for the host build must not leak into the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_MAKEFLAGS");
    if let Some(features) = features {
        command.args(["--features", features]);
    }
    let status = command.status().expect("run cargo to build a component");
    assert!(status.success(), "building {name} failed");
    let built = target_dir
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{name}.wasm"));
    fs::read(&built).unwrap_or_else(|e| panic!("read {}: {e}", built.display()))
}

/// `<target>/guest`: the target root is the ancestor of OUT_DIR holding cargo's
/// `CACHEDIR.TAG`. Without one, a directory inside OUT_DIR does.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map_or_else(|| out_dir.join("guest-target"), |root| root.join("guest"))
}

/// Installs the wasm target through rustup when it is missing (rustup does not
/// install targets on its own).
fn ensure_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET) => {}
        Ok(_) => {
            let status = Command::new("rustup")
                .args(["target", "add", WASM_TARGET])
                .status()
                .expect("run rustup target add");
            assert!(status.success(), "rustup target add {WASM_TARGET} failed");
        }
        Err(_) => println!(
            "cargo:warning=rustup not found; assuming the {WASM_TARGET} target is installed"
        ),
    }
}

/// FNV-1a, 64 bits: names the precompiled-component cache entry.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
