#!/usr/bin/env python3
"""Helpers for interop/ledbat_netns.sh (Python stdlib only).

Subcommands:
  bridge   frame-level bottleneck between two interfaces (AF_PACKET): rate,
           drop-tail buffer and one-way delay, applied to every frame in both
           directions; logs every forward packet (arrival, queueing wait,
           size, flow, dropped or not).
  source   writes zeros to stdout for N seconds (feeds `utp connect`).
  sink     counts bytes from stdin (or one TCP connection) and logs
           (time, cumulative bytes).
  tcpsend  one TCP bulk sender with a chosen congestion control (CUBIC),
           for N seconds; then an abortive close (RST) so it leaves at once.
  mark     prints "NAME WALLTIME" (events file of the scenarios).
  report   reads a run directory and prints the figures.

Times in every log are wall-clock seconds (time.time()); all processes run on
one machine, so they share the clock.
"""

import argparse
import collections
import json
import os
import select
import signal
import socket
import statistics
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)


# ---------------------------------------------------------------- bridge


def flow_key(frame):
    """A short name of the frame's flow: udp:SPORT>DPORT, tcp:..., icmp, arp."""
    if len(frame) < 14:
        return "short"
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype == 0x0806:
        return "arp"
    if ethertype != 0x0800 or len(frame) < 34:
        return "eth%04x" % ethertype
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    if proto in (6, 17) and len(frame) >= 14 + ihl + 4:
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
        return "%s:%d>%d" % ("tcp" if proto == 6 else "udp", sport, dport)
    if proto == 1:
        return "icmp"
    return "ip%d" % proto


class Direction:
    """One direction of the bottleneck: a drop-tail FIFO served at `rate`
    bit/s, then a delay line of `delay` seconds.

    The queue is modelled by departure times: a frame arriving at `now`
    starts serialisation at max(now, previous departure) and leaves the
    queue after its own serialisation; the buffer holds at most `limit`
    frames (the one being serialised included), as utp-sim's
    Buffer::Packets does. Rate is charged on the IP packet (frame minus the
    14-byte Ethernet header), as utp-sim charges IP+UDP+uTP bytes.
    """

    def __init__(self, out_sock, rate_bps, delay_s, limit):
        self.out = out_sock
        self.rate = float(rate_bps)
        self.delay = delay_s
        self.limit = limit
        self.departures = collections.deque()
        self.last_departure = 0.0
        self.line = collections.deque()  # (release time, frame)
        self.drops = 0
        self.send_errors = 0
        self.forwarded = 0
        # How late frames left against their schedule (scheduling noise of
        # this process on a busy machine; it adds to the configured delay).
        self.late_max = 0.0
        self.late_sum = 0.0

    def arrive(self, now, frame):
        """Returns (queueing wait in s, dropped)."""
        deps = self.departures
        while deps and deps[0] <= now:
            deps.popleft()
        if len(deps) >= self.limit:
            self.drops += 1
            return (self.last_departure - now, True)
        start = max(now, self.last_departure)
        dep = start + max(len(frame) - 14, 46) * 8.0 / self.rate
        self.last_departure = dep
        deps.append(dep)
        self.line.append((dep + self.delay, frame))
        return (start - now, False)

    def release(self, now):
        line = self.line
        while line and line[0][0] <= now:
            due, frame = line.popleft()
            late = now - due
            self.late_sum += late
            if late > self.late_max:
                self.late_max = late
            try:
                self.out.send(frame)
                self.forwarded += 1
            except OSError:
                self.send_errors += 1

    def next_release(self):
        return self.line[0][0] if self.line else None


def open_packet_socket(ifname):
    # Protocol 0 until bound, so nothing from other interfaces sneaks in.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    for opt, val in ((SO_RCVBUFFORCE, 16 << 20), (SO_SNDBUFFORCE, 16 << 20)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, val)
        except OSError:
            pass
    for opt in (PACKET_IGNORE_OUTGOING, PACKET_QDISC_BYPASS):
        try:
            s.setsockopt(SOL_PACKET, opt, 1)
        except OSError:
            pass
    s.bind((ifname, ETH_P_ALL))
    s.setblocking(False)
    return s


def kernel_drops(sock):
    try:
        raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        _packets, drops = struct.unpack("II", raw)
        return drops
    except OSError:
        return -1


