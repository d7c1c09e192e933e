//! Shared helpers: run the real binary in a fresh lock directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `hasp` binary cargo built for these tests.
pub fn hasp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hasp")
}

/// A fresh lock directory, removed when dropped.
pub struct Locks {
    dir: tempfile::TempDir,
}

/// What one `hasp` run did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the run failed with `code` and printed exactly `line` (plus a
    /// newline) on stderr and nothing on stdout.
    #[track_caller]
    pub fn assert_refused(&self, code: i32, line: &str) {
        assert_eq!(
            (self.code, self.stdout.as_str(), self.stderr.as_str()),
            (code, "", format!("{line}\n").as_str()),
            "{self:?}"
        );
    }

    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `hasp --dir DIR ARGS...` on any path (which may be broken on purpose).
pub fn hasp_in(dir: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(hasp_bin());
    cmd.arg("--dir").arg(dir).args(args).env_remove("HASP_DIR");
    Run::from(cmd.output().expect("run hasp"))
}

impl Locks {
    pub fn new() -> Locks {
        Locks {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `hasp --dir <this> ARGS...` command, not yet run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hasp_bin());
        cmd.arg("--dir").arg(self.path()).args(args);
        cmd.env_remove("HASP_DIR");
        cmd
    }

    /// Runs `hasp --dir <this> ARGS...` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run hasp"))
    }

    /// Runs `hasp --dir <this> ARGS...` and asserts it succeeded silently on
    /// stderr; returns its stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(
            (run.code, run.stderr.as_str()),
            (0, ""),
            "hasp {args:?}: {run:?}"
        );
        run.stdout
    }

    /// Runs a command that prints JSON (`--json`), asserts it succeeded and
    /// parses its stdout.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("hasp {args:?} printed no JSON ({e}): {stdout:?}"))
    }

    /// Every file and directory below the lock directory, sorted, relative.
    pub fn tree(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        out.push(path.strip_prefix(root).expect("below root").to_path_buf());
        if path.is_dir() && !path.is_symlink() {
            walk(root, &path, out);
        }
    }
}
