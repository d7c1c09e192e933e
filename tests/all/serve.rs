//! `hasp serve`: the HTTP daemon, through real clients on real sockets —
//! Python's `urllib` for Locker's HTTP API, Python's `xmlrpc.client` for
//! gocept.lockd's XML-RPC, raw TCP for the JSON API's edges and for requests
//! no polite client would send.

use crate::http_client;
use crate::support::{already, is_uuid_v4, now_ms, sorted_keys, Locks, Run, Tmpfs, GRANT_KEYS};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
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

/// A running `hasp --dir DIR serve --addr ADDR ...`, killed when dropped.
pub(crate) struct Server {
    child: Option<Child>,
    pid: u32,
    /// Where to connect (loopback when the server listens on every address).
    addr: SocketAddr,
    stderr: Arc<Stderr>,
    drain: Option<JoinHandle<()>>,
}

impl Server {
    /// `hasp --dir <locks> serve --addr 127.0.0.1:0 EXTRA...`, once it listens.
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

/// POSTs argv[2] to argv[1] with urllib and parses the answer with
/// xmlrpc.client.loads; prints {"status", "result"|"fault"}.
const XMLRPC_RAW: &str = r#"
import json, sys, urllib.error, urllib.request, xmlrpc.client
req = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(),
                             headers={"Content-Type": "text/xml"})
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code}))
    sys.exit(0)
try:
    params, method = xmlrpc.client.loads(body)
    print(json.dumps({"status": status, "result": list(params)}))
except xmlrpc.client.Fault as f:
    print(json.dumps({"status": status, "fault": [f.faultCode, f.faultString]}))
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
    assert_eq!(server.get_json("/healthz"), (200, json!({"ok": true})));
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

// ---------------------------------------------------------------- Locker

#[test]
fn locker_canhaz_dohaz_nowant_through_urllib() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let wrong = "00000000-0000-4000-8000-000000000000";
    let got = server.urllib(&[
        "/canhaz/deploy/prod",
        "/canhaz/deploy/prod",
        "/dohaz/deploy/prod",
        "/canhaz/web?id=alice",
        "/canhaz/web?id=bob",
        "/dohaz/web",
        "/dohaz/free",
        &format!("/nowant/deploy/prod?token={wrong}"),
        "/canhaz/my%20app/caf%C3%A9?id=x",
    ]);
    assert_eq!(got.len(), 9);
    let (status, grant) = &got[0];
    assert_eq!(*status, 200, "{grant}");
    assert_eq!(sorted_keys(grant), ["fencing", "ok", "token"]);
    assert_eq!((&grant["ok"], &grant["fencing"]), (&json!(true), &json!(1)));
    let anonymous = token(grant);
    assert_eq!(got[1], (200, json!({"ok": false, "lockedBy": "?"})));
    assert_eq!(got[2], (200, json!({"lockedBy": "?"})));
    assert_eq!((got[3].0, &got[3].1["ok"]), (200, &json!(true)));
    let alices = token(&got[3].1);
    // The holder's id, never the requester's.
    assert_eq!(got[4], (200, json!({"ok": false, "lockedBy": "alice"})));
    assert_eq!(got[5], (200, json!({"lockedBy": "alice"})));
    assert_eq!(got[6], (200, json!({"lockedBy": null})));
    assert_eq!(got[7], (200, json!({"ok": false})));
    assert_eq!((got[8].0, &got[8].1["ok"]), (200, &json!(true)));

    // The paths are the resource names, percent-decoded.
    assert_eq!(
        locks.json(&["status", "deploy/prod", "--json"])["client"],
        Value::Null
    );
    assert_eq!(locks.json(&["status", "web", "--json"])["client"], "alice");
    assert_eq!(
        locks.json(&["status", "my app/café", "--json"])["client"],
        "x"
    );

    let got = server.urllib(&[
        &format!("/nowant/deploy/prod?token={alices}"),
        &format!("/nowant/deploy/prod?token={anonymous}"),
        "/dohaz/deploy/prod",
        &format!("/nowant/deploy/prod?token={anonymous}"),
    ]);
    assert_eq!(
        got,
        [
            (200, json!({"ok": false})),
            (200, json!({"ok": true})),
            (200, json!({"lockedBy": null})),
            (200, json!({"ok": false})),
        ]
    );
    assert_eq!(held(&locks), ["my app/café", "web"]);
}

#[test]
fn locker_hierarchy_and_flag_spellings() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let got = server.urllib(&[
        "/canhaz/foo/bar?id=c1",
        "/canhaz/foo?id=c2",
        "/canhaz/foo/zip?id=c3",
    ]);
    assert_eq!(got[0].1["ok"], true, "{got:?}");
    assert_eq!(got[1], (200, json!({"ok": false, "lockedBy": "c1"})));
    assert_eq!(got[2].1["ok"], true, "{got:?}");

    for (i, no) in ["False", "false", "0", "no"].into_iter().enumerate() {
        // A child taken with lockParents=no lets its parent be locked; a
        // parent taken with lockChildren=no lets its children be locked.
        let got = server.urllib(&[
            &format!("/canhaz/p{i}/child?id=kid&lockParents={no}"),
            &format!("/canhaz/p{i}?id=parent"),
            &format!("/canhaz/c{i}?id=parent&lockChildren={no}"),
            &format!("/canhaz/c{i}/child?id=kid"),
        ]);
        for (status, answer) in &got {
            assert_eq!(
                (*status, &answer["ok"]),
                (200, &json!(true)),
                "{no}: {got:?}"
            );
        }
        let child = locks.json(&["status", &format!("p{i}/child"), "--json"]);
        assert_eq!(child["lock_parents"], false, "{no}");
        assert_eq!(child["lock_children"], true, "{no}");
    }
    for (i, yes) in ["True", "true", "1", "yes"].into_iter().enumerate() {
        let got = server.urllib(&[
            &format!("/canhaz/t{i}/child?id=kid&lockParents={yes}&lockChildren={yes}"),
            &format!("/canhaz/t{i}?id=parent"),
        ]);
        assert_eq!(got[0].1["ok"], true, "{yes}: {got:?}");
        assert_eq!(
            got[1],
            (200, json!({"ok": false, "lockedBy": "kid"})),
            "{yes}"
        );
    }

    // A flag that is neither: a JSON error, and nothing is locked.
    let before = held(&locks);
    for bad in [
        "/canhaz/bad?lockParents=maybe",
        "/canhaz/bad?lockChildren=Nope",
    ] {
        let got = server.urllib(&[bad]);
        assert_error(&got[0], 400, "invalid-input");
    }
    // So are bad resource names.
    for bad in [
        "/canhaz/a/../b",
        "/canhaz/a//b",
        "/canhaz/",
        "/canhaz/a%00b",
    ] {
        assert_error(&server.get_json(bad), 400, "invalid-input");
    }
    assert_eq!(held(&locks), before);
    assert_eq!(
        server.get_json("/dohaz/bad"),
        (200, json!({"lockedBy": null}))
    );
}

// ---------------------------------------------------------- gocept.lockd

#[test]
fn gocept_lockd_session_through_xmlrpc_client_on_rpc2_and_root() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let session = json!([
        ["lock", "resource1", "client1"],
        ["lock", "resource1", "client2"],
        ["lock", "resource2", "client2"],
        ["unlock", "resource1", "client2"],
        ["unlock", "resource1", "client1"],
        ["unlock", "resource1", "client1"],
        ["unlock", "resource2", "client2"],
    ]);
    let expected = [
        json!({"result": true}),
        json!({"fault": [1, "Resource already locked by 'client1'"]}),
        json!({"result": true}),
        json!({"fault": [1, "Resource locked by 'client1' cannot be unlocked by 'client2'"]}),
        json!({"result": true}),
        json!({"fault": [1, "Resource not locked"]}),
        json!({"result": true}),
    ];
    for path in ["/RPC2", "/"] {
        assert_eq!(
            xmlrpc(&server.url(path), session.clone()),
            expected,
            "{path}"
        );
        assert_eq!(held(&locks), Vec::<String>::new(), "{path}");
    }
    // The locks are the CLI's locks, under the same names.
    assert_eq!(
        xmlrpc(
            &server.url("/RPC2"),
            json!([["lock", "resource1", "client1"]])
        ),
        [json!({"result": true})]
    );
    locks
        .run(&["lock", "resource1", "--client", "client2"])
        .assert_refused(1, &already("client1"));
}

#[test]
fn xmlrpc_errors_are_faults_not_dropped_connections() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let got = xmlrpc(
        &server.url("/RPC2"),
        json!([
            ["system.listMethods"],
            ["no_such_method", "a", "b"],
            ["lock", "only-a-resource"],
            ["lock", "r", "c", "extra"],
            ["unlock"],
        ]),
    );
    let methods = got[0]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{got:?}"));
    for name in ["lock", "unlock"] {
        assert!(methods.contains(&json!(name)), "{name} not in {got:?}");
    }
    assert_eq!(got[1]["fault"][0], -32601, "{got:?}");
    for bad_params in &got[2..] {
        assert_eq!(bad_params["fault"][0], -32602, "{got:?}");
    }

    // Malformed XML, parsed by xmlrpc.client.loads: a methodResponse with
    // a fault, in an HTTP 200.
    for (path, body) in [
        (
            "/RPC2",
            "<?xml version='1.0'?><methodCall><methodName>lock</methodName><params>",
        ),
        ("/", "this is not XML"),
        ("/RPC2", ""),
    ] {
        let got = python(XMLRPC_RAW, &[&server.url(path), body]);
        assert_eq!(
            (&got["status"], &got["fault"][0]),
            (&json!(200), &json!(-32700)),
            "{path} {body:?}: {got}"
        );
    }
    healthy(&server);
    assert_eq!(held(&locks), Vec::<String>::new());
}

// ---------------------------------------------------------------- /v1

#[test]
fn v1_lock_and_unlock_with_fencing_and_refusals() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let (status, grant) = server.post_json(
        "/v1/lock",
        &json!({"resource": "/db/main/", "client": "ci-1"}),
    );
    assert_eq!(status, 200, "{grant}");
    assert_eq!(sorted_keys(&grant), GRANT_KEYS);
    assert_eq!(grant["resource"], "db/main");
    assert_eq!(grant["client"], "ci-1");
    assert_eq!(grant["fencing"], 1);
    assert_eq!(
        (&grant["lock_parents"], &grant["lock_children"]),
        (&json!(true), &json!(true))
    );
    token(&grant);
    let shown = locks.json(&["status", "db/main", "--json"]);
    assert_eq!(
        (&shown["fencing"], &shown["since_ms"]),
        (&grant["fencing"], &grant["since_ms"])
    );

    let got = server.post_json(
        "/v1/lock",
        &json!({"resource": "db/main/x", "client": "ci-2"}),
    );
    assert_error(&got, 409, "already-locked");
    assert_eq!(got.1["error"]["holder"], "ci-1");
    let got = server.post_json(
        "/v1/unlock",
        &json!({"resource": "db/main", "client": "ci-2"}),
    );
    assert_error(&got, 403, "not-owner");
    assert_eq!(got.1["error"]["holder"], "ci-1");

    let (status, released) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "db/main", "client": "ci-1"}),
    );
    assert_eq!(status, 200, "{released}");
    let mut expected = grant.clone();
    expected.as_object_mut().expect("object").remove("token");
    assert_eq!(released, expected);
    let got = server.post_json(
        "/v1/unlock",
        &json!({"resource": "db/main", "client": "ci-1"}),
    );
    assert_error(&got, 404, "not-locked");

    // Fencing grows per resource; an anonymous lock is released by token.
    let (status, again) = server.post_json(
        "/v1/lock",
        &json!({"resource": "db/main", "lock_parents": false, "lock_children": false, "wait_ms": 0}),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (&again["client"], &again["fencing"]),
        (&Value::Null, &json!(2))
    );
    assert_eq!(
        (&again["lock_parents"], &again["lock_children"]),
        (&json!(false), &json!(false))
    );
    let got = server.post_json(
        "/v1/lock",
        &json!({"resource": "db/main", "client": "ci-2"}),
    );
    assert_eq!(got.1["error"]["holder"], "?", "{got:?}");
    let wrong = "00000000-0000-4000-8000-000000000000";
    let got = server.post_json(
        "/v1/unlock",
        &json!({"resource": "db/main", "token": wrong}),
    );
    assert_error(&got, 403, "not-owner");
    let (status, released) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "db/main", "token": token(&again)}),
    );
    assert_eq!(
        (status, &released["fencing"]),
        (200, &json!(2)),
        "{released}"
    );
    assert_eq!(locks.json(&["status", "db/main", "--json"]), Value::Null);
}

