//! The lock rules: who may lock what, who may unlock, hierarchy, fencing.
//!
//! Hierarchy: two locks on the same resource always conflict. A lock on an
//! ancestor A and one on a descendant D conflict only when A was taken with
//! lock-children *and* D with lock-parents (so "don't lock parents" on D means
//! D never blocks, nor is blocked by, A — as in Locker's README).
//!
//! A lock attempt runs, in order: (1) a pre-check that changes no lock, (2) staging its
//! record and linking it as a marker into every ancestor when it locks
//! parents, (3) the commit (rename into the slot), (4) a re-check of the
//! related resources, withdrawing on a conflict, and (5) the claim of its
//! fencing number, which acknowledges it. Because every attempt commits
//! before it re-checks, of two racing related attempts at least one sees the
//! other: at most one is granted. docs/FORMAT.md has the full argument.

use crate::disk::{Disk, Mark, Slot};
use crate::errors;
use crate::hasp::lock::types::{Error, Grant, Holder, LockOptions, UnlockKey};
use crate::name::{self, Name};
use crate::token;

/// How often an attempt (or a look at a slot) starts over after losing a
/// race before it reports `busy`. Each restart means another grant completed.
const RETRIES: usize = 64;

/// A record still unacknowledged after this long belongs to an attempt that
/// died (or stalls): the next reader consumes its fencing number, so it can
/// never be acknowledged, and removes it.
const PENDING_LIMIT_MS: u64 = 5_000;

/// A registry open on one lock directory.
pub struct Registry {
    disk: Disk,
}

/// How one lock attempt ended.
enum Attempt {
    Granted(Grant),
    Refused(Error),
    Retry,
}

/// How a committed attempt settled.
enum Settled {
    Granted,
    Conflict(Holder),
    FenceMoved,
}

