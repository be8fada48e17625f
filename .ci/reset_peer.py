#!/usr/bin/env python3
"""A UDP peer that answers the first datagram (a SYN) with a uTP RESET
echoing its connection id, as libutp does; prints its port first."""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
d, a = s.recvfrom(2048)
cid = struct.unpack(">H", d[2:4])[0]; seq = struct.unpack(">H", d[16:18])[0]
s.sendto(bytes([0x31, 0]) + struct.pack(">HIIIHH", cid, 0, 0, 0, 1234, seq), a)
