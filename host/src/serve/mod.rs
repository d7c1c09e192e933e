//! `hasp serve`: one daemon with three front doors on one registry —
//! Locker's HTTP (`/canhaz`, `/nowant`, `/dohaz`), gocept.lockd's XML-RPC
//! (`/RPC2`) and a JSON API (`/v1/`) — plus `/healthz` and `/metrics`.
//!
//! The server holds no lock state: each request runs the guest component on
//! the lock directory (through a pool of instances), so the CLI, other
//! daemons and the stock `wasmtime` CLI can share the directory safely.

mod durable;
mod http;
mod locker;
mod locks;
mod metrics;
mod pool;
mod v1;
mod xmlrpc;

pub use http::Limits;

use crate::{Error, Runtime};
use base64::Engine as _;
use http::{Connection, ReadError, Request, Response};
use locks::Locks;
use metrics::Door;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How much `hasp serve` says on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// Everything `hasp serve` needs to start.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The lock directory (must exist).
    pub dir: PathBuf,
    /// Where to listen.
    pub addr: SocketAddr,
    /// Clients must send this bearer token (or it as a Basic password).
    pub token: Option<String>,
    /// Sync the filesystem (group commit) before acknowledging a change.
    pub fsync: bool,
    /// Guest instances working in parallel.
    pub workers: usize,
    pub limits: Limits,
    pub log: LogLevel,
    /// The lease (1 ms to 30 days) given to grants made through doors whose
    /// clients cannot ask for one: gocept.lockd's XML-RPC, and Locker's
    /// `canhaz` without `ttl=`. `None`: those locks last until unlocked.
    /// `/v1` clients choose with `ttl_ms`.
    pub default_ttl: Option<Duration>,
}

struct App {
    locks: Locks,
    token: Option<String>,
    log: LogLevel,
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish.
pub fn serve(config: ServeConfig) -> Result<(), Error> {
    let io = |what: &str, e: std::io::Error| Error::Runtime(format!("{what}: {e}"));
    if let Some(ttl) = config.default_ttl {
        let ms = crate::registry::duration_ms(ttl);
        if !(1..=v1::MAX_TTL_MS).contains(&ms) {
            return Err(Error::InvalidInput {
                message: format!(
                    "the default TTL is from 1 ms to 30 days, not {ms} ms (--default-ttl)"
                ),
            });
        }
    }
    let runtime = Runtime::shared()?;
    let syncer = if config.fsync {
        Some(durable::Syncer::start(&config.dir).map_err(|e| io("cannot start syncing", e))?)
    } else {
        None
    };
    // One network thread per CPU: guest calls run on them too.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reactor = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("hasp-io")
        .build()
        .map_err(|e| io("cannot start the network runtime", e))?;
    reactor.block_on(async move {
        let pool = pool::Pool::start(&runtime, &config.dir, config.workers).await?;
        let app = Arc::new(App {
            locks: Locks::new(pool, syncer, config.default_ttl),
            token: config.token.clone(),
            log: config.log,
        });
        // Handlers first: a signal that follows the startup line must stop
        // the server cleanly, not kill it.
        let signals = Signals::new();
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| io(&format!("cannot listen on {}", config.addr), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| io("cannot read the bound address", e))?;
        if app.log >= LogLevel::Info {
            eprintln!(
                "hasp serve: listening on http://{local} (lock directory {})",
                config.dir.display()
            );
        }
        accept_until_stopped(listener, app.clone(), config.limits.clone(), signals).await;
        if app.log >= LogLevel::Info {
            eprintln!("hasp serve: stopped");
        }
        Ok(())
    })
}

async fn accept_until_stopped(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    mut signals: Signals,
) {
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let (app, limits, stopping) = (app.clone(), limits.clone(), stopping.clone());
                    connections.spawn(async move {
                        connection(Connection::new(stream, limits), app, stopping).await;
                    });
                }
                Err(err) => {
                    if app.log >= LogLevel::Warn {
                        eprintln!("hasp serve: accept failed: {err}");
                    }
                    // Out of descriptors, say: give the others a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = signals.recv() => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // In-flight requests finish; idle connections close at once.
    while connections.join_next().await.is_some() {}
}

/// SIGINT and SIGTERM.
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => {}
            _ = one(&mut self.term) => {}
        }
    }
}

async fn connection(mut conn: Connection, app: Arc<App>, mut stopping: watch::Receiver<bool>) {
    loop {
        let request = match conn.next(&mut stopping).await {
            Ok(request) => request,
            Err(ReadError::Closed) => return,
            Err(ReadError::Reject(response)) => {
                app.log_line("?", "?", response.status, std::time::Duration::ZERO);
                let _ = conn.send(&response, true).await;
                return;
            }
        };
        let started = Instant::now();
        let (door, response) = app.respond(&request, &mut conn).await;
        let took = started.elapsed();
        app.locks.metrics.request(door, took);
        let close = !request.keep_alive || *stopping.borrow();
        let sent = if conn.is_hung_up() {
            Err(Cow::Borrowed("the client hung up"))
        } else {
            conn.send(&response, close)
                .await
                .map_err(|err| Cow::Owned(err.to_string()))
        };
        if let (Err(why), Some(grant)) = (&sent, response.grant) {
            // Nobody got the token: the grant goes back.
            app.abandon(grant, why).await;
        }
        // Logged once answered (or not), so a line says it is all done.
        app.log_line(request.method(), request.path(), response.status, took);
        if sent.is_err() || close {
            return;
        }
    }
}

