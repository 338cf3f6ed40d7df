"""The front end's side of HTTPS (issue 14) against a real hostd: what a TLS listener
does with a ClientHello before any worker sees it (routing by SNI, refusals with their
alerts and counters, header_timeout on the hello, no busy loop on a partial one, the
cost of idle connections), redirect_http from a plain listener, and one HTTPS request
end to end through that path. Certificates: tests/tlscerts.py (openssl CLI)."""
from __future__ import annotations

import os
import resource
import socket
import ssl
import subprocess
import time

import pytest

from hostd_harness import APPS, Hostd, free_port
from tlscerts import CA

pytestmark = pytest.mark.root

ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x03\x00\x02\x02\x70"
ALERT_DECODE_ERROR = b"\x15\x03\x03\x00\x02\x02\x32"
HEADER_TIMEOUT = 3


def pool(bindings, leaf=None, **tls):
    doc = {"app": "core_app:application", "directory": str(APPS), "bindings": bindings}
    if leaf is not None:
        doc["tls"] = {"certificate": str(leaf.cert), "key": str(leaf.key), **tls}
    return doc


def start(root, ca, pools, **main) -> Hostd:
    tls_port = free_port()
    hostd = {"listen_tls": [f"127.0.0.1:{tls_port}"], "header_timeout": HEADER_TIMEOUT}
    hostd.update(main)
    h = Hostd(root, root_workers=True, hostd=hostd, pools=pools(tls_port))
    h.tls_port = tls_port
    h.ca = ca
    return h.start()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def h(tmp_path_factory, ca):
    secure, r443 = ca.issue("secure.test"), ca.issue("r443.test")
    h = start(tmp_path_factory.mktemp("fe-tls"), ca, lambda tls_port: {
        "secure": pool(["secure.test"], secure, redirect_http=True, redirect_port=tls_port),
        "r443": pool(["r443.test"], r443, redirect_http=True),
        "plain": pool(["plain.test"]),
    })
    yield h
    h.stop()


def client_hello(sni: str | None) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def tls_connect(h, sni, verify=True, timeout=10.0) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(h.ca.cert))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", h.tls_port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname=sni)


