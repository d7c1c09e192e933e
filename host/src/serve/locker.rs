//! Locker's door: `GET /canhaz/<path>`, `/nowant/<path>`, `/dohaz/<path>`,
//! with Locker's JSON answers (`ok`, `token`, `lockedBy`).

use super::http::{decode, Request, Response};
use super::locks::{error_response, Locks};
use crate::{Error, LockOptions, UnlockKey};
use serde::Serialize;
use serde_json::json;

/// `{"ok": ...}`.
#[derive(Serialize)]
struct Answer {
    ok: bool,
}

/// A grant; fields in the order Locker's clients saw them (sorted).
#[derive(Serialize)]
struct Granted<'a> {
    fencing: u64,
    ok: bool,
    token: &'a str,
}

/// A refusal naming the holder.
#[derive(Serialize)]
struct Refused<'a> {
    #[serde(rename = "lockedBy")]
    locked_by: &'a str,
    ok: bool,
}

/// Answers a Locker call; `verb` is `canhaz`, `nowant` or `dohaz`, `rest`
/// the encoded resource path after it.
pub async fn handle(locks: &Locks, verb: &str, rest: &str, request: &Request) -> Response {
    let Some(resource) = decode(rest, false) else {
        return Response::error(
            400,
            "bad-request",
            "the resource path is not valid percent-encoded UTF-8",
        );
    };
    match verb {
        "canhaz" => canhaz(locks, resource, request).await,
        "nowant" => {
            let key = match (request.param("token"), request.param("id")) {
                (Some(token), _) => UnlockKey::Token(token),
                (None, Some(id)) => UnlockKey::Client(id),
                (None, None) => return Response::json(200, &Answer { ok: false }),
            };
            match locks.unlock(resource, key).await {
                Ok(_) => Response::json(200, &Answer { ok: true }),
                Err(err) if err.is_refusal() => Response::json(200, &Answer { ok: false }),
                Err(err) => error_response(&err),
            }
        }
        _ => match locks.status(resource).await {
            Ok(held) => Response::json(
                200,
                &json!({"lockedBy": held.map(|h| h.client.unwrap_or_else(|| "?".into()))}),
            ),
            Err(err) => error_response(&err),
        },
    }
}

async fn canhaz(locks: &Locks, resource: String, request: &Request) -> Response {
    let flag = |name: &str| -> Result<bool, Response> {
        match request.param(name) {
            None => Ok(true),
            Some(v) => parse_flag(&v).ok_or_else(|| {
                Response::error(
                    400,
                    "invalid-input",
                    &format!(
                        "{name} must be True or False (or true/false, 1/0, yes/no), not {v:?}"
                    ),
                )
            }),
        }
    };
    let options = match (flag("lockParents"), flag("lockChildren")) {
        (Ok(lock_parents), Ok(lock_children)) => LockOptions {
            client: request.param("id").filter(|id| !id.is_empty()),
            lock_parents,
            lock_children,
            ..LockOptions::default()
        },
        (Err(bad), _) | (_, Err(bad)) => return bad,
    };
    match locks.lock(resource, options).await {
        Ok(grant) => Response::json(
            200,
            &Granted {
                fencing: grant.holder.fencing,
                ok: true,
                token: &grant.token,
            },
        ),
        Err(Error::AlreadyLocked { holder, .. }) => Response::json(
            200,
            &Refused {
                locked_by: &holder,
                ok: false,
            },
        ),
        Err(err) => error_response(&err),
    }
}

/// Python's spellings of a boolean, as Locker users write them.
pub fn parse_flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}
