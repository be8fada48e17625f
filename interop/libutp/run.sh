#!/usr/bin/env bash
# Interop tests against libutp (npm utp-native 2.5.3, which bundles libutp's C
# code), driven through the `utp` command. Every transfer is checked bit-exact
# with cmp and prints its throughput; see interop/README.md, section "libutp".
#
#   interop/libutp/run.sh PATH_TO_UTP
#
# One line per case: `ok|FAIL <case>: <details> <throughput MB/s>`; exits 1 if
# any case failed. Needs node/npm (installs utp-native here if missing) and
# python3 (for interop/relay.py). Only 127.0.0.1 is used; ports come from the OS.
#
# Sizes can be made smaller for a quick run (defaults are the real test):
#   LIBUTP_MIB=64 LIBUTP_BOTH_MIB=32 LIBUTP_WRAP_US_MIB=64 LIBUTP_WRAP_THEM_MIB=96
#   LIBUTP_LOSS_MIB=16 LIBUTP_LOSS=0.03 LIBUTP_CLOSE_MIB=4 LIBUTP_ROUGH_MIB=2
#   LIBUTP_TIMEOUT=240
# and case 9's path and payload cap (0: path MTU discovery):
#   LIBUTP_ROUGH="--any-loss 0.02 --dup 0.02 --delay 2 --jitter 6" LIBUTP_ROUGH_PAYLOAD=1400
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 PATH_TO_UTP" >&2
    exit 2
fi
UTP="$(realpath "$1")"
HERE="$(cd "$(dirname "$0")" && pwd)"
RELAY="$HERE/../relay.py"
MIB=$((1024 * 1024))
SIZE_MIB="${LIBUTP_MIB:-64}"
BOTH_MIB="${LIBUTP_BOTH_MIB:-32}"
WRAP_US_MIB="${LIBUTP_WRAP_US_MIB:-64}"
WRAP_THEM_MIB="${LIBUTP_WRAP_THEM_MIB:-96}"
LOSS_MIB="${LIBUTP_LOSS_MIB:-16}"
LOSS="${LIBUTP_LOSS:-0.03}"
CLOSE_MIB="${LIBUTP_CLOSE_MIB:-4}"
ROUGH_MIB="${LIBUTP_ROUGH_MIB:-2}"
read -r -a ROUGH <<< "${LIBUTP_ROUGH:---any-loss 0.02 --dup 0.02 --delay 2 --jitter 6}"
ROUGH_PAYLOAD="${LIBUTP_ROUGH_PAYLOAD:-1400}"
T="${LIBUTP_TIMEOUT:-240}" # seconds, for every single step

die() { echo "FAIL setup: $*"; exit 1; }

# --- Prerequisites: fail loudly, never skip ----------------------------------
[ -x "$UTP" ] || die "$1 is not an executable utp binary"
command -v python3 >/dev/null || die "python3 not found (needed for interop/relay.py)"
command -v node >/dev/null || die "node not found: install Node.js >= 12 and npm (e.g. apt-get install nodejs npm)"
if ! (cd "$HERE" && timeout 30 node -e "require('utp-native')") >/dev/null 2>&1; then
    command -v npm >/dev/null || die "utp-native is not installed in $HERE and npm is not available"
    echo "installing utp-native into $HERE/node_modules (npm install)" >&2
    (cd "$HERE" && timeout 300 npm install --no-audit --no-fund --loglevel=error) >&2 \
        || die "npm install in $HERE failed"
    (cd "$HERE" && timeout 30 node -e "require('utp-native')") >/dev/null 2>&1 \
        || die "utp-native still cannot be loaded after npm install in $HERE"
fi
NATIVE_VERSION="$(cd "$HERE" && timeout 30 node -p "require('utp-native/package.json').version")"
[ "$NATIVE_VERSION" = "2.5.3" ] || die "utp-native $NATIVE_VERSION installed, these tests expect 2.5.3"

