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
RST instead of its 503s. An HTTP/2 prior-knowledge preface is closed at once. A plain
request routed to a pool with [tls] redirect_http gets 308 to https:// (`redirect_to`),
whatever the pool's state: no worker is needed for it.

TLS listeners (FrontEndSettings.tls_ports; one flag per listener, looked at once per
accept): the front end reads nothing of the connection. It peeks (MSG_PEEK into one
buffer of the process, so a connection costs no buffer of its own) until
hostd/tlshello.py has the whole ClientHello, routes its SNI like a Host (path "/",
`tls_choice`; no SNI or an unbound name: [hostd] tls_default_pool) and hands the
untouched socket to the pool's queue with no bytes: the pool's worker does the
handshake. Partial hellos wait edge-triggered (the peeked bytes stay readable, so
level-triggered epoll would wake at once again) and, once tlshello knows how long the
hello is, with SO_RCVLOWAT at that length (a dribbled hello wakes the process once,
not once a segment; undone before the socket goes); header_timeout bounds them. Refused
hellos are counted (limits.Counters, `HELLO_REFUSALS`' names) and closed, with a TLS
alert where the peer speaks TLS; the 503s of a pool become an internal_error alert
(tcp_reset pools: an RST).

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

from hostd import limits, log, protocol, tlshello
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
_PEEK = int(socket.MSG_PEEK)
#: a waiting ClientHello: woken by each arrival of bytes (edge), and by the peer's FIN
_HELLO_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_RDHUP = select.EPOLLRDHUP
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SO_RCVLOWAT = int(socket.SO_RCVLOWAT)
#: the peek: the hello's cap and a little more (tlshello decides TOO_BIG from the
#: headers, so a hello is decided within MAX_HELLO_BYTES)
_PEEK_BYTES = tlshello.MAX_HELLO_BYTES + 64

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


def redirect_to(host: str, target: bytes, port: int) -> bytes:
    """The https:// URL a plain request is redirected to ([tls] redirect_http).

    Takes: the request's host as the client wrote it, port included or not (a Host
    value, an absolute-form target's authority, or a bare IPv6 address as
    router.split_target gives it), the request target as sent, and the TLS port
    (443: none is written). Returns: the Location, ASCII bytes:
    https://HOST[:PORT]/path?query (the target as sent; an absolute-form target's
    path and query; "*" becomes "/"). Raises nothing (the head rules already held:
    neither holds a space or a control character)."""
    if host.startswith("["):
        end = host.find("]")
        name = host[:end + 1] if end > 0 else host
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    elif ":" in host:
        name = f"[{host}]"              # an IPv6 address from an absolute-form target
    else:
        name = host
    if name.endswith("."):
        name = name[:-1]
    if target[:1] != b"/":
        if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            start = target.find(b"//") + 2
            cut = [i for i in (target.find(b"/", start), target.find(b"?", start)) if i >= 0]
            target = target[min(cut):] if cut else b"/"
            if target[:1] == b"?":
                target = b"/" + target
        else:
            target = b"/"               # asterisk-form (OPTIONS *)
    hash_ = target.find(b"#")
    if hash_ >= 0:
        target = target[:hash_]
    authority = name if port == 443 else f"{name}:{port}"
    return b"https://" + authority.encode("latin-1", "replace") + target


def redirect(location: bytes) -> bytes:
    """Takes a Location (redirect_to); returns the whole 308 answer: no body (a HEAD
    must not get one, and clients follow the Location), Connection: close."""
    return (b"HTTP/1.1 308 Permanent Redirect\r\nServer: hostd\r\nLocation: " + location
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


#: tlshello.Refused reason -> (the counter, the alert record sent before the close, b""
#: when the peer does not speak TLS: plain HTTP, garbage, SSLv2's own record format)
HELLO_REFUSALS = {
    tlshello.NOT_TLS: ("tls_not_tls", b""),
    tlshello.SSL2: ("tls_ssl2", b""),
    tlshello.SSL3: ("tls_ssl3", tlshello.alert_protocol_version()),
    tlshello.TOO_BIG: ("tls_too_big", tlshello.alert_handshake_failure()),
    tlshello.MALFORMED: ("tls_malformed", tlshello.alert_decode_error()),
}
#: routing refusals (tls_choice), every one answered with unrecognized_name
TLS_NO_SNI = "tls_no_sni"
TLS_UNKNOWN_NAME = "tls_unknown_name"
TLS_NO_CERTIFICATE = "tls_no_certificate"
TLS_HELLO_TIMEOUT = "tls_hello_timeout"
_UNRECOGNIZED_NAME = tlshello.alert_unrecognized_name()
_INTERNAL_ERROR = tlshello.alert_internal_error()


def tls_choice(router: Router, has_tls, default: str, sni: str | None,
               port: int) -> tuple[str, str]:
    """Which pool takes a TLS connection, from its ClientHello's SNI.

    Takes: the router, a function pool name -> whether that pool has [tls] (False for
    an unknown name), [hostd] tls_default_pool ("" = none), the SNI (None: none sent),
    and the listener's port. The SNI is routed as a Host with the path "/"; no SNI,
    or a name no binding matches, goes to the default pool. A match (or the default)
    without [tls] is refused: its worker has no certificate.
    Returns: (pool name, "") to hand the connection to, or ("", counter name) to
    refuse it (TLS_NO_SNI, TLS_UNKNOWN_NAME, TLS_NO_CERTIFICATE). Raises nothing."""
    if sni is not None:
        route = router.route(sni, port, "/")
        if route is not None:
            return (route.pool, "") if has_tls(route.pool) else ("", TLS_NO_CERTIFICATE)
        miss = TLS_UNKNOWN_NAME
    else:
        miss = TLS_NO_SNI
    if not default:
        return "", miss
    return (default, "") if has_tls(default) else ("", TLS_NO_CERTIFICATE)


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


class _Hello:
    """A connection of a TLS listener whose ClientHello has not all arrived: no buffer
    (its bytes stay in the kernel's, peeked), so it costs what a plain one that sent
    nothing does, or less."""

    __slots__ = ("sock", "fd", "port", "since", "registered", "lowat")
    buf = b""            # what the pool's queue (or a PARK) gets with it: nothing read

    def __init__(self, sock: socket.socket, port: int, now: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.port = port
        self.since = now
        self.registered = False
        self.lowat = 0   # the SO_RCVLOWAT set on it (0: none; undone before it goes)


class _Pool:
    __slots__ = ("name", "state", "lb", "queue", "sem", "csem", "max_body", "tls",
                 "redirect", "redirect_port", "closed")

    def __init__(self, name: str):
        self.name = name
        self.state = "stopped"
        self.lb = "http_503"
        self.queue: socket.socket | None = None
        self.sem = -1
        self.csem = -1          # the pool's max_connections semaphore (-1: no pool limit)
        self.max_body = -1      # -1: the [hostd] max_body_size
        self.tls = False        # it has [tls]: TLS listeners' connections may go to it
        self.redirect = False   # [tls] redirect_http: plain requests get 308
        self.redirect_port = 443
        #: a plain request is not queued: no queue, not serving, or redirected (one
        #: test on the hot path; `update` keeps it)
        self.closed = True

    def set_info(self, info: dict) -> None:
        """Takes its entry of a POOLS / POOL_STATES table."""
        self.state = info["state"]
        self.lb = info["lb"]
        self.max_body = info.get("max_body", -1)
        self.tls = bool(info.get("tls"))
        self.redirect = bool(info.get("redirect"))
        self.redirect_port = info.get("redirect_port", 443)
        self.update()

    def update(self) -> None:
        self.closed = self.queue is None or self.state not in _SERVING or self.redirect

    def serving(self) -> bool:
        """Whether a connection may be queued (a TLS one: redirect_http aside)."""
        return self.queue is not None and self.state in _SERVING


class FrontEnd:
    """The front end's state and its event loop. `run()` returns an exit code."""

    def __init__(self, slot: int, listeners: list[socket.socket], ctl: socket.socket,
                 reroute: socket.socket, settings: protocol.FrontEndSettings):
        self.slot = slot
        # (socket, port, family as a plain int: socket.family is an enum property that
        # costs ~1 µs per accepted connection)
        self.tls_ports = frozenset(settings.tls_ports)
        # (socket, port, family, TLS listener?)
        self.listeners = {s.fileno(): (s, port, int(s.family), port in self.tls_ports)
                          for s in listeners for port in (s.getsockname()[1],)}
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
        #: TLS connections whose ClientHello is still arriving
        self.hellos: dict[int, _Hello] = {}
        self.tls_default = ""           # [hostd] tls_default_pool (the POOLS message)
        self.tls_cache: dict = {}       # (SNI, port) -> tls_choice's answer
        #: the peek buffer every TLS connection's hello is read into, one at a time
        self.peek = bytearray(_PEEK_BYTES)
        self.peek_view = memoryview(self.peek)
        self.lingering: dict[int, tuple[socket.socket, float]] = {}
        self.queue_full: dict[str, int] = {}   # rejections not yet reported to the supervisor
        self.reported: dict[str, int] = {}     # self.counters as last reported
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
        listeners, pending, hellos = self.listeners, self.pending, self.hellos
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
                elif fd in hellos:
                    self._peek_hello(hellos[fd], ev & _RDHUP)
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
    def _accept(self, lsock: socket.socket, port: int, family: int, tls: bool) -> None:
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
                    self._reply_sock(sock, TOO_MANY if not tls else _INTERNAL_ERROR)
                    continue
            if tls:
                self._peek_hello(_Hello(sock, port, time.monotonic()), 0)
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

    # --- TLS listeners: the ClientHello, peeked -----------------------------------------
    def _peek_hello(self, conn: _Hello, hup: int) -> None:
        """Peek at what has arrived of the connection's ClientHello: route it once it
        is whole, wait for more (edge-triggered), or refuse it. hup: the peer has shut
        its side down (EPOLLRDHUP): a partial hello will not grow."""
        try:
            n = conn.sock.recv_into(self.peek, _PEEK_BYTES, _PEEK)
        except BlockingIOError:
            self._hello_wait(conn)
            return
        except OSError:
            self._hello_drop(conn)
            return
        if not n:
            self._hello_drop(conn)
            return
        try:
            hello = tlshello.parse(self.peek_view[:n])
        except tlshello.NeedMore as more:
            if hup:
                self._hello_drop(conn)   # closed mid-hello, like a head cut short
            elif n >= tlshello.MAX_HELLO_BYTES:
                self._hello_refuse(conn, *HELLO_REFUSALS[tlshello.TOO_BIG])
            else:
                if more.at_least > n and more.at_least != conn.lowat:
                    # no wake-up (so no peek and parse of it all again) before the
                    # hello can be whole: a byte-a-second hello costs one, not 500
                    try:
                        conn.sock.setsockopt(_SOL_SOCKET, _SO_RCVLOWAT, more.at_least)
                        conn.lowat = more.at_least
                    except OSError:
                        pass
                self._hello_wait(conn)
            return
        except tlshello.Refused as exc:
            self._hello_refuse(conn, *HELLO_REFUSALS[exc.reason])
            return
        self._hello_forget(conn)
        if conn.lowat and not self._lowat_undone(conn):
            self._hello_drop(conn)
            return
        self._tls_dispatch(conn, hello.sni)

    @staticmethod
    def _lowat_undone(conn: _Hello) -> bool:
        """SO_RCVLOWAT back to 1 (the worker's epoll must wake for every record).
        Returns False when the socket is unusable."""
        try:
            conn.sock.setsockopt(_SOL_SOCKET, _SO_RCVLOWAT, 1)
        except OSError:
            return False
        conn.lowat = 0
        return True

    def _hello_wait(self, conn: _Hello) -> None:
        if not conn.registered:
            self.hellos[conn.fd] = conn
            self.ep.register(conn.fd, _HELLO_EVENTS)
            conn.registered = True

    def _hello_forget(self, conn: _Hello) -> None:
        if conn.registered:
            self.ep.unregister(conn.fd)
            del self.hellos[conn.fd]
            conn.registered = False

    def _hello_drop(self, conn: _Hello) -> None:
        self._hello_forget(conn)
        self._give(None)
        conn.sock.close()

    def _hello_refuse(self, conn: _Hello, counter: str, alert: bytes,
                      sni: str | None = None) -> None:
        """Count, send the alert (b"": none), close gracefully (the hello's bytes are
        read away while lingering, so no RST destroys the alert)."""
        self.counters.hit(counter, f"port {conn.port}" if sni is None else
                          f"SNI {sni[:100]} on port {conn.port}")
        if conn.lowat:
            self._lowat_undone(conn)     # so the lingering read wakes for what comes
        self._hello_forget(conn)
        self._give(None)
        self._reply_sock(conn.sock, alert)

    def _tls_dispatch(self, conn: _Hello, sni: str | None) -> None:
        """A whole ClientHello: route by its SNI, hand the socket over with no bytes
        (the pool's worker reads the hello itself), as _dispatch does a plain one."""
        key = (sni, conn.port)
        choice = self.tls_cache.get(key)
        if choice is None:
            choice = tls_choice(self.router, self._has_tls, self.tls_default, sni, conn.port)
            if len(self.tls_cache) >= 4096:
                self.tls_cache.clear()
            self.tls_cache[key] = choice
        name, refusal = choice
        if refusal:
            self._hello_refuse(conn, refusal, _UNRECOGNIZED_NAME, sni)
            return
        pool = self.pools.get(name)
        if pool is None or not pool.serving() or self._take_slots(pool) is not None:
            self._tls_refuse(conn, pool)
            return
        self._hand_to(pool, conn, True)

    def _has_tls(self, name: str) -> bool:
        pool = self.pools.get(name)
        return pool is not None and pool.tls

    def _tls_refuse(self, conn: _Hello, pool: "_Pool | None") -> None:
        """A TLS connection its pool cannot take (what a plain one gets a 503 for):
        RST for a tcp_reset pool, else the internal_error alert. No slot of the pool
        is held."""
        self._give(None)
        if pool is not None and pool.lb == "tcp_reset":
            reset_connection(conn.sock)
        else:
            self._reply_sock(conn.sock, _INTERNAL_ERROR)

    # --- plain listeners ---------------------------------------------------------------
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
        if pool is None or pool.closed:
            if pool is not None and pool.redirect:
                self._reply(conn, redirect(redirect_to(self._host_name(conn) or
                                                       self._local_host(conn),
                                                       conn.url, pool.redirect_port)))
                return
            self._refuse(conn, pool, route.pool)
            return
        if conn.clen > (pool.max_body if pool.max_body >= 0 else self.max_body):
            self.counters.hit("max_body_size", f"pool {pool.name}: Content-Length {conn.clen}")
            self._reply(conn, BODY_TOO_LARGE)
            return
        refusal = self._take_slots(pool)
        if refusal is not None:
            self._refuse(conn, pool, route.pool, refusal)
            return
        self._forget(conn)
        self._hand_to(pool, conn, False)

    def _take_slots(self, pool: _Pool) -> bytes | None:
        """Takes a slot of the pool's max_connections (when it has one) and a queue
        slot, for a connection about to be queued. Returns None, or (counted, no slot
        kept) the plain answer to the refusal: TOO_MANY or QUEUE_FULL."""
        if pool.csem >= 0:
            try:
                os.read(pool.csem, 8)     # take a slot of the pool's max_connections
            except BlockingIOError:
                self.counters.hit("pool_max_connections", f"pool {pool.name}")
                return TOO_MANY
        try:
            os.read(pool.sem, 8)          # take a queue slot
        except BlockingIOError:
            self.counters.hit("queue_full", f"pool {pool.name}")
            self.queue_full[pool.name] = self.queue_full.get(pool.name, 0) + 1
            if pool.csem >= 0:
                os.write(pool.csem, protocol_slot)
            return QUEUE_FULL
        return None

    def _hand_to(self, pool: _Pool, conn: "_Pending | _Hello", tls: bool) -> None:
        """Sends the connection (its fd and conn.buf: b"" for a TLS one) to the pool's
        queue, whose slots _take_slots took, and closes this process's copy; a full
        kernel queue parks it with the supervisor. When it cannot be sent the slots go
        back and the client gets 503 (TLS: the internal_error alert)."""
        try:
            fdpass.send_with_fds(pool.queue, conn.buf, (conn.fd,), _DONTWAIT)
        except BlockingIOError:
            if not self._park(pool, conn, _INTERNAL_ERROR if tls else QUEUE_FULL):
                return
        except OSError:
            os.write(pool.sem, protocol_slot)
            if pool.csem >= 0:
                os.write(pool.csem, protocol_slot)
            self._give(None)
            self._reply_sock(conn.sock, _INTERNAL_ERROR if tls else unavailable(pool.name))
            return
        conn.sock.close()

    @staticmethod
    def _host_name(conn: _Pending) -> str | None:
        """The request's host: an absolute-form target's authority, else Host."""
        authority = split_target(conn.url)[0]
        if authority is not None:
            return authority
        return conn.host.decode("latin-1") if conn.host else None

    @staticmethod
    def _local_host(conn: _Pending) -> str:
        """The address the connection came in on, for a redirect of a request that
        named no host (HTTP/1.0 without Host, routed by a "*" binding)."""
        try:
            addr = conn.sock.getsockname()[0]
        except (OSError, AttributeError):
            return "localhost"
        return f"[{addr}]" if ":" in addr else addr

    def _route(self, conn: _Pending):
        """The route of a head that passed the rules (route_cache miss), or None."""
        return self.router.route(self._host_name(conn), conn.port,
                                 decode_path(split_target(conn.url)[1]))

    def _park(self, pool: _Pool, conn: "_Pending | _Hello",
              refusal: bytes = QUEUE_FULL) -> bool:
        """The kernel queue is full: the supervisor parks the connection (it keeps its
        slot). Returns True when it was sent (the caller closes its copy); False when
        it could not be, and the connection got `refusal` (the caller leaves it be:
        it lingers)."""
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
                self._reply_sock(conn.sock, refusal)
                return False
        except OSError:
            os.write(pool.sem, protocol_slot)
            self._give(pool)
            self._reply_sock(conn.sock, refusal)
            return False
        return True

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
            if port in self.tls_ports:
                # handed back before its worker read a byte (nothing else can be: TLS
                # state is never moved): its hello is routed again
                if data:
                    self._give(None)
                    sock.close()
                else:
                    self._peek_hello(_Hello(sock, port, time.monotonic()), 0)
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
        if self.hellos:
            for conn in [c for c in self.hellos.values() if c.since <= limit]:
                self._hello_refuse(conn, TLS_HELLO_TIMEOUT, b"")
        over = [fd for fd, (_s, deadline) in self.lingering.items() if now > deadline]
        for fd in over:
            sock, _ = self.lingering.pop(fd)
            self.ep.unregister(fd)
            sock.close()
        if self.stopping and not self.pending and not self.hellos:
            self.running = False
        counts = self.counters.counts
        if self.queue_full or counts != self.reported:
            # the supervisor keeps the totals (hostctl counters, /metrics): per pool the
            # queue-full rejections, and this process's own refusals by name
            refused = {k: v - self.reported.get(k, 0) for k, v in counts.items()
                       if v != self.reported.get(k, 0)}
            try:
                self.ctl.send(protocol.counters(self.queue_full, refused), _DONTWAIT)
                self.queue_full = {}
                self.reported = dict(counts)
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
                self._set_pools(msg["pools"], msg["routes"], msg.get("tls_default") or "")
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
            pool.update()

    def _set_pools(self, states: dict, routes: list, tls_default: str = "") -> None:
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
            pool.set_info(info)
        self.router = Router.from_table(routes)
        self.route_cache.clear()
        self.tls_default = tls_default
        self.tls_cache = {}
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
                if pool.tls != bool(info.get("tls")):
                    self.tls_cache = {}     # tls_choice's answers depend on it
                pool.set_info(info)

    def _stop(self) -> None:
        """Stop accepting; heads being read are still finished and handed off; then exit
        (the supervisor lets workers empty the queues before they drain)."""
        self.stopping = True
        if self.listening:
            self.listening = False
            for fd in self.listeners:
                self.ep.unregister(fd)
        if not self.pending and not self.hellos:
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
