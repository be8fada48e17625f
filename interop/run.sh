#!/usr/bin/env bash
# Interop smoke tests against the real peers, through the `utp` command:
#   libutp (npm utp-native 2.5.3, node ucat.js) both roles, both directions at once;
#   libtorrent-rasterbar (Debian python3-libtorrent) both roles, BitTorrent pieces SHA-1 checked.
# usage: interop/run.sh PATH_TO_UTP   (installs its peers when missing; needs root for apt)
set -euo pipefail
UTP="$(realpath "$1")"
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [ ! -d "$HERE/libutp/node_modules/utp-native" ]; then
    (cd "$HERE/libutp" && npm install --no-audit --no-fund --loglevel=error)
fi
if ! /usr/bin/python3 -c 'import libtorrent' 2>/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-libtorrent >/dev/null
fi

port() { /usr/bin/python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

head -c $((8 * 1024 * 1024 + 11)) /dev/urandom > "$WORK/a.bin"
head -c $((3 * 1024 * 1024 + 5)) /dev/urandom > "$WORK/b.bin"

# $1: listener command prefix, $2: connector command prefix. The listener sends
# b.bin, the connector a.bin, both at once; both must exit 0 with the other's file.
pair() {
    local name="$1" p
    p=$(port)
    local start=$SECONDS
    timeout 120 $2 "127.0.0.1:$p" < "$WORK/b.bin" > "$WORK/l.out" &
    local lpid=$!
    sleep 0.5
    local rc=0 lrc=0
    timeout 120 $3 "127.0.0.1:$p" < "$WORK/a.bin" > "$WORK/c.out" || rc=$?
    wait "$lpid" || lrc=$?
    if [ "$rc" -ne 0 ] || [ "$lrc" -ne 0 ]; then
        echo "FAIL $name: exit codes listener=$lrc connector=$rc"; return 1
    fi
    cmp -s "$WORK/a.bin" "$WORK/l.out" || { echo "FAIL $name: listener got wrong bytes"; return 1; }
    cmp -s "$WORK/b.bin" "$WORK/c.out" || { echo "FAIL $name: connector got wrong bytes"; return 1; }
    echo "ok   $name: 8 MiB + 3 MiB both ways at once, bit-exact ($((SECONDS - start)) s)"
}

UCAT="node $HERE/libutp/ucat.js"
pair "utp connect -> libutp listen" "$UCAT -l" "$UTP connect -q"
pair "libutp connect -> utp listen" "$UTP listen -q" "$UCAT"

/usr/bin/python3 "$HERE/libtorrent/bt_fetch.py" "$UTP" connect 16
/usr/bin/python3 "$HERE/libtorrent/bt_fetch.py" "$UTP" listen 16
echo "interop passed"
