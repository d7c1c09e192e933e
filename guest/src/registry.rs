//! The lock rules: who may lock what, who may unlock, hierarchy, fencing.
//!
//! Hierarchy: two locks on the same resource always conflict. A lock on an
//! ancestor A and one on a descendant D conflict only when A was taken with
//! lock-children *and* D with lock-parents (so "don't lock parents" on D means
//! D never blocks, nor is blocked by, A — as in Locker's README).
//!
//! A lock attempt (1) reads the resource's state and refuses if it is held,
//! (2) commits by renaming the free state to its held state, which fails if
//! the state moved meanwhile, then (3) checks the related resources and, on
//! a conflict, withdraws. Because every attempt commits before it checks, of
//! two racing related attempts at least one sees the other: at most one is
//! granted. docs/FORMAT.md has the full argument.

use crate::disk::{Disk, Seen};
use crate::errors;
use crate::hasp::lock::types::{Error, Grant, Holder, LockOptions, UnlockKey};
use crate::name::{self, Name};
use crate::record::{self, Held, State};
use crate::token;
use wasip2::clocks::monotonic_clock;

/// How often an attempt starts over after losing a race before it reports
/// `busy`. Each restart means another process changed the state meanwhile.
const RETRIES: usize = 64;

/// How long the walk below a lock-children attempt may take, in
/// nanoseconds: a third of the host's 30-second deadline for a call, so the
/// attempt is withdrawn (and `busy` answered) long before the host would
/// stop the call half way and leave it held.
const WALK_BUDGET_NS: u64 = 10_000_000_000;
/// The walk looks at the clock once per this many nodes.
const WALK_CLOCK_EVERY: usize = 64;

/// A registry open on one lock directory.
pub struct Registry {
    disk: Disk,
}

impl Registry {
    /// Opens the registry in the preopened directory `dir`.
    pub fn open(dir: &str) -> Result<Registry, Error> {
        Ok(Registry {
            disk: Disk::open(dir)?,
        })
    }

    /// After a failed call: lets go of the directories held open, which may
    /// be the cause (out of descriptors; a directory removed or replaced).
    pub fn failed(&self, err: &Error) {
        use crate::hasp::lock::types::ErrorCode;
        if matches!(
            err.code,
            ErrorCode::Storage(_) | ErrorCode::Busy | ErrorCode::CorruptRecord(_)
        ) {
            self.disk.forget();
        }
    }

    /// Takes a lock; see the WIT docs of `registry.lock`.
    pub fn lock(&self, resource: &str, options: &LockOptions) -> Result<Grant, Error> {
        let name = Name::parse(resource)?;
        if let Some(client) = &options.client {
            name::check_client(client)?;
        }
        let node = name.node_path();
        // The state this registry left the node in, if it is free: renaming
        // from it checks it, so it saves a read.
        let mut known = self
            .disk
            .hint(&node)
            .filter(|seen| matches!(seen.state, State::Free(_)));
        for _ in 0..RETRIES {
            let seen = match known.take() {
                Some(seen) => seen,
                None => match self.disk.read(&node)? {
                    Some(seen) => seen,
                    None => {
                        self.disk.make_node(&node)?;
                        continue;
                    }
                },
            };
            // (1) Held: refuse without writing anything.
            let last = match seen.state {
                State::Held(held) => return Err(already_locked(&held)),
                State::Free(last) => last,
            };
            let Some(fencing) = last.checked_add(1) else {
                let path = format!("{node}/.lock/{}", seen.name);
                return Err(errors::corrupt(&path, "no fencing number follows it"));
            };
            let grant = Grant {
                holder: Holder {
                    resource: name.as_str().to_string(),
                    client: options.client.clone(),
                    fencing,
                    since_ms: now_ms(),
                    lock_parents: options.lock_parents,
                    lock_children: options.lock_children,
                },
                token: token::uuid_v4(),
            };
            // (2) Commit: only one rename from this free state can succeed.
            let held = record::held_name(&grant);
            if !self.disk.change(&node, &seen.name, &held)? {
                continue;
            }
            // (3) Check the related locks now that this one is visible.
            let refusal = match self.conflict(&node, options) {
                Ok(None) => return Ok(grant),
                Ok(Some(other)) => already_locked(&other),
                Err(err) => err,
            };
            self.withdraw(&node, &held, fencing)?;
            return Err(refusal);
        }
        Err(errors::busy(name.as_str()))
    }

    /// Frees `node` again from our attempt `held`, spending its number
    /// `fencing`. A failure is tried once more with fresh descriptors (out
    /// of them, say); if that fails too, the error says the attempt may be
    /// left held.
    fn withdraw(&self, node: &str, held: &str, fencing: u64) -> Result<(), Error> {
        let free = record::free_name(fencing);
        let first = self.disk.change(node, held, &free);
        if first.is_ok() {
            return Ok(());
        }
        self.disk.forget();
        match self.disk.change(node, held, &free) {
            Ok(_) => Ok(()),
            Err(err) => Err(errors::io_failure(
                "withdraw the refused attempt on",
                node,
                &format!(
                    "{}; it may be left held (unlock it by its client id)",
                    err.message
                ),
            )),
        }
    }

