#!/usr/bin/env python3
"""Seed corpora for the fuzz targets from the real libutp/libtorrent captures
(utp-proto/tests/captures/*.json): every datagram alone for `packet`, and
each conversation's datagrams in the `endpoint` target's input format
([address, delay, length, bytes...]*, lengths capped at 255)."""
import glob
import json
import os

here = os.path.dirname(os.path.abspath(__file__))
caps = sorted(glob.glob(os.path.join(here, "..", "utp-proto", "tests", "captures", "*.json")))
for target in ("packet", "endpoint"):
    os.makedirs(os.path.join(here, "corpus", target), exist_ok=True)
n = 0
for path in caps:
    name = os.path.splitext(os.path.basename(path))[0]
    conv = bytearray()
    for i, d in enumerate(json.load(open(path))["datagrams"]):
        raw = bytes.fromhex(d["hex"])
        with open(os.path.join(here, "corpus", "packet", f"{name}-{i:03}"), "wb") as f:
            f.write(raw)
        n += 1
        chunk = raw[:255]
        conv += bytes([0 if d["from"] == "A" else 1, 1, len(chunk)]) + chunk
    with open(os.path.join(here, "corpus", "endpoint", name), "wb") as f:
        f.write(conv)
print(f"{n} packet seeds, {len(caps)} endpoint seeds")
