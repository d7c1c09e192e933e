//! Unlock tokens: random UUIDs (version 4) from the WASI random source.

/// A fresh, unguessable UUID v4 in its usual 8-4-4-4-12 hex form.
pub fn uuid_v4() -> String {
    let random = wasip2::random::random::get_random_bytes(16);
    let mut b = [0u8; 16];
    b.copy_from_slice(&random[..16]);
    shaped(b)
}

/// `b` written as a UUID v4: 8-4-4-4-12 lower-case hex, with the version
/// and variant bits set.
fn shaped(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// Whether `s` has the shape of a token we hand out (so it is safe as a file name).
pub fn is_well_formed(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// The token of the grant that a lock call with `request_id` by `client`
/// makes on the node `node` with the fencing number `fencing`: UUID-shaped,
/// derived with SipHash-2-4 (a fixed algorithm, so every hasp derives the
/// same), so that a retried call can recognise its own grant on disk. It is
/// exactly as secret as the request id; another client id with the same
/// request id derives another token.
pub fn for_request(request_id: &str, client: Option<&str>, node: &str, fencing: u64) -> String {
    let hash = |key: u64| {
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(key, 0x6861_7370_2d72_6571);
        use std::hash::Hasher;
        h.write(request_id.as_bytes());
        h.write(&[0xff]);
        match client {
            Some(client) => {
                h.write(&[1]);
                h.write(client.as_bytes());
            }
            None => h.write(&[0]),
        }
        h.write(&[0xff]);
        h.write(node.as_bytes());
        h.write(&[0xff]);
        h.write(&fencing.to_le_bytes());
        h.finish()
    };
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hash(1).to_le_bytes());
    b[8..].copy_from_slice(&hash(2).to_le_bytes());
    shaped(b)
}