def raw_exchange(h, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends data to the TLS port; returns what came back until the close (an RST
    after nothing counts as nothing)."""
    with socket.create_connection(("127.0.0.1", h.tls_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def get(s, host: str, path: str = "/") -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def counted(h, name: str) -> None:
    h.wait_for(lambda: f"LIMIT={name} " in h.log(), timeout=5, what=f"{name} counted")


def frontend_pids(h) -> list[int]:
    return [fe["pid"] for fe in h.status()["frontends"]]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- end to end through the front end's path -------------------------------------------

def test_https_request_routed_by_sni_is_served(h):
    with tls_connect(h, "secure.test") as s:
        response = get(s, "secure.test", "/path?q=1")
    assert response.startswith(b"HTTP/1.1 200 "), response[:300]
    url = f"https://secure.test:{h.tls_port}/"
    out = subprocess.run(["curl", "-sS", "--cacert", str(h.ca.cert), "--resolve",
                          f"secure.test:{h.tls_port}:127.0.0.1", "-o", "/dev/null",
                          "-w", "%{http_code}", url], capture_output=True, text=True,
                         timeout=30)
    assert out.stdout == "200", out.stderr


# --- refusals ---------------------------------------------------------------------------

def test_hello_for_a_pool_without_tls_gets_unrecognized_name(h):
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_connect(h, "plain.test", verify=False)
    assert raw_exchange(h, client_hello("plain.test")) == ALERT_UNRECOGNIZED_NAME
    counted(h, "tls_no_certificate")


def test_no_sni_without_a_default_pool_gets_unrecognized_name(h):
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls_connect(h, None, verify=False)
    counted(h, "tls_no_sni")
    assert raw_exchange(h, client_hello("nobody.test")) == ALERT_UNRECOGNIZED_NAME
    counted(h, "tls_unknown_name")


def test_plain_http_on_the_tls_port_is_not_served(h):
    out = raw_exchange(h, b"GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n")
    assert out == b""                        # closed: no HTTP answer, no TLS record
    counted(h, "tls_not_tls")


def test_garbage_is_closed_and_counted(h):
    assert raw_exchange(h, b"\x16\x03\x01\x00\x05hello") == ALERT_DECODE_ERROR
    counted(h, "tls_malformed")
    assert raw_exchange(h, b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10") == b""
    counted(h, "tls_ssl2")


def test_dribbled_hello_is_closed_at_header_timeout(h):
    hello = client_hello("secure.test")
    s = socket.create_connection(("127.0.0.1", h.tls_port))
    t0 = time.monotonic()
    closed_at = None
    try:
        for b in hello:
            s.send(bytes([b]))
            s.settimeout(1.0)
            try:
                if s.recv(100) == b"":
                    closed_at = time.monotonic() - t0
                    break
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed_at = time.monotonic() - t0
                break
            if time.monotonic() - t0 > HEADER_TIMEOUT + 5:
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_at = time.monotonic() - t0
    finally:
        s.close()
    assert closed_at is not None and abs(closed_at - HEADER_TIMEOUT) <= 1.0, closed_at
    counted(h, "tls_hello_timeout")


def test_partial_hello_does_not_make_the_front_end_spin(h):
    """The peeked bytes stay readable: a level-triggered wait would wake the front end
    at once, again and again, until header_timeout."""
    pids = frontend_pids(h)
    s = socket.create_connection(("127.0.0.1", h.tls_port))
    try:
        s.sendall(client_hello("secure.test")[:40])
        time.sleep(0.2)
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(2.0)                      # within header_timeout: still pending
        used = sum(cpu_seconds(p) for p in pids) - before
    finally:
        s.close()
    assert used < 0.2, f"front ends used {used:.2f} s of CPU in 2 s with a hello pending"


# --- redirect_http ------------------------------------------------------------------------

def test_redirect_http_answers_308_from_the_front_end(h):
    status, headers, body = h.get("secure.test", "/x?y=1")
    assert status == 308 and body == b""
    assert headers["location"] == f"https://secure.test:{h.tls_port}/x?y=1"
    status, headers, _ = h.get(f"r443.test:{h.port}", "/x?y=1")
    assert status == 308 and headers["location"] == "https://r443.test/x?y=1"
    assert h.get("plain.test", "/")[0] == 200
    # no worker was started for the redirect pools
    assert h.pool("r443")["workers"] == []


# --- tls_default_pool -----------------------------------------------------------------------

def test_tls_default_pool_takes_no_sni_and_unbound_names(tmp_path, ca):
    leaf = ca.issue("secure.test")
    h = start(tmp_path, ca, lambda _port: {"secure": pool(["secure.test"], leaf),
                                           "plain": pool(["plain.test"])},
              tls_default_pool="secure")
    try:
        for sni in (None, "nobody.test"):
            with tls_connect(h, sni, verify=False) as s:
                assert get(s, "secure.test").startswith(b"HTTP/1.1 200 ")
        # a name bound to a pool without [tls] is not the default's
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            tls_connect(h, "plain.test", verify=False)
    finally:
        h.stop()


# --- what idle connections cost -------------------------------------------------------------

def frontend_memory(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key] = int(rest.split()[0])
    return out


def open_idle(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    return socks


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_tls_connections_cost_no_more_than_plain_ones(tmp_path, ca):
    """1,000 connections that never send a byte, on the TLS port then on the plain
    one: once the front end holds them (after TCP_DEFER_ACCEPT), the TLS ones cost it
    no more memory. Plain is measured second, on memory the TLS ones freed, which
    favours plain."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    leaf = ca.issue("secure.test")
    h = start(tmp_path, ca, lambda _port: {"secure": pool(["secure.test"], leaf)},
              header_timeout=120, frontends=1)
    n = 1000
    try:
        (pid,) = frontend_pids(h)
        time.sleep(0.5)
        base_fds, base = fd_count(pid), frontend_memory(pid)
        measured = {}
        for kind, port in (("tls", h.tls_port), ("plain", h.port)):
            socks = open_idle(port, n)
            try:
                h.wait_for(lambda: fd_count(pid) >= base_fds + n, timeout=40, interval=0.5,
                           what=f"the front end to accept {n} idle {kind} connections")
                time.sleep(0.5)
                measured[kind] = frontend_memory(pid)
            finally:
                for s in socks:
                    s.close()
            h.wait_for(lambda: fd_count(pid) <= base_fds + 5, timeout=20, interval=0.2,
                       what=f"the front end to drop the {kind} connections")
        tls = {k: measured["tls"][k] - base[k] for k in base}
        plain = {k: measured["plain"][k] - base[k] for k in base}
        # noise: a few pages of the allocator's arenas
        assert tls["Pss"] <= plain["Pss"] + 256 and tls["Rss"] <= plain["Rss"] + 256, \
            f"KiB over the idle front end: TLS {tls}, plain {plain}"
    finally:
        h.stop()
