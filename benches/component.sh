#!/usr/bin/env bash
# shellcheck disable=SC2016 # the backticks in single-quoted labels are markdown
# The guest as a component, measured in one table:
#  - start of one lock command, warm and cold: the stock `wasmtime run` on the
#    guest, `hasp lock`, and `flock(1)` for scale;
#  - sizes: the guest .wasm, the example plugin, the two composed;
#  - one lock+unlock from a plugin, without process start-up (the example
#    plugin's `--times N`): composed under `wasmtime run`, under
#    `hasp plugin run`, and the hasp Rust API in-process (`cargo bench --bench api`).
# Warm = compiled code cached (hasp: $HASP_CACHE_DIR; wasmtime: its own cache,
# here a private one). Cold = no compiled-code cache: a fresh HASP_CACHE_DIR
# before every run, `wasmtime run -C cache=n`. Every measured lock is a grant:
# hyperfine's --prepare unlocks first, and a failing run aborts the script.
#
# Run: benches/component.sh (from any directory). The lock directory is a temp
# dir under target/ (the repository's filesystem); HASP_BENCH_DIR=/dev/shm
# puts it elsewhere. Needs hyperfine (installed with apt-get when missing),
# wasmtime (48) and flock on PATH. Prints a markdown table and the machine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WARM_RUNS=${WARM_RUNS:-100}
COLD_RUNS=${COLD_RUNS:-30}
TIMES=${TIMES:-2000}   # lock+unlock cycles per plugin run
PLUGIN_RUNS=${PLUGIN_RUNS:-7}

say() { echo "component.sh: $*" >&2; }

if ! command -v hyperfine >/dev/null; then
    command -v apt-get >/dev/null || { say "needs hyperfine"; exit 1; }
    say "installing hyperfine"
    apt-get update -qq >&2 && apt-get install -y -qq hyperfine >&2
fi
for tool in wasmtime flock; do
    command -v "$tool" >/dev/null || { say "needs $tool on PATH"; exit 1; }
done

say "building (cargo build --release, cargo bench --bench api --no-run)"
(cd "$ROOT" && cargo build --release >&2 && cargo bench --bench api --no-run >&2)
HASP=$ROOT/target/release/hasp
# host/build.rs writes the example plugin into its OUT_DIR; the newest is ours.
# shellcheck disable=SC2012 # plain paths, no need for find
PLUGIN=$(ls -t "$ROOT"/target/release/build/hasp-*/out/example_plugin.wasm | head -n 1)

if [[ -n ${HASP_BENCH_DIR:-} ]]; then
    BENCH=$(mktemp -d "$HASP_BENCH_DIR/hasp-component.XXXXXX")
else
    BENCH=$(mktemp -d "$ROOT/target/bench-component.XXXXXX")
fi
trap 'rm -rf "$BENCH"' EXIT
LOCKS=$BENCH/locks
WARM=$BENCH/hasp-cache       # hasp's cache, kept
COLD=$BENCH/hasp-cold-cache  # removed before every cold run
mkdir -p "$LOCKS"
printf '[cache]\ndirectory = "%s"\n' "$BENCH/wasmtime-cache" >"$BENCH/wasmtime-cache.toml"
export HASP_CACHE_DIR=$WARM
unset HASP_DIR
# With RUST_BACKTRACE=1 the wasmtime CLI captures a native backtrace for every
# failed WASI call (the guest expects several ENOENTs per lock+unlock), which
# slows (a) below by half. Measure the default environment.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

# A word for hyperfine's command lines (split like a POSIX shell would).
q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

GUEST=$("$HASP" component path)
COMPOSED=$BENCH/rotator+hasp.wasm
"$HASP" --dir "$LOCKS" plugin compose "$PLUGIN" -o "$COMPOSED"
WT_WARM=(wasmtime run -C "cache-config=$BENCH/wasmtime-cache.toml" --dir "$LOCKS::/locks")
WT_COLD=(wasmtime run -C cache=n --dir "$LOCKS::/locks")

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }
section() { ROWS+=("| **$1** | | | |"); }

# hyperfine NAME RUNS PREPARE CMD...: one row, in ms.
bench() {
    local name=$1 runs=$2 prepare=$3 cmd="" word
    shift 3
    for word in "$@"; do cmd+="$(q "$word") "; done
    say "measuring: $name"
    local args=(-N --style none --runs "$runs" --warmup 3 --export-csv "$BENCH/out.csv")
    [[ -n $prepare ]] && args+=(--prepare "$prepare")
    hyperfine "${args[@]}" "$cmd" >/dev/null
    # command,mean,stddev,median,...: counted from the end (the name may hold commas)
    local line
    line=$(tail -n 1 "$BENCH/out.csv" | awk -F, -v name="$name" -v runs="$runs" '{
        printf "| %s | %.2f ms | %.2f ± %.2f ms | %d |", name, $(NF-4)*1e3, $(NF-6)*1e3, $(NF-5)*1e3, runs }')
    ROWS+=("$line")
}

# Unlocks RES (with the warm cache) so that the next lock is a grant.
unlock() {
    printf 'sh -c %s' "$(q "HASP_CACHE_DIR=$(q "$WARM") $(q "$HASP") --dir $(q "$LOCKS") unlock $1 --client c >/dev/null 2>&1 || true")"
}
# The same, and removes the cold cache.
unlock_cold() {
    printf 'sh -c %s' "$(q "rm -rf $(q "$COLD"); HASP_CACHE_DIR=$(q "$WARM") $(q "$HASP") --dir $(q "$LOCKS") unlock $1 --client c >/dev/null 2>&1 || true")"
}

