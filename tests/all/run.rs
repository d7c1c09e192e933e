//! `hasp run` and `hasp who`: OS locks on lock files, held while a command
//! runs, released when it ends or when hasp dies, with the holder recorded in
//! the file (zc.lockfile, locket, flock(1)).
//!
//! Holders are real `hasp run` processes whose command says `held` and then
//! waits for a line on its stdin (see [`Holder`]); waiters are seen blocked in
//! the kernel through /proc/locks before the holder lets go. Nothing here
//! waits for time to pass.

use crate::support::{
    child_blocked, finished, hasp_in, host_name, now_ms, Holder, Locks, Run, Watchdog, HOLD,
};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

/// The refusal a `--timeout 0` locker gets while `holder` holds `path`.
fn held_by(path: &str, holder: &Holder, script: &str) -> String {
    format!(
        "Lock file {path} is held by pid {} on {}, running '{}'",
        holder.pid(),
        host_name(),
        Holder::command_line(script)
    )
}

/// `hasp --dir <locks> ARGS...` started in the background with its output
/// piped.
fn spawn(locks: &Locks, args: &[&str]) -> std::process::Child {
    locks
        .command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hasp")
}

#[track_caller]
fn succeeded(run: &Run, stdout: &str) {
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, stdout, ""),
        "{run:?}"
    );
}

/// The one-line record of `path`: (pid, host, since-ms, command).
fn record(locks: &Locks, path: &str) -> (u32, String, u64, String) {
    let text = fs::read_to_string(locks.path().join(path)).expect("read the lock file");
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "one line: {text:?}"
    );
    let mut parts = text.trim_end_matches('\n').splitn(4, ' ');
    let mut next = || parts.next().expect("four fields").to_string();
    let pid = next().parse().expect("a pid");
    let host = next();
    let since = next().parse().expect("milliseconds");
    (pid, host, since, next())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for milliseconds since the epoch, counted the slow
