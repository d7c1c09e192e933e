//! The JSON API under `/v1/` (described in docs/openapi.yaml): lock with a
//! client id, flags, an optional lease, request id and wait; renew a
//! lease; unlock by client or token, or (an authenticated operator) by
//! force; the status of one resource; a list under a prefix, page by page.
//! Every grant carries its fencing token.

use super::http::{Connection, Request, Response};
use super::locks::{error_response, Locks, Waited};
use crate::{LockOptions, UnlockKey};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use tokio::sync::watch;

/// The longest `wait_ms` accepted: ten minutes.
const MAX_WAIT_MS: u64 = 600_000;
/// Locks in a page of `/v1/list` when the request does not say.
const LIST_PAGE: usize = 1000;
/// The most locks a page of `/v1/list` holds.
const MAX_LIST_PAGE: usize = 10_000;
/// The longest lease: thirty days, as the lock rules allow.
pub(super) const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    resource: String,
    client: Option<String>,
    #[serde(default = "parents_by_default")]
    lock_parents: bool,
    #[serde(default = "children_by_default")]
    lock_children: bool,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default, deserialize_with = "given")]
    ttl_ms: Option<u64>,
    #[serde(default, deserialize_with = "given")]
    request_id: Option<String>,
}

fn parents_by_default() -> bool {
    LockOptions::default().lock_parents
}

fn children_by_default() -> bool {
    LockOptions::default().lock_children
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockBody {
    resource: String,
    #[serde(default, deserialize_with = "given")]
    client: Option<String>,
    #[serde(default, deserialize_with = "given")]
    token: Option<String>,
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    resource: String,
    #[serde(default, deserialize_with = "given")]
    client: Option<String>,
    #[serde(default, deserialize_with = "given")]
    token: Option<String>,
    #[serde(default, deserialize_with = "given")]
    ttl_ms: Option<u64>,
}

/// A field that may be left out but is never `null` (only `/v1/lock`'s
/// `client` may be: an anonymous lock).
fn given<'de, D, T>(field: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(field).map(Some)
}

/// Answers `/v1/<route>`. `operator`: the daemon asks for a token and the
/// request carried it (what a forced unlock needs); `conn` is watched while
/// a lock waits, and told when its client has gone; a waiting lock ends
/// when `stopping` turns true.
pub(super) async fn handle(
    locks: &Locks,
    route: &str,
    request: &Request,
    conn: &mut Connection,
    stopping: &watch::Receiver<bool>,
    operator: bool,
) -> Response {
    match (request.method(), route) {
        ("POST", "lock") => match body::<LockBody>(request) {
            Ok(b) => lock(locks, b, conn, stopping).await,
            Err(bad) => bad,
        },
        ("POST", "unlock") => match body::<UnlockBody>(request) {
            Ok(b) => unlock(locks, b, operator).await,
            Err(bad) => bad,
        },
        ("POST", "renew") => match body::<RenewBody>(request) {
            Ok(b) => renew(locks, b).await,
            Err(bad) => bad,
        },
        ("GET" | "HEAD", "status") => {
            let Some(resource) = request.param("resource") else {
                return Response::error(400, "bad-request", "give the resource: ?resource=NAME");
            };
            match locks.status(resource).await {
                Ok(held) => Response::json(200, &json!({ "lock": held })),
                Err(err) => error_response(&err),
            }
        }
        ("GET" | "HEAD", "list") => list(locks, request).await,
        (_, "lock" | "unlock" | "renew" | "status" | "list") => Response::error(
            405,
            "method-not-allowed",
            "lock, unlock and renew take POST; status and list take GET (or HEAD)",
        ),
        _ => Response::error(404, "not-found", "no such route under /v1/"),
    }
}

