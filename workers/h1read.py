"""Reading requests on a worker's connection: the httptools parser callbacks, feeding
the parser, and reading request bodies (for the app, or to discard what it left).
Mixed into workers.http.Connection; the parser state and requests are the connection's.

Every head is judged by hostd/limits.py's rules, the ones the front end applies to a
connection's first head (HeadState, check_line, error_status): one rule set, so a
kept-alive or pipelined request is held to exactly what a first request is.
"""
from __future__ import annotations

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from hostd import limits

from . import h1fast
from .h1 import (BODY_TIMEOUT, CONTINUE, COUNTERS, DISCARD_LIMIT, R400, R431, RAW_CAP,
                 RECV_SIZE, Request, _HeadTooLarge, _POLLIN, _REJECTS, _hkey, _hkeys, _methods,
                 _monotonic, _protocols, _wait, message_offset)
from .wsgi import BadRequestBody, ClientDisconnected


_fast_parse = h1fast.parse
_new_request = object.__new__


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
        value = value.rstrip(b" \t")  # limits.OWS: RFC 9110 §5.5 (llhttp drops leading OWS)
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
        # at most what the head holds ("N:V" CRLF is len + 3): a bound while the head
        # streams in; its exact size is checked once it is complete (limits.check_line)
        r.head_size += len(name) + len(value) + 3
        if r.head_size > self.max_head:
            raise _HeadTooLarge

    def on_headers_complete(self):
        r = self.cur
        p = self.parser
        r.headers_done = True
        env = r.env
        m = p.get_method()
        ver = p.get_http_version()
        url = r.url
        authority = r.rule_complete(ver, m, url)
        self._check_line(r, len(m), len(url))
        if r.clen > self.worker.max_body:
            raise limits.Reject(413, f"Content-Length {r.clen}")
        method = _methods.get(m)
        if method is None:
            method = _methods[m] = m.decode("latin-1")
        env["REQUEST_METHOD"] = method
        if authority is not None:
            # absolute-form: the target's authority is the request's host (RFC 9112
            # §3.2.2), for routing and for the app alike
            env["HTTP_HOST"] = authority.decode("latin-1")
        env["SERVER_PROTOCOL"] = _protocols[ver]     # 1.0 or 1.1: rule_complete
        r.http11 = http11 = ver == "1.1"
        r.keep_alive = p.should_keep_alive()
        # an HTTP/1.0 client never waits for 100 Continue: RFC 9110 §10.1.1 says ignore it
        r.expect = http11 and "HTTP_EXPECT" in env and \
            env["HTTP_EXPECT"].lower() == "100-continue"
        self.pending.append(r)

    def on_body(self, body):
        r = self.cur
        r.got += len(body)
        if r.te is not None and r.got > self.worker.max_body:
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

    # --- where a message starts (the request-line rule needs its bytes) ----------------
    def _check_line(self, r, mlen: int, ulen: int) -> None:
        """limits.check_line on request r, whose head just completed. Skipped only when
        its bytes are unknown (behind more than RAW_CAP bytes read in one go; the head's
        size is then bounded by head_size alone)."""
        raw = self.raw
        if raw is not None and r.index == self.raw_first and len(raw) == 1:
            line = limits.check_line(raw[0], 0, mlen, ulen, self.max_head)  # the usual case
        else:
            start = self._message_start(r)
            line = -1 if start < 0 else \
                limits.check_line(self.raw[0], start, mlen, ulen, self.max_head)
        self.lindex = r.index
        self.lline = line
        self.lbody = r.clen if r.clen >= 0 else 0 if r.te is None else -1

    def _message_start(self, r) -> int:
        """Offset of message r's first byte in self.raw[0] (raw made one chunk), or -1.
        The common cases cost no search: r starts `raw` (each kept-alive request read on
        its own), or follows the previous message, whose head ends at the first CRLFCRLF
        after its request line and whose body is its Content-Length. Behind a chunked
        body the start is bisected for (message_offset, see workers/h1.py)."""
        raw = self.raw
        if raw is None:
            return -1
        if len(raw) > 1:
            raw[:] = [b"".join(raw)]
        if r.index == self.raw_first:
            return 0
        if r.index == self.lindex + 1 and self.lline >= 0 and self.lbody >= 0:
            return limits.head_end(raw[0], self.lline) + self.lbody
        return message_offset(raw[0], r.index - self.raw_first)

    def _failed_message(self):
        """The bytes of the message llhttp failed on, from its first byte, or None."""
        r = self.cur
        if r is None:
            return None
        start = self._message_start(r)
        return None if start < 0 else self.raw[0][start:]

    def feed(self, data: bytes) -> None:
        """Feeds bytes read from the socket to the parser; parse errors set `broken`.
        At a message boundary, the common request read whole is taken by the C path
        (workers/h1fast.py) when it is on; anything else goes to httptools."""
        self.worker.bytes_in += len(data)
        if _fast_parse is not None and self.cur is None and not self.pending \
                and not self.junk and not self.stopped:
            hit = _fast_parse(data, self.base_env, self.max_head, self.max_url,
                              self.worker.max_body)
            if hit is not None:
                self._take_fast(hit, data)
                return
        self._feed_parser(data)

    def _feed_parser(self, data: bytes) -> None:
        """feed's httptools half (bytes_in already counted)."""
        if self.cur is None and not self.pending and not self.junk:
            self.raw = [data]
            self.raw_len = len(data)
            self.raw_first = self.nbegun + 1
            c = data[0]
            if c == 13 or c == 10:
                # empty lines before a request line count toward its head (as in the
                # front end): while nothing but them came, the next read is appended
                self.junk = not data.lstrip(b"\r\n")
        elif self.raw is not None:
            self.raw.append(data)
            self.raw_len += len(data)
            if self.junk:
                self.junk = junk = not data.lstrip(b"\r\n")
                if junk and self.raw_len > self.max_head:   # the front end's 431 too
                    self.broken = R431
                    self.stopped = True
                    COUNTERS.hit("head_too_large")
                    return
            if self.raw_len > RAW_CAP:
                self.raw = None
        parser = self.parser
        if parser is None:
            parser = self.parser = HttpRequestParser(self)
        try:
            parser.feed_data(data)
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
                status = limits.error_status(exc, self._failed_message)
                self.broken = _REJECTS.get(status, R400)
                COUNTERS.hit(f"reject_{status}", str(exc))
            self.stopped = True
        else:
            r = self.cur
            if r is not None and not r.headers_done and r.head_size + len(data) > \
                    2 * self.max_head + RECV_SIZE:
                # httptools buffers a header value internally until it ends
                self.broken = R431
                self.stopped = True

    def _take_fast(self, hit, data: bytes) -> None:
        """A request the C path read whole (`data` is exactly its bytes): pending, with
        the bookkeeping the parser callbacks would have done."""
        env, url, clen, body, keep_alive, http11, host = hit
        self.nbegun = n = self.nbegun + 1
        r = _new_request(Request)     # every slot set here, as Request.__init__ would
        r.index = n
        r.env = env
        r.url = url
        r.headers_done = r.complete = True
        r.discard = r.expect = False
        r.host = host
        r.keep_alive = keep_alive
        r.http11 = http11
        r.clen = clen
        r.te = None
        r.t0 = 0.0
        if body is None:
            r.buf = None
            r.got = 0
            r.head_size = self.raw_len = len(data)
            self.lbody = 0
        else:
            r.buf = bytearray(body)
            r.got = self.lbody = clen
            self.raw_len = len(data)
            r.head_size = self.raw_len - clen
        self.raw = [data]
        self.raw_first = self.lindex = n
        self.lline = 0
        self.pending.append(r)

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
        declined = False
        if self.fast and self.cur is None and not self.pending and not self.junk:
            worker = self.worker
            worker.bytes_in += len(data)
            hit = _fast_parse(data, self.base_env, self.max_head, self.max_url,
                              worker.max_body)
            if hit is not None:
                self.serve_fast(hit, data)
                return
            declined = True
        now = self.last = self.worker.now
        if self.head_since is None:
            self.head_since = now      # a kept-alive head begins: header_timeout runs
        if declined:                    # the C parser saw these bytes: httptools' turn
            self._feed_parser(data)
        else:
            self.feed(data)
        if self.pending or self.broken:
            self.head_since = None
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
