"""One client connection inside a worker: HTTP/1.1 parsing (httptools/llhttp, the parser
the front end uses), running requests through the WSGI application, writing responses,
and handing connections back to the front end.

Ownership: a Connection is touched by one thread at a time. With threads == 1 the loop
thread runs requests inline; with more threads the loop gives a connection with a
request to run to a pool thread (unregistering it from epoll) and takes it back when
the response is done.

The socket stays non-blocking at the OS level. When a send or a body read inside a
request would block, the owning thread waits with poll() on that one descriptor.

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

import os
import select
import stat
import time
import traceback
from collections import deque
from threading import get_ident as _get_ident
from email.utils import formatdate

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from hostd import limits, log

_monotonic = time.monotonic
from hostd.protocol import MAX_HANDOFF_BYTES, WorkerSpec

from .wsgi import (EMPTY_INPUT, K_CONNECTION, K_DATE, K_HOP, K_LENGTH, K_SERVER,
                   BadRequestBody, ClientDisconnected, FileWrapper, HeaderError, Input,
                   header_kind, status_line)

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
R421 = _error_response("421 Misdirected Request", "Misdirected Request")
R431 = _error_response("431 Request Header Fields Too Large",
                       "Request Header Fields Too Large")
R413 = _error_response("413 Content Too Large", "Content Too Large")
R414 = _error_response("414 URI Too Long", "URI Too Long")
_REJECTS = {400: R400, 413: R413, 414: R414, 431: R431}
#: limit hits of this worker process (logged at a bounded rate)
COUNTERS = limits.Counters()
_ONE = (1).to_bytes(8, "little")


def configure(worker, spec: WorkerSpec, sems: list[int]) -> None:
    """Sets the client limits a worker's connections read from it (from the spawn spec:
    the [hostd] values, the pool's overrides; sems: the connection-slot semaphores the
    worker was given)."""
    worker.send_timeout = spec.send_timeout
    worker.min_body_rate = spec.min_request_bytes_per_second
    body = spec.pool_value("max_body_size")
    worker.max_body = body if body is not None else spec.max_body_size
    worker.max_bandwidth = spec.pool_value("max_bandwidth")
    worker.throttles = {}
    if spec.global_slots_via_board:
        # an isolated worker gets no descriptor of the global max_connections semaphore
        # (reading it dry would starve every pool): it counts the global slots it
        # releases in its scoreboard, and the supervisor gives them back
        worker.released = 0
        worker.csem = -1
        worker.pool_csem = sems[0] if sems else -1
    else:                       # [global, pool's]
        worker.released = -1
        worker.csem = sems[0] if len(sems) > 0 else -1
        worker.pool_csem = sems[1] if len(sems) > 1 else -1
    worker.body_grace = spec.header_timeout
R503 = _error_response("503 Service Unavailable", "Service Unavailable")
_BODY500 = b"Internal Server Error\n"

# --- per-second Date header ------------------------------------------------------
_date_sec = 0
_date_hdr = ""


def _date() -> str:
    global _date_sec, _date_hdr
    now = int(time.time())
    if now != _date_sec:
        _date_hdr = "Date: " + formatdate(now, usegmt=True) + "\r\n"
        _date_sec = now
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
        self.te = False
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


class Connection:
    """A client connection held by a worker (see the module docstring)."""

    def __init__(self, worker, sock):
        self.worker = worker
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = HttpRequestParser(self)
        self.cur = None             # the request being parsed
        self.pending = deque()      # requests with complete headers, not yet answered
        self.nbegun = 0
        self.raw = None
        self.raw_len = 0
        self.raw_first = 1
        self.broken = None          # error response to send after pending requests
        self.stopped = False        # parser stopped (upgrade); close after pending
        self.closed = False
        self.registered = False
        self.owned = False          # a pool thread is running its requests
        self.last = 0.0
        self.nserved = 0
        self.max_head = worker.max_header_bytes
        self.max_url = min(limits.MAX_URL_BYTES, self.max_head)
        self.throttle = None
        self.handed = False
        try:
            local = sock.getsockname()
            peer = sock.getpeername()
        except OSError:
            local = peer = ("", 0)
        if not isinstance(local, tuple):  # AF_UNIX test sockets
            local, peer = ("localhost", 0), ("", 0)
        self.local_port = local[1]
        base = dict(worker.base_env)
        base["SERVER_NAME"] = local[0]
        base["SERVER_PORT"] = str(local[1])
        base["REMOTE_ADDR"] = peer[0]
        base["REMOTE_PORT"] = str(peer[1])
        self.base_env = base
        self.server_name = local[0]
        # per-response state
        self.status = None
        self.headers = None
        self.sent = False
        self.chunked = False
        self.clen = None
        self.body_sent = 0
        self.close_after = False
        self.head_req = False
        self.nobody = False
        self.http11 = True
        self.req = None

    # --- parser callbacks ------------------------------------------------------------
    def on_message_begin(self):
        self.nbegun += 1
        self.cur = Request(self.nbegun, self.base_env.copy())

    def on_url(self, url):
        r = self.cur
        r.url += url
        r.head_size += len(url)
        if r.head_size > self.max_url:
            raise limits.Reject(414, "request target too long")

    def on_header(self, name, value):
        r = self.cur
        if r.headers_done:
            return  # trailer fields of a chunked body: not part of the environ
        if len(name) in limits.SPECIAL_LENGTHS:
            r.rule_header(name, value)
        key = _hkeys.get(name)
        if key is None:
            key = _hkey(name)
        if key:
            env = r.env
            v = value.decode("latin-1")
            if key in env:
                env[key] += "," + v
            else:
                env[key] = v
        r.head_size += len(name) + len(value) + 4
        if r.head_size > self.max_head:
            raise _HeadTooLarge

    def on_headers_complete(self):
        r = self.cur
        p = self.parser
        r.headers_done = True
        env = r.env
        m = p.get_method()
        method = _methods.get(m)
        if method is None:
            method = _methods[m] = m.decode("latin-1")
        env["REQUEST_METHOD"] = method
        ver = p.get_http_version()
        if ver != "1.1":
            r.rule_complete(ver)
        if r.clen > self.worker.max_body:
            raise limits.Reject(413, f"Content-Length {r.clen}")
        env["SERVER_PROTOCOL"] = _protocols.get(ver) or "HTTP/" + ver
        r.http11 = ver == "1.1"
        r.keep_alive = p.should_keep_alive()
        r.expect = "HTTP_EXPECT" in env and env["HTTP_EXPECT"].lower() == "100-continue"
        self.pending.append(r)

    def on_body(self, body):
        r = self.cur
        r.got += len(body)
        if r.te and r.got > self.worker.max_body:
            raise limits.Reject(413, "chunked body too large")
        if r.discard:
            return
        if r.buf is None:
            r.buf = bytearray(body)
        else:
            r.buf += body

    def on_message_complete(self):
        self.cur.complete = True
        self.cur = None

    # --- input ---------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Feeds bytes read from the socket to the parser; parse errors set `broken`."""
        self.worker.bytes_in += len(data)
        if self.cur is None and not self.pending:
            self.raw = [data]
            self.raw_len = len(data)
            self.raw_first = self.nbegun + 1
        elif self.raw is not None:
            self.raw.append(data)
            self.raw_len += len(data)
            if self.raw_len > RAW_CAP:
                self.raw = None
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self.stopped = True
        except HttpParserError as exc:
            ctx = exc.__context__
            if isinstance(ctx, _HeadTooLarge):
                self.broken = R431
                COUNTERS.hit("head_too_large")
            elif isinstance(ctx, limits.Reject):
                self.broken = _REJECTS.get(ctx.status, R400)
                COUNTERS.hit(f"reject_{ctx.status}", ctx.reason)
            else:
                self.broken = R400
                COUNTERS.hit("reject_400", str(exc))
            self.stopped = True
        else:
            r = self.cur
            if r is not None and not r.headers_done and r.head_size + len(data) > \
                    2 * self.max_head + RECV_SIZE:
                # httptools buffers a header value internally until it ends
                self.broken = R431
                self.stopped = True

    def on_readable(self) -> None:
        """Loop thread: the socket is readable while the connection is idle."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.worker.drop(self)
            return
        if not data:
            self.worker.drop(self)
            return
        if self.stopped:
            return
        self.last = self.worker.now
        self.feed(data)
        if self.pending or self.broken:
            self.worker.dispatch(self)

    def fill_body(self, req) -> None:
        """Reads more of `req`'s body from the socket (blocking with poll).
        Raises ClientDisconnected on EOF/timeout, BadRequestBody on a parse error."""
        if req.expect:
            req.expect = False
            if not self.sent:
                self.send(CONTINUE)
        if self.stopped:
            raise BadRequestBody("request body is malformed")
        sock = self.sock
        worker = self.worker
        while True:
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                rate = worker.min_body_rate
                if rate:
                    # IIS MinBytesPerSec: after a grace period, the body must come in at
                    # an average of at least `rate` bytes/s
                    now = _monotonic()
                    if not req.t0:
                        req.t0 = now - req.got / rate
                    wait = min(BODY_TIMEOUT, req.t0 + worker.body_grace + req.got / rate - now)
                else:
                    wait = BODY_TIMEOUT
                if wait <= 0 or not _wait(self.fd, _POLLIN, wait):
                    self.close_after = True
                    COUNTERS.hit("min_request_bytes_per_second" if rate else "body_timeout")
                    raise ClientDisconnected("timed out reading the request body") from None
                continue
            except OSError as exc:
                self.close_after = True
                raise ClientDisconnected(str(exc)) from None
            break
        if not data:
            self.close_after = True
            raise ClientDisconnected("client closed the connection mid-body")
        self.feed(data)
        if self.broken is not None and not req.complete:
            self.close_after = True
            raise BadRequestBody("request body is malformed or too large")

    # --- output --------------------------------------------------------------------
    def send(self, data) -> None:
        """Sends all of `data`, waiting (poll) while the socket buffer is full."""
        if self.throttle is not None:
            self._send_throttled(memoryview(data))
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return
        self._send_rest(memoryview(data)[n:])

    def _send_rest(self, view) -> None:
        """send_timeout bounds each wait for the client to make room (a client that
        reads slowly but reads is not cut; one that stops reading is)."""
        sock = self.sock
        timeout = self.worker.send_timeout
        deadline = time.monotonic() + timeout
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait(self.fd, _POLLOUT, remaining):
                COUNTERS.hit("send_timeout")
                raise ClientDisconnected("timed out sending the response")
            try:
                n = sock.send(view)
            except BlockingIOError:
                continue
            view = view[n:]
            deadline = time.monotonic() + timeout

    def _send_throttled(self, view) -> None:
        """max_bandwidth: sends in slices, sleeping as the binding's token bucket says."""
        throttle = self.throttle
        step = max(4096, int(throttle.rate) // 20)
        while view:
            part = view[:step]
            delay = throttle.take(len(part))
            if delay > 0:
                time.sleep(delay)
            try:
                n = self.sock.send(part)
            except BlockingIOError:
                n = 0
            if n < len(part):
                self._send_rest(part[n:])
            view = view[len(part):]

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def _head(self, known_len) -> bytes:
        """The response head for self.status/self.headers; decides the framing.
        known_len: the body length when all of it is known, else None."""
        status = self.status
        if status is None:
            raise AssertionError("the application did not call start_response()")
        line, code = status_line(status)
        parts = []
        clen = None
        date = server = True
        for name, value in self.headers:
            kind = header_kind(name)
            if kind:
                if kind == K_LENGTH:
                    try:
                        clen = int(value)
                    except (TypeError, ValueError):
                        raise HeaderError(f"bad Content-Length {value!r}") from None
                    if clen < 0:
                        raise HeaderError(f"bad Content-Length {value!r}")
                elif kind == K_CONNECTION:
                    if type(value) is str and "close" in value.lower():
                        self.close_after = True
                    continue
                elif kind == K_HOP:
                    continue
                elif kind == K_DATE:
                    date = False
                elif kind == K_SERVER:
                    server = False
            parts += (name, ": ", value, "\r\n")
        try:
            hb = "".join(parts)
        except TypeError:
            hb = None
        n = len(parts) >> 2
        if hb is None or hb.count("\n") != n or hb.count("\r") != n or "\0" in hb:
            for name, value in self.headers:
                if type(value) is not str or any(c in value for c in "\r\n\0"):
                    raise HeaderError(f"bad value for response header {name!r}: "
                                      f"{value!r}")
        if code < 200 or code == 204 or code == 304:
            self.nobody = True  # no body, whatever the application yields
            clen = None
        elif clen is None:
            if known_len is not None:
                hb += f"Content-Length: {known_len}\r\n"
                clen = known_len
            elif not self.nobody:
                if self.http11:
                    hb += "Transfer-Encoding: chunked\r\n"
                    self.chunked = True
                else:
                    self.close_after = True
        self.clen = clen
        req = self.req
        if not req.complete and not self.close_after:
            # body left unread: will it be drained or the connection closed? (say so now)
            if req.expect or self.stopped:
                self.close_after = True
            else:
                cl = req.env.get("CONTENT_LENGTH")
                if cl is not None and cl.isdigit() and int(cl) > DISCARD_LIMIT:
                    self.close_after = True
        if date:
            hb += _date()
        if server:
            hb += "Server: hostd\r\n"
        if self.close_after:
            hb += "Connection: close\r\n"
        elif not self.http11:
            hb += "Connection: keep-alive\r\n"
        try:
            return (line + hb + "\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise HeaderError("response headers are not latin-1") from None

    def write(self, data) -> None:
        """The write() callable, and the body writer for iterables (non-empty data)."""
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"response body must be bytes, not {type(data).__name__}")
        if not self.sent:
            head = self._head(None)
            self.sent = True
            if self.nobody or not data:
                self.send(head)
                return
            if self.chunked:
                self.send(b"%s%x\r\n%s\r\n" % (head, len(data), data))
                return
            if self.clen is not None:
                data = self._clip(data)
            self.send(head + data)
            return
        if self.nobody or not data:
            return
        if self.chunked:
            self.send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            if self.clen is not None:
                data = self._clip(data)
            self.send(data)

    def _clip(self, data: bytes) -> bytes:
        left = self.clen - self.body_sent
        if len(data) > left:
            data = data[:left]
            self.close_after = True  # the app said less than it sent; don't trust framing
        self.body_sent += len(data)
        return data

    def _finish(self) -> None:
        """After the iterable is exhausted: headers if none went out, the chunked end."""
        if not self.sent:
            self.send(self._head(0))
            self.sent = True
        elif self.chunked:
            self.send(b"0\r\n\r\n")
        elif self.clen is not None and self.body_sent < self.clen and not self.nobody:
            self.close_after = True  # short body: the client can't find the next response

    def _send_file(self, fw) -> bool:
        """Sends a FileWrapper of a regular file with sendfile(2). Returns False when
        it is not one (the caller iterates it instead)."""
        f = fw.filelike
        try:
            fd = f.fileno()
            st = os.fstat(fd)
        except Exception:
            return False
        if not stat.S_ISREG(st.st_mode) or self.throttle is not None:
            return False
        try:
            offset = f.tell()
        except Exception:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        size = max(0, st.st_size - offset)
        head = self._head(size)
        self.sent = True
        self.send(head)
        if self.nobody:
            return True
        count = size if self.clen is None else min(self.clen, size)
        if self.clen is not None and self.clen > size:
            self.close_after = True
        sockfd = self.fd
        send_timeout = self.worker.send_timeout
        deadline = time.monotonic() + send_timeout
        while count > 0:
            try:
                n = os.sendfile(sockfd, fd, offset, count)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _wait(sockfd, _POLLOUT, remaining):
                    COUNTERS.hit("send_timeout")
                    raise ClientDisconnected("timed out sending the response") from None
                continue
            if n == 0:
                self.close_after = True  # file shrank
                break
            offset += n
            count -= n
            deadline = time.monotonic() + send_timeout
        self.body_sent = self.clen if self.clen is not None else size
        return True

    # --- serving ---------------------------------------------------------------------
    def run_pending(self) -> bool:
        """Answers every request with complete headers, in order. Returns True when the
        connection stays open and idle (back to epoll), False when it was closed or
        handed off."""
        worker = self.worker
        pending = self.pending
        try:
            while pending:
                if self.broken is not None and not pending[0].complete:
                    break   # its own body is malformed or too large: answer that instead
                if not self._serve(pending[0]):
                    return False
                pending.popleft()
                self.nserved += 1
                if worker.inline:
                    worker.request_done()
                if (worker.draining or worker.shed_left) and not self.closed:
                    if not worker.draining:
                        worker.shed_left -= 1   # given back at its idle point (shed)
                    self.handoff()
                    return False
            if self.broken is not None:
                self._send_quietly(self.broken)
                self.close()
                return False
            if self.stopped:  # after an upgrade request: nothing more can be parsed
                self.close()
                return False
        except _Gone:
            return False
        self.last = time.monotonic()
        return True

    def _serve(self, req) -> bool:
        worker = self.worker
        env = req.env
        host = env.get("HTTP_HOST")
        key = (host, req.url, self.local_port)
        hit = worker.route_cache.get(key)
        if hit is None:
            hit = worker.resolve(host, self.local_port, req.url)
        route, script_name, path_info, query, server_name = hit
        if route is None or route.pool != worker.pool:
            self.handoff()
            return False
        if worker.max_bandwidth:
            self.throttle = worker.throttles.get(route.binding.text)
            if self.throttle is None:
                self.throttle = worker.throttles[route.binding.text] = \
                    limits.Throttle(worker.max_bandwidth)
        env["SCRIPT_NAME"] = script_name
        env["PATH_INFO"] = path_info
        env["QUERY_STRING"] = query
        if server_name:
            env["SERVER_NAME"] = server_name
        if req.complete and not req.buf:
            env["wsgi.input"] = EMPTY_INPUT
        else:
            env["wsgi.input"] = Input(self, req)
        self.status = None
        self.sent = False
        self.chunked = False
        self.clen = None
        self.body_sent = 0
        # after an upgrade nothing more can be read: close; after a malformed request
        # behind this one, its 400 follows this response and closes
        self.close_after = not req.keep_alive or (self.stopped and self.broken is None)
        self.head_req = self.nobody = env["REQUEST_METHOD"] == "HEAD"
        self.http11 = req.http11
        self.req = req
        t0 = _monotonic()
        if worker.inline:
            worker.request_start()
        tid = _get_ident()
        busy = worker.busy
        busy[tid] = (t0, env)   # seen by pings (stuck) and request_timeout
        result = None
        failed = False
        try:
            result = worker.app(env, self.start_response)
            if (type(result) is list or type(result) is tuple) and not self.sent \
                    and (len(result) == 1 and type(result[0]) is bytes
                         or all(type(b) is bytes for b in result)):
                # the common case: the whole body is here; Content-Length known, one send
                body = result[0] if len(result) == 1 else b"".join(result)
                head = self._head(len(body))
                self.sent = True
                if self.nobody:
                    self.send(head)
                else:
                    if self.clen != len(body):
                        body = self._clip(body)
                        if self.body_sent < self.clen:
                            self.close_after = True
                    self.send(head + body)
                    self.body_sent = len(body)
            elif type(result) is FileWrapper and not self.sent and self._send_file(result):
                pass
            else:
                for data in result:
                    if data:
                        self.write(data)
                self._finish()
        except Exception as exc:
            failed = True
            self._app_failed(exc)
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception as exc:
                    failed = True
                    self._app_failed(exc)
            busy.pop(tid, None)
            st = self.status
            worker.count(route.binding.text, 5 if failed or not st else ord(st[0]) - 48,
                         self.body_sent)
        if worker.access is not None:   # hostd/accesslog.py: format + append, no syscall
            worker.access.log(env, req.url, self.status, self.body_sent if self.clen is None
                              else self.clen, int((_monotonic() - t0) * 1e6))
        if self.closed:
            raise _Gone
        if not req.complete and not self._discard_body(req):
            self.close()
            return False
        if self.close_after:
            self.close()
            return False
        return True

    def _app_failed(self, exc) -> None:
        if self.closed:
            return
        worker = self.worker
        if not isinstance(exc, (ClientDisconnected, BadRequestBody, BrokenPipeError,
                                ConnectionResetError)):
            if isinstance(exc, HeaderError):
                log.error("bad_response", str(exc), POOL=worker.pool)
            else:
                log.error("app_error", traceback.format_exc(), POOL=worker.pool)
        if self.sent or isinstance(exc, ClientDisconnected):
            self.close()
            return
        if isinstance(exc, BadRequestBody) and self.broken is not None:
            self._send_quietly(self.broken)   # 400 or 413, not 500: the client's fault
            self.close()
            return
        self.sent = True
        self.close_after = self.close_after or not self._body_done()
        head = (f"HTTP/1.1 500 Internal Server Error\r\n{_date()}Server: hostd\r\n"
                f"Content-Type: text/plain\r\nContent-Length: {len(_BODY500)}\r\n"
                + ("Connection: close\r\n" if self.close_after else "")
                + "\r\n").encode()
        self._send_quietly(head if self.head_req else head + _BODY500)

    def _body_done(self) -> bool:
        return not self.pending or self.pending[0].complete

    def _discard_body(self, req) -> bool:
        """Reads and drops what is left of req's body. False: close instead."""
        if req.expect or self.stopped:
            return False  # the client waits for 100 Continue, or the body is broken
        cl = req.env.get("CONTENT_LENGTH")
        if cl is not None and cl.isdigit() and int(cl) > DISCARD_LIMIT:
            return False
        req.discard = True
        req.buf = None
        dropped = 0
        try:
            while not req.complete:
                self.fill_body(req)
                dropped += RECV_SIZE
                if dropped > DISCARD_LIMIT + RECV_SIZE:
                    return False
        except OSError:
            return False
        return True

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.send(data)
        except OSError:
            pass

    # --- leaving ----------------------------------------------------------------------
    def unconsumed(self):
        """The bytes from the start of the first unanswered message to the end of what
        was read, or None when they are unknown (raw dropped)."""
        if self.pending:
            first = self.pending[0].index
        elif self.cur is not None:
            first = self.cur.index
        else:
            return b""  # at a message boundary: everything read was answered
        raw = self.raw
        if raw is None:
            return None
        buf = raw[0] if len(raw) == 1 else b"".join(raw)
        skip = first - self.raw_first
        if skip <= 0:
            return buf
        off = message_offset(buf, skip)
        if off < 0:
            return None
        return buf[off:]

    def handoff(self) -> None:
        """Sends the connection and its unanswered bytes back to the front end
        (through reroute), then forgets it. Answers 421 when the bytes are unknown."""
        if self.closed:
            return
        data = None if self.stopped else self.unconsumed()
        if data is None or len(data) > MAX_HANDOFF_BYTES:
            if self.pending:
                self._send_quietly(R421)
            self.close()
            return
        if not self.worker.reroute_send(self.fd, data):
            self.close()
            return
        self.handed = True   # the front end owns it now (and its global slot)
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        worker = self.worker
        worker.forget(self)
        # the connection's slots (see hostd/frontend.py): the pool's always, the global
        # one unless the front end took the connection back
        if worker.pool_csem >= 0:
            os.write(worker.pool_csem, _ONE)
        if not self.handed:
            if worker.csem >= 0:
                os.write(worker.csem, _ONE)
            elif worker.released >= 0:
                worker.released += 1
                worker.board.write_released(worker.released)
        try:
            self.sock.close()
        except OSError:
            pass
