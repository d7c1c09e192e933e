//! Hierarchical locks through the CLI: the cases of Locker's README, the AND
//! rule of the two flags in both orders, and how names are normalised; on
//! both stores (`both!`).

use crate::support::{already, both};

both! {
    fn lock_on_child_blocks_parent_and_grandchild_but_not_sibling(locks: &Locks) {
        locks.ok(&["lock", "foo/bar", "--client", "c1"]);

        locks
            .run(&["lock", "foo", "--client", "c2"])
            .assert_refused(1, &already("c1"));
        locks
            .run(&["lock", "foo/bar/baz", "--client", "c2"])
            .assert_refused(1, &already("c1"));
        locks.ok(&["lock", "foo/zip", "--client", "c2"]);
    }
}

both! {
    fn lock_on_parent_blocks_every_descendant_but_not_names_sharing_a_prefix(locks: &Locks) {
        locks.ok(&["lock", "foo", "--client", "c1"]);

        for child in ["foo/bar", "foo/bar/baz", "foo/a/b/c/d"] {
            locks
                .run(&["lock", child, "--client", "c2"])
                .assert_refused(1, &already("c1"));
        }
        for unrelated in ["food", "foo-bar", "foo.bar", "fo", "bar/foo"] {
            locks.ok(&["lock", unrelated, "--client", "c2"]);
        }
    }
}

both! {
    fn refusal_names_the_conflicting_holder_not_the_requester(locks: &Locks) {
        locks.ok(&["lock", "top", "--client", "grandparent"]);
        locks
            .run(&["lock", "top/mid/leaf", "--client", "me"])
            .assert_refused(1, &already("grandparent"));

        locks.ok(&["lock", "deep/mid/leaf", "--client", "grandchild"]);
        locks
            .run(&["lock", "deep", "--client", "me"])
            .assert_refused(1, &already("grandchild"));

        // An anonymous holder shows as `?`.
        locks.ok(&["lock", "anon/child"]);
        locks
            .run(&["lock", "anon", "--client", "me"])
            .assert_refused(1, &already("?"));
    }
}

both! {
    fn same_resource_always_conflicts_whatever_the_flags(locks: &Locks) {
        let both = ["--no-lock-parents", "--no-lock-children"];
        let locks = &locks.fresh();
        locks.ok(&["lock", "x", "--client", "c1", both[0], both[1]]);
        locks
            .run(&["lock", "x", "--client", "c2"])
            .assert_refused(1, &already("c1"));
        locks
            .run(&["lock", "x", "--client", "c2", both[0], both[1]])
            .assert_refused(1, &already("c1"));

        locks.ok(&["lock", "y", "--client", "c1"]);
        locks
            .run(&["lock", "y", "--client", "c2", both[0], both[1]])
            .assert_refused(1, &already("c1"));
    }
}

both! {
    fn no_lock_parents_on_child_lets_parent_be_locked_in_either_order(locks: &Locks) {
        locks.ok(&["lock", "foo/bar", "--client", "c1", "--no-lock-parents"]);
        locks.ok(&["lock", "foo", "--client", "c2"]);

        let locks = &locks.fresh();
        locks.ok(&["lock", "foo", "--client", "c2"]);
        locks.ok(&["lock", "foo/bar", "--client", "c1", "--no-lock-parents"]);
    }
}

both! {
    fn no_lock_parents_still_blocks_own_children(locks: &Locks) {
        locks.ok(&["lock", "foo/bar", "--client", "c1", "--no-lock-parents"]);
        locks
            .run(&["lock", "foo/bar/baz", "--client", "c2"])
            .assert_refused(1, &already("c1"));
    }
}

both! {
    fn no_lock_children_on_parent_lets_child_be_locked_in_either_order(locks: &Locks) {
        locks.ok(&["lock", "bar", "--client", "c1", "--no-lock-children"]);
        locks.ok(&["lock", "bar/foo", "--client", "c2"]);
        locks.ok(&["lock", "bar/zip/deep", "--client", "c3"]);

        let locks = &locks.fresh();
        locks.ok(&["lock", "bar/foo", "--client", "c2"]);
        locks.ok(&["lock", "bar", "--client", "c1", "--no-lock-children"]);
    }
}

