//! Locker's door: `GET /canhaz/<path>`, `/nowant/<path>`, `/dohaz/<path>`,
//! with Locker's JSON answers (`ok`, `token`, `lockedBy`). One extension:
//! `canhaz?ttl=SECONDS` takes a lease (without it, the daemon's
//! `--default-ttl`, if any); a leased grant's answer adds `expires_ms`.
//!
//! Every answer has Locker's shape, `{"ok": ...}`: a refusal, and a token or
//! client id that could never match (Locker would find no such lock), are
//! `200 {"ok": false}`. Input Locker would have taken but hasp cannot (a
//! bad escape, flag, `ttl` or resource name) is a 400 that still reads
//! `{"ok": false}`, with an `error` beside it for people. Only a failure of
//! the daemon itself (storage, sync, a broken guest: Locker had no disk to
//! fail) is a bare HTTP error, so that no client reads it as a refusal.

use super::http::{decode, Request, Response};
use super::locks::{error_response, Locks};
use super::v1::MAX_TTL_MS;
use crate::{Error, LockOptions, UnlockKey};
use serde::Serialize;
use serde_json::json;
use std::time::Duration;

/// `{"ok": ...}`.
#[derive(Serialize)]
struct Answer {
    ok: bool,
}

/// A grant; fields in the order Locker's clients saw them (sorted).
#[derive(Serialize)]
struct Granted<'a> {
    /// When a lease runs out (an extension: only for a leased grant).
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
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
pub(super) async fn handle(locks: &Locks, verb: &str, rest: &str, request: &Request) -> Response {
    let Some(resource) = decode(rest, false) else {
        return invalid(
            400,
            "bad-request",
            "the resource path is not valid percent-encoded UTF-8",
        );
    };
    match verb {
        "canhaz" => canhaz(locks, resource, request).await,
        "nowant" => {
            let key = match request.params(["token", "id"]) {
                [Some(token), _] => UnlockKey::Token(token),
                [None, Some(id)] => UnlockKey::Client(id),
                [None, None] => return Response::json(200, &Answer { ok: false }),
            };
            match locks.unlock(resource, key).await {
                Ok(_) => Response::json(200, &Answer { ok: true }),
                // A malformed token or id matches no lock: Locker says no.
                Err(err) if err.is_refusal() || matches!(err, Error::InvalidInput { .. }) => {
                    Response::json(200, &Answer { ok: false })
                }
                Err(err) => error_response(&err),
            }
        }
        _ => match locks.status(resource).await {
            Ok(held) => Response::json(
                200,
                &json!({"lockedBy": held.map(|h| h.client.unwrap_or_else(|| hasp_text::ANONYMOUS.into()))}),
            ),
            Err(err) => failed(&err),
        },
    }
}

async fn canhaz(locks: &Locks, resource: String, request: &Request) -> Response {
    let [id, parents, children, ttl] = request.params(["id", "lockParents", "lockChildren", "ttl"]);
    let flag = |name: &str, value: Option<String>, default: bool| -> Result<bool, Response> {
        match value {
            None => Ok(default),
            Some(v) => parse_flag(&v).ok_or_else(|| {
                invalid(
                    400,
                    "invalid-input",
                    &format!(
                        "{name} must be True or False (or true/false, 1/0, yes/no), not {v:?}"
                    ),
                )
            }),
        }
    };
    let ttl = match ttl {
        None => Ok(locks.default_ttl),
        Some(text) => parse_seconds(&text).map(Some).ok_or_else(|| {
            invalid(
                400,
                "invalid-input",
                &format!(
                    "ttl is a lease in seconds, from 0.001 to {} (30 days), not {text:?}",
                    MAX_TTL_MS / 1000
                ),
            )
        }),
    };
    let default = LockOptions::default();
    let options = match (
        flag("lockParents", parents, default.lock_parents),
        flag("lockChildren", children, default.lock_children),
        ttl,
    ) {
        (Ok(lock_parents), Ok(lock_children), Ok(ttl)) => LockOptions {
            client: id.filter(|id| !id.is_empty()),
            lock_parents,
            lock_children,
            ttl,
            ..default
        },
        (Err(bad), _, _) | (_, Err(bad), _) | (_, _, Err(bad)) => return bad,
    };
    match locks.lock(resource, options).await {
        Ok(grant) => Response::json(
            200,
            &Granted {
                expires_ms: grant.holder.expires_ms,
                fencing: grant.holder.fencing,
                ok: true,
                token: &grant.token,
            },
        )
        .handing(grant),
        Err(Error::AlreadyLocked { holder, .. } | Error::WouldBlock { holder, .. }) => {
            Response::json(
                200,
                &Refused {
                    locked_by: &holder,
                    ok: false,
                },
            )
        }
        Err(err) => failed(&err),
    }
}

