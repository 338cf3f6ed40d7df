"""What a client may send: the request-head rules the front end and the workers share,
limit counters, and a log that cannot be flooded.

One rule set, one reading
-------------------------
Both sides parse with httptools (llhttp, strict mode) and apply the rules here from the
same parser callbacks: the front end to a connection's first request head, the worker
to every head it parses (every kept-alive and pipelined one; it re-reads the first one
too, with the same result). llhttp already refuses most smuggling shapes: Content-Length
with Transfer-Encoding, two Content-Lengths, `5, 5` and `+5`, a bad chunk size, obs-fold,
whitespace before the colon, NUL/CR/LF and other controls in values, bare LF line ends,
HTTP/2's preface, a request line with a tab or a trailing space. On top of that:

* field values lose their trailing spaces and tabs (RFC 9110 §5.5; llhttp drops the
  leading ones): both callbacks call `value.rstrip(OWS)` before anything reads a value;
* the version is 1.0 or 1.1, else **505** (RFC 9110 §15.6.6; HTTP/0.9, 1.2, 2.0, 3.0);
* the request line is `method SP target SP HTTP/x.y` with single spaces, after any
  CR/LF llhttp skips (RFC 9112 §3, §2.2): `check_line` (llhttp takes several spaces,
  and `RTSP/1.0` or `ICE/1.0` as if they were HTTP/1.0); it needs the message's bytes,
  which the front end has (its buffer) and the worker finds (workers/h1read.py);
* Host: exactly one in HTTP/1.1, at most one in 1.0, its value `uri-host [":" port]`
  (RFC 9112 §3.2: no userinfo, no spaces, brackets only around an IP literal), else 400;
* the target is origin-form (no fragment), absolute-form `http(s)://authority...` with a
  valid authority and no userinfo (RFC 9110 §4.2.1, §4.2.4), or `*` for OPTIONS only;
  anything else 400 (RFC 9112 §3.2). CONNECT is **501**: hostd is an origin server and
  tunnels nothing (400 when its target is not authority-form);
* Transfer-Encoding (its lines combined as one list, empty elements dropped): exactly
  `chunked` (any case) is read; `chunked` not last or twice is 400 (RFC 9112 §6.3: the
  length cannot be determined); codings before a final `chunked` (`gzip, chunked`) are
  **501** (RFC 9112 §6.1: hostd decodes none of them); any Transfer-Encoding in HTTP/1.0
  is 400 (RFC 9112 §6.1: faulty framing);
* a method llhttp does not know is **501** (RFC 9110 §9.1) when it is a token, else 400
  (`error_status`);
* the request target is limited (414), the head (431: its exact bytes, by `check_line`
  on both sides), a Content-Length body (413).

The version decides how the rest is read, so the header rules are only recorded while
the fields arrive and judged at the end of the head (`rule_complete`), version first.

A rule is broken by raising `Reject` from a callback: httptools then raises
HttpParserCallbackError with the Reject as its __context__ (see `rejected`); other
llhttp errors get their status from `error_status`.
"""
from __future__ import annotations

import ipaddress
import re
import time

from httptools import HttpParserInvalidMethodError

from hostd import log

#: longest request target (the URL) by default; the request line's other parts are short
MAX_URL_BYTES = 8192

#: optional whitespace around a field value (RFC 9110 §5.6.3); callbacks strip it with
#: `value.rstrip(b" \t")` (the literal is faster than this name; it is the same bytes)
OWS = b" \t"

# what a header name is, by length first (one int compare for most headers)
K_OTHER, K_HOST, K_LENGTH, K_TE = 0, 1, 2, 3
_SPECIAL = {b"host": K_HOST, b"content-length": K_LENGTH, b"transfer-encoding": K_TE}
_SPECIAL_LENGTHS = frozenset(len(k) for k in _SPECIAL)
SPECIAL_LENGTHS = _SPECIAL_LENGTHS

#: the host slot after a second Host line (the request is refused at the end of the head)
TWO_HOSTS = object()
NO_HOST = "HTTP/1.1 request without Host"


