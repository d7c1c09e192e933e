//! `hasp serve` under load: the real binary on loopback, driven by raw
//! HTTP/1.1 keep-alive connections, and beside it, in the same run, the two
//! daemons whose APIs it speaks, and the floor of what a lock+unlock costs
//! in hasp's on-disk format. The throughput rows drive all their
//! connections from one client thread, an event loop (a tokio current-thread
//! runtime, one task per connection), as wrk does: the load generator shares
//! the CPU with the server, and a blocking thread per connection would spend
//! it on context switches that the figures would charge to the server. The
//! contention rows and `--big` use a std thread per client with a blocking
//! std::net client.
//!
//! Run: `cargo bench --bench serve` (`HASP_BENCH_DIR` picks the filesystem,
//! `HASP_BENCH_SECS` the seconds per row, default 3, `HASP_BENCH_SERVE_ARGS`
//! extra `hasp serve` flags, `HASP_BENCH_ONLY` some rows: see [`wanted`],
//! e.g. `HASP_BENCH_ONLY=peers,wrk,floor` for the second table alone;
//! `HASP_BENCH_BIN` another `hasp` binary to run, `HASP_BENCH_RUNS` how many
//! runs of each throughput row, reported as the median).
//!
//! The first table, hasp alone:
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
//! The second table, hasp and its peers, each row of a peer followed by
//! hasp's under the same load, with hasp's cycles/s over the peer's:
//!
//! - Locker 1.0b (a CherryPy app) and hasp's Locker door, on hierarchical
//!   resources `bench/T/C/I`; gocept.lockd 0.1 (a SimpleXMLRPCServer) and
//!   hasp's XML-RPC door, on flat ones `bench-T-C-I` (gocept.lockd makes a
//!   file of each name); at 1, 16 and 64 connections, 16 resources each;
//! - first from the event-loop client (`peers-` rows), then from wrk
//!   (`wrk-` rows, `-t N -c N`: a thread per connection, with the Lua
//!   scripts in benches/wrk/; cycles/s are its requests/s over two, and its
//!   p50 / p99 are of one request, not a cycle, and leave out connecting);
//! - the daemon's CPU time per cycle (all its threads, from schedstat; the
//!   peers' python is the bench's child itself), and the load generator's
//!   (`client us`: the client thread's, or wrk's, from getrusage);
//! - the bare daemon (`bare` and `wrk-bare` rows, benches/bare.rs: this
//!   bench started again with `--bare DIR`): Locker's two calls over the
//!   same HTTP and only the floor's system calls, no rules; the ceiling any
//!   daemon meets under this load, with hasp's Locker door over it;
//! - these rows end at their time, cycles still waiting then cut off and
//!   left out, as wrk does: a peer's client can wait seconds for a
//!   connection (both peers listen with a backlog of 5, and gocept.lockd
//!   serves one request at a time, a connection each). The peers get no
//!   warm-up (they have no nodes to make), so their connections are made in
//!   the row; hasp's rows warm up as in the first table.
//!
//! The peers run from a venv that benches/peers.sh makes, at first use, in
//! `bench-peers/` of the cargo target directory (`HASP_BENCH_PEERS_DIR` puts
//! it elsewhere; a complete one is reused), with pip from PyPI: Locker 1.0b
//! on CherryPy 18.10.0 (pinned, with cheroot, portend, setuptools), and
//! gocept.lockd 0.1 with zc.lockfile 3.0.post1 (pinned), from its sdist
//! patched at install time with the smallest change that lets it import on
//! Python 3, one line of gocept/lockd/lockd.py: `import SimpleXMLRPCServer`
//! becomes `import xmlrpc.server as SimpleXMLRPCServer` (its
//! gocept/__init__.py, Python 2 syntax, is never installed: setuptools puts
//! a namespace package's -nspkg.pth in its place). wrk comes from apt-get
//! when missing. A peer, or wrk, that cannot be installed or started is a
//! note, and its rows are left out; hasp's rows run all the same.
//! benches/peers.py starts each peer through its own code on a port the OS
//! picks (port 0) and prints `listening on http://ADDR` as `hasp serve`
//! does: Locker as `Locker(ip, port, file)` (its own `__main__` ignores
//! --port), its pickle in a temp dir beside hasp's; gocept.lockd as
//! `main(host, port, directory)`, in a temp dir that is also its working
//! directory (where it takes its lock `lockd.lock`). Their own defaults are
//! kept otherwise (CherryPy's thread pool and autoreloader, request logs,
//! which are read and dropped). gocept.lockd answers lock and unlock with
//! None (`<nil/>`), hasp with true; and it closes every connection after its
//! response (HTTP/1.0): the client connects anew, and notes those closes as
//! expected, apart from connections dropped.
//!
//! The floor (`floor1`, `floor2`): in this process, on the lock directory's
//! filesystem, a loop making only the system calls that a lock+unlock cycle
//! in hasp's format cannot do without (see [`floor`]), on one thread, then
//! on two (a node each, what two cores could do); then each of hasp's rows
//! of the run as its time per cycle (1 / its cycles/s) over the floor's.
//!
//! Failed cycles, dropped connections, stderr lines, server-side errors
//! (/metrics), locks left held (/v1/list) and an unclean SIGTERM stop are
//! listed under the tables.
//!
//! `cargo bench --bench serve -- --big N` instead fills a directory with N
//! held locks through the server, reports the daemon's RSS, kills it (-9) and
//! times its restart until /healthz answers and a held lock shows as held.

