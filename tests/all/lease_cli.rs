//! Leases, renewal and forced unlocks through the CLI: `--ttl`, `renew`,
//! `--wait`, `--force`, and `hasp lock RES -- CMD`.
//!
//! Real `hasp` processes throughout, each body on both stores (`both!`): a
//! lock directory and etcd. Nothing waits for time to pass as a means of
//! synchronisation: a test sleeps only to get past a short TTL (a few
//! hundred ms, plus the skew margin on etcd), and a waiter is seen waiting
//! before the holder lets go (on disk asleep between two attempts, through
//! /proc; on etcd, once etcd has opened its watch). No assertion is on how
//! long anything took.

use crate::support::{
    already, both, etcd_watches_started, finished, hasp_bin, is_uuid_v4, Locks, Run,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// gocept.lockd-style refusal text of an owner whose lease ran out.
fn lease_expired(resource: &str, client: &str, fencing: u64) -> String {
    format!(
        "Lease expired: the lock on '{resource}' taken by '{client}' (fencing {fencing}) \
         ran out before it was renewed, and is no longer held by it"
    )
}

/// `hasp --dir <locks> ARGS...` started in the background, its output
/// piped; `$HASP` and `$HASP_DIR` let a command it runs call hasp on the
/// same directory.
fn spawn(locks: &Locks, args: &[&str]) -> Child {
    locks
        .command(args)
        .env("HASP", hasp_bin())
        .env("HASP_DIR", locks.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hasp")
}

/// Runs `hasp --dir <locks> ARGS...` to completion, with `$HASP` and
/// `$HASP_DIR` set for a command it runs.
fn run_with_env(locks: &Locks, args: &[&str]) -> Run {
    finished(spawn(locks, args))
}

/// The held lock on `resource` as `status --json` shows it (`null`: free).
fn status(locks: &Locks, resource: &str) -> Value {
    locks.json(&["status", resource, "--json"])
}

fn fencing(held: &Value) -> u64 {
    held["fencing"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fencing: {held}"))
}

/// Whether process `pid` sleeps in the kernel between two attempts of
/// `--wait` (a nanosleep); `None` when /proc does not say.
fn asleep(pid: u32) -> Option<bool> {
    let read = |what| std::fs::read_to_string(format!("/proc/{pid}/{what}")).ok();
    let wchan = read("wchan").unwrap_or_default();
    if wchan.contains("nanosleep") {
        return Some(true);
    }
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        // clock_nanosleep and nanosleep.
        if let Some(call) = read("syscall") {
            return Some(matches!(call.split(' ').next(), Some("230" | "35")));
        }
    }
    if wchan.is_empty() || wchan == "0" {
        None
    } else {
        Some(false)
    }
}

/// Taken before a waiter starts, for [`until_waiting`]: on etcd, how many
/// watches the shared etcd had opened; nothing on disk.
fn mark(locks: &Locks) -> Option<u64> {
    locks
        .is_etcd()
        .then(|| etcd_watches_started().expect("etcd's /metrics counts the watches opened"))
}

/// Returns once `waiter` (a `hasp lock --wait`) has been refused and waits
/// for its next attempt: on disk, it sleeps between two attempts; on etcd
/// (`mark` from [`mark`] before it started), it waits on a watch, so etcd
/// has opened a watch since the mark. Other tests share that etcd, so a
/// watch of theirs may end this wait early, which only makes the test
/// weaker, never wrong: the waiter's outcome is checked all the same.
/// Panics if it exits instead, or has not waited after 30 s (a guard
/// against hanging, not a measure of speed).
#[track_caller]
fn until_waiting(waiter: &mut Child, mark: Option<u64>) {
    let guard = Instant::now() + Duration::from_secs(30);
    loop {
        match mark {
            Some(before) => {
                if etcd_watches_started().is_some_and(|now| now > before) {
                    return;
                }
            }
            None => match asleep(waiter.id()) {
                Some(true) => return,
                // /proc shows nothing here: the waiter's outcome is still checked.
                None => return,
                Some(false) => {}
            },
        }
        if let Some(status) = waiter.try_wait().expect("poll the waiter") {
            panic!("the waiter exited ({status}) instead of waiting");
        }
        assert!(Instant::now() < guard, "the waiter never waited");
        sleep_ms(1);
    }
}

/// A `hasp lock ... -- sh -c SCRIPT` holding its lock: SCRIPT's first line
/// is `held PID` (its shell's pid), printed once hasp holds the lock and
/// runs it.
struct Held {
    hasp: Child,
    script: u32,
    stdout: BufReader<ChildStdout>,
    done: bool,
}

impl Held {
    /// Starts `hasp lock ARGS -- sh -c SCRIPT` and returns once SCRIPT has
    /// said `held $$`.
    #[track_caller]
    fn start(locks: &Locks, args: &[&str], script: &str) -> Held {
        let mut all = vec!["lock"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "sh", "-c", script]);
        let mut hasp = spawn(locks, &all);
        let mut stdout = BufReader::new(hasp.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the first line");
        let Some(pid) = line.strip_prefix("held ") else {
            let _ = hasp.kill();
            let run = finished(hasp);
            panic!("hasp {all:?} did not run SCRIPT: {line:?}, then {run:?}");
        };
        let script = pid.trim().parse().expect("a pid");
        Held {
            hasp,
            script,
            stdout,
            done: false,
        }
    }

    fn pid(&self) -> u32 {
        self.hasp.id()
    }

    /// Waits for hasp to exit; the rest of SCRIPT's output and hasp's exit.
    fn finish(mut self) -> Run {
        let mut stdout = String::new();
        self.stdout
            .read_to_string(&mut stdout)
            .expect("read stdout");
        let mut stderr = String::new();
        if let Some(mut err) = self.hasp.stderr.take() {
            err.read_to_string(&mut stderr).expect("read stderr");
        }
        let status = self.hasp.wait().expect("wait for hasp");
        self.done = true;
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.done {
            // A failed test: leave neither hasp nor SCRIPT behind.
            // SAFETY: kill(2) on a pid this test started.
            unsafe { libc::kill(self.script as i32, libc::SIGKILL) };
            let _ = self.hasp.kill();
            let _ = self.hasp.wait();
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid}");
}

both! {
    fn anonymous_lock_prints_a_token_that_unlocks_it(locks: &Locks) {
        let out = locks.ok(&["lock", "anon"]);
        let token = out.strip_suffix('\n').expect("one line");
        assert!(is_uuid_v4(token), "{out:?}");
        assert_eq!(status(locks, "anon")["client"], Value::Null);
        assert_eq!(locks.ok(&["unlock", "anon", "--token", token]), "");
        assert_eq!(status(locks, "anon"), Value::Null);

        // With a lease too; it renews with that token.
        let out = locks.ok(&["lock", "anon", "--ttl", "1h"]);
        let token = out.strip_suffix('\n').expect("one line");
        assert!(is_uuid_v4(token), "{out:?}");
        assert_eq!(
            locks.ok(&["renew", "anon", "--token", token, "--ttl", "2h"]),
            ""
        );
        assert_eq!(status(locks, "anon")["ttl_ms"], 7_200_000);
        locks.ok(&["unlock", "anon", "--token", token]);

        // With a client id, lock stays silent; -v prints as before.
        assert_eq!(locks.ok(&["lock", "named", "--client", "me"]), "");
        let out = locks.ok(&["lock", "verbose", "-v"]);
        assert!(
            out.starts_with("token: ") && out.ends_with("\nfencing: 1\n"),
            "{out:?}"
        );
    }
}

both! {
    fn a_lease_expires_and_a_take_over_raises_the_fencing(locks: &Locks) {
        let grant = locks.json(&["lock", "job", "--client", "a", "--ttl", "300ms", "--json"]);
        assert_eq!(grant["ttl_ms"], 300);
        let since = grant["since_ms"].as_u64().expect("since_ms");
        assert_eq!(grant["expires_ms"].as_u64(), Some(since + 300), "{grant}");
        let held = status(locks, "job");
        assert_eq!((held["client"].as_str(), fencing(&held)), (Some("a"), 1));
        locks
            .run(&["lock", "job", "--client", "b"])
            .assert_refused(1, &already("a"));

        locks.sleep_past(since + 300);
        assert_eq!(status(locks, "job"), Value::Null);
        assert!(!locks.ok(&["status"]).contains("job"));
        let grant = locks.json(&["lock", "job", "--client", "b", "--json"]);
        assert_eq!(fencing(&grant), 2);
        // No lease: it stays (and shows no expiry).
        assert_eq!(grant.get("expires_ms"), None, "{grant}");
        assert_eq!(status(locks, "job")["client"], "b");
    }
}

both! {
    fn renew_keeps_the_fencing_and_extends_the_lease(locks: &Locks) {
        let grant = locks.json(&["lock", "job", "--client", "a", "--ttl", "1s", "--json"]);
        sleep_ms(200);
        let run = locks.run(&["renew", "job", "--client", "a", "--ttl", "3s"]);
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (0, "", "")
        );
        // Past the first lease.
        locks.sleep_past(grant["expires_ms"].as_u64().expect("expires_ms"));
        let held = status(locks, "job");
        assert_eq!(held["client"], "a");
        assert_eq!(fencing(&held), fencing(&grant));
        assert_eq!(held["ttl_ms"], 3000);
        assert!(held["expires_ms"].as_u64() > grant["expires_ms"].as_u64());
        locks
            .run(&["lock", "job", "--client", "b"])
            .assert_refused(1, &already("a"));

        // By token, and without --ttl: by the lease's own length.
        let token = grant["token"].as_str().expect("token");
        locks.ok(&["renew", "job", "--token", token]);
        assert_eq!(status(locks, "job")["ttl_ms"], 3000);
        // Only the owner renews.
        locks
            .run(&["renew", "job", "--client", "b"])
            .assert_refused(1, "Resource locked by 'a' cannot be unlocked by 'b'");
        locks
            .run(&["renew", "free", "--client", "a"])
            .assert_refused(1, "Resource not locked");

        // A lock without a lease gets one when renewed with a TTL; without one
        // there is nothing to go by.
        locks.ok(&["lock", "forever", "--client", "a"]);
        locks
            .run(&["renew", "forever", "--client", "a"])
            .assert_refused(
                2,
                "the lock on 'forever' has no lease: give the renewal a TTL",
            );
        locks.ok(&["renew", "forever", "--client", "a", "--ttl", "1h"]);
        assert_eq!(status(locks, "forever")["ttl_ms"], 3_600_000);
        locks.ok(&["unlock", "job", "--client", "a"]);
    }
}

both! {
    fn renew_and_unlock_after_expiry_say_the_lease_expired(locks: &Locks) {
        // Nobody took it since.
        locks.ok(&["lock", "job", "--client", "a", "--ttl", "200ms"]);
        let out = locks.ok(&["lock", "anon", "--ttl", "200ms"]);
        let token = out.trim_end();
        sleep_ms(500 + locks.lease_margin_ms());
        let expired = lease_expired("job", "a", 1);
        locks
            .run(&["renew", "job", "--client", "a"])
            .assert_refused(1, &expired);
        locks
            .run(&["renew", "job", "--client", "a", "--ttl", "10s"])
            .assert_refused(1, &expired);
        locks
            .run(&["unlock", "job", "--client", "a"])
            .assert_refused(1, &expired);
        let anon_expired = lease_expired("anon", "?", 1);
        locks
            .run(&["renew", "anon", "--token", token])
            .assert_refused(1, &anon_expired);
        locks
            .run(&["unlock", "anon", "--token", token])
            .assert_refused(1, &anon_expired);

        // Somebody else took it since: still the owner's own error.
        assert_eq!(
            fencing(&locks.json(&["lock", "job", "--client", "b", "--json"])),
            2
        );
        assert_eq!(fencing(&locks.json(&["lock", "anon", "--json"])), 2);
        locks
            .run(&["renew", "job", "--client", "a"])
            .assert_refused(1, &expired);
        locks
            .run(&["unlock", "job", "--client", "a"])
            .assert_refused(1, &expired);
        locks
            .run(&["renew", "anon", "--token", token])
            .assert_refused(1, &anon_expired);
        locks
            .run(&["unlock", "anon", "--token", token])
            .assert_refused(1, &anon_expired);
        // And the new holder is untouched.
        let held = status(locks, "job");
        assert_eq!((held["client"].as_str(), fencing(&held)), (Some("b"), 2));
    }
}

both! {
    fn force_breaks_any_lock_and_the_fencing_goes_on(locks: &Locks) {
        locks.ok(&["lock", "deploy", "--client", "a"]);
        assert_eq!(
            locks.ok(&["unlock", "deploy", "--force"]),
            "broke the lock on 'deploy' held by 'a' (fencing 1)\n"
        );
        assert_eq!(status(locks, "deploy"), Value::Null);
        let run = locks.run(&["unlock", "deploy", "--client", "a"]);
        assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{run:?}");

        let grant = locks.json(&["lock", "/deploy", "--ttl", "1h", "--json"]);
        assert_eq!(fencing(&grant), 2);
        assert_eq!(
            locks.ok(&["unlock", "/deploy/", "--force"]),
            "broke the lock on 'deploy' held by '?' (fencing 2)\n"
        );
        assert_eq!(
            fencing(&locks.json(&["lock", "deploy", "--client", "b", "--json"])),
            3
        );
        locks.ok(&["unlock", "deploy", "--force"]);
        locks
            .run(&["unlock", "deploy", "--force"])
            .assert_refused(1, "Resource not locked");

        // --force takes no key.
        for key in [&["--client", "a"][..], &["--token", "t"]] {
            let mut args = vec!["unlock", "deploy", "--force"];
            args.extend_from_slice(key);
            let run = locks.run(&args);
            assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
        }
    }
}

both! {
    fn wait_is_woken_by_a_release(locks: &Locks) {
        locks.ok(&["lock", "job", "--client", "a"]);
        let before = mark(locks);
        let mut waiter = spawn(
            locks,
            &["lock", "job", "--client", "b", "--wait", "30", "--json"],
        );
        until_waiting(&mut waiter, before);
        locks.ok(&["unlock", "job", "--client", "a"]);
        let run = finished(waiter);
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
        let grant: Value = serde_json::from_str(&run.stdout).expect("the grant");
        assert_eq!((grant["client"].as_str(), fencing(&grant)), (Some("b"), 2));

        // `--wait` alone waits for ever; here in the command form.
        let before = mark(locks);
        let mut waiter = spawn(
            locks,
            &[
                "lock",
                "job",
                "--client",
                "c",
                "--wait",
                "--",
                "sh",
                "-c",
                "echo $HASP_LOCK_FENCING",
            ],
        );
        until_waiting(&mut waiter, before);
        locks.ok(&["unlock", "job", "--client", "b"]);
        let run = finished(waiter);
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (0, "3\n", ""),
            "{run:?}"
        );
        assert_eq!(status(locks, "job"), Value::Null);
    }
}

both! {
    fn wait_is_woken_by_an_expiry(locks: &Locks) {
        let first = locks.json(&["lock", "job", "--client", "a", "--ttl", "1s", "--json"]);
        let before = mark(locks);
        let mut waiter = spawn(
            locks,
            &["lock", "job", "--client", "b", "--wait", "--json"],
        );
        until_waiting(&mut waiter, before);
        let run = finished(waiter);
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
        let grant: Value = serde_json::from_str(&run.stdout).expect("the grant");
        assert_eq!((grant["client"].as_str(), fencing(&grant)), (Some("b"), 2));
        // On etcd a lease ends its skew margin after `expires_ms`.
        let end = first["expires_ms"].as_u64().expect("expires_ms") + locks.lease_margin_ms();
        assert!(
            grant["since_ms"].as_u64() >= Some(end),
            "granted before the lease ran out: {first} then {grant}"
        );
    }
}

both! {
    fn wait_times_out_naming_the_holder(locks: &Locks) {
        locks.ok(&["lock", "job/sub", "--client", "holder"]);
        for wait in [
            &[][..],
            &["--wait", "0"],
            &["--wait", "0.3"],
            &["--wait", "300ms"],
        ] {
            let mut args = vec!["lock", "job", "--client", "b"];
            args.extend_from_slice(wait);
            locks.run(&args).assert_refused(1, &already("holder"));
            // The command form runs nothing.
            args.extend_from_slice(&["--", "sh", "-c", "echo ran"]);
            locks.run(&args).assert_refused(1, &already("holder"));
        }
        assert_eq!(status(locks, "job"), Value::Null);
        assert_eq!(status(locks, "job/sub")["client"], "holder");
    }
}

both! {
    fn command_form_runs_with_the_lock_and_passes_the_exit_code(locks: &Locks) {
        let script = r#"echo "$HASP_LOCK_RESOURCE $HASP_LOCK_FENCING $HASP_LOCK_TOKEN"
            "$HASP" status deploy/prod --json
            "$HASP" renew deploy/prod --token "$HASP_LOCK_TOKEN" || echo renew failed
            "$HASP" lock deploy --client other 2>&1
            exit 7"#;
        let run = run_with_env(
            locks,
            &[
                "lock",
                "/deploy/prod",
                "--client",
                "ci",
                "--",
                "sh",
                "-c",
                script,
            ],
        );
        assert_eq!((run.code, run.stderr.as_str()), (7, ""), "{run:?}");
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{run:?}");
        let env: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(env[..2], ["deploy/prod", "1"], "{run:?}");
        assert!(is_uuid_v4(env[2]), "{run:?}");
        let held: Value = serde_json::from_str(lines[1]).expect("status JSON");
        assert_eq!((held["client"].as_str(), fencing(&held)), (Some("ci"), 1));
        assert_eq!(
            held["ttl_ms"], 30_000,
            "the default TTL of the command form"
        );
        assert_eq!(lines[2], already("ci"));
        // Released at exit.
        assert_eq!(status(locks, "deploy/prod"), Value::Null);

        let code = |args: &[&str]| {
            let run = run_with_env(locks, args);
            assert_eq!(status(locks, "x"), Value::Null, "{args:?} left it held");
            (run.code, run.stdout)
        };
        assert_eq!(code(&["lock", "x", "--", "true"]), (0, String::new()));
        assert_eq!(
            code(&["lock", "x", "--ttl", "5m", "--", "sh", "-c", "kill -9 $$"]),
            (137, String::new())
        );
        assert_eq!(
            code(&["lock", "x", "--", "hasp-no-such-command"]),
            (127, String::new())
        );
        let not_executable = locks.path().join("script");
        std::fs::write(&not_executable, "echo ran\n").expect("write");
        let path = not_executable.to_str().expect("utf-8");
        assert_eq!(code(&["lock", "x", "--", path]), (126, String::new()));
        // The anonymous form prints no token: the command has it.
        assert_eq!(
            code(&["lock", "x", "--", "sh", "-c", "echo ${#HASP_LOCK_TOKEN}"]),
            (0, "36\n".to_string())
        );
    }
}

both! {
    fn command_form_renews_over_several_ttls(locks: &Locks) {
        // Four leases' time: held only if renewed. On etcd each renewal is
        // a commit that waits for etcd's disk, which a loaded machine may
        // stall for a moment: a longer lease, so that one slow commit is
        // not a lost lock.
        let (ttl, ttl_ms, command) = if locks.is_etcd() {
            ("2s", 2000, "sleep 8")
        } else {
            ("400ms", 400, "sleep 1.6")
        };
        let script = format!(
            r#"{command}
            "$HASP" lock job --client other; echo "other: $?"
            "$HASP" status job --json"#
        );
        let run = run_with_env(
            locks,
            &[
                "lock", "job", "--client", "a", "--ttl", ttl, "--", "sh", "-c", &script,
            ],
        );
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (0, format!("{}\n", already("a")).as_str()),
            "{run:?}"
        );
        let lines: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(lines[0], "other: 1", "{run:?}");
        let held: Value = serde_json::from_str(lines[1]).expect("status JSON");
        assert_eq!((held["client"].as_str(), fencing(&held)), (Some("a"), 1));
        assert_eq!(held["ttl_ms"], ttl_ms);
        assert_eq!(status(locks, "job"), Value::Null);
    }
}

