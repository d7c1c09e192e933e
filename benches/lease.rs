//! What leases cost, side by side in one run:
//!
//! 1. lock+unlock cycles/s through the Rust API (one reused guest instance,
//!    256 resources taken in turn), without a lease and with one, in
//!    interleaved rounds so that the machine's drift hits both alike;
//! 2. renewals/s of one held lock, by token and by client id;
//! 3. the handoff time of a waiting lock: how long after the holder lets go
//!    a waiting `hasp lock RES --wait` process has the lock and has exited,
//!    beside a waiting `flock -w` process on a lock file (flock(1), which the
//!    kernel wakes) in the same run.
//!
//! Run: `cargo bench --bench lease`. `HASP_BENCH_DIR=/dev/shm` measures on
//! tmpfs; `HASP_BENCH_ROUNDS` (default 7) and `HASP_BENCH_HANDOFFS` (default
//! 30) set the repetitions; `HASP_BENCH_BIN` runs another `hasp` binary for
//! the handoff rows.

use hasp::{LockOptions, Registry, Runtime, UnlockKey};
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CYCLES: usize = 10_000;
const RESOURCES: usize = 256;
const RENEWALS: usize = 10_000;

fn main() {
    let dir = match std::env::var_os("HASP_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let rounds = env_number("HASP_BENCH_ROUNDS", 7);
    let handoffs = env_number("HASP_BENCH_HANDOFFS", 30);
    let runtime = Runtime::shared().expect("runtime");
    let mut registry = Registry::open_with(&runtime, dir.path()).expect("open");
    println!(
        "hasp leases ({} on {}; {rounds} interleaved rounds of {CYCLES} cycles)",
        std::env::consts::ARCH,
        dir.path().display()
    );

    // 1. lock+unlock with and without a lease.
    let plain = LockOptions::client("bench");
    let leased = LockOptions::client("bench").with_ttl(Duration::from_secs(30));
    let key = UnlockKey::Client("bench".into());
    let names: Vec<String> = (0..RESOURCES)
        .map(|i| format!("lease-bench/r{i}"))
        .collect();
    // Warm up: every node exists and is held open.
    cycles(&mut registry, &names, &plain, &key, RESOURCES * 4);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        without.push(cycles(&mut registry, &names, &plain, &key, CYCLES));
        with.push(cycles(&mut registry, &names, &leased, &key, CYCLES));
    }
    let (a, b) = (median(&mut without), median(&mut with));
    println!(
        "  lock+unlock, no lease      {a:>9.0} cycles/s  (range {})",
        range(&without)
    );
    println!(
        "  lock+unlock, 30 s lease    {b:>9.0} cycles/s  (range {})",
        range(&with)
    );
    println!(
        "  cost of a lease            {:>9.1} %",
        (a / b - 1.0) * 100.0
    );

    // 2. Renewals of one held lock.
    let grant = registry.lock("renewed", &leased).expect("lock");
    let by_token = UnlockKey::Token(grant.token.clone());
    let (mut token_rates, mut client_rates) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        token_rates.push(renewals(&mut registry, &by_token));
        client_rates.push(renewals(&mut registry, &key));
    }
    let (t, c) = (median(&mut token_rates), median(&mut client_rates));
    println!(
        "  renew by token             {t:>9.0} renewals/s  (range {})",
        range(&token_rates)
    );
    println!(
        "  renew by client id         {c:>9.0} renewals/s  (range {})",
        range(&client_rates)
    );
    registry.unlock("renewed", &by_token).expect("unlock");

    // 3. Handoff to a waiting process.
    let hasp =
        std::env::var("HASP_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hasp").into());
    let flock_file = dir.path().join("handoff.flock");
    let (mut hasp_ms, mut flock_ms) = (Vec::new(), Vec::new());
    for i in 0..handoffs {
        // Released at a random moment of the waiter's polling.
        let settle = Duration::from_millis(100 + (i as u64 * 37) % 200);
        hasp_ms.push(hasp_handoff(&hasp, dir.path(), &mut registry, settle));
        flock_ms.push(flock_handoff(&flock_file, settle));
    }
    let (h, f) = (median(&mut hasp_ms), median(&mut flock_ms));
    println!(
        "  handoff, hasp lock --wait  {h:>9.2} ms median, p90 {:.2} ms  ({handoffs} handoffs)",
        percentile(&hasp_ms, 0.9)
    );
    println!(
        "  handoff, flock -w          {f:>9.2} ms median, p90 {:.2} ms",
        percentile(&flock_ms, 0.9)
    );
}

/// `n` lock+unlock cycles over `names` in turn; cycles/s.
fn cycles(
    registry: &mut Registry,
    names: &[String],
    options: &LockOptions,
    key: &UnlockKey,
    n: usize,
) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let name = &names[i % names.len()];
        registry.lock(name, options).expect("lock");
        registry.unlock(name, key).expect("unlock");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// [`RENEWALS`] renewals of `renewed` by `key`; renewals/s.
fn renewals(registry: &mut Registry, key: &UnlockKey) -> f64 {
    let start = Instant::now();
    for _ in 0..RENEWALS {
        registry.renew("renewed", key, None).expect("renew");
    }
    RENEWALS as f64 / start.elapsed().as_secs_f64()
}

/// Milliseconds from the holder's unlock (through the API) until a waiting
/// `hasp lock handoff --wait 30` process has exited with the lock.
fn hasp_handoff(hasp: &str, dir: &Path, registry: &mut Registry, settle: Duration) -> f64 {
    let holder = LockOptions::client("holder");
    registry.lock("handoff", &holder).expect("lock");
    let mut waiter = Command::new(hasp)
        .arg("--dir")
        .arg(dir)
        .args(["lock", "handoff", "--client", "waiter", "--wait", "30"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start hasp lock --wait");
    std::thread::sleep(settle);
    registry
        .unlock("handoff", &UnlockKey::Client("holder".into()))
        .expect("unlock");
    let released = Instant::now();
    let status = waiter.wait().expect("wait for the waiter");
    let elapsed = released.elapsed();
    assert!(status.success(), "the waiter failed: {status}");
    registry
        .unlock("handoff", &UnlockKey::Client("waiter".into()))
        .expect("unlock the waiter's lock");
    elapsed.as_secs_f64() * 1e3
}

/// Milliseconds from the holder's release of an OS lock until a waiting
/// `flock -w 30 FILE true` process has exited with it.
fn flock_handoff(file: &Path, settle: Duration) -> f64 {
    let held = File::create(file).expect("lock file");
    held.lock().expect("flock");
    let mut waiter = Command::new("flock")
        .args(["-w", "30"])
        .arg(file)
        .arg("true")
        .spawn()
        .expect("start flock -w (util-linux)");
    std::thread::sleep(settle);
    held.unlock().expect("unlock");
    let released = Instant::now();
    let status = waiter.wait().expect("wait for flock");
    let elapsed = released.elapsed();
    assert!(status.success(), "flock failed: {status}");
    elapsed.as_secs_f64() * 1e3
}

fn env_number(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{min:.0}–{max:.0}")
}
