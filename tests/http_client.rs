//! The raw HTTP/1.1 client of hasp's black-box tests and of `cargo bench
//! --bench serve`, written once: the bytes of a request, a response read off
//! the wire (status line, headers, a body framed by Content-Length, chunks or
//! the end of the connection) and keep-alive connections that count the
//! ones the server dropped.
//!
//! Raw, because the tests send what no polite client would and the benches
//! want nothing between them and the socket. One reader serves blocking
//! (`std::net`) and event-loop (tokio) connections alike: it is written as
//! `async` over a [`Source`]; a blocking source is done at the first poll,
//! so [`now`] runs it without a runtime.
//!
//! Included by path (`#[path = ...] mod http_client;`) from `tests/all/` and
//! `benches/serve.rs`; each uses a part of it.

#![allow(dead_code)]

use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// How long a connect, a write or a read may take before it fails: a guard
/// against hanging, not a measure of speed.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The bytes of an HTTP/1.1 request: the request line, `headers` in order
/// (`Host` among them, if wanted), Content-Length for a body, the blank line
/// and the body.
pub fn request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// A blocking connection to `addr`, with [`TIMEOUT`] on connect, reads and
/// writes, and Nagle's delay off.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// A response head: the status line as sent (without its line end), the
/// status and the headers (names in lower case, values trimmed).
#[derive(Debug)]
pub struct Head {
    pub line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// A whole response; the body as text (invalid UTF-8 replaced).
#[derive(Debug)]
pub struct Response {
    /// The status line as sent, without its line end.
    pub line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// How a response's body ends.
enum Framing {
    Chunked,
    Length(usize),
    /// At the end of the connection.
    Close,
}

/// The value of the first header called `name` (any case).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let found = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
    found.map(|(_, v)| v.as_str())
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    fn framing(&self) -> io::Result<Framing> {
        let chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        match (chunked, self.header("content-length")) {
            (true, _) => Ok(Framing::Chunked),
            (false, Some(length)) => length.parse().map(Framing::Length).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("Content-Length {length:?}: {e}"),
                )
            }),
            (false, None) => Ok(Framing::Close),
        }
    }
}

impl Response {
    /// The body as JSON; panics (naming the response) if it is not.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Whether the connection stays open after this response: its body is
    /// framed and it does not say `Connection: close`, nor is it an HTTP/1.0
    /// response without `Connection: keep-alive`.
    pub fn keeps_alive(&self) -> bool {
        let connection = self.header("connection");
        let says = |word: &str| connection.is_some_and(|v| v.eq_ignore_ascii_case(word));
        let close = says("close") || (self.line.starts_with("HTTP/1.0") && !says("keep-alive"));
        let framed = self.header("content-length").is_some()
            || self
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        framed && !close
    }
}

/// Where a response is read from: a blocking `std::io::BufReader` (each
/// call done at its first poll) or a tokio one.
pub trait Source {
    /// A line with its end, as `BufRead::read_line`; 0 at the end.
    async fn line(&mut self, line: &mut String) -> io::Result<usize>;
    async fn exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    async fn to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;
}

impl<R: Read> Source for io::BufReader<R> {
    async fn line(&mut self, line: &mut String) -> io::Result<usize> {
        self.read_line(line)
    }
    async fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf)
    }
    async fn to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.read_to_end(buf)
    }
}

impl<R: tokio::io::AsyncRead + Unpin> Source for tokio::io::BufReader<R> {
    async fn line(&mut self, line: &mut String) -> io::Result<usize> {
        self.read_line(line).await
    }
    async fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact(buf).await.map(drop)
    }
    async fn to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        self.read_to_end(buf).await
    }
}

/// Reads a response head: an `HTTP/1.x` status line, then header lines to
/// the blank line.
pub async fn receive_head(source: &mut impl Source) -> io::Result<Head> {
    let mut line = String::new();
    if source.line(&mut line).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    let status = match parts.next().and_then(|s| s.parse::<u16>().ok()) {
        Some(status) if version.starts_with("HTTP/1.") => status,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            ))
        }
    };
    let mut headers = Vec::new();
    let mut text = String::new();
    loop {
        text.clear();
        if source.line(&mut text).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in headers",
            ));
        }
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            return Ok(Head {
                line,
                status,
                headers,
            });
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header {text:?}"),
            ));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

/// Reads one response: its head, then its body by Content-Length, by chunks,
/// or to the end of the connection.
pub async fn receive(source: &mut impl Source) -> io::Result<Response> {
    let head = receive_head(source).await?;
    let mut body = Vec::new();
    match head.framing()? {
        Framing::Chunked => {
            let mut line = String::new();
            loop {
                line.clear();
                source.line(&mut line).await?;
                let size = line.trim().split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size, 16).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("chunk size {line:?}: {e}"),
                    )
                })?;
                let at = body.len();
                body.resize(at + size, 0);
                source.exact(&mut body[at..]).await?;
                line.clear();
                source.line(&mut line).await?;
                if size == 0 {
                    break;
                }
            }
        }
        Framing::Length(length) => {
            body.resize(length, 0);
            source.exact(&mut body).await?;
        }
        Framing::Close => {
            source.to_end(&mut body).await?;
        }
    }
    let body = String::from_utf8(body)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Ok(Response {
        line: head.line,
        status: head.status,
        headers: head.headers,
        body,
    })
}

