//! `hasp serve`: one daemon with three front doors on one registry —
//! Locker's HTTP (`/canhaz`, `/nowant`, `/dohaz`), gocept.lockd's XML-RPC
//! (`/RPC2`) and a JSON API (`/v1/`) — plus `/healthz` and `/metrics`.
//!
//! The server holds no lock state: each request runs the guest component on
//! the lock directory (through a pool of instances), so the CLI, other
//! daemons and the stock `wasmtime` CLI can share the directory safely.
//!
//! It logs through `tracing` and installs no subscriber: the `hasp` binary
//! does. Targets: `hasp::serve` (start, stop, failures) and `hasp::access`
//! (one INFO event per request: see `serve/access.rs`).

mod access;
mod durable;
mod flaps;
mod http;
mod locker;
mod locks;
mod metrics;
mod pool;
mod threads;
mod v1;
mod xmlrpc;

pub use http::Limits;

use crate::store::Store;
use crate::{Error, Runtime};
use base64::Engine as _;
use http::{Connection, ReadError, Request, Response};
use locks::Locks;
use metrics::Door;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Everything `hasp serve` needs to start.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Where the locks are kept: a lock directory (which must exist), or
    /// a prefix on etcd.
    pub store: Store,
    /// Clients must send this bearer token (or it as a Basic password).
    pub token: Option<String>,
    /// Sync the filesystem (group commit) before acknowledging a change.
    pub fsync: bool,
    /// Guest instances working in parallel (fewer, at least one, if the
    /// limit on open files leaves no room for them: logged).
    pub workers: usize,
    /// Bounds on each request: sizes of head, target and body, and time.
    pub limits: Limits,
    /// The lease (1 ms to 30 days) given to grants made through doors whose
    /// clients cannot ask for one: gocept.lockd's XML-RPC, and Locker's
    /// `canhaz` without `ttl=`. `None`: those locks last until unlocked.
    /// `/v1` clients choose with `ttl_ms`.
    pub default_ttl: Option<Duration>,
    /// Connections open at once; `None`: 1024, or fewer when the limit on
    /// open files (`RLIMIT_NOFILE`) leaves less room beside the workers
    /// (each may hold 264 descriptors; when even 64 connections would not
    /// fit, fewer workers run). When all are taken,
    /// a new client takes the place of the connection that has waited
    /// longest for a request, or gets 503 if none is waiting.
    pub max_connections: Option<usize>,
}

struct App {
    locks: Locks,
    token: Option<String>,
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting,
/// answers the requests already read and returns: [`Server::start`], then
/// [`Server::run`]. Runs on the caller's Tokio runtime, which must be
/// multi-threaded with its I/O and time drivers enabled: guest calls run
/// on its threads, each on a fiber.
///
/// Logs through `tracing` (see the module's documentation); installs no
/// signal handler: the caller decides what stops it.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    Server::start(listener, config).await?.run(shutdown).await;
    Ok(())
}

/// A daemon ready to serve: its guest instances started, its listener
/// bound. Between [`Server::start`] and [`Server::run`] a supervisor can be
/// told it is ready (systemd's `READY=1`); connections that arrive meanwhile
/// wait in the listener's backlog.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    max_connections: usize,
    local: SocketAddr,
    threads: threads::Threads,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Checks `config`, starts the guest instances on its lock directory
    /// and logs the address it listens on.
    pub async fn start(listener: TcpListener, config: ServeConfig) -> Result<Server, Error> {
        let io = |what: &str, e: std::io::Error| Error::runtime(what, e);
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
        let syncer =
            match (&config.store, config.fsync) {
                (Store::Dir(dir), true) => {
                    Some(durable::Syncer::start(dir).map_err(|e| io("cannot start syncing", e))?)
                }
                (Store::Etcd(_), true) => return Err(Error::InvalidInput {
                    message:
                        "--fsync syncs a lock directory; etcd makes every commit durable itself \
                              (leave --fsync out)"
                            .into(),
                }),
                (_, false) => None,
            };
        let files = open_file_limit();
        let workers = fit_workers(config.workers, files);
        let pool = pool::Pool::start(&runtime, &config.store, workers).await?;
        let locks = Locks::new(pool, syncer, config.default_ttl, config.store.clone());
        let app = Arc::new(App {
            locks,
            token: config.token.clone(),
        });
        let local = listener
            .local_addr()
            .map_err(|e| io("cannot read the bound address", e))?;
        let store = match &config.store {
            Store::Dir(dir) => format!("lock directory {}", dir.display()),
            Store::Etcd(url) => format!("store {url}"),
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads =
            threads::Threads::start(cpus).map_err(|e| io("cannot start the network threads", e))?;
        tracing::info!(target: "hasp::serve", "listening on http://{local} ({store})");
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| default_max_connections(workers, files))
            .max(1);
        Ok(Server {
            listener,
            app,
            limits: config.limits,
            max_connections,
            local,
            threads,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `shutdown` resolves, then stops accepting, answers the
    /// requests already read (a waiting lock gets 503 `shutting-down`) and
    /// returns.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server {
            listener,
            app,
            limits,
            max_connections,
            threads,
            ..
        } = self;
        let limits = (limits, max_connections);
        accept_until_stopped(listener, app, limits, threads, shutdown).await;
        tracing::info!(target: "hasp::serve", "stopped");
    }
}

