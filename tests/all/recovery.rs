//! What a process killed in the middle of a call leaves in the lock
//! directory, and how the next hasp process deals with it. Every change of a
//! lock is one `rename` of the one file in its node's `.lock`, so a kill
//! never leaves a torn state, only a whole one nobody will finish: a held
//! state whose holder is gone (killed after its commit, or between its
//! commit and the check of related locks), or a staging directory in `tmp/`
//! (killed while making a node). The states are written by hand, exactly as
//! docs/FORMAT.md ("The state file", "Why two processes never both
//! succeed") describes them, so no test depends on when a kill lands.

use crate::support::{already, Locks};
use serde_json::{json, Value};
use std::fs;

/// The unlock token of the locks committed by hand.
const GHOST: &str = "00000000-0000-4000-8000-00000000dead";
/// Their grant time, 2023-11-14T22:13:20Z, in milliseconds.
const SINCE: u64 = 1_700_000_000_000;

/// The held state name of a lock with token [`GHOST`], granted at [`SINCE`]:
/// `flags` and `client` as they are written on disk (`client` escaped,
/// `None` for an anonymous lock).
fn held_name(fencing: u64, flags: &str, client: Option<&str>) -> String {
    let mut name = format!("{fencing}+{GHOST}+{flags}+{SINCE}");
    if let Some(client) = client {
        name.push('+');
        name.push_str(client);
    }
    name
}

/// The one state file of `resource`'s node.
#[track_caller]
fn only_state(locks: &Locks, resource: &str) -> String {
    let names = locks.state_files(resource);
    assert_eq!(names.len(), 1, "{resource}: {names:?}");
    names[0].clone()
}

