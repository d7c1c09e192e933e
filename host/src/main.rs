//! The `hasp` command. Exit codes: 0 done; 1 refused by the lock rules
//! (held, not the owner, not locked, busy, lock file held past the timeout);
//! 2 bad input or a broken environment (invalid name, unusable directory,
//! corrupt record, runtime). `hasp run` exits with its command's code (126:
//! cannot run it, 127: not found, 128+N: killed by signal N).

mod child;
mod cli;

fn main() {
    std::process::exit(cli::run());
}
