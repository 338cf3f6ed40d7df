"""One real worker process terminating TLS (workers/tls.py, TLSConnection), fed by the
test harness's front end, which hands connections over with nothing read as hostd's
front end does on a TLS listener. Clients: Python's ssl over real TCP, and curl. What
the whole hostd does (SNI routing in the front end, two pools, reload, isolation) is
tests/integration/test_tls.py."""
from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import WorkerHarness, read_response  # noqa: E402

from hostd import protocol  # noqa: E402
from tlscerts import CA  # noqa: E402

ROUTES = [["alpha", "a.test"], ["alpha", "www.a.test"], ["beta", "b.test"]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca = CA(tmp_path_factory.mktemp("wtls"))
    return ca, ca.issue("a.test", "www.a.test", "b.test")


def tls_spec(leaf, min_version="1.2"):
    return {"pairs": [[str(leaf.cert), str(leaf.key)]], "names": [list(leaf.names)],
            "min_version": min_version}


@pytest.fixture
def worker(certs):
    ca, leaf = certs
    h = WorkerHarness("worker_basic:app", routes=ROUTES, tls=tls_spec(leaf),
                      header_timeout=2.0)
    h.start()
    yield h
    h.close()


def client(h, ca, name="a.test", **kw):
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx.wrap_socket(h.connect(), server_hostname=name)


def get(s, path="/", host="a.test", extra=b""):
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode() + extra + b"\r\n")
    return read_response(s)


def tls_counts(h) -> dict:
    return h.board.read_tls()


