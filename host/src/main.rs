//! The `hasp` command. Exit codes: 0 done; 1 refused by the lock rules
//! (held, not the owner, not locked, busy); 2 bad input or a broken
//! environment (invalid name, unusable directory, corrupt record, runtime).

mod cli;

fn main() {
    std::process::exit(cli::run());
}
