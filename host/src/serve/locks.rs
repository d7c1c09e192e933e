//! The lock calls every door shares: run on the instance pool, made durable
//! under `--fsync`, counted, and announced to waiters. The rules stay in the
//! guest; this only carries calls and results.

use super::access;
use super::durable::{SyncError, Syncer};
use super::http::Response;
use super::metrics::{Metrics, Outcome};
use super::pool::Pool;
use crate::registry::{self, Exports};
use crate::runtime::instance::{Answer, Call, Params};
use crate::store::{Store, Watch};
use crate::{Error, Grant, Holder, LockOptions, StorageKind, UnlockKey};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use wasmtime::component::ResourceAny;

/// A list of at least this many locks gives the heap's free pages back to
/// the system once it is answered (the instance that made it is given
/// back too: see `pool`).
const BIG_LIST: usize = 5000;
/// How often a call that found the disk in flux (`busy`) is tried again.
const BUSY_RETRIES: usize = 3;
/// A waiting lock retries at least this often, for releases made by other
/// processes (a release through this server wakes it at once).
const POLL: Duration = Duration::from_millis(20);

/// Around how long a waiter on a store pauses after a watch woke it, so
/// that two related attempts woken by each other's withdrawal do not retry
/// in step.
const WATCH_JITTER: Duration = Duration::from_millis(2);

/// The served registry.
pub(super) struct Locks {
    pool: Arc<Pool>,
    /// The runtime the server was started on: a list, which may read many
    /// thousands of states, runs on one of its blocking threads, not on the
    /// network thread its request came in on, whose other connections
    /// would wait for it (see `threads`), nor on the workers that accept.
    long_calls: tokio::runtime::Handle,
    syncer: Option<Syncer>,
    pub metrics: Metrics,
    released: Notify,
    /// The lease given to grants made through doors whose clients cannot
    /// ask for one (gocept.lockd's XML-RPC, Locker without `ttl=`).
    pub default_ttl: Option<Duration>,
    /// Failing calls, logged (target `hasp::serve`, WARN) at most once per
    /// kind every ten seconds, and the success after a logged one.
    failing: super::flaps::Flaps,
    /// Where the locks are kept (said by `/healthz`).
    pub store: Store,
}

/// How a waiting lock ended.
pub(super) enum Waited {
    /// Granted, refused, or failed.
    Done(Result<Grant, Error>),
    /// The client hung up: nothing was granted.
    HungUp,
    /// The server is stopping: nothing was granted.
    Stopping,
}

/// The other end of the connection a waiting call answers: the wait ends
/// when it hangs up.
pub(super) trait Peer {
    /// Resolves once the client has hung up; cancel-safe.
    fn hang_up(&mut self) -> impl Future<Output = ()> + Send;
    /// Whether the client has hung up already; never waits.
    fn has_hung_up(&mut self) -> bool;
}

impl Locks {
    pub(super) fn new(
        pool: Pool,
        syncer: Option<Syncer>,
        default_ttl: Option<Duration>,
        store: Store,
    ) -> Locks {
        Locks {
            store,
            pool: Arc::new(pool),
            long_calls: tokio::runtime::Handle::current(),
            syncer,
            metrics: Metrics::default(),
            released: Notify::new(),
            default_ttl,
            failing: super::flaps::Flaps::default(),
        }
    }

    /// Takes a lock at once or is refused.
    pub(super) async fn lock(
        &self,
        resource: String,
        options: LockOptions,
    ) -> Result<Grant, Error> {
        self.lock_watching(resource, options).await.0
    }

    /// [`Locks::lock`], with what a waiter watches for a change (on a
    /// store).
    async fn lock_watching(
        &self,
        resource: String,
        options: LockOptions,
    ) -> (Result<Grant, Error>, Option<Watch>) {
        let retryable = options.request_id.is_some();
        let options = registry::wit_options(&options);
        let (result, watch) = self
            .call_watching(&resource, |r, h| (r.lock, (h, &*resource, &options)))
            .await;
        let result = match result.map(registry::grant) {
            Ok(grant) => match self.durable().await {
                Ok(()) => Ok(grant),
                Err(why) => Err(self.unsynced_grant(grant, why, retryable).await),
            },
            Err(err) => Err(err),
        };
        self.count(&resource, &result, Outcome::Granted, "granted");
        (result, watch)
    }

