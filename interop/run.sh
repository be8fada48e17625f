#!/usr/bin/env bash
# Interop tests against the real peers (see interop/README.md):
#   interop/libutp/run.sh      libutp (npm utp-native 2.5.3) through `utp`, 23 cases
#   interop/libtorrent/run.py  libtorrent-rasterbar (Debian python3-libtorrent), 20 cases,
#                              through the bt_fetch example and through `utp`
#   interop/transmission/run.py Transmission 3.00 (Debian transmission-daemon, the original
#                              libutp), 7 cases, in a network namespace of its own
# usage: interop/run.sh PATH_TO_UTP PATH_TO_BT_FETCH
# Installs what the peers need when it is missing (root, apt and npm); a peer
# that cannot be installed fails the run, never skips it.
set -euo pipefail
UTP="$(realpath "$1")"
BT_FETCH="$(realpath "$2")"
HERE="$(cd "$(dirname "$0")" && pwd)"

need_apt=()
command -v node >/dev/null || need_apt+=(nodejs npm)
command -v tcpdump >/dev/null || need_apt+=(tcpdump)
/usr/bin/python3 -c 'import libtorrent' 2>/dev/null || need_apt+=(python3-libtorrent)
command -v transmission-daemon >/dev/null || need_apt+=(transmission-daemon)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -d "$HERE/libutp/node_modules/utp-native" ]; then
    (cd "$HERE/libutp" && npm install --no-audit --no-fund --loglevel=error)
fi

bash "$HERE/libutp/run.sh" "$UTP"
/usr/bin/python3 "$HERE/libtorrent/run.py" "$UTP" "$BT_FETCH"
/usr/bin/python3 "$HERE/transmission/run.py" "$UTP" "$BT_FETCH"
echo "interop passed"
