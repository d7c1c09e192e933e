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
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
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
