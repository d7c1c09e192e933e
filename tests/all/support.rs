//! Shared helpers: run the real binary on a fresh registry, in a lock
//! directory ([`Locks::new`]) or under a key prefix of its own on a real etcd
//! ([`Locks::on_etcd`]), and [`both!`], which runs one test body on each.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The `hasp` binary cargo built for these tests.
pub fn hasp_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hasp")
}

/// A fresh registry: a lock directory, removed when dropped, or (from
/// [`Locks::on_etcd`]) a key prefix of its own on the test process's etcd,
/// with a lock directory beside it all the same (for `run`, `who`, scripts).
pub struct Locks {
    dir: tempfile::TempDir,
    /// `etcd://127.0.0.1:PORT/PREFIX` when the registry is on etcd.
    etcd: Option<String>,
}

/// Runs one test body on both stores: `both!(fn name(locks: &Locks) {...})`
/// makes a module `name` with two tests, `name::on_disk` (a fresh lock
/// directory) and `name::on_etcd` (a fresh key prefix on the shared etcd).
/// The body sees the file's own items (`use super::*`). Attributes written
/// `etcd: #[ignore = "etcd: why"]` before `fn` apply to `on_etcd` only.
macro_rules! both {
    (
        $(#[doc = $doc:literal])*
        $(etcd: #[$etcd:meta])*
        fn $name:ident($locks:ident: &Locks) $body:block
    ) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($locks: &$crate::support::Locks) $body

            #[test]
            fn on_disk() {
                body(&$crate::support::Locks::new())
            }

            #[test]
            $(#[$etcd])*
            fn on_etcd() {
                body(&$crate::support::Locks::on_etcd())
            }
        }
    };
}
pub(crate) use both;

/// The one etcd of this test process, started by the first
/// [`Locks::on_etcd`] and shared by all of them (each under its own prefix).
///
/// A static is never dropped, so [`crate::etcd::Etcd`]'s own drop, which
/// kills the member and removes its directory, never runs for it. A reaper
/// does that instead: a small `sh` that reads its standard input, a pipe
/// whose only writer is this process (std opens pipes close-on-exec, so no
/// other child inherits it). When this process ends, however it ends (a
/// normal exit, a panic, `kill -9`), the kernel closes that end, the
/// reaper's read sees end of file, and it kills etcd (after checking by its
/// command line that the pid is still that etcd) and removes its directory.
/// The reaper runs in a process group of its own and ignores the signals a
/// terminal sends, so Ctrl-C on `cargo test` does not stop it first.
struct SharedEtcd {
    etcd: crate::etcd::Etcd,
    /// The reaper's standard input: held open for the life of the process.
    _reaper: ChildStdin,
}

/// What the reaper runs: `$1` etcd's pid, `$2` its temp dir.
const REAPER: &str = r#"trap '' INT TERM HUP QUIT
cat >/dev/null
if tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"; then
    kill -9 "$1" 2>/dev/null
    n=0
    while [ "$n" -lt 100 ] && [ -e "/proc/$1" ] &&
        ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; do
        sleep 0.05
        n=$((n + 1))
    done
fi
rm -rf -- "$2"
"#;

fn shared_etcd() -> &'static crate::etcd::Etcd {
    static SHARED: OnceLock<SharedEtcd> = OnceLock::new();
    &SHARED
        .get_or_init(|| {
            let etcd = crate::etcd::Etcd::single();
            let pid = etcd.pid(0).expect("etcd runs");
            let mut reaper = Command::new("sh");
            reaper
                .arg("-c")
                .arg(REAPER)
                .arg("hasp-test-etcd-reaper")
                .arg(pid.to_string())
                .arg(etcd.dir())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut reaper, 0);
            let mut reaper = reaper.spawn().expect("spawn the etcd reaper");
            let stdin = reaper.stdin.take().expect("piped stdin");
            // Never waited for: it outlives this process on purpose.
            drop(reaper);
            SharedEtcd {
                etcd,
                _reaper: stdin,
            }
        })
        .etcd
}

