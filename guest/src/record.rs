//! The state of one resource, as stored on disk (format version 3): the name
//! of the one, empty, file in its node's `.lock` directory.
//!
//! ```text
//! 7                                                      free; 7 numbers handed out
//! 8+0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b+pc+1763913600123+client1    held
//! 9+0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6c+pcl+1763913600123+1763913630123+30000+client1
//!                                                        held with a lease
//! ```
//!
//! A held name is
//! `<fencing>+<token>+<flags>+<since-ms>[+<expires-ms>+<ttl-ms>][+<client>]`:
//! flags are `p` or `-` (lock-parents) then `c` or `-` (lock-children), then
//! `l` when the lock has a lease, whose expiry and length follow the grant
//! time; the client id, absent for an anonymous lock, comes last with `%`
//! written `%25` and `/` written `%2F`. Format 2's held names are format 3's
//! without a lease. See docs/FORMAT.md.

use crate::hasp::lock::types::{Grant, Holder};
use crate::token;

/// Longest on-disk form of a client id, in bytes: a held name stays under
/// the 255 bytes filesystems allow (the other fields take at most 82).
pub const MAX_CLIENT_ON_DISK: usize = 160;
/// Longest on-disk form of a client id of a lock with a lease: its two more
/// fields take at most 25 bytes (times stay below [`MAX_TIME_MS`], the
/// length below [`MAX_TTL_MS`]).
pub const MAX_LEASED_CLIENT_ON_DISK: usize = 150;
/// Longest lease, in milliseconds: 30 days.
pub const MAX_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Times written in a lease are below this (the year 2286): 13 digits.
pub const MAX_TIME_MS: u64 = 10_000_000_000_000;
/// Prefix of a node's record of a lease that ran out and was taken over.
pub const LOST_PREFIX: &str = ".lost+";

/// What a node's state file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Free; the number is the last fencing number handed out.
    Free(u64),
    /// Held by the lock described.
    Held(Held),
}

/// A state as read: its name (the state file's name on disk, the key's
/// value in a store) and what it says.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The state's name.
    pub name: String,
    /// What it says.
    pub state: State,
}

/// A lease that ran out and whose lock was taken over, as its node records
/// it.
pub struct Lost {
    /// The lost lock's fencing number.
    pub fencing: u64,
    /// Its token.
    pub token: String,
    /// Its client id.
    pub client: Option<String>,
    /// Whether the same client id took it over.
    pub same: bool,
    /// The record's name in the node.
    pub name: String,
}

impl Lost {
    /// The record named `name`; `None` for any other name.
    pub fn decode(name: String) -> Option<Lost> {
        let (fencing, token, same, client) = decode_lost(&name)?;
        let token = token.to_string();
        Some(Lost {
            fencing,
            token,
            client,
            same,
            name,
        })
    }
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
    /// Its lease, if it has one.
    pub lease: Option<Lease>,
}

/// A lock's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// When it runs out, in milliseconds since the Unix epoch.
    pub expires_ms: u64,
    /// Its length in milliseconds (what a renewal extends it by by default).
    pub ttl_ms: u64,
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
            expires_ms: self.lease.map(|l| l.expires_ms),
            ttl_ms: self.lease.map(|l| l.ttl_ms),
        }
    }
}

/// The state file name of the lock `grant` describes:
/// `<fencing>+<token>+<flags>+<since-ms>[+<expires-ms>+<ttl-ms>][+<client>]`.
pub fn held_name(grant: &Grant) -> String {
    let h = &grant.holder;
    let lease = match (h.expires_ms, h.ttl_ms) {
        (Some(expires_ms), Some(ttl_ms)) => Some(Lease { expires_ms, ttl_ms }),
        _ => None,
    };
    name_of(
        h.fencing,
        &grant.token,
        (h.lock_parents, h.lock_children),
        h.since_ms,
        lease,
        h.client.as_deref(),
    )
}

