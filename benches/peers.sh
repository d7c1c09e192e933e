#!/usr/bin/env bash
# Installs what `cargo bench --bench serve` compares hasp with; called by the
# bench, which starts the daemons itself (with benches/peers.py).
#
#   benches/peers.sh venv DIR   a Python venv at DIR/venv holding Locker 1.0b
#                               (on CherryPy) and gocept.lockd 0.1; reused
#                               when a complete one with these pins is there.
#                               Prints its python.
#   benches/peers.sh wrk        wrk, with apt-get when missing. Prints its path.
#
# The venv is made with `python3` ($HASP_BENCH_PYTHON picks another) and
# pip, from PyPI, with the pins below. Both peers date from Python 2's time:
#
# - Locker 1.0b imports on Python 3 as published. Its setup.py asks for any
#   cherrypy: CherryPy and the server under it are pinned here instead.
# - gocept.lockd 0.1 does not import on Python 3. It is installed from its
#   sdist with one line changed, the smallest patch that makes it import,
#   made with sed and checked:
#
#     --- gocept/lockd/lockd.py
#     +++ gocept/lockd/lockd.py
#     -import SimpleXMLRPCServer
#     +import xmlrpc.server as SimpleXMLRPCServer
#
#   (Python 3 renamed the module; the class and its defaults are the same:
#   HTTP/1.0, one request per connection, requests logged to stderr.) Its
#   gocept/__init__.py, whose `except ImportError, e:` is Python 2 syntax, is
#   left alone: installing a setuptools namespace package replaces that file
#   with a -nspkg.pth, so it is never installed nor imported. Its console
#   script `lockd` calls main() without the arguments it needs; peers.py
#   calls main(host, port, directory) instead.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PINS="setuptools==80.9.0 CherryPy==18.10.0 cheroot==11.1.2 portend==3.2.1 zc.lockfile==3.0.post1"
LOCKER=Locker==1.0b
GOCEPT=gocept.lockd==0.1

say() { echo "peers.sh: $*" >&2; }
# The bench shows the last line said: let it name what failed (also in
# functions: errtrace).
set -o errtrace
trap 'say "failed (exit $?): $BASH_COMMAND"' ERR

venv() {
    local dir=$1
    local done_mark="$PINS $LOCKER $GOCEPT patched-1"
    local venv=$dir/venv
    if [[ -x $venv/bin/python && "$(cat "$venv/.hasp-complete" 2>/dev/null)" == "$done_mark" ]]; then
        echo "$venv/bin/python"
        return
    fi
    local python=${HASP_BENCH_PYTHON:-python3}
    say "making $venv with $($python --version 2>&1) ($PINS, $LOCKER, $GOCEPT patched)"
    mkdir -p "$dir"
    local tmp=$dir/venv.tmp
    rm -rf "$tmp" "$dir/sdist"
    "$python" -m venv "$tmp" >&2
    local pip=("$tmp/bin/python" -m pip --disable-pip-version-check --no-input -q)
    # shellcheck disable=SC2086 # PINS is a list of words
    "${pip[@]}" install $PINS >&2
    # No build isolation: both build with the pinned setuptools.
    "${pip[@]}" install --no-deps --no-build-isolation "$LOCKER" >&2
    "${pip[@]}" download --no-deps --no-binary :all: -d "$dir/sdist" "$GOCEPT" >&2
    tar -xzf "$dir"/sdist/gocept.lockd-0.1.tar.gz -C "$dir/sdist"
    local src=$dir/sdist/gocept.lockd-0.1
    local file=$src/gocept/lockd/lockd.py
    sed -i 's/^import SimpleXMLRPCServer$/import xmlrpc.server as SimpleXMLRPCServer/' "$file"
    grep -qx 'import xmlrpc.server as SimpleXMLRPCServer' "$file" || {
        say "the patch did not apply to $file"
        exit 1
    }
    "${pip[@]}" install --no-deps --no-build-isolation "$src" >&2
    (cd "$dir" && "$tmp/bin/python" -c 'import locker, cherrypy, gocept.lockd.lockd') >&2
    rm -rf "$venv" "$dir/sdist"
    mv "$tmp" "$venv"
    # Made aside and moved into place, so a venv that is there is complete.
    # Its scripts' #! lines still name venv.tmp: only its python is used.
    echo "$done_mark" >"$venv/.hasp-complete"
    echo "$venv/bin/python"
}

wrk_path() {
    if ! command -v wrk >/dev/null; then
        command -v apt-get >/dev/null || {
            say "no wrk and no apt-get"
            exit 1
        }
        say "installing wrk"
        apt-get install -y -qq wrk >&2 || { apt-get update -qq >&2 && apt-get install -y -qq wrk >&2; }
    fi
    command -v wrk
}

case "${1:-}" in
venv)
    [[ $# -eq 2 ]] || {
        say "usage: $0 venv DIR"
        exit 2
    }
    venv "$2"
    ;;
wrk) wrk_path ;;
*)
    say "usage: $0 venv DIR | wrk"
    exit 2
    ;;
esac
