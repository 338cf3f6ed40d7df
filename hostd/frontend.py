"""The front end (the HTTP.sys role): accept, read the request head, route, hand off.

One process per front-end slot. It owns no listening socket (the supervisor created
them and keeps them); it accepts on the ones of its slot, reads until httptools has seen
the whole request head, routes by Host and path, and sends the connection with every
byte read so far to the pool's queue over SCM_RIGHTS. It keeps no copy of a connection
it handed off, so it holds only heads still being read: a front end that dies loses
those and nothing else, and its replacement accepts from the same backlog.

Answers of its own (short text body, Connection: close): 400 malformed head (see
hostd/limits.py: the rules the workers apply too, HTTP/1.1 without Host among them),
404 no binding, 408 head not complete within header_timeout, 413 Content-Length over
the pool's max_body_size, 414 request target too long, 431 head too large, 501 a method
llhttp does not know, CONNECT or a transfer-coding other than chunked, 505 an HTTP
version other than 1.0 and 1.1, 503 pool stopped/failed (Retry-After), queue full or
max_connections reached; a pool with load_balancer_capabilities = "tcp_reset" gets an
RST instead of its 503s. An HTTP/2 prior-knowledge preface is closed at once.

Connection slots: every connection this process holds has taken one slot of the global
max_connections semaphore (an eventfd shared with the workers), and one of its pool's
once routed. The slots travel with the socket; whoever finally closes it gives them
back (a worker handing a connection back to the front ends gives back the pool's).
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time

import httptools

from hostd import limits, log, protocol
from hostd.router import Router, decode_path, split_target
from kernel import fdpass, sockets
from kernel.sockets import reset_connection
from workers import h1fast

_EPOLLIN = select.EPOLLIN
_RECV = 65536
_ACCEPT_BATCH = 64
_LINGER_SECONDS = 2.0
#: how often heads that take too long are looked for (header_timeout is kept to +0.5 s)
_SWEEP = 0.5
_DONTWAIT = int(socket.MSG_DONTWAIT)   # plain ints: the enums cost per use
_STREAM = int(socket.SOCK_STREAM)

#: the C parser (workers/h1fast.py), which takes the common first request read whole
#: (None: httptools reads every head); Content-Length is judged after routing, by pool
_fast_parse = h1fast.parse
_ANY_BODY = 1 << 62
_MISS = object()

#: pool states in which a request is queued (a STARTING pool's queue already exists)
_SERVING = frozenset({"started", "starting"})


def _answer(status: str, text: str, extra: str = "") -> bytes:
    body = (text + "\n").encode("utf-8", "replace")
    return (f"HTTP/1.1 {status}\r\nServer: hostd\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode() + body


BAD_REQUEST = _answer("400 Bad Request", "Bad request")
NO_HOST = _answer("400 Bad Request", "Bad request: HTTP/1.1 request without Host header")
TOO_LARGE = _answer("431 Request Header Fields Too Large", "Request header fields too large")
URI_TOO_LONG = _answer("414 URI Too Long", "Request target too long")
BODY_TOO_LARGE = _answer("413 Content Too Large", "Request body too large")
NOT_IMPLEMENTED = _answer("501 Not Implemented",
                          "Not implemented: an unknown method, CONNECT or a transfer-coding "
                          "other than chunked")
VERSION_NOT_SUPPORTED = _answer("505 HTTP Version Not Supported",
                                "HTTP version not supported: hostd speaks HTTP/1.0 and HTTP/1.1")
TIMEOUT = _answer("408 Request Timeout", "Request timeout")
TOO_MANY = _answer("503 Service Unavailable", "Service unavailable: too many connections",
                   "Retry-After: 1\r\n")
_REJECT_ANSWERS = {414: URI_TOO_LONG, 431: TOO_LARGE, 413: BODY_TOO_LARGE,
                   501: NOT_IMPLEMENTED, 505: VERSION_NOT_SUPPORTED}
_H2_PREFACE = b"PRI * HTTP/2.0"
QUEUE_FULL = _answer("503 Service Unavailable", "Service unavailable: the site's queue is full",
                     "Retry-After: 1\r\n")


def unavailable(pool: str) -> bytes:
    return _answer("503 Service Unavailable", f"Service unavailable: pool {pool} is not running",
                   "Retry-After: 5\r\n")


def not_found(host: str) -> bytes:
    shown = host if host else "(none)"
    return _answer("404 Not Found", f"No site is bound to host {shown[:200]}")


class _Pending(limits.HeadState):
    """A connection whose request head is still being read; also its parser's protocol."""

    __slots__ = ("sock", "fd", "port", "buf", "parser", "url", "host", "done", "since",
                 "registered", "clen", "te")
    max_url = limits.MAX_URL_BYTES   # set by the FrontEnd
    max_head = 16384                  # set by the FrontEnd (max_header_bytes)

    def __init__(self, sock: socket.socket, port: int, now: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.port = port
        self.buf = b""
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.host: bytes | None = None
        self.done = False
        self.since = now
        self.registered = False
        self.clen = -1
        self.te = None

    @classmethod
    def parsed(cls, sock: socket.socket, port: int, data: bytes, hit: tuple) -> "_Pending":
        """A connection whose first request the C parser read whole (hit: its parse
        result): done, with no httptools parser."""
        self = object.__new__(cls)
        self.sock = sock
        self.fd = sock.fileno()
        self.port = port
        self.buf = data
        self.parser = None
        self.url = hit[1]
        self.host = hit[6]
        self.done = True
        self.since = 0.0
        self.registered = False
        self.clen = hit[2]
        self.te = None
        return self

    # httptools callbacks (hostd/limits.py's rules; the worker's are workers/h1read.py)
    # only the first request's head is the front end's business; callbacks for
    # pipelined requests behind it (same feed) are ignored - the worker parses them
    def on_url(self, url: bytes) -> None:
        if not self.done:
            self.url += url
            if len(self.url) > self.max_url:
                raise limits.Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done and len(name) in limits.SPECIAL_LENGTHS:
            self.rule_header(name, value.rstrip(b" \t"))    # limits.OWS

    def on_headers_complete(self) -> None:
        if not self.done:
            p = self.parser
            m = p.get_method()
            self.rule_complete(p.get_http_version(), m, self.url)
            if self.buf:   # empty only when a test feeds the parser directly
                limits.check_line(self.buf, 0, len(m), len(self.url), self.max_head)
            self.done = True


class _Pool:
    __slots__ = ("name", "state", "lb", "queue", "sem", "csem", "max_body")

    def __init__(self, name: str):
        self.name = name
        self.state = "stopped"
        self.lb = "http_503"
        self.queue: socket.socket | None = None
        self.sem = -1
        self.csem = -1          # the pool's max_connections semaphore (-1: no pool limit)
        self.max_body = -1      # -1: the [hostd] max_body_size


class FrontEnd:
    """The front end's state and its event loop. `run()` returns an exit code."""

    def __init__(self, slot: int, listeners: list[socket.socket], ctl: socket.socket,
                 reroute: socket.socket, settings: protocol.FrontEndSettings):
        self.slot = slot
        # (socket, port, family as a plain int: socket.family is an enum property that
        # costs ~1 µs per accepted connection)
        self.listeners = {s.fileno(): (s, s.getsockname()[1], int(s.family)) for s in listeners}
        self.ctl = ctl
        self.reroute = reroute
        self.max_header = settings.max_header_bytes
        self.header_timeout = settings.header_timeout
        self.max_body = settings.max_body_size
        self.csem = settings.conn_sem   # global max_connections
        _Pending.max_url = min(limits.MAX_URL_BYTES, self.max_header)
        _Pending.max_head = self.max_header
        self.counters = limits.Counters(SLOT=slot)
        self.router = Router([])
        #: (Host bytes, port, target) -> route (or None): what the router said, until
        #: the next pool table
        self.route_cache: dict = {}
        self.pools: dict[str, _Pool] = {}
        self.pending: dict[int, _Pending] = {}
        self.lingering: dict[int, tuple[socket.socket, float]] = {}
        self.queue_full: dict[str, int] = {}   # rejections not yet reported to the supervisor
        self.ep = select.epoll()
        self.stopping = False
        self.listening = False
        self.running = True

    # --- loop ----------------------------------------------------------------
    def run(self) -> int:
        ep = self.ep
        # listeners are registered when the first pool table arrives (_set_pools): a
        # front end that accepted before knowing the pools would answer 404
        ep.register(self.ctl.fileno(), _EPOLLIN)
        ep.register(self.reroute.fileno(), _EPOLLIN | select.EPOLLEXCLUSIVE)
        ctl_fd, reroute_fd = self.ctl.fileno(), self.reroute.fileno()
        listeners, pending = self.listeners, self.pending
        next_sweep = time.monotonic() + _SWEEP
        while self.running:
            try:
                events = ep.poll(_SWEEP)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd in listeners:
                    self._accept(*listeners[fd])
                elif fd in pending:
                    self._readable(pending[fd])
                elif fd == reroute_fd:
                    self._take_rerouted()
                elif fd == ctl_fd:
                    self._control()
                elif fd in self.lingering:
                    self._linger_read(fd)
            now = time.monotonic()
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + _SWEEP
        return protocol.EXIT_OK

    # --- accepting and reading -------------------------------------------------
    def _accept(self, lsock: socket.socket, port: int, family: int) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, _addr = lsock._accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors/memory: leave the rest in the backlog for now
                    log.warning("accept_overload", str(exc), SLOT=self.slot)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            sock = socket.socket(family, _STREAM, 0, fd)
            sock.setblocking(False)   # TCP_NODELAY is inherited from the listener
            if self.csem >= 0:
                try:
                    os.read(self.csem, 8)
                except BlockingIOError:
                    self.counters.hit("max_connections", "all connection slots taken")
                    self._reply_sock(sock, TOO_MANY)
                    continue
            # TCP_DEFER_ACCEPT: the head is usually here already
            try:
                data = sock.recv(_RECV)
            except BlockingIOError:
                self._wait(_Pending(sock, port, time.monotonic()))
                continue
            except OSError:
                self._give(None)
                sock.close()
                continue
            if not data:
                self._give(None)
                sock.close()
                continue
            self._first_bytes(sock, port, data)

    def _first_bytes(self, sock: socket.socket, port: int, data: bytes) -> None:
        """The first bytes of a connection (new, or handed back by a worker): the C
        parser takes the common whole request; anything else goes to httptools."""
        if _fast_parse is not None:
            hit = _fast_parse(data, None, self.max_header, _Pending.max_url, _ANY_BODY)
            if hit is not None:
                self._dispatch(_Pending.parsed(sock, port, data, hit))
                return
        self._feed(_Pending(sock, port, time.monotonic()), data)

    def _readable(self, conn: _Pending) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except BlockingIOError:
            self._wait(conn)
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        self._feed(conn, data)

    def _feed(self, conn: _Pending, data: bytes) -> None:
        conn.buf += data
        try:
            conn.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # head complete; the worker deals with the upgrade request
        except httptools.HttpParserError as exc:
            # an error after the head (in a body or a pipelined request) is the
            # worker's to answer: it parses the same bytes with the same parser
            if not conn.done:
                self._reject(conn, exc)
                return
        if not conn.done:
            if len(conn.buf) > self.max_header:
                self.counters.hit("head_too_large")
                self._reply(conn, TOO_LARGE)
            else:
                self._wait(conn)
            return
        # a complete head was held to max_header_bytes by limits.check_line
        self._dispatch(conn)

    def _reject(self, conn: _Pending, exc: Exception) -> None:
        """The head broke a rule or did not parse: answer (or close) and count it."""
        rule = limits.rejected(exc)
        if rule is not None:
            self.counters.hit(f"reject_{rule.status}", rule.reason)
            self._reply(conn, NO_HOST if rule.reason == limits.NO_HOST else
                        _REJECT_ANSWERS.get(rule.status) or BAD_REQUEST)
        elif conn.buf.startswith(_H2_PREFACE):
            # HTTP/2 prior knowledge: a 1.1 answer means nothing to it; close cleanly
            self.counters.hit("http2_preface")
            self._reply(conn, b"")
        else:
            status = limits.error_status(exc, lambda: conn.buf)
            self.counters.hit(f"reject_{status}", str(exc))
            self._reply(conn, _REJECT_ANSWERS.get(status) or BAD_REQUEST)

    def _wait(self, conn: _Pending) -> None:
        if not conn.registered:
            self.pending[conn.fd] = conn
            self.ep.register(conn.fd, _EPOLLIN)
            conn.registered = True

    def _forget(self, conn: _Pending) -> None:
        if conn.registered:
            self.ep.unregister(conn.fd)
            del self.pending[conn.fd]
            conn.registered = False

    def _drop(self, conn: _Pending) -> None:
        self._forget(conn)
        self._give(None)
        conn.sock.close()

    def _give(self, pool: "_Pool | None") -> None:
        """A connection this process holds is being closed: its slots go back."""
        if self.csem >= 0:
            os.write(self.csem, protocol_slot)
        if pool is not None and pool.csem >= 0:
            os.write(pool.csem, protocol_slot)

    # --- routing and handing off -------------------------------------------------
    def _dispatch(self, conn: _Pending) -> None:
        # the head rules held (limits.HeadState.rule_complete): Host is valid bytes or
        # None (HTTP/1.0), an absolute-form target's authority wins over it
        key = (conn.host, conn.port, conn.url)
        route = self.route_cache.get(key, _MISS)
        if route is _MISS:
            route = self._route(conn)
            if len(self.route_cache) >= 4096:
                self.route_cache.clear()
            self.route_cache[key] = route
        if route is None:
            self._reply(conn, not_found(self._host_name(conn) or ""))
            return
        pool = self.pools.get(route.pool)
        if pool is None or pool.queue is None or pool.state not in _SERVING:
            self._refuse(conn, pool, route.pool)
            return
        if conn.clen > (pool.max_body if pool.max_body >= 0 else self.max_body):
            self.counters.hit("max_body_size", f"pool {pool.name}: Content-Length {conn.clen}")
            self._reply(conn, BODY_TOO_LARGE)
            return
        if pool.csem >= 0:
            try:
                os.read(pool.csem, 8)     # take a slot of the pool's max_connections
            except BlockingIOError:
                self.counters.hit("pool_max_connections", f"pool {pool.name}")
                self._refuse(conn, pool, route.pool, TOO_MANY)
                return
        try:
            os.read(pool.sem, 8)          # take a queue slot
        except BlockingIOError:
            self.counters.hit("queue_full", f"pool {pool.name}")
            self.queue_full[pool.name] = self.queue_full.get(pool.name, 0) + 1
            if pool.csem >= 0:
                os.write(pool.csem, protocol_slot)
            self._refuse(conn, pool, route.pool, QUEUE_FULL)
            return
        self._forget(conn)
        try:
            fdpass.send_with_fds(pool.queue, conn.buf, (conn.fd,), _DONTWAIT)
        except BlockingIOError:
            self._park(pool, conn)
        except OSError:
            os.write(pool.sem, protocol_slot)
            if pool.csem >= 0:
                os.write(pool.csem, protocol_slot)
            self._reply(conn, unavailable(pool.name))
            return
        conn.sock.close()

    @staticmethod
    def _host_name(conn: _Pending) -> str | None:
        """The request's host: an absolute-form target's authority, else Host."""
        authority = split_target(conn.url)[0]
        if authority is not None:
            return authority
        return conn.host.decode("latin-1") if conn.host else None

    def _route(self, conn: _Pending):
        """The route of a head that passed the rules (route_cache miss), or None."""
        return self.router.route(self._host_name(conn), conn.port,
                                 decode_path(split_target(conn.url)[1]))

    def _park(self, pool: _Pool, conn: _Pending) -> None:
        """The kernel queue is full: the supervisor parks the connection (it keeps its slot)."""
        msg = protocol.encode_park(pool.name, conn.buf)
        try:
            fdpass.send_with_fds(self.ctl, msg, (conn.fd,), _DONTWAIT)
        except BlockingIOError:
            # the supervisor is behind: wait for room, briefly (this is overload)
            sockets.wait_fd(self.ctl, select.POLLOUT, 1.0)
            try:
                fdpass.send_with_fds(self.ctl, msg, (conn.fd,), _DONTWAIT)
            except OSError:
                os.write(pool.sem, protocol_slot)
                self._give(pool)
                self._reply_sock(conn.sock, QUEUE_FULL)
                return
        except OSError:
            os.write(pool.sem, protocol_slot)
            self._give(pool)
            self._reply_sock(conn.sock, QUEUE_FULL)
            return

    def _refuse(self, conn: _Pending, pool: _Pool | None, name: str,
                answer: bytes | None = None) -> None:
        if pool is not None and pool.lb == "tcp_reset":
            self._forget(conn)
            self._give(None)
            reset_connection(conn.sock)
            return
        self._reply(conn, answer or unavailable(name))

    def _take_rerouted(self) -> None:
        """Connections handed back by workers: route them again from their first byte."""
        for _ in range(_ACCEPT_BATCH):
            try:
                data, fds = fdpass.recv_with_fds(self.reroute, protocol.MAX_HANDOFF_BYTES,
                                                 _DONTWAIT, maxfds=1)
            except BlockingIOError:
                return
            except RuntimeError:
                continue
            if not fds:
                return
            try:
                sock = socket.socket(fileno=fds[0])
                port = sock.getsockname()[1]
            except OSError:
                os.close(fds[0])
                continue
            sock.setblocking(False)
            if self.stopping:
                self._give(None)
                sock.close()
                continue
            if data:
                self._first_bytes(sock, port, data)
            else:
                self._readable(_Pending(sock, port, time.monotonic()))

    # --- own answers ---------------------------------------------------------------
    def _reply(self, conn: _Pending, response: bytes) -> None:
        self._forget(conn)
        self._give(None)
        self._reply_sock(conn.sock, response)

    def _reply_sock(self, sock: socket.socket, response: bytes) -> None:
        """Send a short answer, then close gracefully: shut down our side and read what
        the client still sends for a moment, so the kernel does not turn unread input
        into an RST that destroys the answer before the client reads it."""
        try:
            if response:
                sock.send(response)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        fd = sock.fileno()
        self.lingering[fd] = (sock, time.monotonic() + _LINGER_SECONDS)
        self.ep.register(fd, _EPOLLIN)

    def _linger_read(self, fd: int) -> None:
        sock, _deadline = self.lingering[fd]
        try:
            data = sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.ep.unregister(fd)
            del self.lingering[fd]
            sock.close()

    def _sweep(self, now: float) -> None:
        """Every _SWEEP: heads that take too long, lingering closes that are over."""
        limit = now - self.header_timeout
        late = [c for c in self.pending.values() if c.since <= limit]
        for conn in late:
            self.counters.hit("header_timeout")
            self._reply(conn, TIMEOUT)
        over = [fd for fd, (_s, deadline) in self.lingering.items() if now > deadline]
        for fd in over:
            sock, _ = self.lingering.pop(fd)
            self.ep.unregister(fd)
            sock.close()
        if self.stopping and not self.pending:
            self.running = False
        if self.queue_full:
            # the supervisor keeps the per-pool totals (hostctl counters, /metrics)
            try:
                self.ctl.send(protocol.counters(self.queue_full), _DONTWAIT)
                self.queue_full = {}
            except OSError:
                pass

    # --- control from the supervisor ------------------------------------------------
    def _control(self) -> None:
        while True:
            try:
                data, fds = fdpass.recv_with_fds(self.ctl, protocol.MAX_CONTROL_BYTES,
                                                 _DONTWAIT, maxfds=253)
            except BlockingIOError:
                return
            except (ConnectionResetError, RuntimeError):
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self.running = False   # supervisor gone or done with us
                return
            msg = protocol.decode(data)
            kind = msg["t"]
            if kind == protocol.POOL_FDS:
                self._adopt_fds(msg["names"], fds, msg.get("conn_sems") or [])
            elif kind == protocol.POOLS:
                self._set_pools(msg["pools"], msg["routes"])
            elif kind == protocol.POOL_STATES:
                self._set_states(msg["pools"])
            elif kind == protocol.STOP:
                self._stop()

    def _adopt_fds(self, names: list[str], fds: list[int], conn_sems: list[bool]) -> None:
        """Per pool: its queue, the queue's semaphore and, where conn_sems[i] says so,
        its max_connections semaphore."""
        it = iter(fds)
        for i, name in enumerate(names):
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = _Pool(name)
            if pool.queue is not None:
                pool.queue.close()
                os.close(pool.sem)
            if pool.csem >= 0:
                os.close(pool.csem)
                pool.csem = -1
            pool.queue = socket.socket(fileno=next(it))
            pool.sem = next(it)
            if i < len(conn_sems) and conn_sems[i]:
                pool.csem = next(it)

    def _set_pools(self, states: dict, routes: list) -> None:
        for name in list(self.pools):
            if name not in states:
                pool = self.pools.pop(name)
                if pool.queue is not None:
                    pool.queue.close()
                    os.close(pool.sem)
                if pool.csem >= 0:
                    os.close(pool.csem)
        for name, info in states.items():
            pool = self.pools.get(name)
            if pool is None:
                pool = self.pools[name] = _Pool(name)
            pool.state = info["state"]
            pool.lb = info["lb"]
            pool.max_body = info.get("max_body", -1)
        self.router = Router.from_table(routes)
        self.route_cache.clear()
        if not self.listening and not self.stopping:
            self.listening = True
            for fd in self.listeners:
                self.ep.register(fd, _EPOLLIN | select.EPOLLEXCLUSIVE)

    def _set_states(self, states: dict) -> None:
        """Only these pools' entries changed (protocol.POOL_STATES): the routes, and
        every other pool, stay as they are."""
        for name, info in states.items():
            pool = self.pools.get(name)
            if pool is not None:
                pool.state = info["state"]
                pool.lb = info["lb"]
                pool.max_body = info.get("max_body", -1)

    def _stop(self) -> None:
        """Stop accepting; heads being read are still finished and handed off; then exit
        (the supervisor lets workers empty the queues before they drain)."""
        self.stopping = True
        if self.listening:
            self.listening = False
            for fd in self.listeners:
                self.ep.unregister(fd)
        if not self.pending:
            self.running = False


protocol_slot = (1).to_bytes(8, "little")


def frontend_main(slot: int, listeners: list[socket.socket], ctl: socket.socket,
                  reroute: socket.socket, settings: protocol.FrontEndSettings) -> int:
    """Entry point in the forked front-end process. Returns its exit code."""
    from kernel import proc
    log.set_process(f"frontend-{slot}")
    proc.set_title(f"hostd: frontend #{slot}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    if settings.identity:
        _drop_root(*settings.identity)
    try:
        proc.set_pdeathsig(signal.SIGKILL)   # after the uid switch, which clears it
    except OSError:
        pass
    if settings.supervisor_pid and os.getppid() != settings.supervisor_pid:
        return protocol.EXIT_SUPERVISOR_GONE
    return FrontEnd(slot, listeners, ctl, reroute, settings).run()


def _drop_root(uid: int, gid: int) -> None:
    """The front end holds its sockets already; from here on it needs no privilege:
    no capabilities (bounding set included), no_new_privs, its own uid. What it would
    import lazily is imported first: its uid may not read the interpreter's files."""
    import fcntl  # noqa: F401  (hostd/log.py, journald)
    import struct  # noqa: F401  (kernel/sockets.py)
    from kernel import privileges
    privileges.drop_to(uid, gid)