#[test]
fn v1_status_and_list_with_prefix() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    assert_eq!(server.get_json("/v1/list"), (200, json!({"locks": []})));
    for (resource, client) in [
        ("b", "two"),
        ("a/y", "one"),
        ("a/x", "one"),
        ("ab", "three"),
    ] {
        let (status, grant) =
            server.post_json("/v1/lock", &json!({"resource": resource, "client": client}));
        assert_eq!(status, 200, "{resource}: {grant}");
    }
    let (status, all) = server.get_json("/v1/list");
    assert_eq!(status, 200, "{all}");
    let names: Vec<&str> = all["locks"]
        .as_array()
        .unwrap_or_else(|| panic!("{all}"))
        .iter()
        .map(|h| h["resource"].as_str().expect("resource"))
        .collect();
    assert_eq!(names, ["a/x", "a/y", "ab", "b"]);
    // The same holders the CLI shows.
    assert_eq!(all["locks"], locks.json(&["status", "--json"]));

    let (status, some) = server.get_json("/v1/list?prefix=a/");
    assert_eq!(status, 200, "{some}");
    let names: Vec<&Value> = some["locks"]
        .as_array()
        .expect("list")
        .iter()
        .map(|h| &h["resource"])
        .collect();
    assert_eq!(names, [&json!("a/x"), &json!("a/y")]);

    let (status, one) = server.get_json("/v1/status?resource=a/x");
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["lock"], locks.json(&["status", "a/x", "--json"]));
    assert_eq!(one["lock"]["client"], "one");
    assert_eq!(
        server.get_json("/v1/status?resource=free"),
        (200, json!({"lock": null}))
    );
    assert_error(
        &server.get_json("/v1/status?resource=a/../b"),
        400,
        "invalid-input",
    );
}

#[test]
fn v1_wait_ms_gets_the_lock_when_the_holder_lets_go() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let first = json!({"resource": "queue", "client": "first"});
    assert_eq!(server.post_json("/v1/lock", &first).0, 200);

    // Held: no wait, or a wait that runs out, is a refusal.
    for wait in [0, 300] {
        let got = server.post_json(
            "/v1/lock",
            &json!({"resource": "queue", "client": "second", "wait_ms": wait}),
        );
        assert_error(&got, 409, "already-locked");
        assert_eq!(got.1["error"]["holder"], "first", "wait_ms {wait}");
    }

    // A long wait, sent (all of it) before the holder lets go.
    let body = json!({"resource": "queue", "client": "second", "wait_ms": 50_000}).to_string();
    let mut waiter = server.connect();
    waiter
        .write_all(&request("POST", "/v1/lock", &[], Some(&body)))
        .expect("send the waiting request");
    let (status, released) = server.post_json("/v1/unlock", &first);
    assert_eq!(status, 200, "{released}");
    let got = read_response(&mut BufReader::new(waiter)).expect("the waiter's response");
    assert_eq!(got.status, 200, "{got:?}");
    let grant = got.json();
    assert_eq!(
        (&grant["client"], &grant["fencing"]),
        (&json!("second"), &json!(2))
    );
    assert_eq!(
        locks.json(&["status", "queue", "--json"])["client"],
        "second"
    );
}

// ------------------------------------------------------ every door, one lock

#[test]
fn cli_http_xmlrpc_and_v1_see_the_same_locks() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    locks.ok(&["lock", "shared", "--client", "cli"]);
    assert_eq!(
        server.urllib(&[
            "/canhaz/shared?id=web",
            "/canhaz/shared/child",
            "/dohaz/shared"
        ]),
        [
            (200, json!({"ok": false, "lockedBy": "cli"})),
            (200, json!({"ok": false, "lockedBy": "cli"})),
            (200, json!({"lockedBy": "cli"})),
        ]
    );
    assert_eq!(
        xmlrpc(
            &server.url("/RPC2"),
            json!([["lock", "shared", "rpc"], ["unlock", "shared", "rpc"]])
        ),
        [
            json!({"fault": [1, already("cli")]}),
            json!({"fault": [1, "Resource locked by 'cli' cannot be unlocked by 'rpc'"]}),
        ]
    );
    let got = server.post_json("/v1/lock", &json!({"resource": "shared", "client": "v1"}));
    assert_error(&got, 409, "already-locked");
    assert_eq!(got.1["error"]["holder"], "cli");

    // And the other way round.
    assert_eq!(server.urllib(&["/canhaz/from-web?id=web"])[0].1["ok"], true);
    assert_eq!(
        xmlrpc(&server.url("/RPC2"), json!([["lock", "from-rpc", "rpc"]])),
        [json!({"result": true})]
    );
    let (status, _) = server.post_json("/v1/lock", &json!({"resource": "from-v1", "client": "v1"}));
    assert_eq!(status, 200);
    for (resource, holder) in [("from-web", "web"), ("from-rpc", "rpc"), ("from-v1", "v1")] {
        locks
            .run(&["lock", resource, "--client", "cli"])
            .assert_refused(1, &already(holder));
    }

    // A release by one door frees the lock for every other.
    locks.ok(&["unlock", "shared", "--client", "cli"]);
    assert_eq!(
        server.get_json("/dohaz/shared"),
        (200, json!({"lockedBy": null}))
    );
    assert_eq!(
        xmlrpc(
            &server.url("/RPC2"),
            json!([["unlock", "from-v1", "v1"], ["lock", "shared", "rpc"]])
        ),
        [json!({"result": true}), json!({"result": true})]
    );
    assert_eq!(
        server.get_json("/dohaz/shared"),
        (200, json!({"lockedBy": "rpc"}))
    );
    assert_eq!(held(&locks), ["from-rpc", "from-web", "shared"]);
}

#[test]
fn acknowledged_grants_survive_sigkill_and_restart() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let (status, grant) =
        server.post_json("/v1/lock", &json!({"resource": "survivor", "client": "a"}));
    assert_eq!(status, 200, "{grant}");
    let (status, anonymous) = server.get_json("/canhaz/other");
    assert_eq!((status, &anonymous["ok"]), (200, &json!(true)));
    server.kill();

    let server = Server::start(&locks, &[]);
    let got = server.post_json("/v1/lock", &json!({"resource": "survivor", "client": "b"}));
    assert_error(&got, 409, "already-locked");
    assert_eq!(got.1["error"]["holder"], "a");
    assert_eq!(
        server.get_json("/dohaz/other"),
        (200, json!({"lockedBy": "?"}))
    );
    let shown = locks.json(&["status", "survivor", "--json"]);
    assert_eq!(
        (&shown["client"], &shown["fencing"]),
        (&json!("a"), &grant["fencing"])
    );
    // The tokens handed out before the crash still work.
    let nowant = format!("/nowant/other?token={}", token(&anonymous));
    assert_eq!(server.get_json(&nowant), (200, json!({"ok": true})));
    let (status, _) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "survivor", "token": token(&grant)}),
    );
    assert_eq!(status, 200);
    assert_eq!(held(&locks), Vec::<String>::new());
}

#[test]
fn node_directories_removed_under_a_running_daemon_are_made_again() {
    // One worker: the guest that holds `nodes/gone/x` open serves every call.
    let locks = Locks::new();
    let server = Server::start(&locks, &["--workers", "1"]);
    let (status, grant) =
        server.post_json("/v1/lock", &json!({"resource": "gone/x", "client": "a"}));
    assert_eq!(status, 200, "{grant}");
    let (status, _) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "gone/x", "token": token(&grant)}),
    );
    assert_eq!(status, 200);

    // An operator removes the nodes while the daemon runs.
    std::fs::remove_dir_all(locks.path().join("nodes/gone")).expect("remove nodes");
    let (status, again) =
        server.post_json("/v1/lock", &json!({"resource": "gone/x", "client": "b"}));
    assert_eq!(status, 200, "{again}");

    // The grant is in the directory everybody else reads, not a removed one.
    let since = again["since_ms"].as_u64().expect("since_ms");
    assert_eq!(
        locks.state_files("gone/x"),
        [format!(
            "{}+{}+pc+{since}+b",
            again["fencing"],
            token(&again)
        )]
    );
    locks
        .run(&["lock", "gone/x", "--client", "cli"])
        .assert_refused(1, &already("b"));
    locks
        .run(&["lock", "gone", "--client", "cli"])
        .assert_refused(1, &already("b"));
    assert_eq!(locks.json(&["status", "gone/x", "--json"])["client"], "b");
}

// ---------------------------------------------------------------- auth

#[test]
fn token_file_guards_every_route_but_healthz() {
    let locks = Locks::new();
    let secrets = tempfile::tempdir().expect("temp dir");
    let file = secrets.path().join("token");
    std::fs::write(&file, "s3cret-token\n").expect("write token file");
    let file = file.to_str().expect("UTF-8 path");
    let server = Server::start(&locks, &["--token-file", file]);

    let lock = json!({"resource": "guarded", "client": "intruder"}).to_string();
    // None, a wrong bearer token, and HTTP Basic u:wrong.
    for auth in [None, Some("Bearer wrong"), Some("Basic dTp3cm9uZw==")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        for raw in [
            request("GET", "/canhaz/guarded?id=intruder", &headers, None),
            request("POST", "/v1/lock", &headers, Some(&lock)),
            request("GET", "/v1/list", &headers, None),
            request("GET", "/metrics", &headers, None),
            request("POST", "/RPC2", &headers, Some("<?xml version='1.0'?><methodCall><methodName>lock</methodName><params><param><value><string>guarded</string></value></param><param><value><string>intruder</string></value></param></params></methodCall>")),
        ] {
            let got = server.send(&raw);
            if raw.starts_with(b"POST /RPC2") {
                assert_eq!(got.status, 401, "{got:?}");
            } else {
                assert_error_response(&got, 401, "unauthorized");
            }
        }
    }
    assert_eq!(locks.json(&["status", "guarded", "--json"]), Value::Null);
    healthy(&server);

    let bearer = [("Authorization", "Bearer s3cret-token")];
    let got = server.send(&request(
        "POST",
        "/v1/lock",
        &bearer,
        Some(&json!({"resource": "guarded", "client": "ok"}).to_string()),
    ));
    assert_eq!(got.status, 200, "{got:?}");
    let got = server.send(&request("GET", "/canhaz/guarded?id=x", &bearer, None));
    assert_eq!(got.json(), json!({"ok": false, "lockedBy": "ok"}));

    // xmlrpc.client sends the URL's user and password as HTTP Basic.
    let addr = server.addr;
    assert_eq!(
        xmlrpc(
            &format!("http://u:s3cret-token@{addr}/RPC2"),
            json!([["lock", "by-rpc", "rpc"]])
        ),
        [json!({"result": true})]
    );
    for url in [
        format!("http://u:wrong@{addr}/RPC2"),
        format!("http://{addr}/RPC2"),
    ] {
        assert_eq!(
            xmlrpc(&url, json!([["unlock", "by-rpc", "rpc"]])),
            [json!({"http": 401})],
            "{url}"
        );
    }
    assert_eq!(held(&locks), ["by-rpc", "guarded"]);
}