/// Descriptors one worker may hold: its guest keeps up to 128 nodes open
/// (two descriptors each: guest/src/disk.rs, `OPEN_NODES`), and a few more.
const FILES_PER_WORKER: usize = 2 * 128 + 8;
/// Descriptors kept for the runtime, the listener, the lock directory, logs.
const FILES_RESERVED: usize = 64;
/// Connections the workers always leave room for.
const FILES_FOR_CONNECTIONS: usize = 64;

/// The limit on open files (`RLIMIT_NOFILE`, soft), if it can be read.
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct this function owns.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

/// `workers`, or fewer (at least one) when their descriptors and room for
/// connections would not fit within `files`: then says so, once.
fn fit_workers(workers: usize, files: Option<usize>) -> usize {
    let Some(files) = files else {
        return workers;
    };
    let room = files.saturating_sub(FILES_RESERVED + FILES_FOR_CONNECTIONS) / FILES_PER_WORKER;
    if workers <= room.max(1) {
        return workers;
    }
    let fitted = room.max(1);
    tracing::warn!(
        target: "hasp::serve",
        "running {fitted} worker{} instead of {workers}: the limit on open files is {files} \
         (ulimit -n), and each worker may hold {FILES_PER_WORKER} descriptors, with {} kept \
         for the daemon and its connections (raise the limit, or give --workers {fitted})",
        if fitted == 1 { "" } else { "s" },
        FILES_RESERVED + FILES_FOR_CONNECTIONS
    );
    fitted
}

/// The connections that fit beside `workers` within `files` open files
/// (none known: 1024), from 16 to 1024.
fn default_max_connections(workers: usize, files: Option<usize>) -> usize {
    let files = files.unwrap_or(1024);
    let reserve = FILES_RESERVED + workers.saturating_mul(FILES_PER_WORKER);
    files.saturating_sub(reserve).clamp(16, 1024)
}

