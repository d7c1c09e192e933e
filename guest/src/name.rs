//! Resource names and client ids: what is accepted, and how a name maps to a
//! directory path inside the lock directory.
//!
//! A resource name is `/`-separated segments; one leading and one trailing `/`
//! are ignored, so `/my/resource`, `my/resource` and `my/resource/` are the same
//! resource. Refused: an empty name or segment, `.` and `..`, control characters
//! (NUL included), a name over [`MAX_NAME`] bytes or a segment whose on-disk
//! form is over [`MAX_SEGMENT`] bytes.

use crate::errors;
use crate::hasp::lock::types::Error;
use crate::record::{self, MAX_CLIENT_ON_DISK};

/// Longest accepted resource name, in bytes (after trimming the slashes).
pub const MAX_NAME: usize = 1024;

/// Where the nodes live: the directory (on disk) or the key prefix (in a
/// store) holding one node per resource, nested like the names.
pub const NODES: &str = "nodes";
/// Longest on-disk form of one segment, in bytes (filesystems allow 255).
pub const MAX_SEGMENT: usize = 200;

/// A validated, canonical resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    canonical: String,
}

impl Name {
    /// Parses and validates a resource name as a user typed it.
    pub fn parse(raw: &str) -> Result<Name, Error> {
        let bad = |why: &str| errors::invalid("resource name", raw, why);
        let trimmed = raw.strip_prefix('/').unwrap_or(raw);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(bad("it is empty"));
        }
        if trimmed.len() > MAX_NAME {
            return Err(bad(&format!("it is longer than {MAX_NAME} bytes")));
        }
        if let Some(c) = trimmed.chars().find(|c| c.is_control()) {
            return Err(bad(&format!("it contains the control character {c:?}")));
        }
        for segment in trimmed.split('/') {
            match segment {
                "" => return Err(bad("it has an empty segment (`//`)")),
                "." | ".." => return Err(bad("`.` and `..` are not allowed as segments")),
                _ if encoded_len(segment) > MAX_SEGMENT => {
                    return Err(bad(&format!(
                        "a segment is longer than {MAX_SEGMENT} bytes on disk"
                    )))
                }
                _ => {}
            }
        }
        Ok(Name {
            canonical: trimmed.to_string(),
        })
    }

    /// The canonical form: no leading or trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The node directory of this resource, relative to the lock directory.
    pub fn node_path(&self) -> String {
        let mut path = String::with_capacity(NODES.len() + 8 + self.canonical.len());
        path.push_str(NODES);
        for segment in self.canonical.split('/') {
            path.push('/');
            push_encoded(&mut path, segment);
        }
        path
    }
}

/// Validates a client id: not empty, no control characters, at most
/// [`MAX_CLIENT_ON_DISK`] bytes in its on-disk form.
pub fn check_client(client: &str) -> Result<(), Error> {
    let bad = |why: &str| errors::invalid("client id", client, why);
    if client.is_empty() {
        return Err(bad("it is empty"));
    }
    if record::encoded_client_len(client) > MAX_CLIENT_ON_DISK {
        return Err(bad(&format!(
            "it is longer than {MAX_CLIENT_ON_DISK} bytes on disk"
        )));
    }
    if let Some(c) = client.chars().find(|c| c.is_control()) {
        return Err(bad(&format!("it contains the control character {c:?}")));
    }
    Ok(())
}

/// Appends the on-disk form of `segment` to `out`: `%` becomes `%25` and a
/// leading `.` becomes `%2E`, so no segment can collide with the `.lock`
/// directory that shares its parent. Everything else is kept, so `ls` shows
/// names as users wrote them.
fn push_encoded(out: &mut String, segment: &str) {
    let mut rest = segment;
    if let Some(after) = rest.strip_prefix('.') {
        out.push_str("%2E");
        rest = after;
    }
    for (i, part) in rest.split('%').enumerate() {
        if i > 0 {
            out.push_str("%25");
        }
        out.push_str(part);
    }
}

/// The length of the on-disk form of `segment`, in bytes.
fn encoded_len(segment: &str) -> usize {
    let escapes =
        segment.bytes().filter(|&b| b == b'%').count() + usize::from(segment.starts_with('.'));
    segment.len() + 2 * escapes
}

/// The node paths of the ancestors of the node at `node_path` (as made by
/// [`Name::node_path`]), outermost first: for `nodes/a/b/c`, `nodes/a` and
/// `nodes/a/b`. Encoded segments hold no `/`, so they are its prefixes.
pub fn ancestor_nodes(node_path: &str) -> impl Iterator<Item = &str> + '_ {
    let segments = node_path.get(NODES.len() + 1..).unwrap_or_default();
    segments
        .match_indices('/')
        .map(move |(at, _)| &node_path[..NODES.len() + 1 + at])
}

/// The resource whose node is at `node_path` (as made by
/// [`Name::node_path`]); `None` for a path it could not have made.
pub fn resource_of(node_path: &str) -> Option<String> {
    let mut out = String::with_capacity(node_path.len());
    for segment in node_path.strip_prefix(NODES)?.strip_prefix('/')?.split('/') {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(&decode_segment(segment)?);
    }
    Some(out)
}

