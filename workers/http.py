"""One client connection inside a worker: HTTP/1.1 parsing (httptools/llhttp, the parser
the front end uses), running requests through the WSGI application, writing responses,
and handing connections back to the front end.

Ownership: a Connection is touched by one thread at a time. With threads == 1 the loop
thread runs requests inline; with more threads the loop gives a connection with a
request to run to a pool thread (unregistering it from epoll) and takes it back when
the response is done.

The socket stays non-blocking at the OS level. When a send or a body read inside a
request would block, the owning thread waits with poll() on that one descriptor.

The connection reads requests (workers/h1read.py), writes responses
(workers/h1write.py) and shares its HTTP/1.1 pieces with both (workers/h1.py).
"""
from __future__ import annotations

import os
import time
import traceback
from collections import deque
from threading import get_ident as _get_ident


from hostd import limits, log
from hostd.protocol import MAX_HANDOFF_BYTES, WorkerSpec

from .h1 import R408, R421, _BODY500, _ONE, Request, _date, _Gone, _monotonic
from .h1 import _hkey, message_offset  # noqa: F401 (tests import them from here)
from .h1read import RequestReader
from .h1write import SCATTER_AT, ResponseWriter
from .tls import HANDSHAKES as TLS_HANDSHAKES, MISDIRECTED as TLS_MISDIRECTED, TLS1_2, TLS1_3
from .tls import F_TIMEOUT as TLS_F_TIMEOUT, TLSSocket, failure_field as tls_failure_field
from .wsgi import EMPTY_INPUT, BadRequestBody, ClientDisconnected, FileWrapper, HeaderError, Input



#: the request of serve_fast's responses: read whole, body-less (what the writer asks)
_DONE = Request(0, {})
_DONE.complete = True


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
    worker.header_timeout = spec.header_timeout