#[test]
fn non_loopback_address_needs_a_token_file_or_insecure() {
    let locks = Locks::new();
    for args in [
        &["serve", "--addr", "0.0.0.0:0"][..],
        &["serve", "--ip", "0.0.0.0", "--port", "0"],
    ] {
        let run = finish(&mut locks.command(args));
        assert_eq!(run.code, 2, "hasp {args:?}: {run:?}");
        assert!(
            run.stderr.contains("--token-file"),
            "hasp {args:?}: {run:?}"
        );
        assert!(!run.stderr.contains("listening"), "hasp {args:?}: {run:?}");
    }
    // With --insecure it serves.
    let server = Server::start_at(&locks, "0.0.0.0:0", &["--insecure"]);
    assert!(
        server.stderr().contains("listening on http://0.0.0.0:"),
        "{}",
        server.stderr()
    );
    healthy(&server);
}

// ------------------------------------------------- limits and bad requests

#[test]
fn oversized_requests_get_431_414_and_413() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let pad = |n: usize| "a".repeat(n);

    // Just within each limit: served.
    let got = server.send(&request(
        "GET",
        "/healthz",
        &[("X-Pad", &pad(15 * 1024))],
        None,
    ));
    assert_eq!(got.status, 200, "{got:?}");
    let target = format!("/healthz?pad={}", pad(4096 - "/healthz?pad=".len()));
    assert_eq!(target.len(), 4096);
    let got = server.send(&request("GET", &target, &[], None));
    assert_eq!(got.status, 200, "{got:?}");
    let fits = json!({"resource": "fits", "client": "c"}).to_string();
    let fits = format!("{fits}{}", " ".repeat(64 * 1024 - fits.len()));
    assert_eq!(server.post("/v1/lock", &fits).0, 200);

    // Just over: refused with the matching status, and nothing locked.
    let got = server.send(&request(
        "GET",
        "/canhaz/headers",
        &[("X-Pad", &pad(17 * 1024))],
        None,
    ));
    assert_error_response(&got, 431, "headers-too-large");
    healthy(&server);
    let target = format!("/canhaz/uri?pad={}", pad(4097 - "/canhaz/uri?pad=".len()));
    assert_eq!(target.len(), 4097);
    let got = server.send(&request("GET", &target, &[], None));
    assert_error_response(&got, 414, "uri-too-long");
    healthy(&server);
    let big = json!({"resource": "big", "client": "c"}).to_string();
    let big = format!("{big}{}", " ".repeat(64 * 1024 + 1 - big.len()));
    let got = server.send(&request("POST", "/v1/lock", &[], Some(&big)));
    assert_error_response(&got, 413, "body-too-large");
    healthy(&server);
    let raw = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: hasp.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let got = server.send(raw.as_bytes());
    assert_error_response(&got, 413, "body-too-large");
    healthy(&server);

    assert_eq!(held(&locks), ["fits"]);
}

#[test]
fn malformed_requests_get_json_errors_and_change_nothing() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let cases: [(&[u8], u16, &str); 12] = [
        (b"HELLO\r\n\r\n", 400, "bad-request"),
        (b"GET /canhaz/x\r\n\r\n", 400, "bad-request"),
        (
            b"GET /canhaz/x HTTP/1.1\r\nHost: h\r\nno colon here\r\n\r\n",
            400,
            "bad-request",
        ),
        (
            &request("POST", "/v1/lock", &[], Some("{\"resource\": \"x\"")),
            400,
            "bad-request",
        ),
        (
            &request("POST", "/v1/lock", &[], Some("{\"resource\": \"\"}")),
            400,
            "invalid-input",
        ),
        (
            &request(
                "POST",
                "/v1/lock",
                &[],
                Some(r#"{"resource": "x", "client": "a\nb"}"#),
            ),
            400,
            "invalid-input",
        ),
        (
            &request("GET", "/no/such/route", &[], None),
            404,
            "not-found",
        ),
        (
            &request("GET", "/v1/lock", &[], None),
            405,
            "method-not-allowed",
        ),
        (
            &request("POST", "/canhaz/x", &[], Some("")),
            405,
            "method-not-allowed",
        ),
        (
            &request("GET", "/RPC2", &[], None),
            405,
            "method-not-allowed",
        ),
        (
            &request("DELETE", "/healthz", &[], None),
            405,
            "method-not-allowed",
        ),
        (
            &request("POST", "/metrics", &[], Some("")),
            405,
            "method-not-allowed",
        ),
    ];
    for (raw, status, code) in cases {
        let got = server.send(raw);
        assert_eq!(
            got.header("Content-Type")
                .map(|t| t.starts_with("application/json")),
            Some(true),
            "{got:?}"
        );
        assert_error_response(&got, status, code);
        healthy(&server);
    }
    assert_eq!(held(&locks), Vec::<String>::new());
}

#[test]
fn a_stalled_request_times_out_with_408_and_is_closed() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--request-timeout", "1"]);
    let body = json!({"resource": "stalled", "client": "c"}).to_string();
    let half_body = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: hasp.test\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..body.len() / 2]
    );
    for half in [
        "GET /canhaz/stalled HTTP/1.1\r\nHost: hasp.test\r\n",
        half_body.as_str(),
    ] {
        let mut stream = server.connect();
        stream
            .write_all(half.as_bytes())
            .expect("send half a request");
        let mut reader = BufReader::new(stream);
        let got =
            read_response(&mut reader).unwrap_or_else(|e| panic!("no 408 ({e}) for {half:?}"));
        assert_error_response(&got, 408, "timeout");
        let mut rest = Vec::new();
        let end = reader.read_to_end(&mut rest);
        assert!(
            matches!(end, Ok(0)),
            "not closed after the 408: {end:?} {rest:?}"
        );
        healthy(&server);
    }
    assert_eq!(held(&locks), Vec::<String>::new());
}

#[test]
fn keep_alive_answers_requests_on_one_connection_in_order() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let stream = server.connect();
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: hasp.test\r\n\r\n");
    let unlock = json!({"resource": "ka", "client": "one"}).to_string();
    let steps = [
        (get("/canhaz/ka?id=one"), None),
        (
            get("/canhaz/ka?id=two"),
            Some(json!({"ok": false, "lockedBy": "one"})),
        ),
        (
            format!(
                "POST /v1/unlock HTTP/1.1\r\nHost: hasp.test\r\nContent-Length: {}\r\n\r\n{unlock}",
                unlock.len()
            ),
            None,
        ),
        (get("/dohaz/ka"), Some(json!({"lockedBy": null}))),
    ];
    for (i, (raw, expected)) in steps.iter().enumerate() {
        writer.write_all(raw.as_bytes()).expect("send");
        let got = read_response(&mut reader)
            .unwrap_or_else(|e| panic!("request {i} on the same connection: {e}"));
        assert_eq!(got.status, 200, "request {i}: {got:?}");
        if let Some(expected) = expected {
            assert_eq!(&got.json(), expected, "request {i}");
        }
    }
    // Two requests in one write: two responses, in order.
    writer
        .write_all(format!("{}{}", get("/canhaz/ka?id=three"), get("/dohaz/ka")).as_bytes())
        .expect("send");
    let first = read_response(&mut reader).expect("first pipelined response");
    let second = read_response(&mut reader).expect("second pipelined response");
    assert_eq!(first.json()["ok"], true, "{first:?}");
    assert_eq!(second.json(), json!({"lockedBy": "three"}));
    // `Connection: close` is honoured.
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: hasp.test\r\nConnection: close\r\n\r\n")
        .expect("send");
    assert_eq!(
        read_response(&mut reader).expect("last response").status,
        200
    );
    let mut rest = Vec::new();
    assert!(
        matches!(reader.read_to_end(&mut rest), Ok(0)),
        "open after Connection: close: {rest:?}"
    );

    // HTTP/1.0 closes unless asked not to.
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    assert_eq!(read_response(&mut reader).expect("response").status, 200);
    let mut rest = Vec::new();
    assert!(
        matches!(reader.read_to_end(&mut rest), Ok(0)),
        "HTTP/1.0 left open: {rest:?}"
    );
}

// ------------------------------------------------------ metrics and logs

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

#[test]
fn healthz_and_metrics_count_grants_refusals_and_durations() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let got = server.send(&request("GET", "/healthz", &[], None));
    assert_eq!((got.status, got.json()), (200, json!({"ok": true})));

    let (_, grant) = server.get_json("/canhaz/m?id=a");
    assert_eq!(server.get_json("/canhaz/m?id=b").1["lockedBy"], "a");
    let nowant = format!("/nowant/m?token={}", token(&grant));
    assert_eq!(server.get_json(&nowant), (200, json!({"ok": true})));
    assert_eq!(
        xmlrpc(&server.url("/RPC2"), json!([["lock", "n", "c"]])),
        [json!({"result": true})]
    );

    let got = server.send(&request("GET", "/metrics", &[], None));
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.header("Content-Type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{got:?}"
    );
    let text = &got.body;
    let at_least = |series: &str, n: f64| {
        let value = sample(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(value >= n, "{series} = {value} < {n}:\n{text}");
    };
    at_least("hasp_grants_total", 2.0);
    at_least("hasp_refusals_total", 1.0);
    at_least("hasp_releases_total", 1.0);
    at_least("hasp_requests_total{door=\"locker\"}", 3.0);
    at_least("hasp_requests_total{door=\"xmlrpc\"}", 1.0);
    at_least("hasp_requests_total{door=\"other\"}", 1.0);
    at_least("hasp_request_duration_seconds_count", 5.0);
    at_least("hasp_request_duration_seconds_bucket{le=\"+Inf\"}", 5.0);
    assert!(
        sample(text, "hasp_request_duration_seconds_sum").is_some(),
        "{text}"
    );
}

