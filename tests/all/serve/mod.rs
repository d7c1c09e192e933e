//! `hasp serve`: the HTTP daemon, through real clients on real sockets —
//! Python's `urllib` for Locker's HTTP API, Python's `xmlrpc.client` for
//! gocept.lockd's XML-RPC, raw TCP (`tests/http_client.rs`) for the JSON
//! API's edges and for requests no polite client would send.
//!
//! This module holds the harness: a running server ([`Server`]), the Python
//! clients and the assertions the tests share. The tests are in one module
//! per door (`locker`, `xmlrpc`, `v1`), then what spans the doors (`doors`,
//! `durability`), the HTTP/1.1 layer (`http`, `limits`) and operations
//! (`ops`).

mod doors;
mod durability;
mod http;
mod limits;
mod locker;
mod ops;
mod v1;
mod xmlrpc;

use crate::http_client;
use crate::support::{is_uuid_v4, now_ms, Locks, Run};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long anything may take before a test gives up: a guard against
/// hanging, not a measure of speed.
const GUARD: Duration = Duration::from_secs(60);

/// What a server has printed on stderr so far, and whether it is done.
#[derive(Default)]
struct Stderr {
    state: Mutex<(String, bool)>,
    grew: Condvar,
}

impl Stderr {
    fn text(&self) -> String {
        self.state.lock().expect("stderr lock").0.clone()
    }

    /// Waits until `what` holds for the text so far; false if the stream
    /// ended or the guard ran out first.
    fn wait_for(&self, what: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + GUARD;
        let mut state = self.state.lock().expect("stderr lock");
        loop {
            if what(&state.0) {
                return true;
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                return false;
            }
            state = self
                .grew
                .wait_timeout(state, deadline - now)
                .expect("stderr lock")
                .0;
        }
    }
}

/// A running `hasp --dir DIR [--store URL] serve --addr ADDR ...`, killed
/// when dropped.
pub(crate) struct Server {
    child: Option<Child>,
    pid: u32,
    /// The store it serves, as `/healthz` names it.
    store: String,
    /// Where to connect (loopback when the server listens on every address).
    addr: SocketAddr,
    stderr: Arc<Stderr>,
    drain: Option<JoinHandle<()>>,
}

impl Server {
    /// `hasp --dir <locks> [--store URL] serve --addr 127.0.0.1:0 EXTRA...`,
    /// once it listens.
    #[track_caller]
    pub(crate) fn start(locks: &Locks, extra: &[&str]) -> Server {
        Server::start_at(locks, "127.0.0.1:0", extra)
    }