/// The state file name of `held` with its lease replaced by `lease`.
pub fn renewed_name(held: &Held, lease: Lease) -> String {
    name_of(
        held.fencing,
        &held.token,
        (held.lock_parents, held.lock_children),
        held.since_ms,
        Some(lease),
        held.client.as_deref(),
    )
}

fn name_of(
    fencing: u64,
    token: &str,
    (lock_parents, lock_children): (bool, bool),
    since_ms: u64,
    lease: Option<Lease>,
    client: Option<&str>,
) -> String {
    let mut out = String::with_capacity(96 + client.map_or(0, encoded_client_len));
    push_number(&mut out, fencing);
    out.push('+');
    out.push_str(token);
    out.push('+');
    out.push(if lock_parents { 'p' } else { '-' });
    out.push(if lock_children { 'c' } else { '-' });
    if lease.is_some() {
        out.push('l');
    }
    out.push('+');
    push_number(&mut out, since_ms);
    if let Some(lease) = lease {
        out.push('+');
        push_number(&mut out, lease.expires_ms);
        out.push('+');
        push_number(&mut out, lease.ttl_ms);
    }
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
fn push_number(out: &mut String, n: u64) {
    out.push_str(hasp_text::decimal(n, &mut [0; 20]));
}

/// Parses a state file name; the error says what is wrong with it.
pub fn decode(name: &str) -> Result<State, String> {
    let mut fields = name.splitn(4, '+');
    let fencing = fields.next().unwrap_or_default();
    let fencing = number(fencing).ok_or_else(|| format!("{fencing:?} is not a number"))?;
    let Some(token) = fields.next() else {
        return Ok(State::Free(fencing));
    };
    if !token::is_well_formed(token) {
        return Err(format!("{token:?} is not an unlock token"));
    }
    let (lock_parents, lock_children, leased) = match fields.next() {
        Some(flags) => match flags.as_bytes() {
            [p @ (b'p' | b'-'), c @ (b'c' | b'-'), rest @ ..] if matches!(rest, [] | [b'l']) => {
                (*p == b'p', *c == b'c', !rest.is_empty())
            }
            _ => {
                return Err(format!(
                    "{flags:?} is not `pc`, `p-`, `-c` or `--`, with or without `l`"
                ))
            }
        },
        None => return Err("the flags are missing".to_string()),
    };
    // The client id comes last and may hold `+`: the lease's two fields
    // follow the time only when the flags say so.
    let tail = fields.next().ok_or("the time is missing")?;
    let mut fields = tail.splitn(if leased { 4 } else { 2 }, '+');
    let since = fields.next().unwrap_or_default();
    let since_ms = number(since).ok_or_else(|| format!("{since:?} is not a time"))?;
    let lease = if leased {
        let expires = fields.next().ok_or("the lease's expiry is missing")?;
        let expires_ms = number(expires)
            .filter(|&t| t < MAX_TIME_MS)
            .ok_or_else(|| format!("{expires:?} is not an expiry time"))?;
        let ttl = fields.next().ok_or("the lease's length is missing")?;
        let ttl_ms = number(ttl)
            .filter(|&t| t > 0 && t <= MAX_TTL_MS)
            .ok_or_else(|| format!("{ttl:?} is not a lease length"))?;
        Some(Lease { expires_ms, ttl_ms })
    } else {
        None
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
        lease,
    }))
}

/// The name of a node's record that the lease of `held` ran out and the
/// lock was taken over, by the same client id (`same`) or not:
/// `.lost+<fencing>+<token>+<s|o>[+<client>]`.
pub fn lost_name(held: &Held, same: bool) -> String {
    let mut out = String::with_capacity(64 + held.client.as_deref().map_or(0, encoded_client_len));
    out.push_str(LOST_PREFIX);
    push_number(&mut out, held.fencing);
    out.push('+');
    out.push_str(&held.token);
    out.push_str(if same { "+s" } else { "+o" });
    if let Some(client) = &held.client {
        out.push('+');
        push_client(&mut out, client);
    }
    out
}

