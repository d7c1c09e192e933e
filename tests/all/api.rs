//! The Rust API (`hasp::Registry`): the same rules as the CLI, typed errors
//! carrying the holder, and one registry shared with the CLI and with other
//! registries, in a lock directory and on etcd (`both!`).

use crate::support::{both, Locks};
use hasp::{Error, LockOptions, Registry, UnlockKey};

fn open(locks: &Locks) -> Registry {
    locks.registry()
}

#[track_caller]
fn already_locked_by(result: Result<hasp::Grant, Error>, who: &str) {
    match result {
        Err(err @ Error::AlreadyLocked { .. }) => {
            assert!(err.is_refusal());
            assert_eq!(
                err.to_string(),
                format!("Resource already locked by '{who}'")
            );
            let Error::AlreadyLocked { holder, message } = err else {
                unreachable!()
            };
            assert_eq!(holder, who);
            assert_eq!(message, format!("Resource already locked by '{who}'"));
        }
        other => panic!("expected AlreadyLocked by {who}, got {other:?}"),
    }
}

both! {
    fn lock_status_unlock_round_trip(locks: &Locks) {
        let mut registry = open(locks);
        assert_eq!(registry.store(), locks.store());
        if !locks.is_etcd() {
            assert_eq!(registry.dir(), locks.path());
        }
        assert_eq!(registry.status("deploy/prod").expect("status"), None);

        let grant = registry
            .lock("/deploy/prod/", &LockOptions::client("ci-42"))
            .expect("lock");
        assert_eq!(grant.holder.resource, "deploy/prod");
        assert_eq!(grant.holder.client.as_deref(), Some("ci-42"));
        assert_eq!(grant.holder.fencing, 1);
        assert!(grant.holder.lock_parents && grant.holder.lock_children);
        assert_eq!(grant.token.len(), 36);

        assert_eq!(
            registry.status("deploy/prod").expect("status"),
            Some(grant.holder.clone())
        );
        let released = registry
            .unlock("deploy/prod", &UnlockKey::Token(grant.token.clone()))
            .expect("unlock");
        assert_eq!(released, grant.holder);
        assert_eq!(registry.status("deploy/prod").expect("status"), None);
        assert_eq!(registry.list("").expect("list"), []);

        let again = registry
            .lock("deploy/prod", &LockOptions::default())
            .expect("relock");
        assert_eq!((again.holder.client, again.holder.fencing), (None, 2));
        assert_ne!(again.token, grant.token);
    }
}

