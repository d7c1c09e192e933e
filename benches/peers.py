"""Starts one of hasp's peers for `cargo bench --bench serve`, on a loopback
port the OS picks, and says where it listens on stderr, as `hasp serve`
does: `listening on http://127.0.0.1:PORT`.

    python peers.py locker DIR   Locker 1.0b, its locks pickled to DIR/locks.db
    python peers.py gocept DIR   gocept.lockd 0.1, its lock files in DIR

Run with the venv's python that benches/peers.sh makes. Each daemon is
started through its own code, with its own defaults, changing only the
port and saying which one it got:

- Locker's `__main__` reads --port into a global after its default is bound,
  so its option has no effect: the daemon is started as `Locker(ip, port,
  file)`, which runs `cherrypy.quickstart` (default config: the thread pool,
  the autoreloader, access log to stdout). The address is said from the
  engine's `start`, after the server's own subscriber has bound.
- gocept.lockd's `main(host, port, directory)` builds a SimpleXMLRPCServer
  and serves forever: the class it builds is replaced by a subclass that only
  says its address once it listens. It takes the lock `lockd.lock` in the
  current directory: the bench starts it in DIR.
"""

import sys
import xmlrpc.server

HOST = "127.0.0.1"


def say(host, port):
    print(f"listening on http://{host}:{port}", file=sys.stderr, flush=True)


def run_locker(directory):
    import cherrypy
    import locker

    def started():
        host, port = cherrypy.server.bound_addr[:2]
        say(host, port)

    # The HTTP server starts at priority 75 of the engine's `start`.
    cherrypy.engine.subscribe("start", started, priority=90)
    locker.Locker(HOST, 0, f"{directory}/locks.db")


def run_gocept(directory):
    import types

    import gocept.lockd.lockd as lockd

    class Announced(xmlrpc.server.SimpleXMLRPCServer):
        def server_activate(self):
            super().server_activate()
            say(*self.server_address[:2])

    lockd.SimpleXMLRPCServer = types.SimpleNamespace(SimpleXMLRPCServer=Announced)
    lockd.main(HOST, 0, directory)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("locker", "gocept"):
        sys.exit("usage: peers.py locker|gocept DIR")
    {"locker": run_locker, "gocept": run_gocept}[sys.argv[1]](sys.argv[2])
