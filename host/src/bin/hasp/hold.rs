//! Named locks that wait, and named locks held while a command runs:
//! `hasp lock RES --wait [DURATION]` and `hasp lock RES -- CMD [ARGS...]`
//! (what `flock -w`, `etcdctl lock NAME CMD` and `consul lock` do).
//!
//! On a lock directory a waiter polls the registry with exponential
//! backoff and jitter: a release or an expiry by any process, through any
//! door, is seen at the next attempt, and a waiter never keeps a core busy.
//! On etcd it watches what the refused attempt read instead (and wakes
//! when a lease in it ends). The command form
//! keeps its lease alive from a thread of its own, renewing at a third of
//! the TTL, and stops the command when the lock is lost.

use crate::child;
use hasp::{Error, Grant, LockOptions, Registry, UnlockKey};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The exit code of `hasp lock RES -- CMD` when the lock was lost while CMD
/// ran (a renewal or the release found it expired, broken or taken).
pub const LOST: i32 = 3;

/// The shortest lease the command form keeps alive: renewed every third of
/// it, a shorter one would be lost to any scheduling hiccup.
const SHORTEST_KEPT: Duration = Duration::from_millis(100);

/// The first pause between two attempts of a waiter.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
/// The longest pause between two attempts: the worst hand-off delay a
/// waiter adds. An attempt on a held lock costs tens of microseconds, so at
/// 100 to 200 attempts a second a waiter takes under 1 % of a core.
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// How long a lock call waits for a held resource.
#[derive(Clone, Copy, Debug)]
pub enum Patience {
    /// Fail at once.
    No,
    /// Keep trying for at most this long.
    For(Duration),
    /// Keep trying until granted.
    Forever,
}

/// Takes the lock on `resource`, waiting as `patience` allows while it is
/// held (or the attempt is busy). On timeout, the last refusal (naming the
/// holder). Returns the grant and when the attempt that won it began: its
/// lease runs out no sooner than that plus its TTL.
pub fn lock(
    registry: &mut Registry,
    resource: &str,
    options: &LockOptions,
    patience: Patience,
) -> Result<(Grant, Instant), Error> {
    let deadline = match patience {
        Patience::No => {
            let at = Instant::now();
            return registry.lock(resource, options).map(|g| (g, at));
        }
        // Too far to represent: for ever.
        Patience::For(limit) => Instant::now().checked_add(limit),
        Patience::Forever => None,
    };
    let mut backoff = Backoff::new();
    loop {
        let at = Instant::now();
        let refused = match registry.lock(resource, options) {
            Ok(grant) => return Ok((grant, at)),
            Err(err @ (Error::AlreadyLocked { .. } | Error::Busy { .. })) => err,
            Err(err) => return Err(err),
        };
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|left| left.is_zero()) {
            return Err(refused);
        }
        // On etcd, a watch on what the refusal read says when to look
        // again (one last attempt at the deadline itself); then a short
        // jittered pause, so that two related attempts woken by each
        // other's withdrawal do not retry in step.
        let pause = if registry.wait_for_change(deadline) {
            backoff.jitter()
        } else {
            backoff.next_pause()
        };
        std::thread::sleep(left.map_or(pause, |left| pause.min(left)));
    }
}

