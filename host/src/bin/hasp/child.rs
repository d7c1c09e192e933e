//! Running the command of `hasp run` and `hasp lock RES -- CMD`: spawn it,
//! forward SIGINT, SIGTERM, SIGHUP and SIGQUIT to it, and report its exit the
//! way a shell does.

use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// The running child's pid, read by the signal handler (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal received and not yet forwarded (0: none).
static PENDING: AtomicI32 = AtomicI32::new(0);
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Records the signal, then forwards it if the child is known. Whichever of
/// this handler and [`run`] (after it learns the pid) takes the pending
/// signal first forwards it, so a signal arriving on any thread at any
/// moment reaches the child exactly once. A signal the terminal sent (Ctrl-C,
/// Ctrl-\, hang-up) already went to the whole foreground process group,
/// the child included, so it is not sent again.
extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    if !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL {
        return;
    }
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
    match spawn(argv, &[], false) {
        Ok(running) => running.wait(),
        Err(code) => code,
    }
}

/// Serialises [`signal`] with the reaping of the child, so that a signal
/// sent from another thread never reaches a process that reused its pid.
static REAPING: Mutex<()> = Mutex::new(());

/// A command started by [`spawn`], with signals forwarded to it.
pub struct Running {
    child: Child,
    program: String,
}

/// Starts `argv` with `env` added to its environment, forwarding SIGINT,
/// SIGTERM, SIGHUP and SIGQUIT to it from now on. With `tied`, the command
/// also gets SIGTERM if hasp dies (`kill -9`), since whatever it holds for
/// the command (a lease kept alive by renewals) dies with hasp. If it cannot
/// start, says why on stderr and returns the exit code for that: 127 if it
/// does not exist, 126 if it cannot run.
pub fn spawn(argv: &[String], env: &[(&str, String)], tied: bool) -> Result<Running, i32> {
    let Some((program, args)) = argv.split_first() else {
        return Err(127);
    };
    install_forwarding();
    let mut command = Command::new(program);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    if tied {
        use std::os::unix::process::CommandExt;
        // SAFETY: getpid, prctl, getppid and _exit are async-signal-safe.
        let parent = unsafe { libc::getpid() };
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // hasp died before the request was made: as if signalled.
                if libc::getppid() != parent {
                    libc::_exit(128 + libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
    match command.spawn() {
        Ok(child) => {
            CHILD.store(child.id() as i32, Ordering::SeqCst);
            deliver(child.id() as i32); // one that arrived while it started
            Ok(Running {
                child,
                program: program.clone(),
            })
        }
        Err(err) => {
            eprintln!("hasp: {program}: {}", reason(&err));
            Err(match err.kind() {
                io::ErrorKind::NotFound => 127,
                _ => 126,
            })
        }
    }
}

impl Running {
    /// Waits for the command to exit; its exit code: its own, or 128 + N if
    /// signal N killed it.
    pub fn wait(mut self) -> i32 {
        // Wait for the exit without reaping, so that the pid cannot be
        // reused while the handler (or [`signal`]) may still signal it;
        // then forget it, then reap.
        wait_for_exit(self.child.id());
        {
            let _reaping = REAPING.lock().unwrap_or_else(|e| e.into_inner());
            CHILD.store(0, Ordering::SeqCst);
        }
        match self.child.wait() {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(1)
            }
            Err(err) => {
                eprintln!("hasp: waiting for {}: {err}", self.program);
                1
            }
        }
    }
}

/// Sends `signal` to the running command, if there is one (from any
/// thread); whether it was sent.
pub fn signal(signal: libc::c_int) -> bool {
    let _reaping = REAPING.lock().unwrap_or_else(|e| e.into_inner());
    let pid = CHILD.load(Ordering::SeqCst);
    // SAFETY: kill(2) on a child not yet reaped (REAPING held).
    pid > 0 && unsafe { libc::kill(pid, signal) } == 0
}

/// Blocks until process `pid` has exited, leaving it to be reaped.
fn wait_for_exit(pid: u32) {
    loop {
        // SAFETY: waitid writes into `info`; WNOWAIT leaves the child
        // waitable for `Child::wait`.
        let done = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if done == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
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
            action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