section "Start of one lock command, warm (compiled code cached)"
bench '`flock LOCKS/x.lock true`' "$WARM_RUNS" "" flock "$LOCKS/x.lock" true
bench '`hasp --dir LOCKS lock RES --client c`' "$WARM_RUNS" "$(unlock hw)" \
    "$HASP" --dir "$LOCKS" lock hw --client c
bench '`wasmtime run --dir LOCKS::/locks GUEST lock RES --client c`' "$WARM_RUNS" "$(unlock ww)" \
    "${WT_WARM[@]}" "$GUEST" lock ww --client c

section "Start of one lock command, cold (no compiled-code cache)"
bench '`hasp lock`, fresh `HASP_CACHE_DIR` each run (compiles, writes the cache)' "$COLD_RUNS" \
    "$(unlock_cold hc)" env "HASP_CACHE_DIR=$COLD" "$HASP" --dir "$LOCKS" lock hc --client c
bench '`wasmtime run -C cache=n ... lock`' "$COLD_RUNS" "$(unlock wc)" \
    "${WT_COLD[@]}" "$GUEST" lock wc --client c

section "Sizes"
size() { row "$1" "$(stat -c %s "$2") B" "" ""; }
size 'guest .wasm (`hasp component path`)' "$GUEST"
size 'example plugin .wasm (log rotator)' "$PLUGIN"
size 'plugin composed with the guest (`hasp plugin compose`)' "$COMPOSED"
# shellcheck disable=SC2012
size 'guest precompiled by hasp (.cwasm in `HASP_CACHE_DIR`)' "$(ls "$WARM"/guest-*.cwasm | head -n 1)"

section "One lock+unlock from a plugin, in-process ($TIMES in a row per run)"
# (a) and (b) take turns, so that a slower spell of the disk hits both alike.
PLUGIN_A=("${WT_WARM[@]}" "$COMPOSED" a.log --client c --times "$TIMES")
PLUGIN_B=("$HASP" --dir "$LOCKS" plugin run "$PLUGIN" -- b.log --client c --times "$TIMES")
each() { sed -n 's/^[0-9]* rotations in .*(\([0-9.]*\) [^ ]* each)$/\1/p' <<<"$1"; }
# plugin_row NAME VALUES: median and mean ± σ of the µs figures in VALUES.
plugin_row() {
    local line
    line=$(sort -n <<<"$2" | awk -v name="$1" -v runs="$PLUGIN_RUNS" -v times="$TIMES" '
        NF { v[++n] = $1; s += $1; ss += $1 * $1 }
        END {
            if (n != runs) exit 1
            med = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            m = s / n; sd = n > 1 ? sqrt((ss - n * m * m) / (n - 1)) : 0
            printf "| %s | %.1f µs | %.1f ± %.1f µs | %d × %d |", name, med, m, sd, runs, times }')
    ROWS+=("$line")
}
say "measuring: lock+unlock from a plugin, (a) and (b) in turn"
"${PLUGIN_A[@]}" >/dev/null # warm the caches
"${PLUGIN_B[@]}" >/dev/null
a="" b=""
for ((i = 0; i < PLUGIN_RUNS; i++)); do
    a+=$(each "$("${PLUGIN_A[@]}")")$'\n'
    b+=$(each "$("${PLUGIN_B[@]}")")$'\n'
done
plugin_row '(a) composed, stock `wasmtime run ... --times N`' "$a"
plugin_row '(b) `hasp plugin run ROTATOR -- ... --times N`' "$b"
say "measuring: hasp Rust API (cargo bench --bench api)"
api=$(cd "$ROOT" && HASP_BENCH_DIR=$BENCH cargo bench --bench api 2>/dev/null)
per=$(awk '/time per cycle/ { print $(NF-1) }' <<<"$api")
cycles=$(sed -n 's/.*(\([0-9]*\) cycles, one reused instance).*/\1/p' <<<"$api")
row '(c) hasp Rust API in-process, distinct resources (`cargo bench --bench api`)' "" \
    "$per µs (mean)" "$cycles"

section "One rotation (lock+unlock) as a whole process, warm"
bench '`wasmtime run --dir LOCKS::/locks COMPOSED LOG --client c`' "$WARM_RUNS" "" \
    "${WT_WARM[@]}" "$COMPOSED" p.log --client c
bench '`hasp --dir LOCKS plugin run ROTATOR -- LOG --client c` (compiled once, then cached)' "$WARM_RUNS" "" \
    "$HASP" --dir "$LOCKS" plugin run "$PLUGIN" -- p.log --client c

echo "| Measurement | Median | Mean ± σ | Runs |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
cpu=$(awk -F': *' '/^model name|^Model|^cpu model/ { print $2; exit }' /proc/cpuinfo)
fs=$(df --output=fstype "$BENCH" 2>/dev/null | tail -n 1 || stat -f -c %T "$BENCH")
echo "Machine: $(nproc) CPUs, ${cpu:-unknown CPU}, bench dir on $fs;" \
    "$(wasmtime --version), $(hyperfine --version), $("$HASP" --version)"
