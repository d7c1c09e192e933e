//! Running the command of `hasp run`: spawn it, forward SIGINT and SIGTERM
//! to it, and report its exit the way a shell does.

use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The running child's pid, read by the signal handler (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);
const FORWARDED: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn forward(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Runs `argv` to completion and returns its exit code: its own, 128 + N if
/// signal N killed it, 127 if it does not exist, 126 if it cannot run.
pub fn run(argv: &[String]) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        return 127;
    };
    // Block the forwarded signals until the child's pid is known, so that
    // none arriving in between is lost; the child starts with an empty mask.
    let blocked = mask(libc::SIG_BLOCK);
    install_forwarding();
    let spawned = Command::new(program).args(args).spawn();
    if let Ok(child) = &spawned {
        CHILD.store(child.id() as i32, Ordering::SeqCst);
    }
    if blocked {
        mask(libc::SIG_UNBLOCK);
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

fn mask(how: libc::c_int) -> bool {
    // SAFETY: plain signal-mask manipulation of the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut()) == 0
    }
}
