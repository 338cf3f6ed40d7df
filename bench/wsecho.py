#!/usr/bin/env python3
"""Python fallback of bench/wsecho.c (used by bench/asgi.py only when gcc is missing).

Same command line, same stdin/stdout protocol and the same checks as the C client
(see wsecho.c): fixed Sec-WebSocket-Key, the 101's Sec-WebSocket-Accept checked,
masked text frames of -s bytes, each echo compared with what was sent, pings answered,
fragments reassembled, only correct echoes within -d seconds counted. One asyncio
loop (uvloop if importable), -t is accepted and ignored: much slower than the C
client, so its figures are the client's ceiling more than the server's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import sys
import time

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def frame(op: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | op]) + (bytes([0x80 | n]) if n < 126 else
                                 bytes([0x80 | 126]) + struct.pack("!H", n))
    m = (mask * (n // 4 + 1))[:n]
    return head + mask + bytes(a ^ b for a, b in zip(payload, m))


class Stats:
    def __init__(self):
        self.messages = self.bad = self.closed = self.eof = self.errors = self.proto = 0
        self.pings = 0
        self.lat: list[float] = []
        self.first_error = ""

    def note(self, text: str):
        if not self.first_error:
            self.first_error = text


async def open_conn(i, args):
    r, w = await asyncio.wait_for(asyncio.open_connection(args.a, args.p), 10)
    host = args.H or f"{args.a}:{args.p}"
    w.write(f"GET {args.u} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    if not head.startswith(b"HTTP/1.1 101"):
        first = head.split(b"\r\n")[0]
        raise ConnectionError(f"conn {i}: handshake answered {first!r}")
    ok = any(line.lower().startswith(b"sec-websocket-accept:")
             and line.split(b":", 1)[1].strip() == ACCEPT for line in head.split(b"\r\n"))
    if not ok:
        raise ConnectionError(f"conn {i}: no or wrong Sec-WebSocket-Accept in the 101")
    return r, w


async def client(i, r, w, st: Stats, size: int, end: float):
    seq = 0
    frag_op, frag = 0, b""
    while True:
        seq += 1
        msg = f"{i:06d}:{seq:012d}:".encode()[:size].ljust(size, b"x")
        sent = time.monotonic()
        w.write(frame(1, msg))
        while True:      # until a whole message came
            try:
                h = await r.readexactly(2)
                n = h[1] & 0x7F
                if h[1] & 0x80 or h[0] & 0x70:
                    st.proto += 1
                    st.note(f"conn {i}: masked server frame or RSV bits set")
                    return False
                if n == 126:
                    n = struct.unpack("!H", await r.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", await r.readexactly(8))[0]
                p = await r.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                st.eof += isinstance(e, asyncio.IncompleteReadError)
                st.errors += not isinstance(e, asyncio.IncompleteReadError)
                st.note(f"conn {i}: {type(e).__name__}: {e}")
                return False
            fin, op = h[0] & 0x80, h[0] & 0x0F
            if op == 8:
                st.closed += 1
                code = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                st.note(f"conn {i}: server closed (code {code})")
                return False
            if op == 9:
                st.pings += 1
                w.write(frame(10, p))
                continue
            if op == 10:
                continue
            if op in (1, 2) and not fin:
                frag_op, frag = op, p
                continue
            if op == 0:
                frag += p
                if not fin:
                    continue
                op, p, frag_op, frag = frag_op, frag, 0, b""
            break
        now = time.monotonic()
        if op != 1 or p != msg:
            st.bad += 1
            st.note(f"conn {i}: echo differs from the message sent")
            return False
        if now >= end:
            return True
        st.messages += 1
        st.lat.append(now - sent)


def pct(xs, q):
    if not xs:
        return -1
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e6


async def main_async(args):
    conns, err = [], ""
    t0 = time.monotonic()
    for i in range(args.c):
        try:
            conns.append((i, *await open_conn(i, args)))
        except (OSError, asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError) as e:
            err = err or f"conn {i}: {type(e).__name__}: {e}"
    print("ready " + json.dumps({"connected": len(conns), "handshake_failed": args.c - len(conns),
                                 "handshake_s": round(time.monotonic() - t0, 3),
                                 "first_error": err}), flush=True)
    if not conns:
        return 1
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    st = Stats()
    start = time.monotonic()
    end = start + args.d
    alive = await asyncio.gather(*(client(i, r, w, st, args.s, end) for i, r, w in conns))
    elapsed = time.monotonic() - start
    lat = sorted(st.lat)
    print("result " + json.dumps({
        "connections": len(conns), "threads": 1, "size": args.s, "messages": st.messages,
        "elapsed_s": round(elapsed, 4), "rate": round(st.messages / elapsed, 1),
        "p50_us": pct(lat, 0.5), "p90_us": pct(lat, 0.9), "p99_us": pct(lat, 0.99),
        "max_us": pct(lat, 1.0), "bad_payload": st.bad, "closed_by_server": st.closed,
        "eof": st.eof, "socket_errors": st.errors, "protocol_errors": st.proto,
        "pings": st.pings, "alive_at_end": sum(bool(a) for a in alive),
        "first_error": st.first_error, "client": "python fallback"}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for (_i, _r, w), a in zip(conns, alive):
        if a:
            w.write(frame(8, struct.pack("!H", 1000)))
        w.close()
    await asyncio.sleep(0.05)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-a", default="127.0.0.1")
    ap.add_argument("-p", type=int, required=True)
    ap.add_argument("-u", default="/ws")
    ap.add_argument("-H", default=None)
    ap.add_argument("-c", type=int, default=50)
    ap.add_argument("-t", type=int, default=1)
    ap.add_argument("-d", type=float, default=8)
    ap.add_argument("-s", type=int, default=32)
    args = ap.parse_args()
    if args.s < 20 or args.s > 65535:
        ap.error("-s must be 20..65535")
    try:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