    #[track_caller]
    fn start_at(locks: &Locks, addr: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--addr", addr];
        args.extend_from_slice(extra);
        let mut child = locks
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hasp serve");
        let pid = child.id();
        let stderr = Arc::new(Stderr::default());
        let pipe = child.stderr.take().expect("piped stderr");
        let shared = Arc::clone(&stderr);
        let drain = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            loop {
                let mut line = String::new();
                let read = pipe.read_line(&mut line);
                let mut state = shared.state.lock().expect("stderr lock");
                state.0.push_str(&line);
                let done = !matches!(read, Ok(n) if n > 0);
                state.1 = done;
                shared.grew.notify_all();
                if done {
                    return;
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            pid,
            store: locks.store().to_string(),
            addr: "127.0.0.1:1".parse().expect("placeholder"),
            stderr,
            drain: Some(drain),
        };
        const MARK: &str = "listening on http://";
        if !server.stderr.wait_for(|text| text.contains(MARK)) {
            let child = server.child.as_mut().expect("child");
            let _ = child.kill();
            let status = child.wait().expect("wait for hasp serve");
            panic!(
                "hasp {args:?} never said it was listening ({status}); stderr:\n{}",
                server.stderr.text()
            );
        }
        let text = server.stderr.text();
        let after = &text[text.find(MARK).expect("mark") + MARK.len()..];
        let shown = after.split_whitespace().next().expect("an address");
        let mut addr: SocketAddr = shown
            .parse()
            .unwrap_or_else(|e| panic!("bad address {shown:?} ({e}) in {text:?}"));
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        server.addr = addr;
        server
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits (bounded) until what the server said on stderr satisfies
    /// `what`; whether it did.
    pub(crate) fn stderr_says(&self, what: impl Fn(&str) -> bool) -> bool {
        self.stderr.wait_for(what)
    }

    /// A fresh connection, with generous timeouts as guards.
    pub(crate) fn connect(&self) -> TcpStream {
        http_client::connect(self.addr).expect("connect to hasp serve")
    }

    /// Sends `raw` on a fresh connection and reads one response. A failed
    /// write is tolerated (the server may answer and close before reading
    /// everything); only a missing response fails.
    #[track_caller]
    fn send(&self, raw: &[u8]) -> Response {
        let mut stream = self.connect();
        let wrote = stream.write_all(raw);
        let mut reader = BufReader::new(stream);
        read_response(&mut reader)
            .unwrap_or_else(|e| panic!("no response ({e}; write: {wrote:?}) to {}", show(raw)))
    }

    #[track_caller]
    fn get(&self, path: &str) -> (u16, String) {
        let got = self.send(&request("GET", path, &[], None));
        (got.status, got.body)
    }

    #[track_caller]
    pub(crate) fn post(&self, path: &str, body: &str) -> (u16, String) {
        let got = self.send(&request("POST", path, &[], Some(body)));
        (got.status, got.body)
    }

    #[track_caller]
    pub(crate) fn get_json(&self, path: &str) -> (u16, Value) {
        let got = self.send(&request("GET", path, &[], None));
        (got.status, got.json())
    }

    #[track_caller]
    pub(crate) fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let got = self.send(&request("POST", path, &[], Some(&body.to_string())));
        (got.status, got.json())
    }

    /// GETs each path in turn with Python's urllib; the status and JSON body
    /// of each.
    #[track_caller]
    fn urllib(&self, paths: &[&str]) -> Vec<(u16, Value)> {
        let urls: Vec<String> = paths.iter().map(|p| self.url(p)).collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let got = python(URLLIB, &urls);
        got.as_array()
            .expect("a list")
            .iter()
            .map(|pair| {
                let status = pair[0].as_u64().expect("a status") as u16;
                (status, pair[1].clone())
            })
            .collect()
    }

    /// Stops the server with `signal` and waits for it: its exit status and
    /// everything it printed on stderr.
    #[track_caller]
    fn stop(mut self, signal: libc::c_int) -> (ExitStatus, String) {
        let child = self.child.take().expect("running");
        // SAFETY: kill(2) on a child process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid as i32, signal) }, 0);
        let status = wait_guarded(child);
        self.drain.take().expect("drain").join().expect("drain");
        (status, self.stderr.text())
    }

    /// SIGKILL: no chance to clean up.
    pub(crate) fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill hasp serve");
        child.wait().expect("wait for hasp serve");
        self.drain.take().expect("drain").join().expect("drain");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

/// Waits for `child`; kills it and fails if the guard runs out.
#[track_caller]
fn wait_guarded(mut child: Child) -> ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait().expect("wait"));
    });
    rx.recv_timeout(GUARD).unwrap_or_else(|_| {
        // SAFETY: kill(2) on a child process this test started; its waiter
        // thread has not reaped it (it would have reported).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("pid {pid} did not exit within {GUARD:?}");
    })
}

/// Runs `cmd` to completion with piped output; kills it and fails if the
/// guard runs out.
#[track_caller]
fn finish(cmd: &mut Command) -> Run {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output().expect("wait"));
    });
    match rx.recv_timeout(GUARD) {
        Ok(out) => Run::from(out),
        Err(_) => {
            // SAFETY: kill(2) on a child process this test started and whose
            // waiter has not reported, so it is not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {GUARD:?}");
        }
    }
}

/// GETs every URL in argv with urllib; prints [[status, json body], ...].
const URLLIB: &str = r#"
import json, sys, urllib.error, urllib.request
out = []
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            out.append([r.status, json.loads(r.read())])
    except urllib.error.HTTPError as e:
        out.append([e.code, json.loads(e.read())])
print(json.dumps(out))
"#;

/// Calls [[method, params...], ...] (argv[2], JSON) through a default
/// ServerProxy on argv[1]; prints one {"result"|"fault"|"http": ...} each.
const XMLRPC: &str = r#"
import json, sys, xmlrpc.client
proxy = xmlrpc.client.ServerProxy(sys.argv[1])
out = []
for name, *params in json.loads(sys.argv[2]):
    try:
        out.append({"result": getattr(proxy, name)(*params)})
    except xmlrpc.client.Fault as f:
        out.append({"fault": [f.faultCode, f.faultString]})
    except xmlrpc.client.ProtocolError as e:
        out.append({"http": e.errcode})
