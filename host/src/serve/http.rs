//! Just enough HTTP/1.1 for the lock doors: reads one request at a time from
//! a connection under hard limits, and writes complete responses. Anything
//! over a limit or malformed becomes a JSON error response, never a dropped
//! connection.

use serde_json::json;
use std::borrow::Cow;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// Caps on what one request may be.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line and headers together, in bytes.
    pub head_bytes: usize,
    /// The request target (path and query), in bytes.
    pub target_bytes: usize,
    /// The body, in bytes.
    pub body_bytes: usize,
    /// From a request's first byte to its last.
    pub request_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes: 16 * 1024,
            target_bytes: 4096,
            body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One parsed request. Its head is kept as it arrived, one copy; the
/// method, target and headers are places in it.
#[derive(Debug)]
pub(super) struct Request {
    head: Vec<u8>,
    method: Range<usize>,
    /// The path, still percent-encoded.
    path: Range<usize>,
    /// The query string without `?`, still encoded.
    query: Range<usize>,
    /// Each header's name and value.
    headers: Vec<(Range<usize>, Range<usize>)>,
    pub body: Vec<u8>,
    /// Whether the client keeps the connection open after this request.
    pub keep_alive: bool,
    /// An HTTP/1.0 request.
    http10: bool,
}

/// How a request's body is framed (RFC 9112 §6.3).
enum Framing {
    /// `Content-Length: N` (none: 0).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Request {
    fn text(&self, at: &Range<usize>) -> &str {
        // Method and target are checked text (httparse hands them out as
        // `&str`); nothing else is read through here.
        std::str::from_utf8(&self.head[at.clone()]).unwrap_or_default()
    }

    pub(super) fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The path, still percent-encoded.
    pub(super) fn path(&self) -> &str {
        self.text(&self.path)
    }

    /// The first header named `name` (case-insensitive); bytes that are not
    /// UTF-8 read as U+FFFD.
    pub(super) fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.headers
            .iter()
            .find(|(n, _)| self.head[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(&self.head[v.clone()]))
    }

    /// Whether every percent escape in the path and the query is `%` and
    /// two hex digits, and they decode to UTF-8. Allocates only for a
    /// target that has escapes.
    pub(super) fn escapes_ok(&self) -> bool {
        // Path and query lie together in the head: one look for a `%`.
        let target = &self.head[self.path.start..self.query.end.max(self.path.end)];
        !target.contains(&b'%')
            || decode(self.path(), false).is_some()
                && decode(self.text(&self.query), false).is_some()
    }

    /// The decoded value of query parameter `key` (`+` reads as a space).
    pub(super) fn param(&self, key: &str) -> Option<String> {
        let [value] = self.params([key]);
        value
    }

    /// The decoded values of the query parameters `keys`, in one pass over
    /// the query: for each key, the first value that decodes.
    pub(super) fn params<const N: usize>(&self, keys: [&str; N]) -> [Option<String>; N] {
        let mut found = [const { None }; N];
        let mut missing = N;
        for pair in self.text(&self.query).split('&') {
            if missing == 0 {
                break;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded;
            let k = if k.contains(['%', '+']) {
                match decode(k, true) {
                    Some(d) => {
                        decoded = d;
                        decoded.as_str()
                    }
                    None => continue,
                }
            } else {
                k
            };
            let Some(at) = keys.iter().position(|key| *key == k) else {
                continue;
            };
            if found[at].is_none() {
                found[at] = decode(v, true);
                missing -= usize::from(found[at].is_some());
            }
        }
        found
    }
}

/// A response, written whole.
#[derive(Debug)]
pub(super) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Header lines beyond the framing ones, each ending in CRLF
    /// (`Allow: GET\r\n`).
    pub headers: &'static str,
    /// The grant this response hands over, if any: released again when the
    /// response cannot be delivered.
    pub grant: Option<Handed>,
}

/// A grant on its way to the client, with what releases it.
#[derive(Debug)]
pub(super) struct Handed {
    pub resource: String,
    pub fencing: u64,
    pub token: String,
}

