//! The JSON API under `/v1/` (described in docs/openapi.yaml): lock with a
//! client id, flags and an optional wait; unlock by client or token; the
//! status of one resource; a list under a prefix. Every grant carries its
//! fencing token.

use super::http::{Request, Response};
use super::locks::{error_response, Locks};
use crate::{LockOptions, UnlockKey};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The longest `wait_ms` accepted: ten minutes.
const MAX_WAIT_MS: u64 = 600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockBody {
    resource: String,
    client: Option<String>,
    #[serde(default = "yes")]
    lock_parents: bool,
    #[serde(default = "yes")]
    lock_children: bool,
    #[serde(default)]
    wait_ms: u64,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockBody {
    resource: String,
    client: Option<String>,
    token: Option<String>,
}

/// Answers `/v1/<route>`.
pub async fn handle(locks: &Locks, route: &str, request: &Request) -> Response {
    match (request.method(), route) {
        ("POST", "lock") => match body::<LockBody>(request) {
            Ok(b) => lock(locks, b).await,
            Err(bad) => bad,
        },
        ("POST", "unlock") => match body::<UnlockBody>(request) {
            Ok(b) => unlock(locks, b).await,
            Err(bad) => bad,
        },
        ("GET", "status") => {
            let Some(resource) = request.param("resource") else {
                return Response::error(400, "bad-request", "give the resource: ?resource=NAME");
            };
            match locks.status(resource).await {
                Ok(held) => Response::json(200, &json!({ "lock": held })),
                Err(err) => error_response(&err),
            }
        }
        ("GET", "list") => {
            let prefix = request.param("prefix").unwrap_or_default();
            match locks.list(prefix).await {
                Ok(held) => Response::json(200, &json!({ "locks": held })),
                Err(err) => error_response(&err),
            }
        }
        (_, "lock" | "unlock" | "status" | "list") => Response::error(
            405,
            "method-not-allowed",
            "lock and unlock take POST; status and list take GET",
        ),
        _ => Response::error(404, "not-found", "no such route under /v1/"),
    }
}

async fn lock(locks: &Locks, b: LockBody) -> Response {
    if b.wait_ms > MAX_WAIT_MS {
        return Response::error(
            400,
            "invalid-input",
            &format!("wait_ms is at most {MAX_WAIT_MS}"),
        );
    }
    let options = LockOptions {
        client: b.client,
        lock_parents: b.lock_parents,
        lock_children: b.lock_children,
        ..LockOptions::default()
    };
    let result = if b.wait_ms == 0 {
        locks.lock(b.resource, options).await
    } else {
        locks
            .lock_waiting(b.resource, options, Duration::from_millis(b.wait_ms))
            .await
    };
    match result {
        Ok(grant) => Response::json(200, &grant),
        Err(err) => error_response(&err),
    }
}

async fn unlock(locks: &Locks, b: UnlockBody) -> Response {
    let key = match (b.client, b.token) {
        (Some(client), None) => UnlockKey::Client(client),
        (None, Some(token)) => UnlockKey::Token(token),
        _ => {
            return Response::error(
                400,
                "bad-request",
                "give exactly one of \"client\" and \"token\"",
            )
        }
    };
    match locks.unlock(b.resource, key).await {
        Ok(held) => Response::json(200, &held),
        Err(err) => error_response(&err),
    }
}

fn body<T: serde::de::DeserializeOwned>(request: &Request) -> Result<T, Response> {
    serde_json::from_slice(&request.body).map_err(|e| {
        Response::error(
            400,
            "bad-request",
            &format!("the JSON body is not valid: {e}"),
        )
    })
}
