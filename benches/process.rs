//! Process locks: hasp's `FileLock` (through the process-lock component and
//! the host's flock) beside native `std::fs::File::lock` in the same run.
//! Run: `cargo bench --bench process`. Prints one table:
//!
//! - in-process acquire+release on a file kept open, and the floor any
//!   component pays for it: two empty calls into a guest, each calling out
//!   to the host once (what one hasp cycle crosses), on an engine
//!   configured as hasp's; "native + floor" is what a cycle would cost if
//!   hasp added nothing but the boundary;
//! - handoff: one process releases, a waiting process holds it (median);
//! - contended throughput of 4 processes for a fixed time;
//! - release after `kill -9` of the holder, until a waiter holds it.
//!
//! The bench re-executes itself for the other processes (`--role ...`).
//! `HASP_BENCH_ONLY` runs some rows only (see [`wanted`]).

use hasp::{FileLock, Wait};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CYCLES: usize = 200_000;
const HANDOFFS: usize = 200;
const CONTENDERS: usize = 4;
const CONTENTION: Duration = Duration::from_secs(2);
const KILLS: usize = 30;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Native,
    Hasp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Hasp => "hasp",
        }
    }

    fn parse(s: &str) -> Kind {
        if s == "hasp" {
            Kind::Hasp
        } else {
            Kind::Native
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--role") {
        return role(&args[at + 1..]);
    }
    let dir = match std::env::var_os("HASP_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let dir = dir.path();

    let python = if wanted("python") {
        python_figures(dir)
    } else {
        Vec::new()
    };
    let py = |i: usize| python.iter().map(|(_, v)| v[i]).collect::<Vec<f64>>();
    print!(
        "process locks, same run\n{:<44} {:>12} {:>12}",
        "", "native", "hasp"
    );
    for (name, _) in &python {
        print!(" {name:>12}");
    }
    println!();
    let floor = boundary_floor();
    println!(
        "{:<44} {:>12} {floor:>12.0}",
        "boundary floor: 2 calls in, 2 out (ops/s)", ""
    );
    // Rates add as times do: 1 / (1/native + 1/floor).
    let plus_floor = |native: f64| 1.0 / (1.0 / native + 1.0 / floor);
    if wanted("exclusive") {
        let n = in_process(Kind::Native, dir, false);
        let h = in_process(Kind::Hasp, dir, false);
        row(
            "exclusive acquire+release, kept open (ops/s)",
            n,
            h,
            &py(0),
            0,
        );
        floor_row("exclusive", plus_floor(n), h);
    }
    if wanted("shared") {
        let n = in_process(Kind::Native, dir, true);
        let h = in_process(Kind::Hasp, dir, true);
        row("shared acquire+release, kept open (ops/s)", n, h, &[], 0);
        floor_row("shared", plus_floor(n), h);
    }
    if wanted("handoff") {
        let (n, h) = (handoff(Kind::Native, dir), handoff(Kind::Hasp, dir));
        row("handoff between processes, median (ms)", n, h, &py(1), 3);
    }
    if wanted("contended") {
        let (n, h) = (contended(Kind::Native, dir), contended(Kind::Hasp, dir));
        row("contended, 4 processes (ops/s)", n, h, &py(2), 0);
    }
    if wanted("kill") {
        let (n, h) = (after_kill(Kind::Native, dir), after_kill(Kind::Hasp, dir));
        row("held again after kill -9, median (ms)", n, h, &py(3), 3);
    }
    if python.is_empty() {
        println!("(python3 with locket and filelock not found: no Python columns)");
    }
}

/// Whether the row `name` runs: all do, unless `HASP_BENCH_ONLY` lists
/// some (comma-separated: `python`, `exclusive`, `shared`, `handoff`,
/// `contended`, `kill`; the floor always runs).
fn wanted(name: &str) -> bool {
    std::env::var("HASP_BENCH_ONLY").map_or(true, |only| only.split(',').any(|n| n.trim() == name))
}

fn row(what: &str, native: f64, hasp: f64, others: &[f64], decimals: usize) {
    print!("{what:<44} {native:>12.decimals$} {hasp:>12.decimals$}");
    for v in others {
        print!(" {v:>12.decimals$}");
    }
    println!();
}

/// The native cycle plus the boundary floor (under "native"), and how many
/// times as long hasp's cycle takes (under "hasp").
fn floor_row(what: &str, native_plus_floor: f64, hasp: f64) {
    let times = native_plus_floor / hasp;
    println!(
        "{:<44} {native_plus_floor:>12.0} {:>12}",
        format!("  {what}: native + floor (ops/s); hasp ×"),
        format!("{times:.2}×")
    );
}

/// Cycles per second of the component boundary alone: a host call into a
/// guest export whose body calls one host import and returns, twice per
/// cycle (a hasp cycle calls `acquire` and `release`, and each calls the
/// host's `file-lock` once). The engine is configured as hasp's (component
/// model, epoch interruption), with the deadline set once.
fn boundary_floor() -> f64 {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Config, Engine, Store};
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let engine = Engine::new(&config).expect("engine");
    let text = r#"(component
        (import "ping" (func $ping))
        (core func $ping_low (canon lower (func $ping)))
        (core module $m
          (import "host" "ping" (func $ping))
          (func (export "call") (call $ping)))
        (core instance $host (export "ping" (func $ping_low)))
        (core instance $i (instantiate $m (with "host" (instance $host))))
        (func (export "call") (canon lift (core func $i "call"))))"#;
    let component =
        Component::new(&engine, wat::parse_str(text).expect("component text")).expect("component");
    let mut linker = Linker::<()>::new(&engine);
    linker
        .root()
        .func_wrap("ping", |_, (): ()| Ok(()))
        .expect("ping");
    let mut store = Store::new(&engine, ());
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker
        .instantiate(&mut store, &component)
        .expect("instance");
    let call = instance
        .get_typed_func::<(), ()>(&mut store, "call")
        .expect("call");
    let once = |store: &mut Store<()>| call.call(&mut *store, ()).expect("call");
    for _ in 0..1000 {
        once(&mut store);
    }
    let start = Instant::now();
    for _ in 0..CYCLES {
        once(&mut store);
        once(&mut store);
    }
    CYCLES as f64 / start.elapsed().as_secs_f64()
}

