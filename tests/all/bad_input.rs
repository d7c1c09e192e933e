//! Bad input and broken lock directories: exit 2, a one-line message, and
//! nothing changed in the store (and nothing ever granted). The bad input
//! runs on both stores; broken lock directories are the disk's own.

use crate::support::{already, both, hasp_in, is_root, Locks, Run, Tmpfs};
use std::fs;
use std::path::Path;
use std::process::Command;

/// Lays out the registry with two locks (`held` and `tree/a/b`, by `owner`).
fn setup(locks: &Locks) {
    locks.ok(&["lock", "held", "--client", "owner"]);
    locks.ok(&["lock", "tree/a/b", "--client", "owner"]);
}

/// Runs `args`, expects exit 2 with one line on stderr starting with
/// `message`, nothing on stdout, and the store unchanged (on etcd, no key
/// even rewritten).
#[track_caller]
fn rejected(locks: &Locks, args: &[&str], message: &str) {
    let before = locks.snapshot();
    assert!(!before.is_empty(), "a registry laid out holds something");
    let run = locks.run(args);
    assert_eq!(run.code, 2, "hasp {args:?}: {run:?}");
    assert_eq!(run.stdout, "", "hasp {args:?}");
    assert!(
        run.stderr.starts_with(message) && run.stderr.ends_with('\n'),
        "hasp {args:?}: expected {message:?}...: {run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "hasp {args:?}: {run:?}");
    assert_eq!(locks.snapshot(), before, "hasp {args:?} changed the store");
}

/// `held` is still held by `owner`, with its first grant.
#[track_caller]
fn still_held(locks: &Locks) {
    let held = locks.json(&["status", "held", "--json"]);
    assert_eq!(
        (held["client"].as_str(), held["fencing"].as_u64()),
        (Some("owner"), Some(1))
    );
}

/// Checks a bad resource name with lock, unlock and status.
#[track_caller]
fn bad_name(locks: &Locks, name: &str) {
    let msg = "invalid resource name '";
    rejected(locks, &["lock", name, "--client", "c1"], msg);
    rejected(
        locks,
        &["lock", name, "--no-lock-parents", "--no-lock-children"],
        msg,
    );
    rejected(locks, &["unlock", name, "--client", "owner"], msg);
    rejected(locks, &["status", name, "--json"], msg);
    rejected(locks, &["status", name], msg);
}

both! {
    fn empty_names_are_rejected(locks: &Locks) {
        setup(locks);
        for name in ["", "/", "//"] {
            bad_name(locks, name);
        }
        still_held(locks);
    }
}

both! {
    fn dot_and_dot_dot_segments_are_rejected(locks: &Locks) {
        setup(locks);
        for name in [
            ".",
            "..",
            "/..",
            "../",
            "../held",
            "./held",
            "held/.",
            "held/..",
            "a/./b",
            "a/../b",
            "../../etc/passwd",
            "tree/a/../../held",
        ] {
            bad_name(locks, name);
        }
        still_held(locks);
    }
}

both! {
    fn empty_segments_are_rejected(locks: &Locks) {
        setup(locks);
        for name in [
            "a//b",
            "//held",
            "held//",
            "//held//",
            "tree//a",
            "tree/a//b",
        ] {
            bad_name(locks, name);
        }
        still_held(locks);
    }
}

both! {
    fn control_characters_in_names_are_rejected_and_shown_escaped(locks: &Locks) {
        setup(locks);
        for name in [
            "a\nb",
            "held\n",
            "a\x01b",
            "a\x7fb",
            "\tb",
            "a\rb",
            "a\u{85}b",
            "\x1b[31mred",
        ] {
            bad_name(locks, name);
        }
        let run = locks.run(&["lock", "evil\nResource not locked", "--client", "c"]);
        assert_eq!(
            run.stderr,
            "invalid resource name 'evil\\nResource not locked': it contains the control character '\\n'\n"
        );
        still_held(locks);
    }
}

both! {
    fn names_over_1024_bytes_are_rejected(locks: &Locks) {
        setup(locks);
        let seg = "a".repeat(200);
        let long = format!("{seg}/{seg}/{seg}/{seg}/{seg}/bbbbbbbbbbbbbbbbbbbb");
        assert_eq!(long.len(), 1025);
        bad_name(locks, &long);
        // Multi-byte characters count in bytes.
        let wide = format!("{seg}/{seg}/{seg}/{seg}/{seg}/{}", "é".repeat(10));
        assert_eq!(wide.len(), 1025);
        bad_name(locks, &wide);
        still_held(locks);
    }
}

both! {
    fn segments_over_200_bytes_are_rejected(locks: &Locks) {
        setup(locks);
        bad_name(locks, &"s".repeat(201));
        bad_name(locks, &format!("tree/{}/x", "s".repeat(201)));
        bad_name(locks, &"é".repeat(101));
        // `%` is stored as `%25`: 67 of them take 201 bytes on disk.
        bad_name(locks, &"%".repeat(67));
        still_held(locks);
    }
}

both! {
    fn longest_accepted_names_and_client_ids_work(locks: &Locks) {
        setup(locks);
        let seg = "a".repeat(200);
        let name = format!("{seg}/{seg}/{seg}/{seg}/{seg}/{}", "b".repeat(19));
        assert_eq!(name.len(), 1024);
        let client = "c".repeat(160);
        let percent = "%".repeat(66);
        for name in [name.as_str(), percent.as_str()] {
            let grant = locks.json(&["lock", &format!("/{name}/"), "--client", &client, "--json"]);
            assert_eq!(grant["resource"], name);
            assert_eq!(grant["client"], client.as_str());
            assert_eq!(
                locks.json(&["status", name, "--json"])["client"],
                client.as_str()
            );
            locks.ok(&["unlock", name, "--client", &client]);
            assert_eq!(
                locks.json(&["status", name, "--json"]),
                serde_json::Value::Null
            );
        }
        // A client id counts in bytes as it is written on disk, where `%` and
        // `/` take three: each of these takes exactly 160.
        for client in [
            format!("{}c", "%".repeat(53)),
            format!("{}c", "/".repeat(53)),
            "é".repeat(80),
            "+".repeat(160),
        ] {
            let grant = locks.json(&["lock", "free", "--client", &client, "--json"]);
            assert_eq!(grant["client"], client.as_str());
            assert_eq!(
                locks.json(&["status", "free", "--json"])["client"],
                client.as_str()
            );
            locks
                .run(&["lock", "free", "--client", "other"])
                .assert_refused(1, &already(&client));
            locks.ok(&["unlock", "free", "--client", &client]);
        }
    }
}

both! {
    fn bad_client_ids_are_rejected(locks: &Locks) {
        setup(locks);
        let msg = "invalid client id '";
        for client in ["", "c\nd", "c\x01", "c\x7f", "\u{85}", "owner\n"] {
            rejected(locks, &["lock", "free", "--client", client], msg);
            rejected(locks, &["lock", "held", "--client", client], msg);
            // Not "not owner" (exit 1): the id is refused before anything else.
            rejected(locks, &["unlock", "held", "--client", client], msg);
        }
        // One byte over 160 as written on disk (`%` and `/` take three there).
        for client in [
            "c".repeat(161),
            format!("{}é", "c".repeat(159)),
            format!("{}cc", "%".repeat(53)),
            format!("{}cc", "/".repeat(53)),
            "%".repeat(54),
        ] {
            for args in [
                &["lock", "free", "--client", &client][..],
                &["lock", "held", "--client", &client],
                &["unlock", "held", "--client", &client],
            ] {
                rejected(locks, args, msg);
                let run = locks.run(args);
                assert!(
                    run.stderr
                        .ends_with("': it is longer than 160 bytes on disk\n"),
                    "hasp {args:?}: {run:?}"
                );
            }
        }
        still_held(locks);
    }
}

both! {
    fn malformed_tokens_are_rejected(locks: &Locks) {
        setup(locks);
        let msg = "invalid token '";
        for token in [
            "",
            "not-a-token",
            "../../../../etc/passwd",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b0",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6g",
            "0f8e3c1a5-b2d-4e6f-9a7b-1c2d3e4f5a6b",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b\n",
            "0f8e3c1a/5b2d/4e6f/9a7b/1c2d3e4f5a6b",
        ] {
            rejected(locks, &["unlock", "held", "--token", token], msg);
            rejected(locks, &["unlock", "free", "--token", token], msg);
        }
        still_held(locks);
    }
}

both! {
    fn nul_is_rejected_as_invalid_input_through_the_api(locks: &Locks) {
        setup(locks);
        let before = locks.snapshot();
        let mut registry = locks.registry();
        let invalid = |r: Result<(), hasp::Error>, what: &str| match r {
            Err(hasp::Error::InvalidInput { message }) => {
                assert!(!message.contains('\0'), "{what}: raw NUL in {message:?}");
                assert_eq!(message.lines().count(), 1, "{what}: {message:?}");
            }
            other => panic!("{what}: expected InvalidInput, got {other:?}"),
        };
        let anon = hasp::LockOptions::default();
        invalid(registry.lock("a\0b", &anon).map(drop), "lock name");
        invalid(
            registry.lock("held\0", &anon).map(drop),
            "lock name held\\0",
        );
        invalid(registry.lock("\0", &anon).map(drop), "lock name \\0");
        invalid(
            registry
                .lock("free", &hasp::LockOptions::client("c\0"))
                .map(drop),
            "lock client",
        );
        let owner = hasp::UnlockKey::Client("owner".into());
        invalid(registry.unlock("held\0", &owner).map(drop), "unlock name");
        invalid(
            registry
                .unlock("held", &hasp::UnlockKey::Client("owner\0".into()))
                .map(drop),
            "unlock client",
        );
        let token = format!("{}\0", "0".repeat(35));
        invalid(
            registry
                .unlock("held", &hasp::UnlockKey::Token(token))
                .map(drop),
            "unlock token",
        );
        invalid(registry.status("held\0").map(drop), "status");
        invalid(registry.list("tree\0").map(drop), "list");
        drop(registry);
        assert_eq!(locks.snapshot(), before);
        still_held(locks);
    }
}

both! {
    fn absolute_host_paths_are_names_inside_the_lock_dir(locks: &Locks) {
        setup(locks);
        let outside = tempfile::tempdir().expect("temp dir");
        let victim = outside.path().join("victim");
        let victim = victim.to_str().expect("UTF-8 temp path");
        let canonical = victim.trim_start_matches('/');

        let grant = locks.json(&["lock", victim, "--client", "c1", "--json"]);
        assert_eq!(grant["resource"], canonical);
        assert_eq!(fs::read_dir(outside.path()).expect("read").count(), 0);
        assert_eq!(locks.json(&["status", victim, "--json"])["client"], "c1");
        locks.ok(&["unlock", victim, "--client", "c1"]);
        assert_eq!(fs::read_dir(outside.path()).expect("read").count(), 0);

        let passwd = || {
            fs::symlink_metadata("/etc/passwd")
                .ok()
                .map(|m| (m.is_file(), m.len(), m.modified().ok()))
        };
        let before = passwd();
        let grant = locks.json(&["lock", "/etc/passwd", "--client", "c1", "--json"]);
        assert_eq!(grant["resource"], "etc/passwd");
        // Its state is inside the store (on disk in nodes/etc/passwd).
        assert!(!locks.states("etc/passwd").is_empty());
        locks.ok(&["unlock", "/etc/passwd", "--client", "c1"]);
        assert_eq!(passwd(), before);
    }
}

#[test]
fn missing_lock_dir_is_an_error_and_is_not_created() {
    let parent = tempfile::tempdir().expect("temp dir");
    let missing = parent.path().join("missing").join("deeper");
    for args in [
        &["lock", "x", "--client", "c"][..],
        &["status"],
        &["unlock", "x", "--client", "c"],
    ] {
        let run = hasp_in(&missing, args);
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (2, ""),
            "hasp {args:?}: {run:?}"
        );
        assert!(run.stderr.contains(&*missing.to_string_lossy()), "{run:?}");
        assert!(!missing.exists() && !parent.path().join("missing").exists());
    }
}

