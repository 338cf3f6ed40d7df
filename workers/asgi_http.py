"""An ASGI worker's client connection (workers/asgi.py): an asyncio Protocol that
parses HTTP/1.1 with httptools (as the front end and the WSGI worker do), runs each
request as an ASGI `http` scope, writes the response, and turns a WebSocket upgrade
over to workers/asgi_ws.py.

Requests on one connection run one at a time, in order (pipelined ones wait, with
reading paused). Each application call is a Task of its own (start_app), in its own
copy of the context, started from the parser's callback and run in the same loop
iteration, after the bytes read so far are parsed.
"""
from __future__ import annotations

import asyncio
import contextvars
import time
import traceback
from collections import deque
from http import HTTPStatus

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from hostd import limits, log
from hostd.protocol import MAX_HANDOFF_BYTES

from .h1 import (COUNTERS, R400, R408, R413, R414, R421, R431, _BODY500, _REJECTS, _date,
                 RAW_CAP, message_offset)

_monotonic = time.monotonic
_copy_context = contextvars.copy_context
_CancelledError = asyncio.CancelledError

#: a status code -> its status line (made on first use)
_STATUS: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        if not 100 <= status <= 999:
            raise ValueError(f"bad response status {status!r}")
        line = _STATUS[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")
    return line


_SERVER = b"Server: hostd\r\n"
#: response header names the worker decides about itself
_SPECIAL_OUT = frozenset((b"content-length", b"transfer-encoding", b"connection", b"server",
                          b"date"))
_date_cache = ["", b""]


def _date_bytes() -> bytes:
    """The Date line (workers/h1.py's, made once a second) and our Server line."""
    d = _date()
    if d is not _date_cache[0]:
        _date_cache[0] = d
        _date_cache[1] = d.encode("latin-1") + _SERVER
    return _date_cache[1]
_R100 = b"HTTP/1.1 100 Continue\r\n\r\n"
#: request bodies buffered beyond this pause reading until the app receives them
BODY_HIGH_WATER = 256 * 1024


async def _run_app(coro, done):
    """The Task's coroutine: the app's call, then done(exc or None) in the same step."""
    try:
        await coro
    except GeneratorExit:           # (closed unfinished: the loop is gone)
        raise
    except _CancelledError:         # (the worker's end cancels what still runs)
        done(None)
    except BaseException as exc:
        done(exc)
    else:
        done(None)


def start_app(loop, coro, done) -> None:
    """Runs an app's coroutine as a Task of its own, in a copy of the current context
    (so asyncio.current_task(), asyncio.timeout() and anyio's task groups work from its
    first line, and a ContextVar it sets stays its own). Takes the loop, an un-started
    coroutine and done, which is called once, inside the Task's last step, with the
    exception the coroutine ended with or None (also when cancelled). Returns nothing;
    raises nothing. (One Task step and no done-callback turn: measured 3.2 us per
    request against 5.9 for running the first step eagerly in an entered Task.)"""
    loop.create_task(_run_app(coro, done), context=_copy_context())


class Cycle:
    """One request: the ASGI receive/send pair and the response state."""

    websocket_kind = False
    __slots__ = ("conn", "scope", "body", "body_len", "complete", "waiter", "start",
                 "status", "headers", "started", "chunked", "close", "length", "sent",
                 "finished", "disconnected", "expect", "at", "method", "url", "host",
                 "client", "keep_alive", "nobody", "__weakref__")

    def __init__(self, conn, scope, at, url, keep_alive, expect):
        self.conn = conn
        self.scope = scope
        self.body = []
        self.body_len = 0
        self.complete = False
        self.waiter = None
        self.start = _monotonic()
        self.status = 0
        self.headers = None
        self.started = False          # the head was written
        self.chunked = False
        self.close = not keep_alive
        self.length = None            # the app's Content-Length
        self.sent = 0
        self.finished = False         # the response is whole
        self.disconnected = False
        self.expect = expect          # 100-continue not yet sent
        self.at = at
        self.method = scope["method"]
        self.url = url
        self.host = conn.host_header
        self.client = conn.client_addr
        self.keep_alive = keep_alive
        self.nobody = self.method == "HEAD"

    # for hostctl requests
    @property
    def path(self):
        return self.scope["path"]

    def full_path(self) -> str:
        q = self.scope["query_string"]
        return self.scope["path"] + ("?" + q.decode("latin-1") if q else "")

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def receive(self) -> dict:
        """ASGI receive: the body as it comes, then (once the response is done or the
        client is gone) http.disconnect."""
        while True:
            if self.disconnected:
                return {"type": "http.disconnect"}
            if self.body_len >= 0:                  # the body is not all delivered yet
                if self.body or self.complete:
                    body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
                    self.body = []
                    if self.complete:
                        self.body_len = -1
                        return {"type": "http.request", "body": body, "more_body": False}
                    self.conn.resume_body()
                    return {"type": "http.request", "body": body, "more_body": True}
            elif self.finished:
                return {"type": "http.disconnect"}
            if self.expect:
                self.expect = False
                self.conn.write(_R100)
            self.conn.resume_body()
            self.waiter = self.conn.worker.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: dict) -> None:
        """ASGI send: http.response.start, then http.response.body parts."""
        t = message["type"]
        if t == "http.response.body":
            if not self.status or self.finished:
                if self.finished:
                    return
                raise RuntimeError("http.response.body before http.response.start")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            conn = self.conn
            if self.disconnected:
                return
            if not self.started:
                self._write_head(body, more)
            elif body:
                if self.nobody:
                    pass
                elif self.chunked:
                    conn.write(b"%x\r\n%b\r\n" % (len(body), body))
                else:
                    conn.write(self._clip(body))
                self.sent += len(body)
            if not more:
                if self.chunked and not self.nobody:
                    conn.write(b"0\r\n\r\n")
                self.finished = True
                conn.response_done(self)
            elif conn.paused_writing:
                await conn.drained()
        elif t == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self.status = int(message["status"])
            self.headers = message.get("headers") or ()
        elif t == "http.response.trailers":
            return
        else:
            raise RuntimeError(f"unexpected ASGI message {t!r} for an http scope")

    def _clip(self, body: bytes) -> bytes:
        if self.length is not None:
            room = self.length - self.sent
            if len(body) > room:
                self.close = True
                return body[:max(room, 0)]
        return body

    def _write_head(self, body: bytes, more: bool) -> None:
        conn = self.conn
        status = self.status
        http10 = self.scope["http_version"] == "1.0"
        length = None
        chunked = False
        own = []                    # the app's header lines
        for name, value in self.headers:
            lname = name.lower()
            if lname in _SPECIAL_OUT:
                if lname == b"content-length":
                    try:
                        length = int(value)
                    except ValueError:
                        raise RuntimeError(f"bad content-length {value!r}") from None
                elif lname == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                    if chunked and http10:
                        continue
                elif lname == b"connection":
                    if b"close" in value.lower():
                        self.close = True
                    continue
                else:               # server, date: ours
                    continue
            own.append(name + b": " + value + b"\r\n")
        block = b"".join(own)
        # one CR and one LF per line, the ones we put there: none inside a name or value
        if block.count(b"\n") != len(own) or block.count(b"\r") != len(own):
            raise RuntimeError("a response header holds CR or LF")
        bodyless = status < 200 or status == 204 or status == 304
        extra = b""
        if length is None and not chunked and not bodyless:
            if not more:
                length = len(body)
                extra = b"Content-Length: %d\r\n" % length
            elif not http10:
                chunked = True
                extra = b"Transfer-Encoding: chunked\r\n"
            else:
                self.close = True          # HTTP/1.0 streaming: close-delimited
        elif chunked and http10:
            chunked = False
            self.close = True
        if conn.tls and conn.worker.tls_closing:
            self.close = True
        if self.close:
            extra += b"Connection: close\r\n\r\n"
        elif http10:
            extra += b"Connection: keep-alive\r\n\r\n"
        else:
            extra += b"\r\n"
        self.length = length
        self.chunked = chunked and not bodyless
        self.started = True
        head = _status_line(status) + _date_bytes() + block + extra
        if bodyless or self.nobody or not body:
            conn.write(head)
        elif chunked:
            conn.write(head + b"%x\r\n%b\r\n" % (len(body), body))
        else:
            conn.write(head + self._clip(body))
        self.sent += len(body)


