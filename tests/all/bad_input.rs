//! Bad input and broken lock directories: exit 2, a one-line message, and
//! nothing changed on disk (and nothing ever granted).

use crate::support::{already, hasp_in, Locks, Run};
use std::fs;
use std::path::Path;

/// A lock directory already laid out, with one lock (`held`, by `owner`).
fn setup() -> Locks {
    let locks = Locks::new();
    locks.ok(&["lock", "held", "--client", "owner"]);
    locks.ok(&["lock", "tree/a/b", "--client", "owner"]);
    locks
}

/// Runs `args`, expects exit 2 with one line on stderr starting with
/// `message`, nothing on stdout, and the lock directory unchanged.
#[track_caller]
fn rejected(locks: &Locks, args: &[&str], message: &str) {
    let before = locks.tree();
    let run = locks.run(args);
    assert_eq!(run.code, 2, "hasp {args:?}: {run:?}");
    assert_eq!(run.stdout, "", "hasp {args:?}");
    assert!(
        run.stderr.starts_with(message) && run.stderr.ends_with('\n'),
        "hasp {args:?}: expected {message:?}...: {run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "hasp {args:?}: {run:?}");
    assert_eq!(
        locks.tree(),
        before,
        "hasp {args:?} changed the lock directory"
    );
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

#[test]
fn empty_names_are_rejected() {
    let locks = setup();
    for name in ["", "/", "//"] {
        bad_name(&locks, name);
    }
    still_held(&locks);
}

#[test]
fn dot_and_dot_dot_segments_are_rejected() {
    let locks = setup();
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
        bad_name(&locks, name);
    }
    still_held(&locks);
}

#[test]
fn empty_segments_are_rejected() {
    let locks = setup();
    for name in [
        "a//b",
        "//held",
        "held//",
        "//held//",
        "tree//a",
        "tree/a//b",
    ] {
        bad_name(&locks, name);
    }
    still_held(&locks);
}

#[test]
fn control_characters_in_names_are_rejected_and_shown_escaped() {
    let locks = setup();
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
        bad_name(&locks, name);
    }
    let run = locks.run(&["lock", "evil\nResource not locked", "--client", "c"]);
    assert_eq!(
        run.stderr,
        "invalid resource name 'evil\\nResource not locked': it contains the control character '\\n'\n"
    );
    still_held(&locks);
}

#[test]
fn names_over_1024_bytes_are_rejected() {
    let locks = setup();
    let seg = "a".repeat(200);
    let long = format!("{seg}/{seg}/{seg}/{seg}/{seg}/bbbbbbbbbbbbbbbbbbbb");
    assert_eq!(long.len(), 1025);
    bad_name(&locks, &long);
    // Multi-byte characters count in bytes.
    let wide = format!("{seg}/{seg}/{seg}/{seg}/{seg}/{}", "é".repeat(10));
    assert_eq!(wide.len(), 1025);
    bad_name(&locks, &wide);
    still_held(&locks);
}

#[test]
fn segments_over_200_bytes_are_rejected() {
    let locks = setup();
    bad_name(&locks, &"s".repeat(201));
    bad_name(&locks, &format!("tree/{}/x", "s".repeat(201)));
    bad_name(&locks, &"é".repeat(101));
    // `%` is stored as `%25`: 67 of them take 201 bytes on disk.
    bad_name(&locks, &"%".repeat(67));
    still_held(&locks);
}

#[test]
fn longest_accepted_names_and_client_ids_work() {
    let locks = setup();
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

#[test]
fn bad_client_ids_are_rejected() {
    let locks = setup();
    let msg = "invalid client id '";
    for client in ["", "c\nd", "c\x01", "c\x7f", "\u{85}", "owner\n"] {
        rejected(&locks, &["lock", "free", "--client", client], msg);
        rejected(&locks, &["lock", "held", "--client", client], msg);
        // Not "not owner" (exit 1): the id is refused before anything else.
        rejected(&locks, &["unlock", "held", "--client", client], msg);
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
            rejected(&locks, args, msg);
            let run = locks.run(args);
            assert!(
                run.stderr
                    .ends_with("': it is longer than 160 bytes on disk\n"),
                "hasp {args:?}: {run:?}"
            );
        }
    }
    still_held(&locks);
}

#[test]
fn malformed_tokens_are_rejected() {
    let locks = setup();
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
        rejected(&locks, &["unlock", "held", "--token", token], msg);
        rejected(&locks, &["unlock", "free", "--token", token], msg);
    }
    still_held(&locks);
}