use std::ffi::{CString, OsStr};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod bare;
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
/// At most so many of a daemon's stderr lines are kept to be shown.
const KEPT_LINES: usize = 1000;
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
    // The bench started again as the bare daemon (see `bare`).
    if let Some(at) = args.iter().position(|a| a == "--bare") {
        let dir = args.get(at + 1).expect("--bare DIR");
        bare::serve(Path::new(dir));
        return;
    }
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
    // hasp's throughput rows of this run, for the floor (which has no
    // fsync: rows without): label, conns, cycles/s.
    let mut rates: Vec<(String, usize, f64)> = Vec::new();
    let mut tag = 0;
    let own = [
        "locker1",
        "locker16",
        "locker64",
        "fresh",
        "xmlrpc",
        "v1",
        "fight",
        "family",
        "fsync-locker1",
        "fsync-locker16",
        "fsync-locker64",
        "fsync-fresh",
    ];
    if own.into_iter().any(wanted) {
        let title = format!(
            "hasp serve, loopback, keep-alive, {:.1} s per row",
            run.as_secs_f64()
        );
        println!("{title:<49} {COLUMNS}");
    }
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
            let point = repeated(
                &server,
                Load::new(Door::Locker, conns, Names::Tree),
                run,
                &mut tag,
            );
            let what = format!("Locker canhaz+nowant, {durability}");
            point.row(&what, &mut notes);
            if !fsync {
                rates.push((what, conns, point.rate()));
            }
        }
        tag += 1;
        if wanted(&key("fresh")) {
            let point = repeated(
                &server,
                Load::new(Door::Locker, 1, Names::Fresh),
                run,
                &mut tag,
            );
            let what = format!("  new resource each cycle, {durability}");
            point.row(&what, &mut notes);
            if !fsync {
                rates.push((what.trim().to_string(), 1, point.rate()));
            }
        }
        if !fsync {
            for (door, row) in [(Door::XmlRpc, "xmlrpc"), (Door::V1, "v1")] {
                tag += 1;
                if wanted(row) {
                    let point = repeated(&server, Load::new(door, 16, Names::Tree), run, &mut tag);
                    point.row(door.label(), &mut notes);
                    rates.push((door.label().to_string(), 16, point.rate()));
                }
            }
            if wanted("fight") {
                fight(&server, false, run).row(&mut notes);
            }
            if wanted("family") {
                fight(&server, true, run).row(&mut notes);
            }
        }
        server.audit(&mut notes, false);
        server.stop(&mut notes);
    }
    if !comparison(run, &mut tag, &mut rates, &mut notes) && own.into_iter().any(wanted) {
        println!("{REFERENCE}");
    }
    floor_rows(run, &rates, &mut notes);
    for note in &notes {
        println!("  ! {note}");
    }
}

/// The headings of the figures' columns (see [`print_row`]).
const COLUMNS: &str = "conns  cycles/s   p50 ms   p99 ms errors   cpu us client us";

/// Whether the row `key` is to be run: all of them, unless
/// `HASP_BENCH_ONLY` lists some (comma-separated): `locker1`, `locker16`,
/// `locker64`, `fresh`, `xmlrpc`, `v1`, `fight`, `family`, and `fsync-`
/// before the first four; for the comparison with the peers, a peer
/// (`locker` or `gocept`) and a number of connections (1, 16, 64) after
/// `peers-` (the event-loop client: `peers-locker16`) or `wrk-` (wrk:
/// `wrk-gocept64`); `bare1`, `bare16`, `bare64` and `wrk-bare…` for the
/// bare daemon; `floor1` and `floor2` for the floor's threads. A key
/// without its number, like `locker`, `fsync`, `peers`, `wrk-gocept`,
/// `bare` or `floor`, stands for all the rows it begins.
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
    /// The load generator's CPU time per cycle (the client thread, user
    /// and system), warm-up included.
    client_per_cycle: Option<Duration>,
    /// Of repeated runs: how many, and the lowest and highest cycles/s.
    range: Option<(usize, f64, f64)>,
    errors: u64,
    /// Connections that failed or that the server closed ...
    drops: u64,
    /// ... and of them, those it closed after a response saying so.
    closes: u64,
    /// Whether the server closes each connection after one response
    /// (gocept.lockd: HTTP/1.0), so that `closes` are no news.
    closes_expected: bool,
    /// Cycles cut off at the end of a row that is (see [`Load::cut`]), and
    /// the longest that one of them had waited.
    cut: usize,
    longest_cut: Duration,
    first_error: Option<String>,
}

impl Point {
    /// Cycles per second.
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn row(&self, what: &str, notes: &mut Vec<String>) {
        self.row_with(what, "", notes);
    }

    /// The row, with `extra` after its figures.
    fn row_with(&self, what: &str, extra: &str, notes: &mut Vec<String>) {
        let mut lat = self.latencies.clone();
        lat.sort();
        let at = |q: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
            }
        };
        let range = self.range.map_or(String::new(), |(runs, low, high)| {
            format!("   median of {runs}, {low:.0}-{high:.0}")
        });
        print_row(
            what,
            self.conns,
            self.rate(),
            (at(0.5), at(0.99)),
            &self.errors.to_string(),
            (self.cpu_per_cycle, self.client_per_cycle),
            &format!("{extra}{range}"),
        );
        if let Some(e) = &self.first_error {
            notes.push(format!(
                "{what}, {} conns: {} failed cycles, first: {e}",
                self.conns, self.errors
            ));
        }
        let failed = self.drops - self.closes;
        if failed > 0 {
            notes.push(format!(
                "{what}, {} conns: the server dropped {failed} keep-alive connections",
                self.conns
            ));
        }
        // In a cut row every connection is cut mid-cycle: news only if one
        // had waited long.
        if self.longest_cut > Duration::from_millis(100) {
            notes.push(format!(
                "{what}, {} conns: {} cycles still waiting at the end were left out, \
                 one for {:.0} ms",
                self.conns,
                self.cut,
                self.longest_cut.as_secs_f64() * 1e3
            ));
        }
        if self.closes > 0 && self.closes_expected {
            notes.push(format!(
                "{what}, {} conns: {} connections closed by the server after one \
                 response each (HTTP/1.0, as expected of it): reconnected, not errors",
                self.conns, self.closes
            ));
        } else if self.closes > 0 {
            notes.push(format!(
                "{what}, {} conns: the server closed {} keep-alive connections \
                 (saying so in its response)",
                self.conns, self.closes
            ));
        }
    }
}