/// How much later than its `expires_ms` a lease ends on etcd: the guest
/// judges leases there with a skew margin (docs/FORMAT.md).
pub const ETCD_SKEW_MARGIN_MS: u64 = 500;

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

/// Waits for `child` (its output piped) and collects what it printed.
pub fn finished(child: Child) -> Run {
    Run::from(child.wait_with_output().expect("wait for hasp"))
}

/// Runs `hasp --dir DIR ARGS...` on any path (which may be broken on purpose).
pub fn hasp_in(dir: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(hasp_bin());
    cmd.arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("HASP_DIR")
        .env_remove("HASP_STORE");
    Run::from(cmd.output().expect("run hasp"))
}

impl Locks {
    /// A fresh lock directory.
    pub fn new() -> Locks {
        Locks {
            dir: tempfile::tempdir().expect("temp dir"),
            etcd: None,
        }
    }

    /// A fresh lock directory inside `parent` (a test's own mount, say).
    pub fn new_in(parent: &Path) -> Locks {
        Locks {
            dir: tempfile::tempdir_in(parent).expect("temp dir"),
            etcd: None,
        }
    }

    /// A fresh registry on this process's etcd (started on first use):
    /// a key prefix nobody else uses, `t<pid>-<n>`.
    pub fn on_etcd() -> Locks {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Locks {
            dir: tempfile::tempdir().expect("temp dir"),
            etcd: Some(shared_etcd().url(&prefix)),
        }
    }

    /// Another fresh registry on the same kind of store as this one.
    pub fn fresh(&self) -> Locks {
        if self.is_etcd() {
            Locks::on_etcd()
        } else {
            Locks::new()
        }
    }

    /// Whether the locks are on etcd.
    pub fn is_etcd(&self) -> bool {
        self.etcd.is_some()
    }

    /// The store, as the library names it.
    pub fn store(&self) -> hasp::Store {
        match &self.etcd {
            Some(url) => hasp::Store::Etcd(hasp::EtcdUrl::parse(url).expect("a store URL")),
            None => hasp::Store::Dir(self.path().to_path_buf()),
        }
    }

    /// Where the locks are, as errors name it: `lock directory DIR` or
    /// `store etcd://HOST:PORT/PREFIX`.
    pub fn place(&self) -> String {
        match self.store() {
            hasp::Store::Dir(dir) => format!("lock directory {}", dir.display()),
            etcd => format!("store {etcd}"),
        }
    }

    /// A fresh registry of the Rust API on these locks.
    pub fn registry(&self) -> hasp::Registry {
        hasp::Registry::open_store(&self.store()).expect("open the registry")
    }

    /// How much later than its `expires_ms` a lease ends on this store.
    pub fn lease_margin_ms(&self) -> u64 {
        if self.is_etcd() {
            ETCD_SKEW_MARGIN_MS
        } else {
            0
        }
    }

    /// Sleeps until the wall clock (the one the lock rules read) is past the
    /// end of a lease that `expires_ms` says, on this store: a sleep past a
    /// short lease, not a synchronisation.
    pub fn sleep_past(&self, expires_ms: u64) {
        let end = expires_ms + self.lease_margin_ms();
        loop {
            let now = now_ms();
            if now > end {
                return;
            }
            std::thread::sleep(Duration::from_millis(end + 1 - now));
        }
    }

    /// The lock directory: the registry's on disk, and beside the registry
    /// (for `run`, `who` and files a test makes) on etcd.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The global options that name these locks: `--dir DIR`, and
    /// `--store URL` on etcd.
    pub fn global_args(&self) -> Vec<String> {
        let mut args = vec!["--dir".to_string(), self.path().display().to_string()];
        if let Some(url) = &self.etcd {
            args.extend(["--store".to_string(), url.clone()]);
        }
        args
    }

    /// A `hasp --dir <this> [--store URL] ARGS...` command, not yet run. On
    /// etcd `$HASP_STORE` is set too, so that a `hasp` a command run by
    /// `lock -- COMMAND` starts finds the same store.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(hasp_bin());
        cmd.args(self.global_args()).args(args);
        // The daemon's log is what the tests say it is.
        for var in ["HASP_DIR", "HASP_STORE", "HASP_LOG", "RUST_LOG"] {
            cmd.env_remove(var);
        }
        if let Some(url) = &self.etcd {
            cmd.env("HASP_STORE", url);
        }
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