def cmd_bridge(a):
    sa = open_packet_socket(a.a)
    sb = open_packet_socket(a.b)
    rate = a.rate_mbit * 1e6
    fwd = Direction(sb, rate, a.delay_ms / 1e3, a.buffer)  # a -> b
    rev = Direction(sa, rate, a.delay_ms / 1e3, a.buffer)  # b -> a
    wall_offset = time.time() - time.monotonic()
    log = open(a.log, "w", buffering=1 << 20)
    log.write("# t_arrival_wall wait_ms ip_bytes flow dropped\n")
    kdrops = [0, 0]
    running = [True]

    def stop(_sig, _frm):
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if a.ready:
        with open(a.ready, "w") as f:
            f.write("ready\n")
    poller = select.epoll()
    poller.register(sa.fileno(), select.EPOLLIN)
    poller.register(sb.fileno(), select.EPOLLIN)
    by_fd = {sa.fileno(): (sa, fwd, True), sb.fileno(): (sb, rev, False)}
    while running[0]:
        now = time.monotonic()
        nxt = [t for t in (fwd.next_release(), rev.next_release()) if t is not None]
        timeout = min(nxt) - now if nxt else 0.2
        timeout = min(max(timeout, 0.0), 0.2)
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            events = []
        for fd, _ev in events:
            sock, direction, forward = by_fd[fd]
            for _ in range(256):
                try:
                    frame, addr = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                t = time.monotonic()
                wait, dropped = direction.arrive(t, frame)
                if forward:
                    log.write(
                        "%.6f %.3f %d %s %s\n"
                        % (
                            t + wall_offset,
                            wait * 1e3,
                            len(frame) - 14,
                            flow_key(frame),
                            "D" if dropped else ".",
                        )
                    )
        now = time.monotonic()
        fwd.release(now)
        rev.release(now)
    kdrops = [kernel_drops(sa), kernel_drops(sb)]
    summary = {
        "forward_drops": fwd.drops,
        "reverse_drops": rev.drops,
        "forwarded": [fwd.forwarded, rev.forwarded],
        "send_errors": [fwd.send_errors, rev.send_errors],
        "socket_drops": kdrops,
        "release_late_mean_ms": [
            round(1e3 * d.late_sum / max(d.forwarded, 1), 3) for d in (fwd, rev)
        ],
        "release_late_max_ms": [round(1e3 * d.late_max, 3) for d in (fwd, rev)],
    }
    log.write("# summary %s\n" % json.dumps(summary))
    log.close()


# ---------------------------------------------------------------- traffic


def cmd_source(a):
    block = bytes(256 * 1024)
    end = time.monotonic() + a.seconds
    out = sys.stdout.buffer
    try:
        while time.monotonic() < end:
            out.write(block)
            out.flush()
    except BrokenPipeError:
        pass
    try:
        out.close()
    except BrokenPipeError:
        pass


def count_into(read, log_path):
    """Calls read() until it returns b"" (or raises ConnectionError) and logs
    (wall time, cumulative bytes) at most every 20 ms, plus the last one."""
    total = 0
    last = 0.0
    with open(log_path, "w", buffering=1 << 16) as log:
        log.write("%.6f 0\n" % time.time())
        while True:
            try:
                chunk = read()
            except ConnectionError:
                chunk = b""
            now = time.time()
            if not chunk:
                log.write("%.6f %d\n" % (now, total))
                break
            total += len(chunk)
            if now - last >= 0.02:
                log.write("%.6f %d\n" % (now, total))
                last = now
    return total


def cmd_sink(a):
    if a.tcp is None:
        fd = sys.stdin.buffer.fileno()
        count_into(lambda: os.read(fd, 1 << 18), a.log)
        return
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", a.tcp))
    srv.listen(1)
    conn, _ = srv.accept()
    srv.close()
    count_into(lambda: conn.recv(1 << 18), a.log)
    conn.close()


def cmd_tcpsend(a):
    host, port = a.to.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, a.cc.encode())
    s.connect((host, int(port)))
    got = s.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16).split(b"\0")[0].decode()
    if got != a.cc:
        print("tcpsend: congestion control is %s, not %s" % (got, a.cc), file=sys.stderr)
        sys.exit(1)
    print("tcpsend: congestion control %s" % got, file=sys.stderr)
    block = bytes(64 * 1024)
    end = time.monotonic() + a.seconds
    s.settimeout(0.05)
    sent = 0
    while time.monotonic() < end:
        try:
            sent += s.send(block)
        except socket.timeout:
            pass
    # Abortive close: the flow leaves now instead of draining its send buffer.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    print("tcpsend: wrote %d bytes" % sent, file=sys.stderr)