class Connection(RequestReader, ResponseWriter):
    """A client connection held by a worker (see the module docstring)."""

    # Per-connection and per-response state. The defaults live on the class: a new
    # connection (one per Connection: close request) sets only what differs, and an
    # assignment later makes the attribute the instance's own.
    parser = None               # httptools, made when the first head needs it (feed)
    cur = None                  # the request being parsed
    nbegun = 0
    raw = None
    raw_len = 0
    raw_first = 1
    junk = False                # raw holds only CR/LF before the next request line
    lindex = 0                  # the last head checked: its index, its request line's
    lline = -1                  # offset in raw[0] (-1: unknown), its body's length
    lbody = -1                  # (-1: chunked)
    broken = None               # error response to send after pending requests
    stopped = False             # parser stopped (upgrade); close after pending
    closed = False
    registered = False
    owned = False               # a pool thread is running its requests
    last = 0.0
    #: when the head now being read on this kept-alive connection began (None: no head
    #: under way): a head must be whole within header_timeout, as at the front end,
    #: however slowly its bytes trickle in (Worker._sweep)
    head_since = None
    nserved = 0
    throttle = None
    handed = False
    tls = False                 # a TLSConnection: never handed back, 421 instead
    # per-response state
    status = None
    headers = None
    sent = False
    chunked = False
    clen = None
    body_sent = 0
    close_after = False
    head_req = False
    nobody = False
    http11 = True
    req = None

    def __init__(self, worker, sock):
        self.worker = worker
        self.sock = sock
        self.fd = sock.fileno()
        self.pending = deque()      # requests with complete headers, not yet answered
        self.max_head = worker.max_header_bytes
        self.max_url = min(limits.MAX_URL_BYTES, self.max_head)
        #: serve_fast may answer this connection's requests (an inline worker with the
        #: C path on and no bandwidth limit: Worker.fast)
        self.fast = worker.fast
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
                if (worker.draining or worker.shed_left) and not self.closed and not self.tls:
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

    def serve_fast(self, hit, data: bytes) -> None:
        """Loop thread of an inline worker, C path on (`fast`): answers a request that
        workers/h1fast.py's parse read whole, without a body, at a message boundary
        (hit: its result, data: its bytes): feed + run_pending + _serve in one go, for
        the common case. A request for another pool, or with a body, goes the long way
        (_take_fast, then the worker's dispatch), as anything the C parser declines."""
        env, url, clen, body, keep_alive, http11, host = hit
        worker = self.worker
        route = worker.route_cache.get((env.get("HTTP_HOST"), url, self.local_port))
        if route is None:
            route = worker.resolve(env.get("HTTP_HOST"), self.local_port, url)
        update = route[1]
        if update is None or body is not None:
            self._take_fast(hit, data)
            worker.dispatch(self)
            return
        self.nbegun += 1
        env.update(update)          # SCRIPT_NAME, PATH_INFO, QUERY_STRING, SERVER_NAME
        env["wsgi.input"] = EMPTY_INPUT
        try:
            if not self._run(env, _DONE, url, keep_alive, http11, route[2]):
                return
        except _Gone:
            return
        worker.request_done()
        self.last = worker.last_activity
        if (worker.draining or worker.shed_left) and not self.closed and not self.tls:
            if not worker.draining:
                worker.shed_left -= 1   # given back at its idle point (shed)
            self.handoff()

    def _serve(self, req) -> bool:
        """Answers req (the first pending request): routes it (a request for another
        pool is handed back to the front end), then _run. Returns what _run returns
        (False also after a handoff)."""
        worker = self.worker
        env = req.env
        host = env.get("HTTP_HOST")
        hit = worker.route_cache.get((host, req.url, self.local_port))
        if hit is None:
            hit = worker.resolve(host, self.local_port, req.url)
        route, update, at = hit
        if update is None:          # another pool's (or no) route: the front end routes it
            self.misdirected()
            return False
        if worker.max_bandwidth:
            self.throttle = worker.throttles.get(route.binding.text)
            if self.throttle is None:
                self.throttle = worker.throttles[route.binding.text] = \
                    limits.Throttle(worker.max_bandwidth)
        env.update(update)          # SCRIPT_NAME, PATH_INFO, QUERY_STRING, SERVER_NAME
        if req.complete and not req.buf:
            env["wsgi.input"] = EMPTY_INPUT
        else:
            env["wsgi.input"] = Input(self, req)
        return self._run(env, req, req.url, req.keep_alive, req.http11, at)

    def _run(self, env, req, url, keep_alive, http11, at) -> bool:
        """Runs the app on a routed request and sends its response; counts it (at: its
        binding's offset in the worker's counts) and logs it. Returns True when the
        connection stays open, False when it was closed. Raises _Gone when the app's
        failure closed it."""
        worker = self.worker
        self.status = None
        self.sent = self.chunked = False
        self.clen = None
        self.body_sent = 0
        # after an upgrade nothing more can be read: close; after a malformed request
        # behind this one, its 400 follows this response and closes
        self.close_after = not keep_alive or (self.stopped and self.broken is None) \
            or self.tls and worker.tls_closing
        self.head_req = self.nobody = env["REQUEST_METHOD"] == "HEAD"
        self.http11 = http11
        self.req = req
        t0 = _monotonic()
        if worker.inline:
            worker.request_start()
            tid = worker.loop_tid
        else:
            tid = _get_ident()
        busy = worker.busy
        busy[tid] = (t0, env)   # seen by pings (stuck) and request_timeout
        result = None
        failed = False
        try:
            result = worker.app(env, self.start_response)
            rtype = type(result)
            if (rtype is list or rtype is tuple) and not self.sent \
                    and (len(result) == 1 and type(result[0]) is bytes
                         or all(type(b) is bytes for b in result)):
                # the common case: the whole body is here; Content-Length known, one send
                body = result[0] if len(result) == 1 else b"".join(result)
                result = None       # a list or tuple: nothing to close
                n = len(body)
                head = self._head(n)
                self.sent = True
                if self.nobody:
                    self.send(head)
                else:
                    if self.clen != n:
                        body = self._clip(body)
                        if self.body_sent < self.clen:
                            self.close_after = True
                    self.body_sent = len(body)
                    if n < SCATTER_AT or self.throttle is not None:
                        self.send(head + body)
                    else:
                        self.send2(head, body)
            elif rtype is FileWrapper and not self.sent and self._send_file(result):
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
            k = 5 if failed or not st else ord(st[0]) - 48
            if not 1 <= k <= 5:
                k = 5
            if worker.inline:           # this is the only thread that counts
                c = worker.counts
                c[at] += 1
                c[at + k] += 1
                c[at + 6] += self.body_sent
            else:
                worker.count(at, k, self.body_sent)
        if worker.access is not None:   # hostd/accesslog.py: format + append, no syscall
            worker.access.log(env, url, self.status, self.body_sent if self.clen is None
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

    def misdirected(self) -> None:
        """The first pending request is not this pool's: the front end routes it."""
        self.handoff()

    def head_timeout(self) -> None:
        """The head under way was not whole within header_timeout: 408, close."""
        self._send_quietly(R408)
        self.close()

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


class TLSConnection(Connection):
    """A connection from a TLS listener: the worker terminates TLS on it (workers/tls.py)
    and then serves it as a Connection. It holds TLS state only this process has, so it
    is never handed back to the front end: a request for a host the pool does not bind
    gets 421 (Misdirected Request); a draining worker keeps serving it for a while and
    then closes it (Worker._tls_drain)."""

    tls = True
    handshaking = True

    def __init__(self, worker, sock):
        super().__init__(worker, sock)
        self.sock = TLSSocket(sock, worker.tls_context, worker.send_timeout)
        env = self.base_env
        env["wsgi.url_scheme"] = "https"
        env["HTTPS"] = "on"
        #: header_timeout runs from the handoff until the handshake is done
        self.head_since = worker.now

    def on_readable(self) -> None:
        if self.handshaking:
            self._handshake()
        else:
            super().on_readable()

    def _handshake(self) -> None:
        worker = self.worker
        counts = worker.tls_counts
        try:
            done = self.sock.handshake()
        except Exception as exc:
            counts[tls_failure_field(exc)] += 1
            self.close()
            return
        if not done:
            return
        self.handshaking = False
        counts[TLS_HANDSHAKES] += 1
        counts[TLS1_3 if self.sock.version() == "TLSv1.3" else TLS1_2] += 1
        self.head_since = None
        self.last = worker.now
        # from now on the loop calls the plain reader directly (no test, no super())
        self.on_readable = Connection.on_readable.__get__(self)
        self.on_readable()          # a request that came with the client's Finished

    def head_timeout(self) -> None:
        if self.handshaking:
            self.worker.tls_counts[TLS_F_TIMEOUT] += 1
            self.close()
        else:
            super().head_timeout()

    def misdirected(self) -> None:
        """421: the connection's certificate may cover names of other pools (browsers
        reuse a connection for every name it covers), but its TLS state is ours."""
        self.worker.tls_counts[TLS_MISDIRECTED] += 1
        self._send_quietly(R421)
        self.close()

    def handoff(self) -> None:
        """Never handed back: the worker's drain closes it (Worker._tls_drain)."""

    def close(self) -> None:
        # the bound reader _handshake stored on the instance is a cycle: undo it, so
        # the session is freed with the connection, not by the next collection
        self.__dict__.pop("on_readable", None)
        super().close()