both! {
    fn refusals_are_typed_and_carry_the_holder(locks: &Locks) {
        let mut registry = open(locks);
        let grant = registry
            .lock("foo/bar", &LockOptions::client("c1"))
            .expect("lock");

        already_locked_by(registry.lock("foo/bar", &LockOptions::client("c2")), "c1");
        already_locked_by(registry.lock("foo", &LockOptions::client("c2")), "c1");
        already_locked_by(registry.lock("foo/bar/baz", &LockOptions::default()), "c1");
        // Not re-entrant.
        already_locked_by(registry.lock("foo/bar", &LockOptions::client("c1")), "c1");

        match registry.unlock("foo/bar", &UnlockKey::Client("c2".into())) {
            Err(err @ Error::NotOwner { .. }) => {
                assert!(err.is_refusal());
                let Error::NotOwner { holder, message } = err else {
                    unreachable!()
                };
                assert_eq!(holder, "c1");
                assert_eq!(
                    message,
                    "Resource locked by 'c1' cannot be unlocked by 'c2'"
                );
            }
            other => panic!("expected NotOwner, got {other:?}"),
        }
        let wrong = "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b".to_string();
        match registry.unlock("foo/bar", &UnlockKey::Token(wrong)) {
            Err(Error::NotOwner { holder, .. }) => assert_eq!(holder, "c1"),
            other => panic!("expected NotOwner, got {other:?}"),
        }
        match registry.unlock("foo", &UnlockKey::Client("c1".into())) {
            Err(err @ Error::NotLocked { .. }) => {
                assert!(err.is_refusal());
                assert_eq!(err.to_string(), "Resource not locked");
            }
            other => panic!("expected NotLocked, got {other:?}"),
        }
        match registry.lock("a//b", &LockOptions::default()) {
            Err(err @ Error::InvalidInput { .. }) => assert!(!err.is_refusal()),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        assert_eq!(
            registry.status("foo/bar").expect("status"),
            Some(grant.holder)
        );
    }
}

both! {
    fn anonymous_locks_show_as_question_mark_and_open_only_with_their_token(locks: &Locks) {
        let mut registry = open(locks);
        let grant = registry
            .lock("anon", &LockOptions::default())
            .expect("lock");
        assert_eq!(grant.holder.client, None);
        already_locked_by(registry.lock("anon/child", &LockOptions::client("c")), "?");
        match registry.unlock("anon", &UnlockKey::Client("?".into())) {
            Err(Error::NotOwner { holder, message }) => {
                assert_eq!(holder, "?");
                assert_eq!(message, "Resource locked by '?' cannot be unlocked by '?'");
            }
            other => panic!("expected NotOwner, got {other:?}"),
        }
        registry
            .unlock("anon", &UnlockKey::Token(grant.token))
            .expect("unlock by token");
    }
}

both! {
    fn two_registries_on_one_dir_see_each_others_locks(locks: &Locks) {
        let mut one = open(locks);
        let mut two = open(locks);

        let grant = one.lock("a/b", &LockOptions::client("one")).expect("lock");
        already_locked_by(two.lock("a", &LockOptions::client("two")), "one");
        already_locked_by(two.lock("a/b", &LockOptions::client("two")), "one");
        assert_eq!(
            two.status("a/b").expect("status"),
            Some(grant.holder.clone())
        );
        assert_eq!(
            two.list("a").expect("list"),
            std::slice::from_ref(&grant.holder)
        );

        // The token works from the other registry.
        two.unlock("a/b", &UnlockKey::Token(grant.token))
            .expect("unlock");
        assert_eq!(one.status("a/b").expect("status"), None);
        let taken = two.lock("a", &LockOptions::client("two")).expect("lock a");
        already_locked_by(one.lock("a/b", &LockOptions::client("one")), "two");
        one.unlock("a", &UnlockKey::Client("two".into()))
            .expect("unlock");
        // The attempt on `a` refused above committed number 1 before it saw
        // `a/b`, and withdrew (docs/FORMAT.md, "Lock"): the number is skipped,
        // never reused.
        assert_eq!(taken.holder.fencing, 2);
    }
}

both! {
    fn fencing_survives_a_new_registry(locks: &Locks) {
        for expected in 1..=3 {
            let mut registry = open(locks);
            let grant = registry.lock("r", &LockOptions::client("c")).expect("lock");
            assert_eq!(grant.holder.fencing, expected);
            registry
                .unlock("r", &UnlockKey::Client("c".into()))
                .expect("unlock");
        }
    }
}

both! {
    fn list_is_sorted_and_limited_to_the_prefix(locks: &Locks) {
        let mut registry = open(locks);
        let parent = LockOptions {
            lock_children: false,
            ..LockOptions::client("p")
        };
        for (name, options) in [
            ("b", LockOptions::client("c")),
            ("a/z", LockOptions::client("c")),
            ("a", parent),
            ("a/b/c", LockOptions::client("c")),
            ("ab", LockOptions::client("c")),
            ("a-c", LockOptions::client("c")),
            ("zz/y", LockOptions::default()),
        ] {
            registry.lock(name, &options).expect(name);
        }
        let names = |prefix: &str, registry: &mut Registry| -> Vec<String> {
            let held = registry.list(prefix).expect("list");
            held.into_iter().map(|h| h.resource).collect()
        };
        let mut all = vec!["b", "a/z", "a", "a/b/c", "ab", "a-c", "zz/y"];
        all.sort();
        assert_eq!(names("", &mut registry), all);
        assert_eq!(names("/", &mut registry), all);
        assert_eq!(names("a", &mut registry), ["a", "a/b/c", "a/z"]);
        assert_eq!(names("/a/", &mut registry), ["a", "a/b/c", "a/z"]);
        assert_eq!(names("a/b", &mut registry), ["a/b/c"]);
        assert_eq!(names("zz", &mut registry), ["zz/y"]);
        assert!(names("nothing/here", &mut registry).is_empty());

        let held = registry.list("").expect("list");
        let a = held.iter().find(|h| h.resource == "a").expect("a listed");
        assert_eq!(
            (a.client.as_deref(), a.lock_parents, a.lock_children),
            (Some("p"), true, false)
        );
        let zz = held
            .iter()
            .find(|h| h.resource == "zz/y")
            .expect("zz/y listed");
        assert_eq!(zz.client, None);
    }
}

both! {
    fn api_locks_are_refused_by_the_cli_and_cli_locks_by_the_api(locks: &Locks) {
        let mut registry = open(locks);

        let grant = registry
            .lock("from/api", &LockOptions::client("api"))
            .expect("lock");
        locks
            .run(&["lock", "from/api", "--client", "cli"])
            .assert_refused(1, "Resource already locked by 'api'");
        locks
            .run(&["lock", "from", "--client", "cli"])
            .assert_refused(1, "Resource already locked by 'api'");
        let shown = locks.json(&["status", "from/api", "--json"]);
        assert_eq!(shown["fencing"], grant.holder.fencing);
        assert_eq!(shown["since_ms"], grant.holder.since_ms);
        // The CLI can release it with the API's token.
        locks.ok(&["unlock", "from/api", "--token", &grant.token]);
        assert_eq!(registry.status("from/api").expect("status"), None);

        let cli = locks.json(&["lock", "from/cli", "--client", "cli", "--json"]);
        already_locked_by(
            registry.lock("from/cli", &LockOptions::client("api")),
            "cli",
        );
        already_locked_by(registry.lock("from/cli/x", &LockOptions::default()), "cli");
        let held = registry.status("from/cli").expect("status").expect("held");
        assert_eq!(held.client.as_deref(), Some("cli"));
        assert_eq!(Some(held.fencing), cli["fencing"].as_u64());
        let token = cli["token"].as_str().expect("token").to_string();
        registry
            .unlock("from/cli", &UnlockKey::Token(token))
            .expect("API unlocks the CLI's lock with its token");
        assert_eq!(
            locks.json(&["status", "from/cli", "--json"]),
            serde_json::Value::Null
        );
    }
}

#[test]
fn open_fails_on_a_missing_dir_or_a_file() {
    let parent = tempfile::tempdir().expect("temp dir");
    let missing = parent.path().join("missing");
    match Registry::open(&missing) {
        Err(err @ Error::Directory { .. }) => {
            assert!(!err.is_refusal());
            assert!(
                err.to_string().contains(&*missing.to_string_lossy()),
                "{err}"
            );
        }
        Err(other) => panic!("expected Directory, got {other:?}"),
        Ok(_) => panic!("opened a missing directory"),
    }
    assert!(!missing.exists());

    let file = parent.path().join("file");
    std::fs::write(&file, "x").expect("write");
    match Registry::open(&file) {
        Err(err) => assert!(!err.is_refusal(), "{err:?}"),
        Ok(_) => panic!("opened a regular file as a lock directory"),
    }
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "x");
}