    /// A held lock that conflicts with a lock on the node `node` taken with
    /// `options`.
    fn conflict(&self, node: &str, options: &LockOptions) -> Result<Option<Held>, Error> {
        if options.lock_parents {
            for ancestor in name::ancestor_nodes(node) {
                if let Some(State::Held(held)) = self.disk.state(ancestor)? {
                    if held.lock_children {
                        return Ok(Some(held));
                    }
                }
            }
        }
        if options.lock_children && !self.disk.is_leaf(node)? {
            let mut walk = Walk {
                started: monotonic_clock::now(),
                visited: 0,
                node,
            };
            return self.held_below(node, &mut walk);
        }
        Ok(None)
    }

    /// A lock taken with lock-parents on any node below `node`.
    fn held_below(&self, node: &str, walk: &mut Walk) -> Result<Option<Held>, Error> {
        for (child, _) in self.disk.children(node)? {
            walk.visited += 1;
            if walk.visited.is_multiple_of(WALK_CLOCK_EVERY)
                && monotonic_clock::now().saturating_sub(walk.started) > WALK_BUDGET_NS
            {
                return Err(errors::walk_too_long(walk.node));
            }
            if let Some(held) = held(self.disk.peek(&child)?) {
                if held.lock_parents {
                    return Ok(Some(held));
                }
            }
            if let Some(held) = self.held_below(&child, walk)? {
                return Ok(Some(held));
            }
        }
        Ok(None)
    }

    /// Releases a lock; see the WIT docs of `registry.unlock`.
    pub fn unlock(&self, resource: &str, key: &UnlockKey) -> Result<Holder, Error> {
        let name = Name::parse(resource)?;
        match key {
            UnlockKey::Client(client) => name::check_client(client)?,
            UnlockKey::Token(token) if !token::is_well_formed(token) => {
                return Err(errors::invalid("token", token, "not a hasp unlock token"))
            }
            UnlockKey::Token(_) => {}
        }
        let node = name.node_path();
        // The lock this registry granted, if the key fits it: renaming from
        // it checks it, so it saves a read.
        let mut known = self.disk.hint(&node).filter(|seen| match &seen.state {
            State::Held(held) => fits(held, key),
            State::Free(_) => false,
        });
        for _ in 0..RETRIES {
            let seen = match known.take() {
                Some(seen) => seen,
                None => match self.disk.read(&node)? {
                    Some(seen) => seen,
                    None => return Err(errors::not_locked()),
                },
            };
            let State::Held(held) = &seen.state else {
                return Err(errors::not_locked());
            };
            let client = held.client.as_deref();
            match key {
                UnlockKey::Client(c) if client != Some(c.as_str()) => {
                    return Err(errors::not_owner(client, c))
                }
                UnlockKey::Token(t) if *t != held.token => return Err(errors::wrong_token(client)),
                _ => {}
            }
            if self
                .disk
                .change(&node, &seen.name, &record::free_name(held.fencing))?
            {
                return Ok(held.holder(name.as_str()));
            }
        }
        Err(errors::busy(name.as_str()))
    }

    /// The lock on exactly `resource`; see `registry.status`.
    pub fn status(&self, resource: &str) -> Result<Option<Holder>, Error> {
        let name = Name::parse(resource)?;
        match self.disk.state(&name.node_path())? {
            Some(State::Held(held)) => Ok(Some(held.holder(name.as_str()))),
            _ => Ok(None),
        }
    }

    /// Every lock at or below `prefix`; see `registry.list`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Holder>, Error> {
        let mut holders = Vec::new();
        if prefix.trim_matches('/').is_empty() {
            for (child, segment) in self.disk.children(crate::disk::NODES)? {
                self.collect(&child, &segment, &mut holders)?;
            }
        } else {
            let name = Name::parse(prefix)?;
            self.collect(&name.node_path(), name.as_str(), &mut holders)?;
        }
        holders.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(holders)
    }

    /// The locks on `node` (resource `resource`) and below it.
    fn collect(&self, node: &str, resource: &str, out: &mut Vec<Holder>) -> Result<(), Error> {
        if let Some(held) = held(self.disk.peek(node)?) {
            out.push(held.holder(resource));
        }
        for (child, segment) in self.disk.children(node)? {
            self.collect(&child, &format!("{resource}/{segment}"), out)?;
        }
        Ok(())
    }
}

/// The walk below a lock-children attempt on `node`.
struct Walk<'a> {
    started: u64,
    visited: usize,
    node: &'a str,
}

/// The lock a read found, if the node is held.
fn held(seen: Option<Seen>) -> Option<Held> {
    match seen?.state {
        State::Held(held) => Some(held),
        State::Free(_) => None,
    }
}

/// Whether `key` may release `held`.
fn fits(held: &Held, key: &UnlockKey) -> bool {
    match key {
        UnlockKey::Client(client) => held.client.as_deref() == Some(client.as_str()),
        UnlockKey::Token(token) => *token == held.token,
    }
}

fn already_locked(held: &Held) -> Error {
    errors::already_locked(held.client.as_deref())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
