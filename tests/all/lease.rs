//! Leases through the Rust API, the stock `wasmtime` CLI and plugins: expiry,
//! take-over, renewal, `lease-expired`, request ids, forced unlocks, and a
//! format 2 directory upgraded in place.
//!
//! A test here may sleep past a lease of a few hundred milliseconds (on
//! etcd, plus its skew margin); none asserts how long anything took. The
//! bodies that need no stock `wasmtime`, plugin or hand-made directory run
//! on both stores (`both!`).

use crate::support::{both, Locks, Run};
use crate::wasmtime_cli::wasm;
use hasp::{Error, LockOptions, Registry, UnlockKey};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// A lease short enough to outwait in a test, long enough for a few
/// processes to start on a loaded 2-core machine.
const SHORT: Duration = Duration::from_millis(500);
/// A lease that outlives a `wasmtime run` under load.
const LONGER: Duration = Duration::from_millis(2000);

fn open(locks: &Locks) -> Registry {
    locks.registry()
}

/// Sleeps until a lease of `ttl` taken just before has certainly run out
/// on the store of `locks` (on etcd, [`Locks::lease_margin_ms`] later).
fn outlive(locks: &Locks, ttl: Duration) {
    std::thread::sleep(ttl + Duration::from_millis(200 + locks.lease_margin_ms()));
}

#[track_caller]
fn lease_expired<T: std::fmt::Debug>(
    result: Result<T, Error>,
    resource: &str,
    client: &str,
    fencing: u64,
) {
    match result {
        Err(err @ Error::LeaseExpired { .. }) => {
            assert!(err.is_refusal());
            assert_eq!(
                err.to_string(),
                format!(
                    "Lease expired: the lock on '{resource}' taken by '{client}' (fencing \
                     {fencing}) ran out before it was renewed, and is no longer held by it"
                )
            );
        }
        other => panic!("expected LeaseExpired, got {other:?}"),
    }
}