impl Response {
    pub(super) fn json(status: u16, value: &(impl serde::Serialize + ?Sized)) -> Response {
        let mut body = Vec::with_capacity(128);
        let _ = serde_json::to_writer(&mut body, value);
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            headers: "",
            grant: None,
        }
    }

    /// This response with the header lines `headers` (each ending in CRLF).
    pub(super) fn with_headers(mut self, headers: &'static str) -> Response {
        self.headers = headers;
        self
    }

    /// This response, handing over `grant` (moved out of it, no copy).
    pub(super) fn handing(mut self, grant: crate::Grant) -> Response {
        self.grant = Some(Handed {
            resource: grant.holder.resource,
            fencing: grant.holder.fencing,
            token: grant.token,
        });
        self
    }

    /// `{"error": {"code": ..., "message": ...}}`.
    pub(super) fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(
            status,
            &json!({"error": {"code": code, "message": message}}),
        )
    }

    pub(super) fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
            headers: "",
            grant: None,
        }
    }
}

/// Why no request came.
pub(super) enum ReadError {
    /// The client closed, went idle for too long, or the server is
    /// stopping between requests: close quietly.
    Closed,
    /// The request was refused; answer with this, then close.
    Reject(Response),
}

/// Percent-decodes `text` (and `+` as a space when `plus` is set); `None`
/// for a bad escape or bytes that are not UTF-8.
pub(super) fn decode(text: &str, plus: bool) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || plus && b == b'+') {
        return Some(text.to_string());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Two hex digits, nothing else (`%+5` is no escape).
                let hex = |at: usize| bytes.get(at).and_then(|&b| char::from(b).to_digit(16));
                out.push((hex(i + 1)? * 16 + hex(i + 2)?) as u8);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// How a read ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fill {
    Data,
    Closed,
    TimedOut,
}

impl Fill {
    /// Within a request: the client went away, or was too slow.
    fn into_result(self) -> Result<(), ReadError> {
        match self {
            Fill::Data => Ok(()),
            Fill::Closed => Err(ReadError::Closed),
            Fill::TimedOut => Err(reject(408, "timeout", "the request did not arrive in time")),
        }
    }
}

/// What the accept loop sees of a connection: since when it has waited for
/// a request (if it is waiting), and its socket, to shut when the server
/// must make room for a new client.
#[derive(Debug)]
pub(super) struct Tracker {
    /// What `idle_since` counts from (the same for every connection).
    epoch: Instant,
    /// Nanoseconds from `epoch` to when the wait for a request will time
    /// out (so the smallest has waited longest); 0 while a request is read
    /// or answered.
    idle_since: AtomicU64,
    /// The socket; `None` once the connection has closed it.
    fd: Mutex<Option<RawFd>>,
}

