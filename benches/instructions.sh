#!/usr/bin/env bash
# The daemon's own work per lock+unlock cycle, counted in instructions by
# valgrind's callgrind: unlike time on this shared VM, the count is the same
# from run to run (to a few instructions), so it shows what a change to the
# request path saves. User-space only: system calls count as the few
# instructions that make them, not the kernel's work.
#
# For each door (Locker GET, gocept XML-RPC, /v1 JSON), `hasp serve` runs
# under callgrind twice on a fresh ext4 lock directory, driven by one
# keep-alive connection (python3, standard library) over the same resources
# `bench/3/C/I` as benches/serve.rs: once for WARM cycles, once for
# WARM + 1000. The difference over 1000 is the cost of one cycle in the
# steady state, start-up and first locks excluded.
#
# Run: benches/instructions.sh (from any directory). Needs valgrind and
# python3 (valgrind is installed with apt-get when missing). Builds the
# release binary first. Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
WARM=200
MEASURED=1000
PORT=${HASP_BENCH_PORT:-18811}

if ! command -v valgrind >/dev/null; then
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
cargo build --release --quiet
BIN=${HASP_BENCH_BIN:-$PWD/target/release/hasp}
WORK=$(mktemp -d "$PWD/target/instructions.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cat >"$WORK/drive.py" <<'EOF'
import json, socket, sys

port, cycles, door = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = socket.create_connection(("127.0.0.1", port))
reader = conn.makefile("rb")

def exchange(head, body=b""):
    conn.sendall(head + body)
    length = 0
    while True:
        line = reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return reader.read(length)

def get(target):
    return json.loads(exchange(f"GET {target} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()))

def post(target, body, kind):
    head = (f"POST {target} HTTP/1.1\r\nHost: bench\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return exchange(head.encode(), body)

CALL = ("<?xml version='1.0'?>\n<methodCall>\n<methodName>{}</methodName>\n<params>\n"
        "<param>\n<value><string>{}</string></value>\n</param>\n"
        "<param>\n<value><string>c1</string></value>\n</param>\n</params>\n</methodCall>\n")

for i in range(cycles):
    name = f"bench/3/{i % 4}/{i % 16}"
    if door == "locker":
        grant = get(f"/canhaz/{name}?id=c1")
        assert grant["ok"], grant
        assert get(f"/nowant/{name}?token={grant['token']}")["ok"]
    elif door == "xmlrpc":
        for method in ("lock", "unlock"):
            reply = post("/RPC2", CALL.format(method, name).encode(), "text/xml")
            assert b"<fault>" not in reply, reply
    else:
        body = json.dumps({"resource": name, "client": "c1"}).encode()
        grant = json.loads(post("/v1/lock", body, "application/json"))
        assert "token" in grant, grant
        body = json.dumps({"resource": name, "token": grant["token"]}).encode()
        assert "fencing" in json.loads(post("/v1/unlock", body, "application/json"))
EOF

# Instructions the daemon ran, serving `cycles` cycles through `door`.
count() {
  local door=$1 cycles=$2 locks="$WORK/locks-$1-$2" pid i
  mkdir "$locks"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/out-$door-$cycles" \
    --smc-check=all-non-file "$BIN" --dir "$locks" serve --addr "127.0.0.1:$PORT" \
    2>"$WORK/log-$door-$cycles" &
  pid=$!
  for i in $(seq 200); do
    grep -q "listening on" "$WORK/log-$door-$cycles" && break
    sleep 0.1
  done
  python3 "$WORK/drive.py" "$PORT" "$cycles" "$door"
  kill -TERM "$pid"
  wait "$pid" || true
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$WORK/log-$door-$cycles"
}

# Compile the guest into hasp's cache now, not under valgrind.
mkdir "$WORK/warm"
"$BIN" --dir "$WORK/warm" status >/dev/null

printf '%-34s %s\n' "door (one keep-alive connection)" "instructions per lock+unlock"
for door in locker xmlrpc v1; do
  base=$(count "$door" "$WARM")
  more=$(count "$door" $((WARM + MEASURED)))
  printf '%-34s %d\n' "$door" $(((more - base) / MEASURED))
done
echo "valgrind $(valgrind --version | sed 's/valgrind-//'), $(nproc) CPUs, $BIN"
