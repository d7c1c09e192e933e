//! hasp on etcd beside etcd's own lock, in one run on one etcd (started
//! here, one member, fsync on, `tests/etcd.rs`): lock+unlock cycles per
//! second and latency at 1 and 16 concurrent clients, each client cycling
//! on a resource of its own, through
//!
//! - hasp's Rust API (`Registry::open_etcd`, one registry per client), and
//! - etcd's lock service through `etcd-client`'s lock API (`lock` with a
//!   lease granted once per client, then `unlock`: what `etcdctl lock` and
//!   the concurrency recipe do), one connection per client;
//!
//! then one process per cycle: `hasp --store URL lock R -- true` beside
//! `etcdctl lock R true`.
//!
//! Run: `cargo bench --bench etcd`. `HASP_BENCH_SECONDS` (default 3) sets
//! each row's length, `HASP_BENCH_PROCESSES` (default 40) the process rows'
//! count; `HASP_BENCH_BIN` runs another `hasp` binary for the process row.

#[path = "../tests/etcd.rs"]
mod etcd;

use etcd_client::{Client, LockOptions as EtcdLockOptions};
use hasp::{EtcdUrl, LockOptions, Registry, UnlockKey};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

fn main() {
    let seconds = env_number("HASP_BENCH_SECONDS", 3);
    let processes = env_number("HASP_BENCH_PROCESSES", 40) as usize;
    let row = Duration::from_secs(seconds);
    let server = etcd::Etcd::single();
    let endpoint = server.endpoint(0);
    println!(
        "lock+unlock on etcd 3.4 (one member, fsync on), {} s a row, each client on a \
         resource of its own",
        seconds
    );
    let etcd_pid = server.pid(0).expect("etcd runs");
    println!(
        "{:<44} {:>8} {:>12} {:>9} {:>9} {:>11} {:>11}",
        "", "clients", "cycles/s", "p50 ms", "p99 ms", "client CPU", "etcd CPU"
    );
    println!(
        "{:<44} {:>8} {:>12} {:>9} {:>9} {:>11} {:>11}",
        "", "", "", "", "", "µs/cycle", "µs/cycle"
    );
    for clients in [1, 16] {
        let url = EtcdUrl::parse(&server.url(&format!("bench-{clients}"))).expect("url");
        let hasp = measure(clients, row, etcd_pid, |c| {
            let mut registry = Registry::open_etcd(&url).expect("open");
            let name = format!("job-{c}");
            let options = LockOptions::client(format!("c{c}"));
            let key = UnlockKey::Client(format!("c{c}"));
            move || {
                registry.lock(&name, &options).expect("lock");
                registry.unlock(&name, &key).expect("unlock");
            }
        });
        print_row("hasp, Rust API (one transaction a grant)", clients, &hasp);
        let endpoint = endpoint.clone();
        let own = measure(clients, row, etcd_pid, move |c| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut client = runtime
                .block_on(Client::connect([endpoint.as_str()], None))
                .expect("connect");
            let lease = runtime
                .block_on(client.lease_grant(600, None))
                .expect("lease")
                .id();
            let name = format!("etcd-lock/{clients}/job-{c}");
            move || {
                let options = EtcdLockOptions::new().with_lease(lease);
                let locked = runtime
                    .block_on(client.lock(name.as_str(), Some(options)))
                    .expect("etcd lock");
                runtime
                    .block_on(client.unlock(locked.key()))
                    .expect("etcd unlock");
            }
        });
        print_row("etcd's lock (etcd-client lock API)", clients, &own);
        println!(
            "{:<44} {:>8} {:>11.2}x",
            "hasp / etcd's lock",
            clients,
            hasp.rate / own.rate
        );
    }

    let bin = std::env::var("HASP_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hasp").into());
    let url = server.url("bench-process");
    let hasp = per_process(processes, || {
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--store", &url, "lock", "job", "--client", "p", "--", "true",
        ]);
        cmd
    });
    print_row("hasp --store URL lock R -- true", 1, &hasp);
    let endpoints = format!("--endpoints={endpoint}");
    let own = per_process(processes, || {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .args([endpoints.as_str(), "lock", "job", "true"]);
        cmd
    });
    print_row("etcdctl lock R true", 1, &own);
    println!(
        "{:<44} {:>8} {:>11.2}x",
        "hasp / etcdctl, one process a cycle",
        1,
        hasp.rate / own.rate
    );
}

/// What a row measured.
struct Measured {
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time per cycle: this process (the clients), and etcd.
    cpu: Option<(Duration, Duration)>,
}

/// CPU time (user and system) this process has used.
fn own_cpu() -> Duration {
    // SAFETY: getrusage(2) fills the struct this function owns.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time (user and system) process `pid` has used, from /proc.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    // utime and stime are fields 14 and 15 (1-based), in clock ticks.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf(3) reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// Runs `clients` threads for `row`, each with the cycle `make(c)` gives
/// it (made before the clock starts); every cycle's latency counts.
fn measure<F, C>(clients: usize, row: Duration, etcd_pid: u32, make: F) -> Measured
where
    F: Fn(usize) -> C + Sync,
    C: FnMut(),
{
    let start = Barrier::new(clients + 1);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut elapsed = Duration::ZERO;
    let mut cpu = (Duration::ZERO, Duration::ZERO);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (make, start) = (&make, &start);
                s.spawn(move || {
                    let mut cycle = make(c);
                    // One warm-up cycle: connections made, keys created.
                    cycle();
                    start.wait();
                    let began = Instant::now();
                    let mut mine = Vec::new();
                    while began.elapsed() < row {
                        let t = Instant::now();
                        cycle();
                        mine.push(t.elapsed());
                    }
                    (mine, began.elapsed())
                })
            })
            .collect();
        start.wait();
        let (mine, etcd) = (own_cpu(), cpu_of(etcd_pid));
        let mut joined = Vec::new();
        for worker in workers {
            joined.push(worker.join().expect("a client"));
        }
        cpu = (own_cpu() - mine, cpu_of(etcd_pid) - etcd);
        for worker in joined {
            let (mine, took) = worker;
            latencies.extend(mine);
            elapsed = elapsed.max(took);
        }
    });
    let mut measured = summarize(latencies, elapsed);
    let cycles = measured_cycles(&measured, elapsed);
    measured.cpu = Some((cpu.0 / cycles, cpu.1 / cycles));
    measured
}

/// How many cycles a row made.
fn measured_cycles(m: &Measured, elapsed: Duration) -> u32 {
    ((m.rate * elapsed.as_secs_f64()).round() as u32).max(1)
}

/// `count` processes made by `command`, one after another.
fn per_process(count: usize, command: impl Fn() -> Command) -> Measured {
    let mut latencies = Vec::with_capacity(count);
    let began = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        let status = command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run");
        assert!(status.success(), "{status}");
        latencies.push(t.elapsed());
    }
    summarize(latencies, began.elapsed())
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Measured {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Measured {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        cpu: None,
    }
}

fn print_row(name: &str, clients: usize, m: &Measured) {
    let (client, etcd) = match m.cpu {
        Some((client, etcd)) => (
            format!("{:.0}", client.as_secs_f64() * 1e6),
            format!("{:.0}", etcd.as_secs_f64() * 1e6),
        ),
        None => (String::new(), String::new()),
    };
    println!(
        "{:<44} {:>8} {:>12.0} {:>9.2} {:>9.2} {:>11} {:>11}",
        name,
        clients,
        m.rate,
        m.p50.as_secs_f64() * 1e3,
        m.p99.as_secs_f64() * 1e3,
        client,
        etcd
    );
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default) as u64
}
