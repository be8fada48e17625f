#!/usr/bin/env bash
# Path MTU discovery over a real (namespaced) network. Root only.
#
#   A (10.77.1.1, MTU 1500) -- R (router) -- B (10.77.2.1)
#                     1500-byte link    1280-byte link
#
# R delays each direction by 10 ms where the kernel has netem (20 ms RTT;
# without it, loopback-like ~2 ms through veth). Three runs of
# `utp connect` (in A) -> `utp listen` (in B), SIZE_MIB bytes each, checked
# bit-exact, with the sender's --stats-json figures:
#   1. black hole: R's nftables drops the ICMP "fragmentation needed" it
#      would send, so packets over 1280 bytes vanish silently; the search
#      must settle on a payload that fits 1280 (1232 max).
#   2. ICMP allowed: same, and the search ends sooner (a lost probe makes
#      the sender read the path MTU the kernel learnt from the ICMP).
#   3. MTU drop mid-transfer: the 2nd link starts at 1500 and R's side of
#      it drops to 1280 once a quarter of the data arrived, ICMP dropped:
#      the connection must detect the black hole, fall back and finish.
#   4. The same drop with ICMP allowed: the size follows the MTU the
#      router's "fragmentation needed" names (read from the socket's error
#      queue), with no black hole.
#
# usage: interop/pmtud_netns.sh PATH_TO_UTP [SIZE_MIB]
set -euo pipefail
UTP="$(realpath "$1")"
MIB="${2:-32}"
[ "$(id -u)" -eq 0 ] || { echo "FAIL: needs root (network namespaces)"; exit 1; }
command -v nft >/dev/null || { echo "FAIL: nft (nftables) not found"; exit 1; }