both! {
    fn command_form_forwards_sigterm_and_releases(locks: &Locks) {
        // The command handles it: its own code.
        let held = Held::start(
            locks,
            &["job", "--client", "a"],
            r#"trap 'echo got TERM; exit 42' TERM; echo held $$; while :; do sleep 0.05; done"#,
        );
        signal(held.pid(), libc::SIGTERM);
        let run = held.finish();
        assert_eq!(
            (run.code, run.stdout.as_str(), run.stderr.as_str()),
            (42, "got TERM\n", ""),
            "{run:?}"
        );
        assert_eq!(status(locks, "job"), Value::Null);

        // The command dies of it: 128 + 15.
        let held = Held::start(
            locks,
            &["job", "--client", "a"],
            "echo held $$; exec sleep 30",
        );
        signal(held.pid(), libc::SIGTERM);
        let run = held.finish();
        assert_eq!((run.code, run.stderr.as_str()), (143, ""), "{run:?}");
        assert_eq!(status(locks, "job"), Value::Null);
    }
}

both! {
    fn a_lost_lock_stops_the_command_and_exits_3(locks: &Locks) {
        let held = Held::start(
            locks,
            &["job", "--client", "a", "--ttl", "600ms"],
            r#"trap 'echo got TERM; exit 0' TERM; echo held $$; while :; do sleep 0.05; done"#,
        );
        assert_eq!(
            locks.ok(&["unlock", "job", "--force"]),
            "broke the lock on 'job' held by 'a' (fencing 1)\n"
        );
        // Somebody takes it at once; hasp must leave that lock alone.
        locks.ok(&["lock", "job", "--client", "b"]);
        let run = held.finish();
        assert_eq!(
            (run.code, run.stdout.as_str()),
            (3, "got TERM\n"),
            "{run:?}"
        );
        assert!(
            run.stderr
                .starts_with("hasp: lost the lock on 'job' (fencing 1): ")
                && run.stderr.ends_with("; stopping the command (SIGTERM)\n")
                && run.stderr.lines().count() == 1,
            "{run:?}"
        );
        let holder = status(locks, "job");
        assert_eq!(
            (holder["client"].as_str(), fencing(&holder)),
            (Some("b"), 2)
        );
        locks.ok(&["unlock", "job", "--client", "b"]);

        // A command that ignores SIGTERM gets SIGKILL --kill-after later.
        let held = Held::start(
            locks,
            &["job", "--ttl", "600ms", "--kill-after", "200ms"],
            r#"trap '' TERM; echo held $$; while :; do sleep 0.05; done"#,
        );
        let script = held.script;
        locks.ok(&["unlock", "job", "--force"]);
        let run = held.finish();
        assert_eq!((run.code, run.stdout.as_str()), (3, ""), "{run:?}");
        assert!(
            run.stderr
                .starts_with("hasp: lost the lock on 'job' (fencing 3): "),
            "{run:?}"
        );
        // SAFETY: signal 0 only checks for the process.
        assert_ne!(
            unsafe { libc::kill(script as i32, 0) },
            0,
            "SCRIPT still runs"
        );
        assert_eq!(status(locks, "job"), Value::Null);
    }
}