    /// A grant whose sync failed: nobody is told it was granted, so it is
    /// released again (with its token) rather than left to nobody — unless
    /// it was made for a request id (`retryable`), when a retry with the
    /// same id may hold it already, or will find it. The release is not
    /// known durable either: after a crash the lock may be found held, by
    /// the grant's client id or anonymously, until its lease (if any) ends.
    async fn unsynced_grant(&self, grant: Grant, why: SyncError, retryable: bool) -> Error {
        let Grant { holder, token } = grant;
        let (resource, fencing) = (holder.resource, holder.fencing);
        if retryable {
            return Error::NotSynced {
                message: format!(
                    "the lock on '{resource}' (fencing {fencing}) was granted but not synced \
                     ({why}): it stays granted to its request id, and a retry with the same \
                     request id gets it"
                ),
            };
        }
        let released = self.release(&resource, &UnlockKey::Token(token)).await;
        let message = match released {
            Ok(_) => format!(
                "the lock on '{resource}' (fencing {fencing}) was granted but not synced \
                 ({why}), so it was released again: nothing is granted"
            ),
            Err(err) => format!(
                "the lock on '{resource}' (fencing {fencing}) was granted but not synced \
                 ({why}), and releasing it failed too ({err}): it may still be held; \
                 `hasp unlock {resource} --force` breaks it"
            ),
        };
        Error::NotSynced { message }
    }

    /// Takes a lock, waiting up to `wait` for it to be free. The wait ends
    /// early, with nothing granted, when `peer` hangs up or `stop` resolves
    /// (the server is stopping). A call in progress is never cut short:
    /// both are heeded between attempts, and after a grant `peer` is asked
    /// once more (a grant to a client that has gone is the caller's to
    /// release; `peer` then says so).
    pub(super) async fn lock_waiting(
        &self,
        resource: String,
        options: LockOptions,
        wait: Duration,
        peer: &mut impl Peer,
        stop: impl Future<Output = ()>,
    ) -> Waited {
        let deadline = Instant::now() + wait;
        tokio::pin!(stop);
        loop {
            // Listen before trying, so a release right after the try wakes us.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let (result, watch) = self.lock_watching(resource.clone(), options.clone()).await;
            match result {
                Err(Error::AlreadyLocked { .. }) if Instant::now() < deadline => {}
                Ok(grant) => {
                    // Asked now, as waiting gave it time to leave; `peer`
                    // keeps the answer for the caller.
                    let _ = peer.has_hung_up();
                    return Waited::Done(Ok(grant));
                }
                other => return Waited::Done(other),
            }
            // On a store, etcd says when what the refusal read changes (a
            // watch), and when a lease in it ends. On a directory, look
            // again after a pause, jittered: two related attempts woken
            // together may both have withdrawn (docs/FORMAT.md,
            // "Hierarchy"); they must not retry in step for ever.
            let changed = async {
                match watch {
                    Some(watch) => {
                        watch.changed(Some(deadline.into_std())).await;
                        tokio::time::sleep(jittered(WATCH_JITTER)).await;
                    }
                    None => {
                        let next = (Instant::now() + jittered(POLL)).min(deadline);
                        tokio::time::sleep_until(next).await;
                    }
                }
            };
            tokio::select! {
                _ = released => {}
                () = changed => {}
                () = peer.hang_up() => return Waited::HungUp,
                () = &mut stop => return Waited::Stopping,
            }
        }
    }

    /// Releases a lock held by `key`; returns what was held.
    pub(super) async fn unlock(&self, resource: String, key: UnlockKey) -> Result<Holder, Error> {
        let result = self.release(&resource, &key).await;
        let result = self.synced(result, "released").await;
        self.count(&resource, &result, Outcome::Released, "released");
        result
    }

    /// Releases the lock `key` owns on `resource` and wakes the waiters;
    /// neither synced nor counted. (A waiter's grant is acknowledged only
    /// after a sync that covers this release too.)
    async fn release(&self, resource: &str, key: &UnlockKey) -> Result<Holder, Error> {
        let key = registry::wit_key(key);
        let result = self
            .call(resource, |r, h| (r.unlock, (h, resource, &key)))
            .await
            .map(registry::holder);
        if result.is_ok() {
            self.released.notify_waiters();
        }
        result
    }

    /// Extends the lease of the lock `key` owns on `resource` (see
    /// [`crate::Registry::renew`]). Not a release: nobody is woken.
    pub(super) async fn renew(
        &self,
        resource: String,
        key: UnlockKey,
        ttl: Option<Duration>,
    ) -> Result<Holder, Error> {
        let key = registry::wit_key(&key);
        let ttl_ms = ttl.map(registry::duration_ms);
        let result = self
            .call(&resource, |r, h| (r.renew, (h, &*resource, &key, ttl_ms)))
            .await
            .map(registry::holder);
        let result = self.synced(result, "renewed").await;
        self.count(&resource, &result, Outcome::Renewed, "renewed");
        result
    }

