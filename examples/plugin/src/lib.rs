//! An example plugin that coordinates through hasp: a log rotator. Any number
//! of instances may run at once (in one plugin host or in many processes);
//! only one may rotate a given log at a time, and the others learn who does.
//!
//! It imports `hasp:lock/registry` (world `hasp:lock/plugin`) and is a
//! command (`wasi:cli/run`). Run it with the hasp host, which supplies the
//! registry:
//!
//! ```text
//! hasp plugin run example_plugin.wasm -- app.log --client worker-1
//! ```
//!
//! or compose it with the hasp guest (`hasp plugin compose`) and run the
//! result under the stock `wasmtime run --dir ./locks::/locks`.
//!
//! Arguments: `LOG --client ID [--work-ms MS] [--keep | --times N]`. It locks
//! `logs/LOG` as ID, "rotates" (prints what it would do, then takes MS
//! milliseconds, default 0, as a real rotation would), and unlocks — unless `--keep`,
//! which leaves the lock held, as a rotator that crashed midway would. For
//! benchmarks, `--times N` rotates N times in a row (lock + unlock each) and
//! prints only `N rotations in X ms (Y µs each)`. Exit codes: 0 rotated,
//! 1 someone else is rotating (the message names them), 2 anything else.

wit_bindgen::generate!({
    world: "plugin",
    path: "../../wit",
});

use hasp::lock::registry::Registry;
use hasp::lock::types::{ErrorCode, LockOptions, UnlockKey};
use wasip2::clocks::monotonic_clock;

/// Where the plugin host preopens the lock directory.
const LOCKS: &str = "/locks";

struct Rotator;

wasip2::cli::command::export!(Rotator);

impl wasip2::exports::cli::run::Guest for Rotator {
    fn run() -> Result<(), ()> {
        let args: Vec<String> = wasip2::cli::environment::get_arguments()
            .into_iter()
            .skip(1)
            .collect();
        let (text, code) = rotate(&args);
        let out = if code == 0 {
            wasip2::cli::stdout::get_stdout()
        } else {
            // Errors go to stderr, like any command's.
            let err = wasip2::cli::stderr::get_stderr();
            let _ = err.blocking_write_and_flush(text.as_bytes());
            wasip2::cli::exit::exit_with_code(code);
            return Err(());
        };
        let _ = out.blocking_write_and_flush(text.as_bytes());
        Ok(())
    }
}

/// The parsed arguments.
struct Args {
    log: String,
    client: String,
    keep: bool,
    /// `--times N`: rotate N times and print only a timing summary.
    times: Option<u32>,
    /// `--work-ms MS`: how long one rotation takes while the lock is held.
    work_ms: u64,
}

/// Does the work; the text to print and the exit code.
fn rotate(args: &[String]) -> (String, u8) {
    let Some(args) = parse(args) else {
        return (
            "usage: LOG --client ID [--work-ms MS] [--keep | --times N]\n".into(),
            2,
        );
    };
    let registry = match Registry::open(LOCKS) {
        Ok(registry) => registry,
        Err(err) => return (format!("{}\n", err.message), 2),
    };
    let Some(times) = args.times else {
        return rotate_once(&registry, &args);
    };
    let start = monotonic_clock::now();
    for _ in 0..times {
        let (text, code) = rotate_once(&registry, &args);
        if code != 0 {
            return (text, code);
        }
    }
    let ns = monotonic_clock::now() - start;
    // In integers: formatting floats would add a fifth to the plugin's size.
    let each = ns / u64::from(times);
    let summary = format!(
        "{times} rotations in {}.{:02} ms ({}.{} µs each)\n",
        ns / 1_000_000,
        ns / 10_000 % 100,
        each / 1_000,
        each / 100 % 10
    );
    (summary, 0)
}

/// One rotation: lock, "rotate", unlock (unless `--keep`).
fn rotate_once(registry: &Registry, args: &Args) -> (String, u8) {
    let Args { log, client, .. } = args;
    let resource = format!("logs/{log}");
    let options = LockOptions {
        client: Some(client.clone()),
        lock_parents: true,
        lock_children: true,
        ttl_ms: None,
        request_id: None,
    };
    let grant = match registry.lock(&resource, &options) {
        Ok(grant) => grant,
        Err(err) => {
            return match err.code {
                ErrorCode::AlreadyLocked(holder) => (
                    format!("{log} is being rotated by '{holder}'; skipped\n"),
                    1,
                ),
                _ => (format!("{}\n", err.message), 2),
            }
        }
    };
    let mut text = format!(
        "{client} rotates {log} (fencing token {})\n",
        grant.holder.fencing
    );
    if args.work_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(args.work_ms));
    }
    if args.keep {
        return (text, 0);
    }
    match registry.unlock(&resource, &UnlockKey::Token(grant.token)) {
        Ok(_) => {
            text.push_str(&format!("{client} rotated {log}\n"));
            (text, 0)
        }
        Err(err) => (format!("{text}{}\n", err.message), 2),
    }
}

fn parse(args: &[String]) -> Option<Args> {
    let (mut log, mut client, mut keep, mut times, mut work_ms) = (None, None, false, None, 0);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--client" => client = Some(args.next()?.clone()),
            "--keep" => keep = true,
            "--work-ms" => work_ms = args.next()?.parse().ok()?,
            "--times" => times = Some(args.next()?.parse().ok().filter(|&n| n > 0)?),
            other if !other.starts_with('-') && log.is_none() => log = Some(other.to_string()),
            _ => return None,
        }
    }
    if keep && times.is_some() {
        return None; // a kept lock cannot be taken again
    }
    Some(Args {
        log: log?,
        client: client?,
        keep,
        times,
        work_ms,
    })
}
