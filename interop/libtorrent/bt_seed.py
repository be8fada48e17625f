#!/usr/bin/python3
"""Seed a torrent to a real libtorrent leecher over uTP, through `utp`.

The other direction of bt_fetch.py: here *we* send the bulk data, so our
path MTU discovery runs against libtorrent's receiver (libtorrent reads
datagrams into a 1,500-byte buffer). `utp listen` carries the BitTorrent
peer wire protocol spoken by this script; libtorrent connects to it,
downloads every piece and checks its SHA-1 (the torrent reaches the
seeding state only when all pieces pass).

usage: bt_seed.py UTP_BINARY [SIZE_MIB] [UTP_OPTION...]
Prints one summary line with our --stats-json figures; exit 0 on success.
With BT_SEED_RELAY set (interop/relay.py options, e.g. "--any-loss 0.01"),
libtorrent connects through the relay, and the line ends with its counts.
"""
import atexit
import json
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time

import libtorrent as lt

from bt_fetch import BLOCK, free_udp_port, session_settings


def main():
    utp = sys.argv[1]
    size = int(sys.argv[2] if len(sys.argv) > 2 else 16) << 20
    extra = sys.argv[3:]
    tmp = tempfile.mkdtemp()
    seed_dir = os.path.join(tmp, "seed")
    leech_dir = os.path.join(tmp, "leech")
    os.makedirs(seed_dir)
    os.makedirs(leech_dir)
    path = os.path.join(seed_dir, "payload.bin")
    payload = random.Random(7).randbytes(size)
    with open(path, "wb") as f:
        f.write(payload)
    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, 16 * BLOCK, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(t, seed_dir)
    ti = lt.torrent_info(t.generate())
    info_hash = ti.info_hash().to_bytes()

    ses = lt.session(session_settings(free_udp_port(), lt.alert.category_t.error_notification))
    h = ses.add_torrent({"ti": ti, "save_path": leech_dir})

    port = free_udp_port()
    stats_path = os.path.join(tmp, "stats.json")
    proc = subprocess.Popen(
        [utp, "listen", f"127.0.0.1:{port}", "-q", "--stats-json", stats_path, *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    relay = None
    relay_log = os.path.join(tmp, "relay.json")
    if os.environ.get("BT_SEED_RELAY"):
        target, port = port, free_udp_port()
        relay = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "relay.py"),
             "--listen", str(port), "--target", str(target), "--log", relay_log]
            + os.environ["BT_SEED_RELAY"].split())
        atexit.register(relay.kill)  # a failure exits through SystemExit
    time.sleep(0.3)
    h.connect_peer(("127.0.0.1", port))

    out = proc.stdout
    buf = b""

    def recv(n, deadline):
        nonlocal buf
        while len(buf) < n:
            if time.time() > deadline:
                raise SystemExit("timed out waiting for libtorrent")
            r, _, _ = select.select([out], [], [], 0.2)
            if r:
                chunk = os.read(out.fileno(), 1 << 16)
                if not chunk:
                    # libtorrent closed (`utp` closes its stdout at the
                    # peer's EOF); whether it got everything is checked
                    # below, as when it goes quiet as a seed.
                    return None
                buf += chunk
            elif h.status().state == lt.torrent_status.seeding:
                return None
        data, buf = buf[:n], buf[n:]
        return data

    deadline = time.time() + 120
    theirs = recv(68, deadline)
    if theirs is None or theirs[28:48] != info_hash:
        raise SystemExit("bad handshake from libtorrent")
    send = proc.stdin
    send.write(b"\x13BitTorrent protocol" + bytes(8) + info_hash + b"-TU0001-" + os.urandom(12))
    pieces = ti.num_pieces()
    bits = bytearray((pieces + 7) // 8)
    for i in range(pieces):
        bits[i // 8] |= 0x80 >> (i % 8)
    send.write(struct.pack(">IB", 1 + len(bits), 5) + bytes(bits))
    send.write(struct.pack(">IB", 1, 1))  # unchoke
    send.flush()
    start = time.time()
    served = 0
    plen = ti.piece_length()
    while True:
        head = recv(4, deadline)
        if head is None:
            break
        (length,) = struct.unpack(">I", head)
        if length == 0:
            continue
        body = recv(length, deadline)
        if body is None:
            break
        if body[0] == 6:  # request
            idx, begin, n = struct.unpack(">III", body[1:13])
            off = idx * plen + begin
            send.write(struct.pack(">IBII", 9 + n, 7, idx, begin) + payload[off:off + n])
            send.flush()
            served += n
    elapsed = time.time() - start
    # Its close can come a moment before its status shows the last piece
    # checked (CI saw 63/64 right at our EOF): give the status time to
    # catch up before judging.
    settle = time.time() + 10
    st = h.status()
    while (st.state != lt.torrent_status.seeding or st.num_pieces != pieces) \
            and time.time() < settle:
        time.sleep(0.1)
        st = h.status()
    if st.state != lt.torrent_status.seeding or st.num_pieces != pieces:
        raise SystemExit(f"libtorrent has {st.num_pieces}/{pieces} pieces")
    send.close()
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit("utp did not exit after close")
    stats = json.load(open(stats_path))
    through = ""
    if relay:
        relay.terminate()
        relay.wait(timeout=10)
        r = json.load(open(relay_log))
        through = ", relay " + " ".join(
            f"{d}: lost={r[d]['lost_any']} duplicated={r[d]['duplicated']} reordered={r[d]['reordered']}"
            for d in ("c2s", "s2c"))
    print(f"{size >> 20} MiB to libtorrent, {pieces} pieces SHA-1 verified by libtorrent, "
          f"{served / elapsed / 1e6:.1f} MB/s, utp exit {rc}, payload_size {stats['payload_size']}, "
          f"max_payload_sent {stats['max_payload_sent']}, probes {stats['pmtud_probes']} "
          f"(lost {stats['pmtud_probes_lost']}), search {stats['pmtud_search_s']} s, "
          f"black holes {stats['pmtud_black_holes']}, retransmitted {stats['packets_retransmitted']} "
          f"(timeouts {stats.get('timeouts')}, tail loss probes {stats.get('tail_loss_probes')}, "
          f"zero-window probes {stats.get('zero_window_probes')}){through}")
    del ses
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