impl Tracker {
    /// When the connection began to wait for a request, as a figure that
    /// orders connections (smaller: earlier); `None` while it is busy.
    pub(super) fn idle_since(&self) -> Option<u64> {
        Some(self.idle_since.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// Ends the connection's wait for its next request: shuts the reading
    /// half of its socket, so the wait ends as if the client had closed.
    /// A request already read is still answered. False if it is closed.
    pub(super) fn shed(&self) -> bool {
        let fd = self.fd.lock().unwrap_or_else(|e| e.into_inner());
        match *fd {
            // Busy (or shed already): left alone.
            Some(fd) if self.idle_since.swap(0, Ordering::Relaxed) != 0 => {
                // SAFETY: shutdown(2) on a socket the connection still
                // owns: it clears `fd` under this lock before closing it.
                unsafe { libc::shutdown(fd, libc::SHUT_RD) == 0 }
            }
            _ => false,
        }
    }
}

/// Reads requests off one connection, keeping bytes that arrive early
/// (pipelining) for the next request.
pub(super) struct Connection {
    stream: TcpStream,
    tracker: Arc<Tracker>,
    buf: Vec<u8>,
    /// When the wait for the current request (or the next one) ends.
    deadline: Instant,
    /// Fires at or before `deadline`.
    timer: Pin<Box<Sleep>>,
    /// Where a response is put together, kept between responses.
    out: Vec<u8>,
    limits: Limits,
    /// The client was seen to hang up while its request was answered.
    hung_up: bool,
    /// The last request was HTTP/1.0 asking to be kept alive: the answer
    /// must say it is (RFC 9112 §9.3), or the client waits for the close.
    say_keep_alive: bool,
    /// Whether a request that waits for `100 Continue` may send its body;
    /// if not, it is answered (say, 401) without it, and the connection
    /// closed.
    gate: Option<Gate>,
}

/// See [`Connection::gate`].
pub(super) type Gate = Arc<dyn Fn(&Request) -> bool + Send + Sync>;

impl Connection {
    /// A connection on `stream`, and what the accept loop sees of it;
    /// `epoch` is the same for every connection of a server.
    pub(super) fn new(
        stream: TcpStream,
        limits: Limits,
        epoch: Instant,
    ) -> (Connection, Arc<Tracker>) {
        // Idle from the start: a client that sends nothing is the first to
        // make room.
        let deadline = Instant::now() + limits.idle_timeout;
        let tracker = Arc::new(Tracker {
            epoch,
            idle_since: AtomicU64::new(stamp(deadline, epoch)),
            fd: Mutex::new(Some(stream.as_raw_fd())),
        });
        let connection = Connection {
            stream,
            tracker: tracker.clone(),
            buf: Vec::with_capacity(4096),
            deadline: Instant::now() + limits.request_timeout,
            timer: Box::pin(tokio::time::sleep(limits.request_timeout)),
            out: Vec::new(),
            limits,
            hung_up: false,
            say_keep_alive: false,
            gate: None,
        };
        (connection, tracker)
    }

    /// This connection, asking `gate` before it sends `100 Continue`.
    pub(super) fn with_gate(mut self, gate: Gate) -> Connection {
        self.gate = Some(gate);
        self
    }

    /// Whether the client was seen to hang up (by [`Connection::hang_up`]
    /// or [`Connection::has_hung_up`]): its answer has nobody to go to.
    pub(super) fn is_hung_up(&self) -> bool {
        self.hung_up
    }

    /// Resolves once the client hangs up (closes or resets its end) while
    /// its request is being answered. Bytes that arrive meanwhile (the next
    /// request, pipelined) are kept for later, up to one request's worth;
    /// past that the connection is no longer watched. Cancel-safe.
    pub(super) async fn hang_up(&mut self) {
        let most = self.limits.head_bytes + self.limits.body_bytes;
        loop {
            if self.buf.len() >= most {
                return std::future::pending().await;
            }
            self.buf.reserve(4096);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(n) if n > 0 => {}
                _ => {
                    self.hung_up = true;
                    return;
                }
            }
        }
    }

    /// Whether the client has hung up already, asked of the socket itself
    /// (one `recv` with `MSG_PEEK`, which takes nothing): never waits.
    pub(super) fn has_hung_up(&mut self) -> bool {
        if !self.hung_up {
            let mut byte = 0u8;
            // SAFETY: recv(2) into one byte this function owns, on a socket
            // the connection keeps open; MSG_DONTWAIT never blocks.
            let n = unsafe {
                libc::recv(
                    self.stream.as_raw_fd(),
                    (&raw mut byte).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            self.hung_up = n == 0
                || n < 0
                    && !matches!(
                        std::io::Error::last_os_error().kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    );
        }
        self.hung_up
    }

    /// The next request. Between requests it also gives up when `stopping`
    /// turns true; once a request has begun, it is read to the end.
    pub(super) async fn next(
        &mut self,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<Request, ReadError> {
        if self.buf.is_empty() {
            if *stopping.borrow() {
                return Err(ReadError::Closed);
            }
            self.set_deadline(self.limits.idle_timeout);
            // A new connection keeps the stamp it was made with.
            if self.tracker.idle_since.load(Ordering::Relaxed) == 0 {
                let since = stamp(self.deadline, self.tracker.epoch);
                self.tracker.idle_since.store(since, Ordering::Relaxed);
            }
            let filled = tokio::select! {
                filled = self.fill() => filled,
                _ = stopping.changed() => Fill::Closed,
            };
            self.tracker.idle_since.store(0, Ordering::Relaxed);
            if filled != Fill::Data {
                return Err(ReadError::Closed);
            }
        }
        self.set_deadline(self.limits.request_timeout);
        self.read_request().await
    }

    /// Moves the connection's deadline to `after` from now. The timer is
    /// armed again only when that is sooner than it would fire: otherwise
    /// it fires early, finds the deadline not yet reached and waits on, so
    /// a request costs no timer registration.
    fn set_deadline(&mut self, after: Duration) {
        self.deadline = Instant::now() + after;
        if self.deadline < self.timer.deadline() {
            self.timer.as_mut().reset(self.deadline);
        }
    }

    /// Reads what has arrived onto the end of the buffer (into its spare
    /// room, which is never zeroed first), waiting until the deadline.
    async fn fill(&mut self) -> Fill {
        self.buf.reserve(4096);
        let Connection {
            stream,
            buf,
            timer,
            deadline,
            ..
        } = self;
        loop {
            tokio::select! {
                biased;
                read = stream.read_buf(buf) => {
                    return match read {
                        Ok(n) if n > 0 => Fill::Data,
                        _ => Fill::Closed,
                    };
                }
                () = timer.as_mut() => {
                    if Instant::now() >= *deadline {
                        return Fill::TimedOut;
                    }
                    timer.as_mut().reset(*deadline);
                }
            }
        }
    }

    /// Fills until the head and body are complete; `Closed` if the client
    /// goes away half way.
    async fn read_request(&mut self) -> Result<Request, ReadError> {
        let head_len = loop {
            if let Some(end) = head_end(&self.buf) {
                break end;
            }
            let line_end = self
                .buf
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(self.buf.len());
            if line_end > self.limits.target_bytes + 32 {
                return Err(reject(
                    414,
                    "uri-too-long",
                    "the request target is too long",
                ));
            }
            if self.buf.len() > self.limits.head_bytes {
                return Err(reject(
                    431,
                    "headers-too-large",
                    "the request headers are too large",
                ));
            }
            self.fill().await.into_result()?;
        };
        if head_len > self.limits.head_bytes {
            return Err(reject(
                431,
                "headers-too-large",
                "the request headers are too large",
            ));
        }
        let (mut request, framing, expect_continue) = self.parse_head(head_len)?;
        self.say_keep_alive = request.http10 && request.keep_alive;
        let has_body = !matches!(framing, Framing::Length(0));
        if expect_continue && has_body && self.gate.as_ref().is_some_and(|gate| !gate(&request)) {
            // Refused before its body was asked for: answered without it,
            // then closed (the body may follow, unasked).
            request.keep_alive = false;
            self.buf.clear();
            return Ok(request);
        }
        let mut continued = !expect_continue;
        let end = match framing {
            Framing::Length(length) => {
                if length > self.limits.body_bytes {
                    return Err(reject(
                        413,
                        "body-too-large",
                        "the request body is too large",
                    ));
                }
                while self.buf.len() < head_len + length {
                    self.continue_once(&mut continued).await?;
                    self.fill().await.into_result()?;
                }
                request.body = self.buf[head_len..head_len + length].to_vec();
                head_len + length
            }
            Framing::Chunked => {
                let mut chunks = Chunks {
                    start: head_len,
                    at: head_len,
                    state: Chunk::Size,
                    trailers: 0,
                };
                while !chunks.advance(&self.buf, &mut request.body, &self.limits)? {
                    self.continue_once(&mut continued).await?;
                    self.fill().await.into_result()?;
                }
                chunks.at
            }
        };
        self.buf.drain(..end);
        Ok(request)
    }

    /// Answers `Expect: 100-continue` before the first wait for the body
    /// (RFC 9110 §10.1.1), once: the client holds the body back until then.
    async fn continue_once(&mut self, continued: &mut bool) -> Result<(), ReadError> {
        if !*continued {
            *continued = true;
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| ReadError::Closed)?;
        }
        Ok(())
    }

    /// The request head, how its body is framed, and whether the client
    /// waits for `100 Continue`. The framing headers are read by RFC 9112
    /// §6: `Content-Length` is digits only, and a second one must agree;
    /// `Transfer-Encoding` is `chunked` alone, never beside a
    /// `Content-Length` (either way round a request could be smuggled).
    fn parse_head(&self, head_len: usize) -> Result<(Request, Framing, bool), ReadError> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&self.buf[..head_len]) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(reject(431, "headers-too-large", "too many request headers"))
            }
            _ => return Err(reject(400, "bad-request", "malformed HTTP request")),
        }
        let (Some(method), Some(target), Some(version)) =
            (parsed.method, parsed.path, parsed.version)
        else {
            return Err(reject(400, "bad-request", "malformed HTTP request"));
        };
        if target.len() > self.limits.target_bytes {
            return Err(reject(
                414,
                "uri-too-long",
                "the request target is too long",
            ));
        }
        // Where each piece lies in the head: httparse hands out slices of it.
        let base = self.buf.as_ptr() as usize;
        let place = |piece: &[u8]| {
            let start = (piece.as_ptr() as usize).wrapping_sub(base);
            match start.checked_add(piece.len()) {
                Some(end) if end <= head_len => start..end,
                _ => 0..0,
            }
        };
        // One pass over the headers for everything the framing needs.
        let mut length = None;
        let mut chunked = None;
        let (mut close, mut keep, mut expect_continue) = (false, false, false);
        let mut hosts = 0;
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_length(h.value)
                    .ok_or_else(|| reject(400, "bad-request", "Content-Length is not a number"))?;
                if length.is_some_and(|before| before != n) {
                    return Err(reject(
                        400,
                        "bad-request",
                        "two different Content-Length headers",
                    ));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if chunked.is_some() || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Err(reject(
                        501,
                        "not-implemented",
                        "the only transfer coding taken is chunked",
                    ));
                }
                chunked = Some(());
            } else if name.eq_ignore_ascii_case(b"connection") {
                let value = String::from_utf8_lossy(h.value);
                close |= has_token(&value, "close");
                keep |= has_token(&value, "keep-alive");
            } else if name.eq_ignore_ascii_case(b"expect") {
                expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
            }
        }
        // RFC 9112 §3.2: an HTTP/1.1 request has one Host; none has two.
        if hosts > 1 || hosts == 0 && version != 0 {
            return Err(reject(
                400,
                "bad-request",
                "an HTTP/1.1 request needs exactly one Host header",
            ));
        }
        if target.contains('#') {
            return Err(reject(
                400,
                "bad-request",
                "the request target has a fragment (#), which is never sent",
            ));
        }
        let framing = match (length, chunked) {
            (Some(_), Some(())) => {
                return Err(reject(
                    400,
                    "bad-request",
                    "Transfer-Encoding and Content-Length together",
                ))
            }
            (_, Some(())) if version == 0 => {
                return Err(reject(
                    400,
                    "bad-request",
                    "Transfer-Encoding in an HTTP/1.0 request",
                ))
            }
            (_, Some(())) => Framing::Chunked,
            (length, None) => Framing::Length(length.unwrap_or(0)),
        };
        let headers: Vec<_> = parsed
            .headers
            .iter()
            .map(|h| (place(h.name.as_bytes()), place(h.value)))
            .collect();
        // The absolute form (RFC 9112 §3.2.2) is taken as its path.
        let target = absolute_path(target);
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (place(path.as_bytes()), place(query.as_bytes())),
            None => (place(target.as_bytes()), 0..0),
        };
        let request = Request {
            head: self.buf[..head_len].to_vec(),
            method: place(method.as_bytes()),
            path,
            query,
            headers,
            body: Vec::new(),
            keep_alive: !close && (version != 0 || keep),
            http10: version == 0,
        };
        Ok((request, framing, expect_continue && version != 0))
    }

    /// Writes `response`; `close` adds `Connection: close`. `head_only`
    /// (the answer to a `HEAD`) leaves the body out and keeps its length.
    pub(super) async fn send(
        &mut self,
        response: &Response,
        close: bool,
        head_only: bool,
    ) -> std::io::Result<()> {
        use std::io::Write as _;
        let out = &mut self.out;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}{}\r\n",
            response.status,
            reason(response.status),
            response.content_type,
            response.body.len(),
            response.headers,
            match (close, self.say_keep_alive) {
                (true, _) => "Connection: close\r\n",
                (false, true) => "Connection: keep-alive\r\n",
                (false, false) => "",
            },
        );
        if !head_only {
            out.extend_from_slice(&response.body);
        }
        self.stream.write_all(out).await
    }
}