/// and obvious way.
fn iso(ms: u64) -> String {
    let secs = ms / 1000;
    let mut days = secs / 86_400;
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut year = 1970;
    while days >= if leap(year) { 366 } else { 365 } {
        days -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 0;
    while days >= lengths[month] {
        days -= lengths[month];
        month += 1;
    }
    let rem = secs % 86_400;
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        month + 1,
        days + 1,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn run_passes_exit_code_output_and_input_through() {
    let locks = Locks::new();
    succeeded(&locks.run(&["run", "x.lock", "--", "echo", "hi"]), "hi\n");

    let run = locks.run(&[
        "run",
        "x.lock",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (7, "out\n", "err\n")
    );

    // Killed by signal 9: reported as 128 + 9, the way a shell does.
    let run = locks.run(&["run", "x.lock", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!((run.code, run.stdout.as_str()), (137, ""), "{run:?}");

    // The command's stdin is hasp's stdin.
    let mut child = locks
        .command(&["run", "x.lock", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hasp");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"through\n")
        .expect("write");
    succeeded(&finished(child), "through\n");

    // Arguments reach the command as they are, spaces and quotes included.
    succeeded(
        &locks.run(&[
            "run",
            "x.lock",
            "--",
            "printf",
            "[%s]",
            "a b",
            "'q'",
            "--timeout",
        ]),
        "[a b]['q'][--timeout]",
    );
}

#[test]
fn while_held_timeout_zero_is_refused_at_once_naming_the_holder() {
    let locks = Locks::new();
    let marker = locks.path().join("ran");
    let marker_cmd = format!("echo ran > {}", marker.display());
    let holder = Holder::start(&locks, &[], "x.lock", HOLD);

    for timeout in ["0", "0.2"] {
        locks
            .run(&[
                "run",
                "--timeout",
                timeout,
                "x.lock",
                "--",
                "sh",
                "-c",
                &marker_cmd,
            ])
            .assert_refused(1, &held_by("x.lock", &holder, HOLD));
        assert!(!marker.exists(), "--timeout {timeout} ran the command");
    }

    // The refusals did not disturb the holder, and it exits 0 when done.
    let run = holder.release();
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "released\n"),
        "{run:?}"
    );
    succeeded(
        &locks.run(&["run", "--timeout", "0", "x.lock", "--", "echo", "free"]),
        "free\n",
    );
}

#[test]
fn waiters_run_only_after_the_holder_releases() {
    let locks = Locks::new();
    let log = locks.path().join("log");
    let holder_script = format!(
        "echo held; read -r _; echo holder-done >> {}",
        log.display()
    );
    let holder = Holder::start(&locks, &[], "x.lock", &holder_script);

    // One waiter with a time limit, one without.
    let waiter = |options: &[&str], name: &str| {
        let mut args = vec!["run"];
        args.extend_from_slice(options);
        let script = format!("echo {name} >> {}", log.display());
        args.extend_from_slice(&["x.lock", "--", "sh", "-c", &script]);
        spawn(&locks, &args)
    };
    let mut timed = waiter(&["--timeout", "30"], "timed");
    let mut patient = waiter(&[], "patient");
    let file = locks.path().join("x.lock");
    child_blocked(&file, &mut timed);
    child_blocked(&file, &mut patient);
    // Both are blocked in the kernel on the lock: neither command has run.
    assert!(!log.exists(), "a waiter ran while the lock was held");

    let run = holder.release();
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    succeeded(&finished(timed), "");
    succeeded(&finished(patient), "");
    let lines = fs::read_to_string(&log).expect("log");
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0], "holder-done", "{lines:?}");
    let mut waiters = lines[1..].to_vec();
    waiters.sort();
    assert_eq!(waiters, ["patient", "timed"]);
}

#[test]
fn a_killed_holder_hands_the_lock_to_a_waiter() {
    let locks = Locks::new();
    let mut holder = Holder::start(&locks, &[], "x.lock", HOLD);
    let holder_pid = holder.pid();
    let mut waiter = spawn(
        &locks,
        &[
            "run",
            "--timeout",
            "30",
            "x.lock",
            "--",
            "echo",
            "waiter-ran",
        ],
    );
    let file = locks.path().join("x.lock");
    child_blocked(&file, &mut waiter);

    // SIGKILL: hasp gets no chance to release anything; the OS does it.
    // Its command (`sh`) lives on as an orphan, still reading our pipe.
    holder.child().kill().expect("kill -9 the holder");
    holder.child().wait().expect("reap the holder");
    let waiter_pid = waiter.id();
    succeeded(&finished(waiter), "waiter-ran\n");
    assert_eq!(record(&locks, "x.lock").0, waiter_pid);

    // The orphaned command was still alive all along: it answers now.
    let run = holder.release();
    assert_eq!(run.stdout, "released\n", "{run:?}");
    assert_ne!(holder_pid, waiter_pid);
}

#[test]
fn the_lock_dies_with_hasp_even_if_its_command_lives_on() {
    let locks = Locks::new();
    let mut holder = Holder::start(&locks, &[], "x.lock", HOLD);
    holder.child().kill().expect("kill -9 the holder");
    holder.child().wait().expect("reap the holder");
    // The orphaned `sh` has not read its line yet, so it still runs: it must
    // not have inherited the lock.
    succeeded(
        &locks.run(&["run", "--timeout", "0", "x.lock", "--", "echo", "free"]),
        "free\n",
    );
    let run = holder.release();
    assert_eq!(run.stdout, "released\n", "{run:?}");
}

#[test]
fn the_lock_file_stays_behind_recording_the_last_exclusive_owner() {
    let locks = Locks::new();
    let file = locks.path().join("x.lock");
    let before = now_ms();
    let child = spawn(&locks, &["run", "x.lock", "--", "sh", "-c", "exit 0"]);
    let pid = child.id();
    succeeded(&finished(child), "");
    let after = now_ms();
    let inode = fs::metadata(&file).expect("x.lock stays").ino();
    let (rec_pid, host, since, command) = record(&locks, "x.lock");
    assert_eq!(
        (rec_pid, host.as_str(), command.as_str()),
        (pid, host_name().as_str(), "sh -c exit 0")
    );
    assert!(
        before <= since && since <= after,
        "since {since} not within the run [{before}, {after}]"
    );

    // A shared holder records nothing: the exclusive owner's line stays.
    succeeded(&locks.run(&["run", "--shared", "x.lock", "--", "true"]), "");
    assert_eq!(record(&locks, "x.lock").0, pid);

    // The next exclusive holder overwrites it, in the same file.
    let child = spawn(&locks, &["run", "--timeout", "0", "x.lock", "--", "true"]);
    let next = child.id();
    succeeded(&finished(child), "");
    let (rec_pid, _, _, command) = record(&locks, "x.lock");
    assert_eq!((rec_pid, command.as_str()), (next, "true"));
    assert_eq!(fs::metadata(&file).expect("x.lock").ino(), inode);
    assert_eq!(locks.tree(), [Path::new("x.lock")]);
}

#[test]
fn shared_holders_coexist_and_keep_exclusive_ones_out() {
    let locks = Locks::new();
    let first = Holder::start(&locks, &["--shared"], "x.lock", HOLD);
    succeeded(
        &locks.run(&[
            "run",
            "--shared",
            "--timeout",
            "0",
            "x.lock",
            "--",
            "echo",
            "second",
        ]),
        "second\n",
    );
    let second = Holder::start(&locks, &["--shared", "--timeout", "0"], "x.lock", HOLD);

    let marker = locks.path().join("ran");
    let marker_cmd = format!("echo ran > {}", marker.display());
    locks
        .run(&[
            "run",
            "--timeout",
            "0",
            "x.lock",
            "--",
            "sh",
            "-c",
            &marker_cmd,
        ])
        .assert_refused(1, "Lock file x.lock is held by another process");
    assert_eq!(second.release().code, 0);
    locks
        .run(&[
            "run",
            "--timeout",
            "0",
            "x.lock",
            "--",
            "sh",
            "-c",
            &marker_cmd,
        ])
        .assert_refused(1, "Lock file x.lock is held by another process");
    assert!(!marker.exists());
    assert_eq!(first.release().code, 0);
    succeeded(
        &locks.run(&["run", "--timeout", "0", "x.lock", "--", "echo", "alone"]),
        "alone\n",
    );

    // And the other way round: an exclusive holder keeps shared ones out.
    let exclusive = Holder::start(&locks, &[], "x.lock", HOLD);
    locks
        .run(&[
            "run",
            "--shared",
            "--timeout",
            "0",
            "x.lock",
            "--",
            "sh",
            "-c",
            &marker_cmd,
        ])
        .assert_refused(1, &held_by("x.lock", &exclusive, HOLD));
    assert!(!marker.exists());
    assert_eq!(exclusive.release().code, 0);
}

#[test]
fn who_shows_free_exclusive_and_shared_holders() {
    let locks = Locks::new();
    succeeded(&locks.run(&["who", "x.lock"]), "not held\n");
    assert_eq!(
        locks.json(&["who", "x.lock", "--json"]),
        serde_json::json!({ "held": false })
    );

    let holder = Holder::start(&locks, &[], "x.lock", HOLD);
    let json = locks.json(&["who", "x.lock", "--json"]);
    let since = json["owner"]["since_ms"].as_u64().expect("since_ms");
    assert_eq!(
        json,
        serde_json::json!({
            "held": true,
            "owner": {
                "pid": holder.pid(),
                "host": host_name(),
                "since_ms": since,
                "command": Holder::command_line(HOLD),
            }
        })
    );
    assert_eq!(record(&locks, "x.lock").2, since);
    succeeded(
        &locks.run(&["who", "x.lock"]),
        &format!(
            "pid {} on {} since {}: {}\n",
            holder.pid(),
            host_name(),
            iso(since),
            Holder::command_line(HOLD)
        ),
    );
    // Asking does not disturb the holder.
    assert_eq!(holder.release().code, 0);
    succeeded(&locks.run(&["who", "x.lock"]), "not held\n");

    let shared = Holder::start(&locks, &["--shared"], "x.lock", HOLD);
    succeeded(
        &locks.run(&["who", "x.lock"]),
        "held (shared, or by a holder that recorded nothing)\n",
    );
    assert_eq!(
        locks.json(&["who", "x.lock", "--json"]),
        serde_json::json!({ "held": true, "owner": null })
    );
    assert_eq!(shared.release().code, 0);
    assert_eq!(
        locks.json(&["who", "x.lock", "--json"]),
        serde_json::json!({ "held": false })
    );
}

#[test]
fn iso_dates_are_counted_right() {
    // The test's own calendar, checked against known dates.
    assert_eq!(iso(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00Z");
    assert_eq!(iso(1_795_453_354_244), "2026-11-23T17:02:34Z");
    assert_eq!(iso(4_107_542_399_000), "2100-02-28T23:59:59Z");
    assert_eq!(iso(4_107_542_400_000), "2100-03-01T00:00:00Z");
}

#[test]
fn missing_or_unrunnable_commands_exit_127_or_126_and_release_the_lock() {
    let locks = Locks::new();
    let run = locks.run(&["run", "x.lock", "--", "hasp-test-no-such-command"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            127,
            "",
            "hasp: hasp-test-no-such-command: command not found\n"
        )
    );
    succeeded(
        &locks.run(&["run", "--timeout", "0", "x.lock", "--", "echo", "free"]),
        "free\n",
    );

    let scratch = tempfile::tempdir().expect("temp dir");
    let plain = scratch.path().join("not-executable");
    fs::write(&plain, "#!/bin/sh\necho ran\n").expect("write");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).expect("chmod");
    let plain = plain.to_str().expect("utf-8");
    let run = locks.run(&["run", "x.lock", "--", plain]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            126,
            "",
            format!("hasp: {plain}: permission denied\n").as_str()
        )
    );
    let directory = scratch.path().to_str().expect("utf-8");
    let run = locks.run(&["run", "x.lock", "--", directory]);
    assert_eq!((run.code, run.stdout.as_str()), (126, ""), "{run:?}");
    succeeded(
        &locks.run(&["run", "--timeout", "0", "x.lock", "--", "echo", "free"]),
        "free\n",
    );
    succeeded(&locks.run(&["who", "x.lock"]), "not held\n");
}

/// Sends `signal` to the hasp of `holder`, whose script traps it, prints
/// `got-<name>` and exits `code`; checks hasp passes that on and lets go.
fn forwarded(signal: libc::c_int, name: &str, code: i32) {
    let locks = Locks::new();
    let script = format!("trap 'echo got-{name}; exit {code}' {name}; {HOLD}");
    let mut holder = Holder::start(&locks, &[], "x.lock", &script);
    let watchdog = Watchdog::new(holder.take_stdin());
    // SAFETY: kill(2) on a child process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(holder.pid() as i32, signal) }, 0);
    let line = holder.line();
    let timed_out = watchdog.stop();
    let run = holder.release();
    assert_eq!(
        (line.as_str(), run.code, timed_out),
        (format!("got-{name}\n").as_str(), code, false),
        "SIG{name} to hasp should reach the command; then {run:?}"
    );
    succeeded(&locks.run(&["who", "x.lock"]), "not held\n");
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    forwarded(libc::SIGTERM, "TERM", 3);
}

#[test]
fn sigint_is_forwarded_to_the_command() {
    forwarded(libc::SIGINT, "INT", 4);
}

#[test]
fn sighup_and_sigquit_are_forwarded_to_the_command() {
    forwarded(libc::SIGHUP, "HUP", 5);
    forwarded(libc::SIGQUIT, "QUIT", 6);
}

/// Whether `pid` has a handler installed for SIGTERM (/proc/PID/status).
fn catches_sigterm(pid: u32) -> Option<bool> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    let mask = u64::from_str_radix(mask.trim(), 16).ok()?;
    Some(mask & (1 << (libc::SIGTERM - 1)) != 0)
}

#[test]
fn sigterm_as_the_command_starts_is_not_lost() {
    // hasp installs its forwarding handler just before it spawns the
    // command; a SIGTERM from then on must reach the command, however soon
    // it comes. Send it the moment the handler shows in /proc.
    const ROUNDS: usize = 20;
    let locks = Locks::new();
    let script = "trap 'echo got-TERM; exit 3' TERM; echo ready; read -r _; echo released";
    for round in 0..ROUNDS {
        let mut child = locks
            .command(&["run", "x.lock", "--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hasp");
        let watchdog = Watchdog::new(child.stdin.take().expect("stdin"));
        let pid = child.id();
        // A guard against hanging, not a measure of speed.
        let guard = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while catches_sigterm(pid) != Some(true) {
            if let Some(status) = child.try_wait().expect("poll hasp") {
                panic!("round {round}: hasp exited ({status}) before running the command");
            }
            assert!(
                std::time::Instant::now() < guard,
                "round {round}: hasp never installed a SIGTERM handler"
            );
            std::thread::yield_now();
        }
        // SAFETY: kill(2) on a child process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
        let out = child.wait_with_output().expect("wait for hasp");
        let timed_out = watchdog.stop();
        let run = Run::from(out);
        // The command was killed before its trap was set (143), or trapped
        // it (3); or hasp itself died of it before starting the command.
        let outcome_ok = match run.code {
            143 | -1 => run.stdout.is_empty(),
            3 => run.stdout.ends_with("got-TERM\n"),
            _ => false,
        };
        assert!(
            outcome_ok && !timed_out,
            "round {round}: SIGTERM sent to hasp as it started the command did not end \
             the command (watchdog fired: {timed_out}): {run:?}"
        );
    }
}

/// Runs `args`, expects exit 2 with `first_line` first on stderr, nothing
/// on stdout (the command never runs), and no file added or changed.
#[track_caller]
fn rejected(locks: &Locks, args: &[&str], first_line: &str) {
    let before = locks.tree();
    let run = locks.run(args);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.lines().next()),
        (2, "", Some(first_line)),
        "hasp {args:?}: {run:?}"
    );
    assert_eq!(locks.tree(), before, "hasp {args:?} changed the lock dir");
}

#[test]
fn bad_lock_file_paths_exit_2_and_create_nothing() {
    let locks = Locks::new();
    let outside = tempfile::tempdir().expect("temp dir");
    fs::create_dir(locks.path().join("sub")).expect("mkdir");
    let fifo = Command::new("mkfifo")
        .arg(locks.path().join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(fifo.success());
    let far = outside.path().join("x.lock");
    let far = far.to_str().expect("utf-8");

    let invalid = |path: &str, why: &str| format!("invalid lock file path '{path}': {why}");
    let cases: Vec<(String, String)> = vec![
        (
            "../x.lock".into(),
            invalid(
                "../x.lock",
                "`.` and `..` would leave or blur the lock directory",
            ),
        ),
        (
            "sub/../../x.lock".into(),
            invalid(
                "sub/../../x.lock",
                "`.` and `..` would leave or blur the lock directory",
            ),
        ),
        (
            far.into(),
            invalid(far, "it is absolute and outside the lock directory"),
        ),
        ("".into(), invalid("", "it is empty")),
        (
            "sub//x.lock".into(),
            invalid(
                "sub//x.lock",
                "it has an empty segment (`//` or a trailing `/`)",
            ),
        ),
        (
            "a\nb".into(),
            invalid("a\\nb", "it contains the control character '\\n'"),
        ),
        (
            "sub".into(),
            "cannot use sub as a lock file: it is a directory".into(),
        ),
    ];
    for name in ["nodes", "FORMAT", "tmp", "nodes/x.lock"] {
        rejected(
            &locks,
            &["run", name, "--", "echo", "ran"],
            &invalid(name, "it names the lock registry's own files"),
        );
    }
    for (path, message) in &cases {
        rejected(&locks, &["run", path, "--", "echo", "ran"], message);
        rejected(&locks, &["who", path], message);
    }

    // A FIFO is refused without opening it (which would block).
    let run = locks.run(&["run", "--timeout", "0", "fifo", "--", "echo", "ran"]);
    assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
    assert!(
        run.stderr
            .starts_with("cannot use fifo as a lock file: it is "),
        "{run:?}"
    );
    assert_eq!(fs::read_dir(outside.path()).expect("ls").count(), 0);
}

#[test]
fn symlinks_are_never_followed_out_of_the_lock_dir() {
    let locks = Locks::new();
    let outside = tempfile::tempdir().expect("temp dir");
    let target = outside.path().join("target.lock");
    let existing = outside.path().join("existing");
    fs::write(&existing, "keep me\n").expect("write");
    let link = |name: &str, to: &Path| {
        std::os::unix::fs::symlink(to, locks.path().join(name)).expect("symlink")
    };
    link("dangling", &target);
    link("existing", &existing);
    link("out", outside.path());
    fs::write(locks.path().join("x.lock"), "").expect("write");
    link("inner", Path::new("x.lock"));

    for name in ["dangling", "existing", "inner"] {
        let message = format!("cannot use {name} as a lock file: it is a symlink");
        rejected(&locks, &["run", name, "--", "echo", "ran"], &message);
        rejected(&locks, &["who", name], &message);
    }
    // Through a symlinked directory: refused too, wherever it leads.
    let run = locks.run(&["run", "out/x.lock", "--", "echo", "ran"]);
    assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
    assert!(
        run.stderr.contains("out/x.lock"),
        "the message names the path: {run:?}"
    );

    assert!(!target.exists(), "the dangling link's target was created");
    assert_eq!(fs::read_to_string(&existing).expect("read"), "keep me\n");
    let mut names: Vec<_> = fs::read_dir(outside.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["existing"]);
}

#[test]
fn bad_timeouts_exit_2_and_run_nothing() {
    let locks = Locks::new();
    for bad in ["-1", "abc", "", "nan", "inf", "1e400"] {
        rejected(
            &locks,
            &["run", "--timeout", bad, "x.lock", "--", "echo", "ran"],
            &format!(
                "error: invalid value '{bad}' for '--timeout <SECONDS>': \
                 '{bad}' is not a number of seconds (0 or more)"
            ),
        );
    }
    // No command at all.
    let run = locks.run(&["run", "x.lock"]);
    assert_eq!((run.code, run.stdout.as_str()), (2, ""), "{run:?}");
    assert_eq!(locks.tree(), Vec::<std::path::PathBuf>::new());
}

#[test]
fn an_absolute_path_inside_the_lock_dir_is_the_same_lock() {
    let locks = Locks::new();
    let absolute = locks.path().join("x.lock");
    let absolute = absolute.to_str().expect("utf-8");
    let child = spawn(&locks, &["run", absolute, "--", "echo", "abs"]);
    let pid = child.id();
    succeeded(&finished(child), "abs\n");
    assert_eq!(record(&locks, "x.lock").0, pid);
    assert_eq!(locks.tree(), [Path::new("x.lock")]);

    let holder = Holder::start(&locks, &[], absolute, HOLD);
    locks
        .run(&["run", "--timeout", "0", "x.lock", "--", "true"])
        .assert_refused(1, &held_by("x.lock", &holder, HOLD));
    assert_eq!(
        locks.json(&["who", absolute, "--json"])["owner"]["pid"],
        holder.pid()
    );
    assert_eq!(holder.release().code, 0);
}

#[test]
fn an_absolute_path_through_the_lock_dir_as_given_is_inside_it() {
    // --dir names the lock directory through a symlink (as /var/run does
    // /run); PATH spells it the same way. It is inside the lock directory.
    let locks = Locks::new();
    let links = tempfile::tempdir().expect("temp dir");
    let dir = links.path().join("locks");
    std::os::unix::fs::symlink(locks.path(), &dir).expect("symlink");
    let absolute = dir.join("x.lock");
    let absolute = absolute.to_str().expect("utf-8");
    let run = hasp_in(&dir, &["run", absolute, "--", "echo", "ran"]);
    succeeded(&run, "ran\n");
    assert_eq!(locks.tree(), [Path::new("x.lock")]);
}

#[test]
fn who_on_a_missing_lock_file_says_not_held_and_creates_nothing() {
    let locks = Locks::new();
    let run = locks.run(&["who", "never-used.lock"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "not held\n", "")
    );
    assert!(!locks.path().join("never-used.lock").exists());
    let run = locks.run(&["who", "never-used.lock", "--json"]);
    assert_eq!(run.stdout, "{\"held\":false}\n");
}

/// Runs `args` and expects exactly `line` on stderr, exit 2, nothing run,
/// and nothing created or changed in the lock directory.
#[track_caller]
fn refused_in_one_line(locks: &Locks, args: &[&str], line: &str) {
    let before = locks.tree();
    locks.run(args).assert_refused(2, line);
    assert_eq!(locks.tree(), before, "hasp {args:?} changed the lock dir");
}

#[test]
fn a_symlinked_directory_inside_the_lock_dir_is_never_followed() {
    // The README says symlinks are refused: a symlink to a directory that
    // stays inside the lock directory too, at any level, for `run` and `who`.
    let locks = Locks::new();
    let dir = locks.path();
    fs::create_dir_all(dir.join("real/deeper")).expect("mkdir");
    fs::create_dir(dir.join("sub")).expect("mkdir");
    fs::write(dir.join("real/there.lock"), "").expect("write");
    std::os::unix::fs::symlink("real", dir.join("link")).expect("symlink");
    std::os::unix::fs::symlink("../real", dir.join("sub/link")).expect("symlink");
    std::os::unix::fs::symlink("deeper", dir.join("real/down")).expect("symlink");

    for (path, level) in [
        ("link/x.lock", "link"),
        ("link/there.lock", "link"),
        ("link/deeper/x.lock", "link"),
        ("sub/link/x.lock", "sub/link"),
        ("real/down/x.lock", "real/down"),
    ] {
        let line = format!(
            "cannot use {path} as a lock file: {level} is a symlink (symlinks are never followed)"
        );
        refused_in_one_line(&locks, &["run", path, "--", "echo", "ran"], &line);
        refused_in_one_line(&locks, &["who", path], &line);
        let absolute = dir.join(path);
        let absolute = absolute.to_str().expect("utf-8");
        refused_in_one_line(&locks, &["run", absolute, "--", "echo", "ran"], &line);
    }
    // Only the file put there by hand is in the real directory.
    assert_eq!(
        fs::read_dir(dir.join("real"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(".lock"))
            .collect::<Vec<_>>(),
        ["there.lock"]
    );
    // The same files by their real paths are lock files as usual.
    succeeded(
        &locks.run(&["run", "real/deeper/x.lock", "--", "echo", "ran"]),
        "ran\n",
    );
    assert_eq!(locks.run(&["who", "real/there.lock"]).stdout, "not held\n");
}

#[test]
fn special_files_on_a_lock_file_path_are_refused_at_once() {
    let locks = Locks::new();
    let dir = locks.path();
    assert!(Command::new("mkfifo")
        .arg(dir.join("fifo"))
        .status()
        .expect("mkfifo")
        .success());
    let _socket = std::os::unix::net::UnixListener::bind(dir.join("socket")).expect("bind");
    fs::write(dir.join("file"), "").expect("write");
    let special = "a special file (a FIFO or a socket)";
    let cases = [
        ("fifo/x.lock", format!("fifo is {special}, not a directory")),
        (
            "socket/x.lock",
            format!("socket is {special}, not a directory"),
        ),
        (
            "file/x.lock",
            "file is a regular file, not a directory".into(),
        ),
        ("socket", format!("it is {special}")),
        ("fifo", format!("it is {special}")),
    ];
    for (path, why) in &cases {
        let line = format!("cannot use {path} as a lock file: {why}");
        refused_in_one_line(&locks, &["run", path, "--", "echo", "ran"], &line);
        refused_in_one_line(&locks, &["who", path], &line);
    }
}
