//! Plugins: a user's component that imports `hasp:lock/registry`, run by
//! `hasp plugin run` or composed with the guest by `hasp plugin compose`.
//! The plugin used is `examples/plugin` (a log rotator), built by the build
//! script; misbehaving plugins are written here as component text.

use crate::support::{Locks, Run};
use crate::wasmtime_cli::{component as guest_component, wasmtime};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The example plugin, as `host/build.rs` built it.
const ROTATOR: &str = env!("HASP_EXAMPLE_PLUGIN");

/// `hasp --dir LOCKS plugin run [OPTIONS...] PLUGIN -- ARGS...`
fn plugin_run(locks: &Locks, plugin: &Path, options: &[&str], args: &[&str]) -> Command {
    let mut cmd = locks.command(&["plugin", "run"]);
    cmd.args(options).arg(plugin).arg("--").args(args);
    cmd
}

fn rotate(locks: &Locks, log: &str, client: &str, keep: bool) -> Run {
    let mut args = vec![log, "--client", client];
    if keep {
        args.push("--keep");
    }
    let out = plugin_run(locks, Path::new(ROTATOR), &[], &args)
        .output()
        .expect("run hasp plugin run");
    Run::from(out)
}

#[test]
fn a_plugin_locks_through_the_same_registry_as_the_cli() {
    let locks = Locks::new();
    let first = rotate(&locks, "app.log", "worker-1", true);
    assert_eq!(
        (first.code, first.stdout.as_str(), first.stderr.as_str()),
        (0, "worker-1 rotates app.log (fencing token 1)\n", "")
    );
    // The lock it kept is an ordinary lock: the CLI sees and refuses it...
    assert_eq!(
        locks.json(&["status", "logs/app.log", "--json"])["client"],
        "worker-1"
    );
    locks
        .run(&["lock", "logs", "--client", "cli"])
        .assert_refused(1, "Resource already locked by 'worker-1'");
    // ...and another plugin instance is told who holds it.
    rotate(&locks, "app.log", "worker-2", false)
        .assert_refused(1, "app.log is being rotated by 'worker-1'; skipped");

    locks.ok(&["unlock", "logs/app.log", "--client", "worker-1"]);
    let second = rotate(&locks, "app.log", "worker-2", false);
    assert_eq!(
        (second.code, second.stdout.as_str()),
        (
            0,
            "worker-2 rotates app.log (fencing token 2)\nworker-2 rotated app.log\n"
        ),
        "{second:?}"
    );
    assert_eq!(locks.ok(&["status", "logs/app.log"]), "not locked\n");
}

#[test]
fn the_rotator_repeats_with_times() {
    let locks = Locks::new();
    let run = Run::from(
        plugin_run(
            &locks,
            Path::new(ROTATOR),
            &[],
            &["app.log", "--client", "c", "--times", "3"],
        )
        .output()
        .expect("run hasp plugin run"),
    );
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert!(
        run.stdout.starts_with("3 rotations in ") && run.stdout.lines().count() == 1,
        "{run:?}"
    );
    // Three grants, all released: the next one is the fourth.
    assert_eq!(
        locks.json(&["lock", "logs/app.log", "--client", "x", "--json"])["fencing"],
        4
    );
}

#[test]
fn a_plugin_reaches_the_lock_directory_only_through_the_registry() {
    // The hasp guest is itself a command that looks for a preopened lock
    // directory: run as a plugin, it finds none.
    let locks = Locks::new();
    locks.ok(&["lock", "held", "--client", "keeper"]);
    let out = plugin_run(
        &locks,
        guest_component(),
        &[],
        &["unlock", "held", "--client", "keeper"],
    )
    .output()
    .expect("run hasp plugin run");
    let run = Run::from(out);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.starts_with("no lock directory"), "{run:?}");
    assert_eq!(
        locks.json(&["status", "held", "--json"])["client"],
        "keeper"
    );
}

#[test]
fn a_plugin_may_sleep_while_it_holds_a_lock() {
    let locks = Locks::new();
    let out = plugin_run(
        &locks,
        Path::new(ROTATOR),
        &[],
        &["app.log", "--client", "slow", "--work-ms", "20"],
    )
    .output()
    .expect("run hasp plugin run");
    let run = Run::from(out);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            0,
            "slow rotates app.log (fencing token 1)\nslow rotated app.log\n",
            ""
        )
    );
}

