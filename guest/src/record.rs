//! The record of one granted lock, as stored on disk (format version 1).
//!
//! ```text
//! hasp-lock 1
//! resource: foo/bar
//! client: client1
//! token: 0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b
//! fencing: 7
//! since-ms: 1763913600123
//! lock-parents: true
//! lock-children: true
//! ```
//!
//! One `key: value` per line, UTF-8, `\n` endings. `client` is absent for an
//! anonymous lock. Readers ignore keys they do not know, so later versions can
//! add lines; a different first line means a format this reader must refuse.
//! See docs/FORMAT.md.

use crate::hasp::lock::types::{Grant, Holder};

/// First line of every version-1 record.
pub const MAGIC: &str = "hasp-lock 1";

/// Serialises a grant to its on-disk text.
pub fn encode(grant: &Grant) -> String {
    let h = &grant.holder;
    let mut out = format!("{MAGIC}\nresource: {}\n", h.resource);
    if let Some(client) = &h.client {
        out.push_str(&format!("client: {client}\n"));
    }
    out.push_str(&format!(
        "token: {}\nfencing: {}\nsince-ms: {}\nlock-parents: {}\nlock-children: {}\n",
        grant.token, h.fencing, h.since_ms, h.lock_parents, h.lock_children
    ));
    out
}

/// Parses a record's text; the error says what is wrong with it.
pub fn decode(text: &str) -> Result<Grant, String> {
    let mut lines = text.lines();
    match lines.next() {
        Some(MAGIC) => {}
        Some(first) if first.starts_with("hasp-lock ") => {
            return Err(format!("unsupported record version {first:?}"))
        }
        _ => return Err("missing the `hasp-lock 1` header".to_string()),
    }
    let (mut resource, mut client, mut token) = (None, None, None);
    let (mut fencing, mut since, mut parents, mut children) = (None, None, None, None);
    for line in lines {
        let Some((key, value)) = line.split_once(": ") else {
            return Err(format!("malformed line {line:?}"));
        };
        let value = value.to_string();
        match key {
            "resource" => resource = Some(value),
            "client" => client = Some(value),
            "token" => token = Some(value),
            "fencing" => fencing = Some(number(key, &value)?),
            "since-ms" => since = Some(number(key, &value)?),
            "lock-parents" => parents = Some(flag(key, &value)?),
            "lock-children" => children = Some(flag(key, &value)?),
            _ => {} // a later minor version's key
        }
    }
    let missing = |key: &str| format!("missing `{key}`");
    Ok(Grant {
        holder: Holder {
            resource: resource.ok_or_else(|| missing("resource"))?,
            client,
            fencing: fencing.ok_or_else(|| missing("fencing"))?,
            since_ms: since.ok_or_else(|| missing("since-ms"))?,
            lock_parents: parents.ok_or_else(|| missing("lock-parents"))?,
            lock_children: children.ok_or_else(|| missing("lock-children"))?,
        },
        token: token.ok_or_else(|| missing("token"))?,
    })
}

fn number(key: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("`{key}` is not a number: {value:?}"))
}

fn flag(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{key}` is not true or false: {value:?}")),
    }
}
