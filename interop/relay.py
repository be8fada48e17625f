#!/usr/bin/env python3
"""Userspace UDP relay for uTP interop tests (stdlib only).

    relay.py --listen PORT_A --target PORT_B [--drop-dir c2s|s2c]
             [--drop-every N | --loss P] [--seed S] [--log FILE]
             [--host ADDR] [--target-host ADDR]
             [--any-loss P [--any-loss-dir c2s|s2c]] [--dup P]
             [--delay MS] [--jitter MS]

Listens on 127.0.0.1:PORT_A (or --host) for one client, forwards its datagrams
to the real listener at 127.0.0.1:PORT_B (or --target-host) from an ephemeral
port of its own, and relays the listener's replies back to the client. "c2s"
is client -> listener, "s2c" is listener -> client.

Drops (deterministic): only ST_DATA packets, only in --drop-dir, never SYN,
STATE, FIN or RESET. --drop-every N drops the Nth, 2Nth, ... DATA packet of
that direction; --loss P drops each with probability P from random.Random(seed).
--drop-after K leaves the first K DATA packets of that direction alone.

Impairments of a rough path, in both directions and on every packet type
(SYN, STATE, FIN and RESET too), from their own random.Random(seed + 1):
--any-loss P drops a datagram with probability P (only in one direction with
--any-loss-dir c2s|s2c); --dup P sends one twice
(each copy with its own delay); --delay MS holds each one MS milliseconds and
--jitter MS adds up to MS more at random, which reorders datagrams that come
closer together than the jitter.

On SIGTERM/SIGINT (or after --idle-exit seconds without traffic) it writes a
JSON summary to --log (or stdout) and exits 0:
  {"c2s": {"packets", "bytes", "types": {"ST_DATA": n, ...}, "sack_packets",
           "sack_lengths": {len: n}, "dropped", "dropped_types",
           "data_retransmissions", "max_payload", "wnd_min", "wnd_max",
           "conn_ids", "syn_seq", "fin_seq", "acks_of_peer_fin", "not_utp",
           "lost_any", "duplicated", "reordered"},
   "s2c": {...}, "client": "ip:port", "duration_s": ...}
"data_retransmissions" counts DATA/FIN packets whose seq_nr was already seen
in the last 30000 packets of that direction. "acks_of_peer_fin" counts
ST_STATE packets whose ack_nr is the other direction's FIN seq_nr.
"reordered" counts datagrams sent after one that arrived later than them.
"""
import argparse
import heapq
import json
import random
import select
import signal
import socket
import struct
import sys
import time

TYPES = {0: "ST_DATA", 1: "ST_FIN", 2: "ST_STATE", 3: "ST_RESET", 4: "ST_SYN"}


def new_dir():
    return {
        "packets": 0,
        "bytes": 0,
        "types": {},
        "sack_packets": 0,
        "sack_lengths": {},
        "ext_types": {},
        "dropped": 0,
        "dropped_types": {},
        "data_retransmissions": 0,
        "max_payload": 0,
        "wnd_min": None,
        "wnd_max": None,
        "conn_ids": [],
        "syn_seq": None,
        "fin_seq": None,
        "acks_of_peer_fin": 0,
        "not_utp": 0,
        "forward_errors": 0,
        "lost_any": 0,
        "duplicated": 0,
        "reordered": 0,
    }


