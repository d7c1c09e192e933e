//! The Rust API for lock files (`hasp::FileLock`): two handles contend even
//! in one process, guards release on drop, timed and endless waits, shared
//! holders, and one lock seen alike by the API and by `hasp run`/`hasp who`.

use crate::support::{child_blocked, host_name, wait_until_blocked, Holder, Locks, Run, HOLD};
use hasp::{Error, FileGuard, FileHolder, FileLock, LockFailed, Wait};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

fn open(locks: &Locks) -> FileLock {
    FileLock::open(locks.path(), "x.lock").expect("open x.lock")
}

fn me() -> String {
    std::process::id().to_string()
}

/// What `FileLock::lock` records as this process's command.
fn my_command() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Asserts `result` is a `WouldBlock` naming `holder` (a pid, or `?`), with
/// a message starting with `message`; hands back the lock that was refused.
#[track_caller]
fn refused(result: Result<FileGuard, LockFailed>, holder: &str, message: &str) -> FileLock {
    match result {
        Err(LockFailed {
            error: err @ Error::WouldBlock { .. },
            lock,
        }) => {
            assert!(err.is_refusal());
            let Error::WouldBlock {
                holder: named,
                message: text,
            } = &err
            else {
                unreachable!()
            };
            assert_eq!(named, holder, "{err:?}");
            assert!(text.starts_with(message), "{text:?} vs {message:?}");
            assert_eq!(err.to_string(), *text);
            *lock
        }
        Err(other) => panic!("expected WouldBlock by {holder}, got {other:?}"),
        Ok(_) => panic!("expected WouldBlock by {holder}, got the lock"),
    }
}

#[track_caller]
fn owner_pid(lock: &mut FileLock) -> u32 {
    match lock.holder().expect("holder") {
        FileHolder::Owner(owner) => owner.pid,
        other => panic!("expected a recorded owner, got {other:?}"),
    }
}

#[test]
fn two_file_locks_in_one_process_contend() {
    let locks = Locks::new();
    let first = open(&locks);
    let mut second = open(&locks);
    let held_by_me = format!(
        "Lock file x.lock is held by pid {} on {}",
        me(),
        host_name()
    );

    let guard = first.try_lock().expect("the first lock");
    second = refused(second.try_lock(), &me(), &held_by_me);
    second = refused(second.lock(Wait::No), &me(), &held_by_me);
    second = refused(second.lock_shared(Wait::No), &me(), &held_by_me);
    match second.holder().expect("holder") {
        FileHolder::Owner(owner) => {
            assert_eq!(
                (owner.pid, owner.host.as_str(), owner.command.as_str()),
                (
                    std::process::id(),
                    host_name().as_str(),
                    my_command().as_str()
                )
            );
        }
        other => panic!("expected this process as the owner, got {other:?}"),
    }

    // Dropping the guard releases it.
    drop(guard);
    assert_eq!(second.holder().expect("holder"), FileHolder::Free);
    let guard = second.try_lock().expect("free after the drop");
    let first = refused(open(&locks).try_lock(), &me(), &held_by_me);
    // So does an explicit release, which hands the lock back.
    let _second = guard.release().expect("release");
    first
        .try_lock()
        .expect("free after release")
        .release()
        .expect("release");

    // The file stays, recording the last exclusive owner.
    let text = std::fs::read_to_string(locks.path().join("x.lock")).expect("x.lock stays");
    assert!(
        text.starts_with(&format!("{} {} ", me(), host_name())),
        "{text:?}"
    );
}

#[test]
fn acquire_records_the_given_command() {
    let locks = Locks::new();
    let lock = open(&locks);
    let mut other = open(&locks);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let guard = lock
        .acquire(false, Wait::No, "./deploy.sh --prod".into())
        .expect("acquire");
    let FileHolder::Owner(owner) = other.holder().expect("holder") else {
        panic!("expected a recorded owner");
    };
    assert_eq!(
        (owner.pid, owner.host.as_str(), owner.command.as_str()),
        (
            std::process::id(),
            host_name().as_str(),
            "./deploy.sh --prod"
        )
    );
    assert!(owner.since_ms >= before, "{owner:?}");
    other = refused(
        other.try_lock(),
        &me(),
        &format!(
            "Lock file x.lock is held by pid {} on {}, running './deploy.sh --prod'",
            me(),
            host_name()
        ),
    );
    let lock = guard.release().expect("release");
    // Shared: recorded nowhere, and the previous record stays in the file.
    let guard = lock
        .acquire(true, Wait::No, "ignored".into())
        .expect("acquire shared");
    assert_eq!(other.holder().expect("holder"), FileHolder::Unrecorded);
    drop(guard);
    let text = std::fs::read_to_string(locks.path().join("x.lock")).expect("read");
    assert!(text.ends_with(" ./deploy.sh --prod\n"), "{text:?}");
}

