#!/usr/bin/python3
"""Download a torrent from a real libtorrent seed over uTP, through `utp`.

The seed is libtorrent-rasterbar (Debian python3-libtorrent) configured for
uTP only on 127.0.0.1. Our side is the `utp` command (`connect`, or `listen`
with libtorrent connecting to us); this script speaks the BitTorrent peer
wire protocol through its stdin/stdout and checks every piece's SHA-1.

usage: bt_fetch.py UTP_BINARY {connect|listen} [SIZE_MIB]
Exit 0 and a summary line on success; non-zero with a reason otherwise.
"""
import hashlib
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time

import libtorrent as lt

BLOCK = 16384


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def session_settings(port, alert_mask):
    """A libtorrent session on 127.0.0.1:port speaking uTP only, unencrypted,
    with every discovery mechanism off (shared with run.py)."""
    return {
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False,
        "enable_outgoing_tcp": False, "enable_incoming_tcp": False,
        "enable_outgoing_utp": True, "enable_incoming_utp": True,
        "allow_multiple_connections_per_ip": True,
        "out_enc_policy": 2, "in_enc_policy": 2,
        "alert_mask": alert_mask,
    }


def make_seed(tmp, size):
    path = os.path.join(tmp, "payload.bin")
    with open(path, "wb") as f:
        f.write(random.Random(1).randbytes(size))
    fs = lt.file_storage()
    lt.add_files(fs, path)
    # v1 only: a hybrid torrent makes libtorrent greet with the v2 hash.
    t = lt.create_torrent(fs, 4 * BLOCK, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(t, tmp)
    ti = lt.torrent_info(t.generate())
    port = free_udp_port()
    ses = lt.session(session_settings(port, lt.alert.category_t.error_notification))
    h = ses.add_torrent({"ti": ti, "save_path": tmp})
    deadline = time.time() + 30
    while h.status().state != lt.torrent_status.seeding:
        if time.time() > deadline:
            raise SystemExit("libtorrent did not start seeding")
        time.sleep(0.1)
    return ses, h, ti, port


class Wire:
    def __init__(self, proc):
        self.proc = proc

    def send(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, n):
        out = b""
        while len(out) < n:
            chunk = self.proc.stdout.read(n - len(out))
            if not chunk:
                raise SystemExit(f"stream ended after {len(out)} of {n} bytes")
            out += chunk
        return out

    def message(self):
        (length,) = struct.unpack(">I", self.recv(4))
        if length == 0:
            return None, b""
        body = self.recv(length)
        return body[0], body[1:]


def main():
    utp, mode = sys.argv[1], sys.argv[2]
    size = int(sys.argv[3] if len(sys.argv) > 3 else 16) << 20
    tmp = tempfile.mkdtemp()
    ses, h, ti, lt_port = make_seed(tmp, size)
    info_hash = ti.info_hash().to_bytes()
    if mode == "connect":
        proc = subprocess.Popen([utp, "connect", f"127.0.0.1:{lt_port}", "-q"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    else:
        port = free_udp_port()
        proc = subprocess.Popen([utp, "listen", f"127.0.0.1:{port}", "-q"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        time.sleep(0.3)
        h.connect_peer(("127.0.0.1", port))
    wire = Wire(proc)
    hs = b"\x13BitTorrent protocol" + bytes(8) + info_hash + b"-UT0001-" + os.urandom(12)
    wire.send(hs)
    theirs = wire.recv(68)
    assert theirs[28:48] == info_hash, "info hash mismatch in handshake"
    wire.send(struct.pack(">IB", 1, 2))  # interested
    unchoked = False
    while not unchoked:
        mid, _ = wire.message()
        unchoked = mid == 1
    # Throughput is measured from the unchoke on: libtorrent may take a
    # while to act on connect_peer, which says nothing about uTP.
    start = time.time()
    pieces = ti.num_pieces()
    requests = []
    for i in range(pieces):
        plen = ti.piece_size(i)
        for b in range(0, plen, BLOCK):
            requests.append((i, b, min(BLOCK, plen - b)))
    got = {}
    pipeline = 64
    sent = 0
    received = 0
    while received < len(requests):
        while sent < len(requests) and sent - received < pipeline:
            wire.send(struct.pack(">IBIII", 13, 6, *requests[sent]))
            sent += 1
        mid, body = wire.message()
        if mid == 7:
            idx, begin = struct.unpack(">II", body[:8])
            got.setdefault(idx, {})[begin] = body[8:]
            received += 1
        elif mid == 0:
            raise SystemExit("choked mid-transfer")
    for i in range(pieces):
        data = b"".join(got[i][b] for b in sorted(got[i]))
        if hashlib.sha1(data).digest() != ti.hash_for_piece(i):
            raise SystemExit(f"piece {i} fails its SHA-1")
    elapsed = time.time() - start
    proc.stdin.close()
    # libtorrent closes its side once we are gone; give it time to FIN.
    h.pause()
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit("utp did not exit after close")
    if rc != 0:
        raise SystemExit(f"utp exited with {rc}")
    print(f"{mode}: {size >> 20} MiB in {pieces} pieces verified, "
          f"{size / elapsed / 1e6:.1f} MB/s, utp exit {rc}")
    del ses


if __name__ == "__main__":
    main()