/// locket's and filelock's figures from benches/process.py, when python3
/// has both; empty otherwise.
fn python_figures(dir: &Path) -> Vec<(String, Vec<f64>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/process.py");
    let Ok(out) = Command::new("python3").arg(script).arg(dir).output() else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    ["locket", "filelock"]
        .iter()
        .filter_map(|name| {
            let values = json[*name].as_array()?;
            let values: Option<Vec<f64>> = values.iter().map(|v| v.as_f64()).collect();
            Some((name.to_string(), values?))
        })
        .collect()
}

/// A lock taken and released over and over on one open file. An exclusive
/// hasp holder also writes its owner line each time; a shared one does not.
fn in_process(kind: Kind, dir: &Path, shared: bool) -> f64 {
    let path = dir.join(format!("inproc-{}-{shared}.lock", kind.name()));
    let start;
    match kind {
        Kind::Native => {
            let file = File::create(&path).expect("create");
            start = Instant::now();
            for _ in 0..CYCLES {
                if shared {
                    file.lock_shared().expect("lock");
                } else {
                    file.lock().expect("lock");
                }
                file.unlock().expect("unlock");
            }
        }
        Kind::Hasp => {
            let mut lock = FileLock::open(dir, file_name(&path)).expect("open");
            start = Instant::now();
            for _ in 0..CYCLES / 10 {
                let guard = if shared {
                    lock.lock_shared(Wait::Forever)
                } else {
                    lock.lock(Wait::Forever)
                };
                lock = guard.expect("lock").release().expect("release");
            }
            return (CYCLES / 10) as f64 / start.elapsed().as_secs_f64();
        }
    }
    CYCLES as f64 / start.elapsed().as_secs_f64()
}

/// Median time from a release in this process to the moment a waiting
/// process holds the lock (CLOCK_MONOTONIC is shared by processes).
fn handoff(kind: Kind, dir: &Path) -> f64 {
    let path = dir.join(format!("handoff-{}.lock", kind.name()));
    let native = File::create(&path).expect("create");
    let mut lock = Some(FileLock::open(dir, file_name(&path)).expect("open"));
    let mut gaps = Vec::with_capacity(HANDOFFS);
    for _ in 0..HANDOFFS {
        let guard = match kind {
            Kind::Native => {
                native.lock().expect("lock");
                None
            }
            Kind::Hasp => Some(
                lock.take()
                    .expect("open")
                    .lock(Wait::Forever)
                    .expect("lock"),
            ),
        };
        let waiter = Waiter::asleep(kind, &path);
        let released = monotonic_ns();
        match guard {
            Some(guard) => lock = Some(guard.release().expect("release")),
            None => native.unlock().expect("unlock"),
        }
        gaps.push(waiter.ms_after(released));
    }
    median(&mut gaps)
}

/// Total acquire+release cycles per second of several processes at once.
fn contended(kind: Kind, dir: &Path) -> f64 {
    let path = dir.join(format!("contended-{}.lock", kind.name()));
    let children: Vec<Child> = (0..CONTENDERS)
        .map(|_| spawn_role(kind, "contend", &path))
        .collect();
    let mut total = 0u64;
    for mut child in children {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out)
            .expect("read");
        child.wait().expect("wait");
        total += out.trim().parse::<u64>().expect("count");
    }
    total as f64 / CONTENTION.as_secs_f64()
}

/// Median time from `kill -9` of a holding process to a waiter holding it.
fn after_kill(kind: Kind, dir: &Path) -> f64 {
    let path = dir.join(format!("kill-{}.lock", kind.name()));
    let mut gaps = Vec::with_capacity(KILLS);
    for _ in 0..KILLS {
        let mut holder = spawn_role(kind, "hold", &path);
        let mut held = BufReader::new(holder.stdout.take().expect("stdout")).lines();
        assert_eq!(held.next().expect("line").expect("read"), "held");
        let waiter = Waiter::asleep(kind, &path);
        let killed = monotonic_ns();
        holder.kill().expect("kill -9");
        holder.wait().expect("reap");
        gaps.push(waiter.ms_after(killed));
    }
    median(&mut gaps)
}