async fn lock(
    locks: &Locks,
    b: LockBody,
    conn: &mut Connection,
    stopping: &watch::Receiver<bool>,
) -> Response {
    if b.wait_ms > MAX_WAIT_MS {
        return Response::error(
            400,
            "invalid-input",
            &format!("wait_ms is at most {MAX_WAIT_MS}"),
        );
    }
    let ttl = match b.ttl_ms.map(ttl) {
        Some(Err(bad)) => return bad,
        Some(Ok(ttl)) => Some(ttl),
        None => None,
    };
    // A grant made under a request id may already be in the hands of a
    // retry (the same id on another connection): it is never handed back
    // when this answer cannot be delivered; the retry, or the lease, ends it.
    let retryable = b.request_id.is_some();
    let options = LockOptions {
        client: b.client,
        lock_parents: b.lock_parents,
        lock_children: b.lock_children,
        ttl,
        request_id: b.request_id,
    };
    let result = if b.wait_ms == 0 {
        locks.lock(b.resource, options).await
    } else {
        let wait = Duration::from_millis(b.wait_ms);
        let mut stopping = stopping.clone();
        let stop = async move {
            // A dropped sender means the server is gone: stop too.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        match locks
            .lock_waiting(b.resource, options, wait, conn, stop)
            .await
        {
            Waited::Done(result) => result,
            Waited::HungUp => return Response::error(499, "client-closed", "the client hung up"),
            Waited::Stopping => {
                return Response::error(
                    503,
                    "shutting-down",
                    "the server is stopping: the wait ended and nothing was granted",
                )
            }
        }
    };
    match result {
        Ok(grant) if retryable => Response::json(200, &grant),
        Ok(grant) => Response::json(200, &grant).handing(grant),
        Err(err) => error_response(&err),
    }
}

/// `GET /v1/list?prefix=P&limit=N&after=RESOURCE`: a page of the locks at
/// or below `P`, and (only when there are more) the `next` resource to
/// list after.
async fn list(locks: &Locks, request: &Request) -> Response {
    let [prefix, limit, after] = request.params(["prefix", "limit", "after"]);
    let limit = match limit.as_deref().map(str::parse::<usize>) {
        None => LIST_PAGE,
        Some(Ok(n)) if (1..=MAX_LIST_PAGE).contains(&n) => n,
        Some(_) => {
            let shown = limit.unwrap_or_default();
            return Response::error(
                400,
                "invalid-input",
                &format!("limit is a number from 1 to {MAX_LIST_PAGE}, not {shown:?}"),
            );
        }
    };
    let after = after.as_deref().map(|a| a.trim_matches('/'));
    match locks.list(prefix.unwrap_or_default(), after, limit).await {
        Ok((held, None)) => Response::json(200, &json!({ "locks": held })),
        Ok((held, Some(next))) => Response::json(200, &json!({ "locks": held, "next": next })),
        Err(err) => error_response(&err),
    }
}

/// A lease of `ms` milliseconds, or the 400 refusing it.
fn ttl(ms: u64) -> Result<Duration, Response> {
    if (1..=MAX_TTL_MS).contains(&ms) {
        Ok(Duration::from_millis(ms))
    } else {
        Err(Response::error(
            400,
            "invalid-input",
            &format!("ttl_ms is from 1 to {MAX_TTL_MS} (30 days), not {ms}"),
        ))
    }
}

/// The key in `client` or `token`, exactly one of them.
fn key(client: Option<String>, token: Option<String>) -> Result<UnlockKey, Response> {
    match (client, token) {
        (Some(client), None) => Ok(UnlockKey::Client(client)),
        (None, Some(token)) => Ok(UnlockKey::Token(token)),
        _ => Err(Response::error(
            400,
            "bad-request",
            "give exactly one of \"client\" and \"token\"",
        )),
    }
}

async fn unlock(locks: &Locks, b: UnlockBody, operator: bool) -> Response {
    if b.force {
        return force_unlock(locks, b, operator).await;
    }
    let key = match key(b.client, b.token) {
        Ok(key) => key,
        Err(bad) => return bad,
    };
    match locks.unlock(b.resource, key).await {
        Ok(held) => Response::json(200, &held),
        Err(err) => error_response(&err),
    }
}

/// `{"resource", "force": true}`: breaks the lock whoever holds it, for a
/// caller that proved itself with the daemon's token.
async fn force_unlock(locks: &Locks, b: UnlockBody, operator: bool) -> Response {
    if b.client.is_some() || b.token.is_some() {
        return Response::error(
            400,
            "bad-request",
            "\"force\" breaks the lock whoever holds it: give no \"client\" or \"token\" with it",
        );
    }
    if !operator {
        return Response::error(
            403,
            "forbidden",
            "a forced unlock needs the daemon to run with --token-file, so that only a caller \
             with its token may break a lock; without one, use `hasp unlock RESOURCE --force` \
             on the lock directory",
        );
    }
    match locks.force_unlock(b.resource).await {
        Ok(held) => Response::json(200, &held),
        Err(err) => error_response(&err),
    }
}

async fn renew(locks: &Locks, b: RenewBody) -> Response {
    let key = match key(b.client, b.token) {
        Ok(key) => key,
        Err(bad) => return bad,
    };
    let ttl = match b.ttl_ms.map(ttl) {
        Some(Err(bad)) => return bad,
        Some(Ok(ttl)) => Some(ttl),
        None => None,
    };
    match locks.renew(b.resource, key, ttl).await {
        Ok(held) => Response::json(200, &held),
        Err(err) => error_response(&err),
    }
}

/// The request's body as a `T`: a JSON object (a struct would read an
/// array too, field by field), or the 400 refusing it.
fn body<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, Response> {
    let bad = |why: &dyn std::fmt::Display| {
        Response::error(
            400,
            "bad-request",
            &format!("the JSON body is not valid: {why}"),
        )
    };
    if request.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad(&"it is not a JSON object"));
    }
    serde_json::from_slice(&request.body).map_err(|e| bad(&e))
}
