"""Reading requests on a worker's connection: the httptools parser callbacks, feeding
the parser, and reading request bodies (for the app, or to discard what it left).
Mixed into workers.http.Connection; the parser state and requests are the connection's.
"""
from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade

from hostd import limits

from .h1 import (BODY_TIMEOUT, CONTINUE, COUNTERS, DISCARD_LIMIT, R400, R431, RAW_CAP,
                 RECV_SIZE, Request, _HeadTooLarge, _POLLIN, _REJECTS, _hkey, _hkeys, _methods,
                 _monotonic, _protocols, _wait)
from .wsgi import BadRequestBody, ClientDisconnected


class RequestReader:
    """Mixed into workers.http.Connection (its state is the connection's)."""

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
