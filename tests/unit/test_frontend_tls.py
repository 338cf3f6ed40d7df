"""The front end's TLS listeners and redirect_http (hostd/frontend.py): the routing
decision by SNI (tls_choice), the redirect's Location (redirect_to), which refusal gets
which counter and alert, and a FrontEnd in this process on loopback sockets: a hello
peeked and handed over untouched with no bytes, a partial hello that waits
edge-triggered (no busy loop), refusals with their alerts, a pool's 503s as TLS sees
them, header_timeout on a hello. No root, no hostd."""
from __future__ import annotations

import os
import select
import socket
import ssl
import time

import pytest

from hostd import frontend, limits, protocol, tlshello
from hostd.frontend import (TLS_NO_CERTIFICATE, TLS_NO_SNI, TLS_UNKNOWN_NAME, redirect,
                            redirect_to, tls_choice)
from hostd.router import Router
from kernel import fdpass, sockets

ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x03\x00\x02\x02\x70"
ALERT_INTERNAL_ERROR = b"\x15\x03\x03\x00\x02\x02\x50"
ALERT_DECODE_ERROR = b"\x15\x03\x03\x00\x02\x02\x32"
ALERT_PROTOCOL_VERSION = b"\x15\x03\x03\x00\x02\x02\x46"


def client_hello(sni: str | None) -> bytes:
    """A real ClientHello (Python's ssl module) for this SNI (None: none)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- tls_choice: which pool takes a hello --------------------------------------------

TABLE = [["shop", "shop.test"], ["wild", "*.wild.test"], ["plain", "plain.test"],
         ["ported", "port.test:8443"], ["prefixed", "prefix.test/app"],
         ["dflt", "default.test"]]
TLS_POOLS = {"shop", "wild", "ported", "prefixed", "dflt"}


def choose(sni, default="", port=443, table=TABLE, tls=TLS_POOLS):
    return tls_choice(Router.from_table(table), tls.__contains__, default, sni, port)


@pytest.mark.parametrize("sni, default, port, expected", [
    ("shop.test", "", 443, ("shop", "")),
    ("a.b.wild.test", "", 443, ("wild", "")),          # wildcards as for Host
    ("wild.test", "", 443, ("", TLS_UNKNOWN_NAME)),    # never the bare suffix
    ("port.test", "", 8443, ("ported", "")),           # the listener's port counts
    ("port.test", "", 443, ("", TLS_UNKNOWN_NAME)),
    ("plain.test", "", 443, ("", TLS_NO_CERTIFICATE)),  # bound, but no [tls]
    ("plain.test", "dflt", 443, ("", TLS_NO_CERTIFICATE)),  # not the default's either
    ("prefix.test", "", 443, ("", TLS_UNKNOWN_NAME)),  # routed with the path "/"
    (None, "", 443, ("", TLS_NO_SNI)),
    ("nobody.test", "", 443, ("", TLS_UNKNOWN_NAME)),
    (None, "dflt", 443, ("dflt", "")),
    ("nobody.test", "dflt", 443, ("dflt", "")),
    ("nobody.test", "plain", 443, ("", TLS_NO_CERTIFICATE)),  # a default without [tls]
    ("nobody.test", "gone", 443, ("", TLS_NO_CERTIFICATE)),   # or unknown
])
def test_tls_choice(sni, default, port, expected):
    assert choose(sni, default, port) == expected


def test_tls_choice_catch_all_binding_takes_every_name():
    table = TABLE + [["any", "*"]]
    assert choose("nobody.test", "dflt", table=table, tls=TLS_POOLS | {"any"}) == ("any", "")
    assert choose("nobody.test", "dflt", table=table) == ("", TLS_NO_CERTIFICATE)
    assert choose(None, "", table=table, tls=TLS_POOLS | {"any"}) == ("", TLS_NO_SNI)


def test_underscore_sni_routes_to_its_binding():
    name = "my_host.example"
    sni = tlshello.parse(client_hello(name)).sni
    assert sni == name
    assert choose(sni, table=[["u", name]], tls={"u"}) == ("u", "")


# --- redirect_http's Location ---------------------------------------------------------

@pytest.mark.parametrize("host, target, port, expected", [
    ("shop.test", b"/x?y=1", 443, b"https://shop.test/x?y=1"),
    ("shop.test:8080", b"/x?y=1", 443, b"https://shop.test/x?y=1"),     # its port goes
    ("Shop.Test:80", b"/", 8443, b"https://Shop.Test:8443/"),          # as written
    ("shop.test.", b"/a", 443, b"https://shop.test/a"),
    ("[::1]:8080", b"/a?b", 443, b"https://[::1]/a?b"),
    ("[::1]", b"/a", 8443, b"https://[::1]:8443/a"),
    ("::1", b"/a", 443, b"https://[::1]/a"),                           # split_target's
    ("shop.test", b"/a%20b?q=%2F&r", 443, b"https://shop.test/a%20b?q=%2F&r"),  # as sent
    ("shop.test", b"/a#frag", 443, b"https://shop.test/a"),
    ("shop.test", b"http://shop.test:81/p?q=1", 443, b"https://shop.test/p?q=1"),
    ("shop.test", b"HTTP://shop.test?q=1", 443, b"https://shop.test/?q=1"),
    ("shop.test", b"http://shop.test", 443, b"https://shop.test/"),
    ("shop.test", b"*", 443, b"https://shop.test/"),
    ("127.0.0.1", b"/", 8443, b"https://127.0.0.1:8443/"),
])
def test_redirect_location(host, target, port, expected):
    assert redirect_to(host, target, port) == expected


def test_redirect_answer():
    answer = redirect(b"https://shop.test/x?y=1")
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 308 Permanent Redirect"
    assert b"Location: https://shop.test/x?y=1" in lines
    assert b"Content-Length: 0" in lines and b"Connection: close" in lines
    assert body == b""


# --- refusals: counters and alerts ----------------------------------------------------

DESIGN_COUNTERS = {"tls_not_tls", "tls_ssl2", "tls_ssl3", "tls_too_big", "tls_malformed",
                   "tls_no_sni", "tls_unknown_name", "tls_no_certificate",
                   "tls_hello_timeout"}


def test_every_refusal_reason_has_its_counter_and_alert():
    assert set(frontend.HELLO_REFUSALS) == tlshello.REASONS
    names = {c for c, _ in frontend.HELLO_REFUSALS.values()} | {
        TLS_NO_SNI, TLS_UNKNOWN_NAME, TLS_NO_CERTIFICATE, frontend.TLS_HELLO_TIMEOUT}
    assert names == DESIGN_COUNTERS
    alerts = {reason: a for reason, (_c, a) in frontend.HELLO_REFUSALS.items()}
    # no TLS record to a peer that does not speak TLS (plain HTTP, SSLv2's format)
    assert alerts[tlshello.NOT_TLS] == alerts[tlshello.SSL2] == b""
    assert alerts[tlshello.SSL3] == ALERT_PROTOCOL_VERSION
    assert alerts[tlshello.MALFORMED] == ALERT_DECODE_ERROR
    assert alerts[tlshello.TOO_BIG] == tlshello.alert_handshake_failure()


# --- a FrontEnd in this process --------------------------------------------------------

class Rig:
    """A FrontEnd with one TLS and one plain listener on loopback, pools with real
    queues (socketpairs) and queue semaphores, driven by hand (no run loop)."""

    def __init__(self, pools: dict, routes: list, default: str = "", header_timeout=10.0):
        self.tls_l = sockets.listen_tcp("127.0.0.1", 0, reuseport=False)
        self.plain_l = sockets.listen_tcp("127.0.0.1", 0, reuseport=False)
        self.tls_port = self.tls_l.getsockname()[1]
        self.plain_port = self.plain_l.getsockname()[1]
        self.ctl, self.ctl_theirs = sockets.seqpacket_pair()
        self.reroute_in, self.reroute_out = sockets.seqpacket_pair()
        settings = protocol.FrontEndSettings(tls_ports=frozenset({self.tls_port}),
                                             header_timeout=header_timeout)
        self.fe = frontend.FrontEnd(0, [self.tls_l, self.plain_l], self.ctl_theirs,
                                    self.reroute_out, settings)
        self.fe.counters = limits.Counters(every=3600)
        self.queues = {}
        names, fds = [], []
        for name in pools:
            q_in, q_out = sockets.seqpacket_pair()
            sem = sockets.semaphore(pools[name].pop("queue_length", 8))
            self.queues[name] = (q_in, q_out, sem)
            names.append(name)
            fds += [os.dup(q_in.fileno()), os.dup(sem)]
        self.fe._adopt_fds(names, fds, [])
        entry = {"state": "started", "lb": "http_503", "max_body": -1}
        self.fe._set_pools({n: {**entry, **info} for n, info in pools.items()}, routes,
                           default)
        self.clients: list[socket.socket] = []

    def connect(self, data: bytes, tls: bool = True) -> socket.socket:
        c = socket.create_connection(("127.0.0.1", self.tls_port if tls else self.plain_port))
        c.settimeout(2)
        self.clients.append(c)
        if data:
            c.sendall(data)
        return c

    def accept(self, tls: bool = True) -> None:
        lsock = self.tls_l if tls else self.plain_l
        deadline = time.monotonic() + 2
        fd = lsock.fileno()
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.05)[0]:
                self.fe._accept(*self.fe.listeners[fd])
                return
        raise AssertionError("nothing to accept")

    def events(self, timeout: float) -> list:
        """Runs the FrontEnd's loop body once: the events of pending hellos."""
        out = []
        for fd, ev in self.fe.ep.poll(timeout):
            if fd in self.fe.hellos:
                out.append(fd)
                self.fe._peek_hello(self.fe.hellos[fd], ev & select.EPOLLRDHUP)
            elif fd in self.fe.lingering:
                self.fe._linger_read(fd)
        return out

    def queued(self, name: str):
        """What the pool's queue got: (payload, the connection) or None."""
        q_out = self.queues[name][1]
        try:
            data, fds = fdpass.recv_with_fds(q_out, 1 << 18, socket.MSG_DONTWAIT, maxfds=1)
        except BlockingIOError:
            return None
        return data, socket.socket(fileno=fds[0])

    def close(self):
        for c in self.clients:
            c.close()
        for s in (self.tls_l, self.plain_l, self.ctl, self.ctl_theirs, self.reroute_in,
                  self.reroute_out):
            s.close()
        for q_in, q_out, sem in self.queues.values():
            q_in.close()
            q_out.close()
            os.close(sem)
        self.fe.ep.close()