/// The origin form of `target`: an absolute-form target
/// (`http://host:port/path?query`) without its scheme and authority (an
/// empty path, when it has none); any other as it is.
fn absolute_path(target: &str) -> &str {
    let scheme = target.find("://").filter(|&at| {
        let scheme = &target[..at];
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    });
    let Some(at) = scheme else {
        return target;
    };
    let rest = &target[at + 3..];
    match rest.find(['/', '?']) {
        Some(start) => &rest[start..],
        None => &rest[rest.len()..],
    }
}

/// Whether `line` is a field line as RFC 9112 §5 has it: a token, a
/// colon, and a value without control characters other than tab (so no
/// obs-fold, which starts with a space or tab).
fn field_line_ok(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    colon > 0
        && line[..colon].iter().all(tchar)
        && line[colon + 1..]
            .iter()
            .all(|&b| b == b'\t' || !(b < 0x20 || b == 0x7f))
}

/// `deadline` as a `Tracker::idle_since`: never 0.
fn stamp(deadline: Instant, epoch: Instant) -> u64 {
    let since = deadline.saturating_duration_since(epoch).as_nanos();
    u64::try_from(since).unwrap_or(u64::MAX).max(1)
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Before the socket closes: its number may be reused at once.
        *self.tracker.fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Whether the comma-separated header value `value` lists `token`.
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn reject(status: u16, code: &str, message: &str) -> ReadError {
    ReadError::Reject(Response::error(status, code, message))
}

/// Where the head ends: after the first empty line. Lines end in CRLF or,
/// as RFC 9112 §2.2 lets a server accept, a bare LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = buf[from..].iter().position(|&b| b == b'\n') {
        let lf = from + at;
        match buf.get(lf + 1..lf + 3) {
            Some([b'\n', _]) => return Some(lf + 2),
            Some([b'\r', b'\n']) => return Some(lf + 3),
            None if buf.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            _ => {}
        }
        from = lf + 1;
    }
    None
}