both! {
    fn after_kill_9_of_hasp_the_lock_frees_with_its_lease(locks: &Locks) {
        let mut held = Held::start(
            locks,
            &["job", "--client", "a", "--ttl", "500ms"],
            "echo held $$; exec sleep 30",
        );
        held.hasp.kill().expect("kill -9 hasp");
        held.hasp.wait().expect("reap hasp");
        // The command is told to stop (SIGTERM, as its parent died): it would
        // otherwise go on without the lock once the lease ran out.
        let guard = Instant::now() + Duration::from_secs(10);
        while alive(held.script) {
            assert!(Instant::now() < guard, "the command outlived hasp");
            sleep_ms(5);
        }
        // The lock is free once the lease runs out.
        let run = run_with_env(
            locks,
            &["lock", "job", "--client", "b", "--wait", "5", "--json"],
        );
        assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
        let grant: Value = serde_json::from_str(&run.stdout).expect("the grant");
        assert_eq!((grant["client"].as_str(), fencing(&grant)), (Some("b"), 2));
        drop(held);
    }
}

/// Whether process `pid` still runs (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

both! {
    fn an_anonymous_token_that_cannot_be_printed_releases_the_lock(locks: &Locks) {
        // A full disk behind standard output: the lock goes back.
        let mut cmd = locks.command(&["lock", "job"]);
        cmd.stdout(std::fs::File::create("/dev/full").expect("open /dev/full"));
        let run = Run::from(cmd.output().expect("run hasp"));
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.starts_with("cannot print the unlock token (")
                && run.stderr.ends_with("); released the lock again\n"),
            "{run:?}"
        );
        assert_eq!(status(locks, "job"), Value::Null);
        // A closed standard output: nothing is locked at all.
        let script = format!(
            "exec {} {} lock job >&-",
            hasp_bin(),
            locks.global_args().join(" ")
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("run sh");
        let run = Run::from(out);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr
                .starts_with("standard output is closed or /dev/null"),
            "{run:?}"
        );
        assert_eq!(status(locks, "job"), Value::Null);
        // With a lease, the lock ends by itself: that is allowed.
        let mut cmd = locks.command(&["lock", "job", "--ttl", "1m"]);
        cmd.stdout(Stdio::null());
        assert_eq!(Run::from(cmd.output().expect("run hasp")).code, 0);
        assert_eq!(locks.ok(&["unlock", "job", "--force"]).lines().count(), 1);
        assert_eq!(locks.json(&["lock", "job", "--json"])["fencing"], 3);
    }
}