both! {
    fn no_lock_children_still_blocks_own_parent(locks: &Locks) {
        locks.ok(&["lock", "bar/foo", "--client", "c1", "--no-lock-children"]);
        locks
            .run(&["lock", "bar", "--client", "c2"])
            .assert_refused(1, &already("c1"));
    }
}

both! {
    fn flags_conflict_only_when_parent_locks_children_and_child_locks_parents(locks: &Locks) {
        // The flag of the wrong side does not help: a default parent still blocks
        // a child taken with --no-lock-children, in either order.
        let locks = &locks.fresh();
        locks.ok(&["lock", "p", "--client", "parent"]);
        locks
            .run(&["lock", "p/c", "--client", "child", "--no-lock-children"])
            .assert_refused(1, &already("parent"));

        let locks = &locks.fresh();
        locks.ok(&["lock", "p/c", "--client", "child", "--no-lock-children"]);
        locks
            .run(&["lock", "p", "--client", "parent"])
            .assert_refused(1, &already("child"));

        // Likewise a default child still blocks a parent taken with
        // --no-lock-parents, in either order.
        let locks = &locks.fresh();
        locks.ok(&["lock", "p/c", "--client", "child"]);
        locks
            .run(&["lock", "p", "--client", "parent", "--no-lock-parents"])
            .assert_refused(1, &already("child"));

        let locks = &locks.fresh();
        locks.ok(&["lock", "p", "--client", "parent", "--no-lock-parents"]);
        locks
            .run(&["lock", "p/c", "--client", "child"])
            .assert_refused(1, &already("parent"));
    }
}

both! {
    fn both_flags_combined_conflict_only_on_the_same_resource(locks: &Locks) {
        let both = ["--no-lock-parents", "--no-lock-children"];
        let locks = &locks.fresh();
        locks.ok(&["lock", "foo/bar", "--client", "c1", both[0], both[1]]);
        locks.ok(&["lock", "foo", "--client", "c2"]);
        // (foo itself blocks foo/bar/baz; release it to look at foo/bar alone.)
        locks.ok(&["unlock", "foo", "--client", "c2"]);
        locks.ok(&["lock", "foo/bar/baz", "--client", "c3"]);
        locks
            .run(&["lock", "foo/bar", "--client", "c4"])
            .assert_refused(1, &already("c1"));

        // And when the parent or the child is already held.
        let locks = &locks.fresh();
        locks.ok(&["lock", "foo", "--client", "c2"]);
        locks.ok(&["lock", "foo/bar", "--client", "c1", both[0], both[1]]);
        let locks = &locks.fresh();
        locks.ok(&["lock", "foo/bar/baz", "--client", "c3"]);
        locks.ok(&["lock", "foo/bar", "--client", "c1", both[0], both[1]]);
    }
}

both! {
    fn leading_and_trailing_slash_name_the_same_resource(locks: &Locks) {
        locks.ok(&["lock", "/my/resource", "--client", "c1"]);
        for same in ["my/resource", "my/resource/", "/my/resource/"] {
            locks
                .run(&["lock", same, "--client", "c2"])
                .assert_refused(1, &already("c1"));
            let held = locks.json(&["status", same, "--json"]);
            assert_eq!(held["resource"], "my/resource", "{held}");
            assert_eq!(held["client"], "c1", "{held}");
        }
        // The parent is blocked whichever way it is spelled.
        locks
            .run(&["lock", "/my", "--client", "c2"])
            .assert_refused(1, &already("c1"));

        locks.ok(&["unlock", "my/resource/", "--client", "c1"]);
        assert_eq!(
            locks.json(&["status", "/my/resource", "--json"]),
            serde_json::Value::Null
        );
        locks.ok(&["lock", "my/resource", "--client", "c2"]);
    }
}

both! {
    fn unlocking_a_child_frees_its_ancestors(locks: &Locks) {
        locks.ok(&["lock", "a/b/c", "--client", "c1"]);
        locks
            .run(&["lock", "a", "--client", "c2"])
            .assert_refused(1, &already("c1"));
        locks.ok(&["unlock", "a/b/c", "--client", "c1"]);
        locks.ok(&["lock", "a", "--client", "c2"]);
        locks
            .run(&["lock", "a/b/c", "--client", "c1"])
            .assert_refused(1, &already("c2"));
    }
}

