//! `hasp:lock/store` on etcd's v3 API (the `etcd-client` crate): a get is
//! a linearizable range read, a swap one transaction (compare the value,
//! put, then the reads asked for), and a waiter watches what the refused
//! call read. A store that does not answer is asked again until the call's
//! budget is spent; a write whose answer was lost is resolved by reading
//! the key back before the guest hears anything. Keys here are the
//! guest's, below the registry's prefix; the guest cannot name any other.

use super::{EtcdUrl, Session};
use crate::bindings::on_store::store::{Entry, Host, Look, StoreError, Swapped};
use crate::error::Error;
use crate::runtime::State;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one store call may try, retries included, before it answers
/// `unavailable`: long enough for a three-member cluster to elect a new
/// leader, short against the guest call's 30-second limit.
const BUDGET: Duration = Duration::from_secs(5);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The first pause before a retry; it doubles up to [`MOST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MOST_PAUSE: Duration = Duration::from_millis(250);
/// The most operations one swap sends: etcd takes 128 per transaction by
/// default (`--max-txn-ops`).
const MOST_OPS: usize = 128;

/// A connection to an etcd cluster, for one registry prefix. Its requests
/// must be awaited inside the Tokio runtime it was made in: the daemon's
/// (its calls run on the daemon's threads), or the runtime of its own that
/// [`Etcd::connect_blocking`] makes, which [`Etcd::block_on`] drives on the
/// caller's thread. Either way a request crosses no thread on its way to
/// the socket and back.
pub(crate) struct Etcd {
    client: Client,
    /// The registry's prefix with its `/`: prepended to every key.
    root: String,
    url: EtcdUrl,
    /// A runtime of its own, when made outside one (the API, the CLI).
    own: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("url", &self.url).finish()
    }
}

/// A failed request: whether asking again may help, and what it said.
struct Failed {
    retry: bool,
    why: String,
}

impl From<etcd_client::Error> for Failed {
    fn from(err: etcd_client::Error) -> Failed {
        use etcd_client::Error as E;
        use tonic::Code;
        let retry = match &err {
            E::TransportError(_) | E::IoError(_) => true,
            E::GRpcStatus(status) => !matches!(
                status.code(),
                Code::InvalidArgument
                    | Code::FailedPrecondition
                    | Code::OutOfRange
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::NotFound
                    | Code::AlreadyExists
                    | Code::Unimplemented
            ),
            _ => false,
        };
        let why = match &err {
            E::GRpcStatus(status) if !status.message().is_empty() => status.message().to_string(),
            other => other.to_string(),
        };
        Failed {
            retry,
            why: one_line(&why),
        }
    }
}

impl Etcd {
    /// Connects to `url` from inside a Tokio runtime, whose tasks carry
    /// the connection. Nothing is sent yet: an unreachable cluster shows at
    /// the first call.
    pub(crate) async fn connect(url: &EtcdUrl) -> Result<Etcd, Error> {
        let connected =
            tokio::time::timeout(BUDGET, Client::connect(&url.endpoints, Some(options())));
        let client = match connected.await {
            Ok(client) => client.map_err(|e| Error::InvalidInput {
                message: format!("cannot use the store {url}: {}", one_line(&e.to_string())),
            })?,
            Err(_) => {
                return Err(Error::InvalidInput {
                    message: format!(
                        "cannot use the store {url}: connecting took over {} s",
                        BUDGET.as_secs()
                    ),
                })
            }
        };
        Ok(Etcd {
            client,
            root: format!("{}/", url.prefix),
            url: url.clone(),
            own: None,
        })
    }

    /// [`Etcd::connect`] from outside any runtime: the connection gets a
    /// runtime of its own, without threads; [`Etcd::block_on`] drives it.
    pub(crate) fn connect_blocking(url: &EtcdUrl) -> Result<Etcd, Error> {
        let own = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Runtime(e.into()))?;
        let mut etcd = own.block_on(Etcd::connect(url))?;
        etcd.own = Some(own);
        Ok(etcd)
    }

    /// Runs `work`, which awaits this connection, to its end on this
    /// thread, in the connection's own runtime.
    ///
    /// # Panics
    ///
    /// For a connection made inside a runtime ([`Etcd::connect`]): await
    /// it there instead.
    pub(crate) fn block_on<F: Future>(&self, work: F) -> F::Output {
        self.own
            .as_ref()
            .expect("a connection made inside a runtime is awaited there")
            .block_on(work)
    }

    /// The URL connected to.
    pub(crate) fn url(&self) -> &EtcdUrl {
        &self.url
    }

    /// Sends `request` until it succeeds, fails for good, or
    /// [`BUDGET`] is spent; `unavailable` names the members asked and the
    /// last failure.
    async fn retried<T, F, Fut>(&self, mut request: F) -> Result<T, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let kv = self.client.kv_client();
        let members = self.url.endpoints.join(",");
        {
            let started = Instant::now();
            let mut pause = FIRST_PAUSE;
            loop {
                let left = BUDGET.saturating_sub(started.elapsed());
                let failed = match tokio::time::timeout(left, request(kv.clone())).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(err)) => Failed::from(err),
                    Err(_) => Failed {
                        retry: true,
                        why: "no answer".into(),
                    },
                };
                if !failed.retry {
                    return Err(StoreError::Refused(format!("etcd refused: {}", failed.why)));
                }
                if started.elapsed() + pause >= BUDGET {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {members} did not answer within {} s: {}",
                        BUDGET.as_secs(),
                        failed.why
                    )));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MOST_PAUSE);
            }
        }
    }

    /// The full key of the guest's `key`.
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// The guest's key of the full key `key`, which a read under the
    /// registry's prefix found. A key that is not UTF-8 (hasp writes none)
    /// is refused like a corrupt listing on disk: leaving it out would
    /// hide what follows it from a paged walk.
    fn relative(&self, key: &[u8]) -> Result<String, StoreError> {
        let text = std::str::from_utf8(key).map_err(|_| {
            StoreError::Refused(format!(
                "etcd holds a key that is not UTF-8 under the registry's prefix: {} \
                 (the prefix is hasp's alone: remove it)",
                one_line(&String::from_utf8_lossy(key)).escape_debug()
            ))
        })?;
        Ok(text
            .strip_prefix(self.root.as_str())
            .unwrap_or(text)
            .to_string())
    }

    /// The value of `key` and the revision it was read at.
    async fn get(&self, key: &str) -> Result<(Option<String>, i64), StoreError> {
        let full = self.full(key);
        let mut answer = self
            .retried(move |mut kv| {
                let full = full.clone();
                async move { kv.get(full, None).await }
            })
            .await?;
        let revision = answer.take_header().map_or(0, |h| h.revision());
        let value = answer.take_kvs().first().map(|kv| text(kv.value()));
        Ok((value, revision))
    }

    /// Sets `key` to `value` if it is `expected` (absent, for `None`), then
    /// reads `looks`. A request whose answer was lost is resolved first:
    /// values never repeat in a key's history (docs/FORMAT.md), so the key
    /// holding `value` means it was made, holding `expected` that it was
    /// not (and it is sent again), anything else that it lost.
    async fn swap(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        looks: &[Look],
        limit: u32,
    ) -> Result<(Swapped, i64), StoreError> {
        if looks.len() + 1 > MOST_OPS {
            return Err(StoreError::Refused(format!(
                "{} reads in one transaction; etcd takes {}",
                looks.len(),
                MOST_OPS - 1
            )));
        }
        let full = self.full(key);
        let compare = match expected {
            Some(old) => Compare::value(full.clone(), CompareOp::Equal, old),
            None => Compare::version(full.clone(), CompareOp::Equal, 0),
        };
        let reads = self.reads(looks, limit);
        let mut ops = vec![TxnOp::put(full.clone(), value, None)];
        ops.extend(reads.iter().cloned());
        let txn = Txn::new().when([compare]).and_then(ops);
        let started = Instant::now();
        loop {
            let sent = txn.clone();
            let answer = self
                .retried_once(move |mut kv| async move { kv.txn(sent).await })
                .await;
            match answer {
                Ok(mut answer) => {
                    let revision = answer.take_header().map_or(0, |h| h.revision());
                    if !answer.succeeded() {
                        return Ok((not_done(), revision));
                    }
                    let responses = answer.op_responses();
                    return Ok((self.swapped(&responses[1..]), revision));
                }
                Err(Attempt::Final(err)) => return Err(err),
                Err(Attempt::Unknown(why)) => {
                    // Did it land? Ask. If etcd does not answer that either,
                    // say that the change may have been made.
                    let (now, revision) = self.get(key).await.map_err(|err| match err {
                        StoreError::Unavailable(reason) => StoreError::Unavailable(format!(
                            "{reason}; the change was sent before etcd stopped answering \
                             ({why}) and may have been made"
                        )),
                        other => other,
                    })?;
                    if now.as_deref() == Some(value) {
                        let (swapped, at) = self.read_looks(reads.clone()).await?;
                        return Ok((swapped, at.max(revision)));
                    }
                    if now.as_deref() != expected {
                        return Ok((not_done(), revision));
                    }
                    if started.elapsed() >= BUDGET {
                        return Err(StoreError::Unavailable(format!(
                            "etcd at {} did not answer within {} s: {why}",
                            self.url.endpoints.join(","),
                            BUDGET.as_secs()
                        )));
                    }
                }
            }
        }
    }

    /// One send of a write: its answer, a refusal, or an unknown outcome.
    async fn retried_once<T, F, Fut>(&self, request: F) -> Result<T, Attempt>
    where
        F: FnOnce(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let answer = request(self.client.kv_client()).await;
        answer.map_err(|err| {
            let failed = Failed::from(err);
            if failed.retry {
                Attempt::Unknown(failed.why)
            } else {
                Attempt::Final(StoreError::Refused(format!("etcd refused: {}", failed.why)))
            }
        })
    }

    /// The transaction operations that read `looks`.
    fn reads(&self, looks: &[Look], limit: u32) -> Vec<TxnOp> {
        looks
            .iter()
            .map(|look| match look {
                Look::Key(key) => TxnOp::get(self.full(key), None),
                Look::Prefix(prefix) => TxnOp::get(
                    self.full(prefix),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_limit(i64::from(limit.max(1))),
                    ),
                ),
            })
            .collect()
    }

    /// `reads` again, on their own (after a swap whose answer was lost).
    async fn read_looks(&self, reads: Vec<TxnOp>) -> Result<(Swapped, i64), StoreError> {
        let mut answer = self
            .retried(move |mut kv| {
                let txn = Txn::new().and_then(reads.clone());
                async move { kv.txn(txn).await }
            })
            .await?;
        let revision = answer.take_header().map_or(0, |h| h.revision());
        Ok((self.swapped(&answer.op_responses()), revision))
    }

    /// A made swap's answer from the responses to its reads.
    ///
    /// The swap is made whatever the reads found: a key that is not UTF-8
    /// ends its prefix's entries there, marked `more`, so that the guest
    /// reads on with `range`, which refuses it, and withdraws.
    fn swapped(&self, responses: &[TxnOpResponse]) -> Swapped {
        let mut entries = Vec::new();
        let mut more = false;
        for response in responses {
            if let TxnOpResponse::Get(got) = response {
                more |= got.more();
                for kv in got.kvs() {
                    let Ok(key) = self.relative(kv.key()) else {
                        more = true;
                        break;
                    };
                    entries.push(Entry {
                        key,
                        value: text(kv.value()),
                    });
                }
            }
        }
        Swapped {
            done: true,
            entries,
            more,
        }
    }

    /// Deletes `key` if its value is `expected`; resolved like a swap.
    async fn remove(&self, key: &str, expected: &str) -> Result<(bool, i64), StoreError> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::value(full.clone(), CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(full, None)]);
        let started = Instant::now();
        loop {
            let sent = txn.clone();
            match self
                .retried_once(move |mut kv| async move { kv.txn(sent).await })
                .await
            {
                Ok(mut answer) => {
                    let revision = answer.take_header().map_or(0, |h| h.revision());
                    return Ok((answer.succeeded(), revision));
                }
                Err(Attempt::Final(err)) => return Err(err),
                Err(Attempt::Unknown(why)) => {
                    let (now, revision) = self.get(key).await?;
                    match now.as_deref() {
                        None => return Ok((true, revision)),
                        Some(value) if value != expected => return Ok((false, revision)),
                        Some(_) if started.elapsed() >= BUDGET => {
                            return Err(StoreError::Unavailable(format!(
                                "etcd at {} did not answer within {} s: {why}",
                                self.url.endpoints.join(","),
                                BUDGET.as_secs()
                            )))
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }

    /// At most `limit` keys under `prefix` after `after`, in key order,
    /// and the revision they were read at.
    async fn range(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<Entry>, i64), StoreError> {
        let full = self.full(prefix);
        let start = match after {
            // The least key after `after`.
            Some(after) => format!("{}\0", self.full(after)),
            None => full.clone(),
        };
        let end = prefix_end(full.as_bytes());
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(i64::from(limit.max(1)));
        let mut answer = self
            .retried(move |mut kv| {
                let (start, options) = (start.clone(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await?;
        let revision = answer.take_header().map_or(0, |h| h.revision());
        let mut entries = Vec::with_capacity(answer.kvs().len());
        for kv in answer.kvs() {
            entries.push(Entry {
                key: self.relative(kv.key())?,
                value: text(kv.value()),
            });
        }
        Ok((entries, revision))
    }
}

/// How one send of a write ended, when not with an answer.
enum Attempt {
    /// Refused: nothing was changed.
    Final(StoreError),
    /// The answer was lost: it may or may not have been made.
    Unknown(String),
}

/// A swap that was not made.
fn not_done() -> Swapped {
    Swapped {
        done: false,
        entries: Vec::new(),
        more: false,
    }
}

/// The connection's settings: a deadline per request, and requests refused
/// by a member without a leader (so they go elsewhere, or are retried).
fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_require_leader(true)
}

/// The first key after every key that begins with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

/// A value as text (hasp writes only UTF-8; anything else shows as what it
/// is, and the guest finds it corrupt).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `why` on one line.
fn one_line(why: &str) -> String {
    why.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a waiting lock watches: the keys its refused call read.
pub(crate) struct Watch {
    pub(super) etcd: std::sync::Arc<Etcd>,
    /// The prefix every key read shares (full keys).
    pub(super) prefix: String,
    /// The earliest revision they were read at.
    pub(super) after: i64,
    /// When something read changes by the clock alone (milliseconds since
    /// the Unix epoch).
    pub(super) changes_at: Option<u64>,
    /// The revisions of the refused call's own writes, which wake nobody.
    pub(super) own: Vec<i64>,
}

impl Watch {
    /// Resolves when any key under the prefix changes after the revision it
    /// was read at, when the clock reaches `changes_at`, when the watch
    /// breaks (a cluster in trouble: the waiter then simply tries again),
    /// or at `until`. A change is reported by etcd itself; nothing polls.
    pub(crate) async fn changed(self, until: Option<Instant>) {
        let until = match self.changes_at.map(after_wall_clock) {
            Some(at) => Some(until.map_or(at, |until| until.min(at))),
            None => until,
        };
        let mut watcher = self.etcd.client.watch_client();
        let (prefix, after, own) = (self.prefix, self.after, self.own);
        let watched = async move {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(after + 1);
            let Ok(mut stream) = watcher.watch(prefix, Some(options)).await else {
                return;
            };
            loop {
                match stream.message().await {
                    Ok(Some(answer)) if !answer.canceled() => {
                        // The call's own commit and withdrawal come first:
                        // they are no change to wait for.
                        let theirs = answer.events().iter().any(|event| {
                            event
                                .kv()
                                .is_none_or(|kv| !own.contains(&kv.mod_revision()))
                        });
                        if theirs {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        };
        match until {
            Some(until) => {
                let _ = tokio::time::timeout_at(until.into(), watched).await;
            }
            None => watched.await,
        }
    }
}

/// The instant the wall clock reads `at_ms` (milliseconds since the Unix
/// epoch); now if it has.
fn after_wall_clock(at_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms))
}

/// The store a guest instance on etcd imports: each call goes to the
/// instance's connection and notes what it read.
impl Host for State {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, StoreError>> {
        let session = session(self)?;
        let answer = session.etcd.clone().get(&key).await;
        Ok(answer.map(|(value, revision)| {
            let full = session.etcd.full(&key);
            session.noted(&full, revision);
            value
        }))
    }

    async fn swap(
        &mut self,
        key: String,
        expected: Option<String>,
        value: String,
        looks: Vec<Look>,
        limit: u32,
    ) -> wasmtime::Result<Result<Swapped, StoreError>> {
        let session = session(self)?;
        let etcd = session.etcd.clone();
        let answer = etcd
            .swap(&key, expected.as_deref(), &value, &looks, limit)
            .await;
        Ok(answer.map(|(swapped, revision)| {
            if swapped.done {
                session.wrote(revision);
            }
            session.noted(&etcd.full(&key), revision);
            for look in &looks {
                let (Look::Key(k) | Look::Prefix(k)) = look;
                session.noted(&etcd.full(k), revision);
            }
            swapped
        }))
    }

    async fn remove(
        &mut self,
        key: String,
        expected: String,
    ) -> wasmtime::Result<Result<bool, StoreError>> {
        let session = session(self)?;
        let etcd = session.etcd.clone();
        Ok(etcd.remove(&key, &expected).await.map(|(done, revision)| {
            if done {
                session.wrote(revision);
            }
            done
        }))
    }

    async fn range(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<Entry>, StoreError>> {
        let session = session(self)?;
        let etcd = session.etcd.clone();
        let answer = etcd.range(&prefix, after.as_deref(), limit).await;
        Ok(answer.map(|(entries, revision)| {
            session.noted(&etcd.full(&prefix), revision);
            entries
        }))
    }

    async fn changes_at(&mut self, at_ms: u64) -> wasmtime::Result<()> {
        let session = session(self)?;
        session.changes_at = Some(session.changes_at.map_or(at_ms, |t| t.min(at_ms)));
        Ok(())
    }
}

/// The instance's session; a trap if it has none (the store interface is
/// linked only for instances made on a store).
fn session(state: &mut State) -> wasmtime::Result<&mut Session> {
    state
        .store
        .as_mut()
        .ok_or_else(|| wasmtime::Error::msg("hasp:lock/store used by an instance without a store"))
}