#[test]
fn lock_dir_that_is_a_regular_file_is_an_error_and_untouched() {
    let parent = tempfile::tempdir().expect("temp dir");
    let file = parent.path().join("file");
    fs::write(&file, "precious\n").expect("write");
    for args in [
        &["lock", "x", "--client", "c"][..],
        &["status", "x", "--json"],
        &["status"],
    ] {
        let run = hasp_in(&file, args);
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (2, ""),
            "hasp {args:?}: {run:?}"
        );
        assert!(run.stderr.contains(&*file.to_string_lossy()), "{run:?}");
    }
    assert_eq!(fs::read_to_string(&file).expect("read"), "precious\n");
    assert_eq!(fs::read_dir(parent.path()).expect("read").count(), 1);
}

#[test]
fn nodes_that_is_a_regular_file_is_an_error_and_untouched() {
    let locks = Locks::new();
    fs::write(locks.path().join("nodes"), "not a directory\n").expect("write");
    for args in [
        &["lock", "x", "--client", "c"][..],
        &["lock", "x/y"],
        &["status", "x", "--json"],
        &["status"],
        &["unlock", "x", "--client", "c"],
    ] {
        let run = locks.run(args);
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (2, ""),
            "hasp {args:?}: {run:?}"
        );
        assert!(run.stderr.contains("nodes"), "hasp {args:?}: {run:?}");
    }
    let nodes = locks.path().join("nodes");
    assert_eq!(
        fs::read_to_string(nodes).expect("read"),
        "not a directory\n"
    );
}