/// One row of figures: `cpu` is the daemon's and the client's CPU time
/// per cycle.
fn print_row(
    what: &str,
    conns: usize,
    rate: f64,
    (p50, p99): (f64, f64),
    errors: &str,
    (cpu, client): (Option<Duration>, Option<Duration>),
    extra: &str,
) {
    let us = |cpu: Option<Duration>| {
        cpu.map_or("?".to_string(), |cpu| {
            format!("{:.1}", cpu.as_secs_f64() * 1e6)
        })
    };
    let (cpu, client) = (us(cpu), us(client));
    println!(
        "{what:<49} {conns:>5} {rate:>9.0} {p50:>8.2} {p99:>8.2} {errors:>6} {cpu:>8} {client:>9}{extra}"
    );
}

/// CPU time (user and system) of this thread, or of this process's
/// children that have been waited for: `libc::RUSAGE_THREAD` or
/// `libc::RUSAGE_CHILDREN`.
fn cpu_used(who: libc::c_int) -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    if unsafe { libc::getrusage(who, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled above.
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// What the connections of a throughput row do.
#[derive(Clone, Copy)]
struct Load {
    door: Door,
    conns: usize,
    names: Names,
    /// Cycles per connection before the clock starts, on its first
    /// resources (at most [`NAMES_PER_CONN`]).
    warm_up: usize,
    /// Whether the row ends at its time, cycles still waiting then cut off
    /// and left out, as wrk does (for the peers, whose clients can wait
    /// seconds for a connection), rather than waited for.
    cut: bool,
}

impl Load {
    /// Warmed up on all the connection's resources, not cut.
    fn new(door: Door, conns: usize, names: Names) -> Load {
        Load {
            door,
            conns,
            names,
            warm_up: NAMES_PER_CONN,
            cut: false,
        }
    }
}

/// [`throughput`] `HASP_BENCH_RUNS` times (default 1), each run on
/// resources of its own: the run with the median cycles/s, and the range.
fn repeated(server: &Server, load: Load, run: Duration, tag: &mut usize) -> Point {
    let runs = std::env::var("HASP_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let mut points: Vec<Point> = (0..runs)
        .map(|_| {
            *tag += 1;
            throughput(server, load, run, *tag)
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

/// Which resources a connection's cycles lock.
#[derive(Clone, Copy, PartialEq)]
enum Names {
    /// Its own 16, hierarchical: `bench/TAG/CONN/0..16`.
    Tree,
    /// A resource never locked before at every cycle: `bench/TAG/CONN/new/I`.
    Fresh,
    /// Its own 16, flat: `bench-TAG-CONN-0..16` (gocept.lockd makes a file
    /// of each name, so it takes no `/`).
    Flat,
}

/// What one connection of [`throughput`] did.
struct Task {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
    first_error: Option<String>,
    drops: u64,
    closes: u64,
    /// How long the cycle cut off at the end had waited, if one was.
    cut: Option<Duration>,
}

/// `load.conns` connections doing lock+unlock cycles for `run`, each on its
/// own resources (see [`Names`]), so that no two connections contend. All
/// the connections are tasks on one client thread (a current-thread
/// runtime).
fn throughput(server: &Server, load: Load, run: Duration, tag: usize) -> Point {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let Load {
        door,
        conns,
        names,
        warm_up,
        cut,
    } = load;
    let barrier = Arc::new(tokio::sync::Barrier::new(conns));
    let addr = server.addr;
    let cpu_before = server.cpu_time();
    let client_before = cpu_used(libc::RUSAGE_THREAD);
    let results = runtime.block_on(async move {
        let tasks: Vec<_> = (0..conns)
            .map(|c| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut http = AsyncHttp::new(addr);
                    let client = format!("c{c}");
                    let own: Vec<String> = (0..NAMES_PER_CONN)
                        .map(|i| match names {
                            Names::Flat => format!("bench-{tag}-{c}-{i}"),
                            Names::Tree | Names::Fresh => format!("bench/{tag}/{c}/{i}"),
                        })
                        .collect();
                    let (mut errors, mut first_error) = (0, None);
                    // Warm up: connect, and create the nodes (the first lock
                    // of a resource makes its directories: `fresh` measures
                    // that).
                    for name in own.iter().take(warm_up) {
                        if let Err(e) = cycle(&mut http, door, name, &client).await {
                            errors += 1;
                            first_error.get_or_insert(format!("warm-up: {e}"));
                        }
                    }
                    barrier.wait().await;
                    let start = Instant::now();
                    let end = tokio::time::Instant::from_std(start + run);
                    let mut latencies = Vec::with_capacity(4096);
                    let mut cut_off = None;
                    let mut i = 0;
                    while start.elapsed() < run {
                        let t = Instant::now();
                        let name = if names == Names::Fresh {
                            format!("bench/{tag}/{c}/new/{i}")
                        } else {
                            own[i % NAMES_PER_CONN].clone()
                        };
                        let one = cycle(&mut http, door, &name, &client);
                        let outcome = if cut {
                            match tokio::time::timeout_at(end, one).await {
                                Ok(outcome) => outcome,
                                Err(_) => {
                                    cut_off = Some(t.elapsed());
                                    break;
                                }
                            }
                        } else {
                            one.await
                        };
                        match outcome {
                            Ok(()) => latencies.push(t.elapsed()),
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert(e);
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                        i += 1;
                    }
                    Task {
                        latencies,
                        elapsed: if cut { run } else { start.elapsed() },
                        errors,
                        first_error,
                        drops: http.drops,
                        closes: http.closes,
                        cut: cut_off,
                    }
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
        client_per_cycle: None,
        range: None,
        errors: 0,
        drops: 0,
        closes: 0,
        closes_expected: false,
        cut: 0,
        longest_cut: Duration::ZERO,
        first_error: None,
    };
    let warm_up = conns * warm_up.min(NAMES_PER_CONN);
    let cycles = results.iter().map(|r| r.latencies.len()).sum::<usize>() + warm_up;
    point.cpu_per_cycle = match (cpu_before, server.cpu_time()) {
        (Some(before), Some(after)) => after.checked_sub(before).map(|d| d / cycles.max(1) as u32),
        _ => None,
    };
    point.client_per_cycle = match (client_before, cpu_used(libc::RUSAGE_THREAD)) {
        (Some(before), Some(after)) => after.checked_sub(before).map(|d| d / cycles.max(1) as u32),
        _ => None,
    };
    for task in results {
        point.latencies.extend(task.latencies);
        point.elapsed = point.elapsed.max(task.elapsed);
        point.errors += task.errors;
        point.drops += task.drops;
        point.closes += task.closes;
        if let Some(waited) = task.cut {
            point.cut += 1;
            point.longest_cut = point.longest_cut.max(waited);
        }
        if point.first_error.is_none() {
            point.first_error = task.first_error;
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
    match (status, field(&body, "ok"), field(&body, "token")) {
        (200, Some("true"), Some(token)) => Ok(Ok(token.to_string())),
        (200, Some("false"), _) => Ok(Err(field(&body, "lockedBy").unwrap_or("?").to_string())),
        _ => Err(format!("canhaz {name}: {status} {}", text(&body))),
    }
}

async fn nowant(http: &mut Keep<impl Conn>, name: &str, token: &str) -> Result<(), String> {
    let (status, body) = http.get(&format!("/nowant/{name}?token={token}")).await?;
    match (status, field(&body, "ok")) {
        (200, Some("true")) => Ok(()),
        _ => Err(format!("nowant {name}: {status} {}", text(&body))),
    }
}

/// The value of `key` in a flat JSON object as Locker's answers are
/// (`{"ok": true, "token": "…"}`, with or without spaces; strings without
/// escapes): a string's text without its quotes, else the literal. The
/// cycles read their answers this way, not as parsed JSON trees, so that
/// the load generator spends less of the two cores (the same for every
/// daemon it drives).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let quoted = format!("\"{key}\"");
    let rest = &json[json.find(&quoted)? + quoted.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    match rest.strip_prefix('"') {
        Some(string) => string.split('"').next(),
        None => Some(rest.split([',', '}']).next()?.trim()),
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
    // hasp answers true; gocept.lockd None (`<nil/>`, with allow_none).
    let done = reply.contains("<boolean>1</boolean>") || reply.contains("<nil/>");
    if status == 200 && done && !reply.contains("<fault>") {
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
// hasp and its peers, in the same run

/// Where the benches' files are: benches/peers.sh, benches/peers.py,
/// benches/wrk/.
const BENCHES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches");
const PEER_CONNS: [usize; 3] = [1, 16, 64];

/// A daemon hasp is compared with, and hasp's door that speaks its API.
struct Peer {
    /// Its name in row keys, and its argument to benches/peers.py.
    key: &'static str,
    label: &'static str,
    /// The label of hasp's door for its API.
    hasp: &'static str,
    door: Door,
    names: Names,
    /// Its wrk script, in benches/wrk/.
    script: &'static str,
    /// It closes each connection after one response (HTTP/1.0).
    closes: bool,
}

const PEERS: [Peer; 2] = [
    Peer {
        key: "locker",
        label: "Locker 1.0b (CherryPy 18.10)",
        hasp: "hasp, Locker door",
        door: Door::Locker,
        names: Names::Tree,
        script: "locker.lua",
        closes: false,
    },
    Peer {
        key: "gocept",
        label: "gocept.lockd 0.1 (SimpleXMLRPCServer)",
        hasp: "hasp, XML-RPC door",
        door: Door::XmlRpc,
        names: Names::Flat,
        script: "xmlrpc.lua",
        closes: true,
    },
];

/// The second table: each peer, then hasp's door for its API, under the
/// same load at 1, 16 and 64 connections, from the event-loop client
/// (`peers-` rows), then from wrk (`wrk-` rows); hasp's rows end with its
/// cycles/s over the peer's just before. A peer that cannot be installed or
/// started is noted and its rows left out; hasp's rows run all the same.
/// Whether any of its rows was wanted.
fn comparison(
    run: Duration,
    tag: &mut usize,
    rates: &mut Vec<(String, usize, f64)>,
    notes: &mut Vec<String>,
) -> bool {
    let wants = |how: &str, peer: &Peer| {
        PEER_CONNS
            .iter()
            .any(|conns| wanted(&format!("{how}-{}{conns}", peer.key)))
    };
    let any_peers = PEERS.iter().any(|peer| wants("peers", peer));
    let any_wrk = PEERS.iter().any(|peer| wants("wrk", peer));
    let any_bare = PEER_CONNS
        .iter()
        .any(|c| wanted(&format!("bare{c}")) || wanted(&format!("wrk-bare{c}")));
    if !any_peers && !any_wrk && !any_bare {
        return false;
    }
    let dir = peers_dir();
    if !dir.join("venv/.hasp-complete").exists() {
        eprintln!(
            "serve bench: installing the peers from PyPI: benches/peers.sh venv {}",
            dir.display()
        );
    }
    let python = peers_sh(&["venv".as_ref(), dir.as_os_str()])
        .map_err(|e| notes.push(format!("no peers (hasp's rows run without them): {e}")))
        .ok();
    let wrk = if any_wrk || any_bare {
        peers_sh(&["wrk".as_ref()])
            .map_err(|e| notes.push(format!("no wrk, no wrk rows: {e}")))
            .ok()
    } else {
        None
    };
    println!();
    let title = format!(
        "hasp and its peers, same run, {:.1} s per row",
        run.as_secs_f64()
    );
    println!("{title:<49} {COLUMNS}  hasp/peer");
    let hasp = Server::start(false);
    for peer in &PEERS {
        let wrk_rows = wrk.is_some() && wants("wrk", peer);
        if !wants("peers", peer) && !wrk_rows {
            continue;
        }
        let daemon = python.as_ref().and_then(|python| {
            start_peer(python, peer)
                .map_err(|e| {
                    let last = e.lines().rev().find(|l| !l.trim().is_empty());
                    let first = e.lines().next().unwrap_or_default();
                    notes.push(format!(
                        "{}: not started, its rows left out: {first} … {}",
                        peer.label,
                        last.unwrap_or_default()
                    ));
                })
                .ok()
        });
        for conns in PEER_CONNS {
            if !wanted(&format!("peers-{}{conns}", peer.key)) {
                continue;
            }
            // Cut at the end of the row, both: a peer's client can wait
            // seconds for a connection.
            let load = Load {
                cut: true,
                ..Load::new(peer.door, conns, peer.names)
            };
            let theirs = daemon.as_ref().map(|daemon| {
                // A peer has no nodes to make: no warm-up, its connections
                // are made in the row (as wrk's are), where their waits for
                // a full listen backlog (of 5, with both) are cut too.
                let mut point = repeated(daemon, Load { warm_up: 0, ..load }, run, tag);
                point.closes_expected = peer.closes;
                point.row(&format!("{}, event loop", peer.label), notes);
                point.rate()
            });
            let ours = repeated(&hasp, load, run, tag);
            let what = format!("{}, event loop", peer.hasp);
            ours.row_with(&what, &ratio(ours.rate(), theirs), notes);
            rates.push((what, conns, ours.rate()));
        }
        for conns in PEER_CONNS {
            let Some(wrk) = wrk.as_deref() else { break };
            if !wanted(&format!("wrk-{}{conns}", peer.key)) {
                continue;
            }
            let theirs = daemon.as_ref().and_then(|daemon| {
                *tag += 1;
                let what = format!("{}, wrk", peer.label);
                wrk_row(wrk, daemon, peer, conns, run, *tag, &what, None, notes)
            });
            *tag += 1;
            let what = format!("{}, wrk", peer.hasp);
            if let Some(ours) = wrk_row(wrk, &hasp, peer, conns, run, *tag, &what, theirs, notes) {
                rates.push((what, conns, ours));
            }
        }
        if let Some(daemon) = daemon {
            daemon.stop_peer(peer.label, notes);
        }
    }
    bare_rows(run, tag, wrk.as_deref(), rates, notes);
    if wrk.is_some() {
        println!("  wrk rows: p50 and p99 of one request (a cycle is two), connecting left out");
    }
    // Its clients stopped mid-cycle: cut rows, wrk.
    hasp.audit(notes, true);
    hasp.stop(notes);
    true
}

/// The bare daemon (`bare`: Locker's two calls over HTTP and the floor's
/// system calls, no rules) under the Locker rows' load, from the event-loop
/// client and wrk (`bare` and `wrk-bare` rows); its last column is hasp's
/// Locker door's cycles/s over its own, from the rows above.
fn bare_rows(
    run: Duration,
    tag: &mut usize,
    wrk: Option<&Path>,
    rates: &[(String, usize, f64)],
    notes: &mut Vec<String>,
) {
    let wants = |how: &str| PEER_CONNS.iter().any(|c| wanted(&format!("{how}{c}")));
    if !(wants("bare") || wrk.is_some() && wants("wrk-bare")) {
        return;
    }
    let dir = temp_dir();
    let mut cmd = Command::new(std::env::current_exe().expect("the bench's own path"));
    cmd.arg("--bare")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let what = "bare daemon (floor's calls over HTTP)";
    let mut daemon = match Server::spawn(cmd, what, |_| true, Duration::from_secs(60)) {
        Ok(daemon) => daemon,
        Err(e) => return notes.push(format!("{what}: not started: {e}")),
    };
    daemon._dir = Some(dir);
    let hasp = |how: &str, conns: usize| {
        let label = format!("{}, {how}", PEERS[0].hasp);
        rates
            .iter()
            .find(|(what, c, _)| *what == label && *c == conns)
            .map(|(_, _, rate)| *rate)
    };
    for conns in PEER_CONNS {
        if !wanted(&format!("bare{conns}")) {
            continue;
        }
        let load = Load {
            cut: true,
            ..Load::new(Door::Locker, conns, Names::Tree)
        };
        let point = repeated(&daemon, load, run, tag);
        let ours = hasp("event loop", conns);
        let ratio = ours.map_or(String::new(), |ours| ratio(ours, Some(point.rate())));
        point.row_with(&format!("{what}, event loop"), &ratio, notes);
    }
    for conns in PEER_CONNS {
        let Some(wrk) = wrk else { break };
        if !wanted(&format!("wrk-bare{conns}")) {
            continue;
        }
        *tag += 1;
        let theirs = wrk_row(
            wrk,
            &daemon,
            &PEERS[0],
            conns,
            run,
            *tag,
            &format!("{what}, wrk"),
            None,
            notes,
        );
        if let (Some(theirs), Some(ours)) = (theirs, hasp("wrk", conns)) {
            println!("  {:<47} {conns:>5} hasp/bare {:.2}x", "", ours / theirs);
        }
    }
    daemon.stop_peer(what, notes);
}

/// ` 3.2x`: hasp's cycles/s over the peer's, if it ran.
fn ratio(ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(theirs) if theirs > 0.0 => format!(" {:>9.1}x", ours / theirs),
        _ => String::new(),
    }
}

/// Where benches/peers.sh keeps the peers' venv: `HASP_BENCH_PEERS_DIR`,
/// else `bench-peers/` in the cargo target directory (beside `release/`).
fn peers_dir() -> PathBuf {
    match std::env::var_os("HASP_BENCH_PEERS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let hasp = Path::new(env!("CARGO_BIN_EXE_hasp"));
            let target = hasp.parent().and_then(Path::parent).unwrap_or(hasp);
            target.join("bench-peers")
        }
    }
}

/// Runs `benches/peers.sh ARGS`: the path it prints last, or in one line
/// why not.
fn peers_sh(args: &[&OsStr]) -> Result<PathBuf, String> {
    let what = format!(
        "benches/peers.sh {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = Command::new("bash")
        .arg(format!("{BENCHES}/peers.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    let last = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let line = text.lines().rev().find(|l| !l.trim().is_empty());
        line.unwrap_or_default().trim().to_string()
    };
    let path = last(&output.stdout);
    if output.status.success() && !path.is_empty() {
        Ok(PathBuf::from(path))
    } else {
        Err(format!(
            "{what}: {} ({})",
            last(&output.stderr),
            output.status
        ))
    }
}

/// `peer` started by benches/peers.py with the venv's `python`, in a temp
/// dir of its own (its lock files, and its working directory), on a port
/// the OS picks. Of its stderr (a line per request for gocept.lockd) only
/// errors are kept; its stdout (CherryPy's access log) is read and dropped.
fn start_peer(python: &Path, peer: &Peer) -> Result<Server, String> {
    let dir = temp_dir();
    let mut cmd = Command::new(python);
    cmd.arg(format!("{BENCHES}/peers.py"))
        .arg(peer.key)
        .arg(dir.path())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let errors = |line: &str| {
        ["Traceback", "Error", "Exception"]
            .iter()
            .any(|w| line.contains(w))
    };
    let mut server = Server::spawn(cmd, peer.label, errors, Duration::from_secs(60))?;
    server._dir = Some(dir);
    Ok(server)
}

/// wrk on `server` with `peer`'s script, `conns` threads of one connection
/// each, for `run` rounded up to whole seconds (wrk's unit): prints its row
/// (cycles/s are wrk's requests/s over 2; its latencies are per request)
/// and returns its cycles/s, with `versus`, the peer's, for the ratio.
#[allow(clippy::too_many_arguments)]
fn wrk_row(
    wrk: &Path,
    server: &Server,
    peer: &Peer,
    conns: usize,
    run: Duration,
    tag: usize,
    what: &str,
    versus: Option<f64>,
    notes: &mut Vec<String>,
) -> Option<f64> {
    let secs = run.as_secs_f64().ceil().max(1.0) as u64;
    let n = conns.to_string();
    let cpu_before = server.cpu_time();
    let client_before = cpu_used(libc::RUSAGE_CHILDREN);
    let output = Command::new(wrk)
        .args([
            "-t",
            &n,
            "-c",
            &n,
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(format!("{BENCHES}/wrk/{}", peer.script))
        .arg(format!("http://{}", server.addr))
        .args(["--", &tag.to_string()])
        .stdin(Stdio::null())
        .output();
    let cpu_after = server.cpu_time();
    let client_after = cpu_used(libc::RUSAGE_CHILDREN);
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            notes.push(format!("{what}, {conns} conns: wrk: {e}"));
            return None;
        }
    };
    let said = WrkSaid::read(&String::from_utf8_lossy(&output.stdout));
    let Some(per_second) = said.requests_per_second else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().find(|l| !l.trim().is_empty());
        notes.push(format!(
            "{what}, {conns} conns: no Requests/sec from wrk ({}): {}",
            output.status,
            line.unwrap_or_default()
        ));
        return None;
    };
    let cycles = per_second / 2.0;
    let cpu = match (cpu_before, cpu_after, said.requests) {
        (Some(before), Some(after), Some(requests)) if requests >= 2 => after
            .checked_sub(before)
            .map(|cpu| cpu.div_f64((requests / 2) as f64)),
        _ => None,
    };
    // wrk's own CPU: the children waited for meanwhile are wrk alone.
    let client = match (client_before, client_after, said.requests) {
        (Some(before), Some(after), Some(requests)) if requests >= 2 => after
            .checked_sub(before)
            .map(|cpu| cpu.div_f64((requests / 2) as f64)),
        _ => None,
    };
    let errors = said.failures.map_or("?".to_string(), |n| n.to_string());
    print_row(
        what,
        conns,
        cycles,
        (said.p50_ms, said.p99_ms),
        &errors,
        (cpu, client),
        &ratio(cycles, versus),
    );
    match (said.failures, said.first_failure) {
        (None, _) => notes.push(format!(
            "{what}, {conns} conns: no wrk-failures line (did the script's done() run?)"
        )),
        (Some(n), Some(first)) => notes.push(format!(
            "{what}, {conns} conns: {n} failed requests, first: {first}"
        )),
        _ => {}
    }
    if let Some(socket) = said.socket_errors {
        notes.push(format!(
            "{what}, {conns} conns: wrk's socket errors: {socket}"
        ));
    }
    Some(cycles)
}

/// What wrk printed, of what the table shows.
#[derive(Default)]
struct WrkSaid {
    requests_per_second: Option<f64>,
    requests: Option<u64>,
    p50_ms: f64,
    p99_ms: f64,
    /// From the script's done(): failed requests, and the first.
    failures: Option<u64>,
    first_failure: Option<String>,
    socket_errors: Option<String>,
}

impl WrkSaid {
    fn read(out: &str) -> WrkSaid {
        let mut said = WrkSaid {
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            ..WrkSaid::default()
        };
        for line in out.lines().map(str::trim) {
            let mut words = line.split_whitespace();
            let (first, second) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if let Some(rest) = line.strip_prefix("Requests/sec:") {
                said.requests_per_second = rest.trim().parse().ok();
            } else if line.contains(" requests in ") {
                said.requests = first.parse().ok();
            } else if first == "50%" {
                said.p50_ms = wrk_ms(second).unwrap_or(f64::NAN);
            } else if first == "99%" {
                said.p99_ms = wrk_ms(second).unwrap_or(f64::NAN);
            } else if let Some(rest) = line.strip_prefix("Socket errors:") {
                said.socket_errors = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("wrk-failures:") {
                said.failures = rest.trim().parse().ok();
            } else if let Some(rest) = line.strip_prefix("wrk-first-failure:") {
                said.first_failure = Some(rest.trim().to_string());
            }
        }
        said
    }
}

/// One of wrk's times (`812.00us`, `1.23ms`, `2.00s`, `1.00m`) in ms.
fn wrk_ms(time: &str) -> Option<f64> {
    let unit_at = time.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = time.split_at(unit_at);
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

// ---------------------------------------------------------------------------
// The floor

/// The floor's rows (`floor1`, `floor2`), then each of hasp's throughput
/// rows of this run as a multiple of it.
fn floor_rows(run: Duration, rates: &[(String, usize, f64)], notes: &mut Vec<String>) {
    let mut floors = Vec::new();
    for threads in [1, 2] {
        if !wanted(&format!("floor{threads}")) {
            continue;
        }
        if floors.is_empty() {
            println!();
            let title = "the floor: statx + 2 renameat per cycle, no hasp";
            println!(
                "{title:<49} {:>5} {:>9}   us per cycle (1/rate)",
                "threads", "cycles/s"
            );
        }
        match floor(threads, run) {
            Ok(rate) => {
                let what = if threads == 1 {
                    "  1 thread, 1 node".to_string()
                } else {
                    format!("  {threads} threads, a node each")
                };
                println!("{what:<49} {threads:>7} {rate:>9.0}   {:.2}", 1e6 / rate);
                floors.push((threads, 1e6 / rate));
            }
            Err(e) => notes.push(format!("floor, {threads} threads: {e}")),
        }
    }
    if floors.is_empty() || rates.is_empty() {
        return;
    }
    let heads: Vec<String> = floors.iter().map(|(t, _)| format!("x floor{t}")).collect();
    println!(
        "{:<49} {:>5} {:>9} {}",
        "hasp's rows over the floor: us per cycle (1/rate)",
        "conns",
        "us",
        heads.iter().map(|h| format!("{h:>9}")).collect::<String>()
    );
    for (what, conns, rate) in rates {
        let us = 1e6 / rate;
        let times: String = floors
            .iter()
            .map(|(_, floor)| format!("{:>8.1}x", us / floor))
            .collect();
        println!("  {what:<47} {conns:>5} {us:>9.1} {times}");
    }
}

/// The floor: only the system calls a lock+unlock cycle in hasp's on-disk
/// format cannot do without, from `threads` threads, each on a node of its
/// own in `temp_dir()` (the filesystem of hasp's lock directory), for
/// `run`: cycles/s, all threads together. Per cycle, relative to the node's
/// `.lock` directory held open (as hasp works: by directory descriptors):
/// - `statx(N)`: the read a grant cannot skip (the free state `N`, by the
///   name hasp remembers);
/// - the lock, `renameat(N, N+1+TOKEN+pc+MS+CLIENT)`: a fresh held name,
///   as hasp's (the fencing number grows; TOKEN a new 36-character uuid
///   form, MS the time);
/// - the unlock, `renameat(that, N+1)`.
fn floor(threads: usize, run: Duration) -> Result<f64, String> {
    let dir = temp_dir();
    let barrier = Arc::new(Barrier::new(threads));
    let mut workers = Vec::new();
    for t in 0..threads {
        let lock = dir.path().join(format!("node{t}")).join(".lock");
        std::fs::create_dir_all(&lock).map_err(|e| format!("mkdir {}: {e}", lock.display()))?;
        std::fs::File::create(lock.join("0")).map_err(|e| format!("create: {e}"))?;
        let lock = std::fs::File::open(&lock).map_err(|e| format!("open: {e}"))?;
        let barrier = barrier.clone();
        workers.push(thread::spawn(move || floor_cycles(&lock, t, &barrier, run)));
    }
    let (mut cycles, mut elapsed) = (0, Duration::ZERO);
    for worker in workers {
        let (n, took) = worker.join().expect("floor thread")?;
        cycles += n;
        elapsed = elapsed.max(took);
    }
    Ok(cycles as f64 / elapsed.as_secs_f64())
}

/// One thread of [`floor`], on the `.lock` directory `lock`: its cycles
/// and how long they took.
fn floor_cycles(
    lock: &std::fs::File,
    t: usize,
    barrier: &Barrier,
    run: Duration,
) -> Result<(u64, Duration), String> {
    use std::os::fd::AsRawFd;
    let fd = lock.as_raw_fd();
    let name = |s: String| CString::new(s).expect("no NUL");
    let fail = |call: &str| Err(format!("{call}: {}", std::io::Error::last_os_error()));
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut random = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut free = name("0".into());
    let mut n = 0u64;
    barrier.wait();
    let start = Instant::now();
    while start.elapsed() < run {
        let mut stat = std::mem::MaybeUninit::<libc::statx>::uninit();
        let (a, b) = (random(), random());
        let token = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            a >> 16 & 0xffff,
            a & 0xfff,
            b >> 48 & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        );
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let held = name(format!("{}+{token}+pc+{ms}+c{t}", n + 1));
        let next = name((n + 1).to_string());
        // SAFETY: the names are NUL-terminated and outlive the calls; `stat`
        // is written by statx.
        unsafe {
            let flags = libc::AT_SYMLINK_NOFOLLOW;
            let mask = libc::STATX_BASIC_STATS;
            if libc::statx(fd, free.as_ptr(), flags, mask, stat.as_mut_ptr()) != 0 {
                return fail("statx");
            }
            if libc::renameat(fd, free.as_ptr(), fd, held.as_ptr()) != 0 {
                return fail("renameat (lock)");
            }
            if libc::renameat(fd, held.as_ptr(), fd, next.as_ptr()) != 0 {
                return fail("renameat (unlock)");
            }
        }
        free = next;
        n += 1;
    }
    Ok((n, start.elapsed()))
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
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let startup = Duration::from_secs(3600);
        Server::spawn(cmd, "hasp serve", |_| true, startup).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns `cmd` with stderr piped (stdin and stdout as the caller set
    /// them; a piped stdout is read and dropped) and waits up to `startup`
    /// for its line `listening on http://ADDR`. Stderr is read to the end, so
    /// that the pipe never fills; the lines for which `keep` is true (at most
    /// [`KEPT_LINES`]) are kept for [`Server::stop`].
    fn spawn(
        mut cmd: Command,
        what: &str,
        keep: fn(&str) -> bool,
        startup: Duration,
    ) -> Result<Server, String> {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {what}: {e}"))?;
        if let Some(mut stdout) = child.stdout.take() {
            thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        }
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        // Hands the address over once the listening line is seen, or all
        // that was said before the end if it never is; returns the lines
        // kept.
        let reader = thread::spawn(move || {
            let (mut kept, mut before) = (Vec::new(), Vec::new());
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                match (&tx, line.split_once("listening on http://")) {
                    (Some(sender), Some((_, rest))) => {
                        let addr = rest.split(' ').next().unwrap_or("").to_string();
                        let _ = sender.send(Ok(addr));
                        tx = None;
                    }
                    _ => {
                        if tx.is_some() {
                            before.push(line.clone());
                        }
                        if kept.len() < KEPT_LINES && keep(&line) {
                            kept.push(line);
                        }
                    }
                }
            }
            if let Some(sender) = tx {
                let _ = sender.send(Err(before.join("\n")));
            }
            kept
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: Some(reader),
            _dir: None,
        };
        match rx.recv_timeout(startup) {
            Ok(Ok(addr)) => {
                server.addr = addr
                    .parse()
                    .map_err(|_| format!("{what}: bad address {addr:?}"))?
            }
            Ok(Err(said)) => {
                let status = server.child.wait();
                return Err(format!(
                    "{what} exited ({status:?}) before listening:\n{said}"
                ));
            }
            Err(_) => return Err(format!("{what}: no listening line")),
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// CPU time the daemon has used so far, all its threads: the sum of
    /// the first field of each `/proc/PID/task/TID/schedstat` (ns on CPU).
    /// The daemon is the child itself (hasp, or the peers' python, which
    /// is not started through a shell). A thread that ends while this reads
    /// is left out. `None` where Linux's schedstat is missing.
    fn cpu_time(&self) -> Option<Duration> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        let (mut ns, mut read) = (0u64, false);
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
            read = true;
        }
        read.then(|| Duration::from_nanos(ns))
    }

    /// After every client released what it took: notes server-side errors,
    /// grants without a release, and locks still held. After clients that
    /// stop mid-cycle (wrk, and rows cut at their end: each connection may
    /// hold a lock then), only server-side errors.
    fn audit(&self, notes: &mut Vec<String>, cut_short: bool) {
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
                if grants != releases && !cut_short {
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
        if cut_short {
            return;
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

    /// SIGTERM to a peer; notes a peer that does not exit within 10 s
    /// (then killed), and the error lines of its stderr.
    fn stop_peer(mut self, what: &str, notes: &mut Vec<String>) {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    notes.push(format!(
                        "{what} did not exit within 10 s of SIGTERM (killed)"
                    ));
                    self.kill();
                    break;
                }
            }
        }
        let lines = self
            .stderr
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default();
        for line in lines.iter().take(5) {
            notes.push(format!("{what} stderr: {line}"));
        }
        if lines.len() > 5 {
            notes.push(format!(
                "{what} stderr: {} more such lines",
                lines.len() - 5
            ));
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