/// What a client past the cap gets when no connection is idle.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 79\r\nConnection: close\r\nRetry-After: 1\r\n\r\n\
{\"error\": {\"code\": \"busy\", \"message\": \"too many connections, try again soon\"}}\n";

async fn accept_until_stopped(
    listener: TcpListener,
    app: Arc<App>,
    (limits, max_connections): (Limits, usize),
    threads: threads::Threads,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let (stop, stopping) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    // Each live connection, by the id of its task.
    let mut live = std::collections::HashMap::new();
    let epoch = tokio::time::Instant::now();
    // Accept errors (out of descriptors, say): logged at most once per
    // kind every ten seconds, with their count, and the first accept after
    // a logged one; the pause before the next try grows while they last.
    let flaps = flaps::Flaps::default();
    let mut pause = Duration::from_millis(10);
    let refusing = Arc::new(tokio::sync::Semaphore::new(REFUSING));
    // A body is asked for (`100 Continue`) only when the request will not
    // be refused for want of the token.
    let gate: http::Gate = {
        let app = app.clone();
        Arc::new(move |request: &Request| request.path() == "/healthz" || app.authorized(request))
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    pause = Duration::from_millis(10);
                    if flaps.succeeded() {
                        tracing::warn!(target: "hasp::serve", "accepting again");
                    }
                    if live.len() >= max_connections && !make_room(&live) {
                        // Nobody is idle: a clear refusal, then close.
                        refuse(stream, &refusing);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    // Moved to its thread's reactor.
                    let Ok(stream) = stream.into_std() else { continue };
                    let (handle, seat) = threads.place();
                    let (conn, tracker) = {
                        let _on = handle.enter();
                        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else { continue };
                        Connection::new(stream, limits.clone(), epoch)
                    };
                    let conn = conn.with_gate(gate.clone());
                    let (app, stopping) = (app.clone(), stopping.clone());
                    let task = connections.spawn_on(
                        access::scope(async move {
                            let _seat = seat;
                            connection(conn, peer, app, stopping).await
                        }),
                        handle,
                    );
                    live.insert(task.id(), tracker);
                }
                Err(err) => {
                    let kind = err.raw_os_error().map_or_else(|| err.kind().to_string(), |n| n.to_string());
                    if let Some(n) = flaps.failed(&kind, Instant::now()) {
                        tracing::warn!(
                            target: "hasp::serve",
                            "accept failed: {err} ({n} such failure{} since the last such line; \
                             retrying, one line at most every {} s, and the first accept after \
                             is logged)",
                            if n == 1 { "" } else { "s" },
                            flaps::QUIET.as_secs()
                        );
                    }
                    // Give the others a moment to close theirs.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            },
            Some(done) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(err) => err.id(),
                };
                live.remove(&id);
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // In-flight requests finish; idle connections close at once.
    while connections.join_next().await.is_some() {}
    threads.stop().await;
}

/// Refusals on their way out at once, at most.
const REFUSING: usize = 32;

/// Answers a client past the cap with 503 and closes. The request it sent
/// is read (for up to a second) before the close: a close with unread
/// bytes resets the connection, and the client would never see the 503.
/// Past `REFUSING` refusals at once, it is only written.
fn refuse(stream: tokio::net::TcpStream, refusing: &Arc<tokio::sync::Semaphore>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        let _ = stream.try_write(FULL);
        return;
    };
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let drain = async {
            stream.write_all(FULL).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            std::io::Result::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        drop(permit);
    });
}

/// Sheds the connection that has waited longest for a request; false if
/// none is waiting.
fn make_room(live: &std::collections::HashMap<tokio::task::Id, Arc<http::Tracker>>) -> bool {
    let mut idle: Vec<_> = live
        .values()
        .filter_map(|t| Some((t.idle_since()?, t)))
        .collect();
    idle.sort_unstable_by_key(|(since, _)| *since);
    idle.into_iter().any(|(_, tracker)| tracker.shed())
}

