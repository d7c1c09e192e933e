//! `hasp serve` under load: the real binary on loopback, driven by raw
//! HTTP/1.1 keep-alive connections. The throughput rows drive all their
//! connections from one client thread, an event loop (a tokio current-thread
//! runtime, one task per connection), as wrk does: the load generator shares
//! the CPU with the server, and a blocking thread per connection would spend
//! it on context switches that the figures would charge to the server. The
//! contention rows and `--big` use a std thread per client with a blocking
//! std::net client.
//! Run: `cargo bench --bench serve` (`HASP_BENCH_DIR` picks the filesystem,
//! `HASP_BENCH_SECS` the seconds per row, default 3, `HASP_BENCH_SERVE_ARGS`
//! extra `hasp serve` flags, `HASP_BENCH_ONLY` some rows: see [`wanted`];
//! `HASP_BENCH_BIN` another `hasp` binary to run, `HASP_BENCH_RUNS` how many
//! runs of each throughput row, reported as the median). Prints one table:
//!
//! - lock+unlock cycles through Locker's doors (GET /canhaz, /nowant with the
//!   token) at 1, 16 and 64 connections, each connection on its own 16
//!   resources: cycles/s and the p50 / p99 latency of a whole cycle, for the
//!   default durability and for `--fsync` (a fresh server each); then one
//!   connection locking a resource never locked before at every cycle;
//! - the same through gocept.lockd's XML-RPC door (POST /RPC2) and /v1, at
//!   16 connections;
//! - contention: 64 clients fighting over 8 resources, then over a parent and
//!   its 8 children (each granted holder holds 1 ms), checking that no two
//!   conflicting holders ever overlap. Under this load the parent is rarely
//!   or never granted: a child is nearly always held.
//!
//! Failed cycles, dropped connections, stderr lines, server-side errors
//! (/metrics), locks left held (/v1/list) and an unclean SIGTERM stop are
//! listed under the table.
//!
//! `cargo bench --bench serve -- --big N` instead fills a directory with N
//! held locks through the server, reports the daemon's RSS, kills it (-9) and
//! times its restart until /healthz answers and a held lock shows as held.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[path = "../tests/http_client.rs"]
mod http_client;

use http_client::{now, AsyncHttp, Conn, Http, Keep};

/// Distinct resources per connection, taken round robin.
const NAMES_PER_CONN: usize = 16;
const FIGHTERS: usize = 64;
const FIGHT_NODES: usize = 8;
/// How long a fighter holds a granted lock (marked as held) before releasing.
const HOLD: Duration = Duration::from_millis(1);
const BIG_CONNS: usize = 32;
const REFERENCE: &str = "reference (issue, this machine, not re-run here): \
                         Locker ~390 cycles/s, gocept.lockd ~730 cycles/s";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = std::env::var("HASP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(3.0);
    let run = Duration::from_secs_f64(secs);
    match args.iter().position(|a| a == "--big") {
        Some(at) => {
            let n = args
                .get(at + 1)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .expect("--big N: N held locks, a positive number");
            big(n);
        }
        None => table(run),
    }
}

// ---------------------------------------------------------------------------
// The table