#[test]
fn log_debug_prints_one_line_per_request() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--log", "debug"]);
    assert_eq!(server.get("/healthz").0, 200);
    assert_eq!(server.get("/no/such/route").0, 404);
    assert_eq!(server.post("/v1/lock", "{}").0, 400);
    let (status, _) = server.get_json("/canhaz/logged/one?id=me");
    assert_eq!(status, 200);
    let (status, refused) = server.get_json("/canhaz/logged?id=you");
    assert_eq!((status, &refused["ok"]), (200, &json!(false)), "{refused}");
    let (status, _) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "logged/one", "client": "me"}),
    );
    assert_eq!(status, 200);
    let wanted = [
        "INFO hasp::access: GET /healthz -> 200 peer=127.0.0.1:",
        "INFO hasp::access: GET /no/such/route -> 404 peer=127.0.0.1:",
        "INFO hasp::access: POST /v1/lock -> 400 peer=127.0.0.1:",
        // Locker says no with a 200: the outcome says what happened.
        "door=locker resource=\"logged/one\" outcome=\"granted\" status=200",
        "door=locker resource=\"logged\" outcome=\"already-locked\" status=200",
        "door=v1 resource=\"logged/one\" outcome=\"released\" status=200",
    ];
    let all_there = |text: &str| wanted.iter().all(|w| text.contains(w));
    assert!(server.stderr.wait_for(all_there), "{}", server.stderr());
    let access: Vec<String> = server
        .stderr()
        .lines()
        .filter(|l| l.contains("hasp::access"))
        .map(str::to_string)
        .collect();
    assert_eq!(access.len(), 6, "{access:#?}");
    for line in &access {
        // An RFC 3339 UTC timestamp first, the latency last.
        let stamp = line.split_whitespace().next().unwrap_or_default();
        assert!(
            stamp.len() > 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line:?}"
        );
        let micros = line
            .rsplit_once(" latency_us=")
            .and_then(|(_, n)| n.parse::<u64>().ok());
        assert!(micros.is_some(), "{line:?}");
        // No query string: a Locker token would be in it.
        assert!(!line.contains('?'), "{line:?}");
    }
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--log", "debug", "--log-format", "json"]);
    let (status, _) = server.post_json("/v1/lock", &json!({"resource": "j", "client": "a"}));
    assert_eq!(status, 200);
    let logged = |text: &str| text.contains("POST /v1/lock -> 200");
    assert!(server.stderr.wait_for(logged), "{}", server.stderr());
    let (_, stderr) = server.stop(libc::SIGTERM);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(lines[0]["target"], "hasp::serve");
    assert!(lines[0]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("listening on http://127.0.0.1:")));
    let access = &lines[1];
    assert_eq!(access["level"], "INFO", "{access}");
    assert_eq!(access["target"], "hasp::access", "{access}");
    assert_eq!(access["door"], "v1", "{access}");
    assert_eq!(access["resource"], "j", "{access}");
    assert_eq!(access["outcome"], "granted", "{access}");
    assert_eq!(access["status"], 200, "{access}");
    assert!(access["latency_us"].is_u64(), "{access}");
    assert!(
        access["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{access}"
    );
    assert!(
        access["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{access}"
    );
    assert_eq!(lines[2]["message"], "stopped");
}

#[test]
fn log_filters_as_rust_log_takes_them() {
    let locks = Locks::new();
    // Directives as RUST_LOG takes them: the start line and the access
    // lines, everything else at WARN.
    let server = Server::start(
        &locks,
        &["--log", "warn,hasp::serve=info,hasp::access=info"],
    );
    assert_eq!(server.get("/healthz").0, 200);
    assert!(
        server
            .stderr
            .wait_for(|t| t.contains("GET /healthz -> 200")),
        "{}",
        server.stderr()
    );
    // RUST_LOG is read when --log is not given; --log wins over it.
    let mut rust_log = locks.command(&["serve", "--addr", "127.0.0.1:0", "--log", "bogus"]);
    rust_log.env("RUST_LOG", "hasp=info");
    let run = finish(&mut rust_log);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("\"bogus\" is not a level"), "{run:?}");
    let mut bad = locks.command(&["serve", "--addr", "127.0.0.1:0"]);
    bad.env("RUST_LOG", "hasp=[");
    let run = finish(&mut bad);
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.starts_with("RUST_LOG: "), "{run:?}");
    // Levels below INFO are compiled out: asking for them warns nothing.
    let server = Server::start(&locks, &["--log", "hasp=trace"]);
    assert_eq!(server.get("/healthz").0, 200);
    assert!(
        server
            .stderr
            .wait_for(|t| t.contains("GET /healthz -> 200")),
        "{}",
        server.stderr()
    );
    assert!(!server.stderr().contains("warning"), "{}", server.stderr());
}

#[test]
fn a_port_in_use_is_one_line() {
    let locks = Locks::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let run = finish(&mut locks.command(&["serve", "--addr", &addr]));
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "cannot listen on {addr}: the address is already in use (another hasp serve, or \
             another program, listens there; pick another --addr, or port 0 for any free one)\n"
        )
    );
}

// ---------------------------------------------------------------- lifecycle

/// Whether `pid` has a handler installed for `signal` (/proc/PID/status).
fn catches(pid: u32, signal: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"));
    let mask = mask.and_then(|m| u64::from_str_radix(m.trim(), 16).ok());
    mask.is_some_and(|m| m & (1 << (signal - 1)) != 0)
}

#[test]
fn sigterm_and_sigint_stop_gracefully_and_keep_the_locks() {
    let locks = Locks::new();
    for (signal, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT")] {
        let server = Server::start(&locks, &[]);
        let resource = format!("kept-{name}");
        let (status, _) =
            server.post_json("/v1/lock", &json!({"resource": resource, "client": "a"}));
        assert_eq!(status, 200);
        let guard = Instant::now() + GUARD;
        while !catches(server.pid, signal) {
            assert!(Instant::now() < guard, "SIG{name} never caught");
            std::thread::yield_now();
        }
        let (status, stderr) = server.stop(signal);
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{name}: {status}; stderr:\n{stderr}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines[0].contains(" INFO hasp::serve: listening on http://127.0.0.1:"),
            "{stderr}"
        );
        assert!(
            lines
                .last()
                .is_some_and(|l| l.ends_with(" INFO hasp::serve: stopped")),
            "SIG{name}: {stderr}"
        );
        // The default log level logs no requests.
        assert!(!stderr.contains(" -> "), "{stderr}");
        assert_eq!(locks.json(&["status", &resource, "--json"])["client"], "a");
    }
    assert_eq!(held(&locks), ["kept-INT", "kept-TERM"]);
}

#[test]
fn fsync_mode_grants_and_releases() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--fsync"]);
    for round in 1..=2 {
        let (status, grant) =
            server.post_json("/v1/lock", &json!({"resource": "durable", "client": "f"}));
        assert_eq!((status, &grant["fencing"]), (200, &json!(round)), "{grant}");
        assert_eq!(
            server.get_json("/dohaz/durable"),
            (200, json!({"lockedBy": "f"}))
        );
        assert_eq!(locks.json(&["status", "durable", "--json"])["client"], "f");
        let (status, _) = server.post_json(
            "/v1/unlock",
            &json!({"resource": "durable", "token": token(&grant)}),
        );
        assert_eq!(status, 200);
        assert_eq!(locks.json(&["status", "durable", "--json"]), Value::Null);
    }
    assert_eq!(
        xmlrpc(
            &server.url("/RPC2"),
            json!([["lock", "r", "c"], ["lock", "r", "d"], ["unlock", "r", "c"]])
        ),
        [
            json!({"result": true}),
            json!({"fault": [1, already("c")]}),
            json!({"result": true})
        ]
    );
}

// ---------------------------------------------------------------- leases

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

#[test]
fn v1_lease_expires_for_the_cli_which_takes_it_over_with_a_higher_fencing() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    // A long lease first: every holder shows its expiry.
    let (status, long) = server.post_json(
        "/v1/lock",
        &json!({"resource": "long", "client": "v1", "ttl_ms": 60_000}),
    );
    assert_eq!(status, 200, "{long}");
    let since = long["since_ms"].as_u64().expect("since_ms");
    assert_eq!(
        (&long["ttl_ms"], &long["expires_ms"]),
        (&json!(60_000), &json!(since + 60_000)),
        "{long}"
    );
    let mut shown = long.clone();
    shown.as_object_mut().expect("object").remove("token");
    assert_eq!(locks.json(&["status", "long", "--json"]), shown);
    assert_eq!(
        server.get_json("/v1/status?resource=long"),
        (200, json!({ "lock": shown }))
    );
    assert_eq!(server.get_json("/v1/list").1["locks"], json!([shown]));

    // A short one runs out: the CLI then sees the resource free.
    let (status, short) = server.post_json(
        "/v1/lock",
        &json!({"resource": "short", "client": "v1", "ttl_ms": 300}),
    );
    assert_eq!((status, &short["ttl_ms"]), (200, &json!(300)), "{short}");
    sleep_past(&short["expires_ms"]);
    assert_eq!(locks.json(&["status", "short", "--json"]), Value::Null);
    // ...and so does the stock `wasmtime run` of the component.
    let stock = crate::wasmtime_cli::wasm(&locks, &["status", "short", "--json"]);
    assert_eq!(
        (stock.code, stock.stdout.as_str()),
        (0, "null\n"),
        "{stock:?}"
    );
    assert_eq!(held(&locks), ["long"]);
    assert_eq!(
        server.get_json("/v1/status?resource=short"),
        (200, json!({"lock": null}))
    );
    // Its owner learns that it lost the lock, not that it is "not locked".
    for got in [
        server.post_json("/v1/renew", &json!({"resource": "short", "client": "v1"})),
        server.post_json(
            "/v1/unlock",
            &json!({"resource": "short", "token": token(&short)}),
        ),
    ] {
        assert_error(&got, 410, "lease-expired");
    }

    // The CLI takes it over with the next fencing number.
    let taken = locks.json(&["lock", "short", "--client", "cli", "--json"]);
    let fencing = short["fencing"].as_u64().expect("fencing");
    assert_eq!(
        (&taken["client"], &taken["fencing"]),
        (&json!("cli"), &json!(fencing + 1)),
        "{taken}"
    );
    // The lost holder's calls still say why, and change nothing.
    for got in [
        server.post_json(
            "/v1/unlock",
            &json!({"resource": "short", "token": token(&short)}),
        ),
        server.post_json(
            "/v1/renew",
            &json!({"resource": "short", "token": token(&short), "ttl_ms": 60_000}),
        ),
        server.post_json("/v1/unlock", &json!({"resource": "short", "client": "v1"})),
    ] {
        assert_error(&got, 410, "lease-expired");
        let message = got.1["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("short"), "{got:?}");
    }
    assert_eq!(locks.json(&["status", "short", "--json"])["client"], "cli");
}

#[test]
fn v1_renew_keeps_the_fencing_and_moves_the_expiry() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let (status, grant) = server.post_json(
        "/v1/lock",
        &json!({"resource": "job", "client": "w", "ttl_ms": 60_000}),
    );
    assert_eq!(status, 200, "{grant}");
    let (status, renewed) = server.post_json(
        "/v1/renew",
        &json!({"resource": "job", "token": token(&grant), "ttl_ms": 120_000}),
    );
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(sorted_keys(&renewed), {
        let mut keys = GRANT_KEYS.to_vec();
        keys.retain(|k| *k != "token");
        keys.extend(["expires_ms", "ttl_ms"]);
        keys.sort();
        keys
    });
    for same in ["resource", "client", "fencing", "since_ms"] {
        assert_eq!(renewed[same], grant[same], "{same}: {renewed}");
    }
    assert_eq!(renewed["ttl_ms"], 120_000);
    let before = grant["expires_ms"].as_u64().expect("expires_ms");
    let after = renewed["expires_ms"].as_u64().expect("expires_ms");
    assert!(after > before, "{grant} -> {renewed}");
    assert_eq!(
        server.get_json("/v1/status?resource=job").1["lock"],
        renewed
    );
    // By client id, without a length: the lease's own length again.
    let (status, again) = server.post_json("/v1/renew", &json!({"resource": "job", "client": "w"}));
    assert_eq!(
        (status, &again["fencing"], &again["ttl_ms"]),
        (200, &grant["fencing"], &json!(120_000)),
        "{again}"
    );
    // The token still releases it.
    let (status, released) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "job", "token": token(&grant)}),
    );
    assert_eq!((status, &released["fencing"]), (200, &grant["fencing"]));

    // Refusals, as unlock's; bad input.
    let (status, _) = server.post_json("/v1/lock", &json!({"resource": "job", "client": "w"}));
    assert_eq!(status, 200);
    let got = server.post_json(
        "/v1/renew",
        &json!({"resource": "job", "client": "other", "ttl_ms": 1000}),
    );
    assert_error(&got, 403, "not-owner");
    assert_eq!(got.1["error"]["holder"], "w");
    let got = server.post_json(
        "/v1/renew",
        &json!({"resource": "free", "client": "w", "ttl_ms": 1000}),
    );
    assert_error(&got, 404, "not-locked");
    // A lock without a lease gets one only with a length.
    let got = server.post_json("/v1/renew", &json!({"resource": "job", "client": "w"}));
    assert_error(&got, 400, "invalid-input");
    let (status, leased) = server.post_json(
        "/v1/renew",
        &json!({"resource": "job", "client": "w", "ttl_ms": 5000}),
    );
    assert_eq!((status, &leased["ttl_ms"]), (200, &json!(5000)), "{leased}");
    for bad in [
        json!({"resource": "job", "client": "w", "ttl_ms": 0}),
        json!({"resource": "job", "client": "w", "ttl_ms": 2_592_000_001u64}),
    ] {
        assert_error(&server.post_json("/v1/renew", &bad), 400, "invalid-input");
        assert_error(
            &server.post_json(
                "/v1/lock",
                &json!({"resource": "other", "ttl_ms": bad["ttl_ms"]}),
            ),
            400,
            "invalid-input",
        );
    }
    for bad in [
        json!({"resource": "job"}),
        json!({"resource": "job", "client": "w", "token": token(&grant)}),
        json!({"resource": "job", "client": "w", "ttl_ms": -5}),
        json!({"resource": "job", "client": "w", "wait_ms": 5}),
    ] {
        assert_error(&server.post_json("/v1/renew", &bad), 400, "bad-request");
    }
    assert_error(&server.get_json("/v1/renew"), 405, "method-not-allowed");
    assert_eq!(held(&locks), ["job"]);
    assert_eq!(locks.json(&["status", "job", "--json"])["ttl_ms"], 5000);
}

