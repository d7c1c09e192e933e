//! Durations as people type them on a command line: `30s`, `5m`, `1500ms`,
//! `2h`, `1d`, `1.5s`; a bare number is seconds. Plain Rust with no
//! dependencies, so the `hasp` CLI (host) and the component's own command
//! line read `--ttl` alike; the host includes this file by path.

/// Milliseconds in `text`, or a one-line reason it is not a duration.
/// Fractions of a millisecond are rounded up, so a positive duration never
/// becomes 0.
pub fn parse_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("'{text}' is not a duration (e.g. 30s, 5m, 1500ms, 2h; a bare number is seconds)")
    };
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let unit_ms: u128 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        || whole.len() > 20
    {
        return Err(bad());
    }
    let nonzero = whole.bytes().chain(fraction.bytes()).any(|b| b != b'0');
    // Digits past the 9th of a fraction change nothing that counts (but
    // for making a positive duration at least 1 ms, below).
    let fraction = &fraction[..fraction.len().min(9)];
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| bad())?
    };
    let ms = (whole * unit_ms + (fraction * unit_ms).div_ceil(scale)).max(u128::from(nonzero));
    u64::try_from(ms).map_err(|_| format!("'{text}' is too long a duration"))
}