both! {
    fn unlock_releases_only_the_exact_resource(locks: &Locks) {
        locks.ok(&["lock", "foo/bar", "--client", "c1"]);
        locks
            .run(&["unlock", "foo", "--client", "c1"])
            .assert_refused(1, "Resource not locked");
        locks
            .run(&["unlock", "foo/bar/baz", "--client", "c1"])
            .assert_refused(1, "Resource not locked");
        assert_eq!(locks.json(&["status", "foo/bar", "--json"])["client"], "c1");
    }
}

both! {
    fn refused_attempts_leave_no_lock_behind(locks: &Locks) {
        locks.ok(&["lock", "foo/bar", "--client", "c1"]);
        for name in ["foo", "foo/bar", "foo/bar/baz"] {
            locks
                .run(&["lock", name, "--client", "c2"])
                .assert_refused(1, &already("c1"));
        }
        let all = locks.json(&["status", "--json"]);
        let names: Vec<&str> = all
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|h| h["resource"].as_str().expect("a resource name"))
            .collect();
        assert_eq!(names, ["foo/bar"]);
        assert_eq!(
            locks.json(&["status", "foo/bar/baz", "--json"]),
            serde_json::Value::Null
        );
    }
}

both! {
    fn status_table_lists_every_held_lock_sorted_with_owner_and_fencing(locks: &Locks) {
        locks.ok(&["lock", "zeta", "--client", "c1"]);
        locks.ok(&["lock", "/alpha/one", "--client", "c2"]);
        locks.ok(&["lock", "alpha/two"]);
        locks.ok(&["lock", "mid", "--client", "c3"]);
        locks.ok(&["unlock", "mid", "--client", "c3"]);
        locks.ok(&["lock", "mid", "--client", "c3"]);
        locks
            .run(&["lock", "alpha/one/sub", "--client", "c4"])
            .assert_refused(1, &already("c2"));

        let table = locks.ok(&["status"]);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            ["RESOURCE", "OWNER", "SINCE", "FENCING"],
            "{table}"
        );
        let body: Vec<[&str; 2]> = rows[1..].iter().map(|r| [r[0], r[1]]).collect();
        assert_eq!(
            body,
            [
                ["alpha/one", "c2"],
                ["alpha/two", "?"],
                ["mid", "c3"],
                ["zeta", "c1"]
            ],
            "{table}"
        );
        let fencing: Vec<&str> = rows[1..].iter().map(|r| r[3]).collect();
        assert_eq!(fencing, ["1", "1", "2", "1"], "{table}");
        for row in &rows[1..] {
            assert_eq!(row.len(), 4, "{table}");
            assert!(is_utc_timestamp(row[2]), "SINCE {:?} in {table}", row[2]);
        }

        // One resource: the same row; a free one says so.
        let one = locks.ok(&["status", "/mid"]);
        let row: Vec<&str> = one
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!([row[0], row[1], row[3]], ["mid", "c3", "2"], "{one}");
        assert_eq!(locks.ok(&["status", "alpha"]), "not locked\n");
    }
}

/// `2026-11-23T16:02:03Z`
fn is_utc_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