#[test]
fn v1_request_id_retry_returns_the_same_grant_while_held() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let call =
        json!({"resource": "deploy", "client": "ci", "request_id": "ci-run-17", "ttl_ms": 60_000});
    let (status, grant) = server.post_json("/v1/lock", &call);
    assert_eq!(status, 200, "{grant}");
    token(&grant);
    // The answer was lost, say: the retry gets the same grant, token and all.
    let (status, retried) = server.post_json("/v1/lock", &call);
    assert_eq!((status, &retried), (200, &grant));
    // Another request id is another attempt, refused as any other.
    let mut other = call.clone();
    other["request_id"] = json!("ci-run-18");
    let got = server.post_json("/v1/lock", &other);
    assert_error(&got, 409, "already-locked");
    assert_eq!(got.1["error"]["holder"], "ci");
    let mut anonymous = call.clone();
    anonymous
        .as_object_mut()
        .expect("object")
        .remove("request_id");
    assert_error(
        &server.post_json("/v1/lock", &anonymous),
        409,
        "already-locked",
    );

    // Once released, the same id makes a new grant.
    let (status, _) = server.post_json(
        "/v1/unlock",
        &json!({"resource": "deploy", "token": token(&retried)}),
    );
    assert_eq!(status, 200);
    let (status, next) = server.post_json("/v1/lock", &call);
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        next["fencing"],
        grant["fencing"].as_u64().expect("fencing") + 1
    );
    assert_ne!(token(&next), token(&grant));
    let bad = json!({"resource": "x", "request_id": ""});
    assert_error(&server.post_json("/v1/lock", &bad), 400, "invalid-input");
    assert_eq!(held(&locks), ["deploy"]);
}

#[test]
fn v1_force_unlock_needs_the_daemon_token_and_names_the_holder() {
    let locks = Locks::new();
    // Without --token-file nobody has proved anything: refused.
    let server = Server::start(&locks, &[]);
    let (status, grant) =
        server.post_json("/v1/lock", &json!({"resource": "stuck", "client": "gone"}));
    assert_eq!(status, 200, "{grant}");
    let got = server.post_json("/v1/unlock", &json!({"resource": "stuck", "force": true}));
    assert_error(&got, 403, "forbidden");
    let message = got.1["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("--token-file"), "{got:?}");
    assert_eq!(locks.json(&["status", "stuck", "--json"])["client"], "gone");
    drop(server);

    let (_secrets, file) = token_file("operator-token");
    let server = Server::start(&locks, &["--token-file", &file]);
    let bearer = [("Authorization", "Bearer operator-token")];
    let post = |body: Value| {
        let got = server.send(&request(
            "POST",
            "/v1/unlock",
            &bearer,
            Some(&body.to_string()),
        ));
        (got.status, got.json())
    };
    // Not with a key as well.
    let got = post(json!({"resource": "stuck", "force": true, "client": "gone"}));
    assert_error(&got, 400, "bad-request");
    // `force: false` is a plain unlock, which needs a key.
    let got = post(json!({"resource": "stuck", "force": false}));
    assert_error(&got, 400, "bad-request");
    let (status, broken) = post(json!({"resource": "stuck", "force": true}));
    assert_eq!(status, 200, "{broken}");
    let mut expected = grant.clone();
    expected.as_object_mut().expect("object").remove("token");
    assert_eq!(broken, expected);
    assert_eq!(locks.json(&["status", "stuck", "--json"]), Value::Null);
    let got = post(json!({"resource": "stuck", "force": true}));
    assert_error(&got, 404, "not-locked");
    // The holder's key opens nothing now; the fencing sequence goes on.
    let got = post(json!({"resource": "stuck", "client": "gone"}));
    assert_error(&got, 404, "not-locked");
    let taken = locks.json(&["lock", "stuck", "--client", "next", "--json"]);
    assert_eq!(
        taken["fencing"],
        grant["fencing"].as_u64().expect("fencing") + 1
    );
    // Without the token, the request is not even read.
    let got = server.post_json("/v1/unlock", &json!({"resource": "stuck", "force": true}));
    assert_error(&got, 401, "unauthorized");
    assert_eq!(locks.json(&["status", "stuck", "--json"])["client"], "next");
}

#[test]
fn locker_ttl_gives_a_lease_that_expires() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let (status, grant) = server.get_json("/canhaz/job?id=a&ttl=0.3");
    assert_eq!(status, 200, "{grant}");
    assert_eq!(
        sorted_keys(&grant),
        ["expires_ms", "fencing", "ok", "token"]
    );
    assert_eq!((&grant["ok"], &grant["fencing"]), (&json!(true), &json!(1)));
    let shown = locks.json(&["status", "job", "--json"]);
    if !shown.is_null() {
        assert_eq!(
            (&shown["ttl_ms"], &shown["expires_ms"]),
            (&json!(300), &grant["expires_ms"])
        );
    }
    sleep_past(&grant["expires_ms"]);
    assert_eq!(
        server.get_json("/dohaz/job"),
        (200, json!({"lockedBy": null}))
    );
    let (status, next) = server.get_json("/canhaz/job?id=b");
    assert_eq!(sorted_keys(&next), ["fencing", "ok", "token"], "{next}");
    assert_eq!((status, &next["fencing"]), (200, &json!(2)));
    // The first holder's token opens nothing any more.
    let nowant = format!("/nowant/job?token={}", token(&grant));
    assert_eq!(server.get_json(&nowant), (200, json!({"ok": false})));
    assert_eq!(
        server.get_json("/dohaz/job"),
        (200, json!({"lockedBy": "b"}))
    );

    // Whole and fractional seconds; anything else is refused.
    let (status, long) = server.get_json("/canhaz/long?ttl=90&id=c");
    assert_eq!(status, 200, "{long}");
    assert_eq!(locks.json(&["status", "long", "--json"])["ttl_ms"], 90_000);
    for bad in ["abc", "0", "-1", "1e3", "30s", "", "2592001"] {
        let got = server.get_json(&format!("/canhaz/bad?ttl={bad}"));
        assert_error(&got, 400, "invalid-input");
    }
    assert_eq!(held(&locks), ["job", "long"]);
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

#[test]
fn default_ttl_leases_xmlrpc_and_locker_grants_and_the_wire_stays_the_same() {
    let locks = Locks::new();
    let plain = Server::start(&locks, &[]);
    let call = |server: &Server, resource: &str| {
        let raw = request(
            "POST",
            "/RPC2",
            &[],
            Some(&xmlrpc_lock_call(resource, "rpc")),
        );
        let got = server.send(&raw);
        (got.status, got.headers, got.body)
    };
    let unleased = call(&plain, "plain");
    drop(plain);
    assert_eq!(
        locks.json(&["status", "plain", "--json"])["ttl_ms"],
        Value::Null
    );

    let server = Server::start(&locks, &["--default-ttl", "300ms"]);
    let leased = call(&server, "leased");
    assert_eq!(leased, unleased, "the same bytes, lease or not");
    let shown = locks.json(&["status", "leased", "--json"]);
    let since = shown["since_ms"].as_u64();
    if let Some(since) = since {
        assert_eq!(
            (&shown["ttl_ms"], &shown["expires_ms"]),
            (&json!(300), &json!(since + 300))
        );
    }
    // Locker without ttl= gets the default lease too; /v1 chooses its own.
    let (status, locker) = server.get_json("/canhaz/by-locker?id=web");
    assert_eq!((status, &locker["ok"]), (200, &json!(true)), "{locker}");
    let (status, v1) = server.post_json("/v1/lock", &json!({"resource": "by-v1", "client": "v1"}));
    assert_eq!(status, 200, "{v1}");
    assert_eq!(sorted_keys(&v1), GRANT_KEYS, "no lease: {v1}");

    // Both run out.
    sleep_past(&locker["expires_ms"]);
    let last = locker["expires_ms"].as_u64().expect("expires_ms");
    sleep_past(&json!(since.map_or(last, |s| s + 300)));
    assert_eq!(held(&locks), ["by-v1", "plain"]);
    let got = xmlrpc(
        &server.url("/RPC2"),
        json!([["lock", "leased", "other"], ["unlock", "leased", "rpc"]]),
    );
    assert_eq!(got[0], json!({"result": true}), "{got:?}");
    // The lost holder's unlock is a refusal (fault 1) saying why.
    assert_eq!(got[1]["fault"][0], 1, "{got:?}");
    let message = got[1]["fault"][1].as_str().unwrap_or_default();
    assert!(message.starts_with("Lease expired"), "{got:?}");
    assert_eq!(locks.json(&["status", "leased", "--json"])["fencing"], 2);
}

// ------------------------------------------------------ clients that hang up

#[test]
fn a_waiting_lock_whose_client_hung_up_is_never_granted() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--log", "debug"]);
    let holder = json!({"resource": "queue", "client": "holder"});
    let (status, grant) = server.post_json("/v1/lock", &holder);
    assert_eq!(status, 200, "{grant}");

    for (n, how) in [std::net::Shutdown::Write, std::net::Shutdown::Both]
        .into_iter()
        .enumerate()
    {
        let body = json!({"resource": "queue", "client": "waiter", "wait_ms": 5000}).to_string();
        let mut waiter = server.connect();
        waiter
            .write_all(&request("POST", "/v1/lock", &[], Some(&body)))
            .expect("send the waiting request");
        waiter.shutdown(how).expect("hang up");
        drop(waiter);
        // The daemon ends the request with nobody to answer (logged as 499).
        let ended = |text: &str| text.matches("POST /v1/lock -> 499 ").count() > n;
        assert!(server.stderr.wait_for(ended), "{}", server.stderr());
    }

    // The holder lets go: nobody is granted behind its back.
    let (status, _) = server.post_json("/v1/unlock", &holder);
    assert_eq!(status, 200);
    assert_eq!(locks.json(&["status", "queue", "--json"]), Value::Null);
    let (status, next) =
        server.post_json("/v1/lock", &json!({"resource": "queue", "client": "next"}));
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        next["fencing"],
        grant["fencing"].as_u64().expect("fencing") + 1,
        "no grant took a number meanwhile"
    );
    assert!(
        !server.stderr().contains("could not be delivered"),
        "{}",
        server.stderr()
    );
}

/// Sends `raw` on a fresh connection and resets it at once (SO_LINGER 0,
/// set before the request leaves), so the answer cannot be delivered.
fn send_and_reset(server: &Server, raw: &[u8]) {
    use std::os::fd::AsRawFd;
    let mut stream = server.connect();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on a socket this function owns, with a linger
    // struct of the size given.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    stream.write_all(raw).expect("send the request");
    drop(stream);
}