/// `value` without spaces and tabs around it.
fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|&b| b != b' ' && b != b'\t');
    let end = value.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(start), Some(end)) => &value[start..=end],
        _ => &[],
    }
}

/// A `Content-Length`: one or more digits and nothing else (no sign, no
/// spaces inside, no list), within `usize`.
fn parse_length(value: &[u8]) -> Option<usize> {
    let digits = trim(value);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &b| {
        let digit = char::from(b).to_digit(10)?;
        n.checked_mul(10)?.checked_add(digit as usize)
    })
}

/// Where a chunked body's reader is (RFC 9112 §7.1).
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Within a chunk's data, this many bytes to go.
    Data(usize),
    /// At the line end after a chunk's data.
    DataEnd,
    /// Among the trailer lines (ignored) after the last chunk.
    Trailers,
}

/// A chunked body being read: decoded as it arrives, without looking at a
/// byte twice.
struct Chunks {
    /// Where the body starts, in the connection's buffer.
    start: usize,
    /// The first byte not yet read, in the connection's buffer.
    at: usize,
    state: Chunk,
    /// Trailer bytes so far.
    trailers: usize,
}

/// The longest chunk-size line (with extensions) taken.
const CHUNK_LINE: usize = 1024;

impl Chunks {
    /// Reads on through `buf`, appending data to `body`: true once the
    /// body is complete (`at` is then just past it), false when it needs
    /// more bytes.
    fn advance(
        &mut self,
        buf: &[u8],
        body: &mut Vec<u8>,
        limits: &Limits,
    ) -> Result<bool, ReadError> {
        let too_large = || reject(413, "body-too-large", "the request body is too large");
        let bad = |message| reject(400, "bad-request", message);
        loop {
            match self.state {
                Chunk::Size => {
                    let Some((line, next)) = line(buf, self.at) else {
                        if buf.len() - self.at > CHUNK_LINE {
                            return Err(bad("a chunk-size line is too long"));
                        }
                        return Ok(false);
                    };
                    if line.len() > CHUNK_LINE {
                        return Err(bad("a chunk-size line is too long"));
                    }
                    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    let rest = trim(&line[digits..]);
                    if digits == 0 || !(rest.is_empty() || rest[0] == b';') {
                        return Err(bad("a chunk size is not hex digits"));
                    }
                    let mut size = 0usize;
                    for &b in &line[..digits] {
                        let digit = char::from(b).to_digit(16).unwrap_or(0) as usize;
                        size = match size.checked_mul(16) {
                            Some(n) if n + digit <= limits.body_bytes => n + digit,
                            _ => return Err(too_large()),
                        };
                    }
                    // The framing may not outweigh the body itself.
                    let framing = next - self.start - body.len();
                    if body.len() + size > limits.body_bytes || framing > limits.body_bytes + 4096 {
                        return Err(too_large());
                    }
                    self.at = next;
                    self.state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let take = left.min(buf.len() - self.at);
                    body.extend_from_slice(&buf[self.at..self.at + take]);
                    self.at += take;
                    if take < left {
                        self.state = Chunk::Data(left - take);
                        return Ok(false);
                    }
                    self.state = Chunk::DataEnd;
                }
                Chunk::DataEnd => match buf.get(self.at..) {
                    Some([b'\n', ..]) => {
                        self.at += 1;
                        self.state = Chunk::Size;
                    }
                    Some([b'\r', b'\n', ..]) => {
                        self.at += 2;
                        self.state = Chunk::Size;
                    }
                    Some([] | [b'\r']) | None => return Ok(false),
                    Some(_) => return Err(bad("a chunk is longer than its size")),
                },
                Chunk::Trailers => {
                    let Some((line, next)) = line(buf, self.at) else {
                        if self.trailers + buf.len() - self.at > limits.head_bytes {
                            return Err(reject(
                                431,
                                "headers-too-large",
                                "the request trailers are too large",
                            ));
                        }
                        return Ok(false);
                    };
                    self.trailers += next - self.at;
                    self.at = next;
                    if line.is_empty() {
                        return Ok(true);
                    }
                    if !field_line_ok(line) {
                        return Err(bad("a trailer line is not a header field"));
                    }
                    if self.trailers > limits.head_bytes {
                        return Err(reject(
                            431,
                            "headers-too-large",
                            "the request trailers are too large",
                        ));
                    }
                }
            }
        }
    }
}

