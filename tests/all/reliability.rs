//! The reliability suite: many clients through every door at once, counted.
//!
//! **Mixed doors, no double grant.** Two `hasp serve` daemons on one lock
//! directory, `hasp` CLI processes and the Rust API in this process take
//! locks in a small tree (`t`, `t/a`, `t/b`, `t/a/x`) through every door at
//! random: Locker, XML-RPC and `/v1` on either daemon, the CLI, the API.
//! Each holder proves it is alone by creating, with O_EXCL, one marker file
//! per resource in its subtree (a lock on `t/a` claims `t/a` and `t/a/x`):
//! two conflicting locks (one an ancestor of, or equal to, the other)
//! always claim a marker in common, two compatible ones (`t/a`, `t/b`)
//! never do. A marker that already exists is a double grant. The holder
//! removes its markers before it unlocks. Bounded: a fixed number of
//! attempts per worker. Prints the counts.

use crate::serve::Server;
use crate::support::Locks;
use hasp::{LockOptions, Registry, UnlockKey};
use serde_json::{json, Value};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The tree, and each resource's subtree (itself and what is below it).
const TREE: [(&str, &[&str]); 4] = [
    ("t", &["t", "t/a", "t/b", "t/a/x"]),
    ("t/a", &["t/a", "t/a/x"]),
    ("t/b", &["t/b"]),
    ("t/a/x", &["t/a/x"]),
];
const WORKERS: usize = 6;
const ATTEMPTS: usize = 400;

#[derive(Default)]
struct Counts {
    attempts: AtomicU64,
    grants: AtomicU64,
    refusals: AtomicU64,
    doubles: AtomicU64,
    by_door: [AtomicU64; 6],
}

#[derive(Clone, Copy, Debug)]
enum Door {
    Locker,
    XmlRpc,
    V1,
    V1Leased,
    Cli,
    Api,
}

const DOORS: [Door; 6] = [
    Door::Locker,
    Door::XmlRpc,
    Door::V1,
    Door::V1Leased,
    Door::Cli,
    Door::Api,
];

#[test]
fn mixed_doors_never_double_grant() {
    let locks = Locks::new();
    let servers = [Server::start(&locks, &[]), Server::start(&locks, &[])];
    let markers = tempfile::tempdir().expect("marker dir");
    let counts = Arc::new(Counts::default());
    std::thread::scope(|scope| {
        for worker in 0..WORKERS {
            let (locks, servers, counts) = (&locks, &servers, counts.clone());
            let markers = markers.path();
            scope.spawn(move || {
                let mut registry = Registry::open(locks.path()).expect("open");
                let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
                for _ in 0..ATTEMPTS {
                    let (resource, subtree) = TREE[random.below(TREE.len())];
                    let door = DOORS[random.below(DOORS.len())];
                    let server = &servers[random.below(servers.len())];
                    let client = format!("w{worker}");
                    counts.attempts.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = take(door, server, locks, &mut registry, resource, &client)
                    else {
                        counts.refusals.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    counts.grants.fetch_add(1, Ordering::Relaxed);
                    counts.by_door[door as usize].fetch_add(1, Ordering::Relaxed);
                    let claimed = claim(markers, subtree);
                    if claimed.len() < subtree.len() {
                        counts.doubles.fetch_add(1, Ordering::Relaxed);
                        eprintln!("DOUBLE GRANT: {door:?} {resource} by {client}");
                    }
                    for marker in &claimed {
                        std::fs::remove_file(marker).expect("remove marker");
                    }
                    release(door, server, locks, &mut registry, resource, &client, key);
                }
            });
        }
    });
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "mixed doors: {} attempts, {} grants, {} refusals, {} double grants \
         (grants by door: Locker {}, XML-RPC {}, /v1 {}, /v1 with a lease {}, CLI {}, API {})",
        get(&counts.attempts),
        get(&counts.grants),
        get(&counts.refusals),
        get(&counts.doubles),
        get(&counts.by_door[0]),
        get(&counts.by_door[1]),
        get(&counts.by_door[2]),
        get(&counts.by_door[3]),
        get(&counts.by_door[4]),
        get(&counts.by_door[5]),
    );
    assert_eq!(get(&counts.doubles), 0, "double grants");
    assert!(get(&counts.grants) > 0, "nothing was ever granted");
    assert!(
        counts.by_door.iter().all(|d| get(d) > 0),
        "a door never granted"
    );
    // Everything was released: nothing is left held.
    assert_eq!(locks.ok(&["status", "--json"]), "[]\n");
}