/// A lost lease's record: its fencing number, token, whether the same
/// client id took it over, and its client id; `None` for any other name.
pub fn decode_lost(name: &str) -> Option<(u64, &str, bool, Option<String>)> {
    let mut fields = name.strip_prefix(LOST_PREFIX)?.splitn(4, '+');
    let fencing = number(fields.next()?)?;
    let token = fields.next().filter(|t| token::is_well_formed(t))?;
    let same = match fields.next()? {
        "s" => true,
        "o" => false,
        _ => return None,
    };
    let client = match fields.next() {
        Some(client) => Some(decode_client(client)?),
        None => None,
    };
    Some((fencing, token, same, client))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::check_client;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const TOKEN: &str = "0f8e3c1a-5b2d-4e6f-9a7b-1c2d3e4f5a6b";

    /// Whether `name` can be the name of a file on the filesystems hasp
    /// runs on: 1 to 255 bytes, no `/`, no NUL, not `.` or `..`.
    fn is_file_name(name: &str) -> bool {
        (1..=255).contains(&name.len())
            && !name.contains(['/', '\0'])
            && name != "."
            && name != ".."
    }

    /// Numbers, small ones as often as any.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![0..1000u64, any::<u64>()]
    }

    /// Tokens as hasp hands them out.
    fn token() -> impl Strategy<Value = String> {
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    }

    /// Client ids hasp accepts, often with `%`, `/` and `+`, some near the
    /// length limit.
    fn client() -> impl Strategy<Value = String> {
        prop_oneof!["[^\\p{Cc}]{1,30}", "[a%/+]{1,80}"]
            .prop_filter("a valid client id", |c| check_client(c).is_ok())
    }

    /// A lease as a lock or a renewal at the clock's `now` makes it (ending
    /// before [`MAX_TIME_MS`]), and when the lock was granted (not after
    /// `now`).
    fn lease() -> impl Strategy<Value = (u64, Lease)> {
        (1..=MAX_TTL_MS, 0..MAX_TIME_MS - MAX_TTL_MS, any::<u64>()).prop_map(
            |(ttl_ms, now, since)| {
                let expires_ms = now + ttl_ms;
                (since % (now + 1), Lease { expires_ms, ttl_ms })
            },
        )
    }

    /// A held lock as hasp writes one.
    fn held() -> impl Strategy<Value = Held> {
        let parts = (
            number(),
            token(),
            any::<(bool, bool)>(),
            number(),
            prop::option::of(lease()),
            prop::option::of(client()),
        );
        parts
            .prop_filter(
                "a leased lock's client id fits its limit",
                |(.., lease, client)| lease.is_none() || client.as_deref().is_none_or(fits_a_lease),
            )
            .prop_map(|(fencing, token, flags, since_ms, lease, client)| {
                let (since_ms, lease) = match lease {
                    Some((since_ms, lease)) => (since_ms, Some(lease)),
                    None => (since_ms, None),
                };
                Held {
                    fencing,
                    token,
                    lock_parents: flags.0,
                    lock_children: flags.1,
                    since_ms,
                    client,
                    lease,
                }
            })
    }

    fn fits_a_lease(client: &str) -> bool {
        encoded_client_len(client) <= MAX_LEASED_CLIENT_ON_DISK
    }

    /// What hasp writes for a state that [`decode`] read.
    fn rewritten(state: &State) -> String {
        match state {
            State::Free(n) => free_name(*n),
            State::Held(h) => name_of(
                h.fencing,
                &h.token,
                (h.lock_parents, h.lock_children),
                h.since_ms,
                h.lease,
                h.client.as_deref(),
            ),
        }
    }

    /// Checks that `name` never makes a parser panic, and that a name
    /// either parser reads is exactly the one hasp writes for what it read:
    /// no two file names mean the same state. (A client id read from a
    /// name with a `/` would be written with `%2F`; no file name has one.)
    fn check_parsers(name: &str) -> Result<(), TestCaseError> {
        let state = decode(name);
        let lost = decode_lost(name);
        if name.contains('/') {
            return Ok(());
        }
        if let Ok(state) = state {
            prop_assert_eq!(rewritten(&state), name);
        }
        if let Some((fencing, token, same, client)) = lost {
            let held = Held {
                fencing,
                token: token.to_string(),
                lock_parents: false,
                lock_children: false,
                since_ms: 0,
                client,
                lease: None,
            };
            prop_assert_eq!(lost_name(&held, same), name);
        }
        Ok(())
    }

    /// A small change to a name: cut it short, drop a character, or put in
    /// one that means something to the parsers.
    #[derive(Clone, Debug)]
    enum Edit {
        Cut(Index),
        Drop(Index),
        Put(Index, char),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let special = prop::sample::select(&['+', '%', '-', 'l', 'p', 'c', '0', '9', 'F', '.'][..]);
        prop_oneof![
            1 => any::<Index>().prop_map(Edit::Cut),
            2 => any::<Index>().prop_map(Edit::Drop),
            3 => (any::<Index>(), special).prop_map(|(at, c)| Edit::Put(at, c)),
        ]
    }

    fn edited(name: &str, edits: &[Edit]) -> String {
        let mut chars: Vec<char> = name.chars().collect();
        for edit in edits {
            match *edit {
                Edit::Cut(at) => chars.truncate(at.index(chars.len() + 1)),
                Edit::Drop(at) if !chars.is_empty() => {
                    chars.remove(at.index(chars.len()));
                }
                Edit::Drop(_) => {}
                Edit::Put(at, c) => chars.insert(at.index(chars.len() + 1), c),
            }
        }
        chars.into_iter().collect()
    }

    proptest! {
        /// Every held lock hasp writes is a file name that reads back as
        /// that lock, and not as a lost lease's record.
        #[test]
        fn held_names_round_trip(held in held()) {
            let grant = Grant { holder: held.holder("a/resource"), token: held.token.clone() };
            let name = held_name(&grant);
            prop_assert!(is_file_name(&name), "{name:?}");
            prop_assert_eq!(decode(&name), Ok(State::Held(held.clone())));
            prop_assert_eq!(decode_lost(&name), None);
        }

        /// A renewal's name reads back as the lock with its new lease.
        #[test]
        fn renewed_names_round_trip(held in held(), (since_ms, lease) in lease()) {
            prop_assume!(held.client.as_deref().is_none_or(fits_a_lease));
            let held = Held { since_ms, ..held };
            let name = renewed_name(&held, lease);
            prop_assert!(is_file_name(&name), "{name:?}");
            let renewed = Held { lease: Some(lease), ..held };
            prop_assert_eq!(decode(&name), Ok(State::Held(renewed)));
        }

        /// Every free state reads back as its number.
        #[test]
        fn free_names_round_trip(n in any::<u64>()) {
            let name = free_name(n);
            prop_assert_eq!(&name, &n.to_string());
            prop_assert_eq!(decode(&name), Ok(State::Free(n)));
        }

        /// Every lost lease's record is a file name that reads back, and is
        /// never read as a state.
        #[test]
        fn lost_names_round_trip(held in held(), same in any::<bool>()) {
            let name = lost_name(&held, same);
            prop_assert!(is_file_name(&name) && name.starts_with(LOST_PREFIX), "{name:?}");
            let expected = (held.fencing, held.token.as_str(), same, held.client.clone());
            prop_assert_eq!(decode_lost(&name), Some(expected));
            prop_assert!(decode(&name).is_err());
        }

        /// Any text is read or refused, never a panic.
        #[test]
        fn parsers_never_panic(
            name in prop_oneof![any::<String>(), "[0-9+]{0,8}", "[0-9a-f+%lpc-]{0,60}"],
        ) {
            check_parsers(&name)?;
        }

        /// Names hasp writes, slightly damaged, are read or refused, never
        /// a panic, and only ever read as what they say.
        #[test]
        fn damaged_names_never_panic(
            held in held(),
            kind in 0..3,
            edits in prop::collection::vec(edit(), 1..4),
        ) {
            let name = match kind {
                0 => free_name(held.fencing),
                1 => lost_name(&held, held.lock_parents),
                _ => rewritten(&State::Held(held)),
            };
            check_parsers(&edited(&name, &edits))?;
        }
    }

    #[test]
    fn examples() {
        let held = |lease, client: Option<&str>| {
            State::Held(Held {
                fencing: 8,
                token: TOKEN.to_string(),
                lock_parents: true,
                lock_children: false,
                since_ms: 1763913600123,
                client: client.map(str::to_string),
                lease,
            })
        };
        let lease = Lease {
            expires_ms: 1763913630123,
            ttl_ms: 30000,
        };
        assert_eq!(decode("7"), Ok(State::Free(7)));
        assert_eq!(
            decode(&format!("8+{TOKEN}+p-+1763913600123")),
            Ok(held(None, None))
        );
        assert_eq!(
            decode(&format!("8+{TOKEN}+p-+1763913600123+ci-1")),
            Ok(held(None, Some("ci-1")))
        );
        assert_eq!(
            decode(&format!(
                "8+{TOKEN}+p-l+1763913600123+1763913630123+30000+a+b%2Fc%25"
            )),
            Ok(held(Some(lease), Some("a+b/c%")))
        );
        assert_eq!(
            decode_lost(&format!(".lost+6+{TOKEN}+o+ci-41")),
            Some((6, TOKEN, false, Some("ci-41".to_string())))
        );
        for bad in [
            String::new(),
            "07".to_string(),
            "18446744073709551616".to_string(),
            "7+".to_string(),
            format!("7+{}", TOKEN.to_uppercase()),
            format!("7+{TOKEN}"),
            format!("7+{TOKEN}+pc"),
            format!("7+{TOKEN}+cp+1"),
            format!("7+{TOKEN}+pcll+1"),
            format!("7+{TOKEN}+pc+01"),
            format!("7+{TOKEN}+pc+1+"),
            format!("7+{TOKEN}+pc+1+a%2fb"),
            format!("7+{TOKEN}+pc+1+a%b"),
            format!("7+{TOKEN}+pc+1+a\tb"),
            format!("7+{TOKEN}+pcl+1+2"),
            format!("7+{TOKEN}+pcl+1+2+0"),
            format!("7+{TOKEN}+pcl+1+2+2592000001"),
            format!("7+{TOKEN}+pcl+1+10000000000000+5"),
        ] {
            assert!(decode(&bad).is_err(), "{bad:?} was read");
        }
    }

    /// The longest names hasp can write stay within 255 bytes.
    #[test]
    fn longest_names_fit() {
        let client = "%".repeat(MAX_CLIENT_ON_DISK / 3) + "a";
        assert_eq!(encoded_client_len(&client), MAX_CLIENT_ON_DISK);
        let leased = "%".repeat(MAX_LEASED_CLIENT_ON_DISK / 3);
        assert_eq!(encoded_client_len(&leased), MAX_LEASED_CLIENT_ON_DISK);
        let lease = Lease {
            expires_ms: MAX_TIME_MS - 1,
            ttl_ms: MAX_TTL_MS,
        };
        let since = MAX_TIME_MS - 1 - MAX_TTL_MS;
        let flags = (true, true);
        let held = name_of(u64::MAX, TOKEN, flags, u64::MAX, None, Some(&client));
        let leased = name_of(u64::MAX, TOKEN, flags, since, Some(lease), Some(&leased));
        assert!(held.len() <= 255, "{} bytes", held.len());
        assert!(leased.len() <= 255, "{} bytes", leased.len());
    }
}
