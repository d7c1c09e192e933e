//! Unlock tokens, anonymous locks and fencing tokens, through the CLI. Every
//! `hasp` call is a fresh process, so everything here also survives restarts.
//! Every body runs on both stores (`both!`).

use crate::support::{both, is_uuid_v4, now_ms, sorted_keys, GRANT_KEYS};
use serde_json::Value;

fn token(grant: &Value) -> &str {
    grant["token"].as_str().expect("a token string")
}

fn fencing(held: &Value) -> u64 {
    held["fencing"].as_u64().expect("a fencing number")
}

both! {
    fn lock_json_prints_the_whole_grant(locks: &Locks) {
        let before = now_ms();
        let grant = locks.json(&["lock", "/deploy/prod/", "--client", "ci-42", "--json"]);
        let after = now_ms();

        assert_eq!(sorted_keys(&grant), GRANT_KEYS);
        assert_eq!(grant["resource"], "deploy/prod");
        assert_eq!(grant["client"], "ci-42");
        assert_eq!(fencing(&grant), 1);
        assert_eq!(grant["lock_parents"], true);
        assert_eq!(grant["lock_children"], true);
        assert!(is_uuid_v4(token(&grant)), "{grant}");
        let since = grant["since_ms"].as_u64().expect("since_ms");
        assert!(
            before <= since && since <= after,
            "{before} <= {since} <= {after}"
        );

        let grant = locks.json(&[
            "lock",
            "other",
            "--no-lock-parents",
            "--no-lock-children",
            "--json",
        ]);
        assert_eq!(grant["client"], Value::Null);
        assert_eq!(grant["lock_parents"], false);
        assert_eq!(grant["lock_children"], false);
    }
}

