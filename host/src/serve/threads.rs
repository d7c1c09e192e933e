//! The network threads: one per CPU, each running a current-thread Tokio
//! runtime that owns the connections handed to it, as they are accepted,
//! from their first byte to their close. A connection's socket, timers and
//! guest calls all stay on its thread: no task moves between threads, no
//! wake-up crosses one, and each thread serves its ready connections in
//! turn. Against one work-stealing runtime for all, that took 16 loopback
//! connections from about 20 000 to 22 500 lock+unlock cycles/s on two
//! cores, at some 5 µs less CPU per cycle.
//!
//! What it gives up is stealing: the connections of one thread share it,
//! even while another thread has nothing to do. So a new connection goes to
//! the thread that worked least since the last one was placed (its CPU
//! time, to the millisecond), then to the one with the fewest connections,
//! then to any of those at random; and the one call that can run long (a
//! list, which reads every state under its prefix) runs on a blocking
//! thread of the server's own runtime instead (`Locks::list`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// One network thread.
struct Thread {
    handle: Handle,
    /// Its CPU-time clock (`pthread_getcpuclockid`), if it has one.
    clock: Option<libc::clockid_t>,
    /// Its live connections.
    live: Arc<AtomicUsize>,
}

/// The running threads; stopped (after their connections) by [`Threads::stop`].
pub(super) struct Threads {
    threads: Vec<Thread>,
    stops: Vec<oneshot::Sender<()>>,
    joins: Vec<std::thread::JoinHandle<()>>,
    /// Each thread's CPU time when the last connection was placed.
    last: Mutex<Vec<Duration>>,
    /// A xorshift state, for ties.
    dice: AtomicU64,
}

/// A connection's place on its thread: counted there while it lives.
pub(super) struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Threads {
    /// Starts `n` threads (at least one).
    pub(super) fn start(n: usize) -> std::io::Result<Threads> {
        let mut threads = Threads {
            threads: Vec::new(),
            stops: Vec::new(),
            joins: Vec::new(),
            last: Mutex::new(Vec::new()),
            dice: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
        };
        for _ in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let (said, clock) = std::sync::mpsc::channel();
            let join = std::thread::Builder::new()
                .name("hasp-io".into())
                .spawn(move || {
                    let _ = said.send(own_clock());
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            threads.threads.push(Thread {
                handle,
                clock: clock.recv().ok().flatten(),
                live: Arc::new(AtomicUsize::new(0)),
            });
            threads.stops.push(stop);
            threads.joins.push(join);
        }
        let now = threads.cpu_times();
        *threads.last.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(threads)
    }

    /// The runtime the next connection goes to, and its seat there (to be
    /// kept as long as the connection lives).
    pub(super) fn place(&self) -> (&Handle, Seat) {
        let now = self.cpu_times();
        let worked: Vec<u128> = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let worked = now
                .iter()
                .zip(last.iter())
                .map(|(now, then)| now.saturating_sub(*then).as_millis())
                .collect();
            *last = now;
            worked
        };
        let roll = self.roll();
        let n = self.threads.len();
        let at = (0..n)
            .min_by_key(|&i| {
                let live = self.threads[i].live.load(Ordering::Relaxed);
                (worked[i], live, (i + roll) % n)
            })
            .unwrap_or(0);
        let thread = &self.threads[at];
        thread.live.fetch_add(1, Ordering::Relaxed);
        (&thread.handle, Seat(thread.live.clone()))
    }

    /// Each thread's CPU time so far (zero where unknown).
    fn cpu_times(&self) -> Vec<Duration> {
        self.threads
            .iter()
            .map(|t| t.clock.and_then(cpu_time).unwrap_or_default())
            .collect()
    }

    fn roll(&self) -> usize {
        let mut x = self.dice.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice.store(x, Ordering::Relaxed);
        x as usize
    }

    /// Ends the threads, once their connections are done.
    pub(super) async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        let joins = self.joins;
        let _ = tokio::task::spawn_blocking(move || {
            for join in joins {
                let _ = join.join();
            }
        })
        .await;
    }
}

/// The calling thread's CPU-time clock.
fn own_clock() -> Option<libc::clockid_t> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_getcpuclockid writes the clock id it is given.
    (unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0).then_some(clock)
}

/// The CPU time `clock` reads (a thread's: see [`own_clock`]).
fn cpu_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; a clock of a
    // thread that has ended is an error, not undefined behaviour.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Busy for `cpu` of the calling thread's own CPU time.
    fn burn(cpu: Duration) {
        let clock = own_clock().expect("a thread CPU clock");
        let start = cpu_time(clock).expect("CPU time");
        while cpu_time(clock).expect("CPU time") < start + cpu {
            std::hint::black_box(0u64);
        }
    }

    fn index(threads: &Threads, handle: &Handle) -> usize {
        threads
            .threads
            .iter()
            .position(|t| t.handle.id() == handle.id())
            .expect("one of the threads")
    }

    #[test]
    fn idle_threads_take_connections_in_turn_by_count() {
        let threads = Threads::start(2).expect("threads");
        let (first, seat) = threads.place();
        let first = index(&threads, first);
        let (second, _seat) = threads.place();
        assert_ne!(index(&threads, second), first, "the emptier thread");
        drop(seat);
        let (third, _seat) = threads.place();
        assert_eq!(index(&threads, third), first, "its seat was given back");
    }

    #[test]
    fn a_new_connection_goes_to_the_thread_that_worked_least() {
        let threads = Threads::start(2).expect("threads");
        let (busy, seat) = threads.place();
        let (busy, busy_at) = (busy.clone(), index(&threads, busy));
        let (_, _other) = threads.place();
        // The busy thread now has fewer connections (none) than the other
        // (one), and works 20 ms of CPU while the other does nothing.
        drop(seat);
        let (done, worked) = std::sync::mpsc::channel();
        busy.spawn(async move {
            burn(Duration::from_millis(20));
            let _ = done.send(());
        });
        worked.recv().expect("the work ran");
        let (next, _seat) = threads.place();
        assert_ne!(index(&threads, next), busy_at, "work before count");
    }
}