#[test]
fn broken_directories_give_typed_errors_naming_the_file() {
    let locks = Locks::new();
    let mut registry = open(&locks);
    let outside = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(outside.path(), locks.path().join("nodes/link")).expect("symlink");
    match registry.lock("link/x", &LockOptions::default()) {
        Err(err @ Error::Storage { .. }) => {
            assert!(!err.is_refusal());
            let Error::Storage { dir, file, .. } = err else {
                unreachable!()
            };
            assert_eq!(dir, locks.path());
            assert_eq!(file, std::path::Path::new("nodes/link"));
        }
        other => panic!("expected Storage, got {other:?}"),
    }
    assert!(std::fs::read_dir(outside.path())
        .expect("read")
        .next()
        .is_none());
}

both! {
    /// A state that does not parse (a state file renamed on disk, a key's
    /// value rewritten on etcd): a typed error naming where it is.
    fn corrupt_states_give_typed_errors_naming_the_state(locks: &Locks) {
        let mut registry = open(locks);
        let grant = registry
            .lock("res", &LockOptions::client("c"))
            .expect("lock");
        let states = locks.states("res");
        assert_eq!(states.len(), 1, "{states:?}");
        assert!(states[0].contains(&grant.token), "{states:?}");
        if locks.is_etcd() {
            locks.plant("res", "garbage");
        } else {
            let lock = locks.path().join("nodes/res/.lock");
            std::fs::rename(lock.join(&states[0]), lock.join("garbage")).expect("corrupt it");
        }
        let rel = locks.state_path("res", "garbage");
        let place = match locks.store() {
            hasp::Store::Dir(dir) => dir,
            etcd => std::path::PathBuf::from(etcd.to_string()),
        };
        for result in [
            registry.status("res").map(drop),
            registry.lock("res", &LockOptions::client("d")).map(drop),
            registry.list("").map(drop),
        ] {
            match result {
                Err(err @ Error::CorruptRecord { .. }) => {
                    assert!(!err.is_refusal());
                    assert!(err.to_string().contains(&rel), "{err}");
                    assert!(
                        err.to_string().ends_with(&format!(" ({})", locks.place())),
                        "{err}"
                    );
                    let Error::CorruptRecord { dir, file, .. } = err else {
                        unreachable!()
                    };
                    assert_eq!(file, std::path::Path::new(&rel));
                    assert_eq!(dir, place);
                }
                other => panic!("expected CorruptRecord, got {other:?}"),
            }
        }
    }
}

