"""Python's locket and filelock, measured the way benches/process.rs measures
hasp and native flock. Called by `cargo bench --bench process` when both
modules import; prints one JSON object: {library: [four figures]}."""

import json
import os
import subprocess
import sys
import time

CYCLES = 20_000
HANDOFFS = 100
CONTENDERS = 4
CONTENTION = 2.0
KILLS = 20


def make(lib, path):
    if lib == "locket":
        import locket
        return locket.lock_file(path)
    import filelock
    return filelock.FileLock(path)


def role(lib, what, path):
    lock = make(lib, path)
    if what == "wait-once":
        print("waiting", flush=True)
        lock.acquire()
        print(time.monotonic_ns(), flush=True)
    elif what == "hold":
        lock.acquire()
        print("held", flush=True)
        while True:
            time.sleep(3600)
    elif what == "contend":
        n, start = 0, time.monotonic()
        while time.monotonic() - start < CONTENTION:
            lock.acquire()
            lock.release()
            n += 1
        print(n, flush=True)


def spawn(lib, what, path):
    return subprocess.Popen([sys.executable, __file__, "--role", lib, what, path],
                            stdout=subprocess.PIPE, text=True)


def median(xs):
    return sorted(xs)[len(xs) // 2]


def measure(lib, d):
    path = os.path.join(d, f"py-{lib}.lock")
    lock = make(lib, path)
    start = time.perf_counter()
    for _ in range(CYCLES):
        lock.acquire()
        lock.release()
    in_process = CYCLES / (time.perf_counter() - start)

    gaps = []
    for _ in range(HANDOFFS):
        lock.acquire()
        waiter = spawn(lib, "wait-once", path)
        assert waiter.stdout.readline().strip() == "waiting"
        released = time.monotonic_ns()
        lock.release()
        held = int(waiter.stdout.readline())
        waiter.wait()
        gaps.append((held - released) / 1e6)
    handoff = median(gaps)

    procs = [spawn(lib, "contend", path) for _ in range(CONTENDERS)]
    contended = sum(int(p.communicate()[0]) for p in procs) / CONTENTION

    gaps = []
    for _ in range(KILLS):
        holder = spawn(lib, "hold", path)
        assert holder.stdout.readline().strip() == "held"
        waiter = spawn(lib, "wait-once", path)
        assert waiter.stdout.readline().strip() == "waiting"
        killed = time.monotonic_ns()
        holder.kill()
        holder.wait()
        got = int(waiter.stdout.readline())
        waiter.wait()
        gaps.append((got - killed) / 1e6)
    return [in_process, handoff, contended, median(gaps)]


if __name__ == "__main__":
    if sys.argv[1] == "--role":
        role(*sys.argv[2:5])
    else:
        print(json.dumps({lib: measure(lib, sys.argv[1]) for lib in ("locket", "filelock")}))