both! {
    fn a_lease_ends_by_itself_and_the_next_grant_has_a_higher_fencing_token(locks: &Locks) {
        let mut registry = open(locks);
        let grant = registry
            .lock("deploy", &LockOptions::client("ci-1").with_ttl(SHORT))
            .expect("lock");
        let expires = grant.holder.expires_ms.expect("a lease");
        assert_eq!(expires, grant.holder.since_ms + 500);
        assert_eq!(grant.holder.ttl_ms, Some(500));
        assert_eq!(
            registry.status("deploy").expect("status"),
            Some(grant.holder.clone())
        );
        match registry.lock("deploy", &LockOptions::client("ci-2")) {
            Err(Error::AlreadyLocked { holder, .. }) => assert_eq!(holder, "ci-1"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Held in every view until it runs out...
        let status = locks.json(&["status", "deploy", "--json"]);
        assert_eq!(status["expires_ms"], expires);
        assert_eq!(status["ttl_ms"], 500);
        outlive(locks, SHORT);
        // ...then free in every view: the API, the CLI, a listing.
        assert_eq!(registry.status("deploy").expect("status"), None);
        assert_eq!(locks.ok(&["status", "deploy"]), "not locked\n");
        assert_eq!(registry.list("").expect("list"), vec![]);
        let next = registry
            .lock("deploy", &LockOptions::client("ci-2"))
            .expect("take the expired lock");
        assert_eq!(next.holder.fencing, grant.holder.fencing + 1);
        assert_eq!(next.holder.expires_ms, None);
        // The held state (a file name on disk, a key's value on etcd) says
        // the lease: flags `pcl`, then its end and length.
        locks.ok(&["unlock", "deploy", "--client", "ci-2"]);
        registry
            .lock("deploy", &LockOptions::client("ci-3").with_ttl(SHORT))
            .expect("lock");
        let [state] = &locks.states("deploy")[..] else {
            panic!("one state")
        };
        let fields: Vec<&str> = state.split('+').collect();
        assert_eq!(fields[0], "3");
        assert_eq!(fields[2], "pcl");
        assert_eq!(fields[5], "500");
        assert_eq!(fields[6], "ci-3");
    }
}

both! {
    fn renewal_keeps_the_fencing_token_and_pushes_the_end_back(locks: &Locks) {
        let mut registry = open(locks);
        let grant = registry
            .lock("job", &LockOptions::default().with_ttl(SHORT))
            .expect("lock");
        let by_token = UnlockKey::Token(grant.token.clone());
        let renewed = registry
            .renew("job", &by_token, Some(Duration::from_secs(5)))
            .expect("renew");
        assert_eq!(renewed.fencing, grant.holder.fencing);
        assert_eq!(renewed.since_ms, grant.holder.since_ms);
        assert_eq!(renewed.ttl_ms, Some(5000));
        assert!(renewed.expires_ms > grant.holder.expires_ms);
        outlive(locks, SHORT);
        // Past the first lease's end, it is still held, with the same token.
        assert_eq!(
            registry.status("job").expect("status"),
            Some(renewed.clone())
        );
        // A renewal without a length uses the lease's own (now 5 s).
        let again = registry.renew("job", &by_token, None).expect("renew");
        assert_eq!(
            (again.fencing, again.ttl_ms),
            (grant.holder.fencing, Some(5000))
        );
        registry.unlock("job", &by_token).expect("unlock");

        // A lock without a lease gets one from a renewal with a length, and
        // none without.
        let plain = registry
            .lock("plain", &LockOptions::client("me"))
            .expect("lock");
        let me = UnlockKey::Client("me".into());
        match registry.renew("plain", &me, None) {
            Err(Error::InvalidInput { message }) => assert_eq!(
                message,
                "the lock on 'plain' has no lease: give the renewal a TTL"
            ),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        let leased = registry.renew("plain", &me, Some(SHORT)).expect("renew");
        assert_eq!(
            (leased.fencing, leased.ttl_ms),
            (plain.holder.fencing, Some(500))
        );
        // Somebody else's key renews nothing.
        match registry.renew("plain", &UnlockKey::Client("other".into()), Some(SHORT)) {
            Err(Error::NotOwner { holder, .. }) => assert_eq!(holder, "me"),
            other => panic!("expected NotOwner, got {other:?}"),
        }
    }
}

both! {
    fn the_owner_learns_that_its_lease_ran_out_whether_or_not_it_was_taken_since(locks: &Locks) {
        let mut registry = open(locks);
        // Nobody took it: unlock and renew by client id and by token say so.
        let grant = registry
            .lock("a", &LockOptions::client("ci-1").with_ttl(SHORT))
            .expect("lock");
        outlive(locks, SHORT);
        let by_token = UnlockKey::Token(grant.token.clone());
        let by_client = UnlockKey::Client("ci-1".into());
        lease_expired(registry.unlock("a", &by_client), "a", "ci-1", 1);
        lease_expired(registry.unlock("a", &by_token), "a", "ci-1", 1);
        lease_expired(registry.renew("a", &by_client, None), "a", "ci-1", 1);
        lease_expired(registry.renew("a", &by_token, Some(SHORT)), "a", "ci-1", 1);
        // The CLI says the same, exit 1.
        locks
            .run(&["unlock", "a", "--client", "ci-1"])
            .assert_refused(
                1,
                "Lease expired: the lock on 'a' taken by 'ci-1' (fencing 1) ran out before it was \
             renewed, and is no longer held by it",
            );

        // Somebody took it since (another process: the CLI).
        locks.ok(&["lock", "a", "--client", "ci-2"]);
        lease_expired(registry.unlock("a", &by_client), "a", "ci-1", 1);
        lease_expired(registry.unlock("a", &by_token), "a", "ci-1", 1);
        lease_expired(registry.renew("a", &by_token, None), "a", "ci-1", 1);
        // ...and released it: still the owner's answer, never "not locked".
        locks.ok(&["unlock", "a", "--client", "ci-2"]);
        lease_expired(registry.unlock("a", &by_client), "a", "ci-1", 1);
        lease_expired(registry.renew("a", &by_token, None), "a", "ci-1", 1);
        // A client that never held it is told as before.
        match registry.unlock("a", &UnlockKey::Client("stranger".into())) {
            Err(Error::NotLocked { .. }) => {}
            other => panic!("expected NotLocked, got {other:?}"),
        }
        // Once the client locks again and lets go, its old lease is history.
        let again = registry
            .lock("a", &LockOptions::client("ci-1"))
            .expect("lock");
        assert_eq!(again.holder.fencing, 3);
        registry.unlock("a", &by_client).expect("unlock");
        match registry.unlock("a", &by_client) {
            Err(Error::NotLocked { .. }) => {}
            other => panic!("expected NotLocked, got {other:?}"),
        }

        // A client that takes over its own expired lease and releases it
        // normally is told "not locked" by a second unlock (an EXIT trap after
        // a re-run), while the old token still learns that its lease ran out.
        let old = registry
            .lock("b", &LockOptions::client("ci-1").with_ttl(SHORT))
            .expect("lock");
        outlive(locks, SHORT);
        registry
            .lock("b", &LockOptions::client("ci-1"))
            .expect("take over its own lease");
        registry.unlock("b", &by_client).expect("unlock");
        match registry.unlock("b", &by_client) {
            Err(Error::NotLocked { .. }) => {}
            other => panic!("expected NotLocked, got {other:?}"),
        }
        lease_expired(
            registry.unlock("b", &UnlockKey::Token(old.token)),
            "b",
            "ci-1",
            1,
        );
    }
}

both! {
    fn expired_locks_do_not_block_their_parents_or_children(locks: &Locks) {
        let mut registry = open(locks);
        registry
            .lock("tree/leaf", &LockOptions::client("a").with_ttl(SHORT))
            .expect("lock the child");
        registry
            .lock("other", &LockOptions::client("a").with_ttl(SHORT))
            .expect("lock");
        registry
            .lock("other/parent-of", &LockOptions::client("x").with_ttl(SHORT))
            .expect_err("its parent is held");
        match registry.lock("tree", &LockOptions::client("b")) {
            Err(Error::AlreadyLocked { holder, .. }) => assert_eq!(holder, "a"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        outlive(locks, SHORT);
        registry
            .lock("tree", &LockOptions::client("b"))
            .expect("the child's lease ran out");
        registry
            .lock("other/parent-of", &LockOptions::client("b"))
            .expect("the parent's lease ran out");
    }
}

both! {
    fn a_retry_with_the_same_request_id_gets_the_same_grant(locks: &Locks) {
        let mut registry = open(locks);
        let options = |id: &str| LockOptions {
            request_id: Some(id.to_string()),
            ..LockOptions::client("worker")
        };
        let id = "5b0c1c53-3f5e-4a4f-8a64-8b7e2f0f5d11";
        let first = registry.lock("job", &options(id)).expect("lock");
        let retry = registry.lock("job", &options(id)).expect("retry");
        assert_eq!(retry, first);
        // The same request id from another client is another request.
        let stranger = LockOptions {
            request_id: Some(id.to_string()),
            ..LockOptions::client("evil")
        };
        match registry.lock("job", &stranger) {
            Err(Error::AlreadyLocked { holder, .. }) => assert_eq!(holder, "worker"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Any other request, the same client's included, is refused as ever.
        match registry.lock("job", &options("another-request")) {
            Err(Error::AlreadyLocked { holder, .. }) => assert_eq!(holder, "worker"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        match registry.lock("job", &LockOptions::client("worker")) {
            Err(Error::AlreadyLocked { .. }) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another process sees the same: the grant is recognised on disk.
        let mut other = open(locks);
        assert_eq!(other.lock("job", &options(id)).expect("retry"), first);
        // Once released, the same id takes a new lock with a new token.
        registry
            .unlock("job", &UnlockKey::Token(first.token.clone()))
            .expect("unlock");
        let later = registry.lock("job", &options(id)).expect("lock");
        assert_eq!(later.holder.fencing, first.holder.fencing + 1);
        assert_ne!(later.token, first.token);
        match registry.lock("job", &options("")) {
            Err(Error::InvalidInput { .. }) => {}
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
}

both! {
    fn force_unlock_breaks_any_lock_and_the_fencing_goes_on(locks: &Locks) {
        let mut registry = open(locks);
        // An anonymous lock whose token was lost: nothing else opens it.
        let lost = registry
            .lock("stuck", &LockOptions::default())
            .expect("lock");
        let broken = registry.force_unlock("stuck").expect("force");
        assert_eq!(broken, lost.holder);
        assert_eq!(registry.status("stuck").expect("status"), None);
        match registry.force_unlock("stuck") {
            Err(Error::NotLocked { message }) => assert_eq!(message, "Resource not locked"),
            other => panic!("expected NotLocked, got {other:?}"),
        }
        let next = registry
            .lock("stuck", &LockOptions::client("me"))
            .expect("lock");
        assert_eq!(next.holder.fencing, lost.holder.fencing + 1);
        // The CLI says whose lock it broke.
        assert_eq!(
            locks.ok(&["unlock", "stuck", "--force"]),
            "broke the lock on 'stuck' held by 'me' (fencing 2)\n"
        );
        // The owner of a broken lock is told it is not locked any more.
        match registry.unlock("stuck", &UnlockKey::Token(next.token)) {
            Err(Error::NotLocked { .. }) => {}
            other => panic!("expected NotLocked, got {other:?}"),
        }
    }
}

both! {
    fn leases_out_of_range_are_refused_and_change_nothing(locks: &Locks) {
        let mut registry = open(locks);
        for ttl in [Duration::ZERO, Duration::from_secs(31 * 24 * 3600)] {
            match registry.lock("x", &LockOptions::client("c").with_ttl(ttl)) {
                Err(Error::InvalidInput { message }) => assert!(
                    message.contains("a lease lasts from 1 ms to 30 days"),
                    "{message}"
                ),
                other => panic!("expected InvalidInput, got {other:?}"),
            }
        }
        // A client id of 151..160 bytes is fine without a lease, not with one.
        let long = "c".repeat(155);
        match registry.lock("x", &LockOptions::client(long.clone()).with_ttl(SHORT)) {
            Err(Error::InvalidInput { message }) => {
                assert!(message.contains("at most 150 bytes"), "{message}")
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
        assert!(locks.states("x").is_empty());
        registry
            .lock("x", &LockOptions::client(long))
            .expect("no lease, no limit");
    }
}

/// A format 2 directory as the previous hasp left it: two held locks (one
/// anonymous) and a free node whose fencing number is 41.
fn format_2_directory(dir: &Path) {
    fs::write(dir.join("FORMAT"), "hasp-lock-dir 2\n").expect("write FORMAT");
    fs::create_dir_all(dir.join("tmp")).expect("tmp");
    let state = |node: &str, name: &str| {
        let lock = dir.join("nodes").join(node).join(".lock");
        fs::create_dir_all(&lock).expect("make node");
        fs::write(lock.join(name), "").expect("write state");
    };
    state(
        "deploy",
        "7+0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b+pc+1795450452162+ci-42+x",
    );
    state("deploy/prod", "0");
    state(
        "anon",
        "3+1f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b+-c+1795450452162",
    );
    state("free", "41");
}

#[test]
fn a_format_2_directory_keeps_its_locks_and_fencing_numbers() {
    let locks = Locks::new();
    format_2_directory(locks.path());
    // Held locks stay held, with no lease, by the same owners.
    let status = locks.json(&["status", "deploy", "--json"]);
    assert_eq!(
        (
            &status["client"],
            &status["fencing"],
            status.get("expires_ms")
        ),
        (&serde_json::json!("ci-42+x"), &serde_json::json!(7), None)
    );
    assert_eq!(
        fs::read_to_string(locks.path().join("FORMAT")).expect("read"),
        "hasp-lock-dir 3\n"
    );
    locks
        .run(&["lock", "deploy/prod", "--client", "b"])
        .assert_refused(1, "Resource already locked by 'ci-42+x'");
    locks
        .run(&["lock", "anon", "--client", "b"])
        .assert_refused(1, "Resource already locked by '?'");
    locks.ok(&["unlock", "deploy", "--client", "ci-42+x"]);
    locks.ok(&[
        "unlock",
        "anon",
        "--token",
        "1f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b",
    ]);
    // Fencing numbers go on.
    let grant = locks.json(&["lock", "free", "--client", "b", "--json"]);
    assert_eq!(grant["fencing"], 42);
    let grant = locks.json(&["lock", "deploy", "--client", "b", "--ttl", "5s", "--json"]);
    assert_eq!(grant["fencing"], 8);
    assert_eq!(grant["ttl_ms"], 5000);
}

#[test]
fn a_lease_taken_through_the_api_expires_for_stock_wasmtime_too() {
    let locks = Locks::new();
    let mut registry = open(&locks);
    let grant = registry
        .lock("shared", &LockOptions::client("api").with_ttl(LONGER))
        .expect("lock");
    wasm(&locks, &["lock", "shared", "--client", "wasm"])
        .assert_refused(1, "Resource already locked by 'api'");
    outlive(&locks, LONGER);
    let run = wasm(
        &locks,
        &[
            "lock", "shared", "--client", "wasm", "--ttl", "2s", "--json",
        ],
    );
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    let taken: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(taken["fencing"], grant.holder.fencing + 1);
    assert_eq!(taken["ttl_ms"], 2000);
    // The component's renew and the CLI's agree on the same lock.
    let renewed = wasm(
        &locks,
        &["renew", "shared", "--client", "wasm", "--ttl", "1m"],
    );
    assert_eq!(
        (
            renewed.code,
            renewed.stdout.as_str(),
            renewed.stderr.as_str()
        ),
        (0, "", "")
    );
    let status = locks.json(&["status", "shared", "--json"]);
    assert_eq!(
        (&status["ttl_ms"], &status["fencing"]),
        (&serde_json::json!(60000), &taken["fencing"])
    );
    // Its status table shows when the lease ends, as `hasp status` does.
    let table = wasm(&locks, &["status"]);
    assert_eq!(table.stdout, locks.ok(&["status"]));
    assert!(
        table.stdout.starts_with("RESOURCE  OWNER  SINCE"),
        "{table:?}"
    );
    assert!(
        table
            .stdout
            .lines()
            .next()
            .unwrap_or("")
            .ends_with("EXPIRES"),
        "{table:?}"
    );
    // The API's owner learns its lease ran out, from the component's rules.
    lease_expired(
        registry.renew("shared", &UnlockKey::Token(grant.token), None),
        "shared",
        "api",
        1,
    );
    wasm(&locks, &["renew", "shared", "--client", "api"]).assert_refused(
        1,
        "Lease expired: the lock on 'shared' taken by 'api' (fencing 1) ran out before it was \
         renewed, and is no longer held by it",
    );
    // An anonymous lock prints its token, which unlocks it.
    let anon = wasm(&locks, &["lock", "anon"]);
    assert_eq!(anon.code, 0, "{anon:?}");
    let token = anon.stdout.trim_end();
    assert!(crate::support::is_uuid_v4(token), "{anon:?}");
    assert_eq!(wasm(&locks, &["unlock", "anon", "--token", token]).code, 0);
    let bad = wasm(&locks, &["lock", "x", "--ttl", "soon"]);
    assert_eq!((bad.code, bad.stdout.as_str()), (2, ""), "{bad:?}");
    assert!(
        bad.stderr
            .starts_with("--ttl: 'soon' is not a duration (e.g. 30s"),
        "{bad:?}"
    );
}

/// The example plugin as it was built against `hasp:lock@0.1.0`, before
/// leases: a log rotator (examples/plugin at that version).
const PLUGIN_0_1: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/plugin-0.1.0.wasm"
);

#[test]
fn a_plugin_built_against_0_1_0_still_runs() {
    let locks = Locks::new();
    let run = |client: &str, keep: bool| {
        let mut cmd = locks.command(&[
            "plugin", "run", PLUGIN_0_1, "--", "app.log", "--client", client,
        ]);
        if keep {
            cmd.arg("--keep");
        }
        Run::from(cmd.output().expect("run hasp plugin run"))
    };
    let first = run("old-1", true);
    assert_eq!(
        (first.code, first.stdout.as_str(), first.stderr.as_str()),
        (0, "old-1 rotates app.log (fencing token 1)\n", "")
    );
    run("old-2", false).assert_refused(1, "app.log is being rotated by 'old-1'; skipped");
    // A leased lock taken by a new client is an ordinary lock to it.
    locks.ok(&["unlock", "logs/app.log", "--client", "old-1"]);
    locks.ok(&["lock", "logs/app.log", "--client", "new", "--ttl", "1m"]);
    run("old-2", false).assert_refused(1, "app.log is being rotated by 'new'; skipped");
    // It cannot be composed with a guest that exports 0.2.0 only.
    let out = locks.path().join("composed.wasm");
    let compose = Run::from(
        locks
            .command(&["plugin", "compose", PLUGIN_0_1, "-o"])
            .arg(&out)
            .output()
            .expect("run hasp plugin compose"),
    );
    assert_eq!(compose.code, 2, "{compose:?}");
    assert!(compose.stderr.contains("hasp:lock@0.2.0"), "{compose:?}");
}

both! {
    fn a_hand_written_lease_out_of_range_is_corrupt(locks: &Locks) {
        let token = "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b";
        for state in [
            format!("3+{token}+pcl+1795450452162+10000000000000+30000+c"),
            format!("3+{token}+pcl+1795450452162+1795450482162+2592000001+c"),
            format!("3+{token}+pcl+1795450452162+1795450482162+0+c"),
            format!("3+{token}+pcl+1795450452162+1795450482162"),
            format!("3+{token}+pcx+1795450452162"),
        ] {
            let locks = &locks.fresh();
            locks.ok(&["status"]);
            locks.plant("job", &state);
            let run = locks.run(&["status", "job"]);
            assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{state}: {run:?}");
            let path = locks.state_path("job", &state);
            assert!(
                run.stderr
                    .starts_with(&format!("corrupt lock state {path}: ")),
                "{state}: {run:?}"
            );
            assert!(
                run.stderr.ends_with(&format!(" ({})\n", locks.place())),
                "{state}: {run:?}"
            );
            assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
        }
    }
}

both! {
    /// A lease taken over leaves a record in its node (docs/FORMAT.md): its
    /// owner learns from it that the lease ran out, and it is never listed
    /// as a resource. A resource named like such a record is an ordinary
    /// resource, and tells nobody that a lease ran out.
    fn a_lost_lease_record_is_no_resource_and_a_name_like_one_is_no_lost_lease(locks: &Locks) {
        let mut registry = open(locks);
        let parent = |client: &str| LockOptions {
            lock_children: false,
            ..LockOptions::client(client)
        };
        let names = |registry: &mut Registry| -> Vec<String> {
            let held = registry.list("").expect("list");
            held.into_iter().map(|h| h.resource).collect()
        };
        registry
            .lock("q", &parent("ci-41").with_ttl(SHORT))
            .expect("lock");
        outlive(locks, SHORT);
        let next = registry.lock("q", &parent("ci-42")).expect("take over");
        assert_eq!(next.holder.fencing, 2);
        let ci_41 = UnlockKey::Client("ci-41".into());
        lease_expired(registry.unlock("q", &ci_41), "q", "ci-41", 1);
        assert_eq!(names(&mut registry), ["q"]);

        // What ci-43's record would be called, had it lost a lease on `q`.
        let token = "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b";
        for fake in [
            format!("q/.lost+1+{token}+o+ci-43"),
            format!(".lost+1+{token}+o+ci-43"),
        ] {
            let grant = registry
                .lock(&fake, &LockOptions::client("x"))
                .unwrap_or_else(|e| panic!("{fake}: {e}"));
            assert_eq!(grant.holder.fencing, 1, "{fake}");
            assert_eq!(
                registry.status(&fake).expect("status"),
                Some(grant.holder.clone())
            );
        }
        let mut listed = names(&mut registry);
        listed.sort();
        let mut expected = vec![
            format!(".lost+1+{token}+o+ci-43"),
            "q".to_string(),
            format!("q/.lost+1+{token}+o+ci-43"),
        ];
        expected.sort();
        assert_eq!(listed, expected);
        // ci-43 never held `q`: not the owner, not a lost lease.
        for key in [
            UnlockKey::Client("ci-43".into()),
            UnlockKey::Token(token.into()),
        ] {
            match registry.unlock("q", &key) {
                Err(Error::NotOwner { holder, .. }) => assert_eq!(holder, "ci-42"),
                other => panic!("{key:?}: expected NotOwner, got {other:?}"),
            }
        }
        registry
            .unlock("q", &UnlockKey::Client("ci-42".into()))
            .expect("unlock");
        for key in [
            UnlockKey::Client("ci-43".into()),
            UnlockKey::Token(token.into()),
        ] {
            match registry.unlock("q", &key) {
                Err(Error::NotLocked { .. }) => {}
                other => panic!("{key:?}: expected NotLocked, got {other:?}"),
            }
        }
        // The real record still answers its owner.
        lease_expired(registry.unlock("q", &ci_41), "q", "ci-41", 1);
    }
}