/// [`receive`] from a blocking reader.
pub fn read_response<R: Read>(reader: &mut io::BufReader<R>) -> io::Result<Response> {
    now(receive(reader))
}

/// [`receive_head`] from a blocking reader: the answer to a HEAD, or a
/// `100 Continue`.
pub fn read_head<R: Read>(reader: &mut io::BufReader<R>) -> io::Result<Head> {
    now(receive_head(reader))
}

/// Runs a future of blocking I/O to its end. Blocking calls are done inside
/// the first poll, so such a future never waits and needs no runtime.
pub fn now<T>(future: impl Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("a blocking request waited"),
    }
}

// ---------------------------------------------------------------------------
// Keep-alive clients: blocking (`Http`) and event-loop (`AsyncHttp`)

/// An HTTP/1.1 keep-alive client over a [`Conn`], made when needed: to
/// `addr`, with `Host` its address; `drops` counts the connections that
/// failed or that the server closed, and `closes` those of them that the
/// server closed after a response saying it would (`Connection: close`, or
/// HTTP/1.0 without keep-alive, as a server of one request per connection
/// does: expected of such a server, not a failure). What is sent over it is written once,
/// as `async`: `AsyncHttp` runs it as a task of a runtime, `Http` blocks in
/// it and so runs it with [`now`].
pub struct Keep<C> {
    addr: SocketAddr,
    host: String,
    conn: Option<C>,
    pub drops: u64,
    pub closes: u64,
}

/// The blocking client: std::net, one thread per connection.
pub type Http = Keep<io::BufReader<TcpStream>>;

/// The event-loop client: a tokio TcpStream, for a task among many on one
/// thread. Each request (connect, or write and response) times out after
/// [`TIMEOUT`], as `Http`'s socket timeouts do.
pub type AsyncHttp = Keep<tokio::io::BufReader<tokio::net::TcpStream>>;

impl<C> Keep<C> {
    pub fn new(addr: SocketAddr) -> Keep<C> {
        Keep {
            addr,
            host: addr.to_string(),
            conn: None,
            drops: 0,
            closes: 0,
        }
    }

    /// The bytes of a request over this client: `Host`, and for a body its
    /// Content-Type (XML for `/RPC2`, else JSON).
    fn bytes(&self, method: &str, target: &str, body: Option<&[u8]>) -> Vec<u8> {
        let kind = if target == "/RPC2" {
            "text/xml"
        } else {
            "application/json"
        };
        let host = [("Host", self.host.as_str()), ("Content-Type", kind)];
        let headers = if body.is_some() {
            &host[..]
        } else {
            &host[..1]
        };
        request(method, target, headers, body)
    }

    /// A request's `outcome`, after closing the connection, counted in
    /// `drops`, if it failed or is not kept.
    fn settle(
        &mut self,
        outcome: io::Result<Response>,
        method: &str,
        target: &str,
    ) -> Result<(u16, String), String> {
        match outcome {
            Ok(response) => {
                if !response.keeps_alive() {
                    self.conn = None;
                    self.drops += 1;
                    self.closes += 1;
                }
                Ok((response.status, response.body))
            }
            Err(e) => {
                self.conn = None;
                self.drops += 1;
                Err(format!("{method} {target}: {e}"))
            }
        }
    }
}

/// A connection a [`Keep`] client sends over: blocking or tokio.
pub trait Conn: Sized {
    async fn open(addr: SocketAddr) -> io::Result<Self>;

    /// Writes `request` and reads its response.
    async fn exchange(&mut self, request: &[u8]) -> io::Result<Response>;
}

impl Conn for io::BufReader<TcpStream> {
    async fn open(addr: SocketAddr) -> io::Result<Self> {
        Ok(io::BufReader::with_capacity(16 * 1024, connect(addr)?))
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        self.get_mut().write_all(request)?;
        receive(self).await
    }
}

impl Conn for tokio::io::BufReader<tokio::net::TcpStream> {
    async fn open(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
        stream.set_nodelay(true)?;
        Ok(tokio::io::BufReader::with_capacity(16 * 1024, stream))
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        let exchange = async {
            self.get_mut().write_all(request).await?;
            receive(self).await
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

impl<C: Conn> Keep<C> {
    /// Status and body. A connection that fails, or that the server closes,
    /// is counted as dropped and made anew at the next request.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, String), String> {
        if self.conn.is_none() {
            let conn = C::open(self.addr).await;
            self.conn = Some(conn.map_err(|e| format!("connect: {e}"))?);
        }
        let bytes = self.bytes(method, target, body);
        let conn = self.conn.as_mut().expect("connected");
        let outcome = conn.exchange(&bytes).await;
        self.settle(outcome, method, target)
    }

    pub async fn get(&mut self, target: &str) -> Result<(u16, String), String> {
        self.request("GET", target, None).await
    }

    pub async fn post(&mut self, target: &str, body: &[u8]) -> Result<(u16, String), String> {
        self.request("POST", target, Some(body)).await
    }
}