impl locks::Peer for Connection {
    fn hang_up(&mut self) -> impl std::future::Future<Output = ()> + Send {
        Connection::hang_up(self)
    }

    fn has_hung_up(&mut self) -> bool {
        Connection::has_hung_up(self)
    }
}

impl App {
    fn log_line(&self, method: &str, target: &str, status: u16, took: std::time::Duration) {
        if self.log >= LogLevel::Debug {
            eprintln!(
                "hasp serve: {method} {target} -> {status} ({} us)",
                took.as_micros()
            );
        }
    }

    /// Releases a grant whose answer never reached its client, with the
    /// grant's own token: nobody else knows it, so it would be held for
    /// ever (or until its lease ran out).
    async fn abandon(&self, grant: http::Handed, why: &str) {
        let http::Handed {
            resource,
            fencing,
            token,
        } = grant;
        let outcome = self
            .locks
            .unlock(resource.clone(), crate::UnlockKey::Token(token))
            .await;
        let (level, done) = match outcome {
            Ok(_) => {
                self.locks.metrics.outcome(metrics::Outcome::Abandoned);
                (LogLevel::Info, Cow::Borrowed("released it again"))
            }
            // A short lease may end first; the lock is free either way.
            Err(Error::LeaseExpired { .. }) => {
                (LogLevel::Info, Cow::Borrowed("its lease had run out"))
            }
            Err(err) => (
                LogLevel::Warn,
                Cow::Owned(format!("could not release it: {err}")),
            ),
        };
        if self.log >= level {
            eprintln!(
                "hasp serve: the grant of '{resource}' (fencing {fencing}) could not be \
                 delivered ({why}); {done}"
            );
        }
    }

    /// Routes one request to its door; `conn` is the connection it came
    /// on, watched while a lock waits.
    async fn respond(&self, request: &Request, conn: &mut Connection) -> (Door, Response) {
        let path = request.path();
        if path == "/healthz" {
            return (
                Door::Other,
                only(request, "GET", "/healthz")
                    .unwrap_or_else(|| Response::json(200, &serde_json::json!({"ok": true}))),
            );
        }
        if !self.authorized(request) {
            return (
                Door::Other,
                Response::error(401, "unauthorized", "send Authorization: Bearer <token>"),
            );
        }
        if let Some(route) = path.strip_prefix("/v1/") {
            let operator = self.token.is_some();
            return (
                Door::V1,
                v1::handle(&self.locks, route, request, conn, operator).await,
            );
        }
        if path == "/RPC2" || path == "/" {
            if let Some(refused) = only(request, "POST", "XML-RPC") {
                return (Door::XmlRpc, refused);
            }
            return (
                Door::XmlRpc,
                xmlrpc::handle(&self.locks, &request.body).await,
            );
        }
        for verb in ["canhaz", "nowant", "dohaz"] {
            if let Some(rest) = path.strip_prefix('/').and_then(|p| p.strip_prefix(verb)) {
                if let Some(rest) = rest.strip_prefix('/') {
                    if let Some(refused) = only(request, "GET", "Locker") {
                        return (Door::Locker, refused);
                    }
                    return (
                        Door::Locker,
                        locker::handle(&self.locks, verb, rest, request).await,
                    );
                }
            }
        }
        if path == "/metrics" {
            if let Some(refused) = only(request, "GET", "/metrics") {
                return (Door::Other, refused);
            }
            let text = self.locks.metrics.render();
            return (
                Door::Other,
                Response::text(200, "text/plain; version=0.0.4", text),
            );
        }
        (
            Door::Other,
            Response::error(404, "not-found", "no such route"),
        )
    }

    /// Whether the request carries the token (when one is required).
    fn authorized(&self, request: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = request.header("authorization") else {
            return false;
        };
        let given = given.trim();
        if let Some(bearer) = given.strip_prefix("Bearer ") {
            return constant_time_eq(bearer.trim().as_bytes(), token.as_bytes());
        }
        if let Some(basic) = given.strip_prefix("Basic ") {
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
                return false;
            };
            let password = match decoded.iter().position(|&b| b == b':') {
                Some(at) => &decoded[at + 1..],
                None => return false,
            };
            return constant_time_eq(password, token.as_bytes());
        }
        false
    }
}

/// A 405 for a request to `what` made with another method than `method`.
fn only(request: &Request, method: &str, what: &str) -> Option<Response> {
    (request.method() != method).then(|| {
        Response::error(
            405,
            "method-not-allowed",
            &format!("{what} answers {method} only, not {}", request.method()),
        )
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