    /// Breaks the lock on `resource`, whoever holds it; returns what was
    /// held.
    pub(super) async fn force_unlock(&self, resource: String) -> Result<Holder, Error> {
        let result = self
            .call(&resource, |r, h| (r.force_unlock, (h, &*resource)))
            .await
            .map(registry::holder);
        if result.is_ok() {
            self.released.notify_waiters();
        }
        let result = self.synced(result, "broken").await;
        self.count(&resource, &result, Outcome::Released, "broken");
        result
    }

    /// The lock on `resource`, if granted.
    pub(super) async fn status(&self, resource: String) -> Result<Option<Holder>, Error> {
        let result = self
            .call(&resource, |r, h| (r.status, (h, &*resource)))
            .await
            .map(|held| held.map(registry::holder));
        match &result {
            Ok(Some(_)) => access::note(&resource, "held"),
            Ok(None) => access::note(&resource, "free"),
            Err(err) => {
                access::note(&resource, code(err).1);
                self.metrics.outcome(Outcome::Failed);
            }
        }
        result
    }

    /// A page of the granted locks at or below `prefix`, in resource
    /// order: at most `limit` of those whose resource sorts after `after`,
    /// and the resource to continue after if there are more. (The guest
    /// lists them all each time; only the page is kept.)
    pub(super) async fn list(
        &self,
        prefix: String,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Holder>, Option<String>), Error> {
        let (pool, listed) = (self.pool.clone(), prefix.clone());
        let call =
            async move { retry_busy(|| pool.call(None, |r, h| (r.list, (h, &*listed)))).await };
        // On a blocking thread: the runtime's workers, where the accept
        // loop runs, stay free.
        let runtime = self.long_calls.clone();
        let result = match self
            .long_calls
            .spawn_blocking(move || runtime.block_on(call))
            .await
        {
            Ok(result) => result,
            Err(err) => Err(Error::runtime(
                "the list call failed",
                std::io::Error::other(err),
            )),
        };
        let result = result.map(|all| {
            let big = all.len() >= BIG_LIST;
            let from = after.map_or(0, |after| {
                all.partition_point(|h| h.resource.as_str() <= after)
            });
            let more = all.len() - from > limit;
            let page: Vec<Holder> = all
                .into_iter()
                .skip(from)
                .take(limit)
                .map(registry::holder)
                .collect();
            let next = more.then(|| page.last().map(|h| h.resource.clone()));
            if big {
                give_back_free_heap();
            }
            (page, next.flatten())
        });
        match &result {
            Ok(_) => access::note(&prefix, "listed"),
            Err(err) => {
                access::note(&prefix, code(err).1);
                self.metrics.outcome(Outcome::Failed);
            }
        }
        result
    }

    /// Runs one call about `resource` on its instance in the pool, again
    /// while the disk is in flux (`busy`), a few times.
    async fn call<P: Params, T: Answer>(
        &self,
        resource: &str,
        call: impl Fn(&Exports, ResourceAny) -> Call<P, T>,
    ) -> Result<T, Error> {
        retry_busy(|| self.pool.call(Some(resource), &call)).await
    }

    /// [`Locks::call`], with what a waiter for a change to what the last
    /// try read watches (on a store).
    async fn call_watching<P: Params, T: Answer>(
        &self,
        resource: &str,
        call: impl Fn(&Exports, ResourceAny) -> Call<P, T>,
    ) -> (Result<T, Error>, Option<Watch>) {
        let mut tries = 0;
        loop {
            match self.pool.call_watching(Some(resource), &call).await {
                (Err(Error::Busy { .. }), _) if tries < BUSY_RETRIES => tries += 1,
                other => return other,
            }
        }
    }

    /// Waits for the sync after a change (under `--fsync`); a sync that
    /// failed is counted.
    async fn durable(&self) -> Result<(), SyncError> {
        let Some(syncer) = &self.syncer else {
            return Ok(());
        };
        let synced = syncer.durable().await;
        if synced.is_err() {
            self.metrics.sync_failed();
        }
        synced
    }