both! {
    /// A subtree of more nodes than one read takes (512 keys a page on
    /// etcd): the check of lock-children sees its last node, and a listing
    /// has every held lock.
    fn a_subtree_larger_than_a_page_is_read_to_its_end(locks: &Locks) {
        const N: usize = 520;
        let mut registry = open(locks);
        let child = |i: usize| format!("p/c{i:04}");
        let c = UnlockKey::Client("c".into());
        // Every child a node, only the last one (in key order) held.
        for i in 0..N {
            registry
                .lock(&child(i), &LockOptions::client("c"))
                .expect("lock");
            if i + 1 < N {
                registry.unlock(&child(i), &c).expect("unlock");
            }
        }
        already_locked_by(registry.lock("p", &LockOptions::client("parent")), "c");
        let held = registry.list("p").expect("list");
        let held: Vec<&str> = held.iter().map(|h| h.resource.as_str()).collect();
        assert_eq!(held, [child(N - 1)]);
        registry.unlock(&child(N - 1), &c).expect("unlock");
        registry
            .lock("p", &LockOptions::client("parent"))
            .expect("a free subtree");
        already_locked_by(registry.lock(&child(N - 1), &LockOptions::client("c")), "parent");
        registry
            .unlock("p", &UnlockKey::Client("parent".into()))
            .expect("unlock");

        // Every child held: listed, in order, each with its own fencing.
        for i in 0..N {
            let grant = registry
                .lock(&child(i), &LockOptions::client("c"))
                .expect("lock");
            let expected = if i + 1 < N { 2 } else { 3 };
            assert!(grant.holder.fencing >= expected, "{grant:?}");
        }
        let held = registry.list("").expect("list");
        let names: Vec<String> = held.into_iter().map(|h| h.resource).collect();
        let all: Vec<String> = (0..N).map(child).collect();
        assert_eq!(names, all);
    }
}
