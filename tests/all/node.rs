//! The registry component in Node (`examples/node/`): jco transpiles the
//! component `hasp component path` writes, preview2-shim preopens the lock
//! directory, and gocept.lockd's session runs on it. Locks taken there are
//! refused by `hasp lock` and the other way round: one on-disk format.
//!
//! Needs `node` (20 or later) and `npm` on `$PATH`, and the npm registry the
//! first time: the example's pinned packages (`package-lock.json`) are
//! installed with `npm ci` into `<target>/tmp/node-example`, once per change
//! of the lock file. Without node the test says so and passes, except in CI
//! (`CI` set), where it fails.

use crate::embed::component;
use crate::support::{Locks, Run};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The example's files, copied beside its `node_modules`.
const FILES: [&str; 4] = [
    "package.json",
    "package-lock.json",
    "lockd.mjs",
    "session.mjs",
];

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Runs `command`, asserts it succeeded, and returns what it printed.
#[track_caller]
fn succeed(command: &mut Command) -> Run {
    let run = Run::from(command.output().expect("start the command"));
    assert_eq!(run.code, 0, "{command:?}: {run:?}");
    run
}

/// The example, installed and transpiled in `<target>/tmp/node-example`
/// (once per test process); `None` when node or npm is missing outside CI.
fn example() -> Option<PathBuf> {
    static EXAMPLE: OnceLock<Option<PathBuf>> = OnceLock::new();
    let example = EXAMPLE.get_or_init(install).clone();
    if example.is_none() {
        eprintln!("skipped: node or npm is not on $PATH");
    }
    example
}

fn install() -> Option<PathBuf> {
    if !(runs("node") && runs("npm")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "node and npm are needed for the Node example in CI"
        );
        return None;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-example");
    fs::create_dir_all(&dir).expect("make the example's directory");
    for file in FILES {
        fs::copy(source.join(file), dir.join(file)).expect("copy the example");
    }
    // `npm ci` only when the pinned packages changed (or were never installed).
    let lock = fs::read(dir.join("package-lock.json")).expect("read package-lock.json");
    let stamp = dir.join("node_modules").join(".hasp-installed");
    if fs::read(&stamp).ok() != Some(lock.clone()) {
        succeed(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
        );
        fs::write(&stamp, &lock).expect("note the installed packages");
    }
    // The example's own script, with the component the test binary's hasp
    // writes (HASP_WASM instead of `hasp component path` on $PATH).
    let _ = fs::remove_dir_all(dir.join("hasp"));
    succeed(
        Command::new("npm")
            .args(["run", "--silent", "transpile"])
            .env("HASP_WASM", component())
            .current_dir(&dir),
    );
    Some(dir)
}

/// `node lockd.mjs LOCKS ARGS...` in the example's directory.
fn lockd(example: &Path, locks: &Locks, args: &[&str]) -> Run {
    let out = Command::new("node")
        .arg("lockd.mjs")
        .arg(locks.path())
        .args(args)
        .current_dir(example)
        .output()
        .expect("run node lockd.mjs");
    Run::from(out)
}

#[test]
fn the_component_runs_in_node_and_shares_the_lock_directory_with_the_cli() {
    let Some(example) = example() else { return };

    // gocept.lockd's README session, as the example runs it.
    let locks = Locks::new();
    let run = succeed(
        Command::new("node")
            .arg("session.mjs")
            .arg(locks.path())
            .current_dir(&example),
    );
    assert_eq!(
        (run.stdout.as_str(), run.stderr.as_str()),
        ("gocept.lockd session in Node: 12 passed, 0 failed\n", ""),
    );
    // It left the directory as it found it: no lock held.
    assert_eq!(locks.ok(&["status", "--json"]), "[]\n");

    // A lock taken in Node is refused by `hasp lock`...
    let locks = Locks::new();
    let run = lockd(&example, &locks, &["lock", "from-node", "node-client"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "", "")
    );
    locks
        .run(&["lock", "from-node", "--client", "cli-client"])
        .assert_refused(1, "Resource already locked by 'node-client'");
    // ...and one taken by `hasp lock` is refused in Node, with the same text.
    locks.ok(&["lock", "from-cli", "--client", "cli-client"]);
    lockd(&example, &locks, &["lock", "from-cli", "node-client"])
        .assert_refused(1, "Resource already locked by 'cli-client'");
    lockd(&example, &locks, &["unlock", "from-cli", "node-client"]).assert_refused(
        1,
        "Resource locked by 'cli-client' cannot be unlocked by 'node-client'",
    );
    // Each sees the other's holder, and releases by the other's client id.
    let run = lockd(&example, &locks, &["status", "from-cli"]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "cli-client\n"),
        "{run:?}"
    );
    let status = locks.json(&["status", "from-node", "--json"]);
    assert_eq!(status["client"], "node-client", "{status}");
    assert_eq!(status["fencing"], 1, "{status}");
    locks.ok(&["unlock", "from-node", "--client", "node-client"]);
    let run = lockd(&example, &locks, &["unlock", "from-cli", "cli-client"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    // The fencing sequence goes on across the two hosts.
    lockd(&example, &locks, &["lock", "from-node", "node-client"]);
    let status = locks.json(&["status", "from-node", "--json"]);
    assert_eq!(status["fencing"], 2, "{status}");
    assert_eq!(locks.ok(&["status", "from-cli", "--json"]), "null\n");

    // Bad input is refused in Node as by the CLI: exit 2, one line.
    let run = lockd(&example, &locks, &["lock", "../escape", "x"]);
    let cli = locks.run(&["lock", "../escape", "--client", "x"]);
    assert_eq!((run.code, &run.stderr), (2, &cli.stderr), "{run:?} {cli:?}");
    assert_eq!(cli.code, 2, "{cli:?}");
}

#[test]
fn node_directories_removed_while_node_holds_them_are_made_again() {
    let Some(example) = example() else { return };
    let locks = Locks::new();
    // One process: its guest holds `nodes/gone/x` open between the calls.
    // preview2-shim keeps that as a path, which then cannot be listed at
    // all (wasmtime lists it as empty); the guest takes both as "removed".
    let script = "
        import { rmSync } from 'node:fs';
        import { join } from 'node:path';
        import { Lockd } from './lockd.mjs';
        const [dir] = process.argv.slice(1);
        const lockd = new Lockd(dir);
        lockd.lock('gone/x', 'a');
        lockd.unlock('gone/x', 'a');
        rmSync(join(dir, 'nodes', 'gone'), { recursive: true });
        lockd.lock('gone/x', 'b');
    ";
    succeed(
        Command::new("node")
            .args(["--input-type=module", "-e", script])
            .arg(locks.path())
            .current_dir(&example),
    );
    // The grant is in the directory everybody else reads.
    locks
        .run(&["lock", "gone/x", "--client", "cli"])
        .assert_refused(1, "Resource already locked by 'b'");
    locks
        .run(&["lock", "gone", "--client", "cli"])
        .assert_refused(1, "Resource already locked by 'b'");
}