#[test]
fn a_grant_whose_answer_cannot_be_delivered_is_released() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--log", "debug"]);
    let raw = |door: &str, resource: &str| match door {
        "locker" => request("GET", &format!("/canhaz/{resource}?id=web"), &[], None),
        "xmlrpc" => request(
            "POST",
            "/RPC2",
            &[],
            Some(&xmlrpc_lock_call(resource, "rpc")),
        ),
        _ => request(
            "POST",
            "/v1/lock",
            &[],
            Some(&json!({"resource": resource, "client": "v1"}).to_string()),
        ),
    };
    // The reset can only lose the race with the answer if this thread
    // stalls between its write and its close: then the lock is delivered
    // (into a socket about to be reset) and kept, and the door is tried
    // again on a new resource.
    let mut requests = 0;
    let mut delivered = Vec::new();
    let mut released = Vec::new();
    for door in ["locker", "xmlrpc", "v1"] {
        for attempt in 0..10 {
            let resource = format!("{door}-{attempt}");
            send_and_reset(&server, &raw(door, &resource));
            requests += 1;
            // A request's log line comes once it is answered and, if the
            // answer could not go, its grant released.
            let logged = |text: &str| text.matches(" -> ").count() >= requests;
            assert!(server.stderr.wait_for(logged), "{}", server.stderr());
            let line = format!("the grant of '{resource}' (fencing 1) could not be delivered (");
            let text = server.stderr();
            match text.lines().find(|l| l.contains(&line)) {
                Some(l) => {
                    assert!(l.ends_with("; released it again"), "{text}");
                    released.push(resource);
                    break;
                }
                None => delivered.push(resource),
            }
        }
    }
    assert_eq!(released.len(), 3, "{released:?}; delivered: {delivered:?}");
    delivered.sort();
    assert_eq!(held(&locks), delivered);
    // Each grant took its number and gave the lock back.
    for resource in &released {
        let (status, next) =
            server.post_json("/v1/lock", &json!({"resource": resource, "client": "next"}));
        assert_eq!((status, &next["fencing"]), (200, &json!(2)), "{next}");
    }
    let metrics = server.get("/metrics").1;
    assert_eq!(
        sample(&metrics, "hasp_abandoned_total"),
        Some(3.0),
        "{metrics}"
    );
}

// ---------------------------------------------------------------- --fsync failures

/// An ext4 filesystem mounted over a directory, on a loop device whose
/// image lives on a small tmpfs. The image is written whole, then `fstrim`
/// punches the filesystem's free blocks out of it again: the journal, inode
/// tables and directories written so far stay in place, but any block
/// allocated from now on is a hole in the image. Once the tmpfs is full
/// (`fill`), new file data (`unsyncable`) cannot be written back, so the
/// next `syncfs(2)` on the filesystem fails (ENOSPC, reported through the
/// filesystem's writeback error): a real sync failure, without fault
/// injection, that leaves the journal whole, so locking works again once
/// the tmpfs has room (`free`). Needs root, `mount`, `losetup`,
/// `mkfs.ext4` and `fstrim`.
struct FailingDisk {
    /// Where the image lives; unmounted once the filesystem on it is.
    tmpfs: Tmpfs,
    mounted: std::path::PathBuf,
    device: String,
}

/// Runs `cmd`; its stdout, trimmed, or why it failed.
fn run_quietly(cmd: &mut Command) -> Result<String, String> {
    let run = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if run.status.success() {
        Ok(String::from_utf8_lossy(&run.stdout).trim().to_string())
    } else {
        Err(format!("{cmd:?} failed: {run:?}"))
    }
}

impl FailingDisk {
    /// Mounts a fresh one over `dir` (empty); why not, if it cannot.
    fn mount_on(dir: &std::path::Path) -> Result<FailingDisk, String> {
        let run = run_quietly;
        let mut disk = FailingDisk {
            tmpfs: Tmpfs::mount("size=40m").ok_or("no tmpfs for the image")?,
            mounted: std::path::PathBuf::new(),
            device: String::new(),
        };
        let image = disk.tmpfs.path().join("image");
        std::fs::write(&image, vec![0u8; 32 << 20]).map_err(|e| e.to_string())?;
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(&image))?;
        disk.device = run(Command::new("losetup").args(["-f", "--show"]).arg(&image))?;
        // No periodic commit, and no background writes to the inode tables.
        run(Command::new("mount")
            .args(["-o", "noinit_itable,commit=600,errors=continue"])
            .arg(&disk.device)
            .arg(dir))?;
        disk.mounted = dir.to_path_buf();
        run(Command::new("fstrim").arg(dir))?;
        Ok(disk)
    }

    /// Fills the tmpfs under the image: from now on, no new block of the
    /// filesystem can be written.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.tmpfs.path().join("filler")).expect("filler");
        let zeros = vec![0u8; 1 << 20];
        while filler.write_all(&zeros).is_ok() {}
    }

    /// Gives the tmpfs room again.
    fn free(&self) {
        std::fs::remove_file(self.tmpfs.path().join("filler")).expect("remove the filler");
    }

    /// Writes a new file beside the lock directory's entries (in
    /// `lost+found`, which ext4 makes and hasp leaves alone): its data is
    /// only written back by the next sync, which then fails while the tmpfs
    /// is full.
    fn unsyncable(&self, name: &str) {
        let file = self.mounted.join("lost+found").join(name);
        std::fs::write(&file, vec![1u8; 64 << 10]).expect("write into the page cache");
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        if !self.mounted.as_os_str().is_empty() {
            quiet(Command::new("umount").arg(&self.mounted));
        }
        if !self.device.is_empty() {
            quiet(Command::new("losetup").args(["-d", &self.device]));
        }
    }
}

/// The lines of `text` that say a sync failed.
fn sync_failures_logged(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("syncfs(2) failed"))
        .count()
}

#[test]
fn fsync_a_failed_sync_fails_the_change_through_every_door_and_is_counted_and_logged() {
    let locks = Locks::new();
    let disk = match FailingDisk::mount_on(locks.path()) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED fsync_a_failed_sync_...: {why}");
            return;
        }
    };
    let server = Server::start(&locks, &["--fsync"]);
    // Once locked and released, the resource's directories are on disk:
    // locking it again writes no new block but the journal's.
    let (status, grant) = server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
    assert_eq!(status, 200, "{grant}");
    let unlock = json!({"resource": "r", "token": token(&grant)});
    assert_eq!(server.post_json("/v1/unlock", &unlock).0, 200);

    disk.fill();
    let unsynced = |fencing: u64| {
        format!(
            "the lock on 'r' (fencing {fencing}) was granted but not synced (syncfs(2) failed: \
             No space left on device (os error 28)), so it was released again: nothing is granted"
        )
    };
    disk.unsyncable("1");
    let got = server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
    assert_error(&got, 503, "not-synced");
    assert_eq!(got.1["error"]["message"], unsynced(2), "{got:?}");
    assert!(got.1["error"].get("holder").is_none(), "{got:?}");

    disk.unsyncable("2");
    assert_eq!(
        xmlrpc(&server.url("/RPC2"), json!([["lock", "r", "a"]])),
        [json!({"fault": [3, unsynced(3)]})]
    );

    disk.unsyncable("3");
    let (status, body) = server.get("/canhaz/r?id=a");
    assert_ne!(status, 200, "{body}");
    assert!(
        body.contains(&unsynced(4)) && !body.contains("token"),
        "{body}"
    );

    // Nothing is held.
    assert_eq!(
        server.get_json("/v1/status?resource=r"),
        (200, json!({"lock": null}))
    );
    let metrics = server.get("/metrics").1;
    assert_eq!(
        sample(&metrics, "hasp_sync_failures_total"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "hasp_grants_total"),
        Some(1.0),
        "{metrics}"
    );

    // Room again: the next sync succeeds, and says so. (Each line is
    // printed before the answer it concerns: once the second is there, so
    // is the first.)
    disk.free();
    let (status, grant) = server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
    assert_eq!((status, &grant["fencing"]), (200, &json!(5)), "{grant}");
    let again = |text: &str| text.contains("syncs succeed again after 3 failed");
    assert!(server.stderr.wait_for(again), "{}", server.stderr());
    assert_eq!(
        sync_failures_logged(&server.stderr()),
        1,
        "{}",
        server.stderr()
    );

    // A release whose sync fails is done, but not acknowledged.
    disk.fill();
    disk.unsyncable("4");
    let got = server.post_json("/v1/unlock", &json!({"resource": "r", "client": "a"}));
    assert_error(&got, 503, "not-synced");
    assert_eq!(
        got.1["error"]["message"],
        "the lock on 'r' (fencing 5) was released but not synced (syncfs(2) failed: \
         No space left on device (os error 28)): a crash may undo it",
        "{got:?}"
    );
    assert_eq!(
        server.get_json("/v1/status?resource=r"),
        (200, json!({"lock": null}))
    );
    let metrics = server.get("/metrics").1;
    assert_eq!(
        sample(&metrics, "hasp_sync_failures_total"),
        Some(4.0),
        "{metrics}"
    );
    let twice = |text: &str| sync_failures_logged(text) == 2;
    assert!(server.stderr.wait_for(twice), "{}", server.stderr());
    disk.free();
    drop(server);
}

// ------------------------------------------------- HTTP/1.1 framing (RFC 9112)

/// Reads a response head only (the answer to a HEAD, or a `100 Continue`):
/// the status line and the headers, names in lower case.
#[track_caller]
fn read_head(reader: &mut BufReader<TcpStream>) -> (String, Vec<(String, String)>) {
    let head = http_client::read_head(reader).expect("a response head");
    (head.line, head.headers)
}

/// Sends `raw` on a fresh connection: its one response, then whether the
/// server closed the connection after it.
#[track_caller]
fn send_and_close(server: &Server, raw: &[u8]) -> (Response, bool) {
    let mut stream = server.connect();
    let _ = stream.write_all(raw);
    let mut reader = BufReader::new(stream);
    let got =
        read_response(&mut reader).unwrap_or_else(|e| panic!("no response ({e}) to {}", show(raw)));
    let mut rest = Vec::new();
    let end = reader.read_to_end(&mut rest);
    // Closed with the request unread, the close is a reset.
    let closed =
        matches!(end, Ok(0)) || end.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
    (got, closed)
}

#[test]
fn two_different_content_lengths_or_one_beside_chunked_are_400_and_closed() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    // The smuggling of issue 14: the second request hides in the body the
    // second Content-Length claims.
    let smuggle = "POST /v1/lock HTTP/1.1\r\nHost: h\r\nContent-Length: 33\r\nContent-Length: 84\r\n\r\n{\"resource\":\"smug2\",\"client\":\"a\"}GET /canhaz/smuggled2?id=evil HTTP/1.1\r\n\r\n";
    let chunked_too = "POST /v1/lock HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n21\r\n{\"resource\":\"smug3\",\"client\":\"a\"}\r\n0\r\n\r\nGET /canhaz/smuggled3?id=evil HTTP/1.1\r\n\r\n";
    let te_first = "POST /v1/lock HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 33\r\n\r\n{\"resource\":\"smug4\",\"client\":\"a\"}";
    for raw in [smuggle, chunked_too, te_first] {
        let (got, closed) = send_and_close(&server, raw.as_bytes());
        assert_error_response(&got, 400, "bad-request");
        assert!(closed, "not closed after {got:?}");
    }
    // Not a number by RFC 9110 §8.6: digits only.
    let body = json!({"resource": "cl", "client": "a"}).to_string();
    let n = body.len().to_string();
    for value in [
        format!("+{n}"),
        "-1".to_string(),
        "0x10".to_string(),
        String::new(),
        format!("{} {}", &n[..1], &n[1..]),
        format!("{n}, {n}"),
        "99999999999999999999999".to_string(),
    ] {
        let raw =
            format!("POST /v1/lock HTTP/1.1\r\nHost: h\r\nContent-Length: {value}\r\n\r\n{body}");
        let (got, closed) = send_and_close(&server, raw.as_bytes());
        assert_error_response(&got, 400, "bad-request");
        assert!(closed, "not closed after Content-Length {value:?}");
    }
    assert_eq!(held(&locks), Vec::<String>::new());
    // Two that agree frame one body: taken.
    let raw = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\ncontent-length: {n}\r\nConnection: close\r\n\r\n{body}"
    );
    let got = server.send(raw.as_bytes());
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(held(&locks), ["cl"]);
}

