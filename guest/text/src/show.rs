//! How locks are shown to people: the status table, timestamps, and what
//! a forced unlock reports.

use crate::{Lock, ANONYMOUS};

/// The status table: a header, then one aligned line per lock. An EXPIRES
/// column follows when any lock has a lease (`-` for one without).
pub fn table(rows: &[Lock<'_>]) -> String {
    let leases = rows.iter().any(|r| r.lease.is_some());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.resource.to_string(),
                r.client.unwrap_or(ANONYMOUS).to_string(),
                utc(r.since_ms),
                r.fencing.to_string(),
            ];
            if leases {
                cells.push(
                    r.lease
                        .map_or_else(|| "-".to_string(), |(end, _)| utc_ms(end)),
                );
            }
            cells
        })
        .collect();
    let mut header: Vec<String> = ["RESOURCE", "OWNER", "SINCE", "FENCING"]
        .map(String::from)
        .to_vec();
    if leases {
        header.push("EXPIRES".to_string());
    }
    let width = |i: usize| {
        cells
            .iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(cells.iter()) {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

/// `2026-11-23T16:02:03.250Z`: [`utc`] with milliseconds, for lease ends.
pub fn utc_ms(ms: u64) -> String {
    let mut out = utc(ms);
    out.pop();
    out.push_str(&format!(".{:03}Z", ms % 1000));
    out
}

/// `2026-11-23T16:02:03Z` from milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What `unlock --force` reports: whose lock it broke.
pub fn broke(resource: &str, client: Option<&str>, fencing: u64) -> String {
    format!(
        "broke the lock on '{resource}' held by '{}' (fencing {fencing})",
        client.unwrap_or(ANONYMOUS)
    )
}
