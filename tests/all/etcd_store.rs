//! Locks on etcd (`--store etcd://...`) across processes and daemons, on a
//! real etcd started by the test (`tests/etcd.rs`): two `hasp serve` on one
//! etcd and CLI processes racing through every door never double-grant; a
//! `kill -9` of the etcd leader in a three-member cluster during a race
//! loses no acknowledged grant and grants nothing twice; with etcd stopped
//! every call fails with a clear error and nothing is granted; a waiting
//! lock is woken by an etcd watch.
//!
//! Mutual exclusion is witnessed outside hasp: whoever holds the contended
//! lock makes a directory and removes it again; `mkdir` fails if the
//! directory exists, so two holders at once leave a mark.

use crate::etcd::Etcd;
use crate::http_client;
use crate::support::hasp_bin;
use hasp::{Error, EtcdUrl, LockOptions, Registry, UnlockKey};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long anything may take before a test gives up: a guard against
/// hanging, not a measure of speed.
const GUARD: Duration = Duration::from_secs(120);

/// `hasp --store URL ARGS...`, not yet run.
fn hasp(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(hasp_bin());
    cmd.arg("--store").arg(url).args(args);
    for var in ["HASP_DIR", "HASP_STORE", "HASP_LOG", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(url: &str, args: &[&str]) -> Output {
    hasp(url, args).output().expect("run hasp")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `hasp --store URL serve --addr 127.0.0.1:0`, killed when
/// dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(url: &str) -> Daemon {
        let mut child = hasp(url, &["serve", "--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hasp serve");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr"));
        let mut seen = String::new();
        let addr = loop {
            let mut line = String::new();
            if lines.read_line(&mut line).expect("read stderr") == 0 {
                let _ = child.kill();
                panic!("hasp serve ended before listening: {seen}");
            }
            seen.push_str(&line);
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on http://".len()..];
                assert!(rest.contains(&format!("(store {url}")), "{line}");
                break rest
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .parse()
                    .expect("a socket address");
            }
        };
        // Keep draining its log, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.lines() {});
        Daemon { child, addr }
    }

    /// One request on a connection of its own.
    fn send(&self, method: &str, target: &str, body: Option<&[u8]>) -> http_client::Response {
        let mut stream = http_client::connect(self.addr).expect("connect");
        let request = http_client::request(
            method,
            target,
            &[("Host", "hasp"), ("Connection", "close")],
            body,
        );
        stream.write_all(&request).expect("send");
        http_client::read_response(&mut BufReader::new(stream)).expect("a response")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ways in: each takes the lock on `resource` for `client` if it is
/// free (`Some(fencing)` when the door says it), or is refused.
#[derive(Clone, Copy, Debug)]
enum Door {
    Locker,
    XmlRpc,
    V1,
}

/// A grant through a door: its fencing number when the door tells it.
type Granted = Option<Option<u64>>;

impl Door {
    fn lock(self, daemon: &Daemon, resource: &str, client: &str) -> Granted {
        match self {
            Door::Locker => {
                let answer = daemon.send("GET", &format!("/canhaz/{resource}?id={client}"), None);
                let body = answer.json();
                (body["ok"] == true).then_some(None)
            }
            Door::XmlRpc => {
                let answer = daemon.send(
                    "POST",
                    "/RPC2",
                    Some(xml_call("lock", resource, client).as_bytes()),
                );
                assert_eq!(answer.status, 200, "{answer:?}");
                if answer.body.contains("<fault>") {
                    assert!(answer.body.contains("already locked"), "{answer:?}");
                    None
                } else {
                    Some(None)
                }
            }
            Door::V1 => {
                let body = serde_json::json!({"resource": resource, "client": client});
                let answer = daemon.send("POST", "/v1/lock", Some(body.to_string().as_bytes()));
                match answer.status {
                    200 => Some(answer.json()["fencing"].as_u64()),
                    409 => None,
                    _ => panic!("/v1/lock: {answer:?}"),
                }
            }
        }
    }

    fn unlock(self, daemon: &Daemon, resource: &str, client: &str) {
        let answer = match self {
            Door::Locker => daemon.send("GET", &format!("/nowant/{resource}?id={client}"), None),
            Door::XmlRpc => daemon.send(
                "POST",
                "/RPC2",
                Some(xml_call("unlock", resource, client).as_bytes()),
            ),
            Door::V1 => {
                let body = serde_json::json!({"resource": resource, "client": client});
                daemon.send("POST", "/v1/unlock", Some(body.to_string().as_bytes()))
            }
        };
        assert_eq!(answer.status, 200, "{self:?} unlock: {answer:?}");
        assert!(!answer.body.contains("<fault>"), "{answer:?}");
    }
}

fn xml_call(method: &str, resource: &str, client: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params>\
         <param><value><string>{resource}</string></value></param>\
         <param><value><string>{client}</string></value></param></params></methodCall>"
    )
}

/// The witness of mutual exclusion: a directory only the holder makes.
struct Witness {
    dir: PathBuf,
    broken: AtomicUsize,
}

impl Witness {
    fn new(parent: &Path) -> Witness {
        Witness {
            dir: parent.join("inside"),
            broken: AtomicUsize::new(0),
        }
    }

    /// Enters and leaves the critical section; counts a second holder.
    fn hold(&self) {
        match std::fs::create_dir(&self.dir) {
            Ok(()) => std::fs::remove_dir(&self.dir).expect("leave"),
            Err(_) => {
                self.broken.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// A short random pause between two tries of a refused lock: pacing, so
/// that the racers do not spin; nothing waits on it.
fn pace() {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    std::thread::sleep(Duration::from_micros(500 + random % 2000));
}

#[test]
fn two_daemons_and_cli_processes_racing_through_every_door_never_double_grant() {
    let etcd = Etcd::single();
    let url = etcd.url("race");
    let daemons = [Daemon::start(&url), Daemon::start(&url)];
    let scratch = tempfile::tempdir().expect("temp dir");
    let witness = Witness::new(scratch.path());
    const EACH: usize = 12;
    let grants = AtomicUsize::new(0);
    let refusals = AtomicUsize::new(0);
    let fencing = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|s| {
        for (d, daemon) in daemons.iter().enumerate() {
            for door in [Door::Locker, Door::XmlRpc, Door::V1] {
                let (witness, grants, refusals, fencing) = (&witness, &grants, &refusals, &fencing);
                s.spawn(move || {
                    let client = format!("{door:?}-{d}");
                    let mut mine = 0;
                    while mine < EACH {
                        assert!(started.elapsed() < GUARD, "the race did not finish");
                        match door.lock(daemon, "shared", &client) {
                            Some(number) => {
                                witness.hold();
                                door.unlock(daemon, "shared", &client);
                                fencing.lock().expect("fencing").extend(number);
                                grants.fetch_add(1, Ordering::SeqCst);
                                mine += 1;
                            }
                            None => {
                                refusals.fetch_add(1, Ordering::SeqCst);
                                pace();
                            }
                        }
                    }
                });
            }
        }
        // CLI processes: each waits for the lock (woken by a watch) and
        // holds it while a command checks the witness.
        for c in 0..2 {
            let (url, witness, grants, fencing) = (&url, &witness, &grants, &fencing);
            s.spawn(move || {
                let check = format!(
                    "if mkdir '{0}'; then rmdir '{0}'; else touch '{0}.broken'; fi; \
                     echo \"$HASP_LOCK_FENCING\"",
                    witness.dir.display()
                );
                for _ in 0..EACH {
                    let out = run(
                        url,
                        &[
                            "lock",
                            "shared",
                            "--client",
                            &format!("cli-{c}"),
                            "--wait",
                            "100s",
                            "--",
                            "sh",
                            "-c",
                            &check,
                        ],
                    );
                    assert!(out.status.success(), "{}", text(&out.stderr));
                    let number = text(&out.stdout)
                        .trim()
                        .parse::<u64>()
                        .expect("a fencing number");
                    fencing.lock().expect("fencing").push(number);
                    grants.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let broken_by_cli = scratch.path().join("inside.broken").exists();
    assert_eq!(
        witness.broken.load(Ordering::SeqCst),
        0,
        "two holders at once"
    );
    assert!(
        !broken_by_cli,
        "two holders at once (a CLI holder saw another)"
    );
    assert_eq!(grants.load(Ordering::SeqCst), 8 * EACH);
    let mut numbers = fencing.into_inner().expect("fencing");
    let counted = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), counted, "a fencing number handed out twice");
    // Nothing is left held.
    let out = run(&url, &["status", "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]", "{}", text(&out.stderr));
    eprintln!(
        "etcd race: {} grants through 2 daemons x 3 doors and 2 CLI waiters, {} refusals, \
         0 double grants, {counted} fencing numbers all distinct",
        grants.load(Ordering::SeqCst),
        refusals.load(Ordering::SeqCst)
    );
}

#[test]
fn killing_the_etcd_leader_during_a_race_loses_no_acknowledged_grant() {
    let mut etcd = Etcd::cluster(3);
    let url = EtcdUrl::parse(&etcd.url("failover")).expect("url");
    let scratch = tempfile::tempdir().expect("temp dir");
    let witness = Witness::new(scratch.path());
    const RACERS: usize = 4;
    const ROUNDS: usize = 40;
    let grants = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    // Locks acknowledged and kept: (resource, token, fencing).
    let kept = Mutex::new(Vec::new());
    let killed = std::sync::atomic::AtomicBool::new(false);
    let shared_fencing = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for r in 0..RACERS {
            let (url, witness, grants, failures, kept, shared_fencing) =
                (&url, &witness, &grants, &failures, &kept, &shared_fencing);
            s.spawn(move || {
                let mut registry = Registry::open_etcd(url).expect("open");
                let client = format!("racer-{r}");
                let options = LockOptions::client(client.clone());
                for round in 0..ROUNDS {
                    // A lock of its own, kept to the end: acknowledged, so
                    // it must survive the failover.
                    let own = format!("own/{r}/{round}");
                    match registry.lock(&own, &options) {
                        Ok(grant) => kept.lock().expect("kept").push((
                            own.clone(),
                            grant.token,
                            grant.holder.fencing,
                        )),
                        Err(err) => failures.lock().expect("failures").push(err.to_string()),
                    }
                    // The contended one.
                    match registry.lock("shared", &options) {
                        Ok(grant) => {
                            witness.hold();
                            shared_fencing
                                .lock()
                                .expect("fencing")
                                .push(grant.holder.fencing);
                            grants.fetch_add(1, Ordering::SeqCst);
                            // Released by its token; an unknown outcome
                            // (etcd in an election) is released by the
                            // client id below.
                            if let Err(err) =
                                registry.unlock("shared", &UnlockKey::Token(grant.token))
                            {
                                failures.lock().expect("failures").push(err.to_string());
                            }
                        }
                        Err(Error::AlreadyLocked { .. } | Error::Busy { .. }) => pace(),
                        Err(err) => failures.lock().expect("failures").push(err.to_string()),
                    }
                    // Whatever a failed call may have left is ours to free.
                    let _ = registry.unlock("shared", &UnlockKey::Client(client.clone()));
                }
            });
        }
        // The killer: once the race is under way, kill -9 the leader.
        let (grants, killed, etcd) = (&grants, &killed, &mut etcd);
        s.spawn(move || {
            let started = Instant::now();
            while grants.load(Ordering::SeqCst) < 5 {
                assert!(started.elapsed() < GUARD, "the race made no progress");
                std::thread::yield_now();
            }
            let leader = etcd.leader();
            etcd.kill(leader);
            killed.store(true, Ordering::SeqCst);
            let new = etcd.wait_for_leader();
            assert_ne!(new, leader);
        });
    });
    assert!(killed.load(Ordering::SeqCst));
    assert_eq!(
        witness.broken.load(Ordering::SeqCst),
        0,
        "two holders at once"
    );
    let mut numbers = shared_fencing.into_inner().expect("fencing");
    let counted = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), counted, "a fencing number handed out twice");
    // Every acknowledged lock is still held, with its token and number.
    let kept = kept.into_inner().expect("kept");
    let mut registry = Registry::open_etcd(&url).expect("open");
    for (resource, token, fencing) in &kept {
        let held = registry.status(resource).expect("status");
        let held = held.unwrap_or_else(|| panic!("acknowledged lock on {resource} lost"));
        assert_eq!(held.fencing, *fencing, "{resource}");
        registry
            .unlock(resource, &UnlockKey::Token(token.clone()))
            .unwrap_or_else(|e| panic!("{resource}: its token no longer opens it: {e}"));
    }
    let failures = failures.into_inner().expect("failures");
    for failure in &failures {
        assert!(
            failure.contains("the store is unavailable") && !failure.contains('\n'),
            "{failure}"
        );
    }
    eprintln!(
        "etcd failover: {} grants of the contended lock, {} acknowledged locks kept and \
         found, {} calls failed during the election, 0 double grants",
        counted,
        kept.len(),
        failures.len()
    );
}

#[test]
fn with_etcd_stopped_every_call_fails_with_one_line_and_nothing_is_granted() {
    let mut etcd = Etcd::single();
    let url = etcd.url("down");
    let held = run(&url, &["lock", "before", "--client", "a"]);
    assert!(held.status.success(), "{}", text(&held.stderr));
    let daemon = Daemon::start(&url);
    etcd.stop();

    let out = run(&url, &["lock", "during", "--client", "a"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("the store is unavailable"), "{stderr}");
    assert!(stderr.contains(&format!("(store {url})")), "{stderr}");

    let body = serde_json::json!({"resource": "during", "client": "b"}).to_string();
    let answer = daemon.send("POST", "/v1/lock", Some(body.as_bytes()));
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()["error"]["code"], "unavailable", "{answer:?}");
    let answer = daemon.send("GET", "/canhaz/during?id=c", None);
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()["ok"], false, "{answer:?}");
    let answer = daemon.send(
        "POST",
        "/RPC2",
        Some(xml_call("lock", "during", "d").as_bytes()),
    );
    assert!(
        answer.body.contains("<fault>") && answer.body.contains("unavailable"),
        "{answer:?}"
    );

    etcd.restart_all();
    let out = run(&url, &["status", "--json"]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let resources: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|h| h["resource"].as_str().expect("resource"))
        .collect();
    assert_eq!(resources, ["before"], "nothing granted while etcd was down");
}

/// The number of watchers etcd has open, from its own metrics.
fn watchers(etcd: &Etcd) -> u64 {
    let addr: SocketAddr = etcd.endpoint(0).parse().expect("address");
    let mut stream = http_client::connect(addr).expect("connect to etcd");
    let request = http_client::request(
        "GET",
        "/metrics",
        &[("Host", "etcd"), ("Connection", "close")],
        None,
    );
    stream.write_all(&request).expect("ask etcd");
    let answer = http_client::read_response(&mut BufReader::new(stream)).expect("etcd's metrics");
    answer
        .body
        .lines()
        .find_map(|line| line.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .map_or(0, |n| n.trim().parse::<f64>().expect("a number") as u64)
}

/// Holds `held` for client `holder`, starts `hasp lock wanted --client
/// waiter --wait 600s -v` once etcd counts its watch (it then sleeps on
/// it), releases `held`, and returns what the waiter printed: it was woken
/// by the watch (its wait is 600 s; it polls nothing).
fn woken_waiter(etcd: &Etcd, url: &str, held: &str, wanted: &str) -> String {
    let lock = run(url, &["lock", held, "--client", "holder"]);
    assert!(lock.status.success(), "{}", text(&lock.stderr));
    let before = watchers(etcd);
    let waiter = hasp(
        url,
        &["lock", wanted, "--client", "waiter", "--wait", "600s", "-v"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn the waiter");
    let started = Instant::now();
    while watchers(etcd) <= before {
        assert!(started.elapsed() < GUARD, "the waiter never watched");
        std::thread::yield_now();
    }
    let released = run(url, &["unlock", held, "--client", "holder"]);
    assert!(released.status.success(), "{}", text(&released.stderr));
    let out = waiter.wait_with_output().expect("the waiter");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_waiting_lock_is_woken_by_an_etcd_watch() {
    let etcd = Etcd::single();
    let url = etcd.url("watch");
    let printed = woken_waiter(&etcd, &url, "deploy", "deploy");
    assert!(printed.contains("fencing: 2"), "{printed}");

    // The same through /v1's wait_ms, with the holder's lease ending on
    // its own: the watch wakes the waiter at the lease's end.
    let daemon = Daemon::start(&url);
    let lease = run(
        &url,
        &["lock", "leased", "--client", "holder", "--ttl", "1s"],
    );
    assert!(lease.status.success(), "{}", text(&lease.stderr));
    let body = serde_json::json!({"resource": "leased", "client": "b", "wait_ms": 600_000});
    let answer = daemon.send("POST", "/v1/lock", Some(body.to_string().as_bytes()));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["fencing"], 2, "{answer:?}");
    let gone = run(&url, &["unlock", "leased", "--client", "holder"]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        text(&gone.stderr).starts_with("Lease expired"),
        "{}",
        text(&gone.stderr)
    );
}

#[test]
fn a_waiter_refused_by_a_parent_is_not_woken_by_its_own_attempts() {
    let etcd = Etcd::single();
    let url = etcd.url("own");
    // Each attempt on `a/b` commits, meets `a`, and withdraws: two writes
    // of its own, which must not wake it (each would spend a number). One
    // withdrawn attempt, then the grant.
    let printed = woken_waiter(&etcd, &url, "a", "a/b");
    assert!(printed.contains("fencing: 2\n"), "{printed}");
}

#[test]
fn a_key_that_is_not_utf8_under_the_prefix_is_refused_not_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let etcd = Etcd::single();
    let url = etcd.url("bytes");
    assert!(run(&url, &["lock", "a/z", "--client", "deep"])
        .status
        .success());
    assert!(run(&url, &["unlock", "a/z", "--client", "deep"])
        .status
        .success());
    let put = etcd
        .etcdctl()
        .arg("put")
        .arg(std::ffi::OsStr::from_bytes(b"bytes/nodes/a/k\xff"))
        .arg("0")
        .output()
        .expect("etcdctl put");
    assert!(put.status.success(), "{}", text(&put.stderr));
    assert!(run(&url, &["lock", "a/z", "--client", "deep"])
        .status
        .success());
    // A walk that skipped the key could miss what follows it: refused.
    for args in [&["status"][..], &["lock", "a", "--client", "top"]] {
        let out = run(&url, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("not UTF-8"), "{stderr}");
    }
    let held = run(&url, &["status", "a/z", "--json"]);
    assert!(
        text(&held.stdout).contains("\"deep\""),
        "{}",
        text(&held.stdout)
    );
}

#[test]
fn prefixes_on_one_etcd_are_independent_registries() {
    let etcd = Etcd::single();
    let (a, b) = (etcd.url("team-a"), etcd.url("team-b"));
    assert!(run(&a, &["lock", "deploy", "--client", "x"])
        .status
        .success());
    assert!(run(&b, &["lock", "deploy", "--client", "y"])
        .status
        .success());
    let refused = run(&a, &["lock", "deploy", "--client", "z"]);
    assert_eq!(text(&refused.stderr), "Resource already locked by 'x'\n");
    let verbose = run(&a, &["status", "-v"]);
    assert!(
        text(&verbose.stdout).starts_with(&format!("store: {a}\nRESOURCE")),
        "{}",
        text(&verbose.stdout)
    );
    let daemon = Daemon::start(&b);
    let health = daemon.send("GET", "/healthz", None).json();
    assert_eq!(health["store"], b.as_str());
    let bad = run("etcd://127.0.0.1:1/a b", &["status"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(
        text(&bad.stderr).lines().count(),
        1,
        "{}",
        text(&bad.stderr)
    );
}

/// A TCP proxy in front of etcd that can lose the next answer: once armed,
/// the first bytes etcd sends back are dropped and both connections cut,
/// so the request reached etcd (it answered) but its answer never reached
/// hasp — the outcome hasp must resolve before it answers.
struct Proxy {
    addr: SocketAddr,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("its address");
        let target: SocketAddr = target.parse().expect("etcd's address");
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = Arc::new(AtomicUsize::new(0));
        let (armed2, cut2) = (armed.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                // hasp to etcd: as it comes.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (c2, s2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
                // etcd to hasp: cut at the first answer after arming.
                let (armed, cut) = (armed2.clone(), cut2.clone());
                std::thread::spawn(move || {
                    use std::io::Read;
                    let (mut from, mut to) = (server, client);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if armed.swap(false, Ordering::SeqCst) {
                            cut.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { addr, armed, cut }
    }

    /// The next answer etcd sends is lost.
    fn lose_next_answer(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    fn answers_lost(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

#[test]
fn a_change_whose_answer_was_lost_is_read_back_before_hasp_answers() {
    let etcd = Etcd::single();
    let proxy = Proxy::start(&etcd.endpoint(0));
    let through = EtcdUrl::parse(&format!("etcd://{}/lost", proxy.addr)).expect("url");
    let direct = EtcdUrl::parse(&etcd.url("lost")).expect("url");
    let mut registry = Registry::open_etcd(&through).expect("open");
    let options = LockOptions::client("a");
    // Once locked and unlocked, the registry knows the state: the next lock
    // is the one transaction, and its answer is the one lost.
    let first = registry.lock("deploy", &options).expect("lock");
    registry
        .unlock("deploy", &UnlockKey::Token(first.token))
        .expect("unlock");

    proxy.lose_next_answer();
    let grant = registry
        .lock("deploy", &options)
        .expect("granted after reading it back");
    assert_eq!(proxy.answers_lost(), 1);
    assert_eq!(grant.holder.fencing, 2);
    let mut other = Registry::open_etcd(&direct).expect("open");
    let held = other.status("deploy").expect("status").expect("held");
    assert_eq!(held.fencing, 2);
    assert_eq!(held.client.as_deref(), Some("a"));

    proxy.lose_next_answer();
    registry
        .unlock("deploy", &UnlockKey::Token(grant.token))
        .expect("released after reading it back");
    assert_eq!(proxy.answers_lost(), 2);
    assert_eq!(other.status("deploy").expect("status"), None);
}