#[test]
fn lock_dir_of_an_incompatible_format_is_refused_and_untouched() {
    for line in ["hasp-lock-dir 1", "hasp-lock-dir 4", "hasp-lock 1"] {
        let locks = Locks::new();
        fs::write(locks.path().join("FORMAT"), format!("{line}\n")).expect("write");
        // What a format 1 directory holds: a record in a slot.
        let slot = locks.path().join("nodes/x/.slot");
        fs::create_dir_all(&slot).expect("make slot");
        fs::write(
            slot.join("0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b"),
            "hasp-lock 1\nresource: x\nclient: c\n",
        )
        .expect("write record");
        let before = locks.tree();
        for args in [
            &["lock", "x", "--client", "c"][..],
            &["lock", "y", "--client", "c"],
            &["unlock", "x", "--client", "c"],
            &["status", "x", "--json"],
            &["status"],
        ] {
            let run = locks.run(args);
            assert_eq!(
                (run.code, run.stdout.as_str()),
                (2, ""),
                "{line}: hasp {args:?}: {run:?}"
            );
            assert!(run.stderr.contains("FORMAT"), "{line}: {run:?}");
            assert!(run.stderr.contains(line), "{line}: {run:?}");
            assert_eq!(run.stderr.lines().count(), 1, "{line}: {run:?}");
        }
        assert_eq!(locks.tree(), before, "{line}");
        let format = fs::read_to_string(locks.path().join("FORMAT")).expect("read");
        assert_eq!(format, format!("{line}\n"));
    }
}

both! {
    /// A registry laid out by another hasp, on either store: every command
    /// refuses it in one line naming what FORMAT says, and changes nothing.
    fn a_registry_of_an_incompatible_format_is_refused_and_untouched(locks: &Locks) {
        let lines: &[&str] = if locks.is_etcd() {
            &["hasp-lock-store 2", "hasp-lock-store 0", "hasp-lock-dir 3", "garbage"]
        } else {
            &["hasp-lock-dir 1", "hasp-lock-dir 4", "hasp-lock-store 1", "garbage"]
        };
        for line in lines {
            let locks = &locks.fresh();
            locks.ok(&["lock", "x", "--client", "c"]);
            locks.plant_format(line);
            let before = locks.snapshot();
            for args in [
                &["lock", "x", "--client", "c"][..],
                &["lock", "y", "--client", "c"],
                &["lock", "x/y", "--client", "c", "--", "true"],
                &["unlock", "x", "--client", "c"],
                &["unlock", "x", "--force"],
                &["renew", "x", "--client", "c", "--ttl", "1m"],
                &["status", "x", "--json"],
                &["status"],
            ] {
                let run = locks.run(args);
                one_line_refusal(
                    &run,
                    args,
                    &[
                        &format!("FORMAT says '{line}': "),
                        "incompatible hasp",
                        &format!(" ({})\n", locks.place()),
                    ],
                );
            }
            assert_eq!(locks.snapshot(), before, "{line}");
        }
    }
}

fn empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir)
        .expect("read outside dir")
        .next()
        .is_none()
}

#[test]
fn symlinked_node_leading_out_is_refused_and_nothing_is_created_outside() {
    let locks = Locks::new();
    setup(&locks);
    let outside = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(outside.path(), locks.path().join("nodes/foo")).expect("symlink");
    let before = locks.tree();
    for name in ["foo/bar", "foo", "/foo/bar/baz/"] {
        for args in [
            &["lock", name, "--client", "c"][..],
            &["lock", name, "--no-lock-parents", "--no-lock-children"],
        ] {
            let run = locks.run(args);
            assert_eq!(
                (run.code, run.stdout.as_str()),
                (2, ""),
                "hasp {args:?}: {run:?}"
            );
            assert!(run.stderr.contains("nodes/foo"), "hasp {args:?}: {run:?}");
            assert!(empty_dir(outside.path()), "hasp {args:?} wrote outside");
        }
    }
    assert_eq!(locks.tree(), before);
}

