"""The worker runtime end to end: a real worker process behind the test harness (which
plays supervisor and front end), spoken to over real loopback TCP sockets."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import WorkerHarness, read_response  # noqa: E402

from hostd import protocol  # noqa: E402


@pytest.fixture
def worker():
    h = WorkerHarness("worker_basic:app")
    h.start()
    yield h
    h.close()


def _settled(h, key, value, timeout=2.0):
    """The scoreboard is written right after the response is sent: give it a moment."""
    deadline = time.monotonic() + timeout
    while h.scoreboard()[key] != value and time.monotonic() < deadline:
        time.sleep(0.01)
    return h.scoreboard()


def _get(h, path, method="GET", headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r, data


# --- basics -------------------------------------------------------------------------

def test_keepalive_100_requests_on_one_connection(worker):
    c = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    for _ in range(100):
        c.request("GET", "/")
        r = c.getresponse()
        assert r.status == 200
        assert r.read() == b"Hello, world!"
        assert r.getheader("Server") == "hostd"
        assert r.getheader("Date")
    c.close()
    assert worker.accepted == 1  # one handoff served all 100
    board = _settled(worker, "requests", 100)
    assert board["requests"] == 100
    assert board["pid"] == worker.pid


def test_three_pipelined_requests_in_one_write(worker):
    s = worker.connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
              b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n"
              b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    st1, _, b1 = read_response(s)
    st2, h2, b2 = read_response(s)
    st3, _, b3 = read_response(s)
    assert (st1, b1) == (200, b"Hello, world!")
    assert st2 == 200 and h2["transfer-encoding"] == "chunked"
    assert b2 == b"".join(f"part {i}\n".encode() for i in range(5))
    assert b3 == f"{hashlib.sha256(b'abc').hexdigest()} 3".encode()
    s.close()


def test_10mib_chunked_upload_echoed_with_same_sha256(worker):
    payload = os.urandom(10 * 1024 * 1024)

    def chunks():
        for i in range(0, len(payload), 70_000):
            yield payload[i:i + 70_000]

    c = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=30)
    c.request("POST", "/echo", body=chunks(), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    body = r.read()
    assert r.status == 200
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(payload).hexdigest()
    # streamed read of a chunked body, then the connection is still usable
    c.request("POST", "/sha", body=chunks(), encode_chunked=True,
              headers={"Transfer-Encoding": "chunked"})
    r = c.getresponse()
    assert r.read() == f"{hashlib.sha256(payload).hexdigest()} {len(payload)}".encode()
    c.request("GET", "/")
    assert c.getresponse().read() == b"Hello, world!"


def test_expect_100_continue(worker):
    s = worker.connect()
    s.sendall(b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
              b"Expect: 100-continue\r\n\r\n")
    interim = b""
    while b"\r\n\r\n" not in interim:
        interim += s.recv(100)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(b"hello")
    status, _, body = read_response(s)
    assert status == 200
    assert body == f"{hashlib.sha256(b'hello').hexdigest()} 5".encode()
    # a request whose app never reads the body: no 100, the connection is closed after
    s.sendall(b"POST /ignore-body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
              b"Expect: 100-continue\r\n\r\n")
    status, headers, body = read_response(s)
    assert (status, body) == (200, b"ignored")
    assert headers.get("connection") == "close"
    s.close()


def test_head(worker):
    s = worker.connect()
    for path in ("/", "/chunked", "/file?5000"):
        s.sendall(f"HEAD {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        status, headers, body = read_response(s, "HEAD")
        assert status == 200 and body == b""
    s.sendall(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, _ = read_response(s, "HEAD")
    assert headers["content-length"] == "13"
    status, _, body = read_response(s)
    assert body == b"Hello, world!"  # no stray body bytes after the HEAD response
    s.close()


def test_http10(worker):
    s = worker.connect()
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    status, headers, body = read_response(s)
    assert (status, body) == (200, b"Hello, world!")
    assert s.recv(10) == b""  # closed: 1.0 without keep-alive
    s.close()
    # keep-alive asked and Content-Length known: stays open
    s = worker.connect()
    s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = read_response(s)
    assert headers["connection"].lower() == "keep-alive"
    # no Content-Length: no chunking for 1.0, the end of the body is the close
    s.sendall(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, body = read_response(s)
    assert "transfer-encoding" not in headers
    assert body == b"".join(f"part {i}\n".encode() for i in range(5))
    s.close()


def test_chunked_response_and_write_callable(worker):
    r, body = _get(worker, "/chunked")
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert body == b"".join(f"part {i}\n".encode() for i in range(5))
    r, body = _get(worker, "/write")
    assert body == b"written and returned"
    r, body = _get(worker, "/list")
    assert body == b"abcdef"


def test_file_wrapper(worker):
    size = 3 * 1024 * 1024 + 17
    r, body = _get(worker, f"/file?{size}")
    assert r.status == 200
    assert int(r.getheader("Content-Length")) == size == len(body)
    expected = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    assert body == expected


def test_environ(worker):
    r, body = _get(worker, "/env?a=1&b=%20", headers={
        "X-Dup": "one", "X-Under_Score": "spoof", "Content-Type": "text/x"})
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "GET"
    assert env["SCRIPT_NAME"] == "" and env["PATH_INFO"] == "/env"
    assert env["QUERY_STRING"] == "a=1&b=%20"
    assert env["SERVER_PORT"] == str(worker.port)
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"].isdigit()
    assert env["CONTENT_TYPE"] == "text/x" and "HTTP_CONTENT_TYPE" not in env
    assert "CONTENT_LENGTH" not in env
    assert env["HTTP_X_DUP"] == "one"
    assert not any("UNDER" in k for k in env)
    assert env["wsgi.url_scheme"] == "http" and env["wsgi.multiprocess"] is True
    assert env["wsgi.multithread"] is False and env["wsgi.run_once"] is False
    assert env["hostd.pool"] == "alpha" and env["hostd.worker_pid"] == worker.pid
    # duplicate request headers are joined with ","
    s = worker.connect()
    s.sendall(b"GET /env HTTP/1.1\r\nHost: Example.COM:8080\r\nX-Dup: a\r\nX-Dup: b\r\n\r\n")
    _, _, body = read_response(s)
    env = json.loads(body)
    assert env["HTTP_X_DUP"] == "a,b"
    assert env["SERVER_NAME"] == "example.com"
    s.close()


def test_mount_prefix_sets_script_name():
    with WorkerHarness("worker_basic:app", routes=[["alpha", "/app"]]) as h:
        r, body = _get(h, "/app/env?x=1")
        env = json.loads(body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/env")
        r, body = _get(h, "/app")
        assert r.status == 200  # PATH_INFO "" -> the app's root
        r, body = _get(h, "/app/caf%C3%A9/../env")
        assert r.status == 404


def test_wsgi_errors_goes_to_the_log(worker):
    r, body = _get(worker, "/stderr")
    assert body == b"logged"
    time.sleep(0.1)
    assert "app_stderr" in worker.log() and "a line from the app" in worker.log()


def test_validator_wrapped_app_runs_clean():
    with WorkerHarness("worker_validated:app") as h:
        c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
        c.request("GET", "/x")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"valid: /x")
        body = b"first line\nsecond line\n" * 1000
        c.request("POST", "/p", body=body, headers={"Content-Type": "text/plain"})
        r = c.getresponse()
        assert (r.status, r.read()) == (200, body)
        c.request("GET", "/stream")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"one two three")
        c.close()
        time.sleep(0.2)
        log = h.log()
        assert "app_error" not in log and "Warning" not in log, log
        assert "AssertionError" not in log and "Traceback" not in log, log


# --- errors --------------------------------------------------------------------------

def test_bad_response_header_is_a_500_and_the_worker_keeps_serving(worker):
    c = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    for path in ("/badheader", "/badname"):
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 500
        assert b"never sent" not in r.read()
        assert r.getheader("Injected") is None
        c.request("GET", "/")
        assert c.getresponse().read() == b"Hello, world!"
    time.sleep(0.1)
    log = worker.log()
    assert "bad_response" in log and "POOL=alpha" in log and "X-Evil" in log


def test_app_exception_is_a_500(worker):
    c = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    c.request("GET", "/raise")
    r = c.getresponse()
    assert r.status == 500 and r.read() == b"Internal Server Error\n"
    c.request("GET", "/")
    assert c.getresponse().read() == b"Hello, world!"
    time.sleep(0.1)
    log = worker.log()
    assert "app_error" in log and "boom from the test app" in log and "POOL=alpha" in log
    # an exception after the headers went out: the connection is closed mid-body
    s = worker.connect()
    s.sendall(b"GET /raise-late HTTP/1.1\r\nHost: a\r\n\r\n")
    with pytest.raises(ConnectionError):
        read_response(s)
    s.close()
    assert _get(worker, "/")[1] == b"Hello, world!"


def test_parse_error_is_a_400_and_close(worker):
    s = worker.connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(s)[0] == 200
    s.sendall(b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n")
    status, headers, _ = read_response(s)
    assert status == 400 and headers["connection"] == "close"
    assert s.recv(10) == b""
    s.close()


def test_oversized_head_is_a_431():
    with WorkerHarness("worker_basic:app", max_header_bytes=1024) as h:
        s = h.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(s)[0] == 200
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 5000 + b"\r\n\r\n")
        assert read_response(s)[0] == 431
        s.close()


def test_unread_body_is_discarded_or_the_connection_closed(worker):
    s = worker.connect()
    s.sendall(b"POST /ignore-body HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
    s.sendall(b"z" * 1000)
    assert read_response(s)[2] == b"ignored"
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(s)[2] == b"Hello, world!"
    # more than 1 MiB left unread: close rather than read it all
    s.sendall(b"POST /ignore-body HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n\r\n")
    status, headers, body = read_response(s)
    assert body == b"ignored" and headers.get("connection") == "close"
    s.close()


def test_import_error_reports_startup_failed():
    h = WorkerHarness("worker_broken:app")
    try:
        h.start(wait_ready=False)
        msg = h.ctl_recv(timeout=20)
        assert msg is not None and msg["t"] == "startup_failed"
        assert "this_module_does_not_exist_hostd" in msg["error"]
        assert h.wait_exit(10) == protocol.EXIT_APP_LOAD
        assert "startup_failed" in h.log()
    finally:
        h.close()


# --- routing, reroute, drain -----------------------------------------------------------

ROUTES = [["alpha", "*"], ["beta", "beta.example"]]


def test_kept_alive_request_for_another_pool_goes_to_reroute():
    with WorkerHarness("worker_basic:app", routes=ROUTES) as h:
        s = h.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: alpha.example\r\n\r\n")
        assert read_response(s)[2] == b"Hello, world!"
        req = b"POST /x HTTP/1.1\r\nHost: beta.example\r\nContent-Length: 4\r\n\r\nbody"
        s.sendall(req)
        got = h.reroute_recv(timeout=5)
        assert got is not None
        data, passed = got
        # the bytes of that request (the body may still be in the kernel: the fd keeps it)
        rest = b""
        if len(data) < len(req):
            passed.settimeout(2)
            while len(data) + len(rest) < len(req):
                rest += passed.recv(100)
        assert data + rest == req
        # the passed descriptor really is the client's connection
        passed.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbeta")
        assert read_response(s)[2] == b"beta"
        passed.close()
        s.close()


def test_pipelined_request_for_another_pool_is_cut_at_its_start():
    """The second request's start offset is unknown to httptools; the worker recovers it."""
    with WorkerHarness("worker_basic:app", routes=ROUTES) as h:
        s = h.connect()
        first = b"POST /sha HTTP/1.1\r\nHost: alpha\r\nTransfer-Encoding: chunked\r\n\r\n" \
                b"3\r\nabc\r\n0\r\n\r\n"
        second = b"GET /b HTTP/1.1\r\nHost: beta.example\r\n\r\n"
        third = b"GET /c HTTP/1.1\r\nHost: alpha\r\n\r\n"
        s.sendall(first + second + third)
        status, _, body = read_response(s)
        assert status == 200 and body.endswith(b" 3")
        data, passed = h.reroute_recv(timeout=5)
        assert data == second + third
        passed.close()
        s.close()