/// Creates every marker of `subtree` that does not exist yet (O_EXCL); the
/// ones created.
fn claim(dir: &Path, subtree: &[&str]) -> Vec<PathBuf> {
    let mut claimed = Vec::new();
    for resource in subtree {
        let marker = dir.join(resource.replace('/', "_"));
        if OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
        {
            claimed.push(marker);
        }
    }
    claimed
}

/// What releases a grant.
enum Key {
    Token(String),
    Client,
}

/// One lock attempt through `door`; the key that releases it, or `None`
/// when it was refused (held, or a conflicting parent or child).
fn take(
    door: Door,
    server: &Server,
    locks: &Locks,
    registry: &mut Registry,
    resource: &str,
    client: &str,
) -> Option<Key> {
    match door {
        Door::Locker => {
            let (status, got) = server.get_json(&format!("/canhaz/{resource}?id={client}"));
            assert_eq!(status, 200, "{got}");
            (got["ok"] == true).then(|| Key::Token(text(&got["token"])))
        }
        Door::XmlRpc => {
            let (status, body) = server.post("/RPC2", &xmlrpc("lock", resource, client));
            assert_eq!(status, 200, "{body}");
            if body.contains("<fault>") {
                assert!(body.contains("Resource already locked by"), "{body}");
                None
            } else {
                Some(Key::Client)
            }
        }
        Door::V1 | Door::V1Leased => {
            let mut request = json!({"resource": resource, "client": client});
            if matches!(door, Door::V1Leased) {
                // Long enough never to run out under a holder here.
                request["ttl_ms"] = json!(60_000);
            }
            let (status, got) = server.post_json("/v1/lock", &request);
            match status {
                200 => Some(Key::Token(text(&got["token"]))),
                409 => None,
                _ => panic!("/v1/lock: {status} {got}"),
            }
        }
        Door::Cli => {
            let run = locks.run(&["lock", resource, "--client", client]);
            match run.code {
                0 => Some(Key::Client),
                1 => None,
                _ => panic!("hasp lock: {run:?}"),
            }
        }
        Door::Api => match registry.lock(resource, &LockOptions::client(client)) {
            Ok(grant) => Some(Key::Token(grant.token)),
            Err(err) if err.is_refusal() => None,
            Err(err) => panic!("Registry::lock: {err}"),
        },
    }
}

/// Releases what [`take`] granted, through the same door.
fn release(
    door: Door,
    server: &Server,
    locks: &Locks,
    registry: &mut Registry,
    resource: &str,
    client: &str,
    key: Key,
) {
    match (door, key) {
        (Door::Locker, Key::Token(token)) => {
            let (_, got) = server.get_json(&format!("/nowant/{resource}?token={token}"));
            assert_eq!(got["ok"], true, "{got}");
        }
        (Door::XmlRpc, _) => {
            let (_, body) = server.post("/RPC2", &xmlrpc("unlock", resource, client));
            assert!(!body.contains("<fault>"), "{body}");
        }
        (Door::V1 | Door::V1Leased, Key::Token(token)) => {
            let (status, got) =
                server.post_json("/v1/unlock", &json!({"resource": resource, "token": token}));
            assert_eq!(status, 200, "{got}");
        }
        (Door::Cli, _) => {
            locks.ok(&["unlock", resource, "--client", client]);
        }
        (Door::Api, Key::Token(token)) => {
            registry
                .unlock(resource, &UnlockKey::Token(token))
                .expect("Registry::unlock");
        }
        (door, _) => unreachable!("{door:?} gives no such key"),
    }
}

fn xmlrpc(method: &str, resource: &str, client: &str) -> String {
    format!(
        "<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>\
         <param><value><string>{resource}</string></value></param>\
         <param><value><string>{client}</string></value></param></params></methodCall>"
    )
}

fn text(value: &Value) -> String {
    value.as_str().expect("a string").to_string()
}

/// xorshift64*: a reproducible random sequence per worker.
struct Random(u64);

impl Random {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}