    /// The names in `nodes/<node>/.lock` (docs/FORMAT.md, "Layout"),
    /// sorted; empty if there is no such directory. `node` is the node's
    /// path below `nodes/`, which for plain names is the resource name.
    pub fn state_files(&self, node: &str) -> Vec<String> {
        self.disk_only("state_files");
        let lock = self.path().join("nodes").join(node).join(".lock");
        let Ok(entries) = std::fs::read_dir(lock) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every file and directory below the lock directory, sorted, relative.
    pub fn tree(&self) -> Vec<PathBuf> {
        self.disk_only("tree");
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out);
        out.sort();
        out
    }

    /// What the registry holds, to compare before and after a call that
    /// must change nothing: on disk every path below the directory (a state
    /// is a file name); on etcd every key under the prefix with its value
    /// and the revision it was last written at.
    pub fn snapshot(&self) -> Vec<String> {
        match &self.etcd {
            None => self
                .tree()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            Some(url) => {
                let prefix = hasp::EtcdUrl::parse(url).expect("a store URL").prefix;
                etcd_keys(&format!("{prefix}/"))
            }
        }
    }

    /// The states of node `node` (its path below `nodes/`): on disk the
    /// names in `nodes/<node>/.lock` ([`Locks::state_files`]); on etcd the
    /// value of the key `nodes/<node>`, if there is one.
    pub fn states(&self, node: &str) -> Vec<String> {
        match &self.etcd {
            None => self.state_files(node),
            Some(url) => {
                let prefix = hasp::EtcdUrl::parse(url).expect("a store URL").prefix;
                let key = format!("{prefix}/nodes/{node}");
                let out = shared_etcd()
                    .etcdctl()
                    .args(["get", "--print-value-only", "--", &key])
                    .output()
                    .expect("run etcdctl get");
                assert!(out.status.success(), "etcdctl get {key}: {out:?}");
                let value = String::from_utf8(out.stdout).expect("UTF-8");
                value.lines().map(str::to_string).collect()
            }
        }
    }

    /// Makes `state` the one state of node `node` (its path below `nodes/`,
    /// plain names only), by hand, as a broken or foreign writer would: on
    /// disk the one file in `nodes/<node>/.lock` (made if missing; the
    /// registry must be laid out), on etcd the value of the key
    /// `nodes/<node>` (put with etcdctl).
    pub fn plant(&self, node: &str, state: &str) {
        match &self.etcd {
            None => {
                let lock = self.path().join("nodes").join(node).join(".lock");
                std::fs::create_dir_all(&lock).expect("make the node's .lock");
                for entry in std::fs::read_dir(&lock).expect("read .lock") {
                    std::fs::remove_file(entry.expect("entry").path()).expect("remove a state");
                }
                std::fs::write(lock.join(state), b"").expect("plant the state");
            }
            Some(url) => {
                let prefix = hasp::EtcdUrl::parse(url).expect("a store URL").prefix;
                let key = format!("{prefix}/nodes/{node}");
                let out = shared_etcd()
                    .etcdctl()
                    .args(["put", "--", &key, state])
                    .output()
                    .expect("run etcdctl put");
                assert!(out.status.success(), "etcdctl put {key}: {out:?}");
            }
        }
    }

    /// Writes `line` as the registry's format, by hand: on disk the file
    /// `FORMAT` (`line` and a newline), on etcd the key `FORMAT`.
    pub fn plant_format(&self, line: &str) {
        match &self.etcd {
            None => std::fs::write(self.path().join("FORMAT"), format!("{line}\n"))
                .expect("write FORMAT"),
            Some(url) => {
                let prefix = hasp::EtcdUrl::parse(url).expect("a store URL").prefix;
                let key = format!("{prefix}/FORMAT");
                let out = shared_etcd()
                    .etcdctl()
                    .args(["put", "--", &key, line])
                    .output()
                    .expect("run etcdctl put");
                assert!(out.status.success(), "etcdctl put {key}: {out:?}");
            }
        }
    }