def test_routes_update_takes_effect():
    with WorkerHarness("worker_basic:app", routes=ROUTES) as h:
        s = h.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: gamma\r\n\r\n")
        assert read_response(s)[0] == 200
        h.ctl_send({"t": "routes", "routes": [["alpha", "alpha"], ["gamma", "gamma"]]})
        h.ctl_send({"t": "ping", "seq": 7})
        pong = h.ctl_recv()
        assert (pong["t"], pong["seq"], pong["stuck"]) == ("pong", 7, False)
        # pings are answered by the control thread at once; the routes message is
        # applied by the loop thread, a moment later
        time.sleep(0.3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: gamma\r\n\r\n")
        data, passed = h.reroute_recv(timeout=5)
        assert data == b"GET / HTTP/1.1\r\nHost: gamma\r\n\r\n"
        passed.close()
        s.close()


def test_drain_hands_idle_connections_back_and_exits_0(worker):
    idle = worker.connect()
    idle.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(idle)[2] == b"Hello, world!"
    partial = worker.connect()
    partial.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(partial)[0] == 200
    partial.sendall(b"GET /next HTTP/1.1\r\nHo")  # half a head, read by the worker
    time.sleep(0.2)
    worker.ctl_send({"t": "drain"})
    got = [worker.reroute_recv(timeout=5) for _ in range(2)]
    assert all(g is not None for g in got)
    payloads = sorted(g[0] for g in got)
    assert payloads == [b"", b"GET /next HTTP/1.1\r\nHo"]
    for _, sock in got:
        sock.close()
    assert worker.wait_exit(10) == protocol.EXIT_OK
    idle.close()
    partial.close()


def test_drain_waits_for_the_request_in_flight():
    with WorkerHarness("worker_basic:app", threads=2) as h:
        s = h.connect()
        s.sendall(b"GET /slow?0.5 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.2)
        h.ctl_send({"t": "drain"})
        status, _, _ = read_response(s)
        assert status == 200
        data, passed = h.reroute_recv(timeout=5)  # kept alive: handed back, not closed
        assert data == b""
        passed.close()
        assert h.wait_exit(10) == protocol.EXIT_OK
        s.close()


def test_memory_fence_stops_taking_work_at_once_and_waits_for_the_drain_order(worker):
    # the supervisor hands each worker a descriptor the kernel signals when the worker's
    # cgroup passes its memory threshold (v1: an eventfd registered in
    # cgroup.event_control). There is no cgroup here, so the test plays the kernel on a
    # plain eventfd; test_recycling's leaking app covers the real one end to end.
    from kernel.fdpass import send_with_fds
    idle = worker.connect()
    idle.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(idle)[0] == 200
    fence = os.eventfd(0, os.EFD_CLOEXEC)
    send_with_fds(worker.ctl, protocol.encode({"t": "memory_fence"}), [fence])
    time.sleep(0.2)
    os.eventfd_write(fence, 1)
    assert worker.ctl_recv(timeout=5) == {"t": "memory_fence"}
    data, passed = worker.reroute_recv(timeout=5)    # the idle connection goes back
    assert data == b""
    passed.close()
    late = worker.connect()                          # queued: this worker must not take it
    late.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    late.settimeout(0.5)
    with pytest.raises(TimeoutError):
        late.recv(1)
    assert worker.wait_exit(0.3) is None             # held: its exit is the supervisor's call
    worker.ctl_send({"t": "drain"})
    assert worker.wait_exit(10) == protocol.EXIT_OK
    os.close(fence)
    idle.close()
    late.close()


def test_shed_hands_back_idle_connections_now_and_busy_ones_after_their_response(worker):
    idle = []
    for _ in range(3):
        c = worker.connect()
        c.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(c)[0] == 200
        idle.append(c)
    half = worker.connect()
    half.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(half)[0] == 200
    half.sendall(b"GET / HTTP/1.1\r\nHo")         # a head begun: not idle, stays
    time.sleep(0.2)
    worker.ctl_send({"t": "shed", "n": 5})
    got = [worker.reroute_recv(timeout=5) for _ in range(3)]
    assert [g[0] for g in got] == [b"", b"", b""]
    assert worker.reroute_recv(timeout=0.5) is None
    for _, sock in got:
        sock.close()
    half.sendall(b"st: a\r\n\r\n")                   # the worker still serves it,
    assert read_response(half)[0] == 200
    data, sock = worker.reroute_recv(timeout=5)     # then gives it back: 5 were asked
    assert data == b""
    sock.close()
    assert worker.wait_exit(0.2) is None            # shedding is not draining
    late = worker.connect()                         # and it keeps taking new work
    late.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(late)[0] == 200
    late.close()
    for c in idle + [half]:
        c.close()


def test_scoreboard_busy_counts_time_at_full_capacity():
    for threads in (1, 2):
        with WorkerHarness("worker_basic:app", threads=threads) as h:
            board = h.board
            time.sleep(0.3)
            assert board.busy(time.monotonic()) < 0.1      # idle: waiting in epoll
            socks = [h.connect() for _ in range(threads)]
            t0 = time.monotonic()
            for s in socks:
                s.sendall(b"GET /slow?0.6 HTTP/1.1\r\nHost: a\r\n\r\n")
            time.sleep(0.4)                                # read while still busy
            assert board.busy(time.monotonic()) >= 0.2, threads
            for s in socks:
                assert read_response(s)[0] == 200
            spent = board.busy(time.monotonic())
            assert 0.4 <= spent <= time.monotonic() - t0 + 0.05, (threads, spent)
            time.sleep(0.3)
            assert board.busy(time.monotonic()) - spent < 0.1, threads   # idle again
            for s in socks:
                s.close()


def test_sigterm_drains_and_control_eof_exits_supervisor_gone():
    with WorkerHarness("worker_basic:app") as h:
        os.kill(h.pid, signal.SIGTERM)
        assert h.wait_exit(10) == protocol.EXIT_OK
    with WorkerHarness("worker_basic:app") as h:
        s = h.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(s)
        h.ctl.close()
        h.ctl = None
        assert h.wait_exit(10) == protocol.EXIT_SUPERVISOR_GONE
        data, passed = h.reroute_recv(timeout=5)
        passed.close()
        s.close()


def test_sigint_is_ignored(worker):
    os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.2)
    assert _get(worker, "/")[1] == b"Hello, world!"


def test_idle_keepalive_connections_are_closed_after_the_timeout():
    with WorkerHarness("worker_basic:app", keepalive_timeout=0.5) as h:
        s = h.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(s)
        t0 = time.monotonic()
        s.settimeout(5)
        assert s.recv(10) == b""
        assert 0.3 < time.monotonic() - t0 < 2.0
        s.close()
        deadline = time.monotonic() + 2
        while h.scoreboard()["connections"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert h.scoreboard()["connections"] == 0


# --- concurrency, scoreboard, queue slots ------------------------------------------------

def test_four_threads_serve_four_slow_requests_concurrently():
    with WorkerHarness("worker_basic:app", threads=4) as h:
        results = []

        def one():
            r, body = _get(h, "/slow?0.6")
            results.append(tuple(map(float, body.split())))

        t0 = time.monotonic()
        ts = [threading.Thread(target=one) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        elapsed = time.monotonic() - t0
        assert len(results) == 4
        assert elapsed < 1.5, elapsed
        starts = [a for a, b in results]
        ends = [b for a, b in results]
        assert max(starts) < min(ends)  # all four were running at the same moment
        env = json.loads(_get(h, "/env")[1])
        assert env["wsgi.multithread"] is True
        assert _settled(h, "requests", 5)["requests"] == 5


def test_threaded_worker_keepalive_and_pipelining():
    with WorkerHarness("worker_basic:app", threads=3) as h:
        c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
        for _ in range(50):
            c.request("GET", "/")
            assert c.getresponse().read() == b"Hello, world!"
        s = h.connect()
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 5)
        for _ in range(5):
            assert read_response(s)[2] == b"Hello, world!"
        assert _settled(h, "requests", 55)["requests"] == 55


def test_scoreboard_counts(worker):
    conns = []
    for i in range(3):
        s = worker.connect()
        for _ in range(i + 1):
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            read_response(s)
        conns.append(s)
    _settled(worker, "requests", 6)
    board = _settled(worker, "active", 0)   # written just after the last response went out
    assert board["requests"] == 6
    assert board["connections"] == 3
    assert board["active"] == 0
    assert board["pid"] == worker.pid
    assert abs(board["last_activity"] - time.monotonic()) < 5
    for s in conns:
        s.close()


def test_semaphore_slots_are_released_on_dequeue():
    with WorkerHarness("worker_basic:app", queue_len=4) as h:
        assert h.sem_value() == 4
        for _ in range(10):
            r, body = _get(h, "/")
            assert body == b"Hello, world!"
        time.sleep(0.05)
        assert h.sem_value() == 4
        assert h.accepted == 10 and h.rejected == 0
        # a busy single-threaded worker leaves the next connection in the queue
        busy = h.connect()
        busy.sendall(b"GET /slow?1.0 HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.2)
        waiting = h.connect()
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.3)
        assert h.sem_value() == 3  # one slot held by the queued connection
        assert read_response(busy)[0] == 200
        assert read_response(waiting)[2] == b"Hello, world!"
        assert h.sem_value() == 4
        busy.close()
        waiting.close()


def test_input_readline_and_iteration(worker):
    body = b"one\ntwo\n\nthree without newline"
    r, data = _get(worker, "/lines", method="POST", body=body)
    assert json.loads(data) == ["one\n", "two\n", "\n", "three without newline"]
    # chunked, arriving in pieces
    s = worker.connect()
    s.sendall(b"POST /lines HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"4\r\nab\nc\r\n")
    time.sleep(0.1)
    s.sendall(b"3\r\nd\ne\r\n0\r\n\r\n")
    assert json.loads(read_response(s)[2]) == ["ab\n", "cd\n", "e"]
    s.close()


def test_responses_conform_to_h11(worker):
    """h11 (a strict HTTP/1.1 implementation) parses every response framing we produce."""
    h11 = pytest.importorskip("h11")
    s = worker.connect()
    conn = h11.Connection(h11.CLIENT)
    cases = [("GET", "/"), ("GET", "/chunked"), ("HEAD", "/chunked"), ("GET", "/write"),
             ("GET", "/file?70000"), ("GET", "/status204"), ("GET", "/raise"),
             ("GET", "/badheader"), ("HEAD", "/"), ("GET", "/list")]
    for method, path in cases:
        s.sendall(conn.send(h11.Request(method=method, target=path,
                                        headers=[("Host", "a")])))
        s.sendall(conn.send(h11.EndOfMessage()))
        status = None
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(s.recv(65536))
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
            if isinstance(ev, h11.EndOfMessage):
                break
        assert status is not None, path
        assert conn.our_state is h11.DONE and conn.their_state is h11.DONE, path
        conn.start_next_cycle()
    s.close()


def test_unknown_start_of_a_pipelined_request_for_another_pool_is_a_421():
    """Behind a body larger than the 256 KiB kept for rerouting, a pipelined request's
    start can't be recovered: 421 Misdirected Request, then close."""
    with WorkerHarness("worker_basic:app", routes=ROUTES) as h:
        s = h.connect()
        big = b"x" * 300_000
        s.sendall(b"POST /sha HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(big)
                  + big + b"GET / HTTP/1.1\r\nHost: beta.example\r\n\r\n")
        status, _, body = read_response(s)
        assert status == 200 and body.endswith(b" 300000")
        status, headers, _ = read_response(s)
        assert status == 421 and headers["connection"] == "close"
        assert h.reroute_recv(timeout=0.3) is None
        s.close()


def test_upgrade_request_is_served_then_closed(worker):
    s = worker.connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
              b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, headers, body = read_response(s)
    assert (status, body) == (200, b"Hello, world!")
    assert headers["connection"] == "close"
    assert s.recv(10) == b""
    s.close()