/// Whether nothing holds `resource` on disk: its node was never made, or its
/// one state is a free one (a bare number).
fn free_on_disk(locks: &Locks, resource: &str) -> bool {
    match locks.state_files(resource).as_slice() {
        [] => true,
        [one] => !one.is_empty() && one.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

/// Commits a lock on `resource` by hand, as a locker killed right after its
/// commit step leaves it: the node is made by a real lock and unlock, then
/// its free state `n` is renamed to a held state with fencing `n + 1`.
/// Returns that fencing number.
#[track_caller]
fn commit_by_hand(locks: &Locks, resource: &str, flags: &str, client: Option<&str>) -> u64 {
    locks.ok(&[
        "lock",
        resource,
        "--client",
        "setup",
        "--no-lock-parents",
        "--no-lock-children",
    ]);
    locks.ok(&["unlock", resource, "--client", "setup"]);
    let free = only_state(locks, resource);
    let n: u64 = free
        .parse()
        .unwrap_or_else(|_| panic!("{resource} is not free: {free:?}"));
    let lock = locks.path().join("nodes").join(resource).join(".lock");
    let held = held_name(n + 1, flags, client);
    fs::rename(lock.join(&free), lock.join(&held)).expect("commit by hand");
    n + 1
}

#[test]
fn a_grant_is_the_one_file_name_in_its_lock_dir_as_documented() {
    let locks = Locks::new();
    let grant = locks.json(&["lock", "job", "--client", "ci/1%+x", "--json"]);
    let token = grant["token"].as_str().expect("token");
    let since = grant["since_ms"].as_u64().expect("since_ms");
    assert_eq!(
        locks.state_files("job"),
        [format!("1+{token}+pc+{since}+ci%2F1%25+x")]
    );
    locks.ok(&["unlock", "job", "--token", token]);
    assert_eq!(locks.state_files("job"), ["1"]);

    let grant = locks.json(&["lock", "job", "--no-lock-parents", "--json"]);
    let token = grant["token"].as_str().expect("token");
    let since = grant["since_ms"].as_u64().expect("since_ms");
    assert_eq!(locks.state_files("job"), [format!("2+{token}+-c+{since}")]);
    locks.ok(&["unlock", "job", "--token", token]);
    assert_eq!(locks.state_files("job"), ["2"]);
}

#[test]
fn held_state_of_a_killed_holder_is_refused_shown_and_released_by_its_client() {
    let locks = Locks::new();
    let fencing = commit_by_hand(&locks, "job", "pc", Some("ghost"));
    assert_eq!(fencing, 2);

    locks
        .run(&["lock", "job", "--client", "b"])
        .assert_refused(1, &already("ghost"));
    locks
        .run(&["lock", "job/part", "--client", "b"])
        .assert_refused(1, &already("ghost"));
    let shown = json!({
        "resource": "job",
        "client": "ghost",
        "fencing": 2,
        "since_ms": SINCE,
        "lock_parents": true,
        "lock_children": true,
    });
    assert_eq!(locks.json(&["status", "job", "--json"]), shown);
    assert_eq!(locks.json(&["status", "--json"]), json!([shown]));

    locks
        .run(&["unlock", "job", "--client", "b"])
        .assert_refused(1, "Resource locked by 'ghost' cannot be unlocked by 'b'");
    assert_eq!(only_state(&locks, "job"), held_name(2, "pc", Some("ghost")));
    locks.ok(&["unlock", "job", "--client", "ghost"]);
    assert_eq!(locks.state_files("job"), ["2"]);
    assert_eq!(locks.json(&["status", "job", "--json"]), Value::Null);

    let grant = locks.json(&["lock", "job", "--client", "b", "--json"]);
    assert_eq!(grant["fencing"], 3, "{grant}");
}

#[test]
fn held_state_of_a_killed_anonymous_holder_is_released_by_its_token() {
    let locks = Locks::new();
    let fencing = commit_by_hand(&locks, "job", "--", None);

    locks
        .run(&["lock", "job", "--client", "b"])
        .assert_refused(1, &already("?"));
    assert_eq!(
        locks.json(&["status", "job", "--json"]),
        json!({
            "resource": "job",
            "client": null,
            "fencing": fencing,
            "since_ms": SINCE,
            "lock_parents": false,
            "lock_children": false,
        })
    );
    // Without lock-children it does not keep a child from being locked.
    locks.ok(&["lock", "job/part", "--client", "b"]);
    locks.ok(&["unlock", "job/part", "--client", "b"]);

    locks
        .run(&["unlock", "job", "--client", "ghost"])
        .assert_refused(1, "Resource locked by '?' cannot be unlocked by 'ghost'");
    locks
        .run(&[
            "unlock",
            "job",
            "--token",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b",
        ])
        .assert_refused(
            1,
            "Resource locked by '?' cannot be unlocked with this token",
        );
    assert_eq!(only_state(&locks, "job"), held_name(fencing, "--", None));
    locks.ok(&["unlock", "job", "--token", GHOST]);
    assert_eq!(locks.state_files("job"), [fencing.to_string()]);
    locks
        .run(&["unlock", "job", "--token", GHOST])
        .assert_refused(1, "Resource not locked");

    let grant = locks.json(&["lock", "job", "--json"]);
    assert_eq!(grant["fencing"], fencing + 1, "{grant}");
}

#[test]
fn escaped_client_id_in_a_held_state_is_shown_and_unlocks_as_written() {
    let locks = Locks::new();
    commit_by_hand(&locks, "job", "pc", Some("a%2Fb%25c+d"));
    assert_eq!(
        locks.json(&["status", "job", "--json"])["client"],
        "a/b%c+d"
    );
    locks
        .run(&["lock", "job", "--client", "a/b%c+d"])
        .assert_refused(1, &already("a/b%c+d"));
    locks
        .run(&["unlock", "job", "--client", "a%2Fb%25c+d"])
        .assert_refused(
            1,
            "Resource locked by 'a/b%c+d' cannot be unlocked by 'a%2Fb%25c+d'",
        );
    locks.ok(&["unlock", "job", "--client", "a/b%c+d"]);
    assert_eq!(locks.json(&["status", "job", "--json"]), Value::Null);
}

#[test]
fn attempt_killed_before_checking_its_parent_is_released_like_any_lock() {
    // `app` is held; a locker of `app/db` committed, then died before it
    // looked at `app`: a lock nobody was ever told about, that conflicts.
    let locks = Locks::new();
    locks.ok(&["lock", "app", "--client", "a"]);
    let ghost = commit_by_hand(&locks, "app/db", "pc", Some("ghost"));
    assert_eq!(locks.json(&["status", "app", "--json"])["client"], "a");
    assert_eq!(
        locks.json(&["status", "app/db", "--json"])["client"],
        "ghost"
    );

    locks.ok(&["unlock", "app/db", "--client", "ghost"]);
    assert_eq!(locks.state_files("app/db"), [ghost.to_string()]);
    // `app` is untouched, and still keeps its children from being locked.
    assert_eq!(locks.json(&["status", "app", "--json"])["client"], "a");
    locks
        .run(&["lock", "app/db", "--client", "b"])
        .assert_refused(1, &already("a"));
    locks.ok(&["unlock", "app", "--client", "a"]);
    let grant = locks.json(&["lock", "app/db", "--client", "b", "--json"]);
    assert!(
        grant["fencing"].as_u64().expect("fencing") > ghost,
        "{grant} reuses the number of the killed attempt"
    );
}

#[test]
fn held_child_state_blocks_its_parent_only_with_lock_parents() {
    for (flags, blocks) in [("pc", true), ("p-", true), ("-c", false), ("--", false)] {
        let locks = Locks::new();
        commit_by_hand(&locks, "app/db", flags, Some("ghost"));

        let run = locks.run(&["lock", "app", "--client", "b"]);
        if blocks {
            run.assert_refused(1, &already("ghost"));
            assert_eq!(
                locks.json(&["status", "app", "--json"]),
                Value::Null,
                "{flags}"
            );
            assert!(free_on_disk(&locks, "app"), "{flags}: app was granted");
            // A parent lock without lock-children never conflicts.
            locks.ok(&["lock", "app", "--client", "b", "--no-lock-children"]);
        } else {
            assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{flags}: {run:?}");
        }
        assert_eq!(
            locks.json(&["status", "app", "--json"])["client"],
            "b",
            "{flags}"
        );
        assert_eq!(
            locks.json(&["status", "app/db", "--json"])["client"],
            "ghost",
            "{flags}"
        );
    }
}

#[test]
fn held_parent_state_blocks_its_children_only_with_lock_children() {
    for (flags, blocks) in [("pc", true), ("-c", true), ("p-", false), ("--", false)] {
        let locks = Locks::new();
        commit_by_hand(&locks, "app", flags, Some("ghost"));

        let run = locks.run(&["lock", "app/db", "--client", "b"]);
        if blocks {
            run.assert_refused(1, &already("ghost"));
            assert_eq!(
                locks.json(&["status", "app/db", "--json"]),
                Value::Null,
                "{flags}"
            );
            assert!(
                free_on_disk(&locks, "app/db"),
                "{flags}: app/db was granted"
            );
            // A child lock without lock-parents never conflicts.
            locks.ok(&["lock", "app/db", "--client", "b", "--no-lock-parents"]);
        } else {
            assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{flags}: {run:?}");
        }
        assert_eq!(
            locks.json(&["status", "app/db", "--json"])["client"],
            "b",
            "{flags}"
        );
        assert_eq!(
            locks.json(&["status", "app", "--json"])["client"],
            "ghost",
            "{flags}"
        );
    }
}

#[test]
fn fencing_continues_from_a_free_state_written_by_hand() {
    let locks = Locks::new();
    locks.ok(&["status"]);
    let lock = locks.path().join("nodes/job/.lock");
    fs::create_dir_all(&lock).expect("make .lock");
    fs::write(lock.join("41"), "").expect("write the state");
    assert_eq!(locks.json(&["status", "job", "--json"]), Value::Null);
    assert_eq!(locks.json(&["status", "--json"]), json!([]));

    let grant = locks.json(&["lock", "job", "--client", "a", "--json"]);
    assert_eq!(grant["fencing"], 42, "{grant}");
    locks.ok(&["unlock", "job", "--client", "a"]);
    assert_eq!(locks.state_files("job"), ["42"]);
    let grant = locks.json(&["lock", "job", "--client", "a", "--json"]);
    assert_eq!(grant["fencing"], 43, "{grant}");
}

#[test]
fn what_a_process_killed_while_making_a_node_leaves_is_ignored() {
    let locks = Locks::new();
    locks.ok(&["status"]);
    // Killed after staging the first state of a node, before moving it in:
    // a directory in `tmp/`, and a node directory without `.lock`.
    let staged = locks
        .path()
        .join("tmp/00000000-0000-4000-8000-0000000057a1");
    fs::create_dir(&staged).expect("make the staging dir");
    fs::write(staged.join("0"), "").expect("write the staged state");
    fs::create_dir_all(locks.path().join("nodes/half")).expect("make the node dir");

    assert_eq!(locks.json(&["status", "half", "--json"]), Value::Null);
    assert_eq!(locks.json(&["status", "--json"]), json!([]));
    let grant = locks.json(&["lock", "half", "--client", "a", "--json"]);
    assert_eq!(grant["fencing"], 1, "{grant}");
    let grant = locks.json(&["lock", "other", "--client", "a", "--json"]);
    assert_eq!(grant["fencing"], 1, "{grant}");
    locks
        .run(&["lock", "half/x", "--client", "b"])
        .assert_refused(1, &already("a"));
    let all = locks.json(&["status", "--json"]);
    let mut listed: Vec<&str> = all
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|h| h["resource"].as_str().expect("a name"))
        .collect();
    listed.sort();
    assert_eq!(listed, ["half", "other"]);
    locks.ok(&["unlock", "half", "--client", "a"]);
    locks.ok(&["lock", "half/x", "--client", "b"]);
}

#[test]
fn granted_lock_of_a_killed_holder_stays_until_unlocked() {
    let locks = Locks::new();
    // The grant completed; its process is gone (every CLI call is one).
    locks.ok(&["lock", "job", "--client", "a"]);
    locks
        .run(&["lock", "job", "--client", "b"])
        .assert_refused(1, "Resource already locked by 'a'");
    locks.ok(&["unlock", "job", "--client", "a"]);
    locks.ok(&["lock", "job", "--client", "b"]);
}

#[test]
fn a_new_lock_directory_has_its_format_file_and_nothing_left_staged() {
    let locks = Locks::new();
    locks.ok(&["lock", "job", "--client", "a"]);
    assert_eq!(
        fs::read_to_string(locks.path().join("FORMAT")).expect("read FORMAT"),
        "hasp-lock-dir 3\n"
    );
    let staged: Vec<_> = fs::read_dir(locks.path().join("tmp"))
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(staged.is_empty(), "left in tmp/: {staged:?}");
    // A second process finds it and uses the same directory.
    locks
        .run(&["lock", "job", "--client", "b"])
        .assert_refused(1, "Resource already locked by 'a'");
}
