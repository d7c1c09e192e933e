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
                _ if encode_segment(segment).len() > MAX_SEGMENT => {
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

    /// The names of every ancestor, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = Name> + '_ {
        self.canonical.match_indices('/').map(|(at, _)| Name {
            canonical: self.canonical[..at].to_string(),
        })
    }

    /// The node directory of this resource, relative to the lock directory.
    pub fn node_path(&self) -> String {
        let mut path = String::from(crate::disk::NODES);
        for segment in self.canonical.split('/') {
            path.push('/');
            path.push_str(&encode_segment(segment));
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
    if record::encode_client(client).len() > MAX_CLIENT_ON_DISK {
        return Err(bad(&format!(
            "it is longer than {MAX_CLIENT_ON_DISK} bytes on disk"
        )));
    }
    if let Some(c) = client.chars().find(|c| c.is_control()) {
        return Err(bad(&format!("it contains the control character {c:?}")));
    }
    Ok(())
}

/// On-disk form of a segment: `%` becomes `%25` and a leading `.` becomes
/// `%2E`, so no segment can collide with the `.lock` directory that shares
/// its parent. Everything else is kept, so `ls` shows
/// names as users wrote them.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for (i, c) in segment.chars().enumerate() {
        match c {
            '%' => out.push_str("%25"),
            '.' if i == 0 => out.push_str("%2E"),
            _ => out.push(c),
        }
    }
    out
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
