#!/usr/bin/env bash
# LEDBAT on a real (kernel) network: a 10 Mbit/s bottleneck between network
# namespaces, uTP alone, uTP against TCP CUBIC, and two staggered uTP flows.
#
#   sudo interop/ledbat_netns.sh [path/to/utp]      (default target/release/utp)
#
# Needs root, python3, iproute2, ethtool, ping (apt-get install iproute2
# ethtool iputils-ping). About 3 minutes. Not part of .ci/run.
#
# Topology: ns snd (10.77.0.1, veth s0) -- ns mid (m0 | m1) -- ns rcv
# (10.77.0.2, veth r0). The middle namespace has no IP stack in the path: a
# frame-level bridge (interop/ledbat_netns.py bridge, AF_PACKET raw sockets
# on m0 and m1, offloads off everywhere) forwards every frame, ARP included,
# through a drop-tail FIFO served at the link rate and then a delay line, in
# each direction. This kernel has no netem (nor fq/fq_codel), and a UDP
# relay could not carry the TCP competitor, hence the bridge. The bridge runs
# SCHED_FIFO so the machine's other load doesn't add delay.
#
# Link (same both ways, like utp-sim's `dumbbell`): 10 Mbit/s charged on IP
# bytes, 20 ms one-way delay (40 ms RTT), 300-packet drop-tail buffer
# (~350 ms at full-size packets). Override with RATE_MBIT, DELAY_MS, BUFFER_PKTS.
#
# Scenarios (durations are environment variables, defaults in brackets):
#   1 steady:    one uTP flow for STEADY_S [30] s.
#   2 yield:     uTP alone YIELD_ALONE_S [10] s, then a TCP CUBIC bulk flow
#                for TCP_S [30] s (per-socket TCP_CONGESTION; the machine's
#                default is BBR), then uTP alone YIELD_AFTER_S [15] s.
#   3 latecomer: two uTP flows, the second LATE_GAP_S [10] s after the first,
#                LATE_S [60] s in all; Jain index over the last 30 s.
# A `ping -i 0.1` from snd to rcv runs throughout (idle RTT taken first).
# Goodput is what the receiving application read (a counting sink on the
# receiver's stdout / TCP socket), per wall-clock time. At the end the
# script prints time series, a table of figures, and `utp sim` figures of
# the same shapes for comparison (the simulator's own durations).
#
# Logs are kept in OUT (default a new /tmp/ledbat_netns.XXXXXX); the report can
# be re-run with `python3 interop/ledbat_netns.py report OUT`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
UTP="$(realpath "${1:-$HERE/../target/release/utp}")"
HELPER="$HERE/ledbat_netns.py"

RATE_MBIT=${RATE_MBIT:-10}
DELAY_MS=${DELAY_MS:-20}
BUFFER_PKTS=${BUFFER_PKTS:-300}
STEADY_S=${STEADY_S:-30}
YIELD_ALONE_S=${YIELD_ALONE_S:-10}
TCP_S=${TCP_S:-30}
YIELD_AFTER_S=${YIELD_AFTER_S:-15}
LATE_S=${LATE_S:-60}
LATE_GAP_S=${LATE_GAP_S:-10}
PREFIX=${NETNS_PREFIX:-ledbat}
SND=$PREFIX-snd
MID=$PREFIX-mid
RCV=$PREFIX-rcv
SND_IP=10.77.0.1
RCV_IP=10.77.0.2

fail() {
    echo "FAIL setup: $*" >&2
    exit 1
}
[ "$(id -u)" = 0 ] || fail "needs root (network namespaces)"
[ -x "$UTP" ] || fail "no utp binary at $UTP (cargo build --release --bin utp)"
for tool in ip ethtool ping python3 setsid chrt; do
    command -v "$tool" >/dev/null || fail "$tool missing (apt-get install iproute2 ethtool iputils-ping)"
done

OUT=${OUT:-$(mktemp -d /tmp/ledbat_netns.XXXXXX)}
mkdir -p "$OUT"
echo "logs in $OUT"