class Reject(Exception):
    """A request broke a rule; `status` is the answer (400, 413, 414, 431, 501, 505)."""

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


# --- llhttp's own errors ----------------------------------------------------------------
#: a method token (RFC 9110 §5.6.2 tchar) at a message start, after the CR/LF llhttp skips,
#: followed by SP or by the end of what has arrived
_METHOD_TOKEN = re.compile(rb"[\r\n]*[-!#$%&'*+.^_`|~0-9A-Za-z]+(?: |\Z)")


def error_status(exc: BaseException, message) -> int:
    """The answer to an llhttp error that no rule raised: 501 for a method llhttp does
    not know that is a token (`FOO`, `get`, RTSP's `DESCRIBE` with HTTP/1.1), 505 for a
    well-formed version llhttp does not speak (`HTTP/1.2`, `HTTP/3.0`), else 400.
    message: a callable giving the failing message's bytes from its first byte (None
    when unknown); called only for a method error."""
    if isinstance(exc, HttpParserInvalidMethodError) or \
            str(exc) == "Invalid method for HTTP/x.x request":
        data = message()
        if data is not None and _METHOD_TOKEN.match(data):
            return 501
        return 400
    if str(exc) == "Invalid HTTP version":
        return 505
    return 400


# --- the request line ---------------------------------------------------------------------
_EMPTY_LINES = re.compile(rb"[\r\n]*")


def check_line(buf: bytes, start: int, mlen: int, ulen: int, max_head: int) -> int:
    """Checks the request line and size of a head whose message begins at buf[start]
    (any CR/LF llhttp skipped before its request line included) and whose method and
    target, as llhttp gave them, are mlen and ulen bytes long:

    * single SPs and the `HTTP/` name (llhttp takes several spaces, `RTSP/` and `ICE/`):
      a target never holds a space, so a longer gap anywhere moves ` HTTP/` off the one
      place it is looked for;
    * the head, empty lines before it and the final CRLFCRLF included, is at most
      max_head bytes (`max_header_bytes`: what the front end counts on a connection's
      first request); searched for only when buf could hold more.

    Returns: the offset of the request line in buf. Raises: Reject(400 or 431)."""
    line = start
    c = buf[start]
    if c == 13 or c == 10:
        line = _EMPTY_LINES.match(buf, start).end()
    # llhttp saw the method at `line` and a SP after it
    if not buf.startswith(b" HTTP/", line + mlen + 1 + ulen):
        raise Reject(400, "request line is not `method SP target SP HTTP/x.y`")
    if len(buf) - start > max_head:
        size = buf.find(b"\r\n\r\n", line) + 4 - start
        if size > max_head:
            raise Reject(431, f"a head of {size} bytes")
    return line


def head_end(buf: bytes, line: int) -> int:
    """The offset just after the head whose request line is at buf[line] (complete)."""
    return buf.find(b"\r\n\r\n", line) + 4


# --- Host and the request target ------------------------------------------------------------
# reg-name characters (RFC 3986: unreserved and sub-delims; pct-encoded takes the slow path)
_REG_NAME = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;="
_HOST_SLOW = re.compile(
    rb"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]"                        # IPv6address
    rb"|\[[vV][0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+\]"   # IPvFuture
    rb"|(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"     # IPv4address, reg-name
    rb"(?::[0-9]*)?")


#: Host values host_ok said yes to (most requests repeat one): a set, emptied when full
_GOOD_HOSTS: set = set()


def host_ok(value: bytes) -> bool:
    """True when value is `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): what a
    Host field and an absolute-form authority may be. No userinfo, no spaces, an IPv6
    address only in brackets; an empty value is valid (a Host for no authority)."""
    rest = value.translate(None, _REG_NAME)
    if not rest:
        return True
    if rest == b":":
        port = value[value.find(b":") + 1:]
        return not port or port.isdigit()
    m = _HOST_SLOW.fullmatch(value)
    if m is None:
        return False
    ip6 = m.group("ip6")
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6.decode("ascii"))
        except ValueError:
            return False
    return True


