//! The `hasp` command. Exit codes: 0 done; 1 refused by the lock rules
//! (held, not the owner, not locked, busy, lock file held past the timeout);
//! 2 bad input or a broken environment (invalid name, unusable directory,
//! corrupt lock state, runtime). `hasp run` and `hasp lock RES -- CMD` exit
//! with their command's code (126: cannot run it, 127: not found, 128+N:
//! killed by signal N); `hasp lock RES -- CMD` exits 3 when the lock was lost
//! while the command ran ([`hold::LOST`]).

mod child;
mod cli;
mod hold;
mod logs;
mod systemd;

fn main() {
    raise_open_file_limit();
    std::process::exit(cli::run());
}

/// Lets this process open as many files as the hard limit allows: each
/// guest instance keeps some lock directories open, and `hasp serve` runs
/// several (the soft limit is often 1024).
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