/// The line of `buf` that starts at `at` (without its CRLF or LF), and
/// where the next one starts; `None` until it is complete.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let lf = at + buf.get(at..)?.iter().position(|&b| b == b'\n')?;
    let line = &buf[at..lf];
    Some((line.strip_suffix(b"\r").unwrap_or(line), lf + 1))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        410 => "Gone",
        501 => "Not Implemented",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        // Never sent: a phrase for the class all the same.
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_percent_and_two_hex_digits_and_decode_to_utf8() {
        assert_eq!(decode("a%20b+c", true).as_deref(), Some("a b c"));
        assert_eq!(decode("a%20b+c", false).as_deref(), Some("a b+c"));
        assert_eq!(decode("caf%C3%a9", false).as_deref(), Some("café"));
        for bad in ["%", "%4", "%4g", "%+5", "%-5", "% 5", "%FF", "%C3", "x%"] {
            assert_eq!(decode(bad, true), None, "{bad:?}");
        }
    }

    #[test]
    fn every_status_sent_has_its_reason_phrase() {
        for (status, phrase) in [
            (200, "OK"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (408, "Request Timeout"),
            (409, "Conflict"),
            (410, "Gone"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (431, "Request Header Fields Too Large"),
            (499, "Client Closed Request"),
            (500, "Internal Server Error"),
            (501, "Not Implemented"),
            (503, "Service Unavailable"),
            (507, "Insufficient Storage"),
        ] {
            assert_eq!(reason(status), phrase, "{status}");
        }
        for status in [102, 299, 308, 418, 599, 600] {
            assert!(!reason(status).is_empty(), "{status}");
        }
    }

    #[test]
    fn absolute_form_targets_read_as_their_path() {
        assert_eq!(
            absolute_path("http://127.0.0.1:1/canhaz/x?id=a"),
            "/canhaz/x?id=a"
        );
        assert_eq!(absolute_path("HTTPS://h/v1/list"), "/v1/list");
        assert_eq!(absolute_path("http://h?q"), "?q");
        assert_eq!(absolute_path("http://h"), "");
        assert_eq!(absolute_path("/canhaz/http://x"), "/canhaz/http://x");
        assert_eq!(absolute_path("ftp://h/x"), "ftp://h/x");
    }

    #[test]
    fn trailer_lines_are_field_lines() {
        assert!(field_line_ok(b"T: v"));
        assert!(field_line_ok(b"T:\tv w"));
        for bad in [
            &b" T: v"[..],
            b"\tT: v",
            b"T v",
            b": v",
            b"T: v\0",
            b"T\0: v",
            b"T : v",
            b"T: \x01",
        ] {
            assert!(!field_line_ok(bad), "{bad:?}");
        }
        assert_eq!(chunked(b"0\r\n folded\r\n\r\n"), Err(400));
        assert_eq!(chunked(b"0\r\nno colon\r\n\r\n"), Err(400));
        assert_eq!(chunked(b"0\r\nT: a\0b\r\n\r\n"), Err(400));
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 33\t"), Some(33));
        for bad in [
            &b""[..],
            b" ",
            b"+33",
            b"-1",
            b"0x10",
            b"3 3",
            b"33,33",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_head_ends_at_its_first_empty_line_crlf_or_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\n\r\n"), Some(23));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r"), None);
    }

    /// Decodes `raw` as a whole chunked body: the body and the bytes read,
    /// or the status it is refused with.
    fn chunked(raw: &[u8]) -> Result<Option<(Vec<u8>, usize)>, u16> {
        let mut chunks = Chunks {
            start: 0,
            at: 0,
            state: Chunk::Size,
            trailers: 0,
        };
        let mut body = Vec::new();
        match chunks.advance(raw, &mut body, &Limits::default()) {
            Ok(true) => Ok(Some((body, chunks.at))),
            Ok(false) => Ok(None),
            Err(ReadError::Reject(response)) => Err(response.status),
            Err(ReadError::Closed) => Err(0),
        }
    }

    #[test]
    fn chunk_sizes_are_strict_hex_and_trailers_are_skipped() {
        let done = |body: &str, used: usize| Ok(Some((body.as_bytes().to_vec(), used)));
        assert_eq!(chunked(b"3\r\nabc\r\n0\r\n\r\nNEXT"), done("abc", 13));
        assert_eq!(
            chunked(b"3;x=y\nabc\nA\r\n0123456789\r\n0\r\nT: v\r\n\r\n"),
            done("abc0123456789", 36)
        );
        assert_eq!(chunked(b"3\r\nab"), Ok(None));
        assert_eq!(chunked(b"3\r\nabc\r\n0\r\nT: v\r\n"), Ok(None));
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"+3\r\n",
            b"0x3\r\n",
            b"3 3\r\n",
            b"1\r\nab\r\n",
        ] {
            assert_eq!(chunked(bad), Err(400), "{bad:?}");
        }
        assert_eq!(chunked(b"ffffffffffffffffffffffff\r\n"), Err(413));
        assert_eq!(chunked(b"10001\r\n"), Err(413));
        let long = format!("1;{}\r\n", "x".repeat(2000));
        assert_eq!(chunked(long.as_bytes()), Err(400));
    }

    mod properties {
        //! Properties of every framing parser over arbitrary input: none
        //! panics, and what a client may validly send reads back as sent.

        use super::*;
        use proptest::prelude::*;

        fn percent_encoded(text: &str) -> String {
            text.bytes().map(|b| format!("%{b:02X}")).collect()
        }

        proptest! {
            #[test]
            fn decode_never_panics(text in ".*", plus: bool) {
                let _ = decode(&text, plus);
            }

            #[test]
            fn every_escaped_string_decodes_to_itself(text in ".*") {
                prop_assert_eq!(decode(&percent_encoded(&text), false), Some(text.clone()));
                prop_assert_eq!(decode(&percent_encoded(&text), true), Some(text));
            }

            #[test]
            fn text_without_escapes_decodes_to_itself(text in "[^%+]*") {
                prop_assert_eq!(decode(&text, true), Some(text));
            }

            #[test]
            fn parse_length_never_panics_and_reads_every_number(
                raw in proptest::collection::vec(any::<u8>(), 0..32),
                n: u32,
            ) {
                let _ = parse_length(&raw);
                prop_assert_eq!(parse_length(n.to_string().as_bytes()), Some(n as usize));
            }

            #[test]
            fn head_end_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
                if let Some(end) = head_end(&raw) {
                    prop_assert!(end <= raw.len());
                }
            }

            #[test]
            fn chunked_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = chunked(&raw);
            }

            #[test]
            fn a_body_in_any_chunks_reads_back_whole(
                body in proptest::collection::vec(any::<u8>(), 0..4096),
                cuts in proptest::collection::vec(1usize..600, 1..16),
            ) {
                let mut raw = Vec::new();
                let (mut at, mut cut) = (0, cuts.iter().cycle());
                while at < body.len() {
                    let size = (*cut.next().unwrap_or(&1)).min(body.len() - at);
                    raw.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                    raw.extend_from_slice(&body[at..at + size]);
                    raw.extend_from_slice(b"\r\n");
                    at += size;
                }
                raw.extend_from_slice(b"0\r\n\r\n");
                prop_assert_eq!(chunked(&raw), Ok(Some((body, raw.len()))));
            }
        }
    }
}