#[test]
fn a_plugin_waiting_past_its_time_limit_is_stopped() {
    let locks = Locks::new();
    let out = plugin_run(
        &locks,
        Path::new(ROTATOR),
        &["--timeout", "0.2"],
        &[
            "app.log",
            "--client",
            "stuck",
            "--work-ms",
            "600000",
            "--keep",
        ],
    )
    .output()
    .expect("run hasp plugin run");
    let run = Run::from(out);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        format!("plugin {ROTATOR}: it ran past its time limit (0.2 s) and was stopped\n")
    );
    // Its lock was granted before it stalled: a lock, like any other.
    assert_eq!(
        locks.json(&["status", "logs/app.log", "--json"])["client"],
        "stuck"
    );
}

#[test]
fn two_plugins_racing_for_one_log_one_wins_and_the_other_names_it() {
    let locks = Locks::new();
    for round in 0..5 {
        let log = format!("race-{round}.log");
        let racers: Vec<_> = ["a", "b"]
            .iter()
            .map(|client| {
                let child = plugin_run(
                    &locks,
                    Path::new(ROTATOR),
                    &[],
                    &[&log, "--client", client, "--keep"],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a plugin");
                (*client, child)
            })
            .collect();
        let runs: Vec<(&str, Run)> = racers
            .into_iter()
            .map(|(client, child)| (client, Run::from(child.wait_with_output().expect("wait"))))
            .collect();
        let winners: Vec<&str> = runs
            .iter()
            .filter(|(_, run)| run.code == 0)
            .map(|(client, _)| *client)
            .collect();
        assert_eq!(winners.len(), 1, "exactly one wins: {runs:?}");
        let winner = winners[0];
        let (_, loser) = runs.iter().find(|(c, _)| *c != winner).expect("loser");
        loser.assert_refused(1, &format!("{log} is being rotated by '{winner}'; skipped"));
        assert_eq!(
            locks.json(&["status", &format!("logs/{log}"), "--json"])["client"],
            winner
        );
    }
}

#[test]
fn a_composed_plugin_runs_under_stock_wasmtime_with_the_same_locks() {
    let locks = Locks::new();
    let out = tempfile::tempdir().expect("temp dir");
    let composed = out.path().join("rotator+hasp.wasm");
    locks.ok(&[
        "plugin",
        "compose",
        ROTATOR,
        "-o",
        composed.to_str().expect("utf-8 path"),
    ]);
    let mut preopen = locks.path().as_os_str().to_owned();
    preopen.push("::/locks");
    let stock = |client: &str| {
        let out = Command::new(wasmtime())
            .arg("run")
            .arg("--dir")
            .arg(&preopen)
            .arg(&composed)
            .args(["app.log", "--client", client, "--keep"])
            .output()
            .expect("run wasmtime");
        Run::from(out)
    };
    let won = stock("stock-1");
    assert_eq!(
        (won.code, won.stdout.as_str()),
        (0, "stock-1 rotates app.log (fencing token 1)\n"),
        "{won:?}"
    );
    stock("stock-2").assert_refused(1, "app.log is being rotated by 'stock-1'; skipped");
    rotate(&locks, "app.log", "hosted", false)
        .assert_refused(1, "app.log is being rotated by 'stock-1'; skipped");
    assert_eq!(
        locks.json(&["status", "logs/app.log", "--json"])["client"],
        "stock-1"
    );
}

/// A component (text format) that exports `wasi:cli/run` with `body` as the
/// core function behind it, after `imports`.
fn component(imports: &str, memory: bool, body: &str) -> Vec<u8> {
    let memory = if memory { "(memory 1)" } else { "" };
    let text = format!(
        r#"(component
             {imports}
             (core module $m {memory} (func (export "run") (result i32) {body}))
             (core instance $i (instantiate $m))
             (func $run (result (result)) (canon lift (core func $i "run")))
             (instance $cli (export "run" (func $run)))
             (export "wasi:cli/run@0.2.0" (instance $cli)))"#
    );
    wat::parse_str(text).expect("valid component text")
}

/// A component whose `wasi:cli/run` grows two core memories, one in each
/// of its two core instances, by `pages` 64 KiB pages each.
fn two_memories(pages: u32) -> Vec<u8> {
    let text = format!(
        r#"(component
             (core module $a (memory 1)
               (func (export "grow") (result i32) (memory.grow (i32.const {pages}))))
             (core instance $ai (instantiate $a))
             (core module $m (import "a" "grow" (func $grow (result i32))) (memory 1)
               (func (export "run") (result i32)
                 (drop (call $grow))
                 (drop (memory.grow (i32.const {pages})))
                 (i32.const 0)))
             (core instance $i (instantiate $m (with "a" (instance $ai))))
             (func $run (result (result)) (canon lift (core func $i "run")))
             (instance $cli (export "run" (func $run)))
             (export "wasi:cli/run@0.2.0" (instance $cli)))"#
    );
    wat::parse_str(text).expect("valid component text")
}