class Relay:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.front, self.back):
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 8 * 1024 * 1024)
                except OSError:
                    pass
        self.front.bind((args.host, args.listen))
        self.back.bind((args.target_host, 0))
        self.target = (args.target_host, args.target)
        self.client = None
        self.stats = {"c2s": new_dir(), "s2c": new_dir()}
        self.data_count = {"c2s": 0, "s2c": 0}
        # per direction: seq -> index of the last packet carrying it
        self.seen = {"c2s": {}, "s2c": {}}
        self.index = {"c2s": 0, "s2c": 0}
        self.start = time.monotonic()
        self.stop = False
        self.chaos = random.Random(args.seed + 1)
        # (due, order, direction, arrival index, datagram, socket, address)
        self.held = []
        self.order = 0
        self.arrivals = {"c2s": 0, "s2c": 0}
        self.latest_sent = {"c2s": -1, "s2c": -1}

    def inspect(self, d, pkt):
        """Classify a datagram; returns its uTP type or None if not uTP."""
        st = self.stats[d]
        st["packets"] += 1
        st["bytes"] += len(pkt)
        if len(pkt) < 20 or (pkt[0] & 0x0F) != 1 or (pkt[0] >> 4) > 4:
            st["not_utp"] += 1
            return None
        ptype = pkt[0] >> 4
        name = TYPES[ptype]
        st["types"][name] = st["types"].get(name, 0) + 1
        conn_id, _ts, _tsd, wnd, seq, ack = struct.unpack(">HIIIHH", pkt[2:20])
        if conn_id not in st["conn_ids"] and len(st["conn_ids"]) < 16:
            st["conn_ids"].append(conn_id)
        if ptype != 4:
            st["wnd_min"] = wnd if st["wnd_min"] is None else min(st["wnd_min"], wnd)
            st["wnd_max"] = wnd if st["wnd_max"] is None else max(st["wnd_max"], wnd)
        # walk the extension chain
        ext, pos, has_sack = pkt[1], 20, False
        while ext != 0:
            if pos + 2 > len(pkt):
                break
            nxt, ln = pkt[pos], pkt[pos + 1]
            if pos + 2 + ln > len(pkt):
                break
            st["ext_types"][str(ext)] = st["ext_types"].get(str(ext), 0) + 1
            if ext == 1:
                has_sack = True
                st["sack_lengths"][str(ln)] = st["sack_lengths"].get(str(ln), 0) + 1
            pos += 2 + ln
            ext = nxt
        if has_sack:
            st["sack_packets"] += 1
        payload = len(pkt) - pos
        if ptype == 0:
            st["max_payload"] = max(st["max_payload"], payload)
        if ptype == 4:
            st["syn_seq"] = seq
        if ptype == 1:
            st["fin_seq"] = seq
        if ptype in (0, 1):
            i = self.index[d]
            last = self.seen[d].get(seq)
            if last is not None and i - last < 30000:
                st["data_retransmissions"] += 1
            self.seen[d][seq] = i
            self.index[d] = i + 1
        other = "s2c" if d == "c2s" else "c2s"
        peer_fin = self.stats[other]["fin_seq"]
        if ptype == 2 and peer_fin is not None and ack == peer_fin:
            st["acks_of_peer_fin"] += 1
        return ptype

    def should_drop(self, d, ptype):
        a = self.args
        if ptype != 0 or d != a.drop_dir:
            return False
        self.data_count[d] += 1
        n = self.data_count[d]
        if n <= a.drop_after:
            return False
        if a.drop_every and (n - a.drop_after) % a.drop_every == 0:
            return True
        if a.loss and self.rng.random() < a.loss:
            return True
        return False

    def handle(self, d, pkt, out_sock, dest):
        ptype = self.inspect(d, pkt)
        st = self.stats[d]
        if ptype is not None and self.should_drop(d, ptype):
            st["dropped"] += 1
            name = TYPES[ptype]
            st["dropped_types"][name] = st["dropped_types"].get(name, 0) + 1
            return
        a = self.args
        if a.any_loss and a.any_loss_dir in ("both", d) and self.chaos.random() < a.any_loss:
            st["lost_any"] += 1
            return
        arrival = self.arrivals[d]
        self.arrivals[d] = arrival + 1
        copies = 1
        if a.dup and self.chaos.random() < a.dup:
            st["duplicated"] += 1
            copies = 2
        if not (a.delay or a.jitter or copies > 1):
            self.send(d, arrival, pkt, out_sock, dest)
            return
        now = time.monotonic()
        for _ in range(copies):
            due = now + (a.delay + self.chaos.random() * a.jitter) / 1000.0
            heapq.heappush(self.held, (due, self.order, d, arrival, pkt, out_sock, dest))
            self.order += 1

    def send(self, d, arrival, pkt, out_sock, dest):
        st = self.stats[d]
        if arrival < self.latest_sent[d]:
            st["reordered"] += 1
        self.latest_sent[d] = max(self.latest_sent[d], arrival)
        try:
            out_sock.sendto(pkt, dest)
        except OSError:
            st["forward_errors"] += 1

    def release_due(self):
        """Sends the held datagrams whose time has come; returns the wait
        until the next one (or None)."""
        now = time.monotonic()
        while self.held and self.held[0][0] <= now:
            _due, _order, d, arrival, pkt, out_sock, dest = heapq.heappop(self.held)
            self.send(d, arrival, pkt, out_sock, dest)
        return self.held[0][0] - now if self.held else None

    def run(self):
        last = time.monotonic()
        while not self.stop:
            wait = self.release_due()
            wait = 0.2 if wait is None else min(0.2, max(0.0, wait))
            try:
                ready, _, _ = select.select([self.front, self.back], [], [], wait)
            except InterruptedError:
                continue
            if not ready:
                if self.held:
                    continue
                if self.args.idle_exit and time.monotonic() - last > self.args.idle_exit:
                    break
                continue
            last = time.monotonic()
            for s in ready:
                # drain what is queued on this socket
                for _ in range(256):
                    try:
                        pkt, addr = s.recvfrom(65536, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        # ICMP port unreachable from a peer that already exited
                        if s is self.back:
                            self.stats["c2s"]["forward_errors"] += 1
                        else:
                            self.stats["s2c"]["forward_errors"] += 1
                        continue
                    if s is self.front:
                        if self.client is None:
                            self.client = addr
                        if addr != self.client:
                            continue  # one client only
                        self.handle("c2s", pkt, self.back, self.target)
                    else:
                        if addr != self.target or self.client is None:
                            continue
                        self.handle("s2c", pkt, self.front, self.client)

    def summary(self):
        out = dict(self.stats)
        out["client"] = "%s:%d" % self.client if self.client else None
        out["duration_s"] = round(time.monotonic() - self.start, 3)
        out["drop_dir"] = self.args.drop_dir
        return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1 the client talks to")
    p.add_argument("--target", type=int, required=True, help="port of the real listener on 127.0.0.1")
    # Transmission takes no peer on 127.0.0.0/8 from a tracker: its suite
    # runs in a network namespace with other addresses on its loopback.
    p.add_argument("--host", default="127.0.0.1", help="address to listen on instead")
    p.add_argument("--target-host", default="127.0.0.1", help="the real listener's address")
    p.add_argument("--drop-dir", choices=["c2s", "s2c", "none"], default="none")
    p.add_argument("--drop-every", type=int, default=0)
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--drop-after", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--any-loss", type=float, default=0.0, help="drop any datagram, either way, with this probability")
    p.add_argument("--any-loss-dir", choices=["both", "c2s", "s2c"], default="both")
    p.add_argument("--dup", type=float, default=0.0, help="send a datagram twice with this probability")
    p.add_argument("--delay", type=float, default=0.0, help="hold every datagram this many ms")
    p.add_argument("--jitter", type=float, default=0.0, help="and up to this many ms more, at random (reorders)")
    p.add_argument("--log", help="write the JSON summary here at exit (default stdout)")
    p.add_argument("--idle-exit", type=float, default=0.0, help="exit after this many idle seconds")
    args = p.parse_args()

    relay = Relay(args)

    def on_signal(_sig, _frame):
        relay.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    relay.run()
    text = json.dumps(relay.summary(), indent=1, sort_keys=True)
    if args.log:
        with open(args.log, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