both! {
    fn names_that_look_like_internal_entries_are_ordinary_resources(locks: &Locks) {
        // `q` is taken without lock-children, so its children are independent.
        locks.ok(&["lock", "q", "--client", "parent", "--no-lock-children"]);
        let odd = [
            "q/.lock",
            "q/.other/.lock/0",
            "q/%2Elock",
            "q/%25",
            "q/...",
            "q/.hidden/.lock",
            "q/1+0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b+pc+1",
        ];
        for name in odd {
            locks.ok(&["lock", name, "--client", name]);
        }
        // None of them went into `q`'s own state (its state directory on
        // disk, its key's value on etcd).
        let states = locks.states("q");
        assert!(
            states.len() == 1
                && states[0].starts_with("1+")
                && states[0].contains("+p-+")
                && states[0].ends_with("+parent"),
            "{states:?}"
        );
        let held = locks.json(&["status", "q", "--json"]);
        assert_eq!(
            (held["client"].as_str(), held["fencing"].as_u64()),
            (Some("parent"), Some(1))
        );
        for name in odd {
            let held = locks.json(&["status", name, "--json"]);
            assert_eq!(held["resource"], name, "{held}");
            assert_eq!(held["client"], name, "{held}");
            locks
                .run(&["lock", name, "--client", "other"])
                .assert_refused(1, &already(name));
        }
        let all = locks.json(&["status", "--json"]);
        let mut listed: Vec<&str> = all
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|h| h["resource"].as_str().expect("a name"))
            .collect();
        let mut expected: Vec<&str> = odd.to_vec();
        expected.push("q");
        expected.sort();
        listed.sort();
        assert_eq!(listed, expected);
        // On disk (docs/FORMAT.md): a leading `.` is written `%2E` and `%` is
        // written `%25`, so no segment is ever `.lock` or a dot name.
        if !locks.is_etcd() {
            let mut children: Vec<String> = std::fs::read_dir(locks.path().join("nodes/q"))
                .expect("read nodes/q")
                .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
                .collect();
            children.sort();
            assert_eq!(
                children,
                [
                    "%2525",
                    "%252Elock",
                    "%2E..",
                    "%2Ehidden",
                    "%2Elock",
                    "%2Eother",
                    ".lock",
                    "1+0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b+pc+1",
                ]
            );
        }

        // Releasing them one by one leaves `q` held and frees each of them.
        for name in odd {
            locks.ok(&["unlock", name, "--client", name]);
            assert_eq!(
                locks.json(&["status", name, "--json"]),
                serde_json::Value::Null
            );
        }
        assert_eq!(locks.json(&["status", "q", "--json"])["client"], "parent");
    }
}

both! {
    /// The deepest names (512 one-byte segments: 1023 bytes) see every
    /// ancestor and every descendant, beyond the first hundred too (on etcd
    /// a grant's transaction reads only so many ancestors; the rest are read
    /// after it).
    fn the_deepest_names_see_every_ancestor_and_descendant(locks: &Locks) {
        let deep = |n: usize| vec!["a"; n].join("/");
        let deepest = deep(512);
        assert_eq!(deepest.len(), 1023);
        for depth in [1, 99, 100, 101, 102, 200, 511] {
            locks.ok(&["lock", &deep(depth), "--client", "ancestor"]);
            locks
                .run(&["lock", &deepest, "--client", "me"])
                .assert_refused(1, &already("ancestor"));
            // Its own flag on the wrong side does not help (the AND rule).
            locks
                .run(&["lock", &deepest, "--no-lock-children"])
                .assert_refused(1, &already("ancestor"));
            locks.ok(&["unlock", &deep(depth), "--client", "ancestor"]);
        }
        locks.ok(&["lock", &deepest, "--client", "deepest"]);
        for depth in [1, 99, 100, 101, 102, 200, 511] {
            locks
                .run(&["lock", &deep(depth), "--client", "me"])
                .assert_refused(1, &already("deepest"));
            locks
                .run(&["lock", &deep(depth), "--no-lock-parents"])
                .assert_refused(1, &already("deepest"));
            // An ancestor taken without lock-children is not blocked by it.
            locks.ok(&["lock", &deep(depth), "--client", "p", "--no-lock-children"]);
            locks.ok(&["unlock", &deep(depth), "--client", "p"]);
        }
        // Neither side locking the other: both held.
        locks.ok(&["unlock", &deepest, "--client", "deepest"]);
        locks.ok(&["lock", &deepest, "--client", "deepest", "--no-lock-parents"]);
        locks.ok(&["lock", &deep(150), "--client", "mid", "--no-lock-children"]);
        let held = locks.json(&["status", "--json"]);
        let fencing: Vec<(&str, u64)> = held
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|h| {
                (
                    h["client"].as_str().expect("a client"),
                    h["fencing"].as_u64().expect("fencing"),
                )
            })
            .collect();
        // The deepest was granted once before (1); refused attempts may
        // have used numbers since (docs/FORMAT.md, "Lock"), never reused.
        assert_eq!(fencing.len(), 2, "{held}");
        assert_eq!(fencing[0], ("mid", 1), "{held}");
        assert_eq!(fencing[1].0, "deepest", "{held}");
        assert!(fencing[1].1 > 1, "{held}");
    }
}