fn table(run: Duration) {
    let mut notes = Vec::new();
    println!(
        "hasp serve, loopback, keep-alive, {:.1} s per row   {:>5} {:>9} {:>8} {:>8} {:>6} {:>8}",
        run.as_secs_f64(),
        "conns",
        "cycles/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "cpu us"
    );
    let mut tag = 0;
    for fsync in [false, true] {
        let durability = if fsync {
            "--fsync"
        } else {
            "default durability"
        };
        let key = |row: &str| {
            if fsync {
                format!("fsync-{row}")
            } else {
                row.to_string()
            }
        };
        let rows = ["locker1", "locker16", "locker64", "fresh"]
            .map(key)
            .into_iter()
            .chain(
                ["xmlrpc", "v1", "fight", "family"]
                    .map(String::from)
                    .into_iter()
                    .filter(|_| !fsync),
            );
        if !rows.into_iter().any(|row| wanted(&row)) {
            continue;
        }
        let server = Server::start(fsync);
        for conns in [1, 16, 64] {
            tag += 1;
            if !wanted(&key(&format!("locker{conns}"))) {
                continue;
            }
            let point = repeated(&server, Door::Locker, conns, run, &mut tag, false);
            point.row(&format!("Locker canhaz+nowant, {durability}"), &mut notes);
        }
        tag += 1;
        if wanted(&key("fresh")) {
            let point = repeated(&server, Door::Locker, 1, run, &mut tag, true);
            point.row(
                &format!("  new resource each cycle, {durability}"),
                &mut notes,
            );
        }
        if !fsync {
            for (door, row) in [(Door::XmlRpc, "xmlrpc"), (Door::V1, "v1")] {
                tag += 1;
                if wanted(row) {
                    let point = repeated(&server, door, 16, run, &mut tag, false);
                    point.row(door.label(), &mut notes);
                }
            }
            if wanted("fight") {
                fight(&server, false, run).row(&mut notes);
            }
            if wanted("family") {
                fight(&server, true, run).row(&mut notes);
            }
        }
        server.audit(&mut notes);
        server.stop(&mut notes);
    }
    println!("{REFERENCE}");
    for note in &notes {
        println!("  ! {note}");
    }
}

/// Whether the row `key` is to be run: all of them, unless
/// `HASP_BENCH_ONLY` lists some (comma-separated): `locker1`, `locker16`,
/// `locker64`, `fresh`, `xmlrpc`, `v1`, `fight`, `family`, and `fsync-`
/// before the first four; a key without its number, like `locker` or
/// `fsync`, stands for all the rows it begins.
fn wanted(key: &str) -> bool {
    match std::env::var("HASP_BENCH_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').map(str::trim).any(|want| {
            key == want || key.starts_with(want) && !want.ends_with(|c: char| c.is_ascii_digit())
        }),
        _ => true,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Door {
    Locker,
    XmlRpc,
    V1,
}

impl Door {
    fn label(self) -> &'static str {
        match self {
            Door::Locker => "Locker canhaz+nowant",
            Door::XmlRpc => "gocept XML-RPC lock+unlock (POST /RPC2)",
            Door::V1 => "JSON POST /v1/lock + /v1/unlock (token)",
        }
    }
}

struct Point {
    conns: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The daemon's CPU time (all threads, user and system) per cycle,
    /// warm-up included.
    cpu_per_cycle: Option<Duration>,
    /// Of repeated runs: how many, and the lowest and highest cycles/s.
    range: Option<(usize, f64, f64)>,
    errors: u64,
    drops: u64,
    first_error: Option<String>,
}

impl Point {
    /// Cycles per second.
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn row(&self, what: &str, notes: &mut Vec<String>) {
        let mut lat = self.latencies.clone();
        lat.sort();
        let at = |q: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
            }
        };
        println!(
            "{what:<49} {:>5} {:>9.0} {:>8.2} {:>8.2} {:>6} {:>8}{}",
            self.conns,
            self.rate(),
            at(0.5),
            at(0.99),
            self.errors,
            self.cpu_per_cycle.map_or("?".to_string(), |cpu| format!(
                "{:.1}",
                cpu.as_secs_f64() * 1e6
            )),
            self.range
                .map_or(String::new(), |(runs, low, high)| format!(
                    "   median of {runs}, {low:.0}-{high:.0}"
                ))
        );
        if let Some(e) = &self.first_error {
            notes.push(format!(
                "{what}, {} conns: {} failed cycles, first: {e}",
                self.conns, self.errors
            ));
        }
        if self.drops > 0 {
            notes.push(format!(
                "{what}, {} conns: the server dropped {} keep-alive connections",
                self.conns, self.drops
            ));
        }
    }
}

