//! The registry's steps on a shared key-value store (world `on-store`): the
//! same protocol as [`crate::disk`], with a key's value where a state
//! file's name is and a compare-and-swap of that value where the rename is.
//! See docs/FORMAT.md, "On a store".
//!
//! ```text
//! FORMAT                        hasp-lock-store 1
//! nodes/deploy                  7                        (free)
//! nodes/deploy/prod             8+3f1c…+pc+1795450452162+ci-42   (held)
//! nodes/deploy/.lost+6+9a0b…+o+ci-41                     (a lost lease)
//! ```
//!
//! A node's key is its node path. A key exists once the resource was first
//! locked, and is never deleted: its value carries the fencing number. A
//! node that was never locked has no key, and counts as free; so the
//! ancestors of a node need no keys of their own. The grant and the reads
//! of the related nodes are one transaction ([`Kv::commit`]).

use crate::errors;
use crate::hasp::lock::store::{self, Entry, Look, StoreError};
use crate::hasp::lock::types::Error;
use crate::name;
use crate::record::{self, Lost, Seen, State};
use std::cell::RefCell;
use std::collections::HashMap;

/// The key naming the layout version under the registry's prefix.
const FORMAT: &str = "FORMAT";
/// The value of [`FORMAT`] for this layout.
const FORMAT_LINE: &str = "hasp-lock-store 1";
/// How many records of lost leases a node keeps (the newest), as on disk.
const LOST_KEPT: usize = 8;
/// Keys read per page of a range.
const PAGE: u32 = 512;
/// Ancestors read in the commit's own transaction: the store takes a
/// bounded number of operations per transaction (etcd: 128 by default), and
/// the rest are read afterwards, which the protocol allows (the check only
/// needs to follow the commit).
const ANCESTORS_IN_COMMIT: usize = 100;
/// How many nodes' last states are remembered; past that, none.
const HINTS: usize = 4096;

/// The registry's keys in the host's store.
pub struct Kv {
    /// Prepended to every key: empty, or a prefix ending in `/`.
    root: String,
    /// The value this registry saw or wrote last, by node path: a hint,
    /// good to swap from (which checks it), never to decide on.
    hints: RefCell<HashMap<String, String>>,
}

/// What a commit read in its own transaction.
pub struct Snapshot {
    /// Keys looked up one by one, with their values (`None`: no such key).
    keys: HashMap<String, Option<String>>,
    /// The keys below the node, in key order, if they were read.
    below: Option<Vec<Entry>>,
    /// Whether there were more keys below than were read.
    more: bool,
}

impl Snapshot {
    /// Nothing read: every node is read when asked for.
    pub fn none() -> Snapshot {
        Snapshot {
            keys: HashMap::new(),
            below: None,
            more: false,
        }
    }
}

/// Whether a walk goes on.
pub type Flow = std::ops::ControlFlow<()>;

impl Kv {
    /// Opens the registry under the key prefix `root` (`""`: the host's
    /// prefix itself), writing its `FORMAT` key if there is none.
    pub fn open(root: &str) -> Result<Kv, Error> {
        let root = root.trim_matches('/');
        if root.chars().any(char::is_control) {
            return Err(errors::invalid(
                "key prefix",
                root,
                "it has control characters",
            ));
        }
        let kv = Kv {
            root: if root.is_empty() {
                String::new()
            } else {
                format!("{root}/")
            },
            hints: RefCell::new(HashMap::new()),
        };
        let key = kv.key(FORMAT);
        let mut found = store::get(&key).map_err(failed("read", &key))?;
        if found.is_none() {
            let made =
                store::swap(&key, None, FORMAT_LINE, &[], 0).map_err(failed("create", &key))?;
            if !made.done {
                found = store::get(&key).map_err(failed("read", &key))?;
            }
        }
        match found {
            Some(line) if line != FORMAT_LINE => Err(errors::wrong_store_format(&key, &line)),
            _ => Ok(kv),
        }
    }

    /// The store key of `path` (a node path, or [`FORMAT`]).
    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// Where the state of `node` is, for messages: its key (the value is
    /// the state).
    pub fn state_path(&self, node: &str, _name: &str) -> String {
        self.key(node)
    }

    /// Lets go of every hint.
    pub fn forget(&self) {
        self.hints.borrow_mut().clear();
    }

    /// Remembers `value` as `node`'s last state (`None`: forgets it).
    fn remember(&self, node: &str, value: Option<&str>) {
        let mut hints = self.hints.borrow_mut();
        match value {
            Some(value) => {
                if hints.len() >= HINTS && !hints.contains_key(node) {
                    hints.clear();
                }
                hints.insert(node.to_string(), value.to_string());
            }
            None => {
                hints.remove(node);
            }
        }
    }

