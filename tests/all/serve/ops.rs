//! Running the daemon: the token file and the address it guards, `/healthz`
//! and `/metrics`, logs, a port in use, and stopping on SIGTERM and SIGINT.

use super::{
    assert_error_response, finish, healthy, held, read_response, request, sample, token,
    token_file, xmlrpc, Server, GUARD,
};
use crate::support::Locks;
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::time::{Duration, Instant};

// --------------------------------------------------------------------- auth

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

// --------------------------------------------------------- metrics and logs

#[test]
fn healthz_and_metrics_count_grants_refusals_and_durations() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let got = server.send(&request("GET", "/healthz", &[], None));
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["store"], locks.path().display().to_string());
    super::assert_health(&got.json());

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

// ---------------------------------------------------------------- lifecycle

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
fn sigterm_ends_a_waiting_lock_at_once_with_shutting_down() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let holder = json!({"resource": "queue", "client": "holder"});
    assert_eq!(server.post_json("/v1/lock", &holder).0, 200);
    // Waits of up to ten minutes: the daemon may not sit them out.
    let waiters: Vec<_> = (0..3)
        .map(|n| {
            let body = json!({"resource": "queue", "client": format!("w{n}"), "wait_ms": 600_000})
                .to_string();
            let mut waiter = server.connect();
            waiter
                .write_all(&request("POST", "/v1/lock", &[], Some(&body)))
                .expect("send the waiting request");
            waiter
        })
        .collect();
    // Each waiter is refused once before it waits: all are waiting once
    // three refusals are counted.
    let guard = Instant::now() + GUARD;
    loop {
        let (_, text) = server.get("/metrics");
        if sample(&text, "hasp_refusals_total").is_some_and(|n| n >= 3.0) {
            break;
        }
        assert!(Instant::now() < guard, "the waiters never waited: {text}");
        std::thread::yield_now();
    }
    while !catches(server.pid, libc::SIGTERM) {
        assert!(Instant::now() < guard, "SIGTERM never caught");
        std::thread::yield_now();
    }
    let asked = Instant::now();
    let (status, stderr) = server.stop(libc::SIGTERM);
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{status}; stderr:\n{stderr}");
    // Far below the waits' ten minutes and the 60 s guard.
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");
    for waiter in waiters {
        let got = read_response(&mut BufReader::new(waiter)).expect("the waiter's answer");
        assert_error_response(&got, 503, "shutting-down");
    }
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.ends_with(" INFO hasp::serve: stopped")),
        "{stderr}"
    );
    // Nothing was granted behind the holder's back.
    assert_eq!(
        locks.json(&["status", "queue", "--json"])["client"],
        "holder"
    );
}