#[test]
fn symlinked_nodes_or_tmp_leading_out_grant_nothing_and_write_nothing_outside() {
    for inner in ["nodes", "tmp"] {
        let locks = Locks::new();
        locks.ok(&["status"]);
        let outside = tempfile::tempdir().expect("temp dir");
        let link = locks.path().join(inner);
        fs::remove_dir(&link).expect("remove the empty layout dir");
        std::os::unix::fs::symlink(outside.path(), &link).expect("symlink");

        let run = locks.run(&["lock", "x", "--client", "c"]);
        assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{inner}: {run:?}");
        assert!(run.stderr.contains(inner), "{inner}: {run:?}");
        assert!(empty_dir(outside.path()), "{inner}: hasp wrote outside");
        // Either the lock is visibly free or the status cannot be read.
        let status = locks.run(&["status", "x", "--json"]);
        let free = (status.code, status.stdout.as_str()) == (0, "null\n");
        assert!(free || status.code == 2, "{inner}: granted? {status:?}");
    }
}

/// A valid unlock token, for state names written by hand.
const UUID: &str = "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b";

/// State names that are neither free (`<n>`) nor held
/// (`<fencing>+<token>+<flags>+<since-ms>[+<client>]`).
fn corrupt_names() -> Vec<String> {
    vec![
        "garbage".to_string(),
        "7+not-a-token+pc+1".to_string(),
        format!("7+{UUID}+xx+1"),
        format!("7+{UUID}+pc"),
        format!("7+{UUID}+pc+soon"),
        format!("x+{UUID}+pc+1+c1"),
    ]
}

/// Locks `p/res` for real (by `c1`), then replaces its state by `name` (on
/// disk renames its state file, on etcd rewrites its key's value). Returns
/// the token of the lock and where the state is, as errors name it.
fn corrupt_state(locks: &Locks, name: &str) -> (String, String) {
    let grant = locks.json(&["lock", "p/res", "--client", "c1", "--json"]);
    let token = grant["token"].as_str().expect("token").to_string();
    let states = locks.states("p/res");
    assert_eq!(states.len(), 1, "one state in p/res: {states:?}");
    if locks.is_etcd() {
        locks.plant("p/res", name);
    } else {
        let lock = locks.path().join("nodes/p/res/.lock");
        fs::rename(lock.join(&states[0]), lock.join(name)).expect("rename the state");
    }
    (token, locks.state_path("p/res", name))
}

