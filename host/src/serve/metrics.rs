//! Counters and a latency histogram, rendered in Prometheus' text format
//! at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Which front door a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Door {
    Locker,
    XmlRpc,
    V1,
    Other,
}

impl Door {
    const ALL: [Door; 4] = [Door::Locker, Door::XmlRpc, Door::V1, Door::Other];

    pub(super) fn label(self) -> &'static str {
        match self {
            Door::Locker => "locker",
            Door::XmlRpc => "xmlrpc",
            Door::V1 => "v1",
            Door::Other => "other",
        }
    }
}

/// What a lock call came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Granted,
    Released,
    Renewed,
    /// A grant released again: its client had gone.
    Abandoned,
    Refused,
    Failed,
}

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub(super) struct Metrics {
    requests: [AtomicU64; 4],
    grants: AtomicU64,
    releases: AtomicU64,
    renewals: AtomicU64,
    abandoned: AtomicU64,
    refusals: AtomicU64,
    errors: AtomicU64,
    sync_failures: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Metrics {
    pub(super) fn request(&self, door: Door, took: Duration) {
        let at = Door::ALL.iter().position(|d| *d == door).unwrap_or(3);
        self.requests[at].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(super) fn outcome(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Granted => &self.grants,
            Outcome::Released => &self.releases,
            Outcome::Renewed => &self.renewals,
            Outcome::Abandoned => &self.abandoned,
            Outcome::Refused => &self.refusals,
            Outcome::Failed => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A change whose sync failed (`--fsync`): answered with an error.
    pub(super) fn sync_failed(&self) {
        self.sync_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub(super) fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP hasp_requests_total HTTP requests served, by front door.\n");
        out.push_str("# TYPE hasp_requests_total counter\n");
        for (door, counter) in Door::ALL.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "hasp_requests_total{{door=\"{}\"}} {}",
                door.label(),
                get(counter)
            );
        }
        for (name, help, counter) in [
            ("hasp_grants_total", "Locks granted.", &self.grants),
            ("hasp_releases_total", "Locks released.", &self.releases),
            ("hasp_renewals_total", "Leases renewed.", &self.renewals),
            (
                "hasp_abandoned_total",
                "Grants released again because their client had gone.",
                &self.abandoned,
            ),
            (
                "hasp_refusals_total",
                "Lock and unlock calls refused by the rules.",
                &self.refusals,
            ),
            (
                "hasp_errors_total",
                "Calls that failed for another reason.",
                &self.errors,
            ),
            (
                "hasp_sync_failures_total",
                "Changes whose sync failed under --fsync (answered with an error, not acknowledged).",
                &self.sync_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                get(counter)
            );
        }
        out.push_str("# HELP hasp_request_duration_seconds Time to answer a request.\n");
        out.push_str("# TYPE hasp_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, counter) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += get(counter);
            let _ = writeln!(
                out,
                "hasp_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = get(&self.count);
        let _ = writeln!(
            out,
            "hasp_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "hasp_request_duration_seconds_sum {}",
            get(&self.sum_ns) as f64 / 1e9
        );
        let _ = writeln!(out, "hasp_request_duration_seconds_count {count}");
        out
    }
}