/// [`throughput`] `HASP_BENCH_RUNS` times (default 1), each run on
/// resources of its own: the run with the median cycles/s, and the range.
fn repeated(
    server: &Server,
    door: Door,
    conns: usize,
    run: Duration,
    tag: &mut usize,
    fresh: bool,
) -> Point {
    let runs = std::env::var("HASP_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let mut points: Vec<Point> = (0..runs)
        .map(|_| {
            *tag += 1;
            throughput(server, door, conns, run, *tag, fresh)
        })
        .collect();
    points.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let range = (points.len() > 1).then(|| {
        let (low, high) = (points[0].rate(), points[points.len() - 1].rate());
        (points.len(), low, high)
    });
    let mut median = points.swap_remove(points.len() / 2);
    median.range = range;
    median
}

/// `conns` connections doing lock+unlock cycles for `run`, each on its own
/// resources `bench/TAG/CONN/0..16`, so that no two connections contend; with
/// `fresh`, on a resource never locked before at every cycle instead. All the
/// connections are tasks on one client thread (a current-thread runtime).
fn throughput(
    server: &Server,
    door: Door,
    conns: usize,
    run: Duration,
    tag: usize,
    fresh: bool,
) -> Point {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let addr = server.addr;
    let cpu_before = server.cpu_time();
    let results = runtime.block_on(async move {
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut http = AsyncHttp::new(addr);
                    let client = format!("c{c}");
                    let names: Vec<String> = (0..NAMES_PER_CONN)
                        .map(|i| format!("bench/{tag}/{c}/{i}"))
                        .collect();
                    let (mut errors, mut first_error) = (0, None);
                    // Warm up: connect, and create the nodes (the first lock
                    // of a resource makes its directories: `fresh` measures
                    // that).
                    for name in &names {
                        if let Err(e) = cycle(&mut http, door, name, &client).await {
                            errors += 1;
                            first_error.get_or_insert(format!("warm-up: {e}"));
                        }
                    }
                    barrier.wait().await;
                    let start = Instant::now();
                    let mut latencies = Vec::with_capacity(4096);
                    let mut i = 0;
                    while start.elapsed() < run {
                        let t = Instant::now();
                        let name = if fresh {
                            format!("bench/{tag}/{c}/new/{i}")
                        } else {
                            names[i % NAMES_PER_CONN].clone()
                        };
                        match cycle(&mut http, door, &name, &client).await {
                            Ok(()) => latencies.push(t.elapsed()),
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert(e);
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        i += 1;
                    }
                    (latencies, start.elapsed(), errors, first_error, http.drops)
                })
            })
            .collect();
        let mut results = Vec::with_capacity(conns);
        for task in tasks {
            results.push(task.await.expect("client task"));
        }
        results
    });
    let mut point = Point {
        conns,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        cpu_per_cycle: None,
        range: None,
        errors: 0,
        drops: 0,
        first_error: None,
    };
    let warm_up = conns * NAMES_PER_CONN;
    let cycles = results.iter().map(|r| r.0.len()).sum::<usize>() + warm_up;
    point.cpu_per_cycle = match (cpu_before, server.cpu_time()) {
        (Some(before), Some(after)) => after.checked_sub(before).map(|d| d / cycles as u32),
        _ => None,
    };
    for (lat, elapsed, errors, first, drops) in results {
        point.latencies.extend(lat);
        point.elapsed = point.elapsed.max(elapsed);
        point.errors += errors;
        point.drops += drops;
        if point.first_error.is_none() {
            point.first_error = first;
        }
    }
    point
}