/// Whether nothing holds the node `node` in the store: it was never made,
/// or its one state is a free one (a bare number).
fn free_on_disk(locks: &Locks, node: &str) -> bool {
    match locks.states(node).as_slice() {
        [] => true,
        [one] => !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// Runs `args`, expects exit 2 with the one line `corrupt lock state
/// {path}: ...` on stderr and nothing on stdout; returns the run.
#[track_caller]
fn corrupt(locks: &Locks, args: &[&str], path: &str) -> Run {
    let run = locks.run(args);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (2, ""),
        "hasp {args:?}: {run:?}"
    );
    assert!(
        run.stderr
            .starts_with(&format!("corrupt lock state {path}: ")),
        "hasp {args:?}: {run:?} should name {path}"
    );
    // ...and where: `(lock directory DIR)`, or `(store etcd://...)`.
    assert!(
        run.stderr.ends_with(&format!(" ({})\n", locks.place())),
        "hasp {args:?}: {run:?} should name {}",
        locks.place()
    );
    assert_eq!(run.stderr.lines().count(), 1, "hasp {args:?}: {run:?}");
    run
}

both! {
    fn corrupt_state_is_reported_with_its_file_and_never_granted_over(locks: &Locks) {
        for name in corrupt_names() {
            let locks = &locks.fresh();
            let (token, rel) = corrupt_state(locks, &name);
            for args in [
                &["status", "p/res"][..],
                &["status", "/p/res", "--json"],
                &["status"],
                &["status", "--json"],
                &["lock", "p/res", "--client", "c2"],
                &["lock", "p/res", "--client", "c1"],
                &["lock", "p/res", "--no-lock-parents", "--no-lock-children"],
                &["lock", "p/res/child", "--client", "c2"],
                &["unlock", "p/res", "--client", "c1"],
                &["unlock", "p/res", "--token", &token],
            ] {
                corrupt(locks, args, &rel);
            }
            assert_eq!(locks.states("p/res"), [name.as_str()], "state kept");
            for node in ["p", "p/res/child"] {
                assert!(free_on_disk(locks, node), "{name}: {node} was granted");
            }
            // Unrelated resources, and calls that do not need the node, work.
            assert_eq!(
                locks.json(&["status", "p", "--json"]),
                serde_json::Value::Null
            );
            locks.ok(&["lock", "q", "--client", "c2"]);
            locks.ok(&["lock", "p/other", "--client", "c2"]);
        }
    }
}

both! {
    fn corrupt_child_state_keeps_its_parent_from_being_granted(locks: &Locks) {
        // Whether the unreadable lock on p/res blocks its parent cannot be known,
        // so locking `p` with lock-children must fail (exit 2, naming the state)
        // like locking `p/res/child` does, never grant.
        for name in corrupt_names() {
            let locks = &locks.fresh();
            let (_, rel) = corrupt_state(locks, &name);
            corrupt(locks, &["lock", "p", "--client", "c2"], &rel);
            assert!(free_on_disk(locks, "p"), "{name}: p was granted");
            assert_eq!(
                locks.json(&["status", "p", "--json"]),
                serde_json::Value::Null,
                "{name}"
            );
            // Without lock-children, `p` does not depend on its children.
            locks.ok(&["lock", "p", "--client", "c2", "--no-lock-children"]);
            assert_eq!(locks.json(&["status", "p", "--json"])["client"], "c2");
        }
    }
}

both! {
    fn hand_made_bad_states_are_reported_with_their_file(locks: &Locks) {
        for name in corrupt_names() {
            let locks = &locks.fresh();
            locks.ok(&["status"]);
            locks.plant("h", &name);
            let rel = locks.state_path("h", &name);
            for args in [
                &["status", "h", "--json"][..],
                &["status"],
                &["lock", "h", "--client", "c"],
                &["lock", "h/child", "--client", "c"],
                &["unlock", "h", "--client", "c"],
            ] {
                corrupt(locks, args, &rel);
            }
            assert_eq!(locks.states("h"), [name.as_str()], "state kept");
            assert!(free_on_disk(locks, "h/child"), "{name}: h/child granted");
        }
    }
}

#[test]
fn lock_dir_holding_two_states_is_reported_and_never_granted_over() {
    // Held plus a stray free name, and two free names made by hand.
    for by_hand in [false, true] {
        let locks = Locks::new();
        locks.ok(&["status"]);
        let lock = locks.path().join("nodes/h/.lock");
        if by_hand {
            fs::create_dir_all(&lock).expect("make .lock");
            fs::write(lock.join("3"), "").expect("write a state");
        } else {
            locks.ok(&["lock", "h", "--client", "c1"]);
        }
        fs::write(lock.join("5"), "").expect("write a second state");
        let before = locks.state_files("h");
        assert_eq!(before.len(), 2, "{before:?}");
        for args in [
            &["status", "h", "--json"][..],
            &["status"],
            &["lock", "h", "--client", "c2"],
            &["lock", "h", "--no-lock-parents", "--no-lock-children"],
            &["lock", "h/child", "--client", "c2"],
            &["unlock", "h", "--client", "c1"],
        ] {
            let run = corrupt(&locks, args, "nodes/h/.lock");
            assert!(
                run.stderr
                    .starts_with("corrupt lock state nodes/h/.lock: it holds more than one file"),
                "hasp {args:?}: {run:?}"
            );
        }
        assert_eq!(locks.state_files("h"), before, "states kept");
        assert!(free_on_disk(&locks, "h/child"), "h/child was granted");
        locks.ok(&["lock", "q", "--client", "c2"]);
    }
}

both! {
    // On etcd the error names the disk path `nodes/job/.lock/<state>`, which
    // is not there, instead of the key `nodes/job`: guest/src/registry.rs
    // (`lock`) composes `{node}/.lock/{name}` on either store.
    fn the_last_fencing_number_is_never_followed_by_a_wrapped_one(locks: &Locks) {
        locks.ok(&["status"]);
        let last = u64::MAX.to_string();
        locks.plant("job", &last);
        let path = locks.state_path("job", &last);
        let run = corrupt(locks, &["lock", "job", "--client", "a"], &path);
        assert!(
            run.stderr.contains("no fencing number follows it"),
            "{run:?}"
        );
        // Nothing changed, and the node still reads as free.
        assert_eq!(locks.states("job"), [last]);
        assert_eq!(
            locks.json(&["status", "job", "--json"]),
            serde_json::Value::Null
        );
    }
}

both! {
    fn timeouts_out_of_range_exit_2_with_one_line_and_never_panic(locks: &Locks) {
        for args in [
            &["run", "--timeout", "1e30", "x.lock", "--", "true"][..],
            &[
                "run",
                "--timeout",
                "20000000000000000000",
                "x.lock",
                "--",
                "true",
            ],
            &["serve", "--request-timeout", "1e30"],
            &["plugin", "run", "--timeout", "1e30", "p.wasm"],
            &["lock", "x", "--ttl", "1e30"],
            &["lock", "x", "--wait", "99999999999999999999d"],
        ] {
            let run = locks.run(args);
            assert_eq!(
                (run.code, run.stdout.as_str()),
                (2, ""),
                "hasp {args:?}: {run:?}"
            );
            assert_eq!(run.stderr.lines().count(), 1, "hasp {args:?}: {run:?}");
            assert!(!run.stderr.contains("panicked"), "hasp {args:?}: {run:?}");
        }
        assert!(!locks.path().join("x.lock").exists());
    }
}

// ---- Special files, huge files and read-only or full disks (issue 14) ----

/// Runs `hasp --dir DIR ARGS...`, killing it if it has not finished within
/// 30 s (the deadline of a guest call; a refusal comes at once, so this is
/// a guard against hanging, not a measure of speed).
fn run_bounded(dir: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(crate::support::hasp_bin());
    cmd.arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("HASP_DIR")
        .env_remove("HASP_STORE");
    bounded(cmd, args)
}

/// Runs `cmd` (`hasp ... ARGS`) as [`run_bounded`] does.
fn bounded(mut cmd: Command, args: &[&str]) -> Run {
    use std::process::Stdio;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hasp");
    let pid = child.id();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(out) => Run::from(out.expect("wait for hasp")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child not yet reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("hasp {args:?} was still running after 30 s: it blocked");
        }
    }
}

/// Asserts exit 2, nothing on stdout, and one line on stderr holding each
/// of `parts`.
#[track_caller]
fn one_line_refusal(run: &Run, args: &[&str], parts: &[&str]) {
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.lines().count()),
        (2, "", 1),
        "hasp {args:?}: {run:?}"
    );
    for part in parts {
        assert!(
            run.stderr.contains(part),
            "hasp {args:?}: {part:?}? {run:?}"
        );
    }
}

/// The special files a test can make here: a FIFO and a socket always, a
/// character device (like /dev/zero) only as root.
#[derive(Clone, Copy, Debug)]
enum Special {
    Fifo,
    Socket,
    Device,
}

impl Special {
    fn all() -> Vec<Special> {
        if is_root() {
            vec![Special::Fifo, Special::Socket, Special::Device]
        } else {
            eprintln!("skipped: a character device in the lock directory needs root to make");
            vec![Special::Fifo, Special::Socket]
        }
    }

    /// Makes one at `path`; a socket lives as long as the listener returned.
    fn make(self, path: &Path) -> Option<std::os::unix::net::UnixListener> {
        use std::process::Command;
        match self {
            Special::Fifo => {
                assert!(Command::new("mkfifo")
                    .arg(path)
                    .status()
                    .expect("mkfifo")
                    .success());
                None
            }
            Special::Socket => Some(std::os::unix::net::UnixListener::bind(path).expect("bind")),
            Special::Device => {
                let status = Command::new("mknod")
                    .arg(path)
                    .args(["c", "1", "5"])
                    .status();
                assert!(status.expect("mknod").success());
                None
            }
        }
    }
}