    /// The last state this registry saw or wrote on `node`, unchecked: only
    /// good to swap from (which checks it).
    pub fn hint(&self, node: &str) -> Option<Seen> {
        let name = self.hints.borrow().get(node)?.clone();
        let state = record::decode(&name).ok()?;
        Some(Seen { name, state })
    }

    /// The state of `node` in the store now, or `None` for a node that was
    /// never locked.
    pub fn read(&self, node: &str) -> Result<Option<Seen>, Error> {
        let key = self.key(node);
        let Some(value) = store::get(&key).map_err(failed("read", &key))? else {
            self.remember(node, None);
            return Ok(None);
        };
        self.remember(node, Some(&value));
        seen(&key, value).map(Some)
    }

    /// What the state of `node` says now.
    pub fn state(&self, node: &str) -> Result<Option<State>, Error> {
        Ok(self.read(node)?.map(|seen| seen.state))
    }

    /// Swaps `node`'s state from `from` to `to`: the one way a state
    /// changes. False, changing nothing, when the state is no longer `from`.
    pub fn change(&self, node: &str, from: &str, to: &str) -> Result<bool, Error> {
        Ok(self.swap(node, from, to, &[])?.is_some())
    }

    /// Step 2 of a lock: swaps `node`'s state from `from` to `to` and, in
    /// the same transaction, reads the ancestors (`parents`) and the nodes
    /// below (`children`) that the check will look at. `None` when the
    /// state is no longer `from`.
    pub fn commit(
        &self,
        node: &str,
        from: &str,
        to: &str,
        parents: bool,
        children: bool,
    ) -> Result<Option<Snapshot>, Error> {
        let mut looks = Vec::new();
        if parents {
            looks.extend(
                name::ancestor_nodes(node)
                    .take(ANCESTORS_IN_COMMIT)
                    .map(|ancestor| Look::Key(self.key(ancestor))),
            );
        }
        if children {
            looks.push(Look::Prefix(format!("{}/", self.key(node))));
        }
        self.swap(node, from, to, &looks)
    }

    /// The swap of [`Kv::change`] and [`Kv::commit`], reading `looks`.
    fn swap(
        &self,
        node: &str,
        from: &str,
        to: &str,
        looks: &[Look],
    ) -> Result<Option<Snapshot>, Error> {
        let key = self.key(node);
        let swapped =
            store::swap(&key, Some(from), to, looks, PAGE).map_err(failed("change", &key))?;
        if !swapped.done {
            self.remember(node, None);
            return Ok(None);
        }
        self.remember(node, Some(to));
        let mut snapshot = Snapshot::none();
        let mut entries = swapped.entries.into_iter().peekable();
        for look in looks {
            match look {
                Look::Key(wanted) => {
                    let value = entries
                        .next_if(|e| e.key == *wanted)
                        .map(|entry| entry.value);
                    snapshot.keys.insert(wanted.clone(), value);
                }
                Look::Prefix(prefix) => {
                    let mut below = Vec::new();
                    while let Some(entry) = entries.next_if(|e| e.key.starts_with(prefix.as_str()))
                    {
                        below.push(entry);
                    }
                    snapshot.below = Some(below);
                    snapshot.more = swapped.more;
                }
            }
        }
        Ok(Some(snapshot))
    }

    /// The state of the related node `node` for the check after a commit:
    /// as the commit's transaction read it, or read now.
    pub fn related(&self, snapshot: &Snapshot, node: &str) -> Result<Option<State>, Error> {
        let key = self.key(node);
        match snapshot.keys.get(&key) {
            Some(None) => Ok(None),
            Some(Some(value)) => seen(&key, value.clone()).map(|seen| Some(seen.state)),
            None => self.state(node),
        }
    }

    /// Tells the host that what this call read changes at `at_ms` by the
    /// clock alone (a lease that refused the lock ends), for its waiters.
    pub fn changes_at(&self, at_ms: u64) {
        store::changes_at(at_ms);
    }

    /// Gives `node` its first state, `0`, unless it has one. Its ancestors
    /// need none: a node without a key is free.
    pub fn make_node(&self, node: &str) -> Result<(), Error> {
        let key = self.key(node);
        store::swap(&key, None, &record::free_name(0), &[], 0).map_err(failed("create", &key))?;
        Ok(())
    }

    /// Whether `node` certainly has no nodes below it: never sure without
    /// reading them, which the walk does in one range.
    pub fn is_leaf(&self, _node: &str) -> Result<bool, Error> {
        Ok(false)
    }