/// A refusal is `200 {"ok": false}`, bad input a 400 in Locker's shape,
/// and a failure of the daemon its own HTTP error.
fn failed(err: &Error) -> Response {
    match err {
        err if err.is_refusal() => Response::json(200, &Answer { ok: false }),
        Error::InvalidInput { .. } => invalid(400, "invalid-input", &err.to_string()),
        err => error_response(err),
    }
}

/// Whether `path` is one of Locker's: `/canhaz`, `/nowant`, `/dohaz`, bare
/// or with a resource after a `/`.
pub(super) fn is_locker_path(path: &str) -> bool {
    ["/canhaz", "/nowant", "/dohaz"].iter().any(|verb| {
        path.strip_prefix(verb)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// `response` in Locker's shape: a JSON error object gets `"ok": false`
/// beside its `error`, unless it says `ok` already.
pub(super) fn shaped(mut response: Response) -> Response {
    let Ok(serde_json::Value::Object(mut answer)) =
        serde_json::from_slice::<serde_json::Value>(&response.body)
    else {
        return response;
    };
    if answer.contains_key("ok") {
        return response;
    }
    answer.insert("ok".into(), serde_json::Value::Bool(false));
    let mut body = Vec::with_capacity(response.body.len() + 13);
    let _ = serde_json::to_writer(&mut body, &answer);
    body.push(b'\n');
    response.body = body;
    response
}

/// `{"ok": false, "error": {"code": ..., "message": ...}}`: an error in
/// Locker's shape.
pub(super) fn invalid(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        &json!({"ok": false, "error": {"code": code, "message": message}}),
    )
}

/// A lease given in decimal seconds (`30`, `0.25`, `.5`), rounded up to
/// whole milliseconds; `None` unless it is from 0.001 s to 30 days.
fn parse_seconds(text: &str) -> Option<Duration> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // Three places are milliseconds; any further non-zero digit rounds up.
    let mut ms = 0;
    for i in 0..3 {
        ms = ms * 10
            + fraction
                .as_bytes()
                .get(i)
                .map_or(0, |b| u64::from(b - b'0'));
    }
    let rest = fraction.get(3..).unwrap_or("");
    let ms = whole.checked_mul(1000)?.checked_add(ms)?;
    // Less than a millisecond is refused (the least lease is 0.001), not
    // rounded up to one.
    if ms == 0 {
        return None;
    }
    let ms = ms.checked_add(u64::from(rest.bytes().any(|b| b != b'0')))?;
    (1..=MAX_TTL_MS)
        .contains(&ms)
        .then(|| Duration::from_millis(ms))
}

/// Python's spellings of a boolean, as Locker users write them.
pub(super) fn parse_flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_seconds_are_decimal_and_round_up_to_milliseconds() {
        let ms = |t: &str| parse_seconds(t).map(|d| d.as_millis() as u64);
        assert_eq!(ms("30"), Some(30_000));
        assert_eq!(ms("0.3"), Some(300));
        assert_eq!(ms(".5"), Some(500));
        assert_eq!(ms("1."), Some(1000));
        assert_eq!(ms("0.0015"), Some(2));
        assert_eq!(ms("0.001"), Some(1));
        assert_eq!(ms("0.2500"), Some(250));
        assert_eq!(ms("2592000"), Some(MAX_TTL_MS));
        for bad in [
            "",
            ".",
            "0",
            "0.000",
            "0.0001",
            "0.0009999",
            "-1",
            "1e3",
            "1s",
            " 1",
            "2592000.001",
            "99999999999999999999",
        ] {
            assert_eq!(ms(bad), None, "{bad:?}");
        }
    }
}