both! {
    fn every_grant_gets_a_fresh_uuid_v4_token(locks: &Locks) {
        let mut seen = Vec::new();
        for i in 0..10 {
            let name = format!("r{i}");
            let grant = locks.json(&["lock", &name, "--client", "c", "--json"]);
            seen.push(token(&grant).to_string());
            // Relocking the same resource also gets a new token.
            locks.ok(&["unlock", &name, "--client", "c"]);
            let again = locks.json(&["lock", &name, "--client", "c", "--json"]);
            seen.push(token(&again).to_string());
        }
        for t in &seen {
            assert!(is_uuid_v4(t), "{t:?}");
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{seen:?}");
    }
}

both! {
    fn status_never_reveals_the_token(locks: &Locks) {
        let grant = locks.json(&["lock", "secret", "--client", "c1", "--json"]);
        let held = locks.json(&["status", "secret", "--json"]);
        let mut without_token = grant.clone();
        without_token
            .as_object_mut()
            .expect("an object")
            .remove("token");
        assert_eq!(held, without_token);
        for args in [
            &["status", "secret", "--json"][..],
            &["status", "secret"],
            &["status", "--json"],
            &["status"],
        ] {
            let out = locks.ok(args);
            assert!(
                !out.contains(token(&grant)),
                "hasp {args:?} showed the token: {out}"
            );
        }
    }
}

both! {
    fn unlock_with_the_token_releases_a_client_lock(locks: &Locks) {
        let grant = locks.json(&["lock", "res", "--client", "c1", "--json"]);
        assert_eq!(locks.ok(&["unlock", "/res", "--token", token(&grant)]), "");
        assert_eq!(locks.json(&["status", "res", "--json"]), Value::Null);
        locks.ok(&["lock", "res", "--client", "c2"]);
    }
}

both! {
    fn wrong_or_foreign_token_is_refused_and_the_lock_stays(locks: &Locks) {
        let mine = locks.json(&["lock", "res", "--client", "c1", "--json"]);
        let foreign = locks.json(&["lock", "other", "--client", "c2", "--json"]);
        let made_up = "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b";
        assert_ne!(token(&mine), made_up);

        for wrong in [made_up, token(&foreign)] {
            locks
                .run(&["unlock", "res", "--token", wrong])
                .assert_refused(
                    1,
                    "Resource locked by 'c1' cannot be unlocked with this token",
                );
        }
        let mut held = mine.clone();
        held.as_object_mut().expect("an object").remove("token");
        assert_eq!(locks.json(&["status", "res", "--json"]), held);
        assert_eq!(locks.json(&["status", "other", "--json"])["client"], "c2");

        // The right token still works afterwards.
        locks.ok(&["unlock", "res", "--token", token(&mine)]);
        assert_eq!(locks.json(&["status", "res", "--json"]), Value::Null);
    }
}

both! {
    fn token_of_a_released_lock_does_not_open_the_next_grant(locks: &Locks) {
        let first = locks.json(&["lock", "res", "--json"]);
        locks.ok(&["unlock", "res", "--token", token(&first)]);
        let second = locks.json(&["lock", "res", "--json"]);
        locks
            .run(&["unlock", "res", "--token", token(&first)])
            .assert_refused(
                1,
                "Resource locked by '?' cannot be unlocked with this token",
            );
        assert_eq!(
            fencing(&locks.json(&["status", "res", "--json"])),
            fencing(&second)
        );
        // A released lock's token on a free resource: nothing to unlock.
        locks.ok(&["unlock", "res", "--token", token(&second)]);
        locks
            .run(&["unlock", "res", "--token", token(&second)])
            .assert_refused(1, "Resource not locked");
    }
}

both! {
    fn anonymous_lock_opens_only_with_its_token(locks: &Locks) {
        let grant = locks.json(&["lock", "anon", "--json"]);
        assert_eq!(grant["client"], Value::Null);

        locks
            .run(&["lock", "anon", "--client", "c2"])
            .assert_refused(1, "Resource already locked by '?'");
        locks
            .run(&["lock", "anon"])
            .assert_refused(1, "Resource already locked by '?'");
        for client in ["c2", "?"] {
            locks
                .run(&["unlock", "anon", "--client", client])
                .assert_refused(
                    1,
                    &format!("Resource locked by '?' cannot be unlocked by '{client}'"),
                );
        }
        let table = locks.ok(&["status", "anon"]);
        let row: Vec<&str> = table
            .lines()
            .nth(1)
            .expect("a row")
            .split_whitespace()
            .collect();
        assert_eq!(row[..2], ["anon", "?"], "{table}");

        locks.ok(&["unlock", "anon", "--token", token(&grant)]);
        assert_eq!(locks.json(&["status", "anon", "--json"]), Value::Null);
    }
}

both! {
    fn client_named_question_mark_does_not_own_anonymous_locks(locks: &Locks) {
        // `?` is a legal client id; its lock is its own, and it cannot open an
        // anonymous one (which merely *shows* as `?`).
        locks.ok(&["lock", "mine", "--client", "?"]);
        locks.ok(&["lock", "anon"]);
        locks
            .run(&["unlock", "anon", "--client", "?"])
            .assert_refused(1, "Resource locked by '?' cannot be unlocked by '?'");
        locks.ok(&["unlock", "mine", "--client", "?"]);
    }
}

both! {
    fn verbose_prints_token_and_fencing(locks: &Locks) {
        let out = locks.ok(&["lock", "res", "--client", "c1", "-v"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        let tok = lines[0].strip_prefix("token: ").expect("a token line");
        assert!(is_uuid_v4(tok), "{out:?}");
        assert_eq!(lines[1], "fencing: 1", "{out:?}");
        locks.ok(&["unlock", "res", "--token", tok]);

        let out = locks.ok(&["lock", "res", "--verbose"]);
        assert!(out.ends_with("\nfencing: 2\n"), "{out:?}");
    }
}

both! {
    fn fencing_counts_one_two_three_across_processes_and_unlock_kinds(locks: &Locks) {
        let mut seen = Vec::new();
        for round in 0..6 {
            let grant = match round % 3 {
                0 => locks.json(&["lock", "res", "--client", "c1", "--json"]),
                1 => locks.json(&["lock", "/res", "--json"]),
                _ => locks.json(&[
                    "lock",
                    "res/",
                    "--client",
                    "c2",
                    "--no-lock-children",
                    "--json",
                ]),
            };
            seen.push(fencing(&grant));
            assert_eq!(
                fencing(&locks.json(&["status", "res", "--json"])),
                fencing(&grant)
            );
            match round % 3 {
                0 => locks.ok(&["unlock", "res", "--client", "c1"]),
                _ => locks.ok(&["unlock", "res", "--token", token(&grant)]),
            };
        }
        assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    }
}

both! {
    fn distinct_resources_count_fencing_independently(locks: &Locks) {
        let cycle = |name: &str| -> u64 {
            let grant = locks.json(&["lock", name, "--client", "c", "--json"]);
            locks.ok(&["unlock", name, "--client", "c"]);
            fencing(&grant)
        };
        assert_eq!([cycle("a"), cycle("a"), cycle("a")], [1, 2, 3]);
        // A child, a parent and an unrelated name each start from 1.
        assert_eq!([cycle("a/b"), cycle("a/b")], [1, 2]);
        assert_eq!(cycle("b"), 1);
        assert_eq!([cycle("a"), cycle("a/b"), cycle("b")], [4, 3, 2]);
    }
}

both! {
    fn locks_are_not_reentrant(locks: &Locks) {
        let grant = locks.json(&["lock", "res", "--client", "c1", "--json"]);
        locks
            .run(&["lock", "res", "--client", "c1"])
            .assert_refused(1, "Resource already locked by 'c1'");
        locks
            .run(&["lock", "/res/", "--client", "c1"])
            .assert_refused(1, "Resource already locked by 'c1'");
        // The hierarchy applies to one's own locks too.
        locks
            .run(&["lock", "res/child", "--client", "c1"])
            .assert_refused(1, "Resource already locked by 'c1'");
        // The refused attempts did not replace the grant.
        let mut held = grant.clone();
        held.as_object_mut().expect("an object").remove("token");
        assert_eq!(locks.json(&["status", "res", "--json"]), held);
        // One unlock releases it.
        locks.ok(&["unlock", "res", "--client", "c1"]);
        locks
            .run(&["unlock", "res", "--client", "c1"])
            .assert_refused(1, "Resource not locked");
    }
}