def cmd_mark(a):
    print("%s %.6f" % (a.name, time.time()))


# ---------------------------------------------------------------- report


def read_counts(path):
    pts = []
    try:
        with open(path) as f:
            for line in f:
                t, b = line.split()
                pts.append((float(t), int(b)))
    except FileNotFoundError:
        pass
    return pts


def cum_at(pts, t):
    """Cumulative bytes at time t, interpolating between log points."""
    if not pts or t <= pts[0][0]:
        return 0.0
    if t >= pts[-1][0]:
        return float(pts[-1][1])
    lo, hi = 0, len(pts) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pts[mid][0] <= t:
            lo = mid
        else:
            hi = mid
    (t0, b0), (t1, b1) = pts[lo], pts[hi]
    if t1 == t0:
        return float(b1)
    return b0 + (b1 - b0) * (t - t0) / (t1 - t0)


def rate_mbit(pts, a, b):
    if b <= a:
        return 0.0
    return (cum_at(pts, b) - cum_at(pts, a)) * 8 / (b - a) / 1e6


def read_ping(path):
    """(send time, rtt ms) from `ping -D` output."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if not line.startswith("[") or "time=" not in line:
                    continue
                ts = float(line[1 : line.index("]")])
                rtt = float(line.split("time=")[1].split()[0])
                out.append((ts - rtt / 1e3, rtt))
    except FileNotFoundError:
        pass
    return out


def read_bridge(path):
    """Forward packets: (arrival, wait ms, ip bytes, flow, dropped)."""
    rows = []
    summary = None
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("# summary "):
                    summary = json.loads(line[len("# summary ") :])
                    continue
                if line.startswith("#"):
                    continue
                p = line.split()
                if len(p) != 5:
                    continue
                rows.append((float(p[0]), float(p[1]), int(p[2]), p[3], p[4] == "D"))
    except FileNotFoundError:
        pass
    return rows, summary


def read_marks(path):
    marks = {}
    with open(path) as f:
        for line in f:
            name, t = line.split()
            marks[name] = float(t)
    return marks


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    i = int(k)
    j = min(i + 1, len(v) - 1)
    return v[i] + (v[j] - v[i]) * (k - i)


def jain(xs):
    s = sum(xs)
    sq = sum(x * x for x in xs)
    return s * s / (len(xs) * sq) if sq > 0 else 0.0


def stats_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def first_time(pts, start, stop, pred, window=1.0, step=0.1):
    """First t in [start, stop] with pred(rate over [t - window, t])."""
    t = start
    while t <= stop + 1e-9:
        if pred(rate_mbit(pts, t - window, t)):
            return t
        t += step
    return None


class Report:
    def __init__(self, run, link_mbit):
        self.run = run
        self.link = link_mbit
        self.marks = read_marks(os.path.join(run, "events"))
        self.bridge, self.bridge_summary = read_bridge(os.path.join(run, "bridge.log"))
        self.ping = read_ping(os.path.join(run, "ping.log"))
        self.rows = []  # (scenario, figure, value, unit, libutp / goal)

    def add(self, sc, what, value, unit, note=""):
        self.rows.append((sc, what, value, unit, note))

    def qdelays(self, a, b):
        return [w for (t, w, _n, _k, d) in self.bridge if a <= t <= b and not d]

    def drops(self, a, b, prefix=""):
        return sum(1 for (t, _w, _n, k, d) in self.bridge if a <= t <= b and d and k.startswith(prefix))

    def rtts(self, a, b):
        return [r for (t, r) in self.ping if a <= t <= b]

    def idle_rtt(self):
        return statistics.median(self.rtts(self.marks["idle_start"], self.marks["idle_end"]))

    def series(self, title, t0, flows, end, step=1.0):
        print("\n%s: goodput per %g s (Mbit/s), ping RTT median (ms), bridge queue wait median (ms), drops" % (title, step))
        print("   t " + "".join("%9s" % n for n, _ in flows) + "   rtt  queue drops")
        t = 0.0
        while t + step <= end + 1e-9:
            a, b = t0 + t, t0 + t + step
            cells = "".join("%9.2f" % rate_mbit(p, a, b) for _, p in flows)
            r = self.rtts(a, b)
            q = self.qdelays(a, b)
            print(
                "%4.0f %s %5s %6s %5d"
                % (
                    t + step,
                    cells,
                    "%.0f" % statistics.median(r) if r else "-",
                    "%.0f" % statistics.median(q) if q else "-",
                    self.drops(a, b),
                )
            )
            t += step

    def sender_stats(self, sc, name):
        s = stats_json(os.path.join(self.run, "%s.stats.json" % name))
        if s is None:
            self.add(sc, "%s sender stats" % name, float("nan"), "", "missing (sender killed?)")
            return
        self.add(
            sc,
            "%s retransmits / timeouts" % name,
            "%d / %d" % (s["packets_retransmitted"], s["timeouts"]),
            "pkts",
            "",
        )

    def steady(self):
        m = self.marks
        if "steady_start" not in m:
            return
        t0, t1 = m["steady_start"], m["steady_end"]
        utp = read_counts(os.path.join(self.run, "steady_utp.count"))
        idle = self.idle_rtt()
        a = t0 + 5
        g = rate_mbit(utp, a, t1)
        r = self.rtts(a, t1)
        q = self.qdelays(a, t1)
        sc = "1 steady"
        self.series("steady", t0, [("utp", utp)], t1 - t0)
        self.add(sc, "uTP goodput, 5 s to end", g, "Mbit/s", "max ~9.67 (1400/1448 of 10)")
        self.add(sc, "uTP goodput, whole run", rate_mbit(utp, t0, t1), "Mbit/s")
        self.add(sc, "idle ping RTT median", idle, "ms")
        self.add(sc, "ping RTT median / p95, 5 s to end", "%.1f / %.1f" % (pct(r, 50), pct(r, 95)), "ms")
        self.add(sc, "added delay (ping median - idle)", pct(r, 50) - idle, "ms", "target 100; libutp ~97")
        self.add(sc, "added delay p95 (ping p95 - idle)", pct(r, 95) - idle, "ms")
        self.add(sc, "bridge queue wait median / p95", "%.1f / %.1f" % (pct(q, 50), pct(q, 95)), "ms")
        self.add(sc, "bottleneck drops, 5 s to end / all", "%d / %d" % (self.drops(a, t1), self.drops(t0, t1)), "pkts")
        self.sender_stats(sc, "steady_utp")

    def yielding(self):
        m = self.marks
        if "yield_start" not in m:
            return
        t0, tj, tl, t1 = m["yield_start"], m["tcp_join"], m["tcp_leave"], m["yield_end"]
        utp = read_counts(os.path.join(self.run, "yield_utp.count"))
        tcp = read_counts(os.path.join(self.run, "yield_tcp.count"))
        sc = "2 yield"
        self.series("yield (TCP CUBIC joins at %.0f s, leaves at %.0f s)" % (tj - t0, tl - t0), t0, [("utp", utp), ("tcp", tcp)], t1 - t0)
        link = self.link
        self.add(sc, "uTP goodput alone, 5 s to TCP join", rate_mbit(utp, t0 + 5, tj), "Mbit/s")
        settle = min(10.0, (tl - tj) / 2)
        self.add(
            sc,
            "uTP share while TCP runs, join+%.0f s to leave" % settle,
            100 * rate_mbit(utp, tj + settle, tl) / link,
            "% of link",
            "goal <= 10; libutp ~5",
        )
        self.add(sc, "uTP share, whole TCP period", 100 * rate_mbit(utp, tj, tl) / link, "% of link")
        self.add(sc, "TCP share, join+%.0f s to leave" % settle, 100 * rate_mbit(tcp, tj + settle, tl) / link, "% of link")
        ty = first_time(utp, tj, tl, lambda r: r <= 0.1 * link)
        self.add(sc, "time to yield (uTP 1-s goodput <= 10% of link)", ty - tj if ty else float("nan"), "s", "libutp ~10")
        tt = first_time(tcp, tj, tl, lambda r: r >= 0.9 * link)
        self.add(sc, "for reference: TCP 1-s goodput >= 90% of link after", tt - tj if tt else float("nan"), "s", "CUBIC's own ramp")
        if ty:
            later = [rate_mbit(utp, t - 1, t) for t in frange(ty + 1, tl, 1.0)]
            above = sum(1 for x in later if x > 0.1 * link)
            self.add(sc, "1-s bins above 10% after yielding, until leave", "%d of %d" % (above, len(later)), "")
        tb = first_time(utp, tl, t1, lambda r: r >= 0.9 * link)
        self.add(sc, "time to come back (uTP 1-s goodput >= 90% of link)", tb - tl if tb else float("nan"), "s")
        self.add(sc, "uTP share, leave to leave+10 s", 100 * rate_mbit(utp, tl, min(t1, tl + 10)) / link, "% of link")
        r = self.rtts(tj + settle, tl)
        self.add(sc, "ping RTT median with TCP", pct(r, 50), "ms", "CUBIC fills the buffer")
        self.sender_stats(sc, "yield_utp")

    def latecomer(self):
        m = self.marks
        if "late_start" not in m:
            return
        t0, t2, t1 = m["late_start"], m["late_second"], m["late_end"]
        f1 = read_counts(os.path.join(self.run, "late_first.count"))
        f2 = read_counts(os.path.join(self.run, "late_second.count"))
        sc = "3 latecomer"
        self.series("latecomer (second uTP flow starts at %.0f s)" % (t2 - t0), t0, [("first", f1), ("second", f2)], t1 - t0)
        a = max(t2, t1 - 30)
        x = [rate_mbit(f1, a, t1), rate_mbit(f2, a, t1)]
        self.add(sc, "Jain index, last %.0f s" % (t1 - a), jain(x), "", "libutp ~0.75; sim goal >= 0.9")
        self.add(sc, "first / second goodput, same window", "%.2f / %.2f" % tuple(x), "Mbit/s")
        self.add(sc, "utilisation, same window", 100 * sum(x) / self.link, "% (goodput)")
        idle = self.idle_rtt()
        r = self.rtts(a, t1)
        self.add(sc, "added delay (ping median - idle), same window", pct(r, 50) - idle, "ms")
        self.sender_stats(sc, "late_first")
        self.sender_stats(sc, "late_second")

    def print_table(self):
        print("\n=== real network (netns bridge): figures ===")
        w = max(len(r[1]) for r in self.rows) if self.rows else 10
        for sc, what, value, unit, note in self.rows:
            v = "%.2f" % value if isinstance(value, float) else str(value)
            print("%-12s %-*s %14s %-10s %s" % (sc, w, what, v, unit, note))
        if self.bridge_summary:
            print("bridge: %s" % json.dumps(self.bridge_summary))


def frange(a, b, step):
    t = a
    while t <= b + 1e-9:
        yield t
        t += step


def cmd_report(a):
    rep = Report(a.run, a.rate_mbit)
    rep.steady()
    rep.yielding()
    rep.latecomer()
    rep.print_table()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bridge")
    b.add_argument("--a", required=True, help="interface towards the sender")
    b.add_argument("--b", required=True, help="interface towards the receiver")
    b.add_argument("--rate-mbit", type=float, default=10.0)
    b.add_argument("--delay-ms", type=float, default=20.0)
    b.add_argument("--buffer", type=int, default=300, help="packets")
    b.add_argument("--log", required=True)
    b.add_argument("--ready", help="file written once the sockets are bound")
    s = sub.add_parser("source")
    s.add_argument("--seconds", type=float, required=True)
    k = sub.add_parser("sink")
    k.add_argument("--log", required=True)
    k.add_argument("--tcp", type=int, help="accept one TCP connection on this port instead of stdin")
    t = sub.add_parser("tcpsend")
    t.add_argument("--to", required=True)
    t.add_argument("--seconds", type=float, required=True)
    t.add_argument("--cc", default="cubic")
    m = sub.add_parser("mark")
    m.add_argument("name")
    r = sub.add_parser("report")
    r.add_argument("run")
    r.add_argument("--rate-mbit", type=float, default=10.0)
    a = p.parse_args()
    {
        "bridge": cmd_bridge,
        "source": cmd_source,
        "sink": cmd_sink,
        "tcpsend": cmd_tcpsend,
        "mark": cmd_mark,
        "report": cmd_report,
    }[a.cmd](a)


if __name__ == "__main__":
    main()