/// What a record in a slot is worth, judged against the node's mark.
enum Standing {
    /// Its fencing claim succeeded: a granted lock.
    Granted,
    /// Committed, claim not made yet: counts as held while it is young.
    Pending,
    /// Its number went to someone else: it can never be granted.
    Dead,
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
        self.disk.begin_call();
        let name = Name::parse(resource)?;
        if let Some(client) = &options.client {
            name::check_client(client)?;
        }
        let ancestors = ancestor_nodes(&name);
        for _ in 0..RETRIES {
            // Held open after the first call; made again if found gone.
            let node = self.disk.ensure_node(&name)?;
            match self.attempt(&name, &node, &ancestors, options)? {
                Attempt::Granted(grant) => return Ok(grant),
                Attempt::Refused(err) => return Err(err),
                Attempt::Retry => {}
            }
        }
        Err(errors::busy(name.as_str()))
    }

    fn attempt(
        &self,
        name: &Name,
        node: &str,
        ancestors: &[String],
        options: &LockOptions,
    ) -> Result<Attempt, Error> {
        // (1) Refuse without writing anything when the answer is already known.
        if let Some((held, _)) = self.holder_of(node)? {
            return Ok(refused(&held.grant.holder));
        }
        if let Some(holder) = self.conflict(node, ancestors, options)? {
            return Ok(refused(&holder));
        }
        let mark = match self.disk.fence_mark(node)? {
            Some(mark) => mark,
            None => {
                self.disk.fence_init(node)?;
                return Ok(Attempt::Retry);
            }
        };
        let grant = Grant {
            holder: Holder {
                resource: name.as_str().to_string(),
                client: options.client.clone(),
                fencing: mark.number + 1,
                since_ms: now_ms(),
                lock_parents: options.lock_parents,
                lock_children: options.lock_children,
            },
            token: token::uuid_v4(),
        };
        // (2) Stage the record; make it findable from every ancestor it may block.
        let staged = self.disk.stage(&grant)?;
        if options.lock_parents {
            for (i, ancestor) in ancestors.iter().enumerate() {
                if let Err(err) = self.disk.link_marker(ancestor, &staged) {
                    self.unmark(&ancestors[..i], &grant.token);
                    self.disk.discard(&staged);
                    return Err(err);
                }
            }
        }
        // (3) Commit: exclusive on this resource.
        let committed = self.disk.commit(&staged, node);
        if !matches!(committed, Ok(true)) {
            self.unmark(ancestors, &grant.token);
            self.disk.discard(&staged);
            committed?;
            return Ok(match self.holder_of(node)? {
                Some((held, _)) => refused(&held.grant.holder),
                None => Attempt::Retry,
            });
        }
        // (4), (5): on any error from here on, the attempt is withdrawn.
        let settled = self.settle(node, ancestors, options, &mark, &grant);
        if !matches!(settled, Ok(Settled::Granted)) {
            self.withdraw(node, ancestors, &grant.token)?;
        }
        Ok(match settled? {
            Settled::Granted => Attempt::Granted(grant),
            Settled::Conflict(holder) => refused(&holder),
            Settled::FenceMoved => Attempt::Retry,
        })
    }

    /// Steps (4) and (5) of a committed attempt.
    fn settle(
        &self,
        node: &str,
        ancestors: &[String],
        options: &LockOptions,
        mark: &Mark,
        grant: &Grant,
    ) -> Result<Settled, Error> {
        // (4) Re-check related resources now that this attempt is visible.
        if let Some(holder) = self.conflict(node, ancestors, options)? {
            return Ok(Settled::Conflict(holder));
        }
        // (5) Claim the fencing number; lose it and the attempt starts over.
        let claim = Mark {
            number: grant.holder.fencing,
            token: Some(grant.token.clone()),
        };
        if !self.disk.fence_advance(node, mark, &claim)? {
            return Ok(Settled::FenceMoved);
        }
        Ok(Settled::Granted)
    }

    /// A held (or being granted) lock that conflicts with locking `name`.
    fn conflict(
        &self,
        node: &str,
        ancestors: &[String],
        options: &LockOptions,
    ) -> Result<Option<Holder>, Error> {
        if options.lock_parents {
            for ancestor in ancestors {
                if let Some((held, _)) = self.holder_of(ancestor)? {
                    if held.grant.holder.lock_children {
                        return Ok(Some(held.grant.holder));
                    }
                }
            }
        }
        if options.lock_children {
            // A marker in this node's `.ix` names a descendant by where it
            // lives; its name is not compared as a string, so a filesystem
            // that folds case or normalises Unicode still finds it.
            for marked in self.disk.marked(node)? {
                let Ok(descendant) = Name::parse(&marked) else {
                    continue;
                };
                if let Some((held, _)) = self.holder_of(&descendant.node_path())? {
                    if held.grant.holder.lock_parents {
                        return Ok(Some(held.grant.holder));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The record holding `node`, and whether it is granted (`true`) or still
    /// being granted (`false`). Records that can no longer be granted are
    /// removed on the way.
    fn holder_of(&self, node: &str) -> Result<Option<(Slot, bool)>, Error> {
        for _ in 0..RETRIES {
            let Some(slot) = self.disk.read_slot(node)? else {
                return Ok(None);
            };
            // The common case, a granted record, takes one look at `.fence`.
            if self.disk.is_mark(node, &mark_of(&slot))? {
                return Ok(Some((slot, true)));
            }
            let mark = self.disk.fence_mark(node)?;
            match standing(&slot, mark.as_ref()) {
                Standing::Granted => return Ok(Some((slot, true))),
                Standing::Pending if age_ms(&slot) < PENDING_LIMIT_MS => {
                    return Ok(Some((slot, false)))
                }
                Standing::Pending => {
                    // Take its number first, so that it can never be granted.
                    let Some(mark) = mark else {
                        self.disk.fence_init(node)?;
                        continue;
                    };
                    let void = Mark {
                        number: slot.grant.holder.fencing,
                        token: Some(token::uuid_v4()),
                    };
                    if self.disk.fence_advance(node, &mark, &void)? {
                        self.clear(node, &slot)?;
                    }
                }
                Standing::Dead => self.clear(node, &slot)?,
            }
        }
        Err(errors::busy(node))
    }

    /// Removes a record that can never be granted, and its markers.
    fn clear(&self, node: &str, slot: &Slot) -> Result<(), Error> {
        self.disk.release(node, &slot.file)?;
        if slot.grant.holder.lock_parents {
            if let Ok(name) = Name::parse(&slot.grant.holder.resource) {
                self.unmark(&ancestor_nodes(&name), &slot.file);
            }
        }
        Ok(())
    }

    /// Takes back a committed attempt: its record, then its markers (a record
    /// that cannot be removed keeps its markers, so it stays visible).
    fn withdraw(&self, node: &str, ancestors: &[String], token: &str) -> Result<(), Error> {
        self.disk.release(node, token)?;
        self.unmark(ancestors, token);
        Ok(())
    }

    fn unmark(&self, ancestors: &[String], token: &str) {
        for ancestor in ancestors {
            self.disk.unmark(ancestor, token);
        }
    }

    /// Releases a lock; see the WIT docs of `registry.unlock`.
    pub fn unlock(&self, resource: &str, key: &UnlockKey) -> Result<Holder, Error> {
        self.disk.begin_call();
        let name = Name::parse(resource)?;
        match key {
            UnlockKey::Client(client) => name::check_client(client)?,
            UnlockKey::Token(token) if !token::is_well_formed(token) => {
                return Err(errors::invalid("token", token, "not a hasp unlock token"))
            }
            UnlockKey::Token(_) => {}
        }
        let node = name.node_path();
        // A token names the record's file: look there first.
        let direct = match key {
            UnlockKey::Token(token) => self
                .disk
                .slot_file(&node, token)?
                .filter(|slot| matches!(self.disk.is_mark(&node, &mark_of(slot)), Ok(true))),
            UnlockKey::Client(_) => None,
        };
        let found = match direct {
            Some(slot) => Some((slot, true)),
            None => self.holder_of(&node)?,
        };
        // A lock still being granted is not locked yet.
        let Some((held, true)) = found else {
            return Err(errors::not_locked());
        };
        let holder = &held.grant.holder;
        match key {
            UnlockKey::Client(client) if holder.client.as_deref() != Some(client) => {
                return Err(errors::not_owner(holder.client.as_deref(), client))
            }
            UnlockKey::Token(token) if *token != held.grant.token => {
                return Err(errors::wrong_token(holder.client.as_deref()))
            }
            _ => {}
        }
        if !self.disk.release(&node, &held.file)? {
            return Err(errors::not_locked());
        }
        if holder.lock_parents {
            self.unmark(&ancestor_nodes(&name), &held.file);
        }
        Ok(held.grant.holder)
    }

    /// The lock on exactly `resource`; see `registry.status`.
    pub fn status(&self, resource: &str) -> Result<Option<Holder>, Error> {
        self.disk.begin_call();
        let name = Name::parse(resource)?;
        self.granted(&name.node_path())
    }

    /// Every lock at or below `prefix`; see `registry.list`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Holder>, Error> {
        self.disk.begin_call();
        let root = if prefix.trim_matches('/').is_empty() {
            crate::disk::NODES.to_string()
        } else {
            Name::parse(prefix)?.node_path()
        };
        let mut nodes = Vec::new();
        self.disk.walk(&root, &mut nodes)?;
        let mut holders = Vec::new();
        for node in nodes {
            holders.extend(self.granted(&node)?);
        }
        holders.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(holders)
    }

    /// The granted lock on `node`, if any (attempts in flight are not shown).
    fn granted(&self, node: &str) -> Result<Option<Holder>, Error> {
        Ok(match self.holder_of(node)? {
            Some((held, true)) => Some(held.grant.holder),
            _ => None,
        })
    }
}

fn standing(slot: &Slot, mark: Option<&Mark>) -> Standing {
    let fencing = slot.grant.holder.fencing;
    match mark {
        Some(m) if m.number == fencing && m.token.as_deref() == Some(slot.file.as_str()) => {
            Standing::Granted
        }
        Some(m) if m.number >= fencing => Standing::Dead,
        _ => Standing::Pending,
    }
}

/// The mark under which the record in `slot` is granted.
fn mark_of(slot: &Slot) -> Mark {
    Mark {
        number: slot.grant.holder.fencing,
        token: Some(slot.file.clone()),
    }
}

fn refused(holder: &Holder) -> Attempt {
    Attempt::Refused(errors::already_locked(holder.client.as_deref()))
}

fn ancestor_nodes(name: &Name) -> Vec<String> {
    name.ancestors().map(|a| a.node_path()).collect()
}

fn age_ms(slot: &Slot) -> u64 {
    now_ms().saturating_sub(slot.grant.holder.since_ms)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
