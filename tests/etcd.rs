//! Real etcd servers for hasp's tests and benches: a cluster of one or more
//! `etcd` processes (the Debian package `etcd-server`, 3.4.x), each with a
//! data directory of its own in a temp directory, listening on loopback
//! only, started on ports nobody else holds and stopped when the [`Etcd`] is
//! dropped. No test depends on an etcd that happens to be running.
//!
//! ```ignore
//! let mut etcd = Etcd::cluster(3);
//! hasp(&["--store", &etcd.url("team-a"), "lock", "deploy", "--client", "me"]);
//! let leader = etcd.leader();
//! etcd.kill(leader);              // kill -9
//! etcd.wait_for_leader();         // the other two elected one of them
//! etcd.restart(leader);           // same data dir, same ports; healthy again
//! ```
//!
//! **Ports.** etcd 3.4 cannot listen on port 0 and say which port it got, so
//! the harness asks the kernel for free ones (binds `127.0.0.1:0` with std,
//! reads the port, closes the socket) and starts etcd on them. Another
//! process may take such a port in between; then etcd exits with "address
//! already in use", and the whole cluster is started again on fresh ports and
//! fresh data dirs (at most [`START_ATTEMPTS`] times).
//!
//! **Readiness** is asked, never slept for: a member is ready when its own
//! process (by pid, through `/proc`: Linux only) holds the listening sockets
//! on both its ports, so that no other process's server can answer for it,
//! and a `GET /health` on its client port says `{"health":"true"}`, which
//! etcd answers only once the cluster has a leader. The harness polls that
//! every [`POLL`] until [`DEADLINE`]; if a member exits or never gets ready,
//! it panics with the tail of the member's log.
//!
//! **Timing.** Members heartbeat every [`HEARTBEAT_MS`] and call an election
//! after [`ELECTION_MS`] without one (etcd's defaults are 100 and 1000), so
//! that a killed leader is replaced in well under a second or two. Writes are
//! fsynced as in production (etcd 3.4 has no `--unsafe-no-fsync`).
//!
//! **Logs.** Each member logs (zap, JSON lines) to `etcd.log` beside its data
//! dir, and its stdout and stderr go to `stderr.log`: nothing reaches the
//! terminal. [`Etcd::log_tail`] reads them; when a test panics while an
//! [`Etcd`] is alive, its drop prints every member's log tail to stderr.
//!
//! A test process killed with SIGKILL leaves its etcd processes running (no
//! drop runs); anything else (a passing or panicking test) stops them.
//!
//! Included by path (`#[path = "../etcd.rs"] mod etcd;`) from `tests/all/`
//! and from the benches; each uses a part of it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The members' heartbeat interval (`--heartbeat-interval`), milliseconds.
pub const HEARTBEAT_MS: u32 = 50;

/// The members' election timeout (`--election-timeout`), milliseconds: a
/// follower that hears no leader for this long (randomised up to twice as
/// long) calls an election. etcd wants at least 5 heartbeats.
pub const ELECTION_MS: u32 = 500;

/// How long a member may take to become healthy, or a cluster to agree on a
/// leader: a guard against hanging, not a measure of speed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How often readiness conditions are asked again while waiting.
pub const POLL: Duration = Duration::from_millis(10);

/// How many times a cluster is started on fresh ports when a port it was
/// given turned out to be taken.
pub const START_ATTEMPTS: usize = 10;

