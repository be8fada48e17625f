#!/usr/bin/python3
"""Interop tests against Transmission (Debian transmission-daemon 3.00) over uTP.

usage: /usr/bin/python3 interop/transmission/run.py UTP_BINARY BT_FETCH_BINARY [CASE...]

Transmission 3.00 carries its own copy of libutp, the original C++ library
with the pre-2013 `UTP_*` API: an older code base than utp-native's (see
interop/README.md). A `transmission-daemon` per case runs on a loopback
address with uTP on, DHT, LPD, PEX, port mapping and encryption off, and is
driven through its JSON RPC. It finds our listening side through a tracker this
script runs (HTTP, compact peer list, our address only).

Transmission takes no peer on 127.0.0.0/8 from a tracker (it counts them
as martian addresses), so the script runs itself in a network namespace of
its own (root; `ip netns`) whose loopback also carries 10.99.0.1
(Transmission) and 10.99.0.2 (our side). The namespace is removed at exit.
TR_KEEP=1 keeps each case's directory (with Transmission's log) and
TR_LOG_LEVEL=3 makes that log verbose.

Cases (without CASE arguments all run; otherwise those whose names start
with an argument):
- t1: the `bt_fetch` example connects to Transmission's seed, fetches every
  piece (SHA-1 checked) and closes first.
- t2: Transmission downloads from `utp listen`, behind which this script
  speaks the peer wire protocol as a seed; Transmission checks every piece.
- t3: sequence numbers wrap: 96 MiB from Transmission's sender (about
  70,000 packets of its 1,382-byte payloads or less).
- t4: 3% seeded loss of Transmission's DATA (through interop/relay.py).
- t5: 3% seeded loss of our DATA, Transmission downloading.
- t6: we send FIN first; Transmission never answers with its own and
  resets the connection instead (a quirk this case pins down).

Every case records the uTP headers on Transmission's port with tcpdump (the
capture code is libtorrent/run.py's) and fails on any ST_RESET of ours, and
on one of Transmission's unless it came once Transmission was done with the
connection (see `Setup.no_resets`).
"""
import hashlib
import http.server
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "libtorrent"))
# The pcap reader and the case helpers are shared with the libtorrent suite
# (which imports libtorrent at load: interop/run.sh installs it first).
from run import (  # noqa: E402
    Capture, CaseFailed, check, fin_acked, packet_tail, run_cases, stop_process, summarize)

BLOCK = 16384
RELAY = os.path.join(HERE, "..", "relay.py")
TR_HOST = "10.99.0.1"  # Transmission's address in the namespace
US_HOST = "10.99.0.2"  # ours (and the relay's)
NETNS_ENV = "TR_INTEROP_NETNS"