#[test]
fn the_record_is_exactly_the_last_exclusive_owner_line() {
    let locks = Locks::new();
    let path = locks.path().join("x.lock");
    // Whatever was in the file before, longer than any owner line, goes.
    std::fs::write(&path, "x".repeat(5000)).expect("write");
    let mut lock = open(&locks);
    let line = |command: &str| {
        let text = std::fs::read_to_string(&path).expect("read");
        let prefix = format!("{} {} ", me(), host_name());
        assert!(text.starts_with(&prefix), "{text:?}");
        assert!(text.ends_with(&format!(" {command}\n")), "{text:?}");
        assert_eq!(text.lines().count(), 1, "{text:?}");
    };
    for command in ["a-long-command --with many arguments", "short", "", "short"] {
        lock = lock
            .acquire(false, Wait::No, command.into())
            .expect("acquire")
            .release()
            .expect("release");
        if command.is_empty() {
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(
                text.ends_with(" \n") && text.lines().count() == 1,
                "{text:?}"
            );
        } else {
            line(command);
        }
    }
}

#[test]
fn a_timed_out_wait_fails_and_leaves_nothing_held() {
    let locks = Locks::new();
    let (holder, mut waiter, third) = (open(&locks), open(&locks), open(&locks));
    let guard = holder.lock(Wait::No).expect("lock");
    let message = format!("Lock file x.lock is held by pid {}", me());
    waiter = refused(
        waiter.lock(Wait::For(Duration::from_millis(200))),
        &me(),
        &message,
    );
    waiter = refused(
        waiter.lock_shared(Wait::For(Duration::from_millis(200))),
        &me(),
        &message,
    );
    drop(guard);
    // The waiter gave up: it did not take the lock later behind our back.
    third.try_lock().expect("free").release().expect("release");
    waiter
        .try_lock()
        .expect("the waiter can still lock")
        .release()
        .expect("release");
}

#[test]
fn a_waiting_thread_gets_the_lock_when_the_holder_lets_go() {
    for wait in [Wait::Forever, Wait::For(Duration::from_secs(30))] {
        let locks = Locks::new();
        let file = locks.path().join("x.lock");
        let holder = open(&locks);
        let guard = holder.lock(Wait::No).expect("lock");

        let (granted, got) = mpsc::channel::<bool>();
        let (finish, finished) = mpsc::channel::<()>();
        let dir = locks.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let lock = FileLock::open(&dir, "x.lock").expect("open in the thread");
            let guard = lock.lock(wait);
            granted.send(guard.is_ok()).expect("report");
            finished.recv().expect("told to finish");
            drop(guard);
        });
        wait_until_blocked(&file, std::process::id(), || {
            waiter.is_finished().then(|| "finished".to_string())
        });
        assert_eq!(got.try_recv(), Err(mpsc::TryRecvError::Empty), "{wait:?}");

        drop(guard);
        assert_eq!(got.recv(), Ok(true), "{wait:?}: the waiter got the lock");
        // The thread holds it now.
        let holder = refused(
            open(&locks).try_lock(),
            &me(),
            "Lock file x.lock is held by pid",
        );
        finish.send(()).expect("finish");
        waiter.join().expect("waiter thread");
        holder
            .try_lock()
            .expect("free again")
            .release()
            .expect("release");
    }
}

#[test]
fn any_thread_may_release_the_lock() {
    let locks = Locks::new();
    let guard = open(&locks).try_lock().expect("lock");
    let mut other = open(&locks);
    assert_eq!(owner_pid(&mut other), std::process::id());
    std::thread::spawn(move || drop(guard))
        .join()
        .expect("releasing thread");
    assert_eq!(other.holder().expect("holder"), FileHolder::Free);
    other.try_lock().expect("free").release().expect("release");
}