# Every background job runs in its own process group (setsid), so a job and
# its children can be stopped by group id.
JOBS=()
cleanup() {
    local pid ns
    for pid in "${JOBS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${JOBS[@]}"; do
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    for ns in "$SND" "$MID" "$RCV"; do
        if ip netns list | grep -qw "$ns"; then
            # Anything still running inside our namespaces was started by us.
            for pid in $(ip netns pids "$ns" 2>/dev/null); do
                kill -KILL "$pid" 2>/dev/null || true
            done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NS CMD...: runs CMD in namespace NS in the background, in its own
# process group; sets LAST to its pid.
start() {
    local ns=$1
    shift
    setsid ip netns exec "$ns" "$@" &
    LAST=$!
    JOBS+=("$LAST")
}

# finish SECONDS PID...: waits for the jobs, up to SECONDS, then stops the
# rest (their group) and says so.
finish() {
    local limit=$1 pid waited=0
    shift
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((limit * 10)) ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "  (job $pid still running after ${limit} s: stopped)"
            kill -TERM -- "-$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

mark() {
    python3 "$HELPER" mark "$1" >>"$OUT/events"
}

# ---------------------------------------------------------------- topology
for ns in "$SND" "$MID" "$RCV"; do
    if ip netns list | grep -qw "$ns"; then
        fail "namespace $ns exists (another run? set NETNS_PREFIX)"
    fi
done
for ns in "$SND" "$MID" "$RCV"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n "$SND" link add s0 type veth peer name m0 netns "$MID"
ip -n "$RCV" link add r0 type veth peer name m1 netns "$MID"
ip -n "$SND" addr add "$SND_IP/24" dev s0
ip -n "$RCV" addr add "$RCV_IP/24" dev r0
for pair in "$SND s0" "$MID m0" "$MID m1" "$RCV r0"; do
    set -- $pair
    # Frames must be real, MTU-sized and checksummed by the kernel: the
    # bridge copies them byte for byte.
    ip netns exec "$1" ethtool -K "$2" rx off tx off sg off tso off gso off gro off >/dev/null 2>&1 || true
    if ip netns exec "$1" ethtool -k "$2" | grep -Eq '^(generic-segmentation-offload|tx-checksumming|generic-receive-offload): on'; then
        fail "offloads still on for $2 in $1"
    fi
    ip -n "$1" link set "$2" up
done
ip -n "$MID" link set m0 promisc on
ip -n "$MID" link set m1 promisc on

start "$MID" chrt -f 20 python3 "$HELPER" bridge --a m0 --b m1 \
    --rate-mbit "$RATE_MBIT" --delay-ms "$DELAY_MS" --buffer "$BUFFER_PKTS" \
    --log "$OUT/bridge.log" --ready "$OUT/bridge.ready"
BRIDGE=$LAST
for _ in $(seq 50); do
    [ -e "$OUT/bridge.ready" ] && break
    sleep 0.1
done
[ -e "$OUT/bridge.ready" ] || fail "bridge did not start"
ip netns exec "$SND" ping -c 3 -i 0.2 -W 2 "$RCV_IP" >/dev/null || fail "no connectivity through the bridge"
sysctl -n net.ipv4.tcp_available_congestion_control | grep -qw cubic ||
    modprobe tcp_cubic 2>/dev/null || true

echo "link: ${RATE_MBIT} Mbit/s, ${DELAY_MS} ms one way each direction, ${BUFFER_PKTS}-packet drop-tail buffer"
start "$SND" ping -D -i 0.1 "$RCV_IP" >"$OUT/ping.log" 2>&1
mark idle_start
sleep 3
mark idle_end

# utp_flow NAME PORT SECONDS MARK: a uTP flow snd -> rcv, SECONDS of data;
# MARK is recorded just before the sender starts. Sets RX and TX to the
# receiver's and sender's job ids.
utp_flow() {
    local name=$1 port=$2 secs=$3
    start "$RCV" sh -c "'$UTP' listen $RCV_IP:$port --quiet --stats-json '$OUT/$name.rx.json' </dev/null 2>'$OUT/$name.rx.err' | python3 '$HELPER' sink --log '$OUT/$name.count'"
    RX=$LAST
    sleep 0.3
    mark "$4"
    start "$SND" sh -c "python3 '$HELPER' source --seconds $secs | '$UTP' connect $RCV_IP:$port --quiet --stats-json '$OUT/$name.stats.json' >/dev/null 2>'$OUT/$name.tx.err'"
    TX=$LAST
}

# ---------------------------------------------------------------- 1 steady
echo "1/3 steady: uTP alone for ${STEADY_S} s"
utp_flow steady_utp 4001 "$STEADY_S" steady_start
sleep "$STEADY_S"
mark steady_end
finish 10 "$TX" "$RX"
sleep 2

# ---------------------------------------------------------------- 2 yield
echo "2/3 yield: uTP alone ${YIELD_ALONE_S} s, TCP CUBIC joins for ${TCP_S} s, uTP alone ${YIELD_AFTER_S} s"
start "$RCV" python3 "$HELPER" sink --tcp 5001 --log "$OUT/yield_tcp.count"
TCPRX=$LAST
utp_flow yield_utp 4002 $((YIELD_ALONE_S + TCP_S + YIELD_AFTER_S)) yield_start
sleep "$YIELD_ALONE_S"
mark tcp_join
start "$SND" python3 "$HELPER" tcpsend --to "$RCV_IP:5001" --seconds "$TCP_S" --cc cubic
TCPTX=$LAST
sleep "$TCP_S"
finish 5 "$TCPTX"
mark tcp_leave
sleep "$YIELD_AFTER_S"
mark yield_end
finish 10 "$TX" "$RX" "$TCPRX"
sleep 2

# ---------------------------------------------------------------- 3 latecomer
echo "3/3 latecomer: two uTP flows, the second ${LATE_GAP_S} s later, ${LATE_S} s in all"
utp_flow late_first 4003 "$LATE_S" late_start
TX1=$TX RX1=$RX
sleep "$LATE_GAP_S"
utp_flow late_second 4004 $((LATE_S - LATE_GAP_S)) late_second
sleep $((LATE_S - LATE_GAP_S))
mark late_end
finish 10 "$TX1" "$RX1" "$TX" "$RX"

kill -TERM -- "-$BRIDGE" 2>/dev/null || true
finish 5 "$BRIDGE"

python3 "$HELPER" report "$OUT" --rate-mbit "$RATE_MBIT" | tee "$OUT/report.txt"

echo
echo "=== simulator, same shapes (utp sim; its own durations: steady 60 s, yield 20-60 s of 80, latecomer 90 s) ==="
for sc in steady yield latecomer; do
    "$UTP" sim --scenario "$sc" || true
done
