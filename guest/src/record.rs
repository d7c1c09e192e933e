//! The state of one resource, as stored on disk (format version 2): the name
//! of the one, empty, file in its node's `.lock` directory.
//!
//! ```text
//! 7                                                      free; 7 numbers handed out
//! 8+0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b+pc+1763913600123+client1    held
//! ```
//!
//! A held name is `<fencing>+<token>+<flags>+<since-ms>[+<client>]`: flags
//! are `p` or `-` (lock-parents) then `c` or `-` (lock-children); the client
//! id, absent for an anonymous lock, comes last with `%` written `%25` and
//! `/` written `%2F`. See docs/FORMAT.md.

use crate::hasp::lock::types::{Grant, Holder};
use crate::token;

/// Longest on-disk form of a client id, in bytes: a held name stays under
/// the 255 bytes filesystems allow (the other fields take at most 82).
pub const MAX_CLIENT_ON_DISK: usize = 160;

/// What a node's state file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Free; the number is the last fencing number handed out.
    Free(u64),
    /// Held by the lock described.
    Held(Held),
}

/// A held lock, as its state file name records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Its fencing number.
    pub fencing: u64,
    /// Its unlock token.
    pub token: String,
    /// Taken with lock-parents.
    pub lock_parents: bool,
    /// Taken with lock-children.
    pub lock_children: bool,
    /// When it was granted, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Its client id; `None` for an anonymous lock.
    pub client: Option<String>,
}

impl Held {
    /// Who holds it, as the API reports it, for the resource `resource`.
    pub fn holder(&self, resource: &str) -> Holder {
        Holder {
            resource: resource.to_string(),
            client: self.client.clone(),
            fencing: self.fencing,
            since_ms: self.since_ms,
            lock_parents: self.lock_parents,
            lock_children: self.lock_children,
        }
    }
}

/// The state file name of the lock `grant` describes:
/// `<fencing>+<token>+<flags>+<since-ms>[+<client>]`.
pub fn held_name(grant: &Grant) -> String {
    let h = &grant.holder;
    let client = h.client.as_deref();
    let mut out = String::with_capacity(64 + client.map_or(0, encoded_client_len));
    push_number(&mut out, h.fencing);
    out.push('+');
    out.push_str(&grant.token);
    out.push('+');
    out.push(if h.lock_parents { 'p' } else { '-' });
    out.push(if h.lock_children { 'c' } else { '-' });
    out.push('+');
    push_number(&mut out, h.since_ms);
    if let Some(client) = client {
        out.push('+');
        push_client(&mut out, client);
    }
    out
}

/// The state file name of a free node whose last number was `number`.
pub fn free_name(number: u64) -> String {
    let mut out = String::with_capacity(20);
    push_number(&mut out, number);
    out
}

/// Appends `n` in decimal.
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// Parses a state file name; the error says what is wrong with it.
pub fn decode(name: &str) -> Result<State, String> {
    let mut fields = name.splitn(5, '+');
    let fencing = fields.next().unwrap_or_default();
    let fencing = number(fencing).ok_or_else(|| format!("{fencing:?} is not a number"))?;
    let Some(token) = fields.next() else {
        return Ok(State::Free(fencing));
    };
    if !token::is_well_formed(token) {
        return Err(format!("{token:?} is not an unlock token"));
    }
    let (lock_parents, lock_children) = match fields.next() {
        Some(flags) => match flags.as_bytes() {
            [p @ (b'p' | b'-'), c @ (b'c' | b'-')] => (*p == b'p', *c == b'c'),
            _ => return Err(format!("{flags:?} is not `pc`, `p-`, `-c` or `--`")),
        },
        None => return Err("the flags are missing".to_string()),
    };
    let since_ms = match fields.next() {
        Some(since) => number(since).ok_or_else(|| format!("{since:?} is not a time"))?,
        None => return Err("the time is missing".to_string()),
    };
    let client = match fields.next() {
        Some(client) => Some(
            decode_client(client)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| format!("{client:?} is not an encoded client id"))?,
        ),
        None => None,
    };
    Ok(State::Held(Held {
        fencing,
        token: token.to_string(),
        lock_parents,
        lock_children,
        since_ms,
        client,
    }))
}

/// Appends the on-disk form of a client id: `%` becomes `%25`, `/` becomes
/// `%2F`.
fn push_client(out: &mut String, client: &str) {
    for c in client.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            _ => out.push(c),
        }
    }
}

/// The length of the on-disk form of `client`, in bytes.
pub fn encoded_client_len(client: &str) -> usize {
    client.len() + 2 * client.bytes().filter(|&b| b == b'%' || b == b'/').count()
}

fn decode_client(encoded: &str) -> Option<String> {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("%25") => out.push('%'),
            Some("%2F") => out.push('/'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    (!out.chars().any(char::is_control)).then_some(out)
}

/// A decimal number as hasp writes it: digits only, no leading zero.
fn number(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}