    /// Where the state `state` of node `node` is, as errors name it:
    /// `nodes/<node>/.lock/<state>` on disk, the key `nodes/<node>` on etcd.
    pub fn state_path(&self, node: &str, state: &str) -> String {
        if self.is_etcd() {
            format!("nodes/{node}")
        } else {
            format!("nodes/{node}/.lock/{state}")
        }
    }

    #[track_caller]
    fn disk_only(&self, what: &str) {
        assert!(
            !self.is_etcd(),
            "Locks::{what} reads the lock directory's files: a test on etcd cannot use it \
             (Locks::snapshot and Locks::states work on both stores)"
        );
    }
}

/// Every key under `prefix` on the shared etcd, sorted, each as `KEY = VALUE
/// @ MOD_REVISION`.
fn etcd_keys(prefix: &str) -> Vec<String> {
    use base64::Engine as _;
    let out = shared_etcd()
        .etcdctl()
        .args(["get", "--prefix", "-w", "json", "--", prefix])
        .output()
        .expect("run etcdctl get");
    assert!(
        out.status.success(),
        "etcdctl get --prefix {prefix}: {out:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl's JSON");
    let text = |v: &serde_json::Value| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("base64");
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut keys: Vec<String> = json["kvs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            format!(
                "{} = {} @ {}",
                text(&kv["key"]),
                text(&kv["value"]),
                kv["mod_revision"]
            )
        })
        .collect();
    keys.sort();
    keys
}

/// How many watch streams the shared etcd has opened so far (its
/// `grpc_server_started_total` for `Watch`): it grows when a waiter starts
/// watching. `None` if etcd does not say.
pub fn etcd_watches_started() -> Option<u64> {
    let endpoint = shared_etcd().endpoint(0);
    let mut stream = std::net::TcpStream::connect(&endpoint).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total{")
                && l.contains("grpc_service=\"etcdserverpb.Watch\"")
        })
        .find_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .map(|n| n as u64)
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

/// The machine's host name, as the kernel reports it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read /proc/sys/kernel/hostname")
        .trim()
        .to_string()
}

/// The script a [`Holder`] runs by default: says `held`, then keeps the lock
/// until a line (or end of file) arrives on its stdin, then says `released`.
pub const HOLD: &str = "echo held; read -r _; echo released";

/// A `hasp run ... -- sh -c SCRIPT` that holds its lock until told to stop:
/// SCRIPT's first line on stdout must be `held`, and it reads its stdin (the
/// test's pipe) to know when to finish.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    done: bool,
}

impl Holder {
    /// Starts `hasp --dir <locks> run OPTIONS... PATH -- sh -c SCRIPT` and
    /// returns once SCRIPT has printed `held`, i.e. hasp holds the lock.
    #[track_caller]
    pub fn start(locks: &Locks, options: &[&str], path: &str, script: &str) -> Holder {
        let mut args = vec!["run"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[path, "--", "sh", "-c", script]);
        let mut child = locks
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hasp run");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut holder = Holder {
            child,
            stdin,
            stdout,
            done: false,
        };
        let line = holder.line();
        if line != "held\n" {
            holder.stdin.take();
            let rest = holder.finish();
            panic!("hasp {args:?} did not hold the lock: first line {line:?}, then {rest:?}");
        }
        holder
    }

    /// The pid of the `hasp` process (the one recorded in the lock file).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line hasp records for `sh -c SCRIPT`.
    pub fn command_line(script: &str) -> String {
        format!("sh -c {script}")
    }

    /// The next line SCRIPT prints (empty at end of output).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read holder stdout");
        line
    }

    /// Lets SCRIPT go on (one line on its stdin, then end of file) and waits
    /// for hasp; returns the rest of the output and the exit code.
    pub fn release(mut self) -> Run {
        if let Some(mut stdin) = self.stdin.take() {
            // SCRIPT may already be gone (killed); then there is no reader.
            let _ = stdin.write_all(b"\n");
        }
        self.finish()
    }

    /// SCRIPT's stdin, to hand to a [`Watchdog`] (then `release` writes
    /// nothing).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin not taken yet")
    }

    /// The `hasp` process itself, e.g. to signal or kill it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits for the remaining output (until every writer, SCRIPT included,
    /// has closed it) and for hasp's exit.
    fn finish(&mut self) -> Run {
        self.stdin.take();
        let mut stdout = String::new();
        self.stdout
            .read_to_string(&mut stdout)
            .expect("read holder stdout");
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut stderr).expect("read holder stderr");
        }
        let status = self.child.wait().expect("wait for hasp run");
        self.done = true;
        Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if !self.done {
            // A failed test: do not leave the holder (or its SCRIPT) behind.
            let _ = self.child.kill();
            self.stdin.take();
            let _ = self.child.wait();
        }
    }
}

