//! The host runtime: the compiled component is cached once per machine, and
//! the guest runs under a memory cap.

use crate::support::Locks;
use hasp::{Error, Limits, Registry, Runtime};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn cached_artifacts(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("cache dir exists after a run")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    found.sort();
    found
}

#[test]
fn second_process_reuses_the_precompiled_component() {
    let cache = tempfile::tempdir().expect("temp dir");
    let locks = Locks::new();
    let run = |args: &[&str]| {
        let out = locks
            .command(args)
            .env("HASP_CACHE_DIR", cache.path())
            .output()
            .expect("run hasp");
        assert!(out.status.success(), "{out:?}");
    };

    run(&["lock", "a", "--client", "c"]);
    let first = cached_artifacts(cache.path());
    assert_eq!(first.len(), 1, "one compiled component: {first:?}");
    let before = std::fs::metadata(&first[0]).expect("stat");

    run(&["unlock", "a", "--client", "c"]);
    let second = cached_artifacts(cache.path());
    let after = std::fs::metadata(&second[0]).expect("stat");
    assert_eq!(first, second);
    // A recompile would have replaced the file (new inode, new mtime).
    assert_eq!(
        (before.ino(), before.mtime(), before.mtime_nsec()),
        (after.ino(), after.mtime(), after.mtime_nsec())
    );
}

#[test]
fn guest_memory_cap_is_enforced_with_a_clear_error() {
    let locks = Locks::new();
    let runtime = Runtime::new(Limits {
        memory: 64 * 1024,
        ..Limits::default()
    })
    .expect("runtime");
    let err = match Registry::open_with(&runtime, locks.path()) {
        Err(err) => err,
        Ok(_) => panic!("a 64 KiB cap cannot hold the guest"),
    };
    assert!(matches!(err, Error::Runtime(_) | Error::Trap(_)), "{err:?}");
    assert!(err.to_string().contains("memory"), "{err}");
    assert!(
        locks.tree().is_empty(),
        "nothing written: {:?}",
        locks.tree()
    );
}