#[test]
fn locker_nowant_with_a_malformed_token_or_id_answers_ok_false() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let (status, grant) = server.get_json("/canhaz/my/resource?id=me");
    assert_eq!((status, &grant["ok"]), (200, &json!(true)), "{grant}");
    // The seed's own example, and ids no lock could ever have.
    for target in [
        "/nowant/my/resource?token=invalid-token",
        "/nowant/my/resource?token=",
        "/nowant/my/resource?id=a%0Ab",
        &format!("/nowant/my/resource?id={}", "x".repeat(300)),
        "/nowant/not%20held?token=invalid-token",
    ] {
        assert_eq!(
            server.get_json(target),
            (200, json!({"ok": false})),
            "{target}"
        );
    }
    assert_eq!(held(&locks), ["my/resource"]);
    let target = format!("/nowant/my/resource?token={}", token(&grant));
    assert_eq!(server.get_json(&target), (200, json!({"ok": true})));
}

/// Asserts a 400 in Locker's shape: `{"ok": false, "error": {...}}`.
#[track_caller]
fn assert_locker_400(got: &(u16, Value)) {
    assert_eq!((got.0, &got.1["ok"]), (400, &json!(false)), "{got:?}");
    assert!(got.1["error"]["message"].is_string(), "{got:?}");
}

#[test]
fn bad_percent_escapes_are_400_on_locker_and_v1_and_flags_must_be_booleans() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let (status, _) = server.get_json("/canhaz/held?id=owner");
    assert_eq!(status, 200);
    for target in [
        "/canhaz/r?id=%FF",
        "/canhaz/r?id=%C3",
        "/canhaz/r?id=%+5",
        "/canhaz/r?id=%4",
        "/canhaz/r?id=%4g",
        "/canhaz/r%FF",
        "/canhaz/r?lockParents=%FF",
        "/canhaz/r?lockChildren=%FF",
        "/canhaz/r?lockParents=",
        "/canhaz/r?%FF=1",
        "/nowant/held?id=%FF",
        "/dohaz/held?x=%FF",
    ] {
        assert_locker_400(&server.get_json(target));
    }
    for target in [
        "/v1/list?prefix=%FF",
        "/v1/list?prefix=%+5",
        "/v1/status?resource=%FF",
        "/v1/status?resource=held%",
    ] {
        assert_error(&server.get_json(target), 400, "bad-request");
    }
    assert_eq!(held(&locks), ["held"]);
    // Good escapes still decode, `+` as a space in the query only.
    let (status, grant) = server.get_json("/canhaz/caf%C3%A9?id=a%20b+c");
    assert_eq!((status, &grant["ok"]), (200, &json!(true)), "{grant}");
    assert_eq!(
        server.get_json("/dohaz/caf%c3%a9"),
        (200, json!({"lockedBy": "a b c"}))
    );
}

#[test]
fn head_gets_headers_only_and_the_next_response_stays_framed() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let mut stream = server.connect();
    stream
        .write_all(
            b"HEAD /healthz HTTP/1.1\r\nHost: h\r\n\r\n\
              HEAD /canhaz/headed HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .expect("send");
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers:?}");
    assert!(
        headers.iter().any(|(n, _)| n == "content-length"),
        "{headers:?}"
    );
    // HEAD would take a lock on Locker's door: refused, and said which.
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed", "{headers:?}");
    assert!(
        headers.contains(&("allow".into(), "GET".into())),
        "{headers:?}"
    );
    let got = read_response(&mut reader).expect("the GET after two HEADs");
    assert_eq!((got.status, got.json()), (200, json!({"ok": true})));
    assert_eq!(held(&locks), Vec::<String>::new());
}

#[test]
fn every_405_says_allow() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    for (method, target, allow) in [
        ("POST", "/canhaz/x", "GET"),
        ("PUT", "/nowant/x", "GET"),
        ("GET", "/RPC2", "POST"),
        ("GET", "/", "POST"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("GET", "/v1/lock", "POST"),
        ("HEAD", "/v1/unlock", "POST"),
        ("POST", "/v1/list", "GET"),
        ("DELETE", "/v1/status", "GET"),
    ] {
        let mut stream = server.connect();
        let raw = request(method, target, &[], (method != "HEAD").then_some(""));
        stream.write_all(&raw).expect("send");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        assert!(
            status.starts_with("HTTP/1.1 405 "),
            "{method} {target}: {status}"
        );
        assert!(
            headers.contains(&("allow".into(), allow.into())),
            "{method} {target}: {headers:?}"
        );
    }
}

#[test]
fn unauthorized_says_www_authenticate_and_the_bearer_scheme_is_any_case() {
    let locks = Locks::new();
    let (_secrets, file) = token_file("case-token");
    let server = Server::start(&locks, &["--token-file", &file]);
    let got = server.send(&request("GET", "/dohaz/x", &[], None));
    assert_error_response(&got, 401, "unauthorized");
    let challenge = got.header("WWW-Authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "{got:?}");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} case-token");
        let got = server.send(&request(
            "GET",
            "/dohaz/x",
            &[("Authorization", &auth)],
            None,
        ));
        assert_eq!(got.status, 200, "{scheme}: {got:?}");
    }
    let got = server.send(&request(
        "GET",
        "/dohaz/x",
        &[("Authorization", "bearer wrong")],
        None,
    ));
    assert_eq!(got.status, 401);
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_read() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let body = json!({"resource": "expected", "client": "c"}).to_string();
    let mut stream = server.connect();
    let head = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    // Nothing of the body is sent until the server says so.
    let (status, headers) = read_head(&mut reader);
    assert_eq!(status, "HTTP/1.1 100 Continue", "{headers:?}");
    stream.write_all(body.as_bytes()).expect("send the body");
    let got = read_response(&mut reader).expect("the final response");
    assert_eq!(got.status, 200, "{got:?}");
    // A chunked body waits for it too.
    let chunked = json!({"resource": "expected2", "client": "c"}).to_string();
    let head = "POST /v1/lock HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).expect("send the head");
    let (status, _) = read_head(&mut reader);
    assert_eq!(status, "HTTP/1.1 100 Continue");
    let chunks = format!("{:x}\r\n{chunked}\r\n0\r\n\r\n", chunked.len());
    stream.write_all(chunks.as_bytes()).expect("send the body");
    let got = read_response(&mut reader).expect("the final response");
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(held(&locks), ["expected", "expected2"]);
}

#[test]
fn bare_lf_requests_are_served_at_once() {
    let locks = Locks::new();
    // A request held until the timeout would take 30 s: the test would
    // fail on the 408 it got instead.
    let server = Server::start(&locks, &["--request-timeout", "30"]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\nHost: h\n\nGET /canhaz/lf?id=x HTTP/1.1\r\nHost: h\n\r\nGET / HTTP/1.1\n\n")
        .expect("send");
    let mut reader = BufReader::new(stream);
    for expected in [200, 200, 405] {
        let got = read_response(&mut reader).expect("a response");
        assert_eq!(got.status, expected, "{got:?}");
    }
    assert_eq!(held(&locks), ["lf"]);
}

#[test]
fn chunked_bodies_are_read_strictly_within_the_body_limit() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    // Node's http.request: chunked, here cut in three, with an extension
    // and a trailer; then a second request on the same connection.
    let body = json!({"resource": "chunked", "client": "node"}).to_string();
    let (a, b) = body.split_at(5);
    let (b, c) = b.split_at(10);
    let raw = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:X};name=value\r\n{b}\r\n{:04x}\r\n{c}\r\n0\r\nX-Trailer: ignored\r\n\r\n\
         GET /dohaz/chunked HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        a.len(),
        b.len(),
        c.len()
    );
    let mut stream = server.connect();
    stream.write_all(raw.as_bytes()).expect("send");
    let mut reader = BufReader::new(stream);
    let got = read_response(&mut reader).expect("the lock");
    assert_eq!(got.status, 200, "{got:?}");
    let got = read_response(&mut reader).expect("the status");
    assert_eq!(got.json(), json!({"lockedBy": "node"}));

    // Exactly the limit fits; one byte more is 413, however it is cut.
    let fits = json!({"resource": "fits", "client": "c"}).to_string();
    let fits = format!("{fits}{}", " ".repeat(64 * 1024 - fits.len()));
    let (x, y) = fits.split_at(40_000);
    let raw = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
        x.len(),
        y.len()
    );
    assert_eq!(server.send(raw.as_bytes()).status, 200);
    let over = format!("{fits} ");
    let (x, y) = over.split_at(40_000);
    let raw = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
        x.len(),
        y.len()
    );
    let (got, closed) = send_and_close(&server, raw.as_bytes());
    assert_error_response(&got, 413, "body-too-large");
    assert!(closed);

    // Sizes are hex digits, without sign, prefix or overflow.
    let chunk = json!({"resource": "bad", "client": "c"}).to_string();
    for (size, status, code) in [
        ("zz".to_string(), 400, "bad-request"),
        ("+21".to_string(), 400, "bad-request"),
        ("0x21".to_string(), 400, "bad-request"),
        (String::new(), 400, "bad-request"),
        ("1 0".to_string(), 400, "bad-request"),
        ("1".to_string(), 400, "bad-request"),
        ("f".repeat(40), 413, "body-too-large"),
        ("10001".to_string(), 413, "body-too-large"),
    ] {
        let raw = format!(
            "POST /v1/lock HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n{chunk}\r\n0\r\n\r\n"
        );
        let (got, closed) = send_and_close(&server, raw.as_bytes());
        assert_error_response(&got, status, code);
        assert!(closed, "{size:?}");
    }
    // Only chunked is a transfer coding hasp reads.
    let raw = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (got, _) = send_and_close(&server, raw.as_bytes());
    assert_error_response(&got, 501, "not-implemented");
    assert_eq!(held(&locks), ["chunked", "fits"]);
}

#[test]
fn max_connections_sheds_the_longest_idle_connection_for_a_new_client() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--max-connections", "8"]);
    // Twenty clients that connect and say nothing.
    let idle: Vec<TcpStream> = (0..20).map(|_| server.connect()).collect();
    // A new client is still served...
    let got = server.send(&request("GET", "/healthz", &[], None));
    assert_eq!(got.status, 200, "{got:?}");
    // ...because the 13 that waited longest made room, oldest first.
    for (i, mut stream) in idle.into_iter().take(13).enumerate() {
        let mut rest = Vec::new();
        let end = stream.read_to_end(&mut rest);
        assert!(
            matches!(end, Ok(0))
                || end
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "connection {i} not closed: {end:?}"
        );
    }
}

#[test]
fn max_connections_refuses_with_503_when_no_connection_is_idle() {
    let locks = Locks::new();
    let server = Server::start(&locks, &["--max-connections", "2"]);
    let body = json!({"resource": "busy", "client": "c"}).to_string();
    let head = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // Two connections, each in the middle of a request (the 100 Continue
    // says the server is reading its body).
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = server.connect();
        stream.write_all(head.as_bytes()).expect("send the head");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        assert_eq!(read_head(&mut reader).0, "HTTP/1.1 100 Continue");
        busy.push((stream, reader));
    }
    let got = server.send(&request("GET", "/healthz", &[], None));
    assert_error_response(&got, 503, "busy");
    assert_eq!(got.header("Connection"), Some("close"), "{got:?}");
    // The busy ones are answered all the same.
    for (mut stream, mut reader) in busy {
        stream.write_all(body.as_bytes()).expect("send the body");
        let status = read_response(&mut reader).expect("its answer").status;
        assert!(status == 200 || status == 409, "{status}");
    }
}