/// Returns once process `pid` is blocked in the kernel waiting for a lock on
/// `file` (a `->` line in /proc/locks). Panics if `gone` reports that the
/// waiter finished instead, or if it has not blocked after 30 s (a guard
/// against hanging, not a measure of speed).
#[track_caller]
pub fn wait_until_blocked(file: &Path, pid: u32, mut gone: impl FnMut() -> Option<String>) {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(file).expect("lock file exists").ino();
    let suffix = format!(":{inode}");
    let pid = pid.to_string();
    let guard = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let table = std::fs::read_to_string("/proc/locks").expect("read /proc/locks");
        let blocked = table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 6
                && fields[1] == "->"
                && fields[5] == pid
                && fields[6].ends_with(&suffix)
        });
        if blocked {
            return;
        }
        if let Some(how) = gone() {
            panic!("pid {pid} {how} instead of waiting for {file:?}");
        }
        assert!(
            std::time::Instant::now() < guard,
            "pid {pid} never blocked on {file:?}:\n{table}"
        );
        std::thread::yield_now();
    }
}

/// [`wait_until_blocked`] for a child process.
#[track_caller]
pub fn child_blocked(file: &Path, child: &mut Child) {
    let pid = child.id();
    wait_until_blocked(file, pid, || {
        child
            .try_wait()
            .expect("poll waiter")
            .map(|status| format!("exited ({status})"))
    });
}

/// Holds a script's stdin open until told to stop, or until 5 s have
/// passed; then closes it, so that a script blocked in `read` finishes even
/// when the event the test waits for never comes. A guard against hanging,
/// not a measure of speed.
pub struct Watchdog {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    pub fn new(stdin: ChildStdin) -> Watchdog {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let fired = matches!(
                stopped.recv_timeout(std::time::Duration::from_secs(5)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            drop(stdin);
            fired
        });
        Watchdog { stop, thread }
    }

    /// Closes the stdin now; returns whether the 5 s ran out first.
    pub fn stop(self) -> bool {
        let _ = self.stop.send(());
        self.thread.join().expect("watchdog thread")
    }
}

/// gocept.lockd's refusal naming `holder`.
pub fn already(holder: &str) -> String {
    format!("Resource already locked by '{holder}'")
}

/// Whether `s` is a UUID v4 in its lowercase 8-4-4-4-12 form.
pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The keys of a JSON object, sorted.
pub fn sorted_keys(object: &serde_json::Value) -> Vec<&str> {
    let mut keys: Vec<&str> = object
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {object}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

/// The keys of a grant as every door prints it in JSON, sorted.
pub const GRANT_KEYS: [&str; 7] = [
    "client",
    "fencing",
    "lock_children",
    "lock_parents",
    "resource",
    "since_ms",
    "token",
];

/// Whether this process runs as root (mounts, devices).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs mounted on a temporary directory for one test, unmounted when
/// dropped; `None` (saying why) where this process may not mount.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(options: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "hasp-test"])
            .arg(dir.path())
            .status();
        match mounted {
            Ok(status) if status.success() => Some(Tmpfs { dir }),
            other => {
                eprintln!("skipped: mount -t tmpfs failed here ({other:?})");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn remount(&self, options: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .status()
            .expect("mount -o remount");
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.path())
            .status();
    }
}
