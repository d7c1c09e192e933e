//! The gocept.lockd session from its documentation, through the CLI.

use crate::support::Locks;

#[test]
fn gocept_lockd_session_byte_exact() {
    let locks = Locks::new();
    let run = locks.run(&["lock", "resource1", "--client", "client1"]);
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "", "")
    );

    let run = locks.run(&["lock", "resource1", "--client", "client2"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "Resource already locked by 'client1'\n");

    let run = locks.run(&["lock", "resource2", "--client", "client2"]);
    assert_eq!(run.code, 0, "{run:?}");

    let run = locks.run(&["unlock", "resource1", "--client", "client2"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        "Resource locked by 'client1' cannot be unlocked by 'client2'\n"
    );

    let run = locks.run(&["unlock", "resource1", "--client", "client1"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));

    let run = locks.run(&["unlock", "resource1", "--client", "client1"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "Resource not locked\n");
}
