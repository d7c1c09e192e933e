//! A lock as `status --json` and `lock --json` print it: one JSON object a
//! line, keys in a fixed order, lease fields only for a leased lock, the
//! token only for a grant.

use crate::Lock;

/// `lock` as a JSON object, with `token` last for a grant.
pub fn object(lock: &Lock<'_>, token: Option<&str>) -> String {
    let mut out = String::with_capacity(192);
    out.push_str("{\"resource\":");
    quote_into(&mut out, lock.resource);
    out.push_str(",\"client\":");
    match lock.client {
        Some(client) => quote_into(&mut out, client),
        None => out.push_str("null"),
    }
    out.push_str(&format!(
        ",\"fencing\":{},\"since_ms\":{},\"lock_parents\":{},\"lock_children\":{}",
        lock.fencing, lock.since_ms, lock.lock_parents, lock.lock_children
    ));
    if let Some((expires, ttl)) = lock.lease {
        out.push_str(&format!(",\"expires_ms\":{expires},\"ttl_ms\":{ttl}"));
    }
    if let Some(token) = token {
        out.push_str(",\"token\":");
        quote_into(&mut out, token);
    }
    out.push('}');
    out
}

/// Several locks as a JSON array.
pub fn array<'a>(locks: impl IntoIterator<Item = Lock<'a>>) -> String {
    let items: Vec<String> = locks.into_iter().map(|l| object(&l, None)).collect();
    format!("[{}]", items.join(","))
}

/// Appends `text` as a JSON string, escaped as serde_json would: `"`, `\`
/// and control characters.
fn quote_into(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(client: Option<&str>, lease: Option<(u64, u64)>) -> Lock<'_> {
        Lock {
            resource: "a/b",
            client,
            fencing: 3,
            since_ms: 1000,
            lock_parents: true,
            lock_children: false,
            lease,
        }
    }

    #[test]
    fn keys_in_order_lease_and_token_only_when_there() {
        assert_eq!(
            object(&lock(Some("ci"), None), None),
            r#"{"resource":"a/b","client":"ci","fencing":3,"since_ms":1000,"lock_parents":true,"lock_children":false}"#
        );
        assert_eq!(
            object(&lock(None, Some((5000, 4000))), Some("t")),
            r#"{"resource":"a/b","client":null,"fencing":3,"since_ms":1000,"lock_parents":true,"lock_children":false,"expires_ms":5000,"ttl_ms":4000,"token":"t"}"#
        );
        assert_eq!(array([]), "[]");
        assert_eq!(
            array([lock(Some("x"), None), lock(Some("y"), None)])
                .matches("\"resource\"")
                .count(),
            2
        );
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        quote_into(&mut out, "q\"b\\n\nc\u{1}");
        assert_eq!(out, r#""q\"b\\n\nc\u0001""#);
    }
}