async fn connection(
    mut conn: Connection,
    peer: SocketAddr,
    app: Arc<App>,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let request = match conn.next(&mut stopping).await {
            Ok(request) => request,
            Err(ReadError::Closed) => return,
            Err(ReadError::Reject(response)) => {
                access::log(peer, Door::Other, "?", "?", response.status, Duration::ZERO);
                let _ = conn.send(&response, true, false).await;
                return;
            }
        };
        let started = Instant::now();
        let (door, response) = app.respond(&request, &mut conn, &stopping).await;
        let took = started.elapsed();
        app.locks.metrics.request(door, took);
        let close = !request.keep_alive || *stopping.borrow();
        let sent = if conn.is_hung_up() {
            Err(Cow::Borrowed("the client hung up"))
        } else {
            conn.send(&response, close, request.method() == "HEAD")
                .await
                .map_err(|err| Cow::Owned(err.to_string()))
        };
        if let (Err(why), Some(grant)) = (&sent, response.grant) {
            // Nobody got the token: the grant goes back.
            app.abandon(grant, why).await;
        }
        // Logged once answered (or not), so a line says it is all done.
        access::log(
            peer,
            door,
            request.method(),
            request.path(),
            response.status,
            took,
        );
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
        // The access line says what became of the grant.
        access::note(&resource, "abandoned");
        match outcome {
            Ok(_) => {
                self.locks.metrics.outcome(metrics::Outcome::Abandoned);
                tracing::info!(
                    target: "hasp::serve",
                    "the grant of '{resource}' (fencing {fencing}) could not be delivered \
                     ({why}); released it again"
                );
            }
            // A short lease may end first; the lock is free either way.
            Err(Error::LeaseExpired { .. }) => tracing::info!(
                target: "hasp::serve",
                "the grant of '{resource}' (fencing {fencing}) could not be delivered \
                 ({why}); its lease had run out"
            ),
            Err(err) => tracing::warn!(
                target: "hasp::serve",
                "the grant of '{resource}' (fencing {fencing}) could not be delivered \
                 ({why}); could not release it: {err}"
            ),
        }
    }

    /// Routes one request to its door; `conn` is the connection it came
    /// on, watched while a lock waits, and `stopping` ends such a wait.
    /// Every refusal on a Locker path, whoever makes it (the token check,
    /// the method check, the routes), is in Locker's shape.
    async fn respond(
        &self,
        request: &Request,
        conn: &mut Connection,
        stopping: &watch::Receiver<bool>,
    ) -> (Door, Response) {
        let (door, response) = self.route(request, conn, stopping).await;
        if response.status >= 400 && locker::is_locker_path(request.path()) {
            return (Door::Locker, locker::shaped(response));
        }
        (door, response)
    }

    async fn route(
        &self,
        request: &Request,
        conn: &mut Connection,
        stopping: &watch::Receiver<bool>,
    ) -> (Door, Response) {
        let path = request.path();
        if path == "/healthz" {
            return (
                Door::Other,
                only(request, READ, "/healthz").unwrap_or_else(|| {
                    let store = self.locks.store.to_string();
                    Response::json(200, &serde_json::json!({"ok": true, "store": store}))
                }),
            );
        }
        if !self.authorized(request) {
            return (
                Door::Other,
                Response::error(401, "unauthorized", "send Authorization: Bearer <token>")
                    .with_headers("WWW-Authenticate: Bearer realm=\"hasp\"\r\n"),
            );
        }
        if let Some(route) = path.strip_prefix("/v1/") {
            if !request.escapes_ok() {
                return (Door::V1, bad_escapes());
            }
            let operator = self.token.is_some();
            let mut response =
                v1::handle(&self.locks, route, request, conn, stopping, operator).await;
            if response.status == 405 {
                response.headers = match route {
                    "status" | "list" => "Allow: GET, HEAD\r\n",
                    _ => "Allow: POST\r\n",
                };
            }
            return (Door::V1, response);
        }
        if path == "/RPC2" || path == "/" {
            if let Some(refused) = only(request, POST, "XML-RPC") {
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
                    // Only Locker's status may be asked with HEAD: the
                    // others change locks.
                    let methods = if verb == "dohaz" { READ } else { GET };
                    if let Some(refused) = only(request, methods, "Locker") {
                        return (Door::Locker, refused);
                    }
                    if !request.escapes_ok() {
                        return (
                            Door::Locker,
                            locker::invalid(400, "bad-request", BAD_ESCAPES),
                        );
                    }
                    return (
                        Door::Locker,
                        locker::handle(&self.locks, verb, rest, request).await,
                    );
                }
            }
        }
        if path == "/metrics" {
            if let Some(refused) = only(request, READ, "/metrics") {
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
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let (scheme, credentials) = given.trim().split_once([' ', '\t']).unwrap_or_default();
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return constant_time_eq(credentials.as_bytes(), token.as_bytes());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let basic = credentials;
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

/// The methods a route answers, and its `Allow` header.
struct Methods(&'static [&'static str], &'static str);

/// A route that reads: `HEAD` gets `GET`'s headers.
const READ: Methods = Methods(&["GET", "HEAD"], "Allow: GET, HEAD\r\n");
/// A route that may change locks on `GET` (Locker's): no `HEAD`, which
/// must not.
const GET: Methods = Methods(&["GET"], "Allow: GET\r\n");
const POST: Methods = Methods(&["POST"], "Allow: POST\r\n");

/// A 405 (with `Allow`) for a request to `what` made with a method it does
/// not answer.
fn only(request: &Request, methods: Methods, what: &str) -> Option<Response> {
    let Methods(names, allow) = methods;
    (!names.contains(&request.method())).then(|| {
        Response::error(
            405,
            "method-not-allowed",
            &format!(
                "{what} answers {} only, not {}",
                names.join(" and "),
                request.method()
            ),
        )
        .with_headers(allow)
    })
}

/// Why a target whose percent escapes do not decode is refused.
const BAD_ESCAPES: &str = "the request target has a percent escape that is not % and two hex \
                           digits, or escapes that are not UTF-8";

/// A JSON 400 for a target whose percent escapes do not decode.
fn bad_escapes() -> Response {
    Response::error(400, "bad-request", BAD_ESCAPES)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
