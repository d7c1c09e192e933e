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

#[test]
fn default_lock_dir_is_per_user_and_created_on_first_use() {
    let home = tempfile::tempdir().expect("temp dir");
    let state = home.path().join("state");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::hasp_bin())
            .args(args)
            .env_remove("HASP_DIR")
            .env("XDG_STATE_HOME", &state)
            .env("HOME", home.path())
            .output()
            .expect("run hasp");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(
        run(&["lock", "deploy", "--client", "a"]),
        (Some(0), String::new())
    );
    assert!(state.join("hasp").join("FORMAT").is_file());
    assert_eq!(
        run(&["lock", "deploy", "--client", "b"]),
        (Some(1), "Resource already locked by 'a'\n".to_string())
    );
}

#[test]
fn hasp_dir_environment_variable_picks_the_lock_dir() {
    let locks = Locks::new();
    let out = std::process::Command::new(crate::support::hasp_bin())
        .args(["lock", "deploy", "--client", "a"])
        .env("HASP_DIR", locks.path())
        .output()
        .expect("run hasp");
    assert!(out.status.success(), "{out:?}");
    locks
        .run(&["lock", "deploy", "--client", "b"])
        .assert_refused(1, "Resource already locked by 'a'");
}

#[test]
fn bash_completes_a_subcommand_and_man_prints_roff() {
    let locks = Locks::new();
    let script = locks.ok(&["completions", "bash"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hasp.bash");
    std::fs::write(&file, script).expect("write the completion script");
    // A real interactive bash loads the script and completes `hasp lo`.
    let probe = format!(
        "source {}; COMP_WORDS=(hasp lo); COMP_CWORD=1; COMP_LINE='hasp lo'; COMP_POINT=7; \
         _hasp hasp lo hasp; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-i", "-c", &probe])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run bash");
    let words = String::from_utf8_lossy(&out.stdout);
    assert_eq!(words.trim(), "lock", "{out:?}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(
            locks.ok(&["completions", shell]).contains("hasp"),
            "{shell}"
        );
    }
    let bad = locks.run(&["completions", "tcsh"]);
    assert_eq!((bad.code, bad.stderr.lines().count()), (2, 1), "{bad:?}");
    let man = locks.ok(&["man"]);
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains(".TH hasp 1"), "{}", &man[..man.len().min(400)]);
}
