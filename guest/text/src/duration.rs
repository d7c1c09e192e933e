//! Durations as people type them on a command line: `30s`, `5m`, `1500ms`,
//! `2h`, `1d`, `1.5s`; a bare number is seconds. Plain Rust with no
//! dependencies, so the `hasp` CLI (host) and the component's own command
//! line read `--ttl` alike.

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

#[cfg(test)]
mod tests {
    use super::parse_ms;
    use proptest::prelude::*;

    /// Each unit and its length in milliseconds.
    const UNITS: [(&str, u64); 6] = [
        ("ms", 1),
        ("", 1_000),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];

    proptest! {
        /// Text made of what durations are made of is read or refused,
        /// never a panic.
        #[test]
        fn never_panics(text in prop_oneof![any::<String>(), "[0-9.smhd]{0,30}"]) {
            let _ = parse_ms(&text);
        }

        /// A whole number of any unit is that many units.
        #[test]
        fn whole_numbers(n in 0u64..100_000_000, unit in 0..UNITS.len()) {
            let (suffix, ms) = UNITS[unit];
            prop_assert_eq!(parse_ms(&format!("{n}{suffix}")), Ok(n * ms));
        }

        /// Milliseconds written as a fraction of a second are exact.
        #[test]
        fn fractions_of_a_second(n in 0u64..1_000_000, frac in 0u64..1000, zeros in 0usize..8) {
            let digits = format!("{frac:03}{}", "0".repeat(zeros));
            prop_assert_eq!(parse_ms(&format!("{n}.{digits}s")), Ok(n * 1000 + frac));
            prop_assert_eq!(parse_ms(&format!("{n}.{digits}")), Ok(n * 1000 + frac));
        }

        /// Any fraction of a unit lands between the whole units around it.
        #[test]
        fn fractions_lie_between(n in 0u64..1_000_000, digits in "[0-9]{1,15}", unit in 0..UNITS.len()) {
            let (suffix, ms) = UNITS[unit];
            let got = parse_ms(&format!("{n}.{digits}{suffix}")).unwrap();
            prop_assert!(n * ms <= got && got <= (n + 1) * ms, "{got}");
        }

        /// More than 20 digits, or more than fits, is refused.
        #[test]
        fn too_long_is_refused(digits in "[1-9][0-9]{20,30}", unit in 0..UNITS.len()) {
            let text = format!("{digits}{}", UNITS[unit].0);
            prop_assert!(parse_ms(&text).is_err());
        }
    }

    #[test]
    fn examples() {
        assert_eq!(parse_ms("1.5s"), Ok(1500));
        assert_eq!(parse_ms(".5"), Ok(500));
        assert_eq!(parse_ms("5."), Ok(5000));
        assert_eq!(parse_ms("0.0001s"), Ok(1));
        assert_eq!(parse_ms("0"), Ok(0));
        assert_eq!(parse_ms("18446744073709551615ms"), Ok(u64::MAX));
        for bad in [
            "",
            ".",
            "s",
            "1.2.3",
            "-1",
            "+1",
            "1 s",
            "1S",
            "1sec",
            "18446744073709551616ms",
            "18446744073709552s",
        ] {
            assert!(parse_ms(bad).is_err(), "{bad:?} was read");
        }
    }
}
