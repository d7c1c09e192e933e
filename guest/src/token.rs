//! Unlock tokens: random UUIDs (version 4) from the WASI random source.

/// A fresh, unguessable UUID v4 in its usual 8-4-4-4-12 hex form.
pub fn uuid_v4() -> String {
    let mut b = wasip2::random::random::get_random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Whether `s` has the shape of a token we hand out (so it is safe as a file name).
pub fn is_well_formed(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}