/// Inverse of `push_encoded`; `None` for anything it could not have made.
pub fn decode_segment(encoded: &str) -> Option<String> {
    if encoded.starts_with('.') {
        return None;
    }
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("%25") => out.push('%'),
            Some("%2E") if out.is_empty() => out.push('.'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The on-disk form of one segment.
    fn encoded(segment: &str) -> String {
        let mut out = String::new();
        push_encoded(&mut out, segment);
        out
    }

    /// Any text, weighted towards what the rules look at: `/`, `.`, `%`,
    /// control characters, and lengths around the limits.
    fn any_name() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a/.%+\\x00\\x7f\\x{85}é]{0,16}",
            "[a.]{185,200}%{0,6}",
            prop::collection::vec("[a-z%.]{1,60}", 1..40).prop_map(|s| s.join("/")),
        ]
    }

    /// One segment a name may have: anything but `/`, a control character,
    /// `.` or `..`, often starting with `.` or holding `%`.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof!["[^/\\p{Cc}]{1,20}", "[.%a]{1,6}"]
            .prop_filter("not . or ..", |s| s != "." && s != "..")
    }

    /// The segments of a valid name, and the name as a user may type it.
    fn valid_name() -> impl Strategy<Value = (Vec<String>, String)> {
        (
            prop::collection::vec(segment(), 1..8),
            any::<(bool, bool)>(),
        )
            .prop_map(|(segments, (lead, trail))| {
                let typed = format!(
                    "{}{}{}",
                    if lead { "/" } else { "" },
                    segments.join("/"),
                    if trail { "/" } else { "" }
                );
                (segments, typed)
            })
    }

    /// Directory names made of pieces of escapes and what they stand for.
    fn escapes() -> impl Strategy<Value = String> {
        let piece =
            prop::sample::select(&["a", ".", "%", "%25", "%2E", "%2e", "%2F", "2", "E"][..]);
        prop::collection::vec(piece, 0..6).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        /// Any text is a name or refused, never a panic; a name accepted
        /// obeys every documented rule.
        #[test]
        fn parse_never_panics(raw in any_name()) {
            if let Ok(name) = Name::parse(&raw) {
                let name = name.as_str();
                prop_assert!(!name.is_empty() && name.len() <= MAX_NAME);
                prop_assert!(!name.chars().any(char::is_control));
                for segment in name.split('/') {
                    prop_assert!(!matches!(segment, "" | "." | ".."));
                    prop_assert!(encoded(segment).len() <= MAX_SEGMENT);
                }
            }
        }

        /// Every valid name is accepted in its canonical form, and its node
        /// path is made of file-name segments that decode back to it.
        #[test]
        fn valid_names_round_trip((segments, typed) in valid_name()) {
            let name = Name::parse(&typed).unwrap();
            prop_assert_eq!(name.as_str(), segments.join("/"));
            prop_assert_eq!(Name::parse(name.as_str()).unwrap(), name.clone());
            prop_assert_eq!(Name::parse(&format!("/{}/", name.as_str())).unwrap(), name.clone());

            let path = name.node_path();
            let on_disk = path.strip_prefix("nodes/").unwrap();
            let on_disk: Vec<&str> = on_disk.split('/').collect();
            prop_assert_eq!(on_disk.len(), segments.len());
            for (file, segment) in on_disk.iter().zip(&segments) {
                prop_assert!(!file.is_empty() && file.len() <= MAX_SEGMENT);
                prop_assert!(!file.starts_with('.') && !file.contains('\0'));
                prop_assert_eq!(file.len(), encoded_len(segment));
                prop_assert_eq!(decode_segment(file), Some(segment.clone()));
            }

            let ancestors: Vec<&str> = ancestor_nodes(&path).collect();
            let expected: Vec<String> = (1..segments.len())
                .map(|n| Name::parse(&segments[..n].join("/")).unwrap().node_path())
                .collect();
            prop_assert_eq!(ancestors, expected);
            // The walks on a store find a node by its path alone.
            prop_assert_eq!(resource_of(&path), Some(name.as_str().to_string()));
        }

        /// Decoding never panics, and decodes only what encoding made: no
        /// two directories are the same resource.
        #[test]
        fn decode_segment_is_exact(file in prop_oneof![any::<String>(), escapes()]) {
            if let Some(segment) = decode_segment(&file) {
                prop_assert_eq!(encoded(&segment), file);
            }
        }

        /// Any client id is accepted or refused, never a panic; one
        /// accepted fits its on-disk limit.
        #[test]
        fn check_client_never_panics(
            client in prop_oneof![any::<String>(), "[a%/+\\x00]{0,170}"],
        ) {
            if check_client(&client).is_ok() {
                prop_assert!(!client.is_empty());
                prop_assert!(!client.chars().any(char::is_control));
                prop_assert!(record::encoded_client_len(&client) <= MAX_CLIENT_ON_DISK);
            }
        }
    }

    #[test]
    fn examples() {
        let name = Name::parse("/deploy/.prod/50%/").unwrap();
        assert_eq!(name.as_str(), "deploy/.prod/50%");
        assert_eq!(name.node_path(), "nodes/deploy/%2Eprod/50%25");
        let path = name.node_path();
        let ancestors: Vec<&str> = ancestor_nodes(&path).collect();
        assert_eq!(ancestors, ["nodes/deploy", "nodes/deploy/%2Eprod"]);
        for bad in [
            "", "/", "//", "a//b", ".", "a/../b", "a/./b", "a\0b", "a\nb",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Name::parse(&"%".repeat(66)).is_ok());
        assert!(Name::parse(&"%".repeat(67)).is_err());
        assert!(Name::parse(&["a"; 512].join("/")).is_ok()); // 1023 bytes
        assert!(Name::parse(&["a"; 513].join("/")).is_err());
        assert_eq!(decode_segment(".lock"), None);
        assert_eq!(decode_segment("%2E%2E"), None);
        assert_eq!(decode_segment("%2e"), None);
        assert_eq!(decode_segment("%2E."), Some("..".to_string()));
    }
}
