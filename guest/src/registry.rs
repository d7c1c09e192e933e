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

#[cfg(not(feature = "store"))]
use crate::disk::{Disk as Store, Flow, Snapshot};
use crate::errors;
use crate::hasp::lock::types::{Error, Grant, Holder, LockOptions, UnlockKey};
#[cfg(feature = "store")]
use crate::kv::{Flow, Kv as Store, Snapshot};
use crate::name::{self, Name};
use crate::record::{self, Held, Lease, Seen, State};
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
/// How long past its end a lease still counts as live. On disk, none:
/// every process on one lock directory reads one clock. On a shared store,
/// hosts judge leases by their own clocks, so a lease ends for everybody
/// only once every clock that is at most this far behind says it has
/// (docs/FORMAT.md, "Leases on a store"): hosts must agree to within it.
const SKEW_MS: u64 = if cfg!(feature = "store") { 500 } else { 0 };
/// The walk looks at the clock once per this many nodes.
const WALK_CLOCK_EVERY: usize = 64;

/// A registry open on one lock directory, or (feature `store`) on a
/// shared store: the same rules on either.
pub struct Registry {
    disk: Store,
}

impl Registry {
    /// Opens the registry in the preopened directory `dir` (with feature
    /// `store`: under the key prefix `dir` in the host's store).
    pub fn open(dir: &str) -> Result<Registry, Error> {
        Ok(Registry {
            disk: Store::open(dir)?,
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
        let clock = Now::default();
        let now = clock.get();
        let lease = match options.ttl_ms {
            Some(ttl) => Some(lease_from(ttl, now, options.client.as_deref())?),
            None => None,
        };
        if let Some(id) = &options.request_id {
            check_request_id(id)?;
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
            // (1) Held: refuse without writing anything, unless it is this
            // request's own grant, asked for again. A lease that ran out
            // counts as free, and is taken over from its held state.
            let (last, lost) = match seen.state {
                State::Held(held) if clock.live(&held) => {
                    return match &options.request_id {
                        Some(id)
                            if held.token
                                == token::for_request(
                                    id,
                                    options.client.as_deref(),
                                    &node,
                                    held.fencing,
                                ) =>
                        {
                            Ok(Grant {
                                holder: held.holder(name.as_str()),
                                token: held.token,
                            })
                        }
                        _ => Err(self.refuse(&held)),
                    };
                }
                State::Held(expired) => (expired.fencing, Some(expired)),
                State::Free(last) => (last, None),
            };
            let Some(fencing) = last.checked_add(1) else {
                let path = self.disk.state_path(&node, &seen.name);
                return Err(errors::corrupt(&path, "no fencing number follows it"));
            };
            let token = match &options.request_id {
                Some(id) => token::for_request(id, options.client.as_deref(), &node, fencing),
                None => token::uuid_v4(),
            };
            let grant = Grant {
                holder: Holder {
                    resource: name.as_str().to_string(),
                    client: options.client.clone(),
                    fencing,
                    since_ms: now,
                    lock_parents: options.lock_parents,
                    lock_children: options.lock_children,
                    expires_ms: lease.map(|l| l.expires_ms),
                    ttl_ms: lease.map(|l| l.ttl_ms),
                },
                token,
            };
            // (2) Commit: only one rename from this state can succeed.
            let held = record::held_name(&grant);
            let Some(snapshot) = self.disk.commit(
                &node,
                &seen.name,
                &held,
                options.lock_parents,
                options.lock_children,
            )?
            else {
                continue;
            };
            if let Some(expired) = &lost {
                self.disk
                    .record_lost(&node, expired, options.client.as_deref());
            }
            // (3) Check the related locks now that this one is visible.
            let refusal = match self.conflict(&node, options, &clock, &snapshot) {
                Ok(None) => return Ok(grant),
                Ok(Some(other)) => self.refuse(&other),
                Err(err) => err,
            };
            self.withdraw(&node, &held, fencing)?;
            return Err(refusal);
        }
        Err(errors::busy(name.as_str()))
    }

    /// The refusal of a lock because of `held`. When it has a lease, the
    /// store's host learns when it ends, for a waiting lock.
    fn refuse(&self, held: &Held) -> Error {
        if let Some(lease) = held.lease {
            self.disk
                .changes_at(lease.expires_ms.saturating_add(SKEW_MS));
        }
        already_locked(held)
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
    /// `options`, as found after the commit that made `snapshot`.
    fn conflict(
        &self,
        node: &str,
        options: &LockOptions,
        now: &Now,
        snapshot: &Snapshot,
    ) -> Result<Option<Held>, Error> {
        if options.lock_parents {
            for ancestor in name::ancestor_nodes(node) {
                if let Some(State::Held(held)) = self.disk.related(snapshot, ancestor)? {
                    if held.lock_children && now.live(&held) {
                        return Ok(Some(held));
                    }
                }
            }
        }
        if !options.lock_children || self.disk.is_leaf(node)? {
            return Ok(None);
        }
        // A lock taken with lock-parents on any node below.
        let started = monotonic_clock::now();
        let mut visited = 0usize;
        let mut found = None;
        let _ = self.disk.below(node, snapshot, &mut |_, seen| {
            visited += 1;
            if visited.is_multiple_of(WALK_CLOCK_EVERY)
                && monotonic_clock::now().saturating_sub(started) > WALK_BUDGET_NS
            {
                return Err(errors::walk_too_long(node));
            }
            match held(seen, now) {
                Some(held) if held.lock_parents => {
                    found = Some(held);
                    Ok(Flow::Break(()))
                }
                _ => Ok(Flow::Continue(())),
            }
        })?;
        Ok(found)
    }

    /// Releases a lock; see the WIT docs of `registry.unlock`.
    pub fn unlock(&self, resource: &str, key: &UnlockKey) -> Result<Holder, Error> {
        let name = Name::parse(resource)?;
        check_key(key)?;
        let node = name.node_path();
        let held = self.owned(&name, &node, key, &Now::default(), |from, held| {
            let free = record::free_name(held.fencing);
            Ok(self.disk.change(&node, from, &free)?.then_some(held.lease))
        })?;
        Ok(held.holder(name.as_str()))
    }

    /// Extends a lease; see the WIT docs of `registry.renew`.
    pub fn renew(
        &self,
        resource: &str,
        key: &UnlockKey,
        ttl_ms: Option<u64>,
    ) -> Result<Holder, Error> {
        let name = Name::parse(resource)?;
        check_key(key)?;
        let clock = Now::default();
        let now = clock.get();
        if let Some(ttl) = ttl_ms {
            lease_from(ttl, now, None)?;
        }
        let node = name.node_path();
        let held = self.owned(&name, &node, key, &clock, |from, held| {
            let ttl = ttl_ms
                .or(held.lease.map(|l| l.ttl_ms))
                .ok_or_else(|| errors::no_lease(name.as_str()))?;
            let lease = lease_from(ttl, now, held.client.as_deref())?;
            let renewed = record::renewed_name(held, lease);
            if !self.disk.change(&node, from, &renewed)? {
                return Ok(None);
            }
            // Judged live at `now`, but the lease may have run out before
            // the rename landed, and a related lock checked in between may
            // have found it expired (parents and children do not rename
            // this node). Past the old end, undo it: the lease was lost.
            if let Some(old) = held.lease {
                if now_ms() >= old.expires_ms.saturating_add(SKEW_MS) {
                    let _ = self.disk.change(&node, &renewed, from);
                    return Err(errors::lease_expired(
                        name.as_str(),
                        held.client.as_deref(),
                        held.fencing,
                    ));
                }
            }
            Ok(Some(Some(lease)))
        })?;
        Ok(held.holder(name.as_str()))
    }

    /// Finds the live lock on `node` that `key` owns and hands its state's
    /// name and the lock to `change`, which renames the state and returns
    /// the lock's lease as it now is (`None`: the state moved meanwhile;
    /// read again); returns the lock with that lease. Refuses as
    /// `registry.unlock` documents: not locked, not the owner, or the key's
    /// lease ran out.
    fn owned(
        &self,
        name: &Name,
        node: &str,
        key: &UnlockKey,
        now: &Now,
        change: impl Fn(&str, &Held) -> Result<Option<Option<Lease>>, Error>,
    ) -> Result<Held, Error> {
        // The lock this registry granted or renewed, if the key fits it and
        // its lease (as known here) has not run out: renaming from it checks
        // it, so it saves a read. Every refusal is judged on a fresh read.
        let mut known = self.disk.hint(node).filter(|seen| match &seen.state {
            State::Held(held) => fits(held, key) && now.live(held),
            State::Free(_) => false,
        });
        for _ in 0..RETRIES {
            let seen = match known.take() {
                Some(seen) => seen,
                None => match self.disk.read(node)? {
                    Some(seen) => seen,
                    None => return Err(errors::not_locked()),
                },
            };
            let Seen { name: from, state } = seen;
            let mut held = match state {
                State::Free(last) => return Err(self.gone(name, node, key, last)),
                State::Held(held) => held,
            };
            if !fits(&held, key) {
                if !now.live(&held) {
                    return Err(self.gone(name, node, key, held.fencing));
                }
                if let Some(lost) = self.lost_by(name, node, key, held.fencing) {
                    return Err(lost);
                }
                let client = held.client.as_deref();
                return Err(match key {
                    UnlockKey::Client(c) => errors::not_owner(client, c),
                    UnlockKey::Token(_) => errors::wrong_token(client),
                });
            }
            if !now.live(&held) {
                return Err(errors::lease_expired(
                    name.as_str(),
                    held.client.as_deref(),
                    held.fencing,
                ));
            }
            if let Some(lease) = change(&from, &held)? {
                held.lease = lease;
                return Ok(held);
            }
        }
        Err(errors::busy(name.as_str()))
    }

    /// The refusal for `key` on a node that holds no live lock, the last
    /// fencing number on it being `last`: `lease-expired` when the node
    /// records that the key's lease ran out and was taken over, else
    /// `not-locked`.
    fn gone(&self, name: &Name, node: &str, key: &UnlockKey, last: u64) -> Error {
        self.lost_by(name, node, key, last)
            .unwrap_or_else(errors::not_locked)
    }

    /// `lease-expired` when the node records that the lease of `key`'s lock
    /// ran out and another grant took it over: for a token, any record of
    /// it; for a client id, the record of the lock the grant numbered
    /// `last` took over (an older one may have been followed by a grant of
    /// the client's own).
    fn lost_by(&self, name: &Name, node: &str, key: &UnlockKey, last: u64) -> Option<Error> {
        let lost = self.disk.lost(node).ok()?;
        let found = lost.into_iter().find(|l| match key {
            UnlockKey::Token(token) => l.token == *token,
            // The grant that took the lease over was another client's: one
            // of the same client's own was the client's to release.
            UnlockKey::Client(client) => {
                !l.same
                    && l.client.as_deref() == Some(client.as_str())
                    && l.fencing.checked_add(1) == Some(last)
            }
        })?;
        Some(errors::lease_expired(
            name.as_str(),
            found.client.as_deref(),
            found.fencing,
        ))
    }

    /// Breaks the lock on `resource`; see `registry.force-unlock`.
    pub fn force_unlock(&self, resource: &str) -> Result<Holder, Error> {
        let name = Name::parse(resource)?;
        let node = name.node_path();
        let now = Now::default();
        for _ in 0..RETRIES {
            let Some(seen) = self.disk.read(&node)? else {
                return Err(errors::not_locked());
            };
            let held = match seen.state {
                State::Held(held) if now.live(&held) => held,
                State::Held(_) | State::Free(_) => return Err(errors::not_locked()),
            };
            let free = record::free_name(held.fencing);
            if self.disk.change(&node, &seen.name, &free)? {
                return Ok(held.holder(name.as_str()));
            }
        }
        Err(errors::busy(name.as_str()))
    }

    /// The lock on exactly `resource`; see `registry.status`.
    pub fn status(&self, resource: &str) -> Result<Option<Holder>, Error> {
        let name = Name::parse(resource)?;
        match self.disk.state(&name.node_path())? {
            Some(State::Held(held)) if Now::default().live(&held) => {
                Ok(Some(held.holder(name.as_str())))
            }
            _ => Ok(None),
        }
    }

    /// Every lock at or below `prefix`; see `registry.list`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Holder>, Error> {
        let mut holders = Vec::new();
        let now = Now::default();
        let top = if prefix.trim_matches('/').is_empty() {
            name::NODES.to_string()
        } else {
            let name = Name::parse(prefix)?;
            let node = name.node_path();
            if let Some(held) = held(self.disk.read(&node)?, &now) {
                holders.push(held.holder(name.as_str()));
            }
            node
        };
        let _ = self
            .disk
            .below(&top, &Snapshot::none(), &mut |node, seen| {
                if let (Some(held), Some(resource)) = (held(seen, &now), name::resource_of(node)) {
                    holders.push(held.holder(&resource));
                }
                Ok(Flow::Continue(()))
            })?;
        holders.sort_by(|a, b| a.resource.cmp(&b.resource));
        Ok(holders)
    }
}

/// The lock a read found, if the node is held at `now` (a lease that ran
/// out is not).
fn held(seen: Option<Seen>, now: &Now) -> Option<Held> {
    match seen?.state {
        State::Held(held) if now.live(&held) => Some(held),
        State::Held(_) | State::Free(_) => None,
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

/// Checks an unlock key's shape (a client id's, a token's).
fn check_key(key: &UnlockKey) -> Result<(), Error> {
    match key {
        UnlockKey::Client(client) => name::check_client(client),
        UnlockKey::Token(token) if !token::is_well_formed(token) => {
            Err(errors::invalid("token", token, "not a hasp unlock token"))
        }
        UnlockKey::Token(_) => Ok(()),
    }
}

/// The lease of `ttl_ms` milliseconds from `now`, for a lock owned by
/// `client`: refused when the length is out of range, or the client id too
/// long for a held name with a lease.
fn lease_from(ttl_ms: u64, now: u64, client: Option<&str>) -> Result<Lease, Error> {
    if ttl_ms == 0 || ttl_ms > record::MAX_TTL_MS {
        return Err(errors::invalid(
            "TTL (ms)",
            &ttl_ms.to_string(),
            "a lease lasts from 1 ms to 30 days",
        ));
    }
    let expires_ms = now + ttl_ms;
    if expires_ms >= record::MAX_TIME_MS {
        return Err(errors::invalid(
            "TTL (ms)",
            &ttl_ms.to_string(),
            "the clock reads past the year 2286",
        ));
    }
    if let Some(client) = client {
        if record::encoded_client_len(client) > record::MAX_LEASED_CLIENT_ON_DISK {
            return Err(errors::invalid(
                "client id",
                client,
                &format!(
                    "a lock with a lease takes client ids of at most {} bytes on disk",
                    record::MAX_LEASED_CLIENT_ON_DISK
                ),
            ));
        }
    }
    Ok(Lease { expires_ms, ttl_ms })
}

/// A request id: 1 to 256 bytes, no control characters.
fn check_request_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(errors::invalid(
            "request id",
            id,
            "it must be 1 to 256 bytes without control characters",
        ));
    }
    Ok(())
}

/// The wall clock for one call, read once, and only when something needs
/// it (a lease to judge, a grant to date): an unlock of a lock without a
/// lease never reads it.
#[derive(Default)]
struct Now(std::cell::Cell<Option<u64>>);

impl Now {
    /// Milliseconds since the Unix epoch, as first read in this call.
    fn get(&self) -> u64 {
        match self.0.get() {
            Some(ms) => ms,
            None => {
                let ms = now_ms();
                self.0.set(Some(ms));
                ms
            }
        }
    }

    /// Whether `held` still counts: no lease, or one not run out (by
    /// [`SKEW_MS`] past its end).
    fn live(&self, held: &Held) -> bool {
        held.lease
            .is_none_or(|lease| self.get() < lease.expires_ms.saturating_add(SKEW_MS))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
