"""What a client may send: the request-head rules the front end and the workers share,
limit counters, and a log that cannot be flooded.

Both sides parse with httptools (llhttp, strict mode), which already refuses most
smuggling shapes: Content-Length with Transfer-Encoding, duplicate Content-Length,
`chunked` not last, bad chunk sizes, obs-fold, whitespace before the colon, NUL/CR/LF
in values, bare LF line ends, HTTP/2's preface. On top of that both sides apply the
same extra rules here, from parser callbacks, so a head that passes one passes the
other:

* a Transfer-Encoding other than exactly `chunked` (any case, OWS around) is refused:
  hostd decodes no other coding, and `gzip, chunked` would hand the app a body it
  cannot read; a second Transfer-Encoding line is refused too;
* Transfer-Encoding in an HTTP/1.0 request is refused (RFC 9112 §6.1: faulty framing);
* a second Host header is refused, and HTTP/0.9 requests (no headers, no framing);
* the request target is limited (414), the head (431), a Content-Length body (413).

A rule is broken by raising `Reject` from a callback: httptools then raises
HttpParserCallbackError with the Reject as its __context__ (see `rejected`).
"""
from __future__ import annotations

import time

from hostd import log

#: longest request target (the URL) by default; the request line's other parts are short
MAX_URL_BYTES = 8192

# what a header name is, by length first (one int compare for most headers)
K_OTHER, K_HOST, K_LENGTH, K_TE = 0, 1, 2, 3
_SPECIAL = {b"host": K_HOST, b"content-length": K_LENGTH, b"transfer-encoding": K_TE}
_SPECIAL_LENGTHS = frozenset(len(k) for k in _SPECIAL)


class Reject(Exception):
    """A request broke a rule; `status` is the answer (400, 413, 414, 431, 505)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def rejected(exc: BaseException) -> Reject | None:
    """The Reject behind an httptools error raised out of a callback, or None."""
    ctx = exc.__context__
    return ctx if isinstance(ctx, Reject) else None


def kind(name: bytes) -> int:
    """K_HOST, K_LENGTH, K_TE or K_OTHER for a header name (any case)."""
    if len(name) not in _SPECIAL_LENGTHS:
        return K_OTHER
    return _SPECIAL.get(name.lower(), K_OTHER)


class HeadState:
    """Per-request state of the shared rules. Mixed into the objects both sides keep per
    request (the front end's pending connection, the worker's Request)."""

    __slots__ = ()

    def rule_header(self, name: bytes, value: bytes) -> None:
        """Call for every header whose name's length is in _SPECIAL_LENGTHS."""
        k = kind(name)
        if k == K_OTHER:
            return
        if k == K_HOST:
            if self.host is not None:
                raise Reject(400, "two Host headers")
            self.host = value
        elif k == K_LENGTH:
            # llhttp checked the digits and refused a second one
            self.clen = int(value) if value else -1
        else:
            if self.te:
                raise Reject(400, "two Transfer-Encoding headers")
            if value.strip(b" \t").lower() != b"chunked":
                raise Reject(400, "unsupported transfer-coding")
            self.te = True

    def rule_complete(self, version: str) -> None:
        """Call from on_headers_complete with the parser's HTTP version."""
        if version == "1.1":
            return
        if version == "0.9":
            raise Reject(400, "HTTP/0.9")
        if self.te and version == "1.0":
            raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")


SPECIAL_LENGTHS = _SPECIAL_LENGTHS


# --- counters and a log that cannot flood ------------------------------------------------
class Counters:
    """Limit hits of one process: name -> count. Each kind is logged at most once per
    `every` seconds, with how many hits the message stands for."""

    def __init__(self, every: float = 10.0, **fields):
        self.counts: dict[str, int] = {}
        self.every = every
        self.fields = fields
        self._logged: dict[str, tuple[float, int]] = {}

    def hit(self, name: str, detail: str = "") -> None:
        n = self.counts.get(name, 0) + 1
        self.counts[name] = n
        last = self._logged.get(name)
        now = time.monotonic()
        if last is None or now - last[0] >= self.every:
            since = n - (last[1] if last else 0)
            self._logged[name] = (now, n)
            msg = f"{name}: {detail}" if detail else name
            if since > 1:
                msg += f" ({since} times since the last message, {n} in all)"
            log.warning("limit", msg, LIMIT=name, COUNT=n, **self.fields)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


# --- bandwidth ------------------------------------------------------------------------------
class Throttle:
    """A token bucket: `take(n)` returns how long to wait before sending n bytes so the
    rate stays at `rate` bytes/s (burst: a tenth of a second's worth, at least 16 KiB).
    Shared by the threads of one process (a race costs a few bytes, not correctness)."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: int):
        self.rate = float(rate)
        self.burst = max(16384.0, self.rate / 10)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    def take(self, n: int) -> float:
        now = time.monotonic()
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - n
        self.stamp = now
        self.tokens = tokens
        return -tokens / self.rate if tokens < 0 else 0.0
