//! Running the command of `hasp run`: spawn it, forward SIGINT and SIGTERM
//! to it, and report its exit the way a shell does.

use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The running child's pid, read by the signal handler (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal received and not yet forwarded (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);
const FORWARDED: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Records the signal, then forwards it if the child is known. Whichever of
/// this handler and [`run`] (after it learns the pid) takes the pending
/// signal first forwards it, so a signal arriving on any thread at any
/// moment reaches the child exactly once.
extern "C" fn forward(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
    deliver(CHILD.load(Ordering::SeqCst));
}

fn deliver(pid: i32) {
    if pid > 0 {
        let signal = PENDING.swap(0, Ordering::SeqCst);
        if signal != 0 {
            // SAFETY: kill(2) is async-signal-safe.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Runs `argv` to completion and returns its exit code: its own, 128 + N if
/// signal N killed it, 127 if it does not exist, 126 if it cannot run.
pub fn run(argv: &[String]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        return 127;
    };
    install_forwarding();
    let spawned = Command::new(program).args(args).spawn();
    if let Ok(child) = &spawned {
        CHILD.store(child.id() as i32, Ordering::SeqCst);
        deliver(child.id() as i32); // one that arrived while it started
    }
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            eprintln!("hasp: {program}: {}", reason(&err));
            return match err.kind() {
                io::ErrorKind::NotFound => 127,
                _ => 126,
            };
        }
    };
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1)
        }
        Err(err) => {
            eprintln!("hasp: waiting for {program}: {err}");
            1
        }
    }
}

fn reason(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::NotFound => "command not found",
        io::ErrorKind::PermissionDenied => "permission denied",
        _ => "cannot run it",
    }
}

fn install_forwarding() {
    for signal in FORWARDED {
        // SAFETY: `forward` only loads an atomic and calls kill(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