def free_port(host):
    """A port free on `host` for both UDP and TCP (Transmission's peer port
    is both)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((host, 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind((host, port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        return port
    raise CaseFailed("no free port")


# --------------------------------------------------------------------------
# torrents


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, str):
        return bencode(v.encode())
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(type(v))


class Torrent:
    """A single-file v1 torrent of random bytes, announcing to `announce`."""

    def __init__(self, size, piece_len, announce, seed):
        self.payload = random.Random(seed).randbytes(size)
        self.piece_len = piece_len
        self.name = f"payload-{seed}.bin"
        hashes = b"".join(hashlib.sha1(self.payload[i:i + piece_len]).digest()
                          for i in range(0, size, piece_len))
        info = {"name": self.name, "length": size, "piece length": piece_len,
                "pieces": hashes}
        self.hashes = hashes
        self.pieces = len(hashes) // 20
        self.info_hash = hashlib.sha1(bencode(info)).digest()
        self.data = bencode({"announce": announce, "info": info})

    def write(self, tmp, with_payload_in=None):
        path = os.path.join(tmp, f"{self.name}.torrent")
        with open(path, "wb") as f:
            f.write(self.data)
        hashes = os.path.join(tmp, f"{self.name}.hashes")
        with open(hashes, "wb") as f:
            f.write(self.hashes)
        if with_payload_in:
            with open(os.path.join(with_payload_in, self.name), "wb") as f:
                f.write(self.payload)
        return path, hashes


# --------------------------------------------------------------------------
# tracker


class Tracker:
    """An HTTP tracker on 127.0.0.1 that hands out a fixed peer list."""

    def __init__(self):
        self.peers = []
        self.announces = []
        tracker = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                q = urllib.parse.urlparse(self.path)
                tracker.announces.append(urllib.parse.parse_qs(q.query))
                compact = b"".join(socket.inet_aton(h) + struct.pack(">H", p)
                                   for h, p in tracker.peers)
                body = bencode({"interval": 1800, "min interval": 1800, "peers": compact})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/announce"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------
# transmission-daemon


class Daemon:
    """One transmission-daemon in the foreground, with its own config dir."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "tr")
        self.downloads = os.path.join(self.dir, "downloads")
        os.makedirs(self.downloads)
        self.port = free_port(TR_HOST)
        self.rpc_port = free_port("127.0.0.1")
        settings = {
            "dht-enabled": False, "lpd-enabled": False, "pex-enabled": False,
            "utp-enabled": True, "port-forwarding-enabled": False,
            "encryption": 0,  # tolerate plaintext: our side does not encrypt
            "peer-port": self.port, "peer-port-random-on-start": False,
            "bind-address-ipv4": TR_HOST, "bind-address-ipv6": "::1",
            "rpc-port": self.rpc_port, "rpc-bind-address": "127.0.0.1",
            "rpc-authentication-required": False, "rpc-whitelist-enabled": False,
            "rpc-host-whitelist-enabled": False,
            "download-dir": self.downloads, "incomplete-dir-enabled": False,
            "speed-limit-up-enabled": False, "speed-limit-down-enabled": False,
            "alt-speed-enabled": False, "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False, "blocklist-enabled": False,
            "start-added-torrents": True, "cache-size-mb": 16,
            "message-level": int(os.environ.get("TR_LOG_LEVEL", "2")),
        }
        with open(os.path.join(self.dir, "settings.json"), "w") as f:
            json.dump(settings, f)
        self.log = os.path.join(self.dir, "log.txt")
        # At TR_LOG_LEVEL=3 its per-peer ("deep") log goes to deep.txt too.
        deep = os.environ.get("TR_LOG_LEVEL") == "3"
        self.stderr = open(os.path.join(self.dir, "deep.txt"), "w") if deep else None
        self.proc = subprocess.Popen(
            ["transmission-daemon", "-f", "-g", self.dir, "-e", self.log],
            stdout=subprocess.DEVNULL, stderr=self.stderr or subprocess.DEVNULL,
            env={**os.environ, "TR_DEBUG_FD": "2"} if deep else None)
        self.session_id = ""
        deadline = time.time() + 15
        while True:
            try:
                self.rpc("session-get")
                break
            except (OSError, urllib.error.URLError):
                if time.time() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise CaseFailed("transmission-daemon did not start: " + self.log_tail())
                time.sleep(0.1)

    def rpc(self, method, **args):
        body = json.dumps({"method": method, "arguments": args}).encode()
        for _ in range(2):
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.rpc_port}/transmission/rpc", data=body,
                headers={"X-Transmission-Session-Id": self.session_id})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    out = json.load(r)
                check(out.get("result") == "success", f"rpc {method}: {out.get('result')}")
                return out["arguments"]
            except urllib.error.HTTPError as e:
                if e.code != 409:
                    raise
                self.session_id = e.headers["X-Transmission-Session-Id"]
        raise CaseFailed(f"rpc {method}: no session id")

    def add(self, torrent_path):
        r = self.rpc("torrent-add", filename=torrent_path, **{"download-dir": self.downloads})
        t = r.get("torrent-added") or r.get("torrent-duplicate")
        check(t is not None, f"torrent-add gave {r}")
        return t["id"]

    def status(self, tid):
        fields = ["percentDone", "haveValid", "status", "error", "errorString",
                  "peersConnected", "rateDownload", "rateUpload"]
        ts = self.rpc("torrent-get", ids=[tid], fields=fields)["torrents"]
        check(ts, f"torrent {tid} gone")
        return ts[0]

    def wait_for(self, tid, cond, what, timeout):
        deadline = time.time() + timeout
        while True:
            st = self.status(tid)
            if cond(st):
                return st
            check(not st.get("error"), f"transmission: {st.get('errorString')}")
            if time.time() > deadline:
                raise CaseFailed(f"timed out waiting for {what}: {st}; {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, n=5):
        try:
            with open(self.log) as f:
                lines = f.read().splitlines()
        except OSError:
            return "no log"
        return "log: " + " | ".join(lines[-n:])

    def close(self):
        if self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM)
        if self.stderr:
            self.stderr.close()