def read_all(c: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = c.recv(4096)
        except socket.timeout:
            return out + b"<timeout>"
        if not chunk:
            return out
        out += chunk


@pytest.fixture
def rig():
    r = Rig({"shop": {"tls": True}, "plain": {},
             "redir": {"tls": True, "redirect": True, "redirect_port": 8443},
             "redir443": {"tls": True, "redirect": True, "redirect_port": 443}},
            [["shop", "shop.test"], ["plain", "plain.test"], ["redir", "redir.test"],
             ["redir443", "r443.test"]])
    yield r
    r.close()


def test_whole_hello_is_handed_over_untouched_with_no_bytes(rig):
    hello = client_hello("shop.test")
    c = rig.connect(hello)
    rig.accept()
    data, conn = rig.queued("shop")
    assert data == b""                       # nothing read, nothing sent along
    assert conn.recv(65536) == hello         # the worker reads the whole hello itself
    assert not rig.fe.hellos and rig.fe.counters.counts == {}
    conn.close()
    assert os.read(rig.queues["shop"][2], 8)  # it took one queue slot (7 of 8 left)
    c.close()


def test_partial_hello_waits_edge_triggered_without_spinning(rig):
    hello = client_hello("shop.test")
    c = rig.connect(hello[:4])              # not even its handshake header
    rig.accept()
    assert len(rig.fe.hellos) == 1
    # the 4 bytes stay readable (peeked): level-triggered epoll would report them on
    # every poll; edge-triggered, at most the one readiness of the registration
    rig.events(0.1)
    assert rig.events(0.3) == [] and rig.events(0.3) == []
    c.sendall(hello[4:40])
    assert len(rig.events(1.0)) == 1 and len(rig.fe.hellos) == 1     # more: peeked again
    # now its length is known: SO_RCVLOWAT holds the wake-up until it can be whole
    conn = rig.fe.hellos[next(iter(rig.fe.hellos))]
    assert conn.lowat == len(hello)
    assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == len(hello)
    for i in range(40, len(hello) - 1, 50):  # dribbled: no wake-up at all
        c.sendall(hello[i:min(i + 50, len(hello) - 1)])
        assert rig.events(0.05) == []
    assert rig.queued("shop") is None
    c.sendall(hello[-1:])
    assert len(rig.events(1.0)) == 1
    assert not rig.fe.hellos
    data, conn = rig.queued("shop")
    assert data == b"" and conn.recv(65536) == hello
    # the worker gets a socket that wakes its epoll for every byte again
    assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
    conn.close()


def test_hello_cut_short_by_the_client_is_dropped(rig):
    c = rig.connect(client_hello("shop.test")[:60])
    rig.accept()
    c.shutdown(socket.SHUT_WR)
    rig.events(1.0)
    assert not rig.fe.hellos and rig.queued("shop") is None
    assert rig.fe.counters.counts == {}      # like a head cut short: not a refusal


def test_hello_past_header_timeout_is_closed_and_counted(rig):
    c = rig.connect(client_hello("shop.test")[:60])
    rig.accept()
    conn = next(iter(rig.fe.hellos.values()))
    rig.fe._sweep(time.monotonic())
    assert rig.fe.hellos                      # not yet
    conn.since -= rig.fe.header_timeout
    rig.fe._sweep(time.monotonic())
    assert not rig.fe.hellos
    assert rig.fe.counters.counts == {"tls_hello_timeout": 1}
    assert read_all(c) == b""                 # closed, no alert, no HTTP


@pytest.mark.parametrize("data, counter, alert", [
    (b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n", "tls_not_tls", b""),
    (b"\x00\xff garbage", "tls_not_tls", b""),
    (b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10", "tls_ssl2", b""),
    (b"\x16\x03\x01\x00\x05garbage", "tls_malformed", ALERT_DECODE_ERROR),
    (b"\x16\x03\x01\x40\x01", "tls_too_big", b"\x15\x03\x03\x00\x02\x02\x28"),
])
def test_refused_hellos(rig, data, counter, alert):
    c = rig.connect(data)
    rig.accept()
    assert rig.fe.counters.counts == {counter: 1}
    assert rig.queued("shop") is None and not rig.fe.hellos
    assert read_all(c) == alert


def test_ssl3_hello_gets_protocol_version(rig):
    body = (b"\x03\x00" + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00")
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    c = rig.connect(b"\x16\x03\x00" + len(message).to_bytes(2, "big") + message)
    rig.accept()
    assert rig.fe.counters.counts == {"tls_ssl3": 1}
    assert read_all(c) == ALERT_PROTOCOL_VERSION


@pytest.mark.parametrize("sni, counter", [
    ("plain.test", "tls_no_certificate"), (None, "tls_no_sni"),
    ("nobody.test", "tls_unknown_name")])
def test_unroutable_hellos_get_unrecognized_name(rig, sni, counter):
    c = rig.connect(client_hello(sni))
    rig.accept()
    assert rig.fe.counters.counts == {counter: 1}
    assert all(rig.queued(n) is None for n in rig.queues)
    assert read_all(c) == ALERT_UNRECOGNIZED_NAME


def test_tls_default_pool_takes_no_sni_and_unbound_names():
    r = Rig({"shop": {"tls": True}, "dflt": {"tls": True}},
            [["shop", "shop.test"], ["dflt", "default.test"]], default="dflt")
    try:
        for sni in (None, "nobody.test"):
            hello = client_hello(sni)
            r.connect(hello)
            r.accept()
            data, conn = r.queued("dflt")
            assert data == b"" and conn.recv(65536) == hello
            conn.close()
        assert r.fe.counters.counts == {}
    finally:
        r.close()


def test_a_pools_503s_become_an_alert_or_an_rst():
    r = Rig({"stopped": {"tls": True, "state": "stopped"},
             "reset": {"tls": True, "state": "failed", "lb": "tcp_reset"},
             "full": {"tls": True, "queue_length": 0}},
            [["stopped", "stopped.test"], ["reset", "reset.test"], ["full", "full.test"]])
    try:
        c = r.connect(client_hello("stopped.test"))
        r.accept()
        assert read_all(c) == ALERT_INTERNAL_ERROR
        c = r.connect(client_hello("full.test"))
        r.accept()
        assert read_all(c) == ALERT_INTERNAL_ERROR
        assert r.fe.counters.counts == {"queue_full": 1} and r.fe.queue_full == {"full": 1}
        c = r.connect(client_hello("reset.test"))
        r.accept()
        with pytest.raises(ConnectionResetError):
            c.recv(100)
        assert all(r.queued(n) is None for n in r.queues)
    finally:
        r.close()


def test_plain_request_to_a_redirect_pool_gets_308(rig):
    c = rig.connect(b"GET /x?y=1 HTTP/1.1\r\nHost: redir.test:8080\r\n\r\n", tls=False)
    rig.accept(tls=False)
    head = read_all(c)
    assert head.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    assert b"\r\nLocation: https://redir.test:8443/x?y=1\r\n" in head
    c = rig.connect(b"GET /a/b?c HTTP/1.1\r\nHost: r443.test\r\n\r\n", tls=False)
    rig.accept(tls=False)
    assert b"\r\nLocation: https://r443.test/a/b?c\r\n" in read_all(c)
    assert all(rig.queued(n) is None for n in rig.queues)   # no worker involved


def test_redirect_pool_takes_tls_and_stopped_redirect_pool_still_redirects(rig):
    hello = client_hello("redir.test")
    rig.connect(hello)
    rig.accept()
    data, conn = rig.queued("redir")
    assert data == b"" and conn.recv(65536) == hello
    conn.close()
    rig.fe._set_states({"redir": {"state": "stopped", "lb": "http_503", "max_body": -1,
                                  "tls": True, "redirect": True, "redirect_port": 443}})
    c = rig.connect(b"GET / HTTP/1.1\r\nHost: redir.test\r\n\r\n", tls=False)
    rig.accept(tls=False)
    assert b"\r\nLocation: https://redir.test/\r\n" in read_all(c)


def test_plain_listener_is_unchanged(rig):
    request = b"GET /p HTTP/1.1\r\nHost: plain.test\r\n\r\n"
    rig.connect(request, tls=False)
    rig.accept(tls=False)
    data, conn = rig.queued("plain")
    assert data == request                   # plain: the head travels with the socket
    conn.close()
    # a TLS hello on the plain listener is just a bad request there
    c = rig.connect(client_hello("shop.test"), tls=False)
    rig.accept(tls=False)
    assert read_all(c).startswith(b"HTTP/1.1 400 ")


def test_a_pool_state_change_of_tls_forgets_cached_choices(rig):
    hello = client_hello("plain.test")
    rig.connect(hello)
    rig.accept()
    assert rig.fe.counters.counts == {"tls_no_certificate": 1}
    rig.fe._set_states({"plain": {"state": "started", "lb": "http_503", "max_body": -1,
                                  "tls": True}})
    rig.connect(hello)
    rig.accept()
    data, conn = rig.queued("plain")
    assert data == b""
    conn.close()


def test_a_rerouted_tls_connection_is_routed_again_by_its_hello(rig):
    """A worker handing back a TLS connection it has not read from (a drain): its hello
    is peeked again; one handed back with bytes (it read the hello) is closed."""
    hello = client_hello("shop.test")
    rig.connect(hello)
    rig.accept()
    _data, conn = rig.queued("shop")
    fdpass.send_with_fds(rig.reroute_in, b"", (conn.fileno(),))
    conn.close()
    rig.fe._take_rerouted()
    data, conn = rig.queued("shop")
    assert data == b"" and conn.recv(65536) == hello
    c = rig.connect(client_hello("shop.test"))
    rig.accept()
    _data, conn2 = rig.queued("shop")
    fdpass.send_with_fds(rig.reroute_in, b"\x16\x03\x01", (conn2.fileno(),))
    conn2.close()
    rig.fe._take_rerouted()
    assert rig.queued("shop") is None
    try:                                      # closed: its unread hello makes it an RST
        assert read_all(c) == b""
    except ConnectionResetError:
        pass
    conn.close()


# --- the supervisor's side (hostd/supervisor/frontends.py) ------------------------------

def _frontends(listen, listen_tls, tls_default=""):
    from types import SimpleNamespace as NS

    from hostd.supervisor.frontends import FrontEnds
    main = NS(listen=tuple(listen), listen_tls=tuple(listen_tls), frontends=2,
              tls_default_pool=tls_default)
    return FrontEnds(NS(main=main), None, None, NS(listen_ports=set()), None)


def _ports(n):
    out = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            out.append(s.getsockname()[1])
    return out


def test_bind_makes_tls_listeners_per_slot_beside_the_plain_ones(monkeypatch):
    from hostd import sdnotify
    monkeypatch.setattr(sdnotify, "listen_fds", lambda: [])
    plain, tls = _ports(2)
    fes = _frontends([("127.0.0.1", plain)], [("127.0.0.1", tls)])
    fes.bind()
    try:
        assert len(fes.slots) == 2 and fes.slots[0][0] is not fes.slots[1][0]
        assert [[s.getsockname()[1] for s in slot] for slot in fes.slots] == [[plain, tls]] * 2
        for slot in fes.slots:      # same options as the plain ones: a group per port
            for s in slot:
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
                assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        assert fes.tls_ports == frozenset({tls})
        assert fes.connections.listen_ports == {plain, tls}
    finally:
        fes.close_sockets()


def test_bind_under_socket_activation_tells_tls_listeners_by_address(monkeypatch):
    from hostd import sdnotify
    plain, tls, tls2 = _ports(3)
    passed = [sockets.listen_tcp("127.0.0.1", p, reuseport=False) for p in (tls, plain)]
    monkeypatch.setattr(sdnotify, "listen_fds", lambda: list(passed))
    # tls2 was not passed: bound here, shared
    fes = _frontends([("127.0.0.1", plain)], [("127.0.0.1", tls), ("127.0.0.1", tls2)])
    fes.bind()
    try:
        assert fes.slots[0] is fes.slots[1]
        assert [s.getsockname()[1] for s in fes.slots[0]] == [plain, tls, tls2]
        assert fes.slots[0][:2] == [passed[1], passed[0]]
        assert fes.tls_ports == frozenset({tls, tls2})
        assert fes.connections.listen_ports == {plain, tls, tls2}
    finally:
        for s in fes.slots[0]:
            s.close()


def test_pool_entries_and_the_pools_message_carry_tls():
    from types import SimpleNamespace as NS

    from hostd.config import TLSConfig
    from hostd.lifecycle import PoolState
    from hostd.supervisor import frontends

    def p(tls):
        return NS(state=PoolState.STARTED, cfg=NS(load_balancer_capabilities="http_503",
                                                   max_body_size=None, tls=tls))
    pairs = (("/c", "/k"),)
    assert frontends._entry(p(None)) == {"state": "started", "lb": "http_503",
                                         "max_body": -1, "tls": False, "redirect": False}
    assert frontends._entry(p(TLSConfig(pairs)))["tls"] is True
    assert "redirect_port" not in frontends._entry(p(TLSConfig(pairs)))
    entry = frontends._entry(p(TLSConfig(pairs, redirect_http=True, redirect_port=8443)))
    assert (entry["tls"], entry["redirect"], entry["redirect_port"]) == (True, True, 8443)
    failed = NS(state=PoolState.FAILED, cfg=None)      # a broken pool file
    assert frontends._entry(failed)["tls"] is False
    msg = protocol.decode(frontends._pools_message({"a": entry}, [["a", "a.test"]], "a"))
    assert msg == {"t": protocol.POOLS, "pools": {"a": entry}, "routes": [["a", "a.test"]],
                   "tls_default": "a"}
    # what the front end makes of it
    r = Rig({"a": {}}, [])
    try:
        r.fe._set_pools(msg["pools"], msg["routes"], msg["tls_default"])
        pool = r.fe.pools["a"]
        assert (pool.tls, pool.redirect, pool.redirect_port, pool.closed) == \
            (True, True, 8443, True)
        assert r.fe.tls_default == "a"
    finally:
        r.close()
