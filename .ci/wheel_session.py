"""gocept.lockd's session against `hasp serve`, run from the wheel's `hasp`.

    python wheel_session.py VENV/bin/hasp

Starts `hasp --dir TMP serve --addr 127.0.0.1:0` with the given binary,
reads the address from the line it logs when it listens, and replays
gocept.lockd's README through Python's own `xmlrpc.client` (the calls and
the exact refusal texts), then asks Locker's `/dohaz` through `urllib` and
the same binary's `status`. Exits non-zero on the first mismatch.
"""

import json
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
import xmlrpc.client


def main(hasp):
    checks = 0

    def check(actual, expected):
        nonlocal checks
        if actual != expected:
            raise AssertionError(f"expected {expected!r}, got {actual!r}")
        checks += 1

    def fault(call, *args):
        """The faultString of the Fault that `call(*args)` raises."""
        try:
            result = call(*args)
        except xmlrpc.client.Fault as e:
            check(e.faultCode, 1)
            return e.faultString
        raise AssertionError(f"{args!r}: expected a Fault, got {result!r}")

    version = subprocess.run([hasp, "--version"], capture_output=True, text=True, check=True)
    check(re.fullmatch(r"hasp \d+\.\d+\.\d+\n", version.stdout) is not None, True)
    print(version.stdout, end="")

    with tempfile.TemporaryDirectory() as lockdir:
        server = subprocess.Popen(
            [hasp, "--dir", lockdir, "serve", "--addr", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The daemon logs one line naming its address once it listens;
            # reading blocks until then (or until it exits: EOF).
            address = None
            log = []
            for line in server.stderr:
                log.append(line)
                found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
                if found:
                    address = found.group(1)
                    break
            if address is None:
                raise AssertionError("hasp serve did not start: " + "".join(log))

            # gocept.lockd's README, through its XML-RPC door.
            daemon = xmlrpc.client.ServerProxy(address + "/RPC2")
            check(daemon.lock("resource1", "client1"), True)
            check(fault(daemon.lock, "resource1", "client2"), "Resource already locked by 'client1'")
            check(daemon.lock("resource2", "client2"), True)
            check(
                fault(daemon.unlock, "resource1", "client2"),
                "Resource locked by 'client1' cannot be unlocked by 'client2'",
            )
            check(daemon.unlock("resource1", "client1"), True)
            check(fault(daemon.unlock, "resource1", "client1"), "Resource not locked")

            # The same locks through Locker's door (urllib) and the CLI.
            def dohaz(resource):
                with urllib.request.urlopen(f"{address}/dohaz/{resource}") as response:
                    return json.load(response)

            check(dohaz("resource2"), {"lockedBy": "client2"})
            check(dohaz("resource1"), {"lockedBy": None})
            status = subprocess.run(
                [hasp, "--dir", lockdir, "status", "resource2", "--json"],
                capture_output=True,
                text=True,
                check=True,
            )
            check(json.loads(status.stdout)["client"], "client2")
            refused = subprocess.run(
                [hasp, "--dir", lockdir, "lock", "resource2", "--client", "cli"],
                capture_output=True,
                text=True,
            )
            check((refused.returncode, refused.stderr), (1, "Resource already locked by 'client2'\n"))
            check(daemon.unlock("resource2", "client2"), True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.communicate(timeout=30)
        # SIGTERM is a clean shutdown: exit 0.
        check(server.returncode, 0)
    print(f"wheel: gocept.lockd session against hasp serve: {checks} passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1])