class HttpProtocol:
    """asyncio Protocol for one client connection (see the module docstring)."""

    websocket = None
    transport = None
    paused_writing = False
    paused_reading = False
    closed = False
    handed = False
    head_since = None
    write_paused_at = 0.0

    def __init__(self, worker, initial: bytes, tls: bool):
        self.worker = worker
        self.initial = initial
        self.tls = tls
        self.parser = HttpRequestParser(self)
        self.cycle = None             # the request running now
        self.queued = deque()         # pipelined requests (Cycle) waiting for it
        self.last = worker.now
        self.drain_waiter = None
        self.raw = None               # bytes since the last clean message boundary
        self.raw_msgs = 0             # messages begun within them
        self.raw_len = 0
        self.in_message = False
        self.host_header = None
        self.client_addr = None
        self.server = None
        self.client = None
        self.head_bytes = 0
        self.max_url = min(limits.MAX_URL_BYTES, worker.max_header_bytes)
        self.rules = None
        self.upgrade = None
        self.stopped = False
        # parser scratch
        self.url = b""
        self.headers = None
        self.cur = None

    # --- asyncio Protocol -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        w = self.worker
        try:
            local = transport.get_extra_info("sockname")
            peer = transport.get_extra_info("peername")
            self.server = (local[0], local[1])
            self.client = (peer[0], peer[1])
            self.client_addr = peer[0]
        except (TypeError, IndexError):
            self.server = self.client = None
        if self.tls:
            ssl_object = transport.get_extra_info("ssl_object")
            from .tls import HANDSHAKES, TLS1_2, TLS1_3
            w.tls_counts[HANDSHAKES] += 1
            w.tls_counts[TLS1_3 if ssl_object is not None and ssl_object.version() ==
                         "TLSv1.3" else TLS1_2] += 1
        if self.closed:            # drained or shed before the transport came
            transport.abort()
            return
        data = self.initial
        self.initial = None
        if data:
            self.data_received(data)

    def attach_failed(self) -> None:
        """The transport could not be made (a TLS handshake failed, ...)."""
        if not self.closed:
            self.closed = True
            self.worker.conns.discard(self)
            self.worker.release_slots(False)

    def connection_lost(self, exc) -> None:
        w = self.worker
        if self.websocket is not None:
            self.websocket.connection_lost()
        if not self.closed:
            self.closed = True
        w.conns.discard(self)
        if self.transport is not None and not getattr(self, "_released", False):
            self._released = True
            w.release_slots(self.handed)
        cycle = self.cycle
        if cycle is not None:
            cycle.disconnected = True
            cycle.wake()
        for c in self.queued:
            c.disconnected = True
        self.queued.clear()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.paused_writing = True
        self.write_paused_at = _monotonic()

    def resume_writing(self) -> None:
        self.paused_writing = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drained(self) -> None:
        if not self.paused_writing or self.closed:
            return
        self.drain_waiter = self.worker.loop.create_future()
        await self.drain_waiter
        self.drain_waiter = None

    def eof_received(self):
        return None          # close our side too

    def data_received(self, data: bytes) -> None:
        if self.websocket is not None:
            self.websocket.feed(data)
            return
        w = self.worker
        w.bytes_in += len(data)
        self.last = w.now
        if self.in_message or self.queued or self.cycle is not None:
            raw = self.raw
            if raw is not None:
                raw.append(data)
                self.raw_len += len(data)
                if self.raw_len > RAW_CAP:      # a body streaming in: not kept
                    self.raw = None
        else:
            self.raw = [data]
            self.raw_len = len(data)
            self.raw_msgs = 0
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            if self.upgrade is not None:
                offset = exc.args[0] if exc.args else len(data)
                self._upgrade(data[offset:])
            else:
                self.stopped = True
                self.pause_reading()
        except HttpParserError as exc:
            # a callback's exception reaches us wrapped (HttpParserCallbackError)
            cause = exc if isinstance(exc, (_TooBig, _Misdirected)) else exc.__context__
            if isinstance(cause, _Misdirected):
                self._misdirected()
            elif isinstance(cause, _TooBig):
                COUNTERS.hit("head_too_large")
                self.error(cause.args[0])
            elif isinstance(cause, limits.Reject):
                COUNTERS.hit(f"reject_{cause.status}", cause.reason)
                self.error(_REJECTS.get(cause.status, R400))
            else:
                status = limits.error_status(exc, self._failed_message)
                COUNTERS.hit(f"reject_{status}", str(exc))
                self.error(_REJECTS.get(status, R400))

    def _message_bytes(self):
        """(raw bytes from the current message's first byte, its offset) or None."""
        raw = self.raw
        if raw is None:
            return None
        if len(raw) > 1:
            raw[:] = [b"".join(raw)]
        if self.raw_msgs == 1:
            return raw[0], 0
        off = message_offset(raw[0], self.raw_msgs - 1)
        return None if off < 0 else (raw[0], off)

    def _failed_message(self):
        got = self._message_bytes()
        return None if got is None else got[0][got[1]:]

    def _check_line(self, mlen: int, ulen: int) -> None:
        """limits.check_line on the head that just completed (single spaces, the HTTP/
        name, its exact size), when its bytes are known."""
        got = self._message_bytes()
        if got is not None:
            limits.check_line(got[0], got[1], mlen, ulen, self.worker.max_header_bytes)

    def _misdirected(self) -> None:
        """A request for another pool (or none): the front end routes it, with the bytes
        from its first one on; a TLS connection (whose TLS state is ours) gets 421, as
        does one whose bytes are no longer known whole."""
        if not self.tls and self.cycle is None and not self.queued and self.raw_msgs == 1 \
                and self.raw is not None:
            data = b"".join(self.raw)
            if len(data) <= MAX_HANDOFF_BYTES and self.handoff(data):
                return
        if self.tls:
            from .tls import MISDIRECTED
            self.worker.tls_counts[MISDIRECTED] += 1
        self.error(R421)

    # --- parser callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_message = True
        self.raw_msgs += 1
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.host_header = None
        self.rules = _Head()
        if self.head_since is None:
            self.head_since = self.worker.now

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if len(self.url) > self.max_url:
            raise limits.Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.cur is not None:
            return          # trailer fields of a chunked body: not part of the head
        value = value.rstrip(b" \t")   # limits.OWS (llhttp drops the leading OWS)
        self.head_bytes += len(name) + len(value) + 3
        if self.head_bytes > self.worker.max_header_bytes:
            raise _TooBig(R431)
        if len(name) in _SPECIAL:
            self.rules.rule_header(name, value)
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        w = self.worker
        self.head_since = None
        parser = self.parser
        url = self.url
        m = parser.get_method()
        version = parser.get_http_version()
        # the head rules of the front end and the WSGI worker (hostd/limits.py)
        rules = self.rules
        rules.rule_complete(version, m, url)
        self._check_line(len(m), len(url))
        self.host_header = host = rules.host        # bytes (or None for HTTP/1.0)
        port = self.server[1] if self.server else 0
        hit = w.route_cache.get((host, url, port))
        if hit is None:
            hit = w.resolve(host.decode("latin-1") if host is not None else None, port, url,
                            key=(host, url, port))
        route, update, at = hit
        method = _methods.get(m)
        if method is None:
            method = _methods[m] = m.decode("latin-1")
        if update is None:
            raise _Misdirected()
        root_path, path, raw_path, query, _server_name = update
        scope = {
            "type": "http", "asgi": _ASGI_HTTP, "http_version": version,
            "server": self.server, "client": self.client,
            "scheme": "https" if self.tls else "http", "method": method,
            "root_path": root_path, "path": path, "raw_path": raw_path,
            "query_string": query, "headers": self.headers,
        }
        if w.lifespan is not None and w.lifespan.started:
            scope["state"] = w.state.copy()
        if parser.should_upgrade():
            up = None
            for name, value in self.headers:
                if name == b"upgrade":
                    up = value.lower()
            if up == b"websocket":
                scope["type"] = "websocket"
                scope["scheme"] = "wss" if self.tls else "ws"
                scope.pop("method")
                scope.pop("http_version")
                self.upgrade = (scope, at, method, url)
                return
        clen = rules.clen
        bodyless = clen <= 0 and rules.te is None
        expect = False
        if not bodyless:
            if clen > 0 and w.max_body and clen > w.max_body:
                raise limits.Reject(413, f"Content-Length {clen}")
            for name, value in self.headers:
                if name == b"expect" and value.lower() == b"100-continue":
                    expect = True
        cycle = Cycle(self, scope, at, url, parser.should_keep_alive(),
                      expect and version == "1.1" and not bodyless)
        # known now, before the app's Task runs
        cycle.complete = bodyless
        self.cur = cycle
        if self.cycle is None and not self.queued and w.running < w.max_concurrency:
            self.cycle = cycle
            self._run(cycle)
        else:
            self.queued.append(cycle)
            self.pause_reading()
            if self.cycle is None:      # only the worker's limit holds it back
                w.waiting.append(self)

    def on_body(self, body: bytes) -> None:
        cycle = self.cur
        if cycle is None:
            return
        cycle.body.append(body)
        cycle.body_len += len(body)
        w = self.worker
        if w.max_body and cycle.body_len > w.max_body:
            raise limits.Reject(413, "chunked body too large")
        if cycle.body_len > BODY_HIGH_WATER:
            self.pause_reading()
        cycle.wake()

    def on_message_complete(self) -> None:
        self.in_message = False
        cycle = self.cur
        if cycle is not None:
            cycle.complete = True
            cycle.wake()
        self.cur = None

    # --- running requests -----------------------------------------------------------
    def _run(self, cycle) -> None:
        w = self.worker
        w.request_begun(cycle)
        try:
            coro = w.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            self._app_done(cycle, exc)
            return
        start_app(w.loop, coro, lambda exc: self._app_done(cycle, exc))

    def _app_done(self, cycle, exc) -> None:
        w = self.worker
        if exc is not None and not isinstance(exc, (ConnectionError, OSError)) \
                and not cycle.disconnected:
            log.error("app_error", "".join(traceback.format_exception(exc)), POOL=w.pool)
        if not cycle.finished:
            if not cycle.started and not cycle.disconnected and not self.closed:
                cycle.status = 500
                cycle.close = True
                self.write(b"HTTP/1.1 500 Internal Server Error\r\n" +
                           _date().encode("latin-1") + _SERVER +
                           b"Content-Type: text/plain\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n%b" % (len(_BODY500), _BODY500))
                cycle.sent = len(_BODY500)
            else:
                cycle.close = True
            cycle.finished = True
            self.response_done(cycle)
        # the request is over for the app too
        cycle.disconnected = cycle.disconnected or cycle.finished
        if cycle in w.busy:
            w.request_ended(cycle)
            self._account(cycle)

    def response_done(self, cycle) -> None:
        """The response is whole (the app may still be running): keep-alive or close;
        the next pipelined request runs once the app's call is over (_account)."""
        cycle.wake()
        if cycle.close or self.stopped:
            self.close()
            return
        if not cycle.complete:
            # the app did not read the whole body: close rather than read it
            self.close()
            return

    def _account(self, cycle) -> None:
        """The app's call is over: count, log, and go on with the connection."""
        w = self.worker
        status = cycle.status or 500
        k = status // 100
        if not 1 <= k <= 5:
            k = 5
        c = w.counts
        at = cycle.at
        c[at] += 1
        c[at + k] += 1
        c[at + 6] += cycle.sent
        if w.access is not None:
            w.access.log(_LogEnv(cycle, self), cycle.url, str(status), cycle.sent,
                         int((_monotonic() - cycle.start) * 1e6))
        self.last = w.now = _monotonic()
        if self.cycle is cycle:
            self.cycle = None
        if self.closed:
            return
        if w.draining and not self.tls:
            if not self.queued and not self.in_message:
                self.handoff(b"")
                return
        if self.queued:
            nxt = self.queued.popleft()
            if w.running < w.max_concurrency:
                self.cycle = nxt
                self._run(nxt)
            else:
                self.queued.appendleft(nxt)
                w.waiting.append(self)
                return
        if not self.queued and self.cycle is None:
            self.resume_reading()

    def resume_after_limit(self) -> None:
        """The worker is below max_concurrency again: run our waiting request."""
        if self.closed or self.cycle is not None or not self.queued:
            return
        nxt = self.queued.popleft()
        self.cycle = nxt
        self._run(nxt)

    def resume_body(self) -> None:
        if self.paused_reading and self.cycle is not None and not self.queued:
            self.resume_reading()

    # --- WebSocket ------------------------------------------------------------------
    def _upgrade(self, trailing: bytes) -> None:
        from .asgi_ws import WebSocket
        scope, at, method, url = self.upgrade
        self.upgrade = None
        self.in_message = False
        ws = WebSocket(self, scope, at, url)
        self.websocket = ws
        ws.begin(trailing)

    # --- writes, pauses, ends -------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.paused_reading and self.transport is not None and not self.closed:
            self.paused_reading = True
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):
                pass

    def resume_reading(self) -> None:
        if self.paused_reading and not self.closed:
            self.paused_reading = False
            try:
                self.transport.resume_reading()
            except (RuntimeError, AttributeError):
                pass

    def error(self, response: bytes) -> None:
        """A malformed or refused request: its error response, then close."""
        if self.cycle is None and not self.queued:
            self.write(response)
        self.close()

    def idle(self) -> bool:
        """No request running, waiting, or partly read."""
        return (self.cycle is None and not self.queued and not self.in_message
                and self.websocket is None and self.upgrade is None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def write_eof(self) -> None:
        """The end of our side, once what is buffered is sent (shutdown SHUT_WR); the
        connection closes at the peer's end (eof_received) or is aborted by its owner.
        A TLS transport cannot half-close: it is closed."""
        if self.closed or self.transport is None:
            return
        try:
            can = self.transport.can_write_eof()
        except NotImplementedError:       # (the base transport's answer)
            can = False
        if can:
            self.transport.write_eof()
        else:
            self.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def handoff(self, data: bytes) -> bool:
        """Gives the connection (with `data`, the unanswered bytes) back to the front
        ends. Returns True when they took it."""
        if self.closed or self.transport is None or self.tls:
            return False
        sock = self.transport.get_extra_info("socket")
        try:
            fd = sock.fileno()
        except (AttributeError, OSError):
            return False
        if fd < 0:
            return False
        self.pause_reading()
        if not self.worker.reroute_send(fd, data):
            self.close()
            return False
        self.handed = True
        self.abort()
        return True

    def drain(self) -> None:
        """The worker drains: an idle plain connection goes back at once; a busy one
        after its response (_account); TLS ones and WebSockets stay (drain_step)."""
        if self.transport is None:
            return          # attach still under way: connection_made sees closed
        if not self.tls and self.idle():
            self.handoff(b"")

    def sweep(self, now: float) -> None:
        """From the worker's tick: timeouts."""
        w = self.worker
        if self.websocket is not None:
            self.websocket.sweep(now)
            return
        if self.paused_writing and now - self.write_paused_at > w.send_timeout:
            self.abort()
            return
        if self.head_since is not None and now - self.head_since > w.header_timeout:
            if self.cycle is None and not self.queued:
                self.write(R408)
            self.close()
        elif self.idle() and now - self.last > w.keepalive_timeout:
            self.close()


# the parser callbacks raise these; data_received's HttpParserError catches them (the
# parser wraps callback exceptions), so they carry the response to send
class _TooBig(HttpParserError):
    pass


class _Misdirected(HttpParserError):
    pass


class _Head(limits.HeadState):
    """One request's state for the shared head rules (hostd/limits.py)."""

    __slots__ = ("host", "clen", "te")

    def __init__(self):
        self.host = None
        self.clen = -1
        self.te = None


_SPECIAL = limits.SPECIAL_LENGTHS
#: method bytes -> str
_methods: dict = {}


_ASGI_HTTP = {"version": "3.0", "spec_version": "2.3"}


class _LogEnv(dict):
    """What hostd.accesslog.AccessLog.log reads of a request, from a Cycle (made only
    when there is an access log)."""

    def __init__(self, cycle, conn):
        scope = cycle.scope
        get = dict(scope["headers"]).get
        super().__init__(REMOTE_ADDR=conn.client_addr or "-",
                         REQUEST_METHOD=cycle.method,
                         SERVER_PROTOCOL="HTTP/" + scope.get("http_version", "1.1"),
                         HTTP_REFERER=(get(b"referer") or b"-").decode("latin-1"),
                         HTTP_USER_AGENT=(get(b"user-agent") or b"-").decode("latin-1"))
        if conn.tls:
            self["HTTPS"] = "on"