/// Whether `etcd` and `etcdctl` can be run (both on `PATH`): `etcd
/// --version` and `etcdctl version` succeed.
pub fn available() -> bool {
    [("etcd", "--version"), ("etcdctl", "version")]
        .iter()
        .all(|(bin, arg)| {
            Command::new(bin)
                .arg(arg)
                .env("ETCDCTL_API", "3")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
}

/// Panics with what to install unless [`available`].
fn require() {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    assert!(
        *AVAILABLE.get_or_init(available),
        "etcd is not installed: these tests run real etcd servers (`etcd` and `etcdctl` 3.4 on \
         PATH); .ci/run installs them: apt-get install etcd-server etcd-client"
    );
}

/// One member: its name, its ports, its directory and, while it runs, its
/// process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Holds `data/` (etcd's data dir), `etcd.log` and `stderr.log`.
    dir: PathBuf,
    child: Option<Child>,
}

impl Member {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn stderr_file(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
}

/// Why members did not become ready.
enum NotReady {
    /// A member could not listen on a port it was given: try fresh ones.
    PortTaken(String),
    /// Anything else, described with the members' log tails.
    Failed(String),
}

/// A running etcd cluster of one or more members (see the module docs).
/// Dropping it kills every member and removes their directories.
pub struct Etcd {
    members: Vec<Member>,
    /// `--initial-cluster-token`, unique to this cluster.
    token: String,
    /// Flags given to every member after the harness's own.
    extra: Vec<String>,
    /// How many starts it took to find free ports (1 if the first worked).
    attempts: usize,
    /// Removed on drop, after the members are killed.
    root: tempfile::TempDir,
}

impl Etcd {
    /// One member.
    pub fn single() -> Etcd {
        Etcd::start(1, &[])
    }

    /// `n` members (3 for a cluster that survives the loss of one).
    pub fn cluster(n: usize) -> Etcd {
        Etcd::start(n, &[])
    }

    /// `n` members, each also given the flags `extra` (for instance
    /// `["--max-txn-ops", "16"]`), after the harness's own flags.
    pub fn start(n: usize, extra: &[&str]) -> Etcd {
        Etcd::start_with_ports(n, extra, None)
    }

    /// [`Etcd::start`], whose first attempt uses the given `(client, peer)`
    /// ports, one pair a member, instead of free ones: for the harness's own
    /// test of its retry on a taken port.
    pub fn start_with_ports(n: usize, extra: &[&str], first: Option<&[(u16, u16)]>) -> Etcd {
        require();
        assert!(n >= 1, "an etcd cluster needs at least one member");
        let mut refused = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let ports = match first {
                Some(ports) if attempt == 1 => {
                    assert_eq!(ports.len(), n, "one (client, peer) pair a member");
                    ports.to_vec()
                }
                _ => free_ports(n),
            };
            let mut etcd = Etcd::spawn_new(&ports, extra, attempt);
            let all: Vec<usize> = (0..n).collect();
            match etcd.await_ready(&all) {
                Ok(()) => return etcd,
                Err(NotReady::PortTaken(why)) => refused.push(why),
                Err(NotReady::Failed(why)) => {
                    etcd.stop();
                    panic!("etcd did not start: {why}");
                }
            }
            // Dropping `etcd` kills the members that did start and removes
            // the data dirs: the next attempt is a new cluster.
        }
        panic!(
            "etcd: no free ports in {START_ATTEMPTS} attempts; each time a port was taken:\n{}",
            refused.join("\n")
        );
    }

    /// A fresh temp dir and `ports.len()` members in it, spawned but not
    /// waited for.
    fn spawn_new(ports: &[(u16, u16)], extra: &[&str], attempt: usize) -> Etcd {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let root = tempfile::Builder::new()
            .prefix("hasp-etcd-")
            .tempdir()
            .expect("temp dir for etcd");
        let token = format!(
            "hasp-test-{}-{}-{attempt}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| {
                let name = format!("m{i}");
                let dir = root.path().join(&name);
                std::fs::create_dir(&dir).expect("member dir");
                Member {
                    name,
                    client_port,
                    peer_port,
                    dir,
                    child: None,
                }
            })
            .collect();
        let mut etcd = Etcd {
            members,
            token,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            attempts: attempt,
            root,
        };
        for i in 0..etcd.members.len() {
            etcd.spawn(i);
        }
        etcd
    }

    /// Starts member `i`'s process (its data dir may exist: then etcd
    /// ignores the `--initial-*` flags and rejoins as the member it was).
    fn spawn(&mut self, i: usize) {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(m.data_dir())
            .arg("--listen-client-urls")
            .arg(m.client_url())
            .arg("--advertise-client-urls")
            .arg(m.client_url())
            .arg("--listen-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(m.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--heartbeat-interval")
            .arg(HEARTBEAT_MS.to_string())
            .arg("--election-timeout")
            .arg(ELECTION_MS.to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg(m.log_file())
            .args(&self.extra);
        // etcd reads any ETCD_* variable as a flag: only ours count.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(var);
            }
        }
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(m.stderr_file())
            .expect("open etcd's stderr.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup stderr.log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn etcd: {e}"));
        self.members[i].child = Some(child);
    }

    /// Waits until every member in `which` is ready (module docs), or says
    /// why not.
    fn await_ready(&mut self, which: &[usize]) -> Result<(), NotReady> {
        let deadline = Instant::now() + DEADLINE;
        let mut pending: Vec<usize> = which.to_vec();
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                let m = &mut self.members[i];
                let child = m.child.as_mut().expect("member was started");
                if let Some(status) = child.try_wait().expect("poll etcd") {
                    m.child = None;
                    let log = self.log_tail(i, 20);
                    let why = format!(
                        "member {i} ({}, client port {}, peer port {}) exited ({status})",
                        self.members[i].name,
                        self.members[i].client_port,
                        self.members[i].peer_port
                    );
                    return Err(if log.contains("address already in use") {
                        NotReady::PortTaken(why)
                    } else {
                        NotReady::Failed(format!("{why}:\n{log}"))
                    });
                }
                let pid = child.id();
                let ready = owns_listener(pid, m.client_port)
                    && owns_listener(pid, m.peer_port)
                    && healthy(m.client_port);
                if !ready {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = pending
                    .iter()
                    .map(|&i| format!("member {i}:\n{}", self.log_tail(i, 20)))
                    .collect();
                return Err(NotReady::Failed(format!(
                    "members {pending:?} not healthy after {DEADLINE:?}:\n{}",
                    logs.join("\n")
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The temp dir holding every member's directory (`m0/`, `m1/`, ...,
    /// each with `data/`, `etcd.log` and `stderr.log`); removed on drop.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Member `i`'s process id, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The members whose process runs, by index.
    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect()
    }

    /// How many starts it took to find free ports (1: the first one).
    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// Every member's client endpoint, `127.0.0.1:PORT`, in member order,
    /// killed members included.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `i`'s client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Member `i`'s peer port.
    pub fn peer_port(&self, i: usize) -> u16 {
        self.members[i].peer_port
    }

    /// hasp's store URL for this cluster and key prefix:
    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,.../PREFIX`, or without `/PREFIX`
    /// when `prefix` is empty.
    pub fn url(&self, prefix: &str) -> String {
        let hosts = self.endpoints().join(",");
        if prefix.is_empty() {
            format!("etcd://{hosts}")
        } else {
            format!("etcd://{hosts}/{prefix}")
        }
    }

    /// An `etcdctl` command (v3 API) with `--endpoints` set to every
    /// member, not yet run; add the subcommand.
    pub fn etcdctl(&self) -> Command {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.etcdctl_on(&all)
    }

    /// An `etcdctl` command (v3 API) talking to the members `which` only.
    pub fn etcdctl_on(&self, which: &[usize]) -> Command {
        let endpoints: Vec<String> = which
            .iter()
            .map(|&i| self.members[i].client_url())
            .collect();
        let mut cmd = Command::new("etcdctl");
        // etcdctl reads any ETCDCTL_* variable as a flag: only ours count.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("ETCDCTL_") {
                cmd.env_remove(var);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")));
        cmd
    }

    /// The index of the leader, once every running member names the same
    /// leader and that leader is a running member of this cluster (polled
    /// until [`DEADLINE`]; panics with the members' answers after it). Right
    /// after a [`kill`](Etcd::kill) of the leader this waits for the
    /// election.
    pub fn leader(&self) -> usize {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let running = self.running();
            let statuses: Vec<Option<(u64, u64)>> = running
                .iter()
                .map(|&i| status(self.members[i].client_port))
                .collect();
            if let Some(i) = agreed_leader(&running, &statuses) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "etcd: running members {running:?} agreed on no running leader after \
                 {DEADLINE:?}; (member id, leader id) each: {statuses:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// [`leader`](Etcd::leader), by the name that says what it is for: after
    /// a kill, waits until the remaining members agree on a leader among
    /// them, and returns it.
    pub fn wait_for_leader(&self) -> usize {
        self.leader()
    }

    /// Kills member `i` with SIGKILL (`kill -9`) and reaps it. Its data dir
    /// and ports stay, for [`restart`](Etcd::restart).
    pub fn kill(&mut self, i: usize) {
        let mut child = self.members[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("etcd member {i} is not running"));
        // Child::kill is SIGKILL on Unix.
        child.kill().expect("kill -9 etcd");
        child.wait().expect("reap etcd");
    }

    /// Kills every running member (SIGKILL) and reaps them.
    pub fn stop(&mut self) {
        for i in self.running() {
            self.kill(i);
        }
    }

    /// Starts killed member `i` again, with its data dir and ports, and
    /// waits until it is healthy, which needs a quorum of members running
    /// (after [`stop`](Etcd::stop), use [`restart_all`](Etcd::restart_all)).
    /// Panics if it does not get healthy, also if another process took one
    /// of its ports meanwhile: a member cannot move.
    pub fn restart(&mut self, i: usize) {
        self.restart_members(&[i]);
    }

    /// Starts every killed member again and waits until all are healthy.
    pub fn restart_all(&mut self) {
        let stopped: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_none())
            .collect();
        self.restart_members(&stopped);
    }

    fn restart_members(&mut self, which: &[usize]) {
        for &i in which {
            assert!(
                self.members[i].child.is_none(),
                "etcd member {i} is still running"
            );
            self.spawn(i);
        }
        let result = self.await_ready(which);
        if let Err(NotReady::PortTaken(why) | NotReady::Failed(why)) = result {
            panic!("etcd members {which:?} did not restart: {why}");
        }
    }

    /// The last `lines` lines of member `i`'s log, then what it printed on
    /// stdout and stderr, if anything (its first and last `lines` lines:
    /// etcd says what is wrong with its flags before a long usage text).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let m = &self.members[i];
        let mut out = tail(&m.log_file(), lines);
        let printed = head_and_tail(&m.stderr_file(), lines);
        if !printed.is_empty() {
            out.push_str("-- stdout/stderr:\n");
            out.push_str(&printed);
        }
        out
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.running().is_empty() {
            for i in 0..self.members.len() {
                eprintln!(
                    "-- etcd member {i} (client {}, peer port {}), the end of its log:\n{}",
                    self.endpoint(i),
                    self.members[i].peer_port,
                    self.log_tail(i, 30)
                );
            }
        }
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // `root` is removed after this.
    }
}

/// `n` pairs of (client, peer) ports that were free a moment ago: all `2n`
/// sockets are bound before any is closed, so the ports are distinct.
fn free_ports(n: usize) -> Vec<(u16, u16)> {
    let listeners: Vec<TcpListener> = (0..2 * n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect();
    ports.chunks(2).map(|p| (p[0], p[1])).collect()
}

/// `ETCD_UNSUPPORTED_ARCH` for this machine: etcd 3.4 refuses to run on
/// anything but amd64 and ppc64le unless it names the (Go) architecture.
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "x86" => Some("386"),
        "powerpc64" => Some("ppc64le"),
        "loongarch64" => Some("loong64"),
        other => Some(other),
    }
}

/// Whether process `pid` holds a socket listening on TCP `port` (any local
/// address), by the socket inodes in `/proc/net/tcp` and `/proc/PID/fd`.
fn owns_listener(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let suffix = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A is LISTEN), ..., inode
            (f.len() > 9 && f[1].ends_with(&suffix) && f[3] == "0A")
                .then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| Path::new(i) == target))
    })
}

/// Whether etcd on `port` answers `GET /health` with `"health":"true"`.
fn healthy(port: u16) -> bool {
    http(port, "GET", "/health", "")
        .is_some_and(|(code, body)| code == 200 && body.contains(r#""health":"true""#))
}

/// `(own member id, leader's member id)` from the member on `port`, by the
/// gRPC gateway's `/v3/maintenance/status` (ids are decimal strings there;
/// the leader is absent, i.e. 0, when the member knows none).
fn status(port: u16) -> Option<(u64, u64)> {
    let (code, body) = http(port, "POST", "/v3/maintenance/status", "{}")?;
    if code != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let id = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
    let member = id(&json["header"]["member_id"])?;
    let leader = if json["leader"].is_null() {
        0
    } else {
        id(&json["leader"])?
    };
    Some((member, leader))
}

/// The index (in `running`) of the member every one of `statuses` names as
/// leader, if they all answered, agree, and the leader is one of them.
fn agreed_leader(running: &[usize], statuses: &[Option<(u64, u64)>]) -> Option<usize> {
    let answers: Vec<(u64, u64)> = statuses.iter().copied().collect::<Option<_>>()?;
    let leader = answers.first()?.1;
    if leader == 0 || answers.iter().any(|&(_, l)| l != leader) {
        return None;
    }
    let at = answers.iter().position(|&(member, _)| member == leader)?;
    Some(running[at])
}

/// One HTTP/1.0 request to `127.0.0.1:port` (no chunked answers, the
/// connection closes after it): the status code and the body, or `None` on
/// any failure to connect, send or read.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The last `lines` lines of `file` ("" if it cannot be read).
fn tail(file: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    joined(&all[all.len().saturating_sub(lines)..])
}

/// The first and the last `lines` lines of `file`, all of it if that is no
/// more ("" if it cannot be read).
fn head_and_tail(file: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    if all.len() <= 2 * lines {
        return joined(&all);
    }
    let skipped = format!("[... {} lines ...]", all.len() - 2 * lines);
    let mut kept = all[..lines].to_vec();
    kept.push(&skipped);
    kept.extend_from_slice(&all[all.len() - lines..]);
    joined(&kept)
}

/// `lines`, each ended by a newline.
fn joined(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}