def wait(pred, timeout=5.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_keep_alive_100_requests_and_the_https_environ(worker, certs):
    ca, _ = certs
    s = client(worker, ca)
    assert s.selected_alpn_protocol() is None        # we offered none: nothing chosen
    for _ in range(100):
        status, headers, body = get(s)
        assert (status, body) == (200, b"Hello, world!")
    status, _, body = get(s, "/env")
    env = json.loads(body)
    assert env["wsgi.url_scheme"] == "https" and env["HTTPS"] == "on"
    assert env["SERVER_PORT"] == str(worker.port)
    s.close()
    wait(lambda: tls_counts(worker)["handshakes"] == 1, what="the handshake counted")
    c = tls_counts(worker)
    assert c["tls1_3"] + c["tls1_2"] == 1


def test_alpn_offers_only_http11(worker, certs):
    ca, _ = certs
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    s = ctx.wrap_socket(worker.connect(), server_hostname="a.test")
    assert s.selected_alpn_protocol() == "http/1.1"
    assert get(s)[0] == 200
    s.close()


def test_pipelined_requests_in_one_record(worker, certs):
    ca, _ = certs
    s = client(worker, ca)
    s.sendall(b"".join(f"GET /env?{i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
                       for i in range(20)))
    for i in range(20):
        status, _, body = read_response(s)
        assert status == 200 and json.loads(body)["QUERY_STRING"] == str(i)
    s.close()


def test_a_10_mib_upload_with_100_continue_and_a_chunked_echo(worker, certs):
    ca, _ = certs
    s = client(worker, ca)
    body = os.urandom(10 << 20)
    s.sendall(b"POST /sha HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode())
    status, _, _ = read_response(s)
    assert status == 100
    s.sendall(body)
    status, _, got = read_response(s)
    assert got.decode() == f"{hashlib.sha256(body).hexdigest()} {len(body)}"
    # chunked both ways: a chunked upload, echoed back chunked
    small = os.urandom(300_000)
    chunks = b"".join(b"%x\r\n" % len(small[i:i + 70000]) + small[i:i + 70000] + b"\r\n"
                      for i in range(0, len(small), 70000)) + b"0\r\n\r\n"
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
              + chunks)
    status, headers, got = read_response(s)
    assert headers.get("transfer-encoding") == "chunked" and got == small
    s.close()


def test_streamed_and_file_wrapper_responses(worker, certs):
    ca, _ = certs
    s = client(worker, ca)
    status, headers, body = get(s, "/chunked")
    assert body == b"".join(f"part {i}\n".encode() for i in range(5))
    size = 3_000_001
    status, headers, body = get(s, "/file", extra=b"")
    status, headers, body = get(s, f"/file?{size}")
    assert status == 200 and len(body) == size
    assert body[:512] == bytes(range(256)) * 2 and body.endswith(b"x" * (size % 256))
    assert get(s)[2] == b"Hello, world!"       # still in step after the file
    s.close()


def test_curl_with_the_test_ca(worker, certs):
    ca, _ = certs
    out = subprocess.run(
        ["curl", "-sS", "--cacert", str(ca.cert), "--resolve", f"a.test:{worker.port}:127.0.0.1",
         f"https://a.test:{worker.port}/", f"https://a.test:{worker.port}/chunked",
         "-w", "\n%{http_code} %{scheme} %{http_version}\n"],
        capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert "Hello, world!" in out.stdout and "part 4" in out.stdout
    assert out.stdout.count("200 HTTPS 1.1") == 2


def test_a_host_of_another_pool_gets_421_never_a_reroute(worker, certs):
    ca, _ = certs
    s = client(worker, ca, name="b.test")      # the certificate covers b.test too
    status, headers, body = get(s, host="b.test")
    assert status == 421 and headers.get("connection") == "close"
    assert worker.reroute_recv(timeout=0.5) is None
    s = client(worker, ca)
    assert get(s)[0] == 200
    status, _, _ = get(s, host="nobody.test")
    assert status == 421
    wait(lambda: tls_counts(worker)["misdirected"] == 2, what="two 421s counted")


def test_a_stalled_handshake_is_closed_at_header_timeout(worker):
    raw = worker.connect()
    t0 = time.monotonic()
    raw.sendall(b"\x16\x03\x01")            # a hello that never completes
    raw.settimeout(10)
    assert raw.recv(100) == b""
    took = time.monotonic() - t0
    assert 1.5 <= took <= 3.5, took          # header_timeout = 2 s, swept every 0.5 s
    wait(lambda: tls_counts(worker)["failed_timeout"] == 1, what="a timeout counted")


def test_plain_http_on_the_tls_port_gets_no_http_answer(worker):
    raw = worker.connect()
    raw.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    raw.settimeout(5)
    data = b""
    try:
        while True:
            d = raw.recv(4096)
            if not d:
                break
            data += d
    except ConnectionResetError:
        pass
    assert b"HTTP/1.1" not in data
    wait(lambda: tls_counts(worker)["failed_protocol"] + tls_counts(worker)["failed_version"] >= 1,
         what="a failed handshake counted")


def test_tls_1_3_minimum_refuses_a_1_2_client(certs):
    ca, leaf = certs
    with WorkerHarness("worker_basic:app", routes=ROUTES, tls=tls_spec(leaf, "1.3")) as h:
        with pytest.raises(ssl.SSLError):
            client(h, ca, maximum_version=ssl.TLSVersion.TLSv1_2)
        s = client(h, ca)
        assert s.version() == "TLSv1.3" and get(s)[0] == 200
        wait(lambda: h.board.read_tls()["failed_version"] == 1, what="a version failure")


def test_threads_serve_tls_with_the_handshake_on_the_loop(certs):
    ca, leaf = certs
    with WorkerHarness("worker_basic:app", routes=ROUTES, tls=tls_spec(leaf), threads=4) as h:
        results = []

        def one():
            s = client(h, ca)
            results.append([get(s, "/slow", extra=b"")[0] for _ in range(2)]
                           + [get(s)[2]])
            s.close()
        ts = [threading.Thread(target=one) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(20)
        assert results == [[200, 200, b"Hello, world!"]] * 4


def test_a_recycled_worker_keeps_serving_its_open_tls_connection(certs):
    """DRAIN for a recycle: the open connection keeps working (its certificate and its
    worker), while new ones would go to the replacement; near shutdown_limit it is told
    Connection: close and then closed."""
    ca, leaf = certs
    with WorkerHarness("worker_basic:app", routes=ROUTES, tls=tls_spec(leaf),
                       health={"shutdown_limit": 12.0}) as h:
        s = client(h, ca)
        assert get(s)[0] == 200
        t0 = time.monotonic()
        h.ctl_send({"t": protocol.DRAIN, "reason": "config changed"})
        time.sleep(1.0)
        for _ in range(5):
            status, headers, _ = get(s)
            assert status == 200 and headers.get("connection") != "close"
        # shutdown_limit 12 - 5: from 5 s to 7 s responses say close, idle ones are closed
        s.settimeout(8)
        assert s.recv(100) == b""                # closed while idle (close_notify)
        took = time.monotonic() - t0
        assert 4.5 <= took <= 7.5, took
        assert h.wait_exit(5) == 0


def test_hostd_stopping_gives_tls_connections_a_short_grace(certs):
    ca, leaf = certs
    with WorkerHarness("worker_basic:app", routes=ROUTES, tls=tls_spec(leaf)) as h:
        s = client(h, ca)
        assert get(s)[0] == 200
        t0 = time.monotonic()
        h.ctl_send({"t": protocol.DRAIN, "reason": protocol.DrainReason.HOSTD_STOPPING})
        time.sleep(0.2)                         # (the control thread passes it on)
        status, headers, _ = get(s)
        assert status == 200 and headers.get("connection") == "close"
        assert h.wait_exit(5) == 0
        assert time.monotonic() - t0 < 3.5