/// One lock+unlock of `name` through `door`.
async fn cycle(
    http: &mut Keep<impl Conn>,
    door: Door,
    name: &str,
    client: &str,
) -> Result<(), String> {
    match door {
        Door::Locker => match canhaz(http, name, client).await? {
            Ok(token) => nowant(http, name, &token).await,
            Err(holder) => Err(format!("canhaz {name}: refused, lockedBy {holder}")),
        },
        Door::XmlRpc => {
            xmlrpc(http, "lock", name, client).await?;
            xmlrpc(http, "unlock", name, client).await
        }
        Door::V1 => {
            let body = serde_json::json!({"resource": name, "client": client});
            let (status, reply) = http.post("/v1/lock", body.to_string().as_bytes()).await?;
            let json = json_of(&reply)?;
            let token = match (status, json["token"].as_str()) {
                (200, Some(token)) => token.to_string(),
                _ => return Err(format!("/v1/lock {name}: {status} {}", text(&reply))),
            };
            let body = serde_json::json!({"resource": name, "token": token});
            let (status, reply) = http.post("/v1/unlock", body.to_string().as_bytes()).await?;
            if status != 200 {
                return Err(format!("/v1/unlock {name}: {status} {}", text(&reply)));
            }
            Ok(())
        }
    }
}

/// Locker's canhaz with a client id: `Ok(Ok(token))` on a grant,
/// `Ok(Err(holder))` on a refusal.
async fn canhaz(
    http: &mut Keep<impl Conn>,
    name: &str,
    client: &str,
) -> Result<Result<String, String>, String> {
    let (status, body) = http.get(&format!("/canhaz/{name}?id={client}")).await?;
    let json = json_of(&body)?;
    match (status, &json["ok"], json["token"].as_str()) {
        (200, serde_json::Value::Bool(true), Some(token)) => Ok(Ok(token.to_string())),
        (200, serde_json::Value::Bool(false), _) => Ok(Err(json["lockedBy"].to_string())),
        _ => Err(format!("canhaz {name}: {status} {}", text(&body))),
    }
}

async fn nowant(http: &mut Keep<impl Conn>, name: &str, token: &str) -> Result<(), String> {
    let (status, body) = http.get(&format!("/nowant/{name}?token={token}")).await?;
    match (status, &json_of(&body)?["ok"]) {
        (200, serde_json::Value::Bool(true)) => Ok(()),
        _ => Err(format!("nowant {name}: {status} {}", text(&body))),
    }
}

async fn xmlrpc(
    http: &mut Keep<impl Conn>,
    method: &str,
    name: &str,
    client: &str,
) -> Result<(), String> {
    let call = format!(
        "<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params>\
         <param><value><string>{name}</string></value></param>\
         <param><value><string>{client}</string></value></param>\
         </params></methodCall>"
    );
    let (status, body) = http.post("/RPC2", call.as_bytes()).await?;
    let reply = text(&body);
    if status == 200 && reply.contains("<boolean>1</boolean>") && !reply.contains("<fault>") {
        Ok(())
    } else {
        Err(format!("XML-RPC {method} {name}: {status} {reply}"))
    }
}

fn json_of(body: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {}", text(body)))
}

