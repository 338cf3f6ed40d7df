"""HTTP/1.1 pieces a worker's connections share: the canned answers, the Date header
(made once a second), request header names as environ keys, the Request record, and
message offsets for rerouting.

Byte offsets and rerouting
--------------------------
httptools gives no byte offsets, yet a kept-alive request for another pool must go back
to the front end with all of its bytes. So the connection keeps `raw`: the chunks fed
to the parser since a known message start (message number `raw_first`), reset whenever
a feed begins at a message boundary with nothing left to serve, and dropped (None) once
it grows past RAW_CAP. The start of message k > raw_first is unknown when it was
pipelined behind another one in the same recv(); it is recovered by re-feeding a fresh
parser with prefixes of `raw` and bisecting for the shortest prefix that completes
k - raw_first messages (llhttp is strict and deterministic, so the fresh parser sees
the same message boundaries). When `raw` was dropped, the request is answered 421
Misdirected Request and the connection closed.
"""
from __future__ import annotations

import select
import time
from email.utils import formatdate

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from hostd import limits

_monotonic = time.monotonic

RECV_SIZE = 65536
#: bytes of a message (and what follows it) kept for rerouting
RAW_CAP = 256 * 1024
#: how long a request body read may wait for the client (a send: [hostd] send_timeout)
BODY_TIMEOUT = 60.0
#: unread request body left after the response larger than this: close, don't drain
DISCARD_LIMIT = 1 << 20

_POLLIN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
_POLLOUT = select.POLLOUT | select.POLLERR | select.POLLHUP

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _error_response(status: str, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\nServer: hostd\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


R400 = _error_response("400 Bad Request", "Bad Request")
R408 = _error_response("408 Request Timeout", "Request Timeout")
R421 = _error_response("421 Misdirected Request", "Misdirected Request")
R431 = _error_response("431 Request Header Fields Too Large",
                       "Request Header Fields Too Large")
R413 = _error_response("413 Content Too Large", "Content Too Large")
R414 = _error_response("414 URI Too Long", "URI Too Long")
R501 = _error_response("501 Not Implemented", "Not Implemented")
R505 = _error_response("505 HTTP Version Not Supported",
                       "HTTP Version Not Supported: hostd speaks HTTP/1.0 and HTTP/1.1")
_REJECTS = {400: R400, 413: R413, 414: R414, 431: R431, 501: R501, 505: R505}
#: limit hits of this worker process (logged at a bounded rate)
COUNTERS = limits.Counters()
_ONE = (1).to_bytes(8, "little")


R503 = _error_response("503 Service Unavailable", "Service Unavailable")
_BODY500 = b"Internal Server Error\n"

# --- per-second Date header ------------------------------------------------------
_date_next = 0.0
_date_hdr = ""
_time = time.time


def _date() -> str:
    """The Date header line for now (made once a second)."""
    global _date_next, _date_hdr
    now = _time()
    if now >= _date_next or now < _date_next - 1.0:   # (or the clock went back)
        sec = int(now)
        _date_hdr = "Date: " + formatdate(sec, usegmt=True) + "\r\n"
        _date_next = sec + 1.0
    return _date_hdr


# --- request header name -> environ key (cached) -------------------------------------
_hkeys: dict = {}


def _hkey(name: bytes) -> str:
    """environ key for a request header name; "" for one to drop (contains "_")."""
    key = _hkeys.get(name)
    if key is not None:
        return key
    s = name.decode("latin-1").upper()
    if "_" in s:
        key = ""
    elif s == "CONTENT-TYPE":
        key = "CONTENT_TYPE"
    elif s == "CONTENT-LENGTH":
        key = "CONTENT_LENGTH"
    else:
        key = "HTTP_" + s.replace("-", "_")
    if len(_hkeys) < 2048:
        _hkeys[name] = key
    return key


_methods: dict = {}
_protocols = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "0.9": "HTTP/0.9"}


class _HeadTooLarge(Exception):
    pass


class _Gone(Exception):
    """The connection was closed or handed off while serving; stop using it."""


class Request(limits.HeadState):
    """One parsed (or being parsed) request of a connection."""

    __slots__ = ("index", "env", "url", "headers_done", "complete", "buf", "discard",
                 "head_size", "keep_alive", "expect", "http11", "host", "clen", "te",
                 "got", "t0")

    def __init__(self, index: int, env: dict):
        self.index = index
        self.env = env
        self.url = b""
        self.headers_done = False
        self.complete = False
        self.buf = None          # bytearray of body bytes not yet read by the app
        self.discard = False     # body bytes are dropped (app finished)
        self.head_size = 0
        self.host = None         # the shared head rules' state (hostd/limits.py)
        self.clen = -1
        self.te = None           # Transfer-Encoding value (chunked once the head passed)
        self.got = 0             # body bytes received
        self.t0 = 0.0            # when the app first waited for body bytes


def _wait(fd: int, events: int, timeout: float) -> bool:
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(timeout * 1000.0))


class _Counter:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0

    def on_message_complete(self):
        self.n += 1


def message_offset(buf: bytes, nskip: int) -> int:
    """Offset in `buf` (which starts at a message start) where message number nskip
    (0-based) starts: the shortest prefix that completes nskip messages in a fresh
    parser. Returns -1 when buf does not hold nskip complete messages."""
    view = memoryview(buf)

    def completes(n: int) -> bool:
        c = _Counter()
        p = HttpRequestParser(c)
        try:
            p.feed_data(view[:n])
        except HttpParserUpgrade:
            pass
        except HttpParserError:
            return True  # can't happen for a prefix of what parsed before; stop there
        return c.n >= nskip

    lo, hi = 0, len(buf)
    if not completes(hi):
        return -1
    while lo < hi:
        mid = (lo + hi) // 2
        if completes(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
