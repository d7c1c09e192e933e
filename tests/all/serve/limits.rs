//! Limits and hostile input: oversized and malformed requests, stalled
//! requests, bad percent escapes, the connection cap, clients that hang up
//! mid-request, and memory under big lists.

use super::{
    assert_error, assert_error_response, healthy, held, read_head, read_response, request, sample,
    xmlrpc_lock_call, Server, GUARD,
};
use crate::support::{Locks, Tmpfs};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};

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

// -------------------------------------------------------------- connections

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

/// `hasp serve --addr 127.0.0.1:0 EXTRA...` under `ulimit -n FILES` (soft
/// and hard) for the daemon alone, once it listens; killed when dropped.
struct Limited {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    /// Everything it says on stderr, once it has ended.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Limited {
    #[track_caller]
    fn start(locks: &Locks, extra: &[&str], files: u64) -> Limited {
        use std::os::unix::process::CommandExt;
        let mut args = vec!["serve", "--addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cmd = locks.command(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only setrlimit(2), which is async-signal-safe, between fork
        // and exec.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn hasp serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        const MARK: &str = "listening on http://";
        let mut said = String::new();
        let addr: SocketAddr = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).expect("stderr") == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("never listened: {said}");
            }
            said.push_str(&line);
            if let Some(at) = line.find(MARK) {
                let shown = line[at + MARK.len()..].split_whitespace().next();
                break shown.expect("an address").parse().expect("an address");
            }
        };
        // The rest of stderr is read, so that the daemon never blocks on it.
        let stderr = std::thread::spawn(move || {
            let _ = stderr.read_to_string(&mut said);
            said
        });
        Limited {
            pid: child.id(),
            child: Some(child),
            addr,
            stderr: Some(stderr),
        }
    }

    /// How many descriptors the daemon has open.
    fn open_files(&self) -> usize {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid));
        fds.expect("/proc/PID/fd").count()
    }

    /// Stops it with SIGTERM: what it said on stderr.
    #[track_caller]
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on a child process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(self.pid as i32, libc::SIGTERM) }, 0);
        let status = super::wait_guarded(self.child.take().expect("running"));
        let stderr = self.stderr.take().expect("stderr").join().expect("stderr");
        assert_eq!(status.code(), Some(0), "{status}: {stderr}");
        stderr
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn under_a_low_open_file_limit_the_default_cap_keeps_room_for_a_new_client() {
    let locks = Locks::new();
    // `ulimit -n 128` for the daemon alone.
    let server = Limited::start(&locks, &["--workers", "1"], 128);
    let addr = server.addr;
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
    assert_eq!(got.status, 200);
    super::assert_health(&got.json());
    drop(idle);
}

#[test]
fn under_ulimit_n_1024_many_resources_in_parallel_get_no_server_error() {
    let locks = Locks::new();
    // Sixteen workers could hold 16 x 264 descriptors: more than there are.
    let server = Limited::start(&locks, &["--workers", "16"], 1024);
    let addr = server.addr;
    let clients: Vec<_> = (0..8)
        .map(|n| {
            std::thread::spawn(move || {
                let mut stream = crate::http_client::connect(addr).expect("connect");
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut failed = Vec::new();
                for i in 0..150 {
                    let body = json!({"resource": format!("fd/{n}/{i}"), "client": "c"});
                    let raw = crate::http_client::request(
                        "POST",
                        "/v1/lock",
                        &[("Host", "h")],
                        Some(body.to_string().as_bytes()),
                    );
                    stream.write_all(&raw).expect("send");
                    let got = read_response(&mut reader).expect("an answer");
                    if got.status != 200 {
                        failed.push(format!("fd/{n}/{i}: {} {}", got.status, got.body));
                    }
                }
                failed
            })
        })
        .collect();
    let failed: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let stderr = server.stop();
    let warned: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(
        warned[0].contains(
            " WARN hasp::serve: running 3 workers instead of 16: the limit on open files is 1024"
        ),
        "{stderr}"
    );
}

/// A kept-alive `GET /healthz` on a new connection to `addr`.
fn keep_alive_healthz(addr: SocketAddr) -> TcpStream {
    let mut stream = crate::http_client::connect(addr).expect("connect");
    let raw = crate::http_client::request("GET", "/healthz", &[("Host", "h")], None);
    stream.write_all(&raw).expect("send");
    stream
}

#[test]
fn accept_failures_that_come_and_go_are_logged_once() {
    let locks = Locks::new();
    const FILES: usize = 64;
    let server = Limited::start(
        &locks,
        &["--workers", "1", "--max-connections", "1000"],
        FILES as u64,
    );
    // Clients served and kept until the daemon has no descriptor left.
    let mut served = std::collections::VecDeque::new();
    while server.open_files() < FILES {
        let stream = keep_alive_healthz(server.addr);
        let mut reader = BufReader::new(stream);
        assert_eq!(read_response(&mut reader).expect("served").status, 200);
        served.push_back(reader);
    }
    // More in the backlog: every accept fails until a served one leaves.
    let mut waiting: std::collections::VecDeque<_> =
        (0..12).map(|_| keep_alive_healthz(server.addr)).collect();
    // Each leaving client lets one waiting client in, which takes its
    // place: failure, success, failure... ten times over.
    for _ in 0..10 {
        drop(served.pop_front());
        let stream = waiting.pop_front().expect("a waiting client");
        let mut reader = BufReader::new(stream);
        assert_eq!(read_response(&mut reader).expect("served").status, 200);
        served.push_back(reader);
    }
    drop((served, waiting));
    let stderr = server.stop();
    let failed: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(" WARN hasp::serve: accept failed: "))
        .collect();
    assert_eq!(failed.len(), 1, "{stderr}");
    assert!(
        failed[0].contains("(1 such failure since the last such line"),
        "{stderr}"
    );
    assert!(
        stderr.matches(" WARN hasp::serve: accepting again").count() <= 1,
        "{stderr}"
    );
}

// ----------------------------------------------------- clients that hang up

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

// ------------------------------------------------------------------- memory

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
