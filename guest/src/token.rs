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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every token made from random bytes is a well-formed UUID v4.
        #[test]
        fn tokens_are_well_formed(bytes in any::<[u8; 16]>()) {
            let token = shaped(bytes);
            prop_assert!(is_well_formed(&token), "{token:?}");
            prop_assert_eq!(&token[14..15], "4");
            prop_assert!(matches!(&token[19..20], "8" | "9" | "a" | "b"));
        }

        /// A derived token is well formed, the same on every retry, and
        /// another for another fencing number or client id.
        #[test]
        fn derived_tokens(
            id in "\\PC{1,20}",
            client in prop::option::of("\\PC{0,20}"),
            node in "nodes/[a-z/]{1,20}",
            fencing in any::<u64>(),
        ) {
            let token = for_request(&id, client.as_deref(), &node, fencing);
            prop_assert!(is_well_formed(&token), "{token:?}");
            prop_assert_eq!(&for_request(&id, client.as_deref(), &node, fencing), &token);
            let next = for_request(&id, client.as_deref(), &node, fencing.wrapping_add(1));
            prop_assert_ne!(&next, &token);
            let other = if client.is_some() { None } else { Some("") };
            prop_assert_ne!(&for_request(&id, other, &node, fencing), &token);
        }

        /// Any text passes the shape check or not, never a panic; what
        /// passes is safe in a state file name (no `+`, `/`, `%` or `.`).
        #[test]
        fn shape_check_never_panics(s in prop_oneof![any::<String>(), "[0-9a-fA-F+-]{35,37}"]) {
            if is_well_formed(&s) {
                prop_assert_eq!(s.len(), 36);
                prop_assert!(s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-')));
            }
        }
    }

    #[test]
    fn examples() {
        assert_eq!(shaped([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(shaped([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert!(is_well_formed("0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b"));
        for bad in [
            "",
            "0F8E3C1A-5B2D-4E6F-9A7B-1C2D3E4F5A6B",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b0",
            "0f8e3c1a5-b2d-4e6f-9a7b-1c2d3e4f5a6b",
            "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5aé",
        ] {
            assert!(!is_well_formed(bad), "{bad:?} passed");
        }
    }

    /// The derivation never changes: a retry by a newer hasp must find the
    /// grant an older one made.
    #[test]
    fn derivation_is_fixed() {
        assert_eq!(
            for_request("req-1", Some("ci-42"), "nodes/deploy/prod", 8),
            "45629f73-ab55-45d5-bfaf-a31eb5736cec"
        );
        assert_eq!(
            for_request("req-1", None, "nodes/deploy", 1),
            "0b501f81-8538-4749-a2aa-d217b803a48b"
        );
    }
}