    /// Hands every node below `node` (not `node` itself) and its state to
    /// `visit`, in key order, until `visit` breaks: those `snapshot` read,
    /// then the rest, a page at a time.
    pub fn below<F>(&self, node: &str, snapshot: &Snapshot, visit: &mut F) -> Result<Flow, Error>
    where
        F: FnMut(&str, Option<Seen>) -> Result<Flow, Error>,
    {
        let prefix = format!("{}/", self.key(node));
        let mut after = None;
        if let Some(read) = &snapshot.below {
            if self.visit(read, visit)?.is_break() {
                return Ok(Flow::Break(()));
            }
            if !snapshot.more {
                return Ok(Flow::Continue(()));
            }
            after = read.last().map(|entry| entry.key.clone());
        }
        loop {
            let page =
                store::range(&prefix, after.as_deref(), PAGE).map_err(failed("read", &prefix))?;
            if self.visit(&page, visit)?.is_break() {
                return Ok(Flow::Break(()));
            }
            if page.len() < PAGE as usize {
                return Ok(Flow::Continue(()));
            }
            after = page.last().map(|entry| entry.key.clone());
        }
    }

    /// Hands the nodes among `entries` to `visit` (records of lost leases
    /// are not nodes).
    fn visit<F>(&self, entries: &[Entry], visit: &mut F) -> Result<Flow, Error>
    where
        F: FnMut(&str, Option<Seen>) -> Result<Flow, Error>,
    {
        for entry in entries {
            let Some(node) = entry.key.strip_prefix(self.root.as_str()) else {
                continue;
            };
            if is_lost_record(node) {
                continue;
            }
            let seen = seen(&entry.key, entry.value.clone())?;
            if visit(node, Some(seen))?.is_break() {
                return Ok(Flow::Break(()));
            }
        }
        Ok(Flow::Continue(()))
    }

    /// Records in `node` that the lease of `held` ran out and the lock was
    /// taken over; keeps the newest [`LOST_KEPT`]. Only for messages: a
    /// record that could not be written changes no decision.
    pub fn record_lost(&self, node: &str, held: &record::Held, taker: Option<&str>) {
        let same = taker.is_some() && taker == held.client.as_deref();
        let key = format!("{}/{}", self.key(node), record::lost_name(held, same));
        if store::swap(&key, None, "", &[], 0).is_err() {
            return;
        }
        let Ok(mut lost) = self.lost(node) else {
            return;
        };
        if lost.len() > LOST_KEPT {
            lost.sort_by_key(|l| std::cmp::Reverse(l.fencing));
            for old in &lost[LOST_KEPT..] {
                let _ = store::remove(&format!("{}/{}", self.key(node), old.name), "");
            }
        }
    }

    /// The records of lost leases kept in `node`.
    pub fn lost(&self, node: &str) -> Result<Vec<Lost>, Error> {
        let prefix = format!("{}/{}", self.key(node), record::LOST_PREFIX);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page =
                store::range(&prefix, after.as_deref(), PAGE).map_err(failed("read", &prefix))?;
            let full = page.len() == PAGE as usize;
            after = page.last().map(|entry| entry.key.clone());
            let names = page.into_iter().filter_map(|entry| {
                let (_, name) = entry.key.rsplit_once('/')?;
                Lost::decode(name.to_string())
            });
            out.extend(names);
            if !full {
                return Ok(out);
            }
        }
    }
}

/// Whether the node path `path` is a record of a lost lease (its last
/// segment begins with `.`, which no node's does).
fn is_lost_record(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|last| last.starts_with('.'))
}

/// Parses the value `value` of `key`.
fn seen(key: &str, value: String) -> Result<Seen, Error> {
    match record::decode(&value) {
        Ok(state) => Ok(Seen { name: value, state }),
        Err(why) => Err(errors::corrupt(key, shortened(&why))),
    }
}

/// `why`, cut to a line's length: a value someone else wrote may be of any
/// size (on disk a name is at most 255 bytes).
fn shortened(why: &str) -> &str {
    const MOST: usize = 300;
    match why.char_indices().nth(MOST) {
        Some((at, _)) => &why[..at],
        None => why,
    }
}

/// Maps a failed store call on `key` to an error.
fn failed<'a>(action: &'a str, key: &'a str) -> impl FnOnce(StoreError) -> Error + 'a {
    move |err| match err {
        StoreError::Unavailable(why) => errors::store_unavailable(action, key, &why),
        StoreError::Refused(why) => errors::io_failure(action, key, &why),
    }
}
