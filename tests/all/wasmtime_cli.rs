//! The same guest under the stock `wasmtime` CLI: the component is also a
//! command (`wasi:cli/run`), and what it does is indistinguishable from
//! `hasp` on the same directory.
//!
//! These tests run the real `wasmtime` CLI, version 48.0.8 (the wasmtime
//! crate's): the one on `$PATH` when its version matches, else one that the
//! first test installs into the target directory with `cargo install`
//! (minutes, once). `.ci/run` installs it up front.

use crate::support::{hasp_bin, Locks, Run};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const WASMTIME_VERSION: &str = "48.0.8";

/// The `wasmtime` CLI to run.
pub(crate) fn wasmtime() -> &'static Path {
    static WASMTIME: OnceLock<PathBuf> = OnceLock::new();
    WASMTIME.get_or_init(|| {
        let version = |bin: &Path| {
            Command::new(bin)
                .arg("--version")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let on_path = PathBuf::from("wasmtime");
        if version(&on_path).is_some_and(|v| v.starts_with(&format!("wasmtime {WASMTIME_VERSION}")))
        {
            return on_path;
        }
        // <target>/release/deps/all-<hash> → <target>/wasmtime-cli-<version>
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("the test binary lives in <target>/<profile>/deps");
        let root = target.join(format!("wasmtime-cli-{WASMTIME_VERSION}"));
        let bin = root.join("bin").join("wasmtime");
        if version(&bin).is_none() {
            eprintln!(
                "installing wasmtime-cli {WASMTIME_VERSION} into {}",
                root.display()
            );
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    "wasmtime-cli",
                    "--locked",
                    "--version",
                    WASMTIME_VERSION,
                ])
                .arg("--root")
                .arg(&root)
                .env_remove("CARGO_TARGET_DIR")
                .status()
                .expect("run cargo install");
            assert!(status.success(), "cargo install wasmtime-cli failed");
        }
        bin
    })
}

/// The guest component, as `hasp component path` gives it.
pub(crate) fn component() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let out = Command::new(hasp_bin())
            .args(["component", "path"])
            .output()
            .expect("run hasp component path");
        assert!(out.status.success(), "{out:?}");
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
    })
}

/// `wasmtime run --dir LOCKS::/locks hasp.wasm ARGS...`
pub(crate) fn wasm(locks: &Locks, args: &[&str]) -> Run {
    let mut preopen = locks.path().as_os_str().to_owned();
    preopen.push("::/locks");
    wasm_with(&[std::ffi::OsStr::new("--dir"), &preopen], args)
}

/// `wasmtime run RUN_ARGS... hasp.wasm ARGS...`
fn wasm_with(run_args: &[&std::ffi::OsStr], args: &[&str]) -> Run {
    let out = Command::new(wasmtime())
        .arg("run")
        .args(run_args)
        .arg(component())
        .args(args)
        .output()
        .expect("run wasmtime");
    Run::from(out)
}

#[track_caller]
fn assert_ok(run: &Run) -> &str {
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    &run.stdout
}

#[test]
fn the_gocept_session_under_stock_wasmtime_run() {
    let locks = Locks::new();
    assert_eq!(
        assert_ok(&wasm(&locks, &["lock", "resource1", "--client", "client1"])),
        ""
    );
    wasm(&locks, &["lock", "resource1", "--client", "client2"])
        .assert_refused(1, "Resource already locked by 'client1'");
    wasm(&locks, &["unlock", "resource1", "--client", "client2"]).assert_refused(
        1,
        "Resource locked by 'client1' cannot be unlocked by 'client2'",
    );
    assert_ok(&wasm(
        &locks,
        &["unlock", "resource1", "--client", "client1"],
    ));
    wasm(&locks, &["unlock", "resource1", "--client", "client1"])
        .assert_refused(1, "Resource not locked");
    // Options may come first, as with `hasp`.
    assert_ok(&wasm(&locks, &["lock", "--client", "client2", "resource1"]));
    assert_eq!(
        locks.json(&["status", "resource1", "--json"])["client"],
        "client2"
    );
}

