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
use crate::support::{Locks, Tmpfs};
use hasp::{LockOptions, Registry, UnlockKey};
use serde_json::{json, Value};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The longest a round waits for its grants before the kill.
const GUARD: Duration = Duration::from_secs(5);
/// Rounds of the kill -9 loop.
const KILLS: usize = 20;
/// Clients locking through the daemon while it is killed.
const LOCKERS: usize = 4;

/// **kill -9 under load.** A daemon is killed (SIGKILL) at a moment that
/// varies from round to round while clients lock new resources through it,
/// then restarted on the same directory. After each restart every grant
/// that was acknowledged is still held, with its fencing token and client;
/// no state is corrupt; attempts that were never answered may be held, and
/// are released by their client id.
#[test]
fn kill_9_under_load_keeps_every_acknowledged_grant() {
    let locks = Locks::new();
    let (mut acknowledged, mut unanswered_held) = (0usize, 0usize);
    let mut random = Random(0x2545_f491_4f6c_dd1d);
    for round in 0..KILLS {
        let server = Server::start(&locks, &[]);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let granted: Vec<Vec<(String, u64)>> = std::thread::scope(|scope| {
            let lockers: Vec<_> = (0..LOCKERS)
                .map(|n| {
                    let (stream, stop) = (server.connect(), &stop);
                    scope.spawn(move || lock_until_cut(stream, stop, round, n))
                })
                .collect();
            // Let some grants through, then kill it in mid-flight.
            let (target, guard) = (20 + random.below(200), Instant::now() + GUARD);
            while held_count(&locks, round) < target && Instant::now() < guard {
                std::thread::sleep(Duration::from_millis(1));
            }
            server.kill();
            stop.store(true, Ordering::Relaxed);
            lockers
                .into_iter()
                .map(|l| l.join().expect("locker"))
                .collect()
        });
        // Restarted on the same directory: every acknowledged grant holds.
        let server = Server::start(&locks, &[]);
        let (status, list) = server.get_json(&format!("/v1/list?prefix=k{round}"));
        assert_eq!(status, 200, "{list}");
        let held: std::collections::BTreeMap<String, (String, u64)> = list["locks"]
            .as_array()
            .expect("locks")
            .iter()
            .map(|h| {
                let resource = text(&h["resource"]);
                (
                    resource,
                    (text(&h["client"]), h["fencing"].as_u64().expect("fencing")),
                )
            })
            .collect();
        for (n, grants) in granted.iter().enumerate() {
            for (resource, fencing) in grants {
                assert_eq!(
                    held.get(resource),
                    Some(&(format!("c{n}"), *fencing)),
                    "round {round}: the acknowledged grant of {resource} was lost"
                );
                acknowledged += 1;
            }
        }
        // Attempts nobody heard back from are released by their client id.
        let answered: std::collections::BTreeSet<&String> =
            granted.iter().flatten().map(|(r, _)| r).collect();
        for (resource, (client, _)) in &held {
            if !answered.contains(resource) {
                locks.ok(&["unlock", resource, "--client", client]);
                unanswered_held += 1;
            }
        }
        drop(server);
    }
    // No state anywhere is corrupt.
    let status = locks.run(&["status"]);
    assert_eq!((status.code, status.stderr.as_str()), (0, ""), "{status:?}");
    println!(
        "kill -9 loop: {KILLS} kills under load, {acknowledged} acknowledged grants, all \
         {acknowledged} kept with their fencing tokens; {unanswered_held} unanswered attempts \
         were left held and released by their client id"
    );
    assert!(acknowledged > 0, "nothing was acknowledged");
}

/// Locks `k<round>/<n>/<i>` for i = 0, 1, ... through `/v1` on the
/// keep-alive connection `stream` until the daemon goes away (or `stop`);
/// the acknowledged grants with their fencing tokens.
fn lock_until_cut(
    stream: std::net::TcpStream,
    stop: &std::sync::atomic::AtomicBool,
    round: usize,
    n: usize,
) -> Vec<(String, u64)> {
    use std::io::{BufReader, Write};
    let mut granted = Vec::new();
    let Ok(mut writer) = stream.try_clone() else {
        return granted;
    };
    let mut reader = BufReader::new(stream);
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let resource = format!("k{round}/{n}/{i}");
        let body = json!({"resource": resource, "client": format!("c{n}")}).to_string();
        // Kept alive (the serve tests' `request` asks to close).
        let raw = crate::http_client::request(
            "POST",
            "/v1/lock",
            &[("Host", "hasp.test")],
            Some(body.as_bytes()),
        );
        if writer.write_all(&raw).is_err() {
            break;
        }
        match crate::serve::read_response(&mut reader) {
            Ok(response) if response.status == 200 => {
                let fencing = response.json()["fencing"].as_u64().expect("fencing");
                granted.push((resource, fencing));
            }
            Ok(response) => panic!("/v1/lock {resource}: {}", response.status),
            Err(_) => break, // cut: this attempt may or may not be held
        }
    }
    granted
}