print(json.dumps(out))
"#;

#[track_caller]
fn python(script: &str, args: &[&str]) -> Value {
    let run = finish(Command::new("python3").arg("-c").arg(script).args(args));
    assert_eq!(run.code, 0, "python3 {args:?}: {run:?}");
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("python3 printed no JSON ({e}): {run:?}"))
}

/// `calls` through xmlrpc.client.ServerProxy(url).
#[track_caller]
fn xmlrpc(url: &str, calls: Value) -> Vec<Value> {
    let got = python(XMLRPC, &[url, &calls.to_string()]);
    got.as_array().expect("a list").clone()
}

pub(crate) use crate::http_client::{read_response, Response};

/// An HTTP/1.1 request to `hasp.test` with `Connection: close` (and
/// Content-Length for a body).
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut all = vec![("Host", "hasp.test"), ("Connection", "close")];
    all.extend_from_slice(headers);
    http_client::request(method, target, &all, body.map(str::as_bytes))
}

/// `raw` for a failure message, shortened.
fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{:?}... ({} bytes)", &text[..at], raw.len()),
        None => format!("{text:?}"),
    }
}

/// Asserts a JSON error response: `status`, `{"error": {"code": code,
/// "message": non-empty}}`.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(
        (got.0, &got.1["error"]["code"]),
        (status, &json!(code)),
        "{got:?}"
    );
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "no message: {got:?}");
}

/// Parses `response` as a JSON error of `status` and `code`.
#[track_caller]
fn assert_error_response(response: &Response, status: u16, code: &str) {
    assert_error(&(response.status, response.json()), status, code);
}

#[track_caller]
fn healthy(server: &Server) {
    let (status, body) = server.get_json("/healthz");
    assert_eq!(status, 200, "{body}");
    assert_health(&body);
    // The store it was started on, as the harness knows it.
    assert_eq!(body["store"], server.store, "{body}");
}

/// A `/healthz` answer: `ok`, and the store the server uses (`/healthz`
/// needs no token, so the tests that call it know no more about it).
#[track_caller]
fn assert_health(body: &Value) {
    let fields = body.as_object().map(|o| o.len());
    assert!(
        body["ok"] == true
            && body["store"].as_str().is_some_and(|s| !s.is_empty())
            && fields == Some(2),
        "not a /healthz answer: {body}"
    );
}

/// The resources held, as the CLI sees them.
fn held(locks: &Locks) -> Vec<String> {
    let all = locks.json(&["status", "--json"]);
    let all = all.as_array().expect("a list").iter();
    all.map(|h| h["resource"].as_str().expect("resource").to_string())
        .collect()
}

fn token(grant: &Value) -> String {
    let token = grant["token"].as_str().unwrap_or_default();
    assert!(is_uuid_v4(token), "no UUID v4 token in {grant}");
    token.to_string()
}

/// Sleeps until the wall clock (the one the lock rules read) is past
/// `expires_ms`: a sleep past a short lease, not a synchronisation.
fn sleep_past(expires_ms: &Value) {
    let expires_ms = expires_ms
        .as_u64()
        .unwrap_or_else(|| panic!("no expiry: {expires_ms}"));
    loop {
        let now = now_ms();
        if now > expires_ms {
            return;
        }
        std::thread::sleep(Duration::from_millis(expires_ms + 1 - now));
    }
}

/// A temporary token file holding `token`, and its path.
fn token_file(token: &str) -> (tempfile::TempDir, String) {
    let secrets = tempfile::tempdir().expect("temp dir");
    let file = secrets.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("write token file");
    let file = file.to_str().expect("UTF-8 path").to_string();
    (secrets, file)
}

/// gocept.lockd's `lock(resource, client)` as xmlrpc.client sends it.
fn xmlrpc_lock_call(resource: &str, client: &str) -> String {
    format!(
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>lock</methodName>\n<params>\n\
         <param>\n<value><string>{resource}</string></value>\n</param>\n\
         <param>\n<value><string>{client}</string></value>\n</param>\n\
         </params>\n</methodCall>\n"
    )
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// Reads a response head only (the answer to a HEAD, or a `100 Continue`):
/// the status line and the headers, names in lower case.
#[track_caller]
fn read_head(reader: &mut BufReader<TcpStream>) -> (String, Vec<(String, String)>) {
    let head = http_client::read_head(reader).expect("a response head");
    (head.line, head.headers)
}