#[test]
fn special_files_where_the_layout_belongs_are_refused_at_once() {
    // Opening a FIFO blocks until a writer comes, for ever: FORMAT, nodes
    // and tmp are looked at before anything opens them, by every command
    // and by the daemon at its start.
    let commands: [&[&str]; 5] = [
        &["status"],
        &["status", "x", "--json"],
        &["lock", "x", "--client", "c"],
        &["unlock", "x", "--client", "c"],
        &["serve", "--addr", "127.0.0.1:0"],
    ];
    for special in Special::all() {
        for place in ["FORMAT", "nodes", "tmp"] {
            let locks = Locks::new();
            if place != "FORMAT" {
                locks.ok(&["status"]);
                fs::remove_dir(locks.path().join(place)).expect("remove the layout's dir");
            }
            let _socket = special.make(&locks.path().join(place));
            let before = locks.tree();
            for args in commands {
                let run = run_bounded(locks.path(), args);
                one_line_refusal(&run, args, &[&format!("cannot use {place}: it is a ")]);
                assert_eq!(locks.tree(), before, "{special:?} {place}: hasp {args:?}");
            }
        }
    }
}

#[test]
fn special_files_where_a_node_belongs_are_refused_at_once() {
    // A node directory and its `.lock` are looked at before they are opened.
    for special in Special::all() {
        for place in ["nodes/x", "nodes/x/.lock"] {
            let locks = Locks::new();
            locks.ok(&["lock", "x", "--client", "c"]);
            locks.ok(&["unlock", "x", "--client", "c"]);
            fs::remove_dir_all(locks.path().join(place)).expect("remove the node's dir");
            let _socket = special.make(&locks.path().join(place));
            let before = locks.tree();
            for args in [
                &["status", "x", "--json"][..],
                &["lock", "x", "--client", "c"],
                &["lock", "x/y", "--client", "c"],
                &["unlock", "x", "--client", "c"],
            ] {
                let run = run_bounded(locks.path(), args);
                one_line_refusal(&run, args, &[place]);
                assert_eq!(locks.tree(), before, "{special:?} {place}: hasp {args:?}");
            }
            // The listing skips what is not a directory, or names it.
            let run = run_bounded(locks.path(), &["status"]);
            if place == "nodes/x" {
                assert_eq!(run.code, 0, "{special:?} {place}: {run:?}");
            } else {
                one_line_refusal(&run, &["status"], &[place]);
            }
        }
    }
}

/// A file of `len` bytes beginning with `head`, the rest a hole (sparse:
/// no space is used, and reading it gives zeros).
fn sparse(path: &Path, head: &[u8], len: u64) {
    let file = fs::File::create(path).expect("create");
    std::io::Write::write_all(&mut &file, head).expect("write");
    file.set_len(len).expect("extend");
}

#[test]
fn format_is_read_no_further_than_its_first_bytes() {
    const GIB: u64 = 1 << 30;
    // Endless or huge, refused in one line, never read whole (a read of the
    // whole would pass the guest's 256 MiB memory cap and trap).
    let locks = Locks::new();
    let format = locks.path().join("FORMAT");
    sparse(&format, b"", GIB);
    let args = ["status"];
    let run = run_bounded(locks.path(), &args);
    one_line_refusal(
        &run,
        &args,
        &["FORMAT says '\\0\\0\\0", "incompatible hasp"],
    );
    assert_eq!(fs::metadata(&format).expect("stat").len(), GIB);

    fs::remove_file(&format).expect("remove");
    std::os::unix::fs::symlink("/dev/zero", &format).expect("symlink");
    let run = run_bounded(locks.path(), &args);
    one_line_refusal(&run, &args, &["refusing to follow the symlink FORMAT"]);

    if is_root() {
        fs::remove_file(&format).expect("remove");
        Special::Device.make(&format);
        let run = run_bounded(locks.path(), &args);
        one_line_refusal(
            &run,
            &args,
            &["cannot use FORMAT: it is a character device, not a regular file"],
        );
    } else {
        eprintln!("skipped: FORMAT as a character device needs root to make");
    }

    // The right line followed by a gigabyte: only the line counts.
    let locks = Locks::new();
    locks.ok(&["status"]);
    sparse(&locks.path().join("FORMAT"), b"hasp-lock-dir 3\n", GIB);
    locks.ok(&["lock", "x", "--client", "c"]);
    assert_eq!(locks.json(&["status", "x", "--json"])["client"], "c");
}

#[test]
fn wrong_kinds_of_file_in_the_layout_are_named_in_words() {
    for (place, what, wanted) in [
        ("FORMAT", "a directory", "a regular file"),
        ("nodes", "a regular file", "a directory"),
        ("tmp", "a regular file", "a directory"),
    ] {
        let locks = Locks::new();
        if place == "FORMAT" {
            fs::create_dir(locks.path().join(place)).expect("mkdir");
        } else {
            locks.ok(&["status"]);
            fs::remove_dir(locks.path().join(place)).expect("rmdir");
            fs::write(locks.path().join(place), "x\n").expect("write");
        }
        for args in [&["status"][..], &["lock", "x", "--client", "c"]] {
            rejected(
                &locks,
                args,
                &format!("cannot use {place}: it is {what}, not {wanted}"),
            );
        }
    }
}