/// A `wait-once` process, asleep in flock(2) on a held lock.
struct Waiter {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Waiter {
    /// Starts one and returns once it really sleeps on `path`.
    fn asleep(kind: Kind, path: &Path) -> Waiter {
        let mut child = spawn_role(kind, "wait-once", path);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        assert_eq!(lines.next().expect("line").expect("read"), "waiting");
        wait_until_blocked(path, child.id());
        Waiter { child, lines }
    }

    /// Milliseconds from `since_ns` (CLOCK_MONOTONIC) until it held the lock.
    fn ms_after(mut self, since_ns: u64) -> f64 {
        let held: u64 = self
            .lines
            .next()
            .expect("line")
            .expect("read")
            .parse()
            .expect("ns");
        self.child.wait().expect("wait");
        held.saturating_sub(since_ns) as f64 / 1e6
    }
}

/// Returns once `pid` is blocked in flock(2) on `path` (a `->` entry in
/// /proc/locks), so that every handoff measures a waiter that really sleeps.
fn wait_until_blocked(path: &Path, pid: u32) {
    use std::os::unix::fs::MetadataExt;
    let inode = format!(":{}", std::fs::metadata(path).expect("stat").ino());
    let pid = pid.to_string();
    loop {
        let table = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
        let blocked = table.lines().any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 6 && f[1] == "->" && f[5] == pid && f[6].ends_with(&inode)
        });
        if blocked {
            return;
        }
        std::thread::yield_now();
    }
}

fn spawn_role(kind: Kind, role: &str, path: &Path) -> Child {
    Command::new(std::env::current_exe().expect("exe"))
        .args(["--role", role, kind.name()])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// The other processes: `wait-once` (print "waiting", block for the lock,
/// print the monotonic time it was granted), `hold` (take it, print "held",
/// wait to be killed) and `contend` (lock/unlock until the time is up).
fn role(args: &[String]) {
    let (role, kind, path) = (&args[0], Kind::parse(&args[1]), PathBuf::from(&args[2]));
    let dir = path.parent().expect("dir").to_path_buf();
    let mut out = std::io::stdout();
    let native = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("open")
    };
    match (role.as_str(), kind) {
        ("wait-once", Kind::Native) => {
            let file = native();
            assert!(file.try_lock().is_err(), "the lock should be held");
            writeln!(out, "waiting")
                .and_then(|_| out.flush())
                .expect("say");
            file.lock().expect("lock");
            writeln!(out, "{}", monotonic_ns()).expect("say");
        }
        ("wait-once", Kind::Hasp) => {
            let lock = FileLock::open(&dir, file_name(&path)).expect("open");
            writeln!(out, "waiting")
                .and_then(|_| out.flush())
                .expect("say");
            let _guard = lock.lock(Wait::Forever).expect("lock");
            writeln!(out, "{}", monotonic_ns()).expect("say");
        }
        ("hold", Kind::Native) => {
            let file = native();
            file.lock().expect("lock");
            writeln!(out, "held")
                .and_then(|_| out.flush())
                .expect("say");
            loop {
                std::thread::park();
            }
        }
        ("hold", Kind::Hasp) => {
            let lock = FileLock::open(&dir, file_name(&path)).expect("open");
            let _guard = lock.lock(Wait::Forever).expect("lock");
            writeln!(out, "held")
                .and_then(|_| out.flush())
                .expect("say");
            loop {
                std::thread::park();
            }
        }
        ("contend", Kind::Native) => {
            let file = native();
            let (start, mut n) = (Instant::now(), 0u64);
            while start.elapsed() < CONTENTION {
                file.lock().expect("lock");
                file.unlock().expect("unlock");
                n += 1;
            }
            writeln!(out, "{n}").expect("say");
        }
        ("contend", Kind::Hasp) => {
            let mut lock = FileLock::open(&dir, file_name(&path)).expect("open");
            let (start, mut n) = (Instant::now(), 0u64);
            while start.elapsed() < CONTENTION {
                lock = lock
                    .lock(Wait::Forever)
                    .expect("lock")
                    .release()
                    .expect("release");
                n += 1;
            }
            writeln!(out, "{n}").expect("say");
        }
        ("shared-loop", Kind::Hasp) => {
            // For profiling the component boundary: shared cycles, no record.
            let mut lock = FileLock::open(&dir, file_name(&path)).expect("open");
            let start = Instant::now();
            while start.elapsed() < CONTENTION {
                lock = lock
                    .lock_shared(Wait::Forever)
                    .expect("lock")
                    .release()
                    .expect("release");
            }
        }
        _ => panic!("unknown role {role}"),
    }
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .expect("file name")
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}
