//! Rust API throughput: lock+unlock cycles on distinct resources through one
//! reused guest instance, and where the time goes (instantiation, guest code,
//! host calls = filesystem/clock/random). Run: `cargo bench --bench api`;
//! `HASP_BENCH_DIR=/dev/shm cargo bench --bench api` measures on tmpfs.

use hasp::{LockOptions, Registry, Runtime, UnlockKey};
use std::time::{Duration, Instant};

const CYCLES: usize = 20_000;
const FRESH: usize = 300;

fn main() {
    let dir = match std::env::var_os("HASP_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let runtime = Runtime::shared().expect("runtime");
    let options = LockOptions::client("bench");
    let key = UnlockKey::Client("bench".into());

    // Instantiation: a new store + instance + `registry.open` per registry.
    let mut opens = Vec::with_capacity(FRESH);
    for _ in 0..FRESH {
        let start = Instant::now();
        let registry = Registry::open_with(&runtime, dir.path()).expect("open");
        opens.push(start.elapsed());
        drop(registry);
    }

    // Reused instance: the normal case.
    let mut registry = Registry::open_with(&runtime, dir.path()).expect("open");
    registry.time_host_calls();
    let start = Instant::now();
    for i in 0..CYCLES {
        let name = format!("job-{i}");
        registry.lock(&name, &options).expect("lock");
        registry.unlock(&name, &key).expect("unlock");
    }
    let total = start.elapsed();
    let host = registry.host_time();

    // A fresh instance per cycle, for contrast.
    let start = Instant::now();
    for i in 0..FRESH {
        let name = format!("fresh-{i}");
        let mut registry = Registry::open_with(&runtime, dir.path()).expect("open");
        registry.lock(&name, &options).expect("lock");
        registry.unlock(&name, &key).expect("unlock");
    }
    let fresh = start.elapsed();

    opens.sort();
    let open_median = opens[opens.len() / 2];
    let per_cycle = total / CYCLES as u32;
    let guest = total.saturating_sub(host);
    println!(
        "hasp Rust API, lock+unlock of distinct resources ({CYCLES} cycles, one reused instance)"
    );
    println!(
        "  cycles/s                 {:>10.0}",
        CYCLES as f64 / total.as_secs_f64()
    );
    println!("  time per cycle           {:>10.1} us", micros(per_cycle));
    println!("    in guest code          {:>9.1} %", share(guest, total));
    println!("    in host calls (fs etc) {:>9.1} %", share(host, total));
    println!(
        "  instantiation (median)   {:>10.1} us  (store + instance + registry.open)",
        micros(open_median)
    );
    println!(
        "  fresh instance per cycle {:>10.0} cycles/s  ({FRESH} cycles)",
        FRESH as f64 / fresh.as_secs_f64()
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn share(part: Duration, total: Duration) -> f64 {
    100.0 * part.as_secs_f64() / total.as_secs_f64()
}