fn text(body: &str) -> String {
    let s = body.trim();
    match s.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Contention

struct Fight {
    family: bool,
    elapsed: Duration,
    grants: u64,
    parent_grants: u64,
    refusals: u64,
    overlaps: u64,
    errors: u64,
    drops: u64,
    first_error: Option<String>,
}

impl Fight {
    fn row(&self, notes: &mut Vec<String>) {
        let secs = self.elapsed.as_secs_f64();
        let what = if self.family {
            format!("{FIGHTERS} clients / p + p/0..p/{}", FIGHT_NODES - 1)
        } else {
            format!("{FIGHTERS} clients / {FIGHT_NODES} resources")
        };
        let parent = if self.family {
            format!(" (parent {})", self.parent_grants)
        } else {
            String::new()
        };
        if self.family && self.parent_grants == 0 {
            notes.push(format!(
                "contention {what}: the parent was never granted (starved: some child \
                 is always held; Locker's rules have no queue)"
            ));
        }
        println!(
            "contention {what}: grants/s {:.0}{parent}, refusals/s {:.0}, overlaps {}, errors {}",
            self.grants as f64 / secs,
            self.refusals as f64 / secs,
            self.overlaps,
            self.errors
        );
        if self.overlaps > 0 {
            let warning = format!(
                "!!! contention {what}: {} OVERLAPPING GRANTS: two conflicting holders at once !!!",
                self.overlaps
            );
            eprintln!("{warning}");
            notes.push(warning);
        }
        if let Some(e) = &self.first_error {
            notes.push(format!(
                "contention {what}: {} errors, first: {e}",
                self.errors
            ));
        }
        if self.drops > 0 {
            notes.push(format!(
                "contention {what}: the server dropped {} keep-alive connections",
                self.drops
            ));
        }
    }
}

/// Which held nodes conflict; every node is exclusive. Flat: 8 unrelated
/// resources. Family: children 0..8 and the parent at index 8, which
/// conflicts with every child (both default to lock parents and children).
struct Occupancy {
    family: bool,
    held: Mutex<[u32; FIGHT_NODES + 1]>,
    overlaps: AtomicU64,
}

impl Occupancy {
    /// After a grant is received: mark `node` held; count an overlap if a
    /// conflicting node is marked. A holder is marked from after its grant
    /// arrives to before its release is sent — inside the time the server
    /// holds it for it — so a correct server never shows two at once. The
    /// marks and checks happen under one mutex, so any two marked intervals
    /// that overlap in time are seen by the later `enter`.
    fn enter(&self, node: usize) {
        let mut held = self.held.lock().unwrap();
        let clash = held[node] > 0
            || (self.family && node == FIGHT_NODES && held[..FIGHT_NODES].iter().any(|h| *h > 0))
            || (self.family && node < FIGHT_NODES && held[FIGHT_NODES] > 0);
        if clash {
            self.overlaps.fetch_add(1, Ordering::Relaxed);
        }
        held[node] += 1;
    }

    fn leave(&self, node: usize) {
        self.held.lock().unwrap()[node] -= 1;
    }
}

fn fight(server: &Server, family: bool, run: Duration) -> Fight {
    let nodes = if family { FIGHT_NODES + 1 } else { FIGHT_NODES };
    let name = move |node: usize| match (family, node) {
        (true, FIGHT_NODES) => "p".to_string(),
        (true, n) => format!("p/{n}"),
        (false, n) => format!("flat/{n}"),
    };
    let occupancy = Arc::new(Occupancy {
        family,
        held: Mutex::new([0; FIGHT_NODES + 1]),
        overlaps: AtomicU64::new(0),
    });
    let barrier = Arc::new(Barrier::new(FIGHTERS + 1));
    let addr = server.addr;
    let threads: Vec<_> = (0..FIGHTERS)
        .map(|t| {
            let (barrier, occupancy) = (barrier.clone(), occupancy.clone());
            thread::spawn(move || {
                let mut http = Http::new(addr);
                let client = format!("f{t}");
                let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (t as u64 + 1).wrapping_mul(0x2545_f491);
                let (mut grants, mut parent_grants, mut refusals, mut errors) = (0, 0, 0, 0);
                let mut first_error = None;
                let mut fail = |e: String, errors: &mut u64| {
                    *errors += 1;
                    first_error.get_or_insert(e);
                    thread::sleep(Duration::from_millis(1));
                };
                let _ = now(http.get("/healthz"));
                barrier.wait();
                let start = Instant::now();
                while start.elapsed() < run {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let node = (rng % nodes as u64) as usize;
                    let resource = name(node);
                    match now(canhaz(&mut http, &resource, &client)) {
                        Ok(Ok(token)) => {
                            occupancy.enter(node);
                            grants += 1;
                            if family && node == FIGHT_NODES {
                                parent_grants += 1;
                            }
                            thread::sleep(HOLD);
                            occupancy.leave(node);
                            if let Err(e) = now(nowant(&mut http, &resource, &token)) {
                                fail(e, &mut errors);
                            }
                        }
                        Ok(Err(_holder)) => refusals += 1,
                        Err(e) => fail(e, &mut errors),
                    }
                }
                let elapsed = start.elapsed();
                (
                    grants,
                    parent_grants,
                    refusals,
                    errors,
                    first_error,
                    http.drops,
                    elapsed,
                )
            })
        })
        .collect();
    barrier.wait();
    let mut fight = Fight {
        family,
        elapsed: Duration::ZERO,
        grants: 0,
        parent_grants: 0,
        refusals: 0,
        overlaps: 0,
        errors: 0,
        drops: 0,
        first_error: None,
    };
    for t in threads {
        let (grants, parent, refusals, errors, first, drops, elapsed) =
            t.join().expect("fighter thread");
        fight.grants += grants;
        fight.parent_grants += parent;
        fight.refusals += refusals;
        fight.errors += errors;
        fight.drops += drops;
        fight.elapsed = fight.elapsed.max(elapsed);
        if fight.first_error.is_none() {
            fight.first_error = first;
        }
    }
    fight.overlaps = occupancy.overlaps.load(Ordering::Relaxed);
    fight
}

// ---------------------------------------------------------------------------
// --big N: many held locks, RSS, restart after kill -9

fn big(n: usize) {
    let dir = temp_dir();
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).expect("mkdir");
    let name = |i: usize| format!("big/{}/{}", i / 1000, i % 1000);
    let mut notes = Vec::new();

    let server = Server::start_in(&locks, false);
    let rss_empty = rss_kib(server.pid());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let addr = server.addr;
    let threads: Vec<_> = (0..BIG_CONNS)
        .map(|_| {
            let (next, done) = (next.clone(), done.clone());
            thread::spawn(move || {
                let mut http = Http::new(addr);
                let (mut errors, mut first_error) = (0u64, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let resource = name(i);
                    match now(canhaz(&mut http, &resource, "bigholder")) {
                        Ok(Ok(_token)) => {}
                        Ok(Err(holder)) => {
                            errors += 1;
                            first_error
                                .get_or_insert(format!("canhaz {resource}: refused by {holder}"));
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if n >= 100_000 && d % (n / 20) == 0 {
                        eprintln!(
                            "  filled {d} / {n} ({:.0} locks/s)",
                            d as f64 / start.elapsed().as_secs_f64()
                        );
                    }
                }
                (errors, first_error, http.drops)
            })
        })
        .collect();
    let (mut errors, mut first_error, mut drops) = (0, None, 0);
    for t in threads {
        let (e, first, d) = t.join().expect("fill thread");
        errors += e;
        drops += d;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let fill = start.elapsed();
    let rss_full = rss_kib(server.pid());

    // One connection's cycles on a fresh resource beside N held locks.
    let mut http = Http::new(server.addr);
    let mut lat = Vec::new();
    let cycles_start = Instant::now();
    while cycles_start.elapsed() < Duration::from_secs(1) && lat.len() < 500 {
        let t = Instant::now();
        match now(cycle(&mut http, Door::Locker, "other/one", "c0")) {
            Ok(()) => lat.push(t.elapsed()),
            Err(e) => {
                notes.push(format!("cycle beside {n} held locks: {e}"));
                break;
            }
        }
    }
    lat.sort();
    drop(http);

    let mut server = server;
    server.kill();
    let spawned = Instant::now();
    let restarted = Server::start_in(&locks, false);
    let listening = spawned.elapsed();
    let mut http = Http::new(restarted.addr);
    let healthy = loop {
        if let Ok((200, _)) = now(http.get("/healthz")) {
            break spawned.elapsed();
        }
        assert!(spawned.elapsed() < Duration::from_secs(3600), "no /healthz");
        thread::sleep(Duration::from_millis(1));
    };
    let probe = |http: &mut Http, i: usize| -> Result<bool, String> {
        let (status, body) = now(http.get(&format!("/dohaz/{}", name(i))))?;
        let json = json_of(&body)?;
        match (status, json["lockedBy"].as_str()) {
            (200, Some("bigholder")) => Ok(true),
            (200, _) => Ok(false),
            _ => Err(format!("dohaz: {status} {}", text(&body))),
        }
    };
    let (held, first_held) = loop {
        match probe(&mut http, 0) {
            Ok(true) => break (true, spawned.elapsed()),
            Ok(false) if spawned.elapsed() > Duration::from_secs(60) => {
                break (false, spawned.elapsed())
            }
            Err(e) if spawned.elapsed() > Duration::from_secs(60) => {
                notes.push(format!("after restart: {e}"));
                break (false, spawned.elapsed());
            }
            _ => thread::sleep(Duration::from_millis(1)),
        }
    };
    let last_held = probe(&mut http, n - 1);
    let rss_restarted = rss_kib(restarted.pid());
    drop(http);
    restarted.stop(&mut notes);

    println!("hasp serve with many held locks (--big {n}), loopback");
    println!(
        "  fill: {n} canhaz over {BIG_CONNS} connections in {:.1} s ({:.0} locks/s), {errors} errors",
        fill.as_secs_f64(),
        n as f64 / fill.as_secs_f64()
    );
    println!(
        "  daemon RSS: {} empty, {} with {n} held locks, {} after restart",
        mib(rss_empty),
        mib(rss_full),
        mib(rss_restarted)
    );
    if !lat.is_empty() {
        let at = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
        println!(
            "  one connection beside them: {} canhaz+nowant cycles, p50 {:.2} ms, p99 {:.2} ms",
            lat.len(),
            at(0.5),
            at(0.99)
        );
    }
    println!("  restart after kill -9, from spawn:");
    println!(
        "    listening line      {:>9.1} ms",
        listening.as_secs_f64() * 1e3
    );
    println!(
        "    first /healthz 200  {:>9.1} ms",
        healthy.as_secs_f64() * 1e3
    );
    println!(
        "    first /dohaz held   {:>9.1} ms{}",
        first_held.as_secs_f64() * 1e3,
        if held { "" } else { "  (NOT HELD: lock lost?)" }
    );
    match last_held {
        Ok(true) => {}
        Ok(false) => notes.push(format!("after restart, {} is not held", name(n - 1))),
        Err(e) => notes.push(format!("after restart, dohaz {}: {e}", name(n - 1))),
    }
    if let Some(e) = first_error {
        notes.push(format!("fill: {errors} errors, first: {e}"));
    }
    if drops > 0 {
        notes.push(format!("fill: the server dropped {drops} connections"));
    }
    for note in &notes {
        println!("  ! {note}");
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    match kib {
        Some(k) => format!("{:.1} MiB", k as f64 / 1024.0),
        None => "? MiB".to_string(),
    }
}

// ---------------------------------------------------------------------------
// The server process

fn temp_dir() -> tempfile::TempDir {
    match std::env::var_os("HASP_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir")
}

/// A running `hasp serve`; killed (SIGKILL) when dropped unless stopped.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Option<thread::JoinHandle<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A fresh server on a fresh lock directory.
    fn start(fsync: bool) -> Server {
        let dir = temp_dir();
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).expect("mkdir");
        let mut server = Server::start_in(&locks, fsync);
        server._dir = Some(dir);
        server
    }

    fn start_in(locks: &Path, fsync: bool) -> Server {
        // `HASP_BENCH_BIN` runs another build of hasp, to compare two.
        let bin = std::env::var("HASP_BENCH_BIN").unwrap_or(env!("CARGO_BIN_EXE_hasp").into());
        let mut cmd = Command::new(bin);
        cmd.arg("--dir")
            .arg(locks)
            .args(["serve", "--addr", "127.0.0.1:0"]);
        if fsync {
            cmd.arg("--fsync");
        }
        // Extra `hasp serve` flags to compare settings, e.g. `--workers 2`.
        if let Ok(extra) = std::env::var("HASP_BENCH_SERVE_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hasp serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        // Reads stderr to the end (so the pipe never fills), handing lines
        // over until the listening line is seen; returns the other lines.
        let reader = thread::spawn(move || {
            let mut others = Vec::new();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                match (&tx, line.split_once("listening on http://")) {
                    (Some(sender), Some((_, rest))) => {
                        let addr = rest.split(' ').next().unwrap_or("").to_string();
                        let _ = sender.send(Ok(addr));
                        tx = None;
                    }
                    _ => others.push(line),
                }
            }
            if let Some(sender) = tx {
                let _ = sender.send(Err(others.join("\n")));
            }
            others
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: Some(reader),
            _dir: None,
        };
        match rx.recv_timeout(Duration::from_secs(3600)) {
            Ok(Ok(addr)) => {
                server.addr = addr
                    .parse()
                    .unwrap_or_else(|_| panic!("hasp serve: bad address {addr:?}"))
            }
            Ok(Err(said)) => {
                let status = server.child.wait();
                panic!("hasp serve exited ({status:?}) before listening:\n{said}");
            }
            Err(_) => panic!("hasp serve: no listening line"),
        }
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// After every client released what it took: notes server-side errors,
    /// grants without a release, and locks still held.
    /// CPU time the daemon has used so far, all its threads: the sum of
    /// the first field of each `/proc/PID/task/TID/schedstat` (ns on CPU).
    /// `None` where Linux's schedstat is missing.
    fn cpu_time(&self) -> Option<Duration> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        let mut ns = 0u64;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(Duration::from_nanos(ns))
    }

    fn audit(&self, notes: &mut Vec<String>) {
        let mut http = Http::new(self.addr);
        match now(http.get("/metrics")) {
            Ok((200, body)) => {
                let metrics = &body;
                let value = |name: &str| {
                    metrics.lines().find_map(|l| {
                        let (n, v) = l.split_once(' ')?;
                        (n == name).then(|| v.trim().parse::<f64>().ok())?
                    })
                };
                let (grants, releases) = (value("hasp_grants_total"), value("hasp_releases_total"));
                if grants != releases {
                    notes.push(format!(
                        "/metrics: hasp_grants_total {grants:?} but hasp_releases_total {releases:?}"
                    ));
                }
                let errors = value("hasp_errors_total");
                if errors != Some(0.0) {
                    notes.push(format!("/metrics: hasp_errors_total {errors:?}"));
                }
            }
            Ok((status, body)) => notes.push(format!("/metrics: {status} {}", text(&body))),
            Err(e) => notes.push(format!("/metrics: {e}")),
        }
        match now(http.get("/v1/list")) {
            Ok((200, body)) => match json_of(&body) {
                Ok(json) => match json["locks"].as_array() {
                    Some(locks) if locks.is_empty() => {}
                    Some(locks) => notes.push(format!(
                        "{} locks still held after every client released its own, e.g. {}",
                        locks.len(),
                        locks[0]
                    )),
                    None => notes.push(format!("/v1/list: {}", text(&body))),
                },
                Err(e) => notes.push(format!("/v1/list: {e}")),
            },
            Ok((status, body)) => notes.push(format!("/v1/list: {status} {}", text(&body))),
            Err(e) => notes.push(format!("/v1/list: {e}")),
        }
    }

    /// SIGTERM; notes anything but a prompt exit 0 with the log line
    /// `... INFO hasp::serve: stopped`, and any other stderr line.
    fn stop(mut self, notes: &mut Vec<String>) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let status: Option<ExitStatus> = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => break None,
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => notes.push(format!("hasp serve after SIGTERM: {s}")),
            None => {
                notes.push("hasp serve did not exit within 15 s of SIGTERM (killed)".into());
                self.kill();
            }
        }
        let lines = self
            .stderr
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        let stopped = |l: &String| l.ends_with(" INFO hasp::serve: stopped");
        if !lines.iter().any(stopped) {
            notes.push("hasp serve: no `stopped` line after SIGTERM".into());
        }
        for line in lines.iter().filter(|l| !stopped(l)) {
            notes.push(format!("server stderr: {line}"));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
