//! The bare daemon: the least an HTTP lock daemon on hasp's on-disk format
//! can do per Locker cycle, run by `cargo bench --bench serve` as a row
//! beside hasp (the bench binary started again with `--bare DIR`).
//!
//! It speaks just enough of Locker's door for the bench's client
//! (`GET /canhaz/NAME?id=ID`, `GET /nowant/NAME?token=T`, keep-alive, no
//! bodies) and makes, per cycle, only the system calls the floor row counts:
//! one `fstatat` of the node's state by the name it remembers, one
//! `renameat` to the held name (the grant), one `renameat` back to the free
//! name (the release), all relative to the node's `.lock` descriptor, kept
//! open. What it leaves out is what hasp does and a real daemon needs: no
//! hierarchy (no ancestors, no children looked at), no leases, no checks of
//! names or clients, its lock state trusted from memory rather than read
//! back, one process only. So it is not a lock service; it is the ceiling
//! any daemon on this machine, this disk and this load meets: two loopback
//! HTTP exchanges and the floor's three system calls per cycle, on the same
//! network threads (a tokio multi-thread runtime, one worker per CPU, as
//! `hasp serve` has).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One resource: its `.lock` directory, open, and the state it is in.
struct Node {
    lock_dir: OwnedFd,
    /// The fencing number of the free state `<n>`.
    n: u64,
    /// The held state's token, while held.
    held: Option<String>,
}

struct Bare {
    root: PathBuf,
    nodes: Mutex<HashMap<String, Arc<Mutex<Node>>>>,
    tokens: AtomicU64,
}

/// Serves on 127.0.0.1 (a port the system picks) over `root`; prints
/// `listening on http://ADDR` on stderr, as `hasp serve` does, and serves
/// until killed.
pub fn serve(root: &Path) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bare = Arc::new(Bare {
        root: root.to_path_buf(),
        nodes: Mutex::new(HashMap::new()),
        tokens: AtomicU64::new(0),
    });
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        eprintln!("bare: listening on http://{addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, bare.clone()));
        }
    });
}

async fn connection(mut stream: tokio::net::TcpStream, bare: Arc<Bare>) {
    let mut buf = vec![0u8; 8192];
    let mut filled = 0;
    let mut out = Vec::with_capacity(256);
    loop {
        let end = loop {
            if let Some(at) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if filled == buf.len() {
                return;
            }
            match stream.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
        };
        let body = bare.answer(&buf[..end]);
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n");
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body.as_bytes());
        if stream.write_all(&out).await.is_err() {
            return;
        }
        buf.copy_within(end..filled, 0);
        filled -= end;
    }
}

impl Bare {
    /// The answer to one request head.
    fn answer(&self, head: &[u8]) -> String {
        let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
        let target = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if let Some(name) = path.strip_prefix("/canhaz/") {
            self.canhaz(name)
        } else if let Some(name) = path.strip_prefix("/nowant/") {
            let token = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or("");
            self.nowant(name, token)
        } else {
            r#"{"ok": false}"#.to_string()
        }
    }

    fn node(&self, name: &str) -> std::io::Result<Arc<Mutex<Node>>> {
        let mut nodes = self.nodes.lock().expect("nodes");
        if let Some(node) = nodes.get(name) {
            return Ok(node.clone());
        }
        let lock = self.root.join(name).join(".lock");
        std::fs::create_dir_all(&lock)?;
        std::fs::File::create(lock.join("1"))?;
        let lock_dir = OwnedFd::from(std::fs::File::open(&lock)?);
        let node = Arc::new(Mutex::new(Node {
            lock_dir,
            n: 1,
            held: None,
        }));
        nodes.insert(name.to_string(), node.clone());
        Ok(node)
    }

    fn canhaz(&self, name: &str) -> String {
        let Ok(node) = self.node(name) else {
            return r#"{"ok": false}"#.to_string();
        };
        let mut node = node.lock().expect("node");
        if node.held.is_some() {
            return r#"{"ok": false, "lockedBy": "?"}"#.to_string();
        }
        let free = c(&node.n.to_string());
        let fd = node.lock_dir.as_raw_fd();
        // The read that precedes a grant.
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        if unsafe { libc::fstatat(fd, free.as_ptr(), stat.as_mut_ptr(), 0) } != 0 {
            return r#"{"ok": false}"#.to_string();
        }
        let token = format!(
            "{:032x}",
            self.tokens.fetch_add(1, Ordering::Relaxed) ^ 0x5eed_0000_0000
        );
        let held = c(&format!("{}+{token}", node.n + 1));
        if unsafe { libc::renameat(fd, free.as_ptr(), fd, held.as_ptr()) } != 0 {
            return r#"{"ok": false}"#.to_string();
        }
        let answer = format!(r#"{{"ok": true, "token": "{token}"}}"#);
        node.held = Some(token);
        answer
    }

    fn nowant(&self, name: &str, token: &str) -> String {
        let Ok(node) = self.node(name) else {
            return r#"{"ok": false}"#.to_string();
        };
        let mut node = node.lock().expect("node");
        if node.held.as_deref() != Some(token) {
            return r#"{"ok": false}"#.to_string();
        }
        let fd = node.lock_dir.as_raw_fd();
        let held = c(&format!("{}+{token}", node.n + 1));
        let free = c(&(node.n + 1).to_string());
        if unsafe { libc::renameat(fd, held.as_ptr(), fd, free.as_ptr()) } != 0 {
            return r#"{"ok": false}"#.to_string();
        }
        node.n += 1;
        node.held = None;
        r#"{"ok": true}"#.to_string()
    }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in a state name")
}