/// Exponential backoff from [`FIRST_PAUSE`] to [`MAX_PAUSE`], each pause
/// drawn between half and all of the current step, so that waiters that
/// started together do not poll together.
struct Backoff {
    step: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Backoff {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Backoff {
            step: FIRST_PAUSE,
            // Never 0 (xorshift would stay there).
            seed: (nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1,
        }
    }

    /// A random draw.
    fn draw(&mut self) -> u64 {
        // xorshift64: plenty for spreading waiters apart.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Up to [`FIRST_PAUSE`], at random: after a watch said the holder
    /// changed.
    fn jitter(&mut self) -> Duration {
        Duration::from_nanos(self.draw() % (FIRST_PAUSE.as_nanos() as u64 + 1))
    }

    fn next_pause(&mut self) -> Duration {
        let seed = self.draw();
        let step = self.step;
        self.step = (self.step * 2).min(MAX_PAUSE);
        let half = step / 2;
        let nanos = half.as_nanos() as u64;
        half + Duration::from_nanos(seed % (nanos + 1))
    }
}

/// What `hasp lock RES [OPTIONS] -- COMMAND` was asked to do.
pub struct Hold {
    pub resource: String,
    /// The lock options; their `ttl` is the lease kept alive.
    pub options: LockOptions,
    pub patience: Patience,
    /// How long a command told to stop (SIGTERM) has before SIGKILL.
    pub kill_after: Duration,
    pub command: Vec<String>,
}

/// Takes the lock, runs the command with `HASP_LOCK_RESOURCE`,
/// `HASP_LOCK_FENCING` and `HASP_LOCK_TOKEN` in its environment while
/// renewing the lease at a third of its TTL, then releases the lock.
/// Returns the command's exit code (126, 127, 128+N as `hasp run`), or
/// [`LOST`] when the lock was lost before the command finished. An error
/// only if the lock was never taken.
pub fn hold(mut registry: Registry, hold: Hold) -> Result<i32, Error> {
    let ttl = hold.options.ttl.unwrap_or(Duration::from_secs(30));
    // (0 is refused by the rules, with their message.)
    if !ttl.is_zero() && ttl < SHORTEST_KEPT {
        return Err(Error::InvalidInput {
            message: format!(
                "--ttl {} ms is too short a lease to keep alive while a command runs \
                 (renewals every third of it); give at least {} ms",
                ttl.as_millis(),
                SHORTEST_KEPT.as_millis()
            ),
        });
    }
    let options = LockOptions {
        ttl: Some(ttl),
        ..hold.options
    };
    let (grant, at) = lock(&mut registry, &hold.resource, &options, hold.patience)?;
    let mut lease = Lease {
        resource: grant.holder.resource.clone(),
        fencing: grant.holder.fencing,
        token: grant.token.clone(),
        ttl,
        expires: at + ttl,
    };
    let env = [
        ("HASP_LOCK_RESOURCE", lease.resource.clone()),
        ("HASP_LOCK_FENCING", lease.fencing.to_string()),
        ("HASP_LOCK_TOKEN", lease.token.clone()),
    ];
    let running = match child::spawn(&hold.command, &env, true) {
        Ok(running) => running,
        Err(code) => {
            return Ok(match lease.release(&mut registry) {
                Released::Lost => LOST,
                Released::Done => code,
            })
        }
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let kill_after = hold.kill_after;
    let renewer = std::thread::spawn(move || {
        let lost = lease.keep(&mut registry, &stopped, kill_after);
        (registry, lease, lost)
    });
    let code = running.wait();
    // The renewer may have ended already (lost): then nobody listens.
    let _ = stop.send(());
    let (mut registry, lease, lost) = match renewer.join() {
        Ok(done) => done,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    if lost {
        return Ok(LOST);
    }
    Ok(match lease.release(&mut registry) {
        Released::Lost => LOST,
        Released::Done => code,
    })
}

/// The lock a command runs under.
struct Lease {
    resource: String,
    fencing: u64,
    token: String,
    ttl: Duration,
    /// No sooner than this, the lease runs out unless renewed.
    expires: Instant,
}

enum Released {
    Done,
    /// It was not ours any more.
    Lost,
}

impl Lease {
    fn key(&self) -> UnlockKey {
        UnlockKey::Token(self.token.clone())
    }

    /// Renews the lease at a third of its TTL until `stopped` says the
    /// command exited; whether the lock was lost meanwhile (then the
    /// command was told to stop). A renewal that fails for another reason
    /// than a lost lock (busy, storage, a component trap) is retried at the
    /// next tick, sooner as the lease nears its end; a lease that runs out
    /// with no renewal succeeding is lost.
    fn keep(
        &mut self,
        registry: &mut Registry,
        stopped: &Receiver<()>,
        kill_after: Duration,
    ) -> bool {
        let tick = self.ttl / 3;
        let mut next = self.expires - self.ttl + tick;
        loop {
            match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return false,
            }
            let at = Instant::now();
            match registry.renew(&self.resource, &self.key(), Some(self.ttl)) {
                Ok(_) => {
                    self.expires = at + self.ttl;
                    next = at + tick;
                }
                Err(err) if is_lost(&err) => {
                    self.lose(&err.to_string(), stopped, kill_after);
                    return true;
                }
                Err(err) => {
                    let now = Instant::now();
                    if now >= self.expires {
                        let why = format!("its lease ran out while renewals failed ({err})");
                        self.lose(&why, stopped, kill_after);
                        return true;
                    }
                    eprintln!(
                        "hasp: renewing the lock on '{}' (fencing {}) failed, will retry: {err}",
                        self.resource, self.fencing
                    );
                    let left = self.expires - now;
                    next = now + tick.min(left / 2).max(Duration::from_millis(1));
                }
            }
        }
    }

    /// Says the lock is lost, sends the command SIGTERM, and SIGKILL if it
    /// has not exited `kill_after` later.
    fn lose(&self, why: &str, stopped: &Receiver<()>, kill_after: Duration) {
        eprintln!(
            "hasp: lost the lock on '{}' (fencing {}): {why}; stopping the command (SIGTERM)",
            self.resource, self.fencing
        );
        child::signal(libc::SIGTERM);
        if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(kill_after) {
            child::signal(libc::SIGKILL);
        }
    }

    /// Unlocks with the token once the command has exited. A busy attempt
    /// is retried a few times; any other failure is said on stderr and left
    /// to the lease, which ends the lock within its TTL.
    fn release(&self, registry: &mut Registry) -> Released {
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match registry.unlock(&self.resource, &self.key()) {
                Ok(_) => return Released::Done,
                Err(err) if is_lost(&err) => {
                    eprintln!(
                        "hasp: lost the lock on '{}' (fencing {}) before the command finished: {err}",
                        self.resource, self.fencing
                    );
                    return Released::Lost;
                }
                Err(Error::Busy { .. }) if attempts < 10 => {
                    std::thread::sleep(backoff.next_pause())
                }
                Err(err) => {
                    eprintln!(
                        "hasp: could not release the lock on '{}' (fencing {}): {err}; \
                         its lease ends it within {} ms",
                        self.resource,
                        self.fencing,
                        self.ttl.as_millis()
                    );
                    return Released::Done;
                }
            }
        }
    }
}

/// Whether a renewal or release failed because the lock is no longer ours.
fn is_lost(err: &Error) -> bool {
    matches!(
        err,
        Error::LeaseExpired { .. } | Error::NotLocked { .. } | Error::NotOwner { .. }
    )
}