    /// `result` of a change to a lock (`done`: what happened to it) once it
    /// is durable; `NotSynced` if the sync after it failed. The change
    /// stands: only a crash may undo it.
    async fn synced(&self, result: Result<Holder, Error>, done: &str) -> Result<Holder, Error> {
        let held = result?;
        match self.durable().await {
            Ok(()) => Ok(held),
            Err(why) => Err(Error::NotSynced {
                message: format!(
                    "the lock on '{}' (fencing {}) was {done} but not synced ({why}): \
                     a crash may undo it",
                    held.resource, held.fencing
                ),
            }),
        }
    }

    /// Counts a lock call's `result` (`success`: how a success counts,
    /// `done`: what the access log calls it) and notes it for the log.
    fn count<T>(
        &self,
        resource: &str,
        result: &Result<T, Error>,
        success: Outcome,
        done: &'static str,
    ) {
        let outcome = match result {
            Ok(_) => success,
            Err(e) if e.is_refusal() => Outcome::Refused,
            // Bad input is the client's; a failed sync logs itself.
            Err(Error::InvalidInput { .. } | Error::NotSynced { .. }) => Outcome::Failed,
            Err(e) => {
                let kind = code(e).1;
                if let Some(n) = self.failing.failed(kind, std::time::Instant::now()) {
                    tracing::warn!(
                        target: "hasp::serve",
                        "a call failed: {e} ({n} {kind} failure{} since the last such line; \
                         all are counted in /metrics, one line per kind at most every {} s; \
                         the next success is logged)",
                        if n == 1 { "" } else { "s" },
                        super::flaps::QUIET.as_secs()
                    );
                }
                Outcome::Failed
            }
        };
        if result.is_ok() && self.failing.succeeded() {
            tracing::warn!(target: "hasp::serve", "calls succeed again");
        }
        self.metrics.outcome(outcome);
        access::note(
            resource,
            result.as_ref().map_or_else(|e| code(e).1, |_| done),
        );
    }
}

/// Hands the free pages of the heap back to the system: after a big list
/// (its locks lifted out of the guest, then mostly dropped), the allocator
/// would otherwise keep them for the daemon's life. Only glibc's allocator
/// needs telling.
fn give_back_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `around` give or take half of it, at random.
fn jittered(around: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // Each RandomState is freshly keyed: its hash of nothing is a random
    // number, without a random-number crate.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = around.as_nanos() as u64;
    Duration::from_nanos(nanos / 2 + random % nanos.max(1))
}

/// Runs `call` again while the disk is in flux (`busy`), a few times.
async fn retry_busy<T, F: Future<Output = Result<T, Error>>>(
    mut call: impl FnMut() -> F,
) -> Result<T, Error> {
    let mut tries = 0;
    loop {
        match call().await {
            Err(Error::Busy { .. }) if tries < BUSY_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// The HTTP status and the error code (`/v1`'s `error.code`) of `err`.
pub(super) fn code(err: &Error) -> (u16, &'static str) {
    match err {
        Error::AlreadyLocked { .. } => (409, "already-locked"),
        Error::NotOwner { .. } => (403, "not-owner"),
        Error::NotLocked { .. } => (404, "not-locked"),
        Error::LeaseExpired { .. } => (410, "lease-expired"),
        Error::InvalidInput { .. } => (400, "invalid-input"),
        Error::Busy { .. } => (503, "busy"),
        Error::NotSynced { .. } => (503, "not-synced"),
        Error::CorruptRecord { .. } => (500, "corrupt-record"),
        Error::WouldBlock { .. } => (409, "would-block"),
        // A full disk is the client's to know: the request may succeed
        // once room is made (RFC 4918's 507).
        Error::Storage {
            kind: StorageKind::Full,
            ..
        } => (507, "insufficient-storage"),
        // etcd down or without quorum: nothing was granted; try later.
        Error::Storage {
            kind: StorageKind::Unavailable,
            ..
        } => (503, "unavailable"),
        Error::Storage { .. } | Error::Directory { .. } => (500, "storage"),
        Error::Trap(_) | Error::Runtime(_) | Error::Plugin { .. } | Error::Listen { .. } => {
            (500, "internal")
        }
    }
}

/// The JSON error response for `err`: status, code, message, and the holder
/// when there is one.
pub(super) fn error_response(err: &Error) -> Response {
    let (status, code) = code(err);
    let mut error = json!({"code": code, "message": err.to_string()});
    if let Error::AlreadyLocked { holder, .. }
    | Error::NotOwner { holder, .. }
    | Error::WouldBlock { holder, .. } = err
    {
        error["holder"] = json!(holder);
    }
    Response::json(status, &json!({ "error": error }))
}
