"""workers/tls.py: the pool's server context and TLSSocket, the TLS session a worker runs
over a non-blocking socket, against Python's own ssl client over a real TCP socket on
loopback (no hostd processes: what the worker's loop does with it is
tests/integration/test_tls.py)."""
from __future__ import annotations

import select
import socket
import ssl
import threading

import pytest

from tlscerts import CA
from workers import tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    ca = CA(root)
    return ca, ca.issue("a.test", "*.a.test"), ca.issue("b.test")


def spec(*leaves, min_version="1.2"):
    return {"pairs": [[str(l.cert), str(l.key)] for l in leaves],
            "names": [list(l.names) for l in leaves], "min_version": min_version}


def client_ctx(ca, **kw):
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def pair():
    """A connected (server side non-blocking, client side) pair of TCP sockets."""
    lst = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(lst.getsockname())
    s, _ = lst.accept()
    lst.close()
    s.setblocking(False)
    return s, c


def serve_handshake(ts, timeout=5.0):
    """Drives ts.handshake() as the worker's loop would: on readability only."""
    p = select.poll()
    p.register(ts.fd, select.POLLIN)
    while True:
        if not p.poll(timeout * 1000):
            raise TimeoutError("handshake stalled")
        if ts.handshake():
            return


def recv_all(ts, n, timeout=5.0):
    got = b""
    p = select.poll()
    p.register(ts.fd, select.POLLIN)
    while len(got) < n:
        try:
            data = ts.recv(65536)
        except BlockingIOError:
            if not p.poll(timeout * 1000):
                raise TimeoutError(f"have {len(got)} of {n}")
            continue
        if not data:
            break
        got += data
    return got


def connect(certs, name, ctx=None, **spec_kw):
    ca, a, b = certs
    server, client = pair()
    ts = tls.TLSSocket(server, tls.make_context(spec(a, b, **spec_kw)), send_timeout=5.0)
    ctx = ctx or client_ctx(ca)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    out = {}

    def run():
        try:
            out["c"] = ctx.wrap_socket(client, server_hostname=name)
        except Exception as exc:   # noqa: BLE001 - reported to the test
            out["err"] = exc
    t = threading.Thread(target=run)
    t.start()
    return ts, t, out


def test_sni_picks_the_pair_whose_names_match(certs):
    for name, want in (("a.test", "a.test"), ("www.a.test", "a.test"), ("b.test", "b.test")):
        ts, t, out = connect(certs, name)
        serve_handshake(ts)
        t.join(5)
        c = out["c"]
        assert c.getpeercert()["subject"][0][0][1] == want
        assert c.selected_alpn_protocol() == "http/1.1"     # never h2
        assert ts.version() in ("TLSv1.3", "TLSv1.2")
        c.close()
        ts.close()


def test_an_unknown_name_gets_the_first_pair_and_fails_verification(certs):
    ts, t, out = connect(certs, "c.test")
    with pytest.raises((ssl.SSLError, ConnectionError, TimeoutError)):
        serve_handshake(ts, timeout=2)
    t.join(5)
    assert isinstance(out.get("err"), ssl.SSLCertVerificationError)
    ts.close()


def test_plaintext_both_ways_pipelined_and_large(certs):
    ts, t, out = connect(certs, "a.test")
    serve_handshake(ts)
    t.join(5)
    c = out["c"]
    c.sendall(b"GET / HTTP/1.1\r\n\r\n" * 50)
    assert recv_all(ts, 50 * 18) == b"GET / HTTP/1.1\r\n\r\n" * 50
    big = bytes(range(256)) * 40000        # 10 MB, read by a thread meanwhile
    got = bytearray()

    def reader():
        while len(got) < len(big):
            d = c.recv(1 << 20)
            if not d:
                return
            got.extend(d)
    r = threading.Thread(target=reader)
    r.start()
    assert ts.send(big) == len(big)
    assert ts.sendmsg([b"head", b"x" * 300000]) == 300004
    r.join(20)
    assert bytes(got[:len(big)]) == big
    ts.close()
    c.close()


def test_close_notify_reads_as_eof(certs):
    ts, t, out = connect(certs, "a.test")
    serve_handshake(ts)
    t.join(5)
    c = out["c"]
    c.sendall(b"last")
    u = threading.Thread(target=c.unwrap)    # waits for our close_notify
    u.start()
    assert recv_all(ts, 100) == b"last"      # then b"": the client's close_notify
    ts.close()                               # ours
    u.join(5)
    assert not u.is_alive()
    c.close()


def test_tls_1_3_only_refuses_a_1_2_client_as_a_version_failure(certs):
    ca = certs[0]
    ctx = client_ctx(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    ts, t, out = connect(certs, "a.test", ctx=ctx, min_version="1.3")
    with pytest.raises(ssl.SSLError) as err:
        serve_handshake(ts)
    t.join(5)
    assert tls.failure_field(err.value) == tls.F_VERSION
    assert isinstance(out.get("err"), ssl.SSLError)
    ts.close()


def test_a_client_hanging_up_mid_handshake_is_a_closed_failure(certs):
    ca, a, b = certs
    server, client = pair()
    ts = tls.TLSSocket(server, tls.make_context(spec(a)), send_timeout=5.0)
    client.sendall(b"\x16\x03\x01\x00\x05\x01\x00")   # a truncated ClientHello
    client.close()
    with pytest.raises(Exception) as err:
        serve_handshake(ts)
    assert tls.failure_field(err.value) == tls.F_CLOSED
    ts.close()


def test_a_bad_pair_names_the_file_and_the_reason(certs, tmp_path):
    ca, a, b = certs
    with pytest.raises(tls.TLSLoadError, match="does not match"):
        tls.make_context({"pairs": [[str(a.cert), str(b.key)]]})
    with pytest.raises(tls.TLSLoadError, match="nope.key"):
        tls.make_context({"pairs": [[str(a.cert), str(tmp_path / "nope.key")]]})
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    with pytest.raises(tls.TLSLoadError, match="garbage.crt"):
        tls.make_context({"pairs": [[str(garbage), str(a.key)]]})


@pytest.mark.parametrize("name,pattern,ok", [
    ("a.test", "a.test", True), ("www.a.test", "*.a.test", True),
    ("a.test", "*.a.test", False), ("x.www.a.test", "*.a.test", False),
    ("b.test", "a.test", False)])
def test_wildcards_stand_for_one_label(name, pattern, ok):
    assert tls._matches(name, pattern) is ok