def _authority_form(url: bytes) -> bool:
    """`host:port` (RFC 9112 §3.2.3): CONNECT's target."""
    colon = url.rfind(b":")
    return colon > 0 and url[colon + 1:].isdigit() and host_ok(url)


def check_target(method: bytes, url: bytes) -> bytes | None:
    """The slow path of the target rule (anything but a plain origin-form target of a
    method other than CONNECT). Returns: the authority of an absolute-form target (it
    replaces Host: RFC 9112 §3.2.2), else None. Raises: Reject."""
    if method == b"CONNECT":
        if _authority_form(url):
            raise Reject(501, "CONNECT: hostd is an origin server and tunnels nothing")
        raise Reject(400, "CONNECT without an authority-form target")
    if url == b"*":
        if method == b"OPTIONS":
            return None
        raise Reject(400, "asterisk-form target for a method other than OPTIONS")
    if b"#" in url:
        raise Reject(400, "fragment in the request target")
    if url[0] == 47:            # "/": origin-form
        return None
    low = url[:8].lower()
    if low.startswith(b"http://"):
        start = 7
    elif low.startswith(b"https://"):
        start = 8
    else:
        raise Reject(400, "request target is not origin-form, absolute-form http(s) "
                          "or asterisk-form")
    end = len(url)
    for sep in (b"/", b"?"):
        j = url.find(sep, start, end)
        if j >= 0:
            end = j
    authority = url[start:end]
    if b"@" in authority:
        raise Reject(400, "userinfo in the request target")
    if not authority or authority[0] == 58 or not host_ok(authority):
        raise Reject(400, "invalid authority in the request target")
    return authority


# --- Transfer-Encoding ---------------------------------------------------------------------
def check_te(value: bytes) -> None:
    """The slow path of the Transfer-Encoding rule (anything but exactly `chunked`);
    value is every Transfer-Encoding line joined with ",". Raises: Reject unless the
    list, empty elements dropped (RFC 9110 §5.6.1), is `chunked` alone (any case)."""
    codings = [c for c in (e.strip(OWS) for e in value.lower().split(b",")) if c]
    if not codings or codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
        raise Reject(400, "Transfer-Encoding: chunked is not the one final coding")
    if len(codings) > 1:
        raise Reject(501, "transfer-coding other than chunked")


class HeadState:
    """Per-request state of the shared rules. Mixed into the objects both sides keep per
    request (the front end's pending connection, the worker's Request), which define the
    slots `host` (None), `clen` (-1) and `te` (None)."""

    __slots__ = ()

    def rule_header(self, name: bytes, value: bytes) -> None:
        """Call for every header whose name's length is in SPECIAL_LENGTHS, with the
        value's trailing OWS stripped. Records; `rule_complete` judges."""
        k = kind(name)
        if k == K_OTHER:
            return
        if k == K_HOST:
            self.host = value if self.host is None else TWO_HOSTS
        elif k == K_LENGTH:
            # llhttp checked the digits and refused a second one
            self.clen = int(value)
        else:
            self.te = value if self.te is None else self.te + b"," + value

    def rule_complete(self, version: str, method: bytes, url: bytes) -> bytes | None:
        """Call from on_headers_complete with the parser's HTTP version and method and
        the whole target. Returns: an absolute-form target's authority (the request's
        Host from now on), else None. Raises: Reject."""
        if version != "1.1" and version != "1.0":
            raise Reject(505, f"HTTP/{version}")
        host = self.host
        if host is None:
            if version == "1.1":
                raise Reject(400, NO_HOST)
        elif host not in _GOOD_HOSTS:
            if host is TWO_HOSTS:
                raise Reject(400, "two Host headers")
            if not host_ok(host):
                raise Reject(400, "invalid Host")
            if len(_GOOD_HOSTS) >= 512:
                _GOOD_HOSTS.clear()
            _GOOD_HOSTS.add(host)
        te = self.te
        if te is not None:
            if version == "1.0":
                raise Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
            if te != b"chunked":
                check_te(te)
        if url[0] != 47 or method == b"CONNECT" or 35 in url:    # "/", "#"
            return check_target(method, url)
        return None


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