#[test]
fn a_read_only_lock_dir_is_called_read_only() {
    let Some(mount) = Tmpfs::mount("size=1m") else {
        // Without root: a directory this user cannot write is reported as
        // such (chmod does not stop root, hence the mount above).
        if is_root() {
            eprintln!("skipped: the permission-denied variant cannot run as root");
            return;
        }
        let locks = Locks::new();
        setup(&locks);
        let unwritable = fs::Permissions::from_mode(0o555);
        let writable = fs::Permissions::from_mode(0o755);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(locks.path().join("nodes"), unwritable).expect("chmod");
        let run = locks.run(&["lock", "other", "--client", "c"]);
        fs::set_permissions(locks.path().join("nodes"), writable).expect("chmod");
        one_line_refusal(
            &run,
            &["lock"],
            &["cannot create nodes/other: permission denied"],
        );
        return;
    };
    let dir = mount.path();
    let ok = |args: &[&str]| {
        let run = hasp_in(dir, args);
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (0, ""),
            "{args:?}: {run:?}"
        );
        run.stdout
    };
    ok(&["lock", "held", "--client", "owner"]);
    mount.remount("ro");
    let refusals: [(&[&str], &str); 3] = [
        (
            &["lock", "other", "--client", "c"],
            "cannot create nodes/other",
        ),
        (
            &["unlock", "held", "--client", "owner"],
            "cannot rename nodes/held/.lock/",
        ),
        (
            &["run", "x.lock", "--", "echo", "ran"],
            "cannot open x.lock",
        ),
    ];
    for (args, start) in refusals {
        let run = hasp_in(dir, args);
        one_line_refusal(
            &run,
            args,
            &[start, ": read-only filesystem (lock directory "],
        );
    }
    // Reading needs no writing.
    assert!(ok(&["status"]).contains("held"));
    mount.remount("rw");
    ok(&["unlock", "held", "--client", "owner"]);
}

