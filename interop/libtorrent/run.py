#!/usr/bin/python3
"""Interop tests against libtorrent-rasterbar (Debian python3-libtorrent) over uTP.

usage: /usr/bin/python3 interop/libtorrent/run.py UTP_BINARY BT_FETCH_BINARY [CASE...]

UTP_BINARY is the `utp` command, BT_FETCH_BINARY the `bt_fetch` example of
tokio-utp (cargo build --release -p tokio-utp --example bt_fetch). Without
CASE arguments every case runs; otherwise only the cases whose names start
with one of the arguments (e.g. `a d e.ii`).

A libtorrent session seeds a v1-only torrent over uTP only, on 127.0.0.1.
Every case prints `ok   <case>: ...` or `FAIL <case>: ...`; the exit status is
non-zero if any case failed. While a case runs, tcpdump records the uTP
headers on libtorrent's port; every case asserts that no ST_RESET was sent
by either side.
"""
import json
import os
import queue
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import libtorrent as lt
except ImportError as e:
    print(f"FAIL setup: cannot import libtorrent with {sys.executable}: {e}. "
          "Install Debian python3-libtorrent and run this with /usr/bin/python3.")
    sys.exit(1)

sys.path.insert(0, HERE)
from bt_fetch import free_udp_port, session_settings  # noqa: E402  (shared with bt_fetch.py)

BLOCK = 16384
ST_NAMES = {0: "DATA", 1: "FIN", 2: "STATE", 3: "RESET", 4: "SYN"}
# libtorrent's close_reason_t values seen here (include/libtorrent/close_reason.hpp).
CLOSE_REASONS = {0: "none", 1: "duplicate_peer_id", 2: "torrent_removed",
                 3: "no_memory", 4: "port_blocked", 5: "blocked",
                 6: "upload_to_upload", 7: "not_interested_upload_only",
                 8: "timeout", 9: "timed_out_interest", 10: "timed_out_activity",
                 11: "timed_out_handshake", 12: "timed_out_request",
                 13: "protocol_blocked", 14: "peer_churn", 15: "too_many_connections",
                 16: "too_many_files"}


class CaseFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CaseFailed(msg)


# --------------------------------------------------------------------------
# libtorrent seed


class Seed:
    """A libtorrent session seeding one v1-only torrent over uTP on 127.0.0.1."""

    def __init__(self, size, piece_len):
        self.tmp = tempfile.mkdtemp(prefix="lt-interop-")
        path = os.path.join(self.tmp, "payload.bin")
        rnd = random.Random(size)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 22)
                f.write(rnd.randbytes(n))
                left -= n
        fs = lt.file_storage()
        lt.add_files(fs, path)
        # v1 only: with a hybrid torrent libtorrent greets with the v2 hash
        # (truncated SHA-256), which a v1 peer does not know.
        t = lt.create_torrent(fs, piece_len, flags=lt.create_torrent.v1_only)
        lt.set_piece_hashes(t, self.tmp)
        self.ti = lt.torrent_info(t.generate())
        self.size = size
        self.piece_len = piece_len
        self.info_hash = self.ti.info_hash().to_bytes()
        self.hashes_file = os.path.join(self.tmp, "hashes.bin")
        with open(self.hashes_file, "wb") as f:
            for i in range(self.ti.num_pieces()):
                f.write(self.ti.hash_for_piece(i))
        cat = lt.alert.category_t
        self.port = None
        for _ in range(5):
            port = free_udp_port()
            self.ses = lt.session(session_settings(
                port, cat.error_notification | cat.peer_notification
                | cat.connect_notification | cat.status_notification))
            deadline = time.time() + 5
            while time.time() < deadline and self.ses.listen_port() != port:
                time.sleep(0.05)
            if self.ses.listen_port() == port:
                self.port = port
                break
            del self.ses
        if self.port is None:
            raise CaseFailed("libtorrent could not listen on a free port")
        self.h = self.ses.add_torrent({"ti": self.ti, "save_path": self.tmp})
        self.alerts = []
        deadline = time.time() + 60
        while self.h.status().state != lt.torrent_status.seeding:
            if time.time() > deadline:
                raise CaseFailed("libtorrent did not start seeding")
            time.sleep(0.05)

    def poll_alerts(self):
        for a in self.ses.pop_alerts():
            self.alerts.append((time.time(), a))
        return self.alerts

    def disconnects(self):
        """peer_disconnected_alerts as dicts."""
        out = []
        for _, a in self.poll_alerts():
            if isinstance(a, lt.peer_disconnected_alert):
                out.append({
                    "error": a.error.value(), "category": a.error.category().name(),
                    "message": a.error.message(), "op": str(a.op),
                    "socket_type": str(a.socket_type),
                    "msg": a.message(),
                })
        return out

    def args(self):
        return [self.ti.info_hash().to_bytes().hex(), self.hashes_file,
                str(self.piece_len), str(self.size)]

    def close(self):
        try:
            self.ses.pause()
        except Exception:
            pass
        del self.h
        del self.ses
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------
# tcpdump capture of uTP headers


