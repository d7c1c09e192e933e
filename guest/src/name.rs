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
        let mut path = String::with_capacity(crate::disk::NODES.len() + 8 + self.canonical.len());
        path.push_str(crate::disk::NODES);
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
    let segments = node_path
        .get(crate::disk::NODES.len() + 1..)
        .unwrap_or_default();
    segments
        .match_indices('/')
        .map(move |(at, _)| &node_path[..crate::disk::NODES.len() + 1 + at])
}

/// Inverse of [`encode_segment`]; `None` for anything it could not have made.
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