#[test]
fn locks_taken_under_wasmtime_and_under_hasp_are_the_same_locks() {
    let locks = Locks::new();
    assert_ok(&wasm(&locks, &["lock", "from-wasmtime", "--client", "w"]));
    locks.ok(&["lock", "from-hasp", "--client", "h"]);
    locks
        .run(&["lock", "from-wasmtime", "--client", "h"])
        .assert_refused(1, "Resource already locked by 'w'");
    wasm(&locks, &["lock", "from-hasp", "--client", "w"])
        .assert_refused(1, "Resource already locked by 'h'");
    // Hierarchy too: a child of a resource held under hasp.
    wasm(&locks, &["lock", "from-hasp/child", "--client", "w"])
        .assert_refused(1, "Resource already locked by 'h'");

    // Both print the same status, table and JSON, byte for byte.
    assert_eq!(assert_ok(&wasm(&locks, &["status"])), locks.ok(&["status"]));
    for resource in ["from-hasp", "from-wasmtime", "free"] {
        assert_eq!(
            assert_ok(&wasm(&locks, &["status", resource, "--json"])),
            locks.ok(&["status", resource, "--json"]),
        );
        assert_eq!(
            assert_ok(&wasm(&locks, &["status", resource])),
            locks.ok(&["status", resource]),
        );
    }

    // A token printed by one unlocks under the other.
    let grant: serde_json::Value =
        serde_json::from_str(assert_ok(&wasm(&locks, &["lock", "tokened", "--json"])))
            .expect("grant JSON");
    assert_eq!(grant["client"], serde_json::Value::Null);
    let token = grant["token"].as_str().expect("token");
    locks.ok(&["unlock", "tokened", "--token", token]);
    assert_eq!(locks.ok(&["status", "tokened"]), "not locked\n");
    assert_ok(&wasm(&locks, &["unlock", "from-hasp", "--client", "h"]));
    assert_eq!(locks.ok(&["status", "from-hasp"]), "not locked\n");
}

#[test]
fn file_locks_say_they_need_the_hasp_host_and_change_nothing() {
    let locks = Locks::new();
    for args in [
        &["run", "deploy.lock", "--", "true"][..],
        &["who", "deploy.lock"],
    ] {
        let run = wasm(&locks, args);
        assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
        assert!(
            run.stderr.contains("hasp:lock/file-lock")
                && run.stderr.contains(&format!("hasp {}", args[0])),
            "{run:?}"
        );
    }
    assert_eq!(
        std::fs::read_dir(locks.path()).expect("lock dir").count(),
        0,
        "nothing was created"
    );
}

#[test]
fn bad_preopens_and_arguments_get_clear_errors() {
    let none = wasm_with(&[], &["status"]);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(none.stderr.contains("no lock directory"), "{none:?}");

    let locks = Locks::new();
    let wrong = wasm(&locks, &["--dir", "/elsewhere", "status"]);
    assert_eq!(wrong.code, 2, "{wrong:?}");
    assert!(wrong.stderr.contains("/elsewhere"), "{wrong:?}");

    for args in [
        &["lock"][..],
        &["frobnicate"],
        &["unlock", "x"],
        &["lock", "x", "--bogus"],
    ] {
        let run = wasm(&locks, args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("usage: hasp.wasm"), "{args:?}: {run:?}");
    }
    let traversal = wasm(&locks, &["lock", "../escape", "--client", "x"]);
    assert_eq!(traversal.code, 2, "{traversal:?}");
    assert!(
        traversal
            .stderr
            .contains("invalid resource name '../escape'"),
        "{traversal:?}"
    );
    assert_eq!(
        locks.ok(&["status", "--json"]).trim(),
        "[]",
        "nothing was locked"
    );
}

#[test]
fn component_path_writes_the_component_once_into_the_cache() {
    let cache = tempfile::tempdir().expect("cache dir");
    let path_of = || {
        let out = Command::new(hasp_bin())
            .args(["component", "path"])
            .env("HASP_CACHE_DIR", cache.path())
            .output()
            .expect("run hasp");
        assert!(out.status.success(), "{out:?}");
        PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim())
    };
    let first = path_of();
    assert!(first.starts_with(cache.path()), "{first:?}");
    let bytes = std::fs::read(&first).expect("component file");
    // A component, not a core module: magic, then version 0x0d, layer 1.
    assert_eq!(&bytes[..8], b"\0asm\x0d\0\x01\0");
    let modified = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let written = modified(&first);
    assert_eq!(path_of(), first);
    assert_eq!(std::fs::read(&first).expect("again"), bytes);
    assert_eq!(modified(&first), written, "the second call wrote it again");
}