def stop_process(proc, sig):
    """Sends `sig` and waits up to 10 s for the exit, then kills."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Capture:
    """tcpdump on lo for one UDP port; parses the uTP header of every datagram."""

    def __init__(self, port, tmp):
        self.port = port
        self.path = os.path.join(tmp, f"utp-{port}.pcap")
        self.proc = subprocess.Popen(
            # Immediate mode: libpcap otherwise hands packets over in blocks
            # up to a second late, and stopping it lost the last ones.
            ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-n", "-s", "256", "-w", self.path,
             f"udp port {port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        ready = queue.Queue()

        def watch():
            for line in self.proc.stderr:
                if "listening on" in line:
                    ready.put(True)
            ready.put(False)
        threading.Thread(target=watch, daemon=True).start()
        try:
            ok = ready.get(timeout=10)
        except queue.Empty:
            ok = False
        if not ok:
            self.stop()
            raise CaseFailed("tcpdump did not start")

    def stop(self):
        if self.proc.poll() is None:
            time.sleep(0.2)  # let the last datagrams through
            stop_process(self.proc, signal.SIGINT)

    def packets(self):
        """List of dicts: t, from_lt, type, conn_id, wnd, seq, ack, ext, plen."""
        with open(self.path, "rb") as f:
            data = f.read()
        if len(data) < 24:
            return []
        magic = data[:4]
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            end = "<"
        else:
            end = ">"
        nsec = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack(end + "I", data[20:24])[0]
        l2 = {1: 14, 113: 16, 276: 20, 0: 4}.get(linktype)
        check(l2 is not None, f"pcap link type {linktype} not supported")
        out = []
        off = 24
        while off + 16 <= len(data):
            sec, frac, incl, _orig = struct.unpack(end + "IIII", data[off:off + 16])
            frame = data[off + 16:off + 16 + incl]
            off += 16 + incl
            ip = frame[l2:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 15) * 4
            udp = ip[ihl:]
            sport, dport, ulen = struct.unpack(">HHH", udp[:6])
            u = udp[8:]
            left = ulen - 8  # bytes of uTP in the datagram (u may be cut short)
            # On lo, tcpdump sees a GSO send before it is cut into
            # datagrams: segments of one size (the last may be shorter).
            # Packets without payload (STATE, RESET, SYN, FIN) give the
            # segment size, so what follows one is read as further
            # datagrams, as far as the capture's snap length allows.
            while len(u) >= 20 and u[0] & 15 == 1 and u[0] >> 4 <= 4:
                ty = u[0] >> 4
                conn_id, ts, tsd, wnd, seq, ack = struct.unpack(">HIIIHH", u[2:20])
                ext = []
                nxt, p = u[1], 20
                while nxt and p + 2 <= len(u):
                    elen = u[p + 1]
                    ext.append((nxt, bytes(u[p + 2:p + 2 + elen])))
                    nxt = u[p]
                    p += 2 + elen
                gso = ty in (1, 2, 3, 4) and 0 < p < left and not nxt
                out.append({
                    "t": sec + frac / (1e9 if nsec else 1e6), "from_lt": sport == self.port,
                    "type": ty, "conn_id": conn_id, "wnd": wnd, "seq": seq, "ack": ack,
                    "ext": ext, "plen": 0 if gso else left - p,
                })
                if not gso:
                    break
                u, left = u[p:], left - p
        return out


def summarize(pkts):
    """A short description of the capture and facts the cases check."""
    s = {"resets": [p for p in pkts if p["type"] == 3]}
    for side, flag in (("lt", True), ("us", False)):
        mine = [p for p in pkts if p["from_lt"] == flag]
        s[side] = mine
        s[side + "_fins"] = [p for p in mine if p["type"] == 1]
        s[side + "_syn"] = [p for p in mine if p["type"] == 4]
        data = [p for p in mine if p["type"] == 0]
        s[side + "_data"] = data
        s[side + "_payloads"] = sorted({p["plen"] for p in data})
        growth = []
        for p in data:
            if not growth or p["plen"] > growth[-1]:
                growth.append(p["plen"])
        s[side + "_payload_growth"] = growth
    return s


def packet_tail(summ, n=14):
    """The last packets of a capture, for a failure message."""
    pkts = sorted(summ["lt"] + summ["us"], key=lambda q: q["t"])
    if not pkts:
        return "no packets captured"
    t0 = pkts[0]["t"]
    return f"{len(pkts)} packets, the last: " + ", ".join(
        f"{'lt' if q['from_lt'] else 'us'} {ST_NAMES.get(q['type'])} seq={q['seq']} "
        f"ack={q['ack']} wnd={q['wnd']} len={q['plen']} at {q['t'] - t0:.3f} s"
        for q in pkts[-n:])


def close_reason_of(p):
    for ty, body in p["ext"]:
        if ty == 3 and len(body) == 4:
            return struct.unpack(">HH", body)[1]
    return None


def fin_acked(fin, replies):
    return any(r["type"] in (1, 2) and r["ack"] == fin["seq"] and r["t"] >= fin["t"]
               for r in replies)


# --------------------------------------------------------------------------
# bt_fetch process


class Fetch:
    def __init__(self, bt_fetch, mode, addr, seed, extra, timeout):
        self.cmd = [bt_fetch, mode, addr] + seed.args() + extra + ["--timeout", str(timeout)]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.q = queue.Queue()

        def pump():
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.lines.append(line)
                self.q.put((time.time(), line))
            self.q.put((time.time(), None))
        threading.Thread(target=pump, daemon=True).start()
        self.timeout = timeout

    def wait_line(self, prefix, timeout):
        deadline = time.time() + timeout
        while True:
            try:
                t, line = self.q.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                raise CaseFailed(f"no '{prefix}' line from bt_fetch within {timeout} s: "
                                 f"{self.tail()}")
            if line is None:
                raise CaseFailed(f"bt_fetch ended before '{prefix}': {self.tail()}")
            if line.startswith(prefix):
                return t, line

    def wait(self):
        try:
            rc = self.proc.wait(timeout=self.timeout + 15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CaseFailed(f"bt_fetch did not exit: {self.tail()}")
        time.sleep(0.05)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def line(self, prefix):
        for ln in self.lines:
            if ln.startswith(prefix):
                return ln
        return None

    def stats(self):
        ln = self.line("stats ")
        check(ln is not None, "no stats line")
        return dict(kv.split("=", 1) for kv in ln.split()[1:])

    def tail(self):
        return " | ".join(self.lines[-4:]) or "(no output)"

    def mbps(self):
        ln = self.line("fetched ")
        return ln.rsplit(", ", 1)[1] if ln else "? MB/s"


# --------------------------------------------------------------------------
# cases


class Relay:
    """interop/relay.py between the connecting side and the listener."""

    def __init__(self, target_port, args, tmp):
        self.port = free_udp_port()
        self.log = os.path.join(tmp, "relay.json")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "..", "relay.py"), "--listen", str(self.port),
             "--target", str(target_port), "--log", self.log] + args,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)  # its socket is bound once python has started
        if self.proc.poll() is not None:
            raise CaseFailed(f"relay.py exited: {self.proc.stderr.read()[-300:]}")

    def stop(self):
        """Stops the relay; returns its JSON summary."""
        if self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM)
        try:
            with open(self.log) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise CaseFailed(f"no relay summary: {e}")


def transfer(ctx, name, mode, size, piece_len, end="close", pause_after_fetch=False,
             require_exit_0=True, allow_resets=False, relay=None):
    """One download by bt_fetch from a fresh libtorrent seed, with a capture
    (of libtorrent's port). With `relay` (relay.py arguments), the datagrams
    go through interop/relay.py; its summary is notes["relay"].

    Returns (fetch, seed disconnect alerts, capture summary, notes)."""
    seed = Seed(size, piece_len)
    cap = None
    fetch = None
    rel = None
    notes = {}

    def via_relay(port):
        """The port the connecting side uses: `port`, or a relay's to it."""
        nonlocal rel
        if relay is None:
            return port
        rel = Relay(port, relay, seed.tmp)
        return rel.port

    try:
        cap = Capture(seed.port, seed.tmp)
        extra = ["--stats", "--end", end]
        timeout = 60 + size // (2 << 20)
        if mode == "connect":
            port = via_relay(seed.port)
            fetch = Fetch(ctx["bt_fetch"], "connect", f"127.0.0.1:{port}", seed, extra,
                          timeout)
        else:
            fetch = Fetch(ctx["bt_fetch"], "listen", "127.0.0.1:0", seed, extra, timeout)
            _, ln = fetch.wait_line("listening ", 10)
            port = via_relay(int(ln.rsplit(":", 1)[1]))
            t0 = time.time()
            seed.h.connect_peer(("127.0.0.1", port))
            t1, _ = fetch.wait_line("accepted ", 30)
            notes["connect_peer_latency"] = t1 - t0
        if pause_after_fetch:
            fetch.wait_line("fetched ", timeout)
            seed.h.pause()
        rc = fetch.wait()
        t_exit = time.time()
        # Let libtorrent finish its side: wait for its peer_disconnected_alert
        # (up to 20 s), then 1.2 s more to see FIN re-sends.
        disc = []
        while time.time() < t_exit + 20 and not disc:
            time.sleep(0.05)
            disc = seed.disconnects()
        notes["disconnect_after_exit"] = time.time() - t_exit if disc else None
        time.sleep(1.2)
        cap.stop()
        if rel:
            notes["relay"] = rel.stop()
            rel = None
        summ = summarize(cap.packets())
        check(fetch.line("fetched ") is not None,
              f"download failed: {fetch.tail()}; {packet_tail(summ)}")
        if require_exit_0:
            check(rc == 0, f"bt_fetch exit {rc}: {fetch.tail()}")
        if summ["resets"] and not allow_resets:
            r = summ["resets"][0]
            raise CaseFailed(f"{len(summ['resets'])} ST_RESET on the wire, first from "
                             f"{'libtorrent' if r['from_lt'] else 'us'} "
                             f"(conn_id {r['conn_id']} seq {r['seq']} ack {r['ack']}); "
                             f"bt_fetch: {fetch.tail()}")
        return fetch, disc, summ, notes
    finally:
        if fetch:
            fetch.kill()
        if rel:
            rel.stop()
        if cap:
            cap.stop()
        seed.close()


def bad_disconnects(disc):
    """libtorrent's disconnect alerts that report a reset or timeout."""
    return [d for d in disc
            if d["message"].lower() not in ("end of file", "success")
            or "reset" in d["message"].lower()]


def case_download(ctx, name, mode):
    fetch, disc, summ, notes = transfer(ctx, name, mode, 16 << 20, 256 << 10)
    st = fetch.stats()
    extra = ""
    if mode == "listen":
        syn = summ["lt_syn"]
        check(syn, "no SYN from libtorrent in the capture")
        ctx["quirks"]["lt SYN wnd"] = syn[0]["wnd"]
        ctx["quirks"]["connect_peer latency s"] = round(notes["connect_peer_latency"], 3)
        extra = (f", libtorrent SYN wnd={syn[0]['wnd']}, connect_peer->accept "
                 f"{notes['connect_peer_latency']:.2f} s")
    ctx["quirks"]["lt payload growth B (" + mode + ")"] = summ["lt_payload_growth"]
    return (f"16 MiB, 64 pieces SHA-1 verified, {fetch.mbps()}, "
            f"{st['packets_received']} pkts in, retransmitted {st['retransmitted']}, "
            f"max lt payload {max(summ['lt_payloads'])} B{extra}")


def case_a(ctx):
    return case_download(ctx, "a", "connect")


def case_b(ctx):
    return case_download(ctx, "b", "listen")


def case_c(ctx, mode):
    return run_script("bt_fetch.py", [ctx["utp"], mode, "16"])


def case_d(ctx):
    size = 128 << 20
    fetch, disc, summ, _ = transfer(ctx, "d", "connect", size, 1 << 20)
    st = fetch.stats()
    received = int(st["packets_received"])
    check(received > 65536, f"only {received} packets received; no sequence wrap")
    lt_data = summ["lt_data"]
    wraps = sum(1 for a, b in zip(lt_data, lt_data[1:])
                if a["seq"] > 49152 and b["seq"] < 16384)
    check(wraps >= 1, "libtorrent's data seq_nr never wrapped in the capture")
    return (f"128 MiB, 128 pieces SHA-1 verified, {fetch.mbps()}, packets_received={received} "
            f"packets_sent={st['packets_sent']}, lt seq wrapped {wraps}x, "
            f"retransmitted {st['retransmitted']}, lt payloads up to {max(summ['lt_payloads'])} B")


def case_e_we_close(ctx, mode):
    fetch, disc, summ, notes = transfer(ctx, "e.i", mode, 4 << 20, 256 << 10, end="close")
    check(fetch.line("close ok") is not None, f"close() did not return Ok: {fetch.tail()}")
    our = summ["us_fins"]
    check(our, "we sent no FIN")
    fin = our[0]
    check(fin_acked(fin, summ["lt"]), "libtorrent never acked our FIN")
    lt_fins = summ["lt_fins"]
    check(lt_fins, "libtorrent sent no FIN after ours")
    if not fin_acked(lt_fins[0], summ["us"]):
        raise CaseFailed(
            f"we never acked libtorrent's FIN (x{len(lt_fins)}); bt_fetch: {fetch.tail()}; "
            f"{packet_tail(summ, 8)}")
    our_acks = [p for p in summ["us"] if p["type"] == 2 and p["ack"] == lt_fins[0]["seq"]]
    copies = [round(p["t"] - lt_fins[0]["t"], 2) for p in lt_fins]
    reasons = sorted({r for r in map(close_reason_of, lt_fins) if r is not None})
    ctx["quirks"]["lt answering FIN sent at +s"] = copies
    evidence = (f"our FIN seq={fin['seq']}, libtorrent FIN seq={lt_fins[0]['seq']} sent "
                f"{len(lt_fins)}x at +{copies} s, our ST_STATE acking it: "
                f"{[(p['seq'], p['ack']) for p in our_acks]} (seq, ack)")
    check(disc, f"libtorrent reported no peer_disconnected_alert within 20 s; {evidence}")
    bad = bad_disconnects(disc)
    if bad:
        raise CaseFailed(
            f"libtorrent reports {bad[0]['message']!r} ({bad[0]['op']}) "
            f"{notes['disconnect_after_exit']:.1f} s after bt_fetch exited, not EOF; {evidence}")
    return (f"close() Ok, our FIN acked, libtorrent FIN x{len(lt_fins)} "
            f"(close_reason ext {reasons or 'none'}) acked, libtorrent: {disc[0]['msg']!r}")


def case_e_abort(ctx, mode):
    """We abort after the download: one RESET from us, no FIN, and libtorrent
    drops the connection at once as reset by its peer."""
    fetch, disc, summ, notes = transfer(ctx, "e.iv", mode, 4 << 20, 256 << 10, end="abort",
                                        allow_resets=True)
    check(fetch.line("aborted") is not None, f"no abort: {fetch.tail()}")
    check(not summ["us_fins"], "we sent a FIN; an abort sends none")
    ours = [p for p in summ["resets"] if not p["from_lt"]]
    check(ours, f"no RESET from us on the wire; {packet_tail(summ)}")
    rst = ours[0]
    check(not any(p["from_lt"] for p in summ["resets"]),
          f"libtorrent sent a RESET; {packet_tail(summ)}")
    # The id libtorrent receives on: the one on its own packets to us is
    # its send id (ours to receive on), ±1 by role.
    lt_ids = {p["conn_id"] for p in summ["lt"] if p["type"] != 4}
    check(lt_ids and all((rst["conn_id"] - i) % 65536 in (1, 65535) for i in lt_ids),
          f"our RESET's id {rst['conn_id']} is not the one libtorrent receives on "
          f"(it sends on {sorted(lt_ids)})")
    after = [p for p in summ["lt"] if p["t"] > rst["t"]]
    check(not [p for p in after if p["type"] == 1],
          f"libtorrent sent a FIN after our RESET; {packet_tail(summ)}")
    check(disc, "libtorrent reported no peer_disconnected_alert within 20 s")
    d = disc[0]
    check("reset" in d["message"].lower(),
          f"libtorrent reports {d['message']!r} ({d['op']}), not a reset")
    check(notes["disconnect_after_exit"] is not None and notes["disconnect_after_exit"] < 2,
          f"libtorrent took {notes['disconnect_after_exit']} s after our exit to drop it")
    return (f"our RESET seq={rst['seq']} ack={rst['ack']}, no FIN either way, "
            f"{len(after)} libtorrent packets after it, libtorrent: {d['msg']!r}")


def lt_closes_run(ctx, mode, how):
    """One run where libtorrent closes first; shared by e.ii and e.iii."""
    key = ("lt_closes", mode, how)
    if key not in ctx:
        ctx[key] = transfer(ctx, "e.ii", mode, 4 << 20, 256 << 10,
                            end="have" if how == "have" else "eof",
                            pause_after_fetch=how == "pause", require_exit_0=False)
    return ctx[key]


def case_e_lt_closes(ctx, mode, how):
    """libtorrent closes first: we must see a clean EOF and its close reason."""
    fetch, disc, summ, _ = lt_closes_run(ctx, mode, how)
    ln = fetch.line("peer closed: eof")
    check(ln is not None, f"no clean EOF: {fetch.tail()}")
    lt_fins = summ["lt_fins"]
    check(lt_fins, "libtorrent sent no FIN")
    wire_reason = close_reason_of(lt_fins[0])
    our_reason = fetch.stats()["peer_close_reason"]
    check(wire_reason is not None, "libtorrent's FIN carried no close_reason (ext 3)")
    check(our_reason == str(wire_reason),
          f"libtorrent sent close_reason {wire_reason}, stats say {our_reason}")
    check(fin_acked(lt_fins[0], summ["us"]), "we never acked libtorrent's FIN")
    copies = [p for p in lt_fins if p["seq"] == lt_fins[0]["seq"]]
    ctx["quirks"][f"lt close_reason ({how})"] = wire_reason
    name = CLOSE_REASONS.get(wire_reason, wire_reason)
    return (f"EOF clean, libtorrent FIN close_reason={wire_reason} ({name}) == "
            f"stats.peer_close_reason, its FIN acked by us and sent {len(copies)}x, "
            f"libtorrent: {disc[0]['msg'] if disc else 'no disconnect alert'!r}")


def case_e_close_after_lt_fin(ctx, mode, how):
    """After libtorrent's FIN, our close() must return Ok (our FIN acked)."""
    fetch, disc, summ, _ = lt_closes_run(ctx, mode, how)
    check(fetch.line("peer closed: eof") is not None, f"no clean EOF: {fetch.tail()}")
    lt_fins = summ["lt_fins"]
    our_fins = summ["us_fins"]
    check(our_fins, "we sent no FIN")
    check(lt_fins, "libtorrent sent no FIN")
    f = our_fins[0]
    ack_of_lt_fin = [p for p in summ["us"] if p["type"] == 2 and p["ack"] == lt_fins[0]["seq"]]
    answered = [p for p in summ["lt"] if p["t"] > f["t"]]
    if fetch.line("close ok") is None:
        raise CaseFailed(
            f"close() failed: {fetch.line('error') or fetch.tail()}; "
            f"wire: libtorrent FIN seq={lt_fins[0]['seq']} at 0, our ST_STATE acking it at "
            f"+{(ack_of_lt_fin[0]['t'] - lt_fins[0]['t']) * 1e3:.2f} ms, our FIN seq={f['seq']} "
            f"at +{(f['t'] - lt_fins[0]['t']) * 1e3:.2f} ms sent {len(our_fins)}x over "
            f"{our_fins[-1]['t'] - f['t']:.1f} s, libtorrent sent {len(answered)} packets "
            f"after our FIN (no ack, no RESET)")
    return f"close() Ok, our FIN seq={f['seq']} acked by libtorrent"


def run_script(script, args, env=None):
    """Runs one of this directory's scripts (bt_fetch.py, bt_seed.py) under
    a 180 s deadline; its output on one line, or CaseFailed on a non-zero
    exit."""
    try:
        r = subprocess.run(["/usr/bin/python3", os.path.join(HERE, script)] + args,
                           capture_output=True, text=True, timeout=180, env=env)
    except subprocess.TimeoutExpired:
        raise CaseFailed(f"{script} did not finish in 180 s")
    out = (r.stdout + r.stderr).strip().replace("\n", " | ")
    check(r.returncode == 0, f"{script} exit {r.returncode}: {out[-300:]}")
    return out


def case_f(ctx):
    """We seed (bulk data from us): path MTU discovery runs against
    libtorrent, which reads datagrams into 1,500 bytes. Probes beyond that
    arrive truncated, their padding runs past the end and libtorrent drops
    them, so the search must settle at or just below 1,500-byte datagrams."""
    out = run_script("bt_seed.py", [ctx["utp"], "16"])
    m = re.search(r"payload_size (\d+)", out)
    check(m is not None, f"no payload size in: {out[-300:]}")
    size = int(m.group(1))
    check(1400 <= size <= 1500 - 20,
          f"payload {size}: datagrams must fit libtorrent's 1,500-byte buffer: {out}")
    ctx["quirks"]["our payload to libtorrent B"] = size
    return out


def case_i(ctx):
    """Case f over case h's rough path: we send the bulk data, and our loss
    recovery and path MTU search meet random loss (of what we send),
    duplicates and reordering of every packet type on top of libtorrent's
    1,500-byte buffer."""
    rough = " ".join(ROUGH + ["--any-loss-dir", "s2c", "--seed", "23"])
    out = run_script("bt_seed.py", [ctx["utp"], "4"],
                     env=dict(os.environ, BT_SEED_RELAY=rough))
    lost = [int(x) for x in re.findall(r"lost=(\d+)", out)]
    check(len(lost) == 2 and lost[1], f"the relay lost none of our packets: {out[-300:]}")
    return out


def case_g(ctx):
    """Our listener answers every SYN with a SYN cookie (--max-half-open 0,
    what SYNs beyond the half-open limit get in a flood): libtorrent's
    first packet after the SYN-ACK must return it and make the connection,
    and the download must complete."""
    out = run_script("bt_seed.py", [ctx["utp"], "16", "--max-half-open", "0"])
    check("SHA-1 verified" in out, f"not verified: {out[-300:]}")
    return out


# The rough path of cases h and i; LIBTORRENT_ROUGH (relay.py options)
# changes it. libtorrent fails a connection ("Connection timed out") once a
# timeout finds its oldest unacked packet sent 3 times (utp_num_resends),
# fast retransmits included, and on a reordering path its fast retransmits
# fire on reordering: with 1% loss of its own packets too, 2 of 19 h runs
# died so. So h loses only what we send (acks, requests, FIN); both
# directions are still duplicated and reordered.
ROUGH = os.environ.get("LIBTORRENT_ROUGH",
                       "--any-loss 0.02 --dup 0.02 --delay 2 --jitter 6").split()


def case_h(ctx, mode, seed):
    """A rough path: interop/relay.py loses 2% of what we send (SYN or
    SYN-ACK, STATE, FIN too), sends 2% of the datagrams both ways twice, and
    reorders them (2 ms plus up to 6 ms at random). The download must still
    verify, our close() must return Ok with both FINs acked, and no RESET
    may appear."""
    ours = "c2s" if mode == "connect" else "s2c"
    fetch, disc, summ, notes = transfer(
        ctx, "h", mode, 4 << 20, 256 << 10, end="close",
        relay=ROUGH + ["--any-loss-dir", ours, "--seed", str(seed)])
    r = notes["relay"]
    c2s, s2c = r["c2s"], r["s2c"]
    check(r[ours]["lost_any"] and c2s["reordered"] and s2c["reordered"]
          and c2s["duplicated"] + s2c["duplicated"],
          f"the relay did not lose ours, reorder both ways and duplicate: "
          f"{ {d: (r[d]['lost_any'], r[d]['duplicated'], r[d]['reordered']) for d in ('c2s', 's2c')} }")
    check(fetch.line("close ok") is not None, f"close() did not return Ok: {fetch.tail()}")
    check(summ["lt_fins"] and fin_acked(summ["lt_fins"][0], summ["us"]),
          f"libtorrent's FIN missing or never acked; {packet_tail(summ, 8)}")
    bad = bad_disconnects(disc)
    check(not bad, f"libtorrent reports {bad[0]['message']!r}" if bad else "")
    st = fetch.stats()
    lost = c2s["lost_any"] + s2c["lost_any"]
    dup = c2s["duplicated"] + s2c["duplicated"]
    reord = c2s["reordered"] + s2c["reordered"]
    return (f"4 MiB, 16 pieces SHA-1 verified, {fetch.mbps()}, close() Ok, relay lost {lost}, "
            f"duplicated {dup}, reordered {reord} datagrams; we retransmitted "
            f"{st['retransmitted']}, libtorrent: {disc[0]['msg'] if disc else 'no alert'!r}")


CASES = [
    ("a bt_fetch connect -> libtorrent seed", case_a),
    ("b libtorrent connect_peer -> bt_fetch listen", case_b),
    ("c.connect utp connect (bt_fetch.py)", lambda c: case_c(c, "connect")),
    ("c.listen utp listen (bt_fetch.py)", lambda c: case_c(c, "listen")),
    ("d sequence wrap, 128 MiB from libtorrent", case_d),
    ("e.i.connect we close first (connect)", lambda c: case_e_we_close(c, "connect")),
    ("e.i.listen we close first (listen)", lambda c: case_e_we_close(c, "listen")),
    ("e.iv.connect we abort after the download: RESET, libtorrent drops it (connect)",
     lambda c: case_e_abort(c, "connect")),
    ("e.iv.listen we abort after the download: RESET, libtorrent drops it (listen)",
     lambda c: case_e_abort(c, "listen")),
    ("e.ii.connect libtorrent closes first, both seeds: EOF + close reason (connect)",
     lambda c: case_e_lt_closes(c, "connect", "have")),
    ("e.iii.connect close() after libtorrent's FIN, both seeds (connect)",
     lambda c: case_e_close_after_lt_fin(c, "connect", "have")),
    ("e.ii.listen libtorrent closes first, both seeds: EOF + close reason (listen)",
     lambda c: case_e_lt_closes(c, "listen", "have")),
    ("e.iii.listen close() after libtorrent's FIN, both seeds (listen)",
     lambda c: case_e_close_after_lt_fin(c, "listen", "have")),
    ("e.ii.pause libtorrent closes first, torrent paused: EOF + close reason (connect)",
     lambda c: case_e_lt_closes(c, "connect", "pause")),
    ("e.iii.pause close() after libtorrent's FIN, torrent paused (connect)",
     lambda c: case_e_close_after_lt_fin(c, "connect", "pause")),
    ("f libtorrent downloads from utp listen: path MTU search", case_f),
    ("g libtorrent connects to utp listen answering with a SYN cookie", case_g),
    ("h.connect rough path: our packets lost, duplicates, reordering (connect)",
     lambda c: case_h(c, "connect", 21)),
    ("h.listen rough path: our packets lost, duplicates, reordering (listen)",
     lambda c: case_h(c, "listen", 22)),
    ("i libtorrent downloads from utp listen over the rough path", case_i),
]


def run_cases(cases, suite, tools=("tcpdump",), call=lambda fn, ctx: fn(ctx), setup=None):
    """The command line this suite shares with transmission/run.py:
    `UTP_BINARY BT_FETCH_BINARY [CASE...]`. Runs `setup`, checks the
    binaries and `tools`, runs each selected case through `call`, prints
    `ok`/`FAIL` lines and the quirks observed, and exits (1 if any failed)."""
    if len(sys.argv) < 3:
        print(sys.modules["__main__"].__doc__)
        sys.exit(2)
    if setup:
        setup()
    utp, bt_fetch = (os.path.realpath(p) for p in sys.argv[1:3])
    for p in (utp, bt_fetch):
        if not os.access(p, os.X_OK):
            print(f"FAIL setup: {p} is not executable")
            sys.exit(1)
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"FAIL setup: {tool} not found")
            sys.exit(1)
    only = sys.argv[3:]
    ctx = {"utp": utp, "bt_fetch": bt_fetch, "quirks": {}}
    failed = 0
    ran = 0
    for name, fn in cases:
        if only and not any(name.startswith(o) for o in only):
            continue
        ran += 1
        start = time.time()
        try:
            detail = call(fn, ctx)
            print(f"ok   {name}: {detail} ({time.time() - start:.1f} s)", flush=True)
        except CaseFailed as e:
            failed += 1
            print(f"FAIL {name}: {e} ({time.time() - start:.1f} s)", flush=True)
        except Exception as e:  # a bug in this script is a failure too
            failed += 1
            import traceback
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(f"FAIL {name}: {type(e).__name__}: {e} "
                  f"({os.path.basename(where.filename)} line {where.lineno})", flush=True)
    if ran == 0:
        print(f"FAIL setup: no case matches {only}")
        sys.exit(1)
    q = ctx["quirks"]
    print("observed:", "; ".join(f"{k}={v}" for k, v in q.items()))
    print(f"{ran - failed} of {ran} {suite} cases passed")
    sys.exit(1 if failed else 0)


def main():
    # tcpdump records every case, to check for ST_RESET.
    run_cases(CASES, "libtorrent")


if __name__ == "__main__":
    main()