class Setup:
    """Tracker, daemon and capture for one case; `close` ends them all."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="tr-interop-")
        self.tracker = Tracker()
        self.daemon = None
        self.capture = None

    def start(self):
        self.daemon = Daemon(self.tmp)
        self.capture = Capture(self.daemon.port, self.tmp)

    def no_resets(self):
        """Stops the capture; fails on any ST_RESET of ours, and on any of
        Transmission's that came before it had finished with the
        connection (see below). Returns the summary."""
        self.capture.stop()
        s = summarize(self.capture.packets())
        check(s["lt"] and s["us"], "the capture saw no uTP both ways")
        ours = [p for p in s["resets"] if not p["from_lt"]]
        check(not ours, f"{len(ours)} ST_RESET from us: {packet_tail(s)}")
        theirs = [p for p in s["resets"] if p["from_lt"]]
        # The original libutp forgets a connection once it acked our FIN
        # (we closed first) or its own FIN was acked (it closed first; it
        # then never acks our FIN): any later packet of ours, our FIN or a
        # keep-alive, gets a RESET. Our side has everything by then.
        fin = s["us_fins"][0] if s["us_fins"] else None
        done_at = None
        if fin:
            acks = [r["t"] for r in s["lt"]
                    if r["type"] in (1, 2) and r["ack"] == fin["seq"] and r["t"] >= fin["t"]]
            if acks:
                done_at = min(acks)
            elif any(f["t"] <= fin["t"] for f in s["lt_fins"]):
                done_at = fin["t"]
        early = [r for r in theirs if done_at is None or r["t"] < done_at]
        check(not early, f"{len(early)} ST_RESET from Transmission before the close: "
              + packet_tail(s))
        s["their_resets"] = theirs
        return s

    def close(self):
        if self.capture:
            self.capture.stop()
        if self.daemon:
            self.daemon.close()
        self.tracker.close()
        if os.environ.get("TR_KEEP"):
            print(f"kept {self.tmp} (tracker announces: {len(self.tracker.announces)})")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_case(fn, ctx):
    s = Setup()
    try:
        s.start()
        return fn(ctx, s)
    finally:
        s.close()


# --------------------------------------------------------------------------
# our sides


def stats_line(out):
    for line in out.splitlines():
        if line.startswith("stats "):
            return dict(kv.split("=", 1) for kv in line[6:].split())
    return {}


def fetch(ctx, s, size, piece_len, seed, via_relay=None, timeout=180, end="close"):
    """Transmission seeds `size` random bytes; bt_fetch connects (directly
    or through a relay), fetches them and ends the connection (`end`: bt_fetch's
    --end, close or abort). Returns (stdout, stats, torrent); the torrent's
    `tid` is Transmission's id for it."""
    t = Torrent(size, piece_len, s.tracker.url, seed)
    path, hashes = t.write(s.tmp, with_payload_in=s.daemon.downloads)
    tid = t.tid = s.daemon.add(path)
    # Transmission checks the file it was given before it seeds it.
    s.daemon.wait_for(tid, lambda st: st["percentDone"] == 1 and st["haveValid"] == size,
                      "the seed's check", 60)
    target = f"{TR_HOST}:{s.daemon.port}" if via_relay is None else f"{US_HOST}:{via_relay}"
    out_file = os.path.join(s.tmp, "fetched.bin")
    r = subprocess.run(
        [ctx["bt_fetch"], "connect", target, t.info_hash.hex(), hashes, str(piece_len),
         str(size), out_file, "--stats", "--end", end, "--timeout", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 30)
    out = r.stdout
    check(r.returncode == 0, f"bt_fetch exit {r.returncode}: {out[-400:]} {r.stderr[-400:]}; "
          + s.daemon.log_tail())
    check("SHA-1 verified" in out, f"no verified fetch: {out[-300:]}")
    ended = "aborted" if end == "abort" else "close ok"
    check(ended in out, f"our {end} did not complete: {out[-300:]}")
    with open(out_file, "rb") as f:
        check(f.read() == t.payload, "the fetched file differs from the seed's")
    return out, stats_line(out), t


def mbps(out):
    for line in out.splitlines():
        if line.startswith("fetched "):
            return line.split(", ")[-1]
    return "?"


class Seeder:
    """`utp listen` with this script behind it speaking the peer wire
    protocol as a seed of `t` (bitfield, unchoke, pieces on request)."""

    def __init__(self, ctx, s, t):
        self.t = t
        self.port = free_port(US_HOST)
        self.stats_path = os.path.join(s.tmp, "seed-stats.json")
        self.proc = subprocess.Popen(
            [ctx["utp"], "listen", f"{US_HOST}:{self.port}", "-q",
             "--stats-json", self.stats_path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        self.served = 0
        self.first_request = None
        self.error = None
        self.eof = threading.Event()
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def recv(self, n):
        out = self.proc.stdout
        while len(self.buf) < n:
            r, _, _ = select.select([out], [], [], 0.2)
            if r:
                chunk = os.read(out.fileno(), 1 << 16)
                if not chunk:
                    return None
                self.buf += chunk
            elif self.stop:
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def serve(self):
        try:
            t, send = self.t, self.proc.stdin
            theirs = self.recv(68)
            if theirs is None:
                raise RuntimeError("no handshake from transmission")
            if theirs[28:48] != t.info_hash:
                raise RuntimeError(f"handshake for another torrent: {theirs[28:48].hex()}")
            send.write(b"\x13BitTorrent protocol" + bytes(8) + t.info_hash
                       + b"-TU0001-" + os.urandom(12))
            send.flush()
            # Transmission 3.00 reads nothing that came in the same uTP
            # packet as the handshake until more data arrives: a bitfield
            # riding on it sat unread (and the download waited) until a
            # keep-alive two minutes later. So it goes in a packet of its own.
            time.sleep(0.3)
            bits = bytearray((t.pieces + 7) // 8)
            for i in range(t.pieces):
                bits[i // 8] |= 0x80 >> (i % 8)
            send.write(struct.pack(">IB", 1 + len(bits), 5) + bytes(bits))
            send.write(struct.pack(">IB", 1, 1))  # unchoke
            send.flush()
            while True:
                head = self.recv(4)
                if head is None:
                    break
                (length,) = struct.unpack(">I", head)
                if length == 0:
                    continue
                body = self.recv(length)
                if body is None:
                    break
                if body[0] == 6:  # request
                    if self.first_request is None:
                        self.first_request = time.time()
                    idx, begin, n = struct.unpack(">III", body[1:13])
                    off = idx * t.piece_len + begin
                    send.write(struct.pack(">IBII", 9 + n, 7, idx, begin)
                               + t.payload[off:off + n])
                    send.flush()
                    self.served += n
            if not self.stop:
                self.eof.set()
        except Exception as e:  # reported by finish()
            self.error = e
            self.eof.set()

    def start(self):
        self.thread.start()

    def finish(self):
        """Closes our side (FIN) and waits for `utp listen` to exit."""
        self.stop = True
        self.thread.join(timeout=10)
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise CaseFailed("utp listen did not exit after our close")
        err = self.proc.stderr.read().decode(errors="replace")
        check(self.error is None, f"seeder: {self.error}")
        check(rc == 0, f"utp listen exit {rc}: {err[-300:]}")
        with open(self.stats_path) as f:
            return json.load(f)


def seed_to_transmission(ctx, s, size, piece_len, seed, loss=None, timeout=180):
    """Transmission downloads `size` random bytes from our seeder, finding it
    through the tracker (directly, or through a lossy relay)."""
    t = Torrent(size, piece_len, s.tracker.url, seed)
    path, _ = t.write(s.tmp)
    seeder = Seeder(ctx, s, t)
    relay = relay_log = None
    peer_port = seeder.port
    if loss is not None:
        relay_port = free_port(US_HOST)
        relay_log = os.path.join(s.tmp, "relay.json")
        relay = subprocess.Popen(
            [sys.executable, RELAY, "--listen", str(relay_port), "--target", str(seeder.port),
             "--host", US_HOST, "--target-host", US_HOST,
             "--drop-dir", "s2c", "--loss", str(loss), "--seed", "7", "--log", relay_log])
        peer_port = relay_port
    s.tracker.peers = [(US_HOST, peer_port)]
    time.sleep(0.3)
    seeder.start()
    try:
        tid = s.daemon.add(path)
        st = s.daemon.wait_for(tid, lambda st: st["percentDone"] == 1 and st["haveValid"] == size,
                               "Transmission's download", timeout)
        # From its first request: Transmission first waits for its next
        # 10 s "rechoke" pulse before it asks for anything.
        elapsed = time.time() - seeder.first_request
        # Transmission checked every piece's SHA-1 as it came (haveValid);
        # the file on its disk is compared as well once it is written out.
        got = os.path.join(s.daemon.downloads, t.name)
        deadline = time.time() + 10
        while True:
            try:
                with open(got, "rb") as f:
                    same = f.read() == t.payload
            except FileNotFoundError:  # still in its write cache
                same = False
            if same or time.time() > deadline:
                break
            time.sleep(0.2)
        check(same, "Transmission's file differs from ours")
        # Now a seed itself, Transmission closes its connections to seeds
        # (FIN). It closes first: had we sent our FIN first, it would never
        # send one (see case t6).
        check(seeder.eof.wait(20), "Transmission did not close the connection "
              "after its download")
        stats = seeder.finish()
    finally:
        if seeder.proc.poll() is None:
            seeder.proc.kill()
        if relay:
            stop_process(relay, signal.SIGTERM)
    rlog = None
    if relay_log:
        with open(relay_log) as f:
            rlog = json.load(f)
    return st, stats, rlog, elapsed, t


# --------------------------------------------------------------------------
# cases


def case_t1(ctx, s):
    out, st, _ = fetch(ctx, s, 32 << 20, 4 * BLOCK, seed=1)
    summ = s.no_resets()
    ctx["quirks"]["tr_payloads"] = f"{summ['lt_payloads'][:3]}..{summ['lt_payloads'][-1:]}"
    if summ["lt_syn"]:
        ctx["quirks"]["tr_syn_ext"] = [e[0] for e in summ["lt_syn"][0]["ext"]]
    fins = summ["us_fins"]
    check(fins, "we sent no FIN")
    return (f"32 MiB, {mbps(out)}, packets_received={st.get('packets_received')}, "
            f"our retransmitted={st.get('retransmitted')}, Transmission's max payload "
            f"{max(summ['lt_payloads'])}")


def case_t2(ctx, s):
    st, stats, _, elapsed, t = seed_to_transmission(ctx, s, 16 << 20, 4 * BLOCK, seed=2)
    summ = s.no_resets()
    check(summ["lt_syn"], "Transmission did not connect over uTP")
    ctx["quirks"]["tr_syn_ext"] = [e[0] for e in summ["lt_syn"][0]["ext"]]
    ctx["quirks"]["our_payload_to_tr"] = stats["payload_size"]
    return (f"16 MiB, {t.pieces} pieces SHA-1 checked by Transmission, "
            f"{len(t.payload) / elapsed / 1e6:.1f} MB/s, payload_size {stats['payload_size']}, "
            f"max_payload_sent {stats['max_payload_sent']}, probes {stats['pmtud_probes']} "
            f"(lost {stats['pmtud_probes_lost']}), retransmitted "
            f"{stats['packets_retransmitted']} (timeouts {stats.get('timeouts')})")


def case_t3(ctx, s):
    out, st, _ = fetch(ctx, s, 96 << 20, 16 * BLOCK, seed=3, timeout=240)
    s.no_resets()
    received = int(st.get("packets_received", 0))
    check(received > 65536, f"only {received} packets received: the sequence did not wrap")
    return f"96 MiB, {mbps(out)}, packets_received={received}"


def case_t4(ctx, s):
    relay_port = free_port(US_HOST)
    relay_log = os.path.join(s.tmp, "relay.json")
    relay = subprocess.Popen(
        [sys.executable, RELAY, "--listen", str(relay_port), "--target", str(s.daemon.port),
         "--host", US_HOST, "--target-host", TR_HOST,
         "--drop-dir", "s2c", "--loss", "0.03", "--seed", "5", "--log", relay_log])
    time.sleep(0.3)
    try:
        out, st, _ = fetch(ctx, s, 16 << 20, 4 * BLOCK, seed=4, via_relay=relay_port)
    finally:
        stop_process(relay, signal.SIGTERM)
    s.no_resets()
    with open(relay_log) as f:
        rl = json.load(f)
    dropped = rl["s2c"]["dropped"]
    check(dropped > 0, "the relay dropped nothing")
    check(rl["c2s"]["sack_packets"] > 0, "we sent no SACK")
    return (f"16 MiB, {mbps(out)}, {dropped} of Transmission's DATA dropped, "
            f"{rl['c2s']['sack_packets']} of our acks with SACK, "
            f"Transmission resent {rl['s2c']['data_retransmissions']}")


def case_t5(ctx, s):
    st, stats, rl, elapsed, t = seed_to_transmission(ctx, s, 16 << 20, 4 * BLOCK, seed=5,
                                                     loss=0.03)
    s.no_resets()
    dropped = rl["s2c"]["dropped"]
    check(dropped > 0, "the relay dropped nothing")
    check(stats["packets_retransmitted"] > 0, "we retransmitted nothing")
    return (f"16 MiB, {len(t.payload) / elapsed / 1e6:.1f} MB/s, {dropped} of our DATA dropped, "
            f"retransmitted {stats['packets_retransmitted']} (timeouts {stats.get('timeouts')}), "
            f"{rl['c2s']['sack_packets']} of Transmission's acks with SACK")


def case_t6(ctx, s):
    """We send FIN first, right after a BitTorrent handshake: Transmission
    answers the handshake, acks our FIN, and never sends its own (the
    original libutp's close after the peer's FIN is silent). Its next
    packet from us gets a RESET; our keep-alive after the FIN's ack finds
    that out in about a second, and `utp connect` exits 1 on the reset."""
    t = Torrent(1 << 20, 4 * BLOCK, s.tracker.url, seed=6)
    path, _ = t.write(s.tmp, with_payload_in=s.daemon.downloads)
    tid = s.daemon.add(path)
    s.daemon.wait_for(tid, lambda st: st["percentDone"] == 1 and st["haveValid"] == 1 << 20,
                      "the seed's check", 60)
    hello = b"\x13BitTorrent protocol" + bytes(8) + t.info_hash + b"-TU0001-" + os.urandom(12)
    proc = subprocess.Popen([ctx["utp"], "connect", f"{TR_HOST}:{s.daemon.port}", "-q"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(hello)
        proc.stdin.flush()
        # Our FIN only once Transmission answered: a FIN right behind the
        # handshake makes it drop the connection before it replies.
        got = b""
        deadline = time.time() + 20
        while len(got) < 68 and time.time() < deadline:
            r, _, _ = select.select([proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    break
                got += chunk
        check(got[:20] == b"\x13BitTorrent protocol" and got[28:48] == t.info_hash,
              f"no handshake from Transmission: {got[:68]!r}")
        start = time.time()
        proc.stdin.close()
        proc.stdin = None  # closed: communicate() must not flush it
        rest, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.time() - start
    got += rest
    err = err.decode(errors="replace").strip()
    check(proc.returncode == 1 and "reset" in err, f"utp connect exit {proc.returncode}: {err}")
    check(elapsed < 10, f"the reset ended the wait only after {elapsed:.1f} s")
    s.capture.stop()
    summ = summarize(s.capture.packets())
    check(summ["us_fins"], "we sent no FIN")
    check(fin_acked(summ["us_fins"][0], summ["lt"]), "Transmission did not ack our FIN")
    check(not summ["lt_fins"], "Transmission sent a FIN after all")
    theirs = [p for p in summ["resets"] if p["from_lt"]]
    check(theirs and len(theirs) == len(summ["resets"]),
          f"{len(theirs)} RESET from Transmission, {len(summ['resets']) - len(theirs)} of ours: "
          + packet_tail(summ))
    after = theirs[0]["t"] - summ["us_fins"][0]["t"]
    return (f"{len(got)} bytes from Transmission, our FIN acked, no FIN back, its RESET "
            f"{after:.1f} s after our FIN; utp exit 1 {elapsed:.1f} s after our close ({err})")


def case_t7(ctx, s):
    """We abort after the download: one RESET from us, no FIN either way,
    and Transmission drops us as a peer at once."""
    out, _, t = fetch(ctx, s, 4 << 20, 4 * BLOCK, seed=7, end="abort")
    exited = time.time()  # bt_fetch exits 0.2 s after its abort
    s.daemon.wait_for(t.tid, lambda st: st["peersConnected"] == 0,
                      "Transmission dropping us after our RESET", 5)
    dropped = time.time() - exited
    s.capture.stop()
    summ = summarize(s.capture.packets())
    check(not summ["us_fins"], "we sent a FIN; an abort sends none")
    ours = [p for p in summ["resets"] if not p["from_lt"]]
    check(ours, "no RESET from us on the wire: " + packet_tail(summ))
    check(not summ["lt_fins"], "Transmission sent a FIN: " + packet_tail(summ))
    after = [p for p in summ["lt"] if p["t"] > ours[0]["t"]]
    return (f"4 MiB, {mbps(out)}, our RESET seq={ours[0]['seq']} ack={ours[0]['ack']}, "
            f"{len(after)} packets from Transmission after it, no peer left "
            f"{dropped:.1f} s after bt_fetch exited")


CASES = [
    ("t1 bt_fetch connect -> Transmission seed", case_t1),
    ("t2 Transmission downloads from utp listen", case_t2),
    ("t3 sequence wrap, 96 MiB from Transmission", case_t3),
    ("t4 3% loss of Transmission's DATA", case_t4),
    ("t5 3% loss of our DATA, Transmission downloading", case_t5),
    ("t6 we close first: Transmission never sends its FIN, resets later", case_t6),
    ("t7 we abort after the download: RESET, Transmission drops us", case_t7),
]


def in_own_netns():
    """Runs this script again inside a fresh network namespace (see the top)
    and exits with its status; returns at once when already inside one."""
    if os.environ.get(NETNS_ENV):
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        print("FAIL setup: needs root and `ip` for its network namespace")
        sys.exit(1)
    ns = f"tr-interop-{os.getpid()}"
    ip = ["ip", "-n", ns]
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(ip + ["link", "set", "lo", "up"], check=True)
        for a in (TR_HOST, US_HOST):
            subprocess.run(ip + ["addr", "add", f"{a}/32", "dev", "lo"], check=True)
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, *sys.argv],
                           env={**os.environ, NETNS_ENV: ns})
        code = r.returncode
    except subprocess.CalledProcessError as e:
        print(f"FAIL setup: network namespace: {e}")
        code = 1
    finally:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    sys.exit(code)


def main():
    run_cases(CASES, "Transmission", tools=("transmission-daemon", "tcpdump"),
              call=run_case, setup=in_own_netns)


if __name__ == "__main__":
    main()