both! {
    fn the_command_form_refuses_a_lease_too_short_to_keep(locks: &Locks) {
        locks
            .run(&["lock", "job", "--ttl", "10ms", "--", "true"])
            .assert_refused(
                2,
                "--ttl 10 ms is too short a lease to keep alive while a command runs (renewals \
                 every third of it); give at least 100 ms",
            );
        assert_eq!(status(locks, "job"), Value::Null);
    }
}

both! {
    fn bad_durations_exit_2_with_one_line(locks: &Locks) {
        for bad in [
            "1e30",
            "-1",
            "abc",
            "",
            "99999999999999999999",
            "5x",
            "1.2.3",
            "1 s",
            "ms",
        ] {
            for args in [
                &["lock", "job", "--ttl", bad][..],
                &["lock", "job", "--client", "c", "--ttl", bad, "--", "true"],
                &["lock", "job", "--kill-after", bad, "--", "true"],
                &["renew", "job", "--client", "c", "--ttl", bad],
            ] {
                let run = locks.run(args);
                let option = args
                    .iter()
                    .find(|a| a.starts_with("--") && **a != "--client");
                let first = format!(
                    "error: invalid value '{bad}' for '{} <DURATION>': '{bad}' is ",
                    option.expect("the option")
                );
                assert!(
                    run.code == 2
                        && run.stdout.is_empty()
                        && run.stderr.starts_with(&first)
                        && run.stderr.lines().count() == 1,
                    "hasp {args:?}: {run:?}"
                );
            }
            if bad != "-1" && !bad.is_empty() {
                // --wait takes its value only when it does not look like an option.
                let run = locks.run(&["lock", "job", "--wait", bad]);
                assert!(
                    run.code == 2
                        && run.stderr.starts_with(&format!(
                            "error: invalid value '{bad}' for '--wait [<DURATION>]': "
                        ))
                        && run.stderr.lines().count() == 1,
                    "--wait {bad}: {run:?}"
                );
            }
        }
        let run = locks.run(&["lock", "job", "--wait", "-1"]);
        assert!(
            run.code == 2 && run.stderr.lines().count() == 1,
            "--wait -1: {run:?}"
        );
        // Durations that parse but no lease may have: the guest's one line.
        for ttl in ["0", "0ms", "31d"] {
            let run = locks.run(&["lock", "job", "--ttl", ttl, "--", "echo", "ran"]);
            assert!(
                run.code == 2
                    && run.stdout.is_empty()
                    && run.stderr.contains("a lease lasts from 1 ms to 30 days")
                    && run.stderr.lines().count() == 1,
                "--ttl {ttl}: {run:?}"
            );
        }
        assert_eq!(status(locks, "job"), Value::Null);
    }
}

#[test]
fn help_documents_leases_waiting_and_the_command_form() {
    let locks = Locks::new();
    let top = locks.ok(&["--help"]);
    for word in ["renew", "exits 3"] {
        assert!(top.contains(word), "hasp --help lacks {word:?}:\n{top}");
    }
    let lock = locks.ok(&["lock", "--help"]);
    for word in [
        "--ttl",
        "--wait",
        "--kill-after",
        "HASP_LOCK_TOKEN",
        "exits 3",
    ] {
        assert!(
            lock.contains(word),
            "hasp lock --help lacks {word:?}:\n{lock}"
        );
    }
    assert!(locks.ok(&["unlock", "--help"]).contains("--force"));
}
