//! The lock rules: who may lock what, who may unlock, hierarchy, fencing.
//!
//! Hierarchy: two locks on the same resource always conflict. A lock on an
//! ancestor A and one on a descendant D conflict only when A was taken with
//! lock-children *and* D with lock-parents (so "don't lock parents" on D means
//! D never blocks, nor is blocked by, A — as in Locker's README).
//!
//! A lock attempt runs, in order: (1) a read-only pre-check, (2) markers in
//! every ancestor when it locks parents, (3) the commit (rename into the slot),
//! (4) a re-check of the related resources, withdrawing on a conflict, and
//! (5) the claim of its fencing number. Because every attempt commits before
//! it re-checks, of two racing related attempts at least one sees the other:
//! at most one is granted. docs/FORMAT.md has the full argument.

use crate::disk::Disk;
use crate::errors;
use crate::hasp::lock::types::{Error, Grant, Holder, LockOptions, UnlockKey};
use crate::name::{self, Name};
use crate::token;

/// How often an attempt restarts after losing a fencing race before it
/// reports `busy`. Each restart means another grant completed meanwhile.
const RETRIES: usize = 64;

/// A registry open on one lock directory.
pub struct Registry {
    disk: Disk,
}

/// How a committed attempt settled.
enum Settled {
    Granted,
    Conflict(Holder),
    FenceMoved,
}

/// How one lock attempt ended.
enum Attempt {
    Granted(Grant),
    Refused(Error),
    Retry,
}

impl Registry {
    /// Opens the registry in the preopened directory `dir`.
    pub fn open(dir: &str) -> Result<Registry, Error> {
        Ok(Registry {
            disk: Disk::open(dir)?,
        })
    }

    /// Takes a lock; see the WIT docs of `registry.lock`.
    pub fn lock(&self, resource: &str, options: &LockOptions) -> Result<Grant, Error> {
        let name = Name::parse(resource)?;
        if let Some(client) = &options.client {
            name::check_client(client)?;
        }
        let node = self.disk.ensure_node(&name)?;
        let ancestors: Vec<String> = name.ancestors().map(|a| a.node_path()).collect();
        for _ in 0..RETRIES {
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
        if let Some(held) = self.disk.read_slot(node)? {
            return Ok(refused(&held.grant.holder));
        }
        if let Some(holder) = self.conflict(name, node, ancestors, options)? {
            return Ok(refused(&holder));
        }
        let fence = self.disk.fence_current(node)?;
        let grant = Grant {
            holder: Holder {
                resource: name.as_str().to_string(),
                client: options.client.clone(),
                fencing: fence + 1,
                since_ms: now_ms(),
                lock_parents: options.lock_parents,
                lock_children: options.lock_children,
            },
            token: token::uuid_v4(),
        };
        let staged = self.disk.stage(&grant)?;
        // (2) Make this attempt findable from every ancestor it may block.
        if options.lock_parents {
            for (i, ancestor) in ancestors.iter().enumerate() {
                if let Err(err) = self.disk.mark(ancestor, &staged) {
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
            return match self.disk.read_slot(node)? {
                Some(held) => Ok(refused(&held.grant.holder)),
                None => committed.map(|_| Attempt::Retry),
            };
        }
        // (4), (5): on any error from here on, the attempt is withdrawn.
        let settled = self.settle(name, node, ancestors, options, fence);
        if !matches!(settled, Ok(Settled::Granted)) {
            self.withdraw(node, ancestors, &grant);
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
        name: &Name,
        node: &str,
        ancestors: &[String],
        options: &LockOptions,
        fence: u64,
    ) -> Result<Settled, Error> {
        // (4) Re-check related resources now that this attempt is visible.
        if let Some(holder) = self.conflict(name, node, ancestors, options)? {
            return Ok(Settled::Conflict(holder));
        }
        // (5) Claim the fencing number; lose it and the attempt starts over.
        if !self.disk.fence_advance(node, fence, fence + 1)? {
            return Ok(Settled::FenceMoved);
        }
        if fence == 0 {
            self.disk.fence_prune(node, 1);
        }
        Ok(Settled::Granted)
    }

    /// A held lock that conflicts with locking `name` with `options`.
    fn conflict(
        &self,
        name: &Name,
        node: &str,
        ancestors: &[String],
        options: &LockOptions,
    ) -> Result<Option<Holder>, Error> {
        if options.lock_parents {
            for ancestor in ancestors {
                if let Some(held) = self.disk.read_slot(ancestor)? {
                    if held.grant.holder.lock_children {
                        return Ok(Some(held.grant.holder));
                    }
                }
            }
        }
        if options.lock_children {
            for marked in self.disk.marked(node)? {
                let Ok(descendant) = Name::parse(&marked) else {
                    continue;
                };
                if !is_below(&descendant, name) {
                    continue;
                }
                if let Some(held) = self.disk.read_slot(&descendant.node_path())? {
                    if held.grant.holder.lock_parents {
                        return Ok(Some(held.grant.holder));
                    }
                }
            }
        }
        Ok(None)
    }

    fn withdraw(&self, node: &str, ancestors: &[String], grant: &Grant) {
        let _ = self.disk.release(node, &grant.token);
        self.unmark(ancestors, &grant.token);
    }

    fn unmark(&self, ancestors: &[String], token: &str) {
        for ancestor in ancestors {
            self.disk.unmark(ancestor, token);
        }
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
        let Some(held) = self.disk.read_slot(&node)? else {
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
        // The high-water mark must cover this grant before its slot empties,
        // even if its locker died before claiming it.
        self.cover_fence(&node, holder.fencing, name.as_str())?;
        if !self.disk.release(&node, &held.file)? {
            return Err(errors::not_locked());
        }
        if holder.lock_parents {
            let ancestors: Vec<String> = name.ancestors().map(|a| a.node_path()).collect();
            self.unmark(&ancestors, &held.file);
        }
        Ok(held.grant.holder)
    }

    /// Raises the high-water mark of `node` to at least `fencing`.
    fn cover_fence(&self, node: &str, fencing: u64, resource: &str) -> Result<(), Error> {
        for _ in 0..RETRIES {
            let current = self.disk.fence_current(node)?;
            if current >= fencing || self.disk.fence_advance(node, current, fencing)? {
                return Ok(());
            }
        }
        Err(errors::busy(resource))
    }

    /// The lock on exactly `resource`; see `registry.status`.
    pub fn status(&self, resource: &str) -> Result<Option<Holder>, Error> {
        let name = Name::parse(resource)?;
        Ok(self
            .disk
            .read_slot(&name.node_path())?
            .map(|held| held.grant.holder))
    }

    /// Every lock at or below `prefix`; see `registry.list`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Holder>, Error> {
        let root = if prefix.trim_matches('/').is_empty() {
            crate::disk::NODES.to_string()
        } else {
            Name::parse(prefix)?.node_path()
        };
        let mut grants = Vec::new();
        self.disk.walk(&root, &mut grants)?;
        let mut holders: Vec<Holder> = grants.into_iter().map(|g| g.holder).collect();
        holders.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(holders)
    }
}

fn refused(holder: &Holder) -> Attempt {
    Attempt::Refused(errors::already_locked(holder.client.as_deref()))
}

/// Whether `descendant` lies strictly below `ancestor`.
fn is_below(descendant: &Name, ancestor: &Name) -> bool {
    descendant
        .as_str()
        .strip_prefix(ancestor.as_str())
        .is_some_and(|rest| rest.starts_with('/'))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
