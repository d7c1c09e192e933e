//! The `embed` example (examples/embed.rs): a host of its own, built with
//! wasmtime's `bindgen!` over our WIT, runs the component that
//! `hasp component path` names, and shares a lock directory with the CLI.

use crate::support::{hasp_bin, Locks, Run};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The example binary, which cargo builds next to this test binary:
/// `<target>/<profile>/deps/all-HASH` beside `<target>/<profile>/examples/`.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps");
    let path = profile
        .join("examples")
        .join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{path:?} is missing: `cargo test` builds the examples, a `--test` \
         filter alone does not (build it with `cargo build --release --examples`)"
    );
    path
}

/// The guest component, as `hasp component path` gives it.
pub(crate) fn component() -> PathBuf {
    let out = Command::new(hasp_bin())
        .args(["component", "path"])
        .env_remove("HASP_DIR")
        .output()
        .expect("run hasp component path");
    let run = Run::from(out);
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (0, ""),
        "hasp component path: {run:?}"
    );
    let path = PathBuf::from(run.stdout.strip_suffix('\n').unwrap_or(&run.stdout));
    assert!(
        path.is_absolute() && path.is_file(),
        "hasp component path printed {:?}",
        run.stdout
    );
    path
}

/// Runs `embed GUEST_WASM LOCK_DIR RESOURCE` to completion.
fn embed(wasm: &Path, locks: &Locks, resource: &str) -> Run {
    let out = Command::new(example())
        .arg(wasm)
        .arg(locks.path())
        .arg(resource)
        .output()
        .expect("run the embed example");
    Run::from(out)
}

#[test]
fn example_host_shares_the_lock_directory_with_the_cli() {
    let wasm = component();
    let locks = Locks::new();

    // Alone on a fresh directory: grant, refusal of a second client, release.
    let run = embed(&wasm, &locks, "deploy");
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            0,
            "granted deploy to 'embed' with fencing token 1\n\
             refused 'embed-2': Resource already locked by 'embed'\n\
             released deploy\n",
            ""
        ),
        "{run:?}"
    );

    // It released the lock: the CLI gets it, on the same records.
    locks.ok(&["lock", "deploy", "--client", "cli"]);

    // While the CLI holds it, the example is refused with the guest's text.
    embed(&wasm, &locks, "deploy").assert_refused(1, "Resource already locked by 'cli'");

    // The CLI's lock survived the refusal; once it is released, the example's
    // grant continues the same fencing sequence (1 embed, 2 cli, 3 embed).
    locks.ok(&["unlock", "deploy", "--client", "cli"]);
    let run = embed(&wasm, &locks, "deploy");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with("granted deploy to 'embed' with fencing token 3\n"),
        "{run:?}"
    );
    // ...and released it again before exiting.
    locks
        .run(&["unlock", "deploy", "--client", "embed"])
        .assert_refused(1, "Resource not locked");
}