#[test]
fn failures_that_come_and_go_are_logged_once_per_kind_with_their_count() {
    let locks = Locks::new();
    // A corrupt state under `broken`: locking it fails (500), locking
    // anything else works.
    locks.ok(&["lock", "broken", "--client", "c1"]);
    let states = locks.state_files("broken");
    let lock = locks.path().join("nodes/broken/.lock");
    std::fs::rename(lock.join(&states[0]), lock.join("garbage")).expect("corrupt it");
    let server = Server::start(&locks, &[]);
    let take = |resource: &str| {
        server
            .post_json("/v1/lock", &json!({"resource": resource, "client": "c"}))
            .0
    };
    for n in 0..20 {
        assert_eq!(take("broken"), 500);
        assert_eq!(take(&format!("fine/{n}")), 200);
    }
    // Another kind of failure within the run is logged at once.
    let fifo = std::ffi::CString::new(
        locks
            .path()
            .join("nodes/fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("a path");
    // SAFETY: mkfifo(3) on a NUL-terminated path this test owns.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for n in 0..5 {
        assert_eq!(take("fifo/x"), 500);
        assert_eq!(take(&format!("again/{n}")), 200);
    }
    // Every failure is counted all the same.
    let (_, text) = server.get("/metrics");
    assert_eq!(sample(&text, "hasp_errors_total"), Some(25.0), "{text}");
    let (status, stderr) = server.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{stderr}");
    let warned: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ")).collect();
    // The test runs well within the ten seconds between two lines of a kind.
    assert_eq!(warned.len(), 4, "{stderr}");
    assert!(
        warned[0].contains(" WARN hasp::serve: a call failed: corrupt lock state ")
            && warned[0].contains("(1 corrupt-record failure since the last such line"),
        "{stderr}"
    );
    assert!(
        warned[1].ends_with(" WARN hasp::serve: calls succeed again"),
        "{stderr}"
    );
    assert!(
        warned[2]
            .contains(" WARN hasp::serve: a call failed: cannot use nodes/fifo: not a directory")
            && warned[2].contains("(1 storage failure since"),
        "{stderr}"
    );
    assert!(
        warned[3].ends_with(" WARN hasp::serve: calls succeed again"),
        "{stderr}"
    );
}

// ------------------------------------------------------------------ systemd

/// `hasp --dir DIR serve` started as systemd starts a socket-activated
/// `Type=notify` service: `listener` as fd 3, `LISTEN_PID` (its own pid,
/// set by `sh` before it execs hasp) and `LISTEN_FDS=1`, and
/// `NOTIFY_SOCKET`.
fn start_activated(
    locks: &Locks,
    listener: &std::net::TcpListener,
    notify: &std::path::Path,
) -> std::process::Child {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#])
        .arg(crate::support::hasp_bin())
        .arg("--dir")
        .arg(locks.path())
        .arg("serve")
        .env("NOTIFY_SOCKET", notify)
        .env_remove("RUST_LOG")
        .env_remove("HASP_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let fd = listener.as_raw_fd();
    // SAFETY: only dup2(2), which is async-signal-safe, between fork and
    // exec; it also clears close-on-exec on the copy.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn sh and hasp serve")
}

#[test]
fn systemd_socket_activation_and_readiness_notification() {
    use std::os::unix::net::UnixDatagram;
    let locks = Locks::new();
    let sockets = tempfile::tempdir().expect("temp dir");
    let notify_path = sockets.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    notify.set_read_timeout(Some(GUARD)).expect("timeout");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut child = start_activated(&locks, &listener, &notify_path);
    drop(listener);

    let mut message = [0u8; 64];
    let n = notify.recv(&mut message).expect("READY=1 within the guard");
    assert_eq!(&message[..n], b"READY=1");
    // Served on the socket systemd passed (hasp chose no address).
    let body = json!({"resource": "unit", "client": "a"}).to_string();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(GUARD)).expect("timeout");
    stream
        .write_all(&request("POST", "/v1/lock", &[], Some(&body)))
        .expect("send");
    let got = read_response(&mut BufReader::new(stream)).expect("an answer");
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(locks.json(&["status", "unit", "--json"])["client"], "a");

    // SAFETY: kill(2) on the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let n = notify
        .recv(&mut message)
        .expect("STOPPING=1 within the guard");
    assert_eq!(&message[..n], b"STOPPING=1");
    let status = child.wait().expect("wait for hasp serve");
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(
        stderr.contains(&format!("listening on http://{addr} ")),
        "{stderr}"
    );
}

#[test]
fn a_passed_socket_that_is_not_listening_tcp_is_one_line() {
    let locks = Locks::new();
    let sockets = tempfile::tempdir().expect("temp dir");
    let notify_path = sockets.path().join("notify");
    let _notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    // A UDP socket where a listening TCP one belongs.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a second owner of the UDP socket's descriptor, only to hand
    // it to start_activated, and forgotten right after.
    let as_listener = unsafe { std::net::TcpListener::from_raw_fd(udp.as_raw_fd()) };
    let child = start_activated(&locks, &as_listener, &notify_path);
    std::mem::forget(as_listener);
    let out = child.wait_with_output().expect("hasp serve ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("is not a listening TCP socket"), "{stderr}");
}

#[test]
fn the_systemd_units_verify() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed here");
        return;
    }
    let units = tempfile::tempdir().expect("temp dir");
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd");
    for unit in ["hasp.socket", "hasp.service"] {
        let text = std::fs::read_to_string(dist.join(unit)).expect("read the unit");
        // The binary under test where the unit expects an installed one.
        let text = text.replace("/usr/local/bin/hasp", crate::support::hasp_bin());
        std::fs::write(units.path().join(unit), text).expect("write the unit");
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.path().join("hasp.socket"))
        .arg(units.path().join("hasp.service"))
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr, "", "systemd-analyze has remarks");
}