ID=$$
A="pmtud-a-$ID" R="pmtud-r-$ID" B="pmtud-b-$ID"
WORK="$(mktemp -d)"
cleanup() {
    for ns in "$A" "$R" "$B"; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for ns in "$A" "$R" "$B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add "a$ID" type veth peer name "ra$ID"
ip link add "b$ID" type veth peer name "rb$ID"
ip link set "a$ID" netns "$A"; ip link set "ra$ID" netns "$R"
ip link set "b$ID" netns "$B"; ip link set "rb$ID" netns "$R"
ip -n "$A" addr add 10.77.1.1/24 dev "a$ID"
ip -n "$R" addr add 10.77.1.254/24 dev "ra$ID"
ip -n "$R" addr add 10.77.2.254/24 dev "rb$ID"
ip -n "$B" addr add 10.77.2.1/24 dev "b$ID"
for l in "$A a$ID" "$R ra$ID" "$R rb$ID" "$B b$ID"; do set -- $l; ip -n "$1" link set "$2" up; done
ip -n "$A" route add default via 10.77.1.254
ip -n "$B" route add default via 10.77.2.254
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
NETEM=yes
for dev in "ra$ID" "rb$ID"; do
    ip netns exec "$R" tc qdisc add dev "$dev" root netem delay 10ms limit 10000 2>/dev/null || NETEM=no
done

head -c $((MIB << 20)) /dev/urandom > "$WORK/in.bin"

# link_mtu MTU: the 1280 link's MTU on both ends (B's side and R's side).
link_mtu() {
    ip -n "$R" link set "rb$ID" mtu "$1"
    ip -n "$B" link set "b$ID" mtu "$1"
}
# icmp block|allow: R's ICMP "fragmentation needed" (type 3 code 4).
icmp() {
    ip netns exec "$R" nft delete table inet pmtud 2>/dev/null || true
    if [ "$1" = block ]; then
        ip netns exec "$R" nft -f - <<'EOF'
table inet pmtud {
    chain out {
        type filter hook output priority 0; policy accept;
        icmp type destination-unreachable icmp code frag-needed counter drop
    }
}
EOF
    fi
}
icmp_dropped() {
    ip netns exec "$R" nft list table inet pmtud 2>/dev/null | grep -o 'packets [0-9]*' | awk '{print $2}' || echo 0
}

FAILED=0
# run NAME [ACTION_DURING_TRANSFER]: one transfer A -> B, checked and reported.
run() {
    local name="$1" during="${2:-}"
    # Forget what the kernel learnt from earlier runs (route exceptions).
    ip -n "$A" route flush cache 2>/dev/null || true
    rm -f "$WORK"/out.bin "$WORK"/a.json "$WORK"/b.json
    ip netns exec "$B" timeout 120 "$UTP" listen 10.77.2.1:4000 -q --stats-json "$WORK/b.json" \
        < /dev/null > "$WORK/out.bin" &
    local lpid=$!
    sleep 0.3
    local start end rc=0
    start=$(date +%s.%N)
    ip netns exec "$A" timeout 120 "$UTP" connect 10.77.2.1:4000 -q --stats-json "$WORK/a.json" \
        < "$WORK/in.bin" > /dev/null &
    local cpid=$!
    if [ -n "$during" ]; then $during "$cpid"; fi
    wait "$cpid" || rc=$?
    end=$(date +%s.%N)
    wait "$lpid" || rc=$?
    local verdict
    if [ "$rc" -ne 0 ]; then
        verdict="FAIL (exit $rc)"
    elif ! cmp -s "$WORK/in.bin" "$WORK/out.bin"; then
        verdict="FAIL (not bit-exact)"
    elif [ -n "$during" ] && [ ! -e "$WORK/during.done" ]; then
        verdict="FAIL (the transfer ended before the path changed)"
    else
        verdict=ok
    fi
    python3 - "$WORK/a.json" "$name" "$verdict" "$start" "$end" "$MIB" "$(icmp_dropped)" <<'EOF'
import json, sys
path, name, verdict, start, end, mib, icmp_dropped = sys.argv[1:]
s = json.load(open(path)) if verdict == "ok" else {}
secs = float(end) - float(start)
if s:
    size = s["payload_size"]
    fits = size + 20 + 28 <= 1280
    tight = size + 20 + 28 + 16 >= 1280
    if not (fits and tight):
        verdict = f"FAIL (payload {size} does not fit 1280 tightly)"
    elif "ICMP allowed" in name and s["pmtud_black_holes"]:
        # The router said the size (and the report quotes our packet): no
        # black hole to find by losses.
        verdict = "FAIL (a black hole found by losses although ICMP told the size)"
    search = s["pmtud_search_s"]
    rtt = s["rtt_ms"]
    print(f"{'ok  ' if verdict == 'ok' else verdict} {name}: {mib} MiB bit-exact in {secs:.2f} s "
          f"({int(mib) * 1048576 / secs / 1e6:.1f} MB/s); payload {size} B "
          f"(IP packet {size + 48} B), largest sent {s['max_payload_sent']} B; "
          f"search {'n/a' if search is None else f'{search * 1e3:.0f} ms'}"
          f"{'' if search is None or not rtt else f' = {search * 1e3 / rtt:.1f} RTT'} "
          f"(rtt {rtt:.1f} ms); probes {s['pmtud_probes']} sent, {s['pmtud_probes_lost']} lost; "
          f"black holes {s['pmtud_black_holes']}; retransmitted {s['packets_retransmitted']}, "
          f"timeouts {s['timeouts']}; ICMP frag-needed dropped by R: {icmp_dropped}")
else:
    print(f"{verdict} {name}")
sys.exit(0 if verdict == "ok" else 1)
EOF
    [ $? -eq 0 ] || FAILED=1
}

echo "pmtud netns: A -(1500)- R -(1280)- B, netem 10 ms each way: $NETEM"
link_mtu 1280
icmp block
run "1 black hole (ICMP dropped)" || FAILED=1
icmp allow
run "2 ICMP allowed" || FAILED=1
link_mtu 1500
icmp block
# drop_mtu PID: once a quarter of the data reached B, R's side of the
# second link drops to 1280 (B's side stays 1500, so B still takes what R
# fragments).
drop_mtu() {
    rm -f "$WORK/during.done"
    while kill -0 "$1" 2>/dev/null; do
        if [ "$(stat -c %s "$WORK/out.bin" 2>/dev/null || echo 0)" -ge $((MIB << 18)) ]; then
            ip -n "$R" link set "rb$ID" mtu 1280
            touch "$WORK/during.done"
            return
        fi
        sleep 0.005
    done
}
run "3 MTU 1500 -> 1280 mid-transfer, ICMP dropped" drop_mtu || FAILED=1
link_mtu 1500
icmp allow
# The same drop with R's ICMP let through: the report reaches the socket's
# error queue (IP_RECVERR), quoting our packet, and the size drops to the
# MTU it names at once, without waiting for black-hole evidence.
run "4 MTU 1500 -> 1280 mid-transfer, ICMP allowed" drop_mtu || FAILED=1
if [ "$FAILED" -ne 0 ]; then echo "pmtud netns FAILED"; exit 1; fi
echo "pmtud netns passed"