#[test]
fn the_api_sees_a_cli_holder_and_the_cli_sees_an_api_holder() {
    let locks = Locks::new();
    let mut lock = open(&locks);

    // hasp run holds; the API is refused and names it.
    let holder = Holder::start(&locks, &[], "x.lock", HOLD);
    let pid = holder.pid();
    match lock.holder().expect("holder") {
        FileHolder::Owner(owner) => assert_eq!(
            (owner.pid, owner.host.as_str(), owner.command.as_str()),
            (
                pid,
                host_name().as_str(),
                Holder::command_line(HOLD).as_str()
            )
        ),
        other => panic!("expected hasp run as the owner, got {other:?}"),
    }
    lock = refused(
        lock.try_lock(),
        &pid.to_string(),
        &format!(
            "Lock file x.lock is held by pid {pid} on {}, running '{}'",
            host_name(),
            Holder::command_line(HOLD)
        ),
    );
    lock = refused(lock.lock_shared(Wait::No), &pid.to_string(), "Lock file");
    assert_eq!(holder.release().code, 0);
    assert_eq!(lock.holder().expect("holder"), FileHolder::Free);

    // The API holds; hasp run is refused naming this process, hasp who
    // shows it, and a waiting hasp run gets it when the guard drops.
    let guard = lock.try_lock().expect("lock");
    let run = locks.run(&["run", "--timeout", "0", "x.lock", "--", "echo", "ran"]);
    assert_eq!((run.code, run.stdout.as_str()), (1, ""), "{run:?}");
    assert!(
        run.stderr.starts_with(&format!(
            "Lock file x.lock is held by pid {} on {}, running '",
            me(),
            host_name()
        )),
        "{run:?}"
    );
    let who = locks.json(&["who", "x.lock", "--json"]);
    assert_eq!(
        (&who["owner"]["pid"], &who["owner"]["command"]),
        (
            &serde_json::json!(std::process::id()),
            &serde_json::json!(my_command())
        ),
        "{who}"
    );
    let mut waiter = locks
        .command(&["run", "--timeout", "30", "x.lock", "--", "echo", "cli-ran"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hasp run");
    child_blocked(&locks.path().join("x.lock"), &mut waiter);
    drop(guard);
    let run = Run::from(waiter.wait_with_output().expect("wait"));
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "cli-ran\n", "")
    );
}

#[test]
fn shared_locks_coexist_and_keep_exclusive_ones_out() {
    let locks = Locks::new();
    let (a, b, mut c) = (open(&locks), open(&locks), open(&locks));
    let first = a.lock_shared(Wait::No).expect("first shared");
    let second = b.lock_shared(Wait::No).expect("second shared");
    let anonymous = "Lock file x.lock is held by another process";
    c = refused(c.try_lock(), "?", anonymous);
    c = refused(
        c.lock(Wait::For(Duration::from_millis(200))),
        "?",
        anonymous,
    );
    assert_eq!(c.holder().expect("holder"), FileHolder::Unrecorded);
    let run = locks.run(&[
        "run",
        "--shared",
        "--timeout",
        "0",
        "x.lock",
        "--",
        "echo",
        "cli",
    ]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "cli\n"), "{run:?}");
    locks
        .run(&["run", "--timeout", "0", "x.lock", "--", "echo", "ran"])
        .assert_refused(1, anonymous);

    drop(first);
    c = refused(c.try_lock(), "?", anonymous);
    drop(second);
    assert_eq!(c.holder().expect("holder"), FileHolder::Free);
    c.try_lock().expect("free").release().expect("release");
}

#[test]
fn open_refuses_paths_outside_the_dir_or_not_files() {
    let locks = Locks::new();
    std::fs::create_dir(locks.path().join("sub")).expect("mkdir");
    let invalid = |path: &str, message: &str| match FileLock::open(locks.path(), path) {
        Err(err @ Error::InvalidInput { .. }) => {
            assert!(!err.is_refusal());
            assert_eq!(err.to_string(), message, "{path}");
        }
        Err(other) => panic!("{path}: expected InvalidInput, got {other:?}"),
        Ok(_) => panic!("{path}: opened"),
    };
    invalid(
        "../x.lock",
        "invalid lock file path '../x.lock': `.` and `..` would leave or blur the lock directory",
    );
    invalid(
        "/tmp/x.lock",
        "invalid lock file path '/tmp/x.lock': it is absolute and outside the lock directory",
    );
    invalid(
        "nodes",
        "invalid lock file path 'nodes': it names the lock registry's own files",
    );
    invalid("sub", "cannot use sub as a lock file: it is a directory");
    assert_eq!(locks.tree(), [std::path::PathBuf::from("sub")]);

    let missing = locks.path().join("missing");
    match FileLock::open(&missing, "x.lock") {
        Err(err @ Error::Directory { .. }) => assert!(!err.is_refusal()),
        Err(other) => panic!("expected Directory, got {other:?}"),
        Ok(_) => panic!("opened a lock in a missing directory"),
    }
    assert!(!missing.exists());
}

#[test]
fn the_one_line_form_works_with_question_marks() -> Result<(), Error> {
    let locks = Locks::new();
    let wait = Wait::For(Duration::from_secs(30));
    let guard = FileLock::open(locks.path(), "deploy.lock")?.lock(wait)?;
    let refusal = FileLock::open(locks.path(), "deploy.lock")?
        .try_lock()
        .map(drop)
        .map_err(Error::from);
    assert!(
        matches!(&refusal, Err(Error::WouldBlock { holder, .. }) if *holder == me()),
        "{refusal:?}"
    );
    drop(guard);
    drop(FileLock::open(locks.path(), "deploy.lock")?.try_lock()?);
    Ok(())
}
