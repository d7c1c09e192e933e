//! How locks are shown to people and scripts: the status table, timestamps
//! and JSON. Plain Rust with no dependencies, so the `hasp` CLI (host) and
//! the component's own command line (`wasmtime run hasp.wasm ...`) print
//! byte for byte the same; the host includes this file by path.

/// One lock as shown: resource, owner (`?` when anonymous), grant time in
/// milliseconds since the Unix epoch, fencing token.
pub struct Row<'a> {
    pub resource: &'a str,
    pub client: Option<&'a str>,
    pub since_ms: u64,
    pub fencing: u64,
}

/// The status table: a header, then one aligned line per lock.
pub fn table(rows: &[Row<'_>]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.resource.to_string(),
                r.client.unwrap_or("?").to_string(),
                utc(r.since_ms),
                r.fencing.to_string(),
            ]
        })
        .collect();
    let header = ["RESOURCE", "OWNER", "SINCE", "FENCING"].map(String::from);
    let width = |i: usize| {
        cells
            .iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for row in std::iter::once(&header).chain(cells.iter()) {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            row[0], row[1], row[2], row[3]
        ));
    }
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