WORK="$(mktemp -d)"
cleanup() {
    # Only this script's own background jobs that are still running.
    local p
    for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

UCAT=(node "$HERE/ucat.js")
HALFCLOSE=(node "$HERE/halfclose.js")

port() {
    timeout 10 python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something listens on UDP 127.0.0.1:$1 (or $2 seconds passed).
wait_bound() {
    local p="$1" n=0
    if ! command -v ss >/dev/null; then sleep 1; return 0; fi
    while [ $n -lt $((${2:-10} * 20)) ]; do
        if ss -Hlun "sport = :$p" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.05
        n=$((n + 1))
    done
    return 1
}

now() { date +%s.%N; }
# mbps BYTES START END
mbps() { python3 -c "import sys; b,s,e=int(sys.argv[1]),float(sys.argv[2]),float(sys.argv[3]); print('%.1f MB/s' % (b/1e6/max(e-s,1e-6)))" "$1" "$2" "$3"; }
# jget FILE KEY [KEY...] : values of top-level keys of a JSON file, or "?"
jget() { python3 - "$@" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("?"); sys.exit(0)
def get(d, path):
    for k in path.split("."):
        d = d.get(k, {}) if isinstance(d, dict) else {}
    return d if d != {} else 0
print(" ".join(str(get(d, k)) for k in sys.argv[2:]))
EOF
}

# --- Test data ---------------------------------------------------------------
big=$((WRAP_THEM_MIB > SIZE_MIB ? WRAP_THEM_MIB : SIZE_MIB))
head -c $((big * MIB + 1021)) /dev/urandom > "$WORK/pool.bin"
mk() { head -c "$2" "$WORK/pool.bin" > "$WORK/$1"; } # a prefix of the pool
mk a.bin $((SIZE_MIB * MIB + 13))                      # one-way transfers
tail -c $((BOTH_MIB * MIB + 7)) "$WORK/pool.bin" > "$WORK/both_b.bin"
mk both_a.bin $((BOTH_MIB * MIB + 3))
mk wrap_us.bin $((WRAP_US_MIB * MIB + 5))
mk wrap_them.bin $((WRAP_THEM_MIB * MIB + 1021))
mk loss.bin $((LOSS_MIB * MIB + 17))
mk close_big.bin $((CLOSE_MIB * MIB + 9))
mk close_small.bin 1000
mk rough_a.bin $((ROUGH_MIB * MIB + 11))
tail -c $((ROUGH_MIB * MIB + 19)) "$WORK/pool.bin" > "$WORK/rough_b.bin"
head -c $((3 * MIB + 333)) "$WORK/pool.bin" > "$WORK/req.bin"
: > "$WORK/empty.bin"

# --- One transfer ------------------------------------------------------------
# xfer ROLE US_IN THEM_IN [relay args...]
#   ROLE us-connect: `utp connect` -> libutp `ucat -l`
#   ROLE us-listen:  libutp `ucat` -> `utp listen`
# Our side reads US_IN and writes us.out (stats in us.json); libutp reads
# THEM_IN and writes them.out. With relay args, interop/relay.py sits in
# between (client -> relay -> listener) and writes relay.json.
# Extra `utp` options: array US_OPTS. Sets ELAPSED_START/END, DETAIL.
US_OPTS=()
xfer() {
    local role="$1" us_in="$2" them_in="$3"
    shift 3
    local lport cport lpid cpid rpid="" lrc=0 crc=0
    rm -f "$WORK/us.out" "$WORK/them.out" "$WORK/us.json" "$WORK/relay.json" "$WORK"/*.err
    lport=$(port)
    if [ "$role" = us-connect ]; then
        timeout "$T" "${UCAT[@]}" -l "127.0.0.1:$lport" < "$WORK/$them_in" > "$WORK/them.out" 2> "$WORK/them.err" &
    else
        timeout "$T" "$UTP" listen -q "${US_OPTS[@]}" --stats-json "$WORK/us.json" "127.0.0.1:$lport" \
            < "$WORK/$us_in" > "$WORK/us.out" 2> "$WORK/us.err" &
    fi
    lpid=$!
    wait_bound "$lport" || { DETAIL="listener never bound 127.0.0.1:$lport"; return 1; }
    cport=$lport
    if [ $# -gt 0 ]; then
        cport=$(port)
        timeout "$T" python3 "$RELAY" --listen "$cport" --target "$lport" --log "$WORK/relay.json" "$@" \
            2> "$WORK/relay.err" &
        rpid=$!
        wait_bound "$cport" || { DETAIL="relay never bound 127.0.0.1:$cport"; return 1; }
    fi
    ELAPSED_START=$(now)
    if [ "$role" = us-connect ]; then
        timeout "$T" "$UTP" connect -q "${US_OPTS[@]}" --stats-json "$WORK/us.json" "127.0.0.1:$cport" \
            < "$WORK/$us_in" > "$WORK/us.out" 2> "$WORK/us.err" &
    else
        timeout "$T" "${UCAT[@]}" "127.0.0.1:$cport" < "$WORK/$them_in" > "$WORK/them.out" 2> "$WORK/them.err" &
    fi
    cpid=$!
    wait "$cpid" || crc=$?
    wait "$lpid" || lrc=$?
    ELAPSED_END=$(now)
    if [ -n "$rpid" ]; then
        kill -TERM "$rpid" 2>/dev/null || true
        wait "$rpid" || true
    fi
    local us_rc them_rc
    if [ "$role" = us-connect ]; then us_rc=$crc; them_rc=$lrc; else us_rc=$lrc; them_rc=$crc; fi
    DETAIL="exit codes utp=$us_rc libutp=$them_rc (124 = timeout ${T}s)"
    if [ "$us_rc" -ne 0 ] || [ "$them_rc" -ne 0 ]; then
        DETAIL="$DETAIL; utp stderr: $(tail -c 300 "$WORK/us.err" | tr '\n' ' '); libutp stderr: $(tail -c 300 "$WORK/them.err" | tr '\n' ' ')"
        return 1
    fi
    return 0
}

# check_exact: cmp both directions of the last xfer; sets DETAIL on failure.
check_exact() {
    local us_in="$1" them_in="$2"
    if ! cmp -s "$WORK/$us_in" "$WORK/them.out"; then
        DETAIL="libutp received wrong bytes ($(stat -c %s "$WORK/them.out") of $(stat -c %s "$WORK/$us_in")): $(cmp "$WORK/$us_in" "$WORK/them.out" 2>&1 | head -1)"
        return 1
    fi
    if ! cmp -s "$WORK/$them_in" "$WORK/us.out"; then
        DETAIL="utp received wrong bytes ($(stat -c %s "$WORK/us.out") of $(stat -c %s "$WORK/$them_in")): $(cmp "$WORK/$them_in" "$WORK/us.out" 2>&1 | head -1)"
        return 1
    fi
}

size() { stat -c %s "$WORK/$1"; }
stats_brief() {
    echo "our stats: $(jget "$WORK/us.json" packets_sent packets_received packets_retransmitted timeouts fast_retransmits \
        | awk '{printf "sent %s pkts, recv %s pkts, retx %s, timeouts %s, fast retx %s", $1, $2, $3, $4, $5}')"
}

FAILED=0
report() { # report NAME STATUS DETAILS THROUGHPUT
    if [ "$2" -eq 0 ]; then
        echo "ok   $1: $3 $4"
    else
        echo "FAIL $1: $3 ${4:-}"
        FAILED=$((FAILED + 1))
    fi
}

# --- Cases -------------------------------------------------------------------
# one_way NAME ROLE US_IN THEM_IN : one transfer, bit-exact, throughput of the payload.
one_way() {
    local name="$1" role="$2" us_in="$3" them_in="$4" rc=0 bytes
    xfer "$role" "$us_in" "$them_in" && check_exact "$us_in" "$them_in" || rc=1
    bytes=$(($(size "$us_in") + $(size "$them_in")))
    [ $rc -eq 0 ] && DETAIL="$((bytes / MIB)) MiB bit-exact, $(stats_brief)"
    report "$name" $rc "$DETAIL" "$(mbps $bytes "$ELAPSED_START" "$ELAPSED_END")"
}

case1() {
    one_way "1a utp connect -> libutp listen, ${SIZE_MIB} MiB us->libutp" us-connect a.bin empty.bin
    one_way "1b utp connect -> libutp listen, ${SIZE_MIB} MiB libutp->us" us-connect empty.bin a.bin
}
case2() {
    one_way "2a libutp connect -> utp listen, ${SIZE_MIB} MiB us->libutp" us-listen a.bin empty.bin
    one_way "2b libutp connect -> utp listen, ${SIZE_MIB} MiB libutp->us" us-listen empty.bin a.bin
    # Every SYN answered with a SYN cookie (what a SYN flood beyond the
    # half-open limit gets): libutp's first data returns it.
    US_OPTS=(--max-half-open 0)
    one_way "2c libutp connect -> utp listen, SYN cookie, ${SIZE_MIB} MiB libutp->us" us-listen empty.bin a.bin
    US_OPTS=()
}
case3() {
    one_way "3a utp connect -> libutp listen, ${BOTH_MIB} MiB each way at once" us-connect both_a.bin both_b.bin
    one_way "3b libutp connect -> utp listen, ${BOTH_MIB} MiB each way at once" us-listen both_a.bin both_b.bin
}

# Half-close: the requester sends req.bin and FIN, then reads the answer; the
# responder reads to EOF, then answers "sha256hex\n" + the request, then FIN.
expected_answer() { { sha256sum < "$WORK/req.bin" | cut -d' ' -f1; cat "$WORK/req.bin"; } > "$WORK/answer.expected"; }
case4() {
    expected_answer
    local rc p lpid crc lrc bytes
    # 4a: we request, libutp (halfclose.js) answers after reading to EOF.
    rc=0; crc=0; lrc=0
    p=$(port)
    timeout "$T" "${HALFCLOSE[@]}" -l "127.0.0.1:$p" > /dev/null 2> "$WORK/them.err" &
    lpid=$!
    if wait_bound "$p"; then
        ELAPSED_START=$(now)
        timeout "$T" "$UTP" connect -q --stats-json "$WORK/us.json" "127.0.0.1:$p" \
            < "$WORK/req.bin" > "$WORK/answer.out" 2> "$WORK/us.err" || crc=$?
        wait "$lpid" || lrc=$?
        ELAPSED_END=$(now)
        DETAIL="exit codes utp=$crc libutp=$lrc"
        if [ $crc -ne 0 ] || [ $lrc -ne 0 ]; then rc=1
        elif ! cmp -s "$WORK/answer.expected" "$WORK/answer.out"; then
            rc=1; DETAIL="wrong answer: $(cmp "$WORK/answer.expected" "$WORK/answer.out" 2>&1 | head -1)"
        else DETAIL="3 MiB request + FIN, then sha256+echo answer received after our FIN, bit-exact, $(stats_brief)"; fi
    else rc=1; DETAIL="halfclose.js never bound"; ELAPSED_START=0; ELAPSED_END=1; fi
    bytes=$(($(size req.bin) + $(size answer.expected)))
    report "4a half-close: utp requests, libutp answers after EOF" $rc "$DETAIL" "$(mbps $bytes "$ELAPSED_START" "$ELAPSED_END")"

    # 4b: libutp (ucat) requests, we answer: `utp listen` stdout -> responder
    # (reads the whole request, then answers) -> `utp listen` stdin via a FIFO.
    # The responder cannot see our EOF on stdout (utp keeps stdout open until
    # it exits), so it reads exactly the request length; `utp listen` exiting 0
    # shows it did read the peer's FIN.
    rc=0; crc=0; lrc=0
    p=$(port)
    rm -f "$WORK/fifo"; mkfifo "$WORK/fifo"
    local nreq; nreq=$(size req.bin)
    ( timeout "$T" "$UTP" listen -q --stats-json "$WORK/us.json" "127.0.0.1:$p" < "$WORK/fifo" 2> "$WORK/us.err" \
        | timeout "$T" python3 -c '
import hashlib, sys
n = int(sys.argv[1]); data = sys.stdin.buffer.read(n)
assert len(data) == n, "request cut short: %d of %d bytes" % (len(data), n)
sys.stdout.buffer.write(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
sys.stdout.flush()
# stdout closes at exit: `utp listen` then sees stdin EOF and sends FIN.
' "$nreq" > "$WORK/fifo" ) &
    lpid=$!
    if wait_bound "$p"; then
        ELAPSED_START=$(now)
        timeout "$T" "${UCAT[@]}" "127.0.0.1:$p" < "$WORK/req.bin" > "$WORK/answer.out" 2> "$WORK/them.err" || crc=$?
        wait "$lpid" || lrc=$?
        ELAPSED_END=$(now)
        DETAIL="exit codes libutp=$crc utp-pipeline=$lrc"
        if [ $crc -ne 0 ] || [ $lrc -ne 0 ]; then rc=1; DETAIL="$DETAIL; $(tail -c 300 "$WORK/us.err" "$WORK/them.err" | tr '\n' ' ')"
        elif ! cmp -s "$WORK/answer.expected" "$WORK/answer.out"; then
            rc=1; DETAIL="wrong answer: $(cmp "$WORK/answer.expected" "$WORK/answer.out" 2>&1 | head -1)"
        else DETAIL="libutp sent 3 MiB + FIN and received our sha256+echo answer afterwards, bit-exact, $(stats_brief)"; fi
    else rc=1; DETAIL="utp listen never bound"; ELAPSED_START=0; ELAPSED_END=1; fi
    report "4b half-close: libutp requests, utp answers after EOF" $rc "$DETAIL" "$(mbps $bytes "$ELAPSED_START" "$ELAPSED_END")"
}

# Sequence numbers wrap: more than 65,536 packets each way.
case5() {
    local rc bytes sent recv
    rc=0
    US_OPTS=(--max-payload 600)
    xfer us-connect wrap_us.bin empty.bin && check_exact wrap_us.bin empty.bin || rc=1
    US_OPTS=()
    sent=$(jget "$WORK/us.json" packets_sent)
    if [ $rc -eq 0 ]; then
        if [ "$sent" != "?" ] && [ "$sent" -gt 65536 ]; then
            DETAIL="${WRAP_US_MIB} MiB at 600-byte payloads, bit-exact, $sent packets sent (> 65536), $(stats_brief)"
        else rc=1; DETAIL="bit-exact but only $sent packets sent (need > 65536)"; fi
    fi
    bytes=$(size wrap_us.bin)
    report "5a seq wrap, utp -> libutp (utp connect --max-payload 600)" $rc "$DETAIL" "$(mbps $bytes "$ELAPSED_START" "$ELAPSED_END")"

    rc=0
    xfer us-listen empty.bin wrap_them.bin && check_exact empty.bin wrap_them.bin || rc=1
    recv=$(jget "$WORK/us.json" packets_received)
    if [ $rc -eq 0 ]; then
        if [ "$recv" != "?" ] && [ "$recv" -gt 65536 ]; then
            DETAIL="${WRAP_THEM_MIB} MiB from libutp, bit-exact, $recv packets received (> 65536), $(stats_brief)"
        else rc=1; DETAIL="bit-exact but only $recv packets received (need > 65536)"; fi
    fi
    bytes=$(size wrap_them.bin)
    report "5b seq wrap, libutp -> utp (ucat connect -> utp listen)" $rc "$DETAIL" "$(mbps $bytes "$ELAPSED_START" "$ELAPSED_END")"
}

# relay_summary: the relay log in one line (directions as seen by the relay).
relay_line() { # relay_line C S  (names for client and server)
    python3 - "$WORK/relay.json" "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
out = []
for d, who in (("c2s", sys.argv[2]), ("s2c", sys.argv[3])):
    x = r[d]
    t = x["types"]
    out.append("%s sent DATA=%s STATE=%s FIN=%s RESET=%s SACK=%s acks-of-peer-FIN=%s" % (
        who, t.get("ST_DATA", 0), t.get("ST_STATE", 0), t.get("ST_FIN", 0),
        t.get("ST_RESET", 0), x["sack_packets"], x["acks_of_peer_fin"]))
print("; ".join(out))
EOF
}

# Close handshakes: the side with less to send closes first; both must exit 0,
# nothing lost, and no ST_RESET on the wire in either direction.
close_case() {
    local name="$1" role="$2" us_in="$3" them_in="$4" rc=0 resets bytes
    xfer "$role" "$us_in" "$them_in" --drop-dir none && check_exact "$us_in" "$them_in" || rc=1
    resets=$(jget "$WORK/relay.json" c2s.types.ST_RESET s2c.types.ST_RESET)
    if [ $rc -eq 0 ]; then
        if [ "$resets" != "0 0" ]; then rc=1; DETAIL="ST_RESET on the wire (client->listener, listener->client): $resets"
        else DETAIL="both exit 0, bit-exact, no RESET; $(relay_line "${5}" "${6}")"; fi
    fi
    bytes=$(($(size "$us_in") + $(size "$them_in")))
    report "$name" $rc "$DETAIL" "$(mbps $bytes "$ELAPSED_START" "$ELAPSED_END")"
}
case6() {
    close_case "6a close, utp connect -> libutp, utp FINs first" us-connect close_small.bin close_big.bin utp libutp
    close_case "6b close, utp connect -> libutp, libutp FINs first" us-connect close_big.bin close_small.bin utp libutp
    close_case "6c close, libutp connect -> utp, utp FINs first" us-listen close_small.bin close_big.bin libutp utp
    close_case "6d close, libutp connect -> utp, libutp FINs first" us-listen close_big.bin close_small.bin libutp utp
}

# Forced loss: relay drops DATA in one direction; check bit-exact, that the
# receiver sent SACKs and the sender retransmitted.
# loss_case NAME ROLE DIR(us2them|them2us)
loss_case() {
    local name="$1" role="$2" dir="$3" rc=0 us_in them_in drop_dir sack_dir cname sname v retx
    if [ "$dir" = us2them ]; then us_in=loss.bin; them_in=empty.bin; else us_in=empty.bin; them_in=loss.bin; fi
    if [ "$role" = us-connect ]; then cname=utp; sname=libutp; else cname=libutp; sname=utp; fi
    # The sender's direction, seen from the relay: client->server is c2s.
    if { [ "$role" = us-connect ] && [ "$dir" = us2them ]; } || { [ "$role" = us-listen ] && [ "$dir" = them2us ]; }; then
        drop_dir=c2s; sack_dir=s2c
    else
        drop_dir=s2c; sack_dir=c2s
    fi
    # Classic 1400-byte packets: path MTU discovery would reach 64 KiB on
    # loopback and leave only a handful of packets to drop.
    US_OPTS=(--max-payload 1400)
    xfer "$role" "$us_in" "$them_in" --drop-dir "$drop_dir" --loss "$LOSS" --seed 7 && check_exact "$us_in" "$them_in" || rc=1
    US_OPTS=()
    if [ -s "$WORK/relay.json" ]; then
        v=$(jget "$WORK/relay.json" "$drop_dir.dropped" "$sack_dir.sack_packets" "$drop_dir.data_retransmissions")
    else v="? ? ?"; fi
    retx=$(jget "$WORK/us.json" packets_retransmitted)
    set -- $v
    if [ $rc -eq 0 ]; then
        if [ "$1" = "?" ] || [ "$1" -eq 0 ]; then rc=1; DETAIL="relay dropped nothing ($v)"
        elif [ "$2" -eq 0 ]; then rc=1; DETAIL="receiver sent no SACK although $1 DATA packets were dropped"
        elif [ "$dir" = us2them ] && { [ "$retx" = "?" ] || [ "$retx" -eq 0 ]; }; then
            rc=1; DETAIL="our stats show packets_retransmitted=$retx although $1 DATA packets were dropped"
        else
            DETAIL="$(size loss.bin | awk '{printf "%d MiB", $1/1048576}') bit-exact, $1 DATA dropped, receiver sent $2 SACK packets, sender resent $3 DATA (relay); $(stats_brief)"
        fi
    fi
    report "$name" $rc "$DETAIL" "$(mbps "$(size loss.bin)" "$ELAPSED_START" "$ELAPSED_END")"
}
case7() {
    loss_case "7a ${LOSS} loss us->libutp (utp connect)" us-connect us2them
    loss_case "7b ${LOSS} loss us->libutp (utp listen)" us-listen us2them
    loss_case "7c ${LOSS} loss libutp->us (utp connect)" us-connect them2us
    loss_case "7d ${LOSS} loss libutp->us (utp listen)" us-listen them2us
}

# Abort: libutp sends to us without end; our side is stopped by SIGTERM
# mid-transfer (as by Ctrl-C), aborts the connection, and libutp must fail at
# once with ECONNRESET, not wait for its own timeout. (SIGTERM, not SIGINT:
# a script's background jobs start with SIGINT ignored.)
# abort_case NAME ROLE
abort_case() {
    local name="$1" role="$2" rc=0 lport lpid cpid upid tpid t0 waited=0 urc=0 trc=0 got
    rm -f "$WORK/us.out" "$WORK/them.out" "$WORK"/*.err
    lport=$(port)
    # Our stdin stays open (no FIN from us) after a first message (an
    # accepting utp-native writes only once it has read something), long
    # enough for the case, not longer: nothing stops the sleep behind it;
    # libutp's is the 64 MiB file.
    if [ "$role" = us-connect ]; then
        "${UCAT[@]}" -l "127.0.0.1:$lport" < "$WORK/a.bin" > /dev/null 2> "$WORK/them.err" &
        lpid=$!
        wait_bound "$lport" || { report "$name" 1 "libutp never bound 127.0.0.1:$lport"; return; }
        "$UTP" connect -q "127.0.0.1:$lport" < <(printf hello; sleep 30) > "$WORK/us.out" 2> "$WORK/us.err" &
        cpid=$!; upid=$cpid; tpid=$lpid
    else
        "$UTP" listen -q "127.0.0.1:$lport" < <(printf hello; sleep 30) > "$WORK/us.out" 2> "$WORK/us.err" &
        lpid=$!
        wait_bound "$lport" || { report "$name" 1 "utp never bound 127.0.0.1:$lport"; return; }
        "${UCAT[@]}" "127.0.0.1:$lport" < "$WORK/a.bin" > /dev/null 2> "$WORK/them.err" &
        cpid=$!; upid=$lpid; tpid=$cpid
    fi
    # Stop us once data flows (1 MiB received).
    while [ "$(stat -c %s "$WORK/us.out" 2>/dev/null || echo 0)" -lt $MIB ] && [ $waited -lt 200 ]; do
        sleep 0.05; waited=$((waited + 1))
    done
    got=$(stat -c %s "$WORK/us.out" 2>/dev/null || echo 0)
    kill -TERM "$upid" 2>/dev/null || true
    t0=$(now)
    wait "$upid" || urc=$?
    waited=0
    while kill -0 "$tpid" 2>/dev/null && [ $waited -lt 100 ]; do sleep 0.05; waited=$((waited + 1)); done
    local after; after=$(python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(now)")
    if kill -0 "$tpid" 2>/dev/null; then
        kill "$tpid" 2>/dev/null || true
        rc=1; DETAIL="libutp still running 5 s after our abort (received $got bytes before it)"
    else
        wait "$tpid" || trc=$?
        if [ "$got" -lt $MIB ]; then rc=1; DETAIL="only $got bytes arrived before the abort"
        elif [ "$urc" -ne 1 ] || ! grep -q "interrupted by SIGTERM" "$WORK/us.err"; then
            rc=1; DETAIL="utp exit $urc: $(tail -c 300 "$WORK/us.err" | tr '\n' ' ')"
        elif [ "$trc" -ne 1 ] || ! grep -q "UTP_ECONNRESET" "$WORK/them.err"; then
            rc=1; DETAIL="libutp exit $trc, not a reset: $(tail -c 300 "$WORK/them.err" | tr '\n' ' ')"
        else
            DETAIL="$got bytes in, then our abort; libutp failed with UTP_ECONNRESET ${after} s later"
        fi
    fi
    report "$name" $rc "$DETAIL" ""
}
case8() {
    abort_case "8a abort, utp connect -> libutp (SIGTERM mid-transfer)" us-connect
    abort_case "8b abort, libutp connect -> utp listen (SIGTERM mid-transfer)" us-listen
}

# A rough path: the relay loses, duplicates, delays and reorders datagrams of
# every type (SYN, STATE, FIN and RESET too) in both directions while both
# sides send at once and then close. Both must exit 0 with every byte right.
# rough_case NAME ROLE SEED
rough_case() {
    local name="$1" role="$2" seed="$3" rc=0 v bytes
    US_OPTS=()
    [ "$ROUGH_PAYLOAD" = 0 ] || US_OPTS=(--max-payload "$ROUGH_PAYLOAD")
    xfer "$role" rough_a.bin rough_b.bin "${ROUGH[@]}" --seed "$seed" \
        && check_exact rough_a.bin rough_b.bin || rc=1
    US_OPTS=()
    v=$(python3 - "$WORK/relay.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    print("? ? ? ? 0"); sys.exit(0)
c, s = r["c2s"], r["s2c"]
both = c["lost_any"] and s["lost_any"] and c["reordered"] and s["reordered"]
print(c["lost_any"] + s["lost_any"], c["duplicated"] + s["duplicated"],
      c["reordered"] + s["reordered"],
      c["types"].get("ST_RESET", 0) + s["types"].get("ST_RESET", 0), 1 if both else 0)
EOF
)
    set -- $v
    if [ $rc -eq 0 ]; then
        if [ "$5" != 1 ] || [ "$2" = 0 ]; then
            rc=1; DETAIL="the relay did not lose and reorder both ways and duplicate (lost $1, duplicated $2, reordered $3)"
        else
            DETAIL="$ROUGH_MIB MiB each way bit-exact, relay lost $1, duplicated $2, reordered $3 datagrams, $4 RESET; $(stats_brief)"
        fi
    fi
    bytes=$(($(size rough_a.bin) + $(size rough_b.bin)))
    report "$name" $rc "$DETAIL" "$(mbps $bytes "$ELAPSED_START" "$ELAPSED_END")"
}
case9() {
    rough_case "9a rough path (${ROUGH[*]}), utp connect" us-connect 11
    rough_case "9b rough path (${ROUGH[*]}), utp listen" us-listen 12
}

CASES="${LIBUTP_CASES:-1 2 3 4 5 6 7 8 9}"
for c in $CASES; do "case$c"; done

if [ "$FAILED" -gt 0 ]; then
    echo "libutp interop: $FAILED case(s) FAILED"
    exit 1
fi
echo "libutp interop passed"