#[test]
fn under_a_low_open_file_limit_the_default_cap_keeps_room_for_a_new_client() {
    use std::os::unix::process::CommandExt;
    let locks = Locks::new();
    let mut cmd = locks.command(&["serve", "--addr", "127.0.0.1:0", "--workers", "1"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // `ulimit -n 128` for the daemon alone.
    // SAFETY: only setrlimit(2), which is async-signal-safe, between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(cmd.spawn().expect("spawn hasp serve"));
    let mut stderr = BufReader::new(child.0.stderr.take().expect("piped stderr"));
    const MARK: &str = "listening on http://";
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).expect("stderr") > 0,
            "never listened"
        );
        if let Some(at) = line.find(MARK) {
            let shown = line[at + MARK.len()..].split_whitespace().next();
            break shown.expect("an address").parse().expect("an address");
        }
    };
    // The rest of stderr is read, so that the daemon never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    // More clients that say nothing than the daemon has descriptors.
    let idle: Vec<TcpStream> = (0..150)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(GUARD)).expect("timeout");
    stream
        .write_all(&request("GET", "/healthz", &[], None))
        .expect("send");
    let got = read_response(&mut BufReader::new(stream)).expect("served, not stuck in the backlog");
    assert_eq!((got.status, got.json()), (200, json!({"ok": true})));
    drop(idle);
}

#[test]
fn the_other_framing_rules_hold_too() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let body = json!({"resource": "framed", "client": "c"}).to_string();
    let n = body.len();
    // Refused, and the connection closed: the framing cannot be trusted.
    let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
    for (raw, status, code) in [
        // A space before the colon (RFC 9112 §5.1).
        (
            format!("POST /v1/lock HTTP/1.1\r\nHost: h\r\nContent-Length : {n}\r\n\r\n{body}"),
            400,
            "bad-request",
        ),
        // A folded header line (obs-fold, §5.2).
        (
            format!("POST /v1/lock HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n x\r\n\r\n{body}"),
            400,
            "bad-request",
        ),
        // Chunked from an HTTP/1.0 client (§6.1).
        (
            format!("POST /v1/lock HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\n"),
            400,
            "bad-request",
        ),
        // No version this server speaks.
        (
            "GET /healthz HTTP/2.0\r\n\r\n".to_string(),
            400,
            "bad-request",
        ),
        (format!("GET /healthz HTTP/1.1\r\n{many}\r\n"), 431, "headers-too-large"),
    ] {
        let (got, closed) = send_and_close(&server, raw.as_bytes());
        assert_error_response(&got, status, code);
        assert!(closed, "not closed after {}", show(raw.as_bytes()));
    }
    // Past the body limit, Expect gets the final answer, not 100 Continue.
    let raw = "POST /v1/lock HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 65537\r\n\r\n";
    let (got, closed) = send_and_close(&server, raw.as_bytes());
    assert_error_response(&got, 413, "body-too-large");
    assert!(closed);
    // No body to wait for: no 100 Continue either.
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    assert_eq!(read_response(&mut reader).expect("an answer").status, 200);
    // HTTP/1.0 with keep-alive stays open; Connection: close on 1.1 closes.
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .expect("send");
    for _ in 0..2 {
        assert_eq!(read_response(&mut reader).expect("an answer").status, 200);
    }
    let mut rest = Vec::new();
    assert!(matches!(reader.read_to_end(&mut rest), Ok(0)), "{rest:?}");
    assert_eq!(held(&locks), Vec::<String>::new());
}

/// Whether `tool` runs here (`tool --version`); says so when it does not.
fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

#[test]
fn node_sends_chunked_and_curl_expects_100_continue_and_both_are_served() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    if have("node") {
        // http.request without a Content-Length: a chunked body, two writes.
        let script = r#"
const http = require("http");
const req = http.request({host: "127.0.0.1", port: +process.argv[1], method: "POST",
                          path: "/v1/lock", headers: {"Content-Type": "application/json"}},
  res => { let body = ""; res.on("data", d => body += d);
           res.on("end", () => console.log(JSON.stringify({status: res.statusCode, body}))); });
req.write('{"resource": "from-node", ');
req.end('"client": "node"}');
"#;
        let out = Command::new("node")
            .args(["-e", script, &server.addr.port().to_string()])
            .output()
            .expect("run node");
        let got: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(got["status"], 200, "{got}");
    }
    if have("curl") {
        // curl waits for 100 Continue up to the timeout given: with none, it
        // would send the body after 60 s, long after the daemon's 10 s.
        let body = json!({"resource": "from-curl", "client": "curl"}).to_string();
        let out = Command::new("curl")
            .args([
                "-sS",
                "--expect100-timeout",
                "60",
                "-H",
                "Expect: 100-continue",
            ])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
            ])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .arg(server.url("/v1/lock"))
            .output()
            .expect("run curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    }
    let mut expected = Vec::new();
    if have("curl") {
        expected.push("from-curl");
    }
    if have("node") {
        expected.push("from-node");
    }
    assert_eq!(held(&locks), expected);
}

// ---------------------------------------------------------------- memory

/// The resident set of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kib / 1024.0
}

/// Every lock under `prefix`, `limit` a page, page by page through
/// `next`; the number of pages it took.
#[track_caller]
fn list_all(server: &Server, prefix: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let first = format!("/v1/list?prefix={prefix}&limit={limit}");
    let mut target = first.clone();
    loop {
        let (status, page) = server.get_json(&target);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        all.extend(page["locks"].as_array().expect("locks").iter().cloned());
        match page["next"].as_str() {
            Some(next) => target = format!("{first}&after={next}"),
            None => return (all, pages),
        }
    }
}

#[test]
fn big_lists_in_parallel_leave_the_daemon_near_its_idle_memory() {
    const LOCKS: usize = 20_000;
    // On a tmpfs where it can (root): 20 000 locks are written, and later
    // removed, in seconds there; on a disk mounted with `discard`, minutes.
    let tmpfs = Tmpfs::mount("size=256m");
    let locks = match &tmpfs {
        Some(tmpfs) => Locks::new_in(tmpfs.path()),
        None => Locks::new(),
    };
    std::thread::scope(|scope| {
        for part in 0..2 {
            let locks = &locks;
            scope.spawn(move || {
                let mut registry = hasp::Registry::open(locks.path()).expect("open the registry");
                for i in (part..LOCKS).step_by(2) {
                    let name = format!("big/{i:05}");
                    let filler = hasp::LockOptions::client("filler");
                    registry.lock(&name, &filler).expect("lock");
                }
            });
        }
    });
    let server = Server::start(&locks, &[]);
    healthy(&server);
    let idle = rss_mib(server.pid);

    // Each client walks the whole list, 10 000 locks a page.
    let walks: Vec<(Vec<Value>, usize)> = std::thread::scope(|scope| {
        let walkers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| list_all(&server, "big", 10_000)))
            .collect();
        walkers
            .into_iter()
            .map(|w| w.join().expect("walker"))
            .collect()
    });
    let after = rss_mib(server.pid);
    eprintln!(
        "hasp serve: {idle:.1} MiB idle, {after:.1} MiB after 8 parallel lists of {LOCKS} locks"
    );
    // Before instances were given back: 8 instances grown by ~9 MiB each.
    assert!(
        after - idle < 40.0,
        "{idle:.1} MiB idle, {after:.1} MiB after"
    );
    for (all, pages) in walks {
        assert_eq!((all.len(), pages), (LOCKS, 2));
        let names: Vec<&str> = all
            .iter()
            .map(|h| h["resource"].as_str().expect("resource"))
            .collect();
        assert!(
            names.windows(2).all(|w| w[0] < w[1]),
            "not in order, or repeated"
        );
    }
}

#[test]
fn v1_list_pages_through_limit_after_and_next() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    for name in ["p/e", "p/a", "p/c", "p/b", "p/d/x", "q"] {
        let (status, grant) = server.post_json("/v1/lock", &json!({"resource": name}));
        assert_eq!(status, 200, "{grant}");
    }
    let names = |page: &Value| -> Vec<String> {
        let locks = page["locks"].as_array().expect("locks");
        locks
            .iter()
            .map(|h| h["resource"].as_str().expect("resource").to_string())
            .collect()
    };
    // Without a limit, a page of up to 1000: all, and no `next`.
    let (status, all) = server.get_json("/v1/list?prefix=p");
    assert_eq!(status, 200, "{all}");
    assert_eq!(names(&all), ["p/a", "p/b", "p/c", "p/d/x", "p/e"]);
    assert_eq!(sorted_keys(&all), ["locks"]);

    let mut pages = Vec::new();
    let mut target = "/v1/list?prefix=p&limit=2".to_string();
    loop {
        let (status, page) = server.get_json(&target);
        assert_eq!(status, 200, "{page}");
        pages.push(names(&page));
        match page.get("next") {
            Some(next) => {
                let next = next.as_str().expect("next is a resource");
                assert_eq!(
                    Some(next),
                    pages.last().and_then(|p| p.last()).map(String::as_str)
                );
                target = format!("/v1/list?prefix=p&limit=2&after={next}");
            }
            None => break,
        }
    }
    assert_eq!(
        pages,
        [vec!["p/a", "p/b"], vec!["p/c", "p/d/x"], vec!["p/e"]]
    );
    // A page that ends exactly at the last lock has no `next`.
    let (_, page) = server.get_json("/v1/list?prefix=p&limit=1&after=p/d/x");
    assert_eq!(
        (names(&page), page.get("next")),
        (vec!["p/e".to_string()], None)
    );
    let (_, page) = server.get_json("/v1/list?limit=10000&after=p/e");
    assert_eq!(names(&page), ["q"]);

    for bad in ["0", "10001", "-1", "two", ""] {
        let got = server.get_json(&format!("/v1/list?limit={bad}"));
        assert_error(&got, 400, "invalid-input");
    }
}

#[test]
fn http_1_0_keep_alive_is_answered_with_connection_keep_alive() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let mut stream = server.connect();
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        .expect("send");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let got = read_response(&mut reader).expect("an answer");
    assert_eq!(got.status, 200);
    // Without it an HTTP/1.0 client takes the answer to end at the close.
    assert_eq!(got.header("Connection"), Some("keep-alive"), "{got:?}");
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .expect("send again");
    let got = read_response(&mut reader).expect("a second answer");
    assert_eq!(got.header("Connection"), Some("close"), "{got:?}");
}

// ---------------------------------------------------------------- the spec's bodies

#[test]
fn v1_bodies_are_json_objects_and_null_is_refused_but_for_an_anonymous_client() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    // A struct reads an array field by field: not a lock request.
    for body in [
        r#"["r", "a"]"#,
        r#"["r", "a", true, true, 0, null, null]"#,
        "7",
        "\"r\"",
        "",
    ] {
        let got = server.send(&request("POST", "/v1/lock", &[], Some(body)));
        assert_error_response(&got, 400, "bad-request");
        assert!(got.body.contains("not a JSON object"), "{got:?}");
    }
    assert_eq!(held(&locks), Vec::<String>::new());

    let (status, grant) = server.post_json("/v1/lock", &json!({"resource": "r", "client": "a"}));
    assert_eq!(status, 200, "{grant}");
    // Only /v1/lock's client may be null (an anonymous lock); every other
    // optional field is given a value of its type, or left out.
    for (route, body) in [
        (
            "/v1/unlock",
            json!({"resource": "r", "client": "a", "token": null}),
        ),
        (
            "/v1/unlock",
            json!({"resource": "r", "client": null, "token": token(&grant)}),
        ),
        (
            "/v1/renew",
            json!({"resource": "r", "client": "a", "ttl_ms": null}),
        ),
        (
            "/v1/renew",
            json!({"resource": "r", "client": "a", "token": null, "ttl_ms": 1000}),
        ),
        ("/v1/lock", json!({"resource": "s", "ttl_ms": null})),
        ("/v1/lock", json!({"resource": "s", "request_id": null})),
    ] {
        let got = server.post_json(route, &body);
        assert_error(&got, 400, "bad-request");
        let message = got.1["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("invalid type: null"),
            "{route} {body}: {message}"
        );
    }
    assert_eq!(held(&locks), ["r"]);
    let (status, anonymous) =
        server.post_json("/v1/lock", &json!({"resource": "s", "client": null}));
    assert_eq!(
        (status, &anonymous["client"]),
        (200, &Value::Null),
        "{anonymous}"
    );
    assert_eq!(held(&locks), ["r", "s"]);
}
