//! HTTP/1.1 framing (RFC 9112) over raw TCP: keep-alive and pipelining,
//! HEAD, 405 with Allow, `Expect: 100-continue`, bare LF, chunked bodies,
//! conflicting lengths, HTTP/1.0; and real clients (node, curl) that send
//! chunked bodies and expect 100.

use super::{
    assert_error_response, held, read_head, read_response, request, show, Response, Server,
};
use crate::support::Locks;
use serde_json::{json, Value};
use std::io::{BufReader, Read, Write};
use std::process::{Command, Stdio};

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
    assert_eq!(got.status, 200);
    super::assert_health(&got.json());
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
        ("POST", "/v1/list", "GET, HEAD"),
        ("DELETE", "/v1/status", "GET, HEAD"),
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
        .write_all(b"GET /healthz HTTP/1.1\nHost: h\n\nGET /canhaz/lf?id=x HTTP/1.1\r\nHost: h\n\r\nGET / HTTP/1.1\nHost: h\n\n")
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

// ------------------------------------------------------------- real clients

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

#[test]
fn host_is_required_once_and_a_fragment_is_refused() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    for raw in [
        "GET /canhaz/nohost?id=a HTTP/1.1\r\n\r\n",
        "GET /canhaz/twohosts?id=a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /canhaz/twohosts10?id=a HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /canhaz/frag#x?id=a HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /canhaz/frag2?id=a#x HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let (got, closed) = send_and_close(&server, raw.as_bytes());
        assert_error_response(&got, 400, "bad-request");
        assert!(closed, "{raw:?}");
    }
    // HTTP/1.0 needs no Host.
    let (got, _) = send_and_close(&server, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(held(&locks), Vec::<String>::new());
}

#[test]
fn an_absolute_form_target_is_taken_as_its_path() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let raw = format!(
        "GET http://{}/canhaz/absolute?id=a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let got = server.send(raw.as_bytes());
    assert_eq!(
        (got.status, &got.json()["ok"]),
        (200, &json!(true)),
        "{got:?}"
    );
    assert_eq!(held(&locks), ["absolute"]);
    assert_eq!(locks.json(&["status", "absolute", "--json"])["client"], "a");
}

#[test]
fn trailer_lines_are_checked_like_header_lines() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    let body = json!({"resource": "trailed", "client": "c"}).to_string();
    for trailer in [" folded: x", "no colon here", "T: a\0b", "\tT: v"] {
        let raw = format!(
            "POST /v1/lock HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\n{trailer}\r\n\r\n",
            body.len()
        );
        let (got, closed) = send_and_close(&server, raw.as_bytes());
        assert_error_response(&got, 400, "bad-request");
        assert!(closed, "{trailer:?}");
    }
    assert_eq!(held(&locks), Vec::<String>::new());
    // A well-formed trailer is fine.
    let raw = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\nT: v\r\n\r\n",
        body.len()
    );
    assert_eq!(server.send(raw.as_bytes()).status, 200);
    assert_eq!(held(&locks), ["trailed"]);
}

#[test]
fn head_is_answered_on_the_read_only_routes() {
    let locks = Locks::new();
    let server = Server::start(&locks, &[]);
    assert_eq!(server.get("/canhaz/seen?id=a").0, 200);
    for target in ["/v1/status?resource=seen", "/v1/list", "/dohaz/seen"] {
        let get = server.send(&request("GET", target, &[], None));
        assert_eq!(get.status, 200, "{target}: {get:?}");
        let mut stream = server.connect();
        // Kept alive: a body sent after the head would be read as the next
        // response.
        let raw = format!("HEAD {target} HTTP/1.1\r\nHost: h\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        stream.write_all(raw.as_bytes()).expect("send");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader);
        assert_eq!(status, "HTTP/1.1 200 OK", "{target}: {headers:?}");
        let length = get.body.len().to_string();
        assert!(
            headers.contains(&("content-length".into(), length)),
            "{target}: {headers:?}"
        );
        let next = read_response(&mut reader).expect("the GET after the HEAD");
        assert_eq!(next.status, 200, "{target}");
        super::assert_health(&next.json());
    }
    // Nothing that changes locks takes HEAD.
    for target in ["/canhaz/other?id=b", "/nowant/seen?id=a"] {
        let mut stream = server.connect();
        stream
            .write_all(&request("HEAD", target, &[], None))
            .expect("send");
        let (status, headers) = read_head(&mut BufReader::new(stream));
        assert_eq!(
            status, "HTTP/1.1 405 Method Not Allowed",
            "{target}: {headers:?}"
        );
    }
    assert_eq!(held(&locks), ["seen"]);
}

#[test]
fn expect_100_continue_on_a_request_without_the_token_gets_401_without_100() {
    let locks = Locks::new();
    let (_secrets, file) = super::token_file("s3cret");
    let server = Server::start(&locks, &["--token-file", &file]);
    let body = json!({"resource": "gated", "client": "c"}).to_string();
    for auth in ["", "Authorization: Bearer wrong\r\n"] {
        let mut stream = server.connect();
        let head = format!(
            "POST /v1/lock HTTP/1.1\r\nHost: h\r\n{auth}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("send the head");
        let mut reader = BufReader::new(stream);
        let got = read_response(&mut reader).expect("an answer, not 100 Continue");
        assert_error_response(&got, 401, "unauthorized");
        assert_eq!(got.header("Connection"), Some("close"), "{got:?}");
    }
    // With the token, the body is asked for.
    let mut stream = server.connect();
    let head = format!(
        "POST /v1/lock HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("send the head");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    assert_eq!(read_head(&mut reader).0, "HTTP/1.1 100 Continue");
    stream.write_all(body.as_bytes()).expect("send the body");
    assert_eq!(read_response(&mut reader).expect("the answer").status, 200);
    assert_eq!(held(&locks), ["gated"]);
}
