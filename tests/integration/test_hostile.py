"""Hostile clients against a real hostd: smuggling, limits, slow readers, slowloris,
max_connections, max_bandwidth (the HTTP.sys guard issue's acceptance)."""
from __future__ import annotations

import concurrent.futures
import os
import re
import selectors
import socket
import threading
import time

import pytest

from hostd_harness import APPS, Hostd

HOST = b"h.test"


def _pool(**kw):
    doc = {"app": "hostile_app:application", "directory": str(APPS), "bindings": ["*"],
           "start_mode": "always_running"}
    doc.update(kw)
    return doc


@pytest.fixture(scope="module")
def hostd(tmp_path_factory):
    h = Hostd(tmp_path_factory.mktemp("hostile"), {"h": _pool(max_body_size="1M")},
              hostd={"header_timeout": "2s", "send_timeout": "2s", "frontends": 1})
    h.start()
    h.wait_for(lambda: h.get("h.test")[0] == 200, what="pool up")
    yield h
    h.stop()


def _exchange(h, data: bytes, timeout: float = 5.0) -> bytes:
    return h.raw(data, timeout=timeout)


def _statuses(out: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", out)]


SECOND = b"GET /second HTTP/1.1\r\nHost: h.test\r\n\r\n"

SMUGGLING = {
    "cl_te": b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 6\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SECOND,
    "te_cl": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n"
             b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n" + SECOND,
    "te_te_dup": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SECOND,
    "te_space_colon": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding : chunked\r\n"
                      b"Content-Length: 3\r\n\r\nabc" + SECOND,
    "te_xchunked": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: xchunked\r\n\r\n"
                   b"0\r\n\r\n" + SECOND,
    "te_chunked_not_last": b"POST / HTTP/1.1\r\nHost: h.test\r\n"
                           b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SECOND,
    "te_gzip_chunked": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: gzip, chunked"
                       b"\r\n\r\n0\r\n\r\n" + SECOND,
    "te_obsfold": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding:\r\n chunked\r\n"
                  b"Content-Length: 3\r\n\r\nabc" + SECOND,
    "te_vtab": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding:\x0bchunked\r\n\r\n"
               b"0\r\n\r\n" + SECOND,
    "te_http10": b"POST / HTTP/1.0\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n" + SECOND,
    "cl_cl_differ": b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3\r\n"
                    b"Content-Length: 40\r\n\r\nabc" + SECOND,
    "cl_cl_same": b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3\r\n"
                  b"Content-Length: 3\r\n\r\nabc" + SECOND,
    "cl_list": b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: 3, 3\r\n\r\nabc" + SECOND,
    "cl_plus": b"POST / HTTP/1.1\r\nHost: h.test\r\nContent-Length: +3\r\n\r\nabc" + SECOND,
    "bare_lf": b"POST / HTTP/1.1\nHost: h.test\nContent-Length: 3\n\nabc" + SECOND,
    "bare_lf_header": b"POST / HTTP/1.1\r\nHost: h.test\nContent-Length: 3\r\n\r\nabc" + SECOND,
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nabc\r\n0\r\n\r\n" + SECOND,
    "chunk_size_lf": b"POST / HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\nabc\n0\n\n" + SECOND,
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: h.test\r\nX: a\x00b\r\n\r\n" + SECOND,
    "cr_in_value": b"GET / HTTP/1.1\r\nHost: h.test\r\nX: a\rb\r\n\r\n" + SECOND,
    "obs_fold": b"GET / HTTP/1.1\r\nHost: h.test\r\nX: a\r\n b\r\n\r\n" + SECOND,
    "two_hosts": b"GET / HTTP/1.1\r\nHost: h.test\r\nHost: evil.test\r\n\r\n" + SECOND,
}


#: variants answered with another refusal than 400: `gzip, chunked` is framed (chunked is
#: last) but uses a coding hostd does not implement, 501 (RFC 9112 §6.1; issue 13)
NOT_400 = {"te_gzip_chunked": 501}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_variant_gets_400_and_nothing_else(hostd, name):
    out = _exchange(hostd, SMUGGLING[name])
    assert _statuses(out) == [NOT_400.get(name, 400)], (name, out[:300])


@pytest.mark.parametrize("name", ["cl_te", "te_cl", "te_te_dup", "cl_cl_differ", "bare_lf_header",
                                  "te_http10", "two_hosts", "te_gzip_chunked"])
def test_smuggling_behind_a_kept_alive_request_gets_400_from_the_worker(hostd, name):
    """The same rules hold in the worker: the first request is fine, the second is not."""
    first = b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n"
    out = _exchange(hostd, first + SMUGGLING[name])
    assert _statuses(out) == [200, NOT_400.get(name, 400)], (name, out[-300:])


def test_bad_chunk_in_a_body_gets_400(hostd):
    out = _exchange(hostd, b"POST /echo HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\n3\r\nabc\r\nq\r\n\r\n" + SECOND)
    assert _statuses(out) == [400], out


def test_size_limits(hostd):
    out = _exchange(hostd, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h.test\r\n\r\n")
    assert _statuses(out) == [414]
    out = _exchange(hostd, b"GET / HTTP/1.1\r\nHost: h.test\r\n" + b"X-A: b\r\n" * 3000 + b"\r\n")
    assert _statuses(out) == [431]
    out = _exchange(hostd, b"POST /echo HTTP/1.1\r\nHost: h.test\r\nContent-Length: 2000000\r\n\r\n")
    assert _statuses(out) == [413]
    # chunked past the pool's max_body_size (1M): the worker answers 413
    chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
    with socket.create_connection(("127.0.0.1", hostd.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(20):
                s.sendall(chunk)
        except OSError:
            pass
        out = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                out += d
        except OSError:
            pass
    assert _statuses(out) == [413], out[:200]
    # a body within the limit still works
    status, _h, body = hostd.request("h.test", "/echo", method="POST", body=b"z" * 1000)
    assert (status, body) == (200, b"z" * 1000)


def test_http2_preface_is_closed_at_once(hostd):
    t0 = time.monotonic()
    out = _exchange(hostd, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", timeout=5)
    assert out == b"" and time.monotonic() - t0 < 1.0


def test_header_timeout_408(hostd):
    with socket.create_connection(("127.0.0.1", hostd.port), timeout=6) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: h")
        t0 = time.monotonic()
        out = s.recv(4096)
        took = time.monotonic() - t0
    assert out.startswith(b"HTTP/1.1 408") and 1.0 <= took <= 3.2, (out[:40], took)


def test_slow_reader_is_cut_at_send_timeout_and_the_thread_is_free(hostd):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", hostd.port))
    s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: h.test\r\n\r\n" % (50 << 20))
    time.sleep(1.0)
    # the pool has one worker with one thread: it is stuck sending until send_timeout
    t0 = time.monotonic()
    status, _h, body = hostd.request("h.test", "/", timeout=10)
    took = time.monotonic() - t0
    assert (status, body) == (200, b"ok")
    assert took < 3.5, took
    s.setblocking(False)
    got = 0
    try:
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            got += len(d)
    except (BlockingIOError, ConnectionResetError):
        pass
    s.close()
    assert got < 50 << 20


def test_fragmented_head_is_fine(hostd):
    with socket.create_connection(("127.0.0.1", hostd.port), timeout=5) as s:
        for b in b"GET / HTTP/1.1\r\nHost: h.test\r\nConnection: close\r\n\r\n":
            s.send(bytes([b]))
        out = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            out += d
    assert _statuses(out) == [200]


# --- slowloris ------------------------------------------------------------------------
def _fe_usage(h) -> tuple[int, int]:
    pids = [f["pid"] for f in h.status()["frontends"]]
    rss = fds = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            rss += next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
        fds += len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def _latencies(h, clients: int, seconds: float) -> list[float]:
    out: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client():
        c = h.connect(timeout=10)
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            c.request("GET", "/", headers={"Host": "h.test"})
            r = c.getresponse()
            r.read()
            mine.append(time.perf_counter() - t0)
            time.sleep(0.005)
        c.close()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _p99(xs):
    xs = sorted(xs)
    return xs[int(len(xs) * 0.99) - 1]


def test_slowloris(hostd):
    h = hostd
    base_rss, base_fds = _fe_usage(h)
    baseline = _p99(_latencies(h, 20, 2.0))
    n = 1000
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", h.port))
        socks.append(s)
    opened = time.monotonic()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    start: dict = {}
    closed_after: list[float] = []
    result: dict = {}

    def attack():
        head = b"GET / HTTP/1.1\r\nHost: h.test\r\nX-Slow: " + b"a" * 100
        pos = {s: 0 for s in socks}
        next_send = time.monotonic()
        deadline = time.monotonic() + 8
        alive = set(socks)
        while alive and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_send:
                for s in list(alive):
                    try:
                        s.send(head[pos[s]:pos[s] + 1])
                        start.setdefault(s, now)
                        pos[s] += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        pass
                next_send = now + 2.0
            for key, _ev in sel.select(0.05):
                s = key.fileobj
                if key.events == selectors.EVENT_WRITE:
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                try:
                    d = s.recv(4096)
                except OSError:
                    d = b""
                if not d or b"408" in d:
                    closed_after.append(time.monotonic() - start.get(s, opened))
                    sel.unregister(s)
                    alive.discard(s)
        result["alive"] = len(alive)

    t = threading.Thread(target=attack)
    t.start()
    time.sleep(0.5)
    during = _latencies(h, 20, 1.0)
    t.join()
    for s in socks:
        s.close()
    sel.close()
    assert result["alive"] == 0, result
    assert len(closed_after) == n
    # header_timeout is 2 s: every slow connection is closed at 2 s ± 1 s
    assert min(closed_after) >= 1.0 and max(closed_after) <= 3.0, (min(closed_after), max(closed_after))
    p99 = _p99(during)
    # a front end stalled by the slow clients answers on their timescale (seconds);
    # the 100 ms floor keeps a busy CI machine's scheduling noise out of the verdict
    assert p99 < max(3 * baseline, 0.1), (baseline, p99)
    time.sleep(2.5)   # lingering closes end
    rss, fds = _fe_usage(h)
    assert fds <= base_fds + 2, (base_fds, fds)
    assert rss <= base_rss + 4096, (base_rss, rss)   # KiB


# --- max_connections and max_bandwidth ----------------------------------------------------
def test_max_connections_and_bandwidth(tmp_path):
    h = Hostd(tmp_path, {"h": _pool(threads=4, bindings=["h.test"]),
                         "bw": _pool(bindings=["bw.test"], max_bandwidth="4M")},
              hostd={"max_connections": 500, "frontends": 2})
    h.start()
    try:
        h.wait_for(lambda: h.get("h.test")[0] == 200 and h.get("bw.test")[0] == 200,
                   what="pools up")
        time.sleep(0.3)
        req = b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n"
        conns = []
        for _ in range(500):
            s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
            s.sendall(req)
            conns.append(s)
        for s in conns:
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        extra = socket.create_connection(("127.0.0.1", h.port), timeout=10)
        extra.sendall(req)
        assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        extra.close()
        for s in conns[:50]:   # the others keep being served
            s.sendall(req)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        for s in conns[:10]:
            s.close()
        time.sleep(0.5)
        assert h.get("h.test")[0] == 200   # a closed connection's slot came back
        for s in conns[10:]:
            s.close()

        # max_bandwidth = 4M: 20 MB take 5 s (within 10 %)
        with socket.create_connection(("127.0.0.1", h.port), timeout=30) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: bw.test\r\nConnection: close\r\n\r\n"
                      % (20 << 20))
            got = 0
            while True:
                d = s.recv(1 << 20)
                if not d:
                    break
                got += len(d)
            took = time.monotonic() - t0
        assert got > 20 << 20
        rate = (20 << 20) / took
        assert abs(rate - (4 << 20)) <= 0.1 * (4 << 20), rate
    finally:
        h.stop()


def test_kept_alive_head_trickled_in_gets_408_at_header_timeout(hostd):
    """After a first request, the next head sent one byte at a time: every byte used to
    reset the worker's idle clock, so the connection was held as long as the client
    kept trickling (no header_timeout on kept-alive heads). It gets 408 within
    header_timeout (2 s here) of its first byte, as a first head does at the front end."""
    with socket.create_connection(("127.0.0.1", hostd.port), timeout=8) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: h.test\r\n\r\n")
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:60]
        t0 = time.monotonic()
        s.setblocking(False)
        got = b""
        for byte in b"GET / HTTP/1.1\r\nHost: h.test\r\nX-Slow: " + b"a" * 40:
            try:
                s.send(bytes([byte]))
            except OSError:
                break
            try:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            except BlockingIOError:
                pass
            if got or time.monotonic() - t0 > 6:
                break
            time.sleep(0.1)
        s.settimeout(3)
        try:
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        took = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408") and 1.0 <= took <= 3.5, (got[:40], took)
