//! Just enough HTTP/1.1 for the lock doors: reads one request at a time from
//! a connection under hard limits, and writes complete responses. Anything
//! over a limit or malformed becomes a JSON error response, never a dropped
//! connection.

use serde_json::json;
use std::borrow::Cow;
use std::ops::Range;
use std::pin::Pin;
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
pub struct Request {
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
}

impl Request {
    fn text(&self, at: &Range<usize>) -> &str {
        // Method and target are checked text (httparse hands them out as
        // `&str`); nothing else is read through here.
        std::str::from_utf8(&self.head[at.clone()]).unwrap_or_default()
    }

    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    /// The path, still percent-encoded.
    pub fn path(&self) -> &str {
        self.text(&self.path)
    }

    /// The first header named `name` (case-insensitive); bytes that are not
    /// UTF-8 read as U+FFFD.
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.headers
            .iter()
            .find(|(n, _)| self.head[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(&self.head[v.clone()]))
    }

    /// The decoded value of query parameter `key` (`+` reads as a space).
    pub fn param(&self, key: &str) -> Option<String> {
        let [value] = self.params([key]);
        value
    }

    /// The decoded values of the query parameters `keys`, in one pass over
    /// the query: for each key, the first value that decodes.
    pub fn params<const N: usize>(&self, keys: [&str; N]) -> [Option<String>; N] {
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
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The grant this response hands over, if any: released again when the
    /// response cannot be delivered.
    pub grant: Option<Handed>,
}

/// A grant on its way to the client, with what releases it.
#[derive(Debug)]
pub struct Handed {
    pub resource: String,
    pub fencing: u64,
    pub token: String,
}

impl Response {
    pub fn json(status: u16, value: &(impl serde::Serialize + ?Sized)) -> Response {
        let mut body = Vec::with_capacity(128);
        let _ = serde_json::to_writer(&mut body, value);
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            grant: None,
        }
    }

    /// This response, handing over `grant` (moved out of it, no copy).
    pub fn handing(mut self, grant: crate::Grant) -> Response {
        self.grant = Some(Handed {
            resource: grant.holder.resource,
            fencing: grant.holder.fencing,
            token: grant.token,
        });
        self
    }

    /// `{"error": {"code": ..., "message": ...}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(
            status,
            &json!({"error": {"code": code, "message": message}}),
        )
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Response {
        Response {
            status,
            content_type,
            body: body.into_bytes(),
            grant: None,
        }
    }
}

/// Why no request came.
pub enum ReadError {
    /// The client closed, went idle for too long, or the server is
    /// stopping between requests: close quietly.
    Closed,
    /// The request was refused; answer with this, then close.
    Reject(Response),
}

/// Percent-decodes `text` (and `+` as a space when `plus` is set); `None`
/// for a bad escape or bytes that are not UTF-8.
pub fn decode(text: &str, plus: bool) -> Option<String> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || plus && b == b'+') {
        return Some(text.to_string());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
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

/// Reads requests off one connection, keeping bytes that arrive early
/// (pipelining) for the next request.
pub struct Connection {
    stream: TcpStream,
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
}

impl Connection {
    pub fn new(stream: TcpStream, limits: Limits) -> Connection {
        Connection {
            stream,
            buf: Vec::with_capacity(4096),
            deadline: Instant::now() + limits.request_timeout,
            timer: Box::pin(tokio::time::sleep(limits.request_timeout)),
            out: Vec::new(),
            limits,
            hung_up: false,
        }
    }

    /// Whether the client was seen to hang up (by [`Connection::hang_up`]
    /// or [`Connection::has_hung_up`]): its answer has nobody to go to.
    pub fn is_hung_up(&self) -> bool {
        self.hung_up
    }

    /// Resolves once the client hangs up (closes or resets its end) while
    /// its request is being answered. Bytes that arrive meanwhile (the next
    /// request, pipelined) are kept for later, up to one request's worth;
    /// past that the connection is no longer watched. Cancel-safe.
    pub async fn hang_up(&mut self) {
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
    pub fn has_hung_up(&mut self) -> bool {
        use std::os::fd::AsRawFd;
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
    pub async fn next(
        &mut self,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<Request, ReadError> {
        if self.buf.is_empty() {
            if *stopping.borrow() {
                return Err(ReadError::Closed);
            }
            self.set_deadline(self.limits.idle_timeout);
            tokio::select! {
                filled = self.fill() => {
                    if filled != Fill::Data {
                        return Err(ReadError::Closed);
                    }
                }
                _ = stopping.changed() => return Err(ReadError::Closed),
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
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            let line_end = find(&self.buf, b"\r\n").unwrap_or(self.buf.len());
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
        let mut request = self.parse_head(head_len)?;
        if request.header("transfer-encoding").is_some() {
            return Err(reject(
                411,
                "length-required",
                "send the body with a Content-Length",
            ));
        }
        let length = match request.header("content-length") {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| reject(400, "bad-request", "Content-Length is not a number"))?,
        };
        if length > self.limits.body_bytes {
            return Err(reject(
                413,
                "body-too-large",
                "the request body is too large",
            ));
        }
        while self.buf.len() < head_len + length {
            self.fill().await.into_result()?;
        }
        request.body = self.buf[head_len..head_len + length].to_vec();
        self.buf.drain(..head_len + length);
        Ok(request)
    }

    fn parse_head(&self, head_len: usize) -> Result<Request, ReadError> {
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
        let headers: Vec<_> = parsed
            .headers
            .iter()
            .map(|h| (place(h.name.as_bytes()), place(h.value)))
            .collect();
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (place(path.as_bytes()), place(query.as_bytes())),
            None => (place(target.as_bytes()), 0..0),
        };
        let mut request = Request {
            head: self.buf[..head_len].to_vec(),
            method: place(method.as_bytes()),
            path,
            query,
            headers,
            body: Vec::new(),
            keep_alive: true,
        };
        let close = request
            .header("connection")
            .is_some_and(|c| has_token(&c, "close"));
        let keep = request
            .header("connection")
            .is_some_and(|c| has_token(&c, "keep-alive"));
        request.keep_alive = !close && (version != 0 || keep);
        Ok(request)
    }

    /// Writes `response`; `close` adds `Connection: close`.
    pub async fn send(&mut self, response: &Response, close: bool) -> std::io::Result<()> {
        use std::io::Write as _;
        let out = &mut self.out;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n",
            response.status,
            reason(response.status),
            response.content_type,
            response.body.len(),
            if close { "Connection: close\r\n" } else { "" },
        );
        out.extend_from_slice(&response.body);
        self.stream.write_all(out).await
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}