/// Writes `bytes` as `name` in `dir`.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write plugin");
    path
}

#[test]
fn bad_plugins_get_an_error_naming_them_and_leave_the_locks_alone() {
    let locks = Locks::new();
    locks.ok(&["lock", "logs/held.log", "--client", "keeper"]);
    let before = locks.ok(&["status"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let plugins = dir.path();
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (
            write(plugins, "text.wasm", b"not wasm at all"),
            vec![],
            "it is not a WebAssembly component",
        ),
        (
            write(
                plugins,
                "core.wasm",
                &wat::parse_str("(module)").expect("module"),
            ),
            vec![],
            "it is a core WebAssembly module, not a component",
        ),
        (
            write(
                plugins,
                "foreign.wasm",
                &component(
                    r#"(import "acme:db/query@1.0.0" (instance))"#,
                    false,
                    "i32.const 0",
                ),
            ),
            vec![],
            "it imports `acme:db/query@1.0.0`, which hasp does not provide",
        ),
        (
            write(
                plugins,
                "future.wasm",
                &component(
                    r#"(import "hasp:lock/registry@0.3.0" (instance))"#,
                    false,
                    "i32.const 0",
                ),
            ),
            vec![],
            "it was built against hasp:lock@0.3.0 (it imports `hasp:lock/registry@0.3.0`) \
             but this hasp provides hasp:lock@0.2.0",
        ),
        (
            write(
                plugins,
                "library.wasm",
                &wat::parse_str("(component)").expect("component"),
            ),
            vec![],
            "it is not a command: it exports no `wasi:cli/run`",
        ),
        (
            write(plugins, "trap.wasm", &component("", false, "unreachable")),
            vec![],
            "it trapped (wasm trap: wasm `unreachable` instruction executed)",
        ),
        (
            write(
                plugins,
                "spin.wasm",
                &component("", false, "(loop $l (br $l)) (i32.const 0)"),
            ),
            vec!["--timeout", "0.5"],
            "it ran past its time limit (0.5 s) and was stopped",
        ),
        (
            write(
                plugins,
                "hog.wasm",
                &component(
                    "",
                    true,
                    "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i32.const 0)",
                ),
            ),
            vec!["--max-memory", "16"],
            "it tried to grow its memory past the limit (16 MiB) and was stopped",
        ),
        (
            // Two memories of 10 MiB each: under the limit one by one, over
            // it together.
            write(plugins, "twin.wasm", &two_memories(160)),
            vec!["--max-memory", "16"],
            "it tried to grow its memory past the limit (16 MiB) and was stopped",
        ),
    ];
    for (plugin, options, expected) in cases {
        let run = Run::from(
            plugin_run(&locks, &plugin, &options, &[])
                .output()
                .expect("run hasp"),
        );
        let prefix = format!("plugin {}: ", plugin.display());
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.starts_with(&prefix)
                && run.stderr.contains(expected)
                && run.stderr.lines().count() == 1,
            "{}: {run:?}",
            plugin.display()
        );
        assert_eq!(locks.ok(&["status"]), before, "{}", plugin.display());
    }
    // The lock held all along is still the keeper's, and works as before.
    locks
        .run(&["lock", "logs/held.log", "--client", "other"])
        .assert_refused(1, "Resource already locked by 'keeper'");
    locks.ok(&["unlock", "logs/held.log", "--client", "keeper"]);
}

#[test]
fn a_plugin_that_is_not_a_regular_file_is_refused_at_once() {
    let locks = Locks::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("plugin.fifo");
    let path = std::ffi::CString::new(fifo.to_str().expect("UTF-8")).expect("no NUL");
    // SAFETY: mkfifo(3) on a NUL-terminated path this test owns.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().expect("UTF-8");
    let dir_path = dir.path().to_str().expect("UTF-8");
    for (plugin, sub) in [
        (fifo, "run"),
        ("/dev/zero", "run"),
        (dir_path, "run"),
        ("/dev/zero", "compose"),
    ] {
        let args: Vec<&str> = if sub == "run" {
            vec!["plugin", "run", plugin]
        } else {
            vec!["plugin", "compose", plugin, "-o", "out.wasm"]
        };
        let run = locks.run(&args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert_eq!(
            run.stderr,
            format!("plugin {plugin}: not a regular file\n"),
            "{args:?}"
        );
    }
}
