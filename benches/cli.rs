//! `hasp lock` and `hasp unlock` as separate processes (the precompiled
//! component cached), beside `flock(1)` in the same run.
//! Run: `cargo bench --bench cli` (`HASP_BENCH_DIR` picks the filesystem).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 300;

fn main() {
    let hasp = env!("CARGO_BIN_EXE_hasp");
    let dir = match std::env::var_os("HASP_BENCH_DIR") {
        Some(base) => tempfile::tempdir_in(base),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let locks = dir.path().join("locks");
    std::fs::create_dir(&locks).expect("mkdir");
    let flock_file = dir.path().join("flock.lock");
    let base = |args: &[&str]| {
        let mut cmd = Command::new(hasp);
        cmd.arg("--dir").arg(&locks).args(args);
        cmd
    };
    // Warm up: the first run compiles and caches the component.
    run(&mut base(&["status"]));

    let (mut lock, mut unlock, mut flock) = (Vec::new(), Vec::new(), Vec::new());
    let have_flock = Command::new("flock").arg("--version").output().is_ok();
    for _ in 0..RUNS {
        lock.push(run(&mut base(&["lock", "bench", "--client", "b"])));
        unlock.push(run(&mut base(&["unlock", "bench", "--client", "b"])));
        if have_flock {
            flock.push(run(Command::new("flock").arg(&flock_file).arg("true")));
        }
    }
    println!("one process per call, {RUNS} runs each (median / p90)");
    report("hasp lock", &mut lock);
    report("hasp unlock", &mut unlock);
    if have_flock {
        report("flock FILE true", &mut flock);
    } else {
        println!("  flock(1) not installed: no comparison");
    }
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let took = start.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    took
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!("  {what:<18} {:>7.2} ms / {:>7.2} ms", at(0.5), at(0.9));
}