#[test]
fn nul_is_rejected_as_invalid_input_through_the_api() {
    let locks = setup();
    let before = locks.tree();
    let mut registry = hasp::Registry::open(locks.path()).expect("open");
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
    assert_eq!(locks.tree(), before);
    still_held(&locks);
}

#[test]
fn absolute_host_paths_are_names_inside_the_lock_dir() {
    let locks = setup();
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
    assert!(locks.path().join("nodes/etc/passwd").is_dir());
    locks.ok(&["unlock", "/etc/passwd", "--client", "c1"]);
    assert_eq!(passwd(), before);
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

fn empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir)
        .expect("read outside dir")
        .next()
        .is_none()
}

#[test]
fn symlinked_node_leading_out_is_refused_and_nothing_is_created_outside() {
    let locks = setup();
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

/// Locks `p/res` for real (by `c1`), then renames its state to `name`.
/// Returns the token of the lock and the state's path relative to the lock
/// directory.
fn corrupt_state(locks: &Locks, name: &str) -> (String, String) {
    let grant = locks.json(&["lock", "p/res", "--client", "c1", "--json"]);
    let token = grant["token"].as_str().expect("token").to_string();
    let states = locks.state_files("p/res");
    assert_eq!(states.len(), 1, "one state in p/res: {states:?}");
    let lock = locks.path().join("nodes/p/res/.lock");
    fs::rename(lock.join(&states[0]), lock.join(name)).expect("rename the state");
    (token, format!("nodes/p/res/.lock/{name}"))
}

/// Whether nothing holds the node `node` on disk: it was never made, or its
/// one state is a free one (a bare number).
fn free_on_disk(locks: &Locks, node: &str) -> bool {
    match locks.state_files(node).as_slice() {
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
    assert_eq!(run.stderr.lines().count(), 1, "hasp {args:?}: {run:?}");
    run
}

#[test]
fn corrupt_state_is_reported_with_its_file_and_never_granted_over() {
    for name in corrupt_names() {
        let locks = Locks::new();
        let (token, rel) = corrupt_state(&locks, &name);
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
            corrupt(&locks, args, &rel);
        }
        assert_eq!(locks.state_files("p/res"), [name.as_str()], "state kept");
        for node in ["p", "p/res/child"] {
            assert!(free_on_disk(&locks, node), "{name}: {node} was granted");
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

#[test]
fn corrupt_child_state_keeps_its_parent_from_being_granted() {
    // Whether the unreadable lock on p/res blocks its parent cannot be known,
    // so locking `p` with lock-children must fail (exit 2, naming the state)
    // like locking `p/res/child` does, never grant.
    for name in corrupt_names() {
        let locks = Locks::new();
        let (_, rel) = corrupt_state(&locks, &name);
        corrupt(&locks, &["lock", "p", "--client", "c2"], &rel);
        assert!(free_on_disk(&locks, "p"), "{name}: p was granted");
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

#[test]
fn hand_made_bad_states_are_reported_with_their_file() {
    for name in corrupt_names() {
        let locks = Locks::new();
        locks.ok(&["status"]);
        let lock = locks.path().join("nodes/h/.lock");
        fs::create_dir_all(&lock).expect("make .lock");
        fs::write(lock.join(&name), "").expect("write the state");
        let rel = format!("nodes/h/.lock/{name}");
        for args in [
            &["status", "h", "--json"][..],
            &["status"],
            &["lock", "h", "--client", "c"],
            &["lock", "h/child", "--client", "c"],
            &["unlock", "h", "--client", "c"],
        ] {
            corrupt(&locks, args, &rel);
        }
        assert_eq!(locks.state_files("h"), [name.as_str()], "state kept");
        assert!(free_on_disk(&locks, "h/child"), "{name}: h/child granted");
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

#[test]
fn the_last_fencing_number_is_never_followed_by_a_wrapped_one() {
    let locks = Locks::new();
    locks.ok(&["status"]);
    let lock = locks.path().join("nodes/job/.lock");
    fs::create_dir_all(&lock).expect("make .lock");
    let last = u64::MAX.to_string();
    fs::write(lock.join(&last), "").expect("write the state");
    let path = format!("nodes/job/.lock/{last}");
    let run = corrupt(&locks, &["lock", "job", "--client", "a"], &path);
    assert!(
        run.stderr.contains("no fencing number follows it"),
        "{run:?}"
    );
    // Nothing changed, and the node still reads as free.
    assert_eq!(locks.state_files("job"), [last]);
    assert_eq!(
        locks.json(&["status", "job", "--json"]),
        serde_json::Value::Null
    );
}

#[test]
fn timeouts_out_of_range_exit_2_with_one_line_and_never_panic() {
    let locks = Locks::new();
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
