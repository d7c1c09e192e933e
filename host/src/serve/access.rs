//! The access log: one `tracing` event per request (target `hasp::access`,
//! level INFO) with the peer, the door, the resource and what became of it,
//! the status and the latency.
//!
//! The lock calls (`locks`) say which resource they touched and their
//! outcome through [`note`]; the connection that carried the request reads
//! it back when it logs the answer. The note lives in a task-local of the
//! connection's task, set only while the access log is enabled: with it
//! off, a request pays one check per lock call.

use super::metrics::Door;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

/// The log target of the access lines.
pub(super) const TARGET: &str = "hasp::access";

/// What the lock calls of one request said about it.
#[derive(Default)]
pub(super) struct Note {
    /// Whether the access log is on: otherwise nothing is noted.
    on: bool,
    resource: String,
    outcome: &'static str,
}

tokio::task_local! {
    static NOTE: RefCell<Note>;
}

/// Whether access lines are logged at all (the subscriber's filter).
pub(super) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// Runs `connection` (a connection's task) with a note for its requests.
pub(super) async fn scope<F: std::future::Future>(connection: F) -> F::Output {
    let note = Note {
        on: enabled(),
        ..Note::default()
    };
    NOTE.scope(RefCell::new(note), connection).await
}

/// Records that the current request's lock call on `resource` came to
/// `outcome` (`granted`, `already-locked`, ...); the last call wins. Does
/// nothing outside [`scope`].
pub(super) fn note(resource: &str, outcome: &'static str) {
    let _ = NOTE.try_with(|note| {
        let mut note = note.borrow_mut();
        if !note.on {
            return;
        }
        note.resource.clear();
        note.resource.push_str(resource);
        note.outcome = outcome;
    });
}

/// Logs the answer to one request (if the access log is on) and clears
/// the note for the next.
pub(super) fn log(
    peer: SocketAddr,
    door: Door,
    method: &str,
    path: &str,
    status: u16,
    took: Duration,
) {
    if !enabled() {
        return;
    }
    let (resource, outcome) = NOTE
        .try_with(|note| {
            let mut note = note.borrow_mut();
            let outcome = std::mem::take(&mut note.outcome);
            (std::mem::take(&mut note.resource), outcome)
        })
        .unwrap_or_default();
    // The path only: a query may carry a Locker unlock token.
    tracing::info!(
        target: TARGET,
        peer = %peer,
        door = %door.label(),
        resource = (!resource.is_empty()).then_some(resource.as_str()),
        outcome = (!outcome.is_empty()).then_some(outcome),
        status,
        latency_us = took.as_micros() as u64,
        "{method} {path} -> {status}",
    );
}