#[test]
fn no_space_for_a_first_format_says_so_and_leaves_nothing_staged() {
    // Every try used to leave its `tmp/<uuid>.FORMAT` behind.
    let Some(mount) = Tmpfs::mount("size=64k") else {
        return;
    };
    let dir = mount.path().join("locks");
    fs::create_dir(&dir).expect("mkdir");
    let filler = mount.path().join("filler");
    let mut file = fs::File::create(&filler).expect("create");
    let full = std::io::Write::write_all(&mut file, &vec![0u8; 1 << 20]);
    assert!(full.is_err(), "64 KiB took 1 MiB?");
    drop(file);
    for _ in 0..3 {
        let run = hasp_in(&dir, &["status"]);
        one_line_refusal(
            &run,
            &["status"],
            &["cannot write tmp/", ".FORMAT: no space left on the device"],
        );
        assert!(
            empty_dir(&dir.join("tmp")),
            "{:?}",
            fs::read_dir(dir.join("tmp"))
        );
    }
    assert!(!dir.join("FORMAT").exists());
    // Room again: the directory is laid out, with nothing left in tmp.
    fs::remove_file(&filler).expect("rm");
    let run = hasp_in(&dir, &["lock", "x", "--client", "c"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert!(empty_dir(&dir.join("tmp")));
}

#[test]
fn no_inode_for_a_new_node_names_its_whole_path_and_leaves_nothing_staged() {
    let Some(mount) = Tmpfs::mount("nr_inodes=64") else {
        return;
    };
    let dir = mount.path().join("locks");
    fs::create_dir(&dir).expect("mkdir");
    let run = hasp_in(&dir, &["lock", "held", "--client", "owner"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Every inode taken, then one given back: enough for the node's
    // directory, not for its first state staged in tmp.
    let fill = mount.path().join("inodes");
    fs::create_dir(&fill).expect("mkdir");
    let mut made = 0;
    while fs::File::create(fill.join(made.to_string())).is_ok() {
        made += 1;
    }
    assert!(made > 0);
    fs::remove_file(fill.join("0")).expect("free one inode");
    let run = hasp_in(&dir, &["lock", "new", "--client", "c"]);
    one_line_refusal(
        &run,
        &["lock"],
        &["cannot create tmp/", ": no space left on the device"],
    );
    assert!(empty_dir(&dir.join("tmp")));
    // Once there is room again, everything works, and held locks unlock.
    fs::remove_dir_all(&fill).expect("free the inodes");
    for args in [
        &["lock", "new", "--client", "c"][..],
        &["unlock", "new", "--client", "c"],
        &["unlock", "held", "--client", "owner"],
    ] {
        let run = hasp_in(&dir, args);
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (0, ""),
            "{args:?}: {run:?}"
        );
    }
    assert!(empty_dir(&dir.join("tmp")));
}

#[test]
fn out_of_descriptors_is_called_too_many_open_files() {
    // WASI reports EMFILE as an input/output error; the host names it.
    let locks = Locks::new();
    locks.ok(&["status"]);
    let mut failed = 0;
    for limit in 5..=24 {
        let resource = format!("r{limit}/b/c/d");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(crate::support::hasp_bin())
            .arg("--dir")
            .arg(locks.path())
            .args(["lock", &resource, "--client", "c"])
            .env_remove("HASP_DIR")
            .output()
            .expect("run sh");
        let run = Run::from(out);
        if run.code == 0 {
            continue;
        }
        failed += 1;
        assert_eq!(
            (run.code, run.stderr.lines().count()),
            (2, 1),
            "{limit}: {run:?}"
        );
        assert!(
            run.stderr.to_lowercase().contains("too many open files"),
            "ulimit -n {limit}: {run:?}"
        );
    }
    assert!(failed > 0, "no limit from 5 to 24 open files was too few");
}

both! {
    fn a_state_file_named_with_a_newline_is_reported_on_one_line(locks: &Locks) {
        locks.ok(&["lock", "odd", "--client", "a"]);
        // The only state (file name, or key's value), one that does not parse.
        locks.plant("odd", "1+x\nFAKE LINE");
        let run = locks.run(&["status", "odd"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        // Escaped: on disk in the state's path, on etcd (which names the
        // key) in what is wrong with its value.
        assert!(
            run.stderr.starts_with("corrupt lock state nodes/odd"),
            "{run:?}"
        );
        let shown = if locks.is_etcd() {
            "\"x\\nFAKE LINE\" is not an unlock token"
        } else {
            "1+x\\nFAKE LINE"
        };
        assert!(run.stderr.contains(shown), "{run:?}");
    }
}

// ---- Flags and arguments (issue 14 review) ----

both! {
    fn every_misuse_of_flags_and_arguments_is_one_line_and_exit_2(locks: &Locks) {
        let serve = |more: &[&'static str]| {
            let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
            args.extend_from_slice(more);
            args
        };
        let cases: Vec<(Vec<&str>, &str)> = vec![
            // Would time out every request not in the first packet.
            (
                serve(&["--request-timeout", "0"]),
                "less than a millisecond",
            ),
            (
                serve(&["--request-timeout", "1e-30"]),
                "less than a millisecond",
            ),
            (
                serve(&["--request-timeout", "0.0009"]),
                "less than a millisecond",
            ),
            (serve(&["--workers", "0"]), "from 1 to 1024"),
            (serve(&["--workers", "2592000"]), "from 1 to 1024"),
            (serve(&["--max-connections", "0"]), "1 or more"),
            (serve(&["--ttl", "-1"]), "unexpected argument '--ttl'"),
            (
                serve(&["--port"]),
                "a value is required for '--port <PORT>'",
            ),
            (
                vec!["lock"],
                "required arguments were not provided: <RESOURCE>",
            ),
            (vec!["lock", "a", "b"], "unexpected argument 'b'"),
            (vec!["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        ];
        for (args, part) in &cases {
            let run = bounded(locks.command(args), args);
            one_line_refusal(&run, args, &[part]);
        }
        // A clap error past the value checks says where to read more.
        let run = bounded(locks.command(&["frobnicate"]), &["frobnicate"]);
        assert!(run.stderr.ends_with(" (see hasp --help)\n"), "{run:?}");
        // An argument that is not UTF-8.
        let out = locks
            .command(&["lock"])
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff"))
            .output()
            .expect("run hasp");
        one_line_refusal(&Run::from(out), &["lock", "\\xff"], &["invalid UTF-8"]);
        // Help and the version are still whole, on stdout.
        let help = locks.run(&["serve", "--help"]);
        assert_eq!(help.code, 0, "{help:?}");
        assert!(help.stdout.lines().count() > 10, "{help:?}");
        assert!(help.stdout.contains("0.001 at least"), "{help:?}");
        assert_eq!(locks.run(&["--version"]).code, 0);
    }
}

both! {
    fn a_token_file_must_be_a_small_regular_file_holding_one_word(locks: &Locks) {
        let secrets = tempfile::tempdir().expect("temp dir");
        let at = |name: &str| {
            secrets
                .path()
                .join(name)
                .to_str()
                .expect("UTF-8")
                .to_string()
        };
        let fifo = std::ffi::CString::new(at("fifo")).expect("a path");
        // SAFETY: mkfifo(3) on a NUL-terminated path this test owns.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        fs::write(at("big"), "a".repeat(5000)).expect("write");
        fs::write(at("spaced"), "two words\n").expect("write");
        fs::write(at("newline"), "line1\nline2\n").expect("write");
        fs::write(at("control"), "tok\x07en").expect("write");
        fs::write(at("good"), "  s3cret\n").expect("write");
        for (file, part) in [
            (at("fifo"), "is not a regular file"),
            ("/dev/zero".to_string(), "is not a regular file"),
            (
                secrets.path().to_str().expect("UTF-8").to_string(),
                "is not a regular file",
            ),
            (at("big"), "larger than 4 KiB"),
            (at("spaced"), "whitespace or control characters inside"),
            (at("newline"), "whitespace or control characters inside"),
            (at("control"), "whitespace or control characters inside"),
        ] {
            let args = ["serve", "--addr", "127.0.0.1:0", "--token-file", &file];
            let run = bounded(locks.command(&args), &args);
            one_line_refusal(&run, &args, &[&format!("--token-file {file} "), part]);
        }
    }
}

#[test]
fn bad_store_urls_exit_2_with_one_line_and_touch_nothing() {
    // The store is named before anything runs: by --store or $HASP_STORE.
    let locks = Locks::new();
    let prefix_rule = "the prefix is at most 256 bytes of /-separated names";
    let long = format!("etcd://127.0.0.1:2379/{}", "p".repeat(257));
    for (url, part) in [
        ("", "the only store URLs are etcd://"),
        ("http://127.0.0.1:2379", "the only store URLs are etcd://"),
        ("etcd://", "'' is not HOST:PORT"),
        ("etcd://127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
        ("etcd://127.0.0.1:0", "'127.0.0.1:0' is not HOST:PORT"),
        (
            "etcd://127.0.0.1:99999",
            "'127.0.0.1:99999' is not HOST:PORT",
        ),
        ("etcd://127.0.0.1:2379,", "'' is not HOST:PORT"),
        ("etcd://127.0.0.1:2379/a/../b", prefix_rule),
        ("etcd://127.0.0.1:2379/a//b", prefix_rule),
        ("etcd://127.0.0.1:2379/a b", prefix_rule),
        ("etcd://127.0.0.1:2379/100%", prefix_rule),
        ("etcd://127.0.0.1:2379/a\nb", prefix_rule),
        (long.as_str(), prefix_rule),
    ] {
        let commands: [&[&str]; 6] = [
            &["lock", "x", "--client", "c"],
            &["lock", "x", "--client", "c", "--", "true"],
            &["unlock", "x", "--client", "c"],
            &["renew", "x", "--client", "c"],
            &["status"],
            &["serve", "--addr", "127.0.0.1:0"],
        ];
        for args in commands {
            let mut by_flag = locks.command(&["--store", url]);
            by_flag.args(args);
            let mut by_env = locks.command(args);
            by_env.env("HASP_STORE", url);
            for cmd in [by_flag, by_env] {
                let run = bounded(cmd, args);
                one_line_refusal(&run, args, &[&format!("invalid store {url:?}: "), part]);
            }
        }
    }
    assert!(empty_dir(locks.path()), "something was written");
}