/// How many locks are held below `k<round>`, read from the directory as
/// the CLI would (node directories that exist).
fn held_count(locks: &Locks, round: usize) -> usize {
    (0..LOCKERS)
        .map(|n| {
            std::fs::read_dir(locks.path().join(format!("nodes/k{round}/{n}")))
                .map_or(0, |entries| entries.count().saturating_sub(1))
        })
        .sum()
}

/// **A full disk.** A tiny tmpfs (few inodes) as the lock directory, served
/// by the daemon with and without `--fsync`: when it fills, a lock is
/// refused with 507 and one line saying the disk is full; nothing is torn
/// (the CLI reads every state); every held lock still unlocks; and once
/// there is room again, locking works again. Needs root (a mount); says so
/// and passes elsewhere.
#[test]
fn a_full_disk_refuses_cleanly_and_recovers() {
    for fsync in [false, true] {
        let Some(mount) = Tmpfs::mount("nr_inodes=128,size=4m") else {
            return;
        };
        let locks = Locks::new_in(mount.path());
        let extra: &[&str] = if fsync { &["--fsync"] } else { &[] };
        let server = Server::start(&locks, extra);
        let mut held = Vec::new();
        let refusal = loop {
            let resource = format!("r{}", held.len());
            let (status, got) = server.post_json(
                "/v1/lock",
                &json!({"resource": resource, "client": "filler"}),
            );
            if status != 200 {
                break (status, got);
            }
            held.push((resource, text(&got["token"])));
            assert!(held.len() < 1000, "the disk never filled");
        };
        let (status, got) = refusal;
        assert_eq!(status, 507, "fsync {fsync}: {got}");
        assert_eq!(got["error"]["code"], "insufficient-storage", "{got}");
        let message = text(&got["error"]["message"]);
        assert!(
            message.contains("no space left") && !message.contains('\n'),
            "{message}"
        );
        assert!(!held.is_empty());
        // The status line has its reason phrase.
        let mut stream = server.connect();
        let body = json!({"resource": "one-more", "client": "filler"}).to_string();
        let raw = crate::http_client::request(
            "POST",
            "/v1/lock",
            &[("Host", "h"), ("Connection", "close")],
            Some(body.as_bytes()),
        );
        std::io::Write::write_all(&mut stream, &raw).expect("send");
        let head = crate::http_client::read_head(&mut std::io::BufReader::new(stream));
        assert_eq!(
            head.expect("a head").line,
            "HTTP/1.1 507 Insufficient Storage"
        );
        // The failure is logged, once for the run of them.
        assert!(server.stderr_says(|t| t.contains(" WARN hasp::serve: a call failed: ")));
        let logged = server.stderr();
        assert_eq!(
            logged.matches(" WARN hasp::serve: a call failed: ").count(),
            1,
            "{logged}"
        );
        assert!(logged.contains("no space left on the device"), "{logged}");
        // Nothing torn: the CLI reads every state, and exactly the grants.
        let listed = locks.json(&["status", "--json"]);
        assert_eq!(
            listed.as_array().map(Vec::len),
            Some(held.len()),
            "{listed}"
        );
        // Every held lock still unlocks (a rename needs no new inode).
        for (resource, token) in &held {
            let (status, got) =
                server.post_json("/v1/unlock", &json!({"resource": resource, "token": token}));
            assert_eq!(status, 200, "unlock {resource}: {got}");
        }
        // Room again: locking works again, through the daemon and the CLI.
        mount.remount("nr_inodes=4096");
        let (status, got) =
            server.post_json("/v1/lock", &json!({"resource": "after", "client": "c"}));
        assert_eq!(status, 200, "{got}");
        locks.ok(&["lock", "after-cli", "--client", "c"]);
        println!(
            "full disk{}: {} grants until it filled, then 507 ({message}); all released; \
             locking again after room was made",
            if fsync { " with --fsync" } else { "" },
            held.len()
        );
        drop(server);
    }
}
