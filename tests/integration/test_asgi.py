"""Issue 15 acceptance, HTTP side: real ASGI frameworks (FastAPI, Django) under a real hostd.

The frameworks come from a virtualenv of the tests' own (tests/frameworks.py: built once,
cached under .venv/hostd-frameworks/; without PyPI every test here is skipped with pip's
reason). One hostd serves the whole module, one pool per scenario:

* fa / fauto: tests/apps/asgi_fastapi.py with event_loop = "asyncio" / "auto" (uvloop is in
  the apps' venv, so auto must pick it);
* faiso: the same app in an isolated pool (its own uid, filesystem view): the venv must be
  importable by a pool's identity;
* life: the FastAPI app with a 1 s lifespan startup, for startup-before-first-request and
  shutdown-on-recycle (the app writes marker files, with pids and times, into a directory
  the test reads);
* dj: Django's get_asgi_application() (tests/apps/asgi_django/) bound to dj.test/dj;
* blk: the FastAPI app whose /block sleeps in the event loop, pinged each 1 s with a 2 s
  timeout; other (WSGI) and fa answer meanwhile;
* gard: the FastAPI app with processes = 2: one event loop saturated by keep-alive load
  (far below max_concurrency) grows the garden to its second worker;
* wsgi-on-asgi / asgi-on-wsgi: an app of one interface in a pool of the other (and the
  same with preload = true, where the pool's zygote checks it).

Pools other than faiso run unisolated (root_workers) so the app's os.getpid() is the host's
pid (compared with `hostctl status`) and its marker files land in the test's directory.
HTTP clients: curl where it is simplest, raw sockets where timing is measured.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from frameworks import frameworks  # noqa: F401  (the session fixture)
from hostd_harness import APPS, Hostd

pytestmark = pytest.mark.root


def asgi_pool(bindings, venv, app="asgi_fastapi:app", env=None, **kw):
    doc = {"app": app, "directory": str(APPS), "bindings": bindings, "interface": "asgi",
           "virtualenv": str(venv)}
    if env:
        doc["env"] = env
    doc.update(kw)
    return doc


@pytest.fixture(scope="module")
def h(frameworks, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("asgi")
    markers = root / "markers"
    markers.mkdir()
    venv = frameworks.venv
    menv = {"ASGI_MARKERS": str(markers)}
    health_fast = {"ping_interval": "1s", "ping_timeout": "2s", "shutdown_limit": "2s"}
    pools = {
        "fa": asgi_pool(["fa.test"], venv, env=menv, event_loop="asyncio"),
        "fauto": asgi_pool(["fauto.test"], venv, env=menv, event_loop="auto"),
        "faiso": asgi_pool(["faiso.test"], venv, isolation={"identity": "dynamic"}),
        "life": asgi_pool(["life.test"], venv, env={**menv, "STARTUP_DELAY": "1.0"},
                          health={"shutdown_limit": "5s"}),
        "dj": asgi_pool(["dj.test/dj"], venv, app="asgi_django.asgi:application",
                        env={"DJANGO_SETTINGS_MODULE": "asgi_django.settings"}),
        "blk": asgi_pool(["blk.test"], venv, start_mode="always_running", health=health_fast),
        "gard": asgi_pool(["gard.test"], venv, start_mode="always_running", processes=2),
        "other": {"app": "core_app:application", "directory": str(APPS),
                  "bindings": ["other.test"], "start_mode": "always_running"},
        "wsgi-on-asgi": {"app": "asgi_fastapi:app", "directory": str(APPS),
                         "bindings": ["wsgi-on-asgi.test"], "virtualenv": str(venv),
                         "interface": "wsgi", "start_mode": "always_running",
                         "health": {"rapid_fail_max_crashes": 2}},
        "asgi-on-wsgi": {"app": "core_app:application", "directory": str(APPS),
                         "bindings": ["asgi-on-wsgi.test"], "interface": "asgi",
                         "start_mode": "always_running",
                         "health": {"rapid_fail_max_crashes": 2}},
        # the same two with preload: the pool's zygote checks the app before forking
        "wsgi-on-asgi-pre": {"app": "asgi_fastapi:app", "directory": str(APPS),
                             "bindings": ["wsgi-on-asgi-pre.test"], "virtualenv": str(venv),
                             "interface": "wsgi", "start_mode": "always_running",
                             "preload": True, "health": {"rapid_fail_max_crashes": 2}},
        "asgi-on-wsgi-pre": {"app": "core_app:application", "directory": str(APPS),
                             "bindings": ["asgi-on-wsgi-pre.test"], "interface": "asgi",
                             "start_mode": "always_running", "preload": True,
                             "health": {"rapid_fail_max_crashes": 2}},
    }
    hd = Hostd(root, pools, root_workers=True, hostd={"header_timeout": 5})
    hd.markers = markers
    hd.start()
    yield hd
    hd.stop()


# --- helpers -------------------------------------------------------------------------------
def curl(h: Hostd, host: str, path: str, *args: str, timeout: float = 20.0):
    """(status, body bytes) of one curl request to hostd with this Host."""
    run = subprocess.run(["curl", "-sS", "--max-time", str(timeout), "-H", f"Host: {host}",
                          "-o", "-", "-w", "\n%{http_code}", *args,
                          f"http://127.0.0.1:{h.port}{path}"],
                         capture_output=True, timeout=timeout + 5)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    body, _, code = run.stdout.rpartition(b"\n")
    return int(code), body


def get_json(h: Hostd, host: str, path: str, **kw):
    status, _, body = h.get(host, path, **kw)
    assert status == 200, (status, body[:500])
    return json.loads(body)


def ready_pids(h: Hostd, name: str) -> set[int]:
    return {w["pid"] for w in h.pool(name)["workers"] if w["state"] == "ready"}


def log_lines(h: Hostd, event: str, pool: str) -> list[str]:
    return [ln for ln in h.log().splitlines()
            if re.match(rf"<\d>{event} ", ln) and re.search(rf"\bPOOL={re.escape(pool)}\b", ln)]


def marker(h: Hostd, name: str, timeout: float = 10.0) -> dict:
    path = h.markers / name
    h.wait_for(path.is_file, timeout=timeout, what=f"marker {name}")
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


# --- FastAPI ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pool_name, loop_module", [("fa", "asyncio"), ("fauto", "uvloop")])
def test_fastapi_json_post_validation_error_and_event_loop(h, pool_name, loop_module):
    host = f"{pool_name}.test"
    item = {"name": "widget", "price": 2.5, "quantity": 4, "tags": ["b", "a"]}
    status, body = curl(h, host, "/items", "-H", "Content-Type: application/json",
                        "--data-binary", json.dumps(item))
    assert status == 200, body
    doc = json.loads(body)
    assert doc["name"] == "widget" and doc["total"] == 10.0 and doc["tags"] == ["a", "b"]
    # pydantic's verdict, as FastAPI words it: 422 with one entry per bad field
    status, body = curl(h, host, "/items", "-H", "Content-Type: application/json",
                        "--data-binary", json.dumps({"name": "", "price": -1, "quantity": "x"}))
    assert status == 422, body
    bad = {tuple(e["loc"]) for e in json.loads(body)["detail"]}
    assert bad == {("body", "name"), ("body", "price"), ("body", "quantity")}, body
    status, body = curl(h, host, "/items", "-H", "Content-Type: application/json",
                        "--data-binary", "{not json")
    assert status == 422, body
    info = get_json(h, host, "/info")
    assert info["loop"].split(".")[0] == loop_module, info
    assert info["pid"] in ready_pids(h, pool_name) and info["started"] is True
    assert info["http_version"] == "1.1" and info["scheme"] == "http"


def test_isolated_pool_imports_the_frameworks_venv(h):
    info = get_json(h, "faiso.test", "/info")
    assert info["started"] is True and info["loop"]
    assert h.pool("faiso")["isolated"] is True


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before the head: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def test_fastapi_streaming_response_arrives_chunk_by_chunk(h):
    n, delay = 5, 0.4
    s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
    try:
        t0 = time.monotonic()
        s.sendall(f"GET /stream?n={n}&delay={delay} HTTP/1.1\r\nHost: fa.test\r\n\r\n".encode())
        head, buf = _read_head(s)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"transfer-encoding: chunked" in head.lower(), head
        # decode the chunked body as it arrives, stamping each app chunk's arrival
        arrivals, body = [], b""
        while True:
            while b"\r\n" not in buf:
                buf += s.recv(65536)
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                more = s.recv(65536)
                assert more, "closed inside a chunk"
                buf += more
            data, buf = buf[:size], buf[size + 2:]
            if size == 0:
                break
            body += data
            while body.count(b"\n") > len(arrivals):
                arrivals.append(time.monotonic() - t0)
    finally:
        s.close()
    lines = body.decode().splitlines()
    assert [ln.split(" at ")[0] for ln in lines] == [f"chunk {i}" for i in range(n)]
    total = (n - 1) * delay
    # the first chunk is there long before the app is done, each one about when made
    assert arrivals[0] < total / 2, arrivals
    for i, t in enumerate(arrivals):
        assert t >= i * delay - 0.15, (i, arrivals)
    assert arrivals[-1] >= total - 0.15, arrivals


def test_fastapi_10mib_upload_streamed_to_the_app(h, tmp_path):
    data = os.urandom(10 << 20)
    f = tmp_path / "upload.bin"
    f.write_bytes(data)
    # curl sends Expect: 100-continue for a body this size: the worker must answer it
    status, body = curl(h, "fa.test", "/upload", "-H", "Content-Type: application/octet-stream",
                        "--data-binary", f"@{f}", timeout=60)
    assert status == 200, body
    doc = json.loads(body)
    assert doc["size"] == len(data) and doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["chunks"] > 1, doc          # http.request messages, not one buffered body
    # chunked request body too
    status, body = curl(h, "fa.test", "/upload", "-H", "Transfer-Encoding: chunked",
                        "--data-binary", f"@{f}", timeout=60)
    assert status == 200, body
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()


def test_fastapi_lifespan_startup_before_first_request_and_shutdown_on_recycle(h):
    assert not ready_pids(h, "life")            # on demand: no worker yet
    t_req = time.time()
    info = get_json(h, "life.test", "/info", timeout=30)
    pid = info["pid"]
    up = marker(h, f"startup-{pid}")
    # startup ran (1 s of it) in this worker before it served the first request
    assert info["started"] is True
    assert up["began"] >= t_req - 0.5 and up["done"] - up["began"] >= 0.9, up
    assert up["done"] <= info["now"], (up, info)
    assert not (h.markers / f"shutdown-{pid}").exists()
    t_recycle = time.time()
    r = h.ctl("pool", "recycle", "life")
    assert r.returncode == 0, r
    down = marker(h, f"shutdown-{pid}", timeout=20)
    assert down["at"] >= t_recycle
    h.wait_for(lambda: not alive(pid), timeout=10, what="old worker exited")
    h.wait_for(lambda: ready_pids(h, "life") - {pid}, timeout=20, what="replacement ready")
    info2 = get_json(h, "life.test", "/info")
    assert info2["pid"] != pid and info2["started"] is True
    up2 = marker(h, f"startup-{info2['pid']}")
    assert up2["done"] >= t_recycle
    assert log_lines(h, "recycle", "life"), h.log()[-3000:]


# --- Django ------------------------------------------------------------------------------------
def test_django_async_view_under_a_url_prefix(h):
    status, body = curl(h, "dj.test", "/dj/hello/?q=x")
    assert status == 200, body[:2000]
    doc = json.loads(body)
    assert doc["async"] is True and doc["query"] == "x"
    assert doc["root_path"] == "/dj", doc
    # ASGI: scope["path"] is the full path, root_path the mount point (as Django reads it)
    assert doc["scope_path"] == "/dj/hello/", doc
    assert doc["path"] == "/dj/hello/" and doc["path_info"] == "/hello/", doc
    assert doc["script_name"] == "/dj" and doc["script_prefix"] == "/dj/", doc
    assert doc["hello_url"] == "/dj/hello/" and doc["item_url"] == "/dj/items/7/", doc
    assert doc["absolute"] == "http://dj.test/dj/items/7/", doc
    status, body = curl(h, "dj.test", "/dj/items/3/")
    assert status == 200 and json.loads(body)["n"] == 3, body[:2000]
    status, body = curl(h, "dj.test", "/dj/nothing-here/")
    assert status == 404 and b"Not Found" in body           # Django's own 404
    status, body = curl(h, "dj.test", "/elsewhere/")
    assert status == 404 and b"dj.test" in body             # no binding: the front end's


# --- health: a blocked event loop ---------------------------------------------------------------
def test_blocked_event_loop_is_found_unhealthy_and_replaced(h):
    interval, timeout = 1.0, 2.0
    h.wait_for(lambda: ready_pids(h, "blk"), timeout=20, what="blk ready")
    h.wait_for(lambda: ready_pids(h, "other"), timeout=20, what="other ready")
    (old,) = ready_pids(h, "blk")
    assert get_json(h, "blk.test", "/info")["pid"] == old
    assert get_json(h, "fa.test", "/info")["pid"]
    before = len(log_lines(h, "unhealthy", "blk"))
    others = {"ok": 0, "bad": [], "worst": 0.0}
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            for host, path in (("other.test", "/"), ("fa.test", "/info")):
                t = time.monotonic()
                try:
                    status, _, _ = h.get(host, path, timeout=5)
                    if status != 200:
                        others["bad"].append((host, status))
                    else:
                        others["ok"] += 1
                except Exception as exc:
                    others["bad"].append((host, repr(exc)))
                others["worst"] = max(others["worst"], time.monotonic() - t)
            time.sleep(0.05)

    th = threading.Thread(target=hammer)
    th.start()
    s = socket.create_connection(("127.0.0.1", h.port), timeout=15)
    try:
        s.sendall(b"GET /block?seconds=60 HTTP/1.1\r\nHost: blk.test\r\n\r\n")
        t0 = time.monotonic()
        h.wait_for(lambda: len(log_lines(h, "unhealthy", "blk")) > before, timeout=15,
                   interval=0.02, what="unhealthy event for blk")
        found = time.monotonic() - t0
        assert found <= timeout + interval + 1.0, found
        new = h.wait_for(lambda: ready_pids(h, "blk") - {old}, timeout=20,
                         what="replacement ready")
        info = get_json(h, "blk.test", "/info", timeout=10)
        assert info["pid"] != old and info["pid"] in new
        h.wait_for(lambda: not alive(old), timeout=10, what="blocked worker ended")
        time.sleep(0.5)
    finally:
        s.close()
        stop.set()
        th.join(30)
    assert others["bad"] == [] and others["ok"] >= 20, others
    assert others["worst"] < 1.0, others


# --- interface mismatch ----------------------------------------------------------------------------
@pytest.mark.parametrize("pool_name, wanted", [("wsgi-on-asgi", "asgi"), ("asgi-on-wsgi", "wsgi"),
                                               ("wsgi-on-asgi-pre", "asgi"),
                                               ("asgi-on-wsgi-pre", "wsgi")])
def test_app_of_the_other_interface_fails_at_start_saying_which(h, pool_name, wanted):
    lines = h.wait_for(lambda: log_lines(h, "startup_failed", pool_name), timeout=20,
                       what=f"startup_failed for {pool_name}")
    text = lines[0].replace('\\"', '"')
    assert f'interface = "{wanted}"' in text, lines[0]
    h.wait_for(lambda: h.pool(pool_name)["state"] == "failed", timeout=30,
               what=f"{pool_name} failed (rapid-fail)")
    assert not ready_pids(h, pool_name)
    status, _, _ = h.get(f"{pool_name}.test", "/", timeout=10)
    assert status == 503


class KeepAliveLoad:
    """Keep-alive load over connections opened one at a time (each waits for its first
    answer, so none ever waits in the pool's queue): one request in flight on each, from
    one thread with a selector, for a bounded time. Counts 200s and anything else."""

    def __init__(self, port: int, host: str, path: str, n: int):
        import selectors
        self.req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self.sel = selectors.DefaultSelector()
        self.ok = self.bad = 0
        self.socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(self.req)
            buf = b""
            while self._answer(buf) is None:
                chunk = s.recv(65536)
                assert chunk, "closed before the first answer"
                buf += chunk
            s.setblocking(False)
            self.socks.append(s)

    @staticmethod
    def _answer(buf: bytes):
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            return None
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        n = int(m.group(1)) if m else 0
        return (head[9:12], len(head) + 4 + n) if len(rest) >= n else None

    def run(self, seconds: float) -> None:
        import selectors
        bufs = {}
        for s in self.socks:
            s.send(self.req)
            bufs[s] = b""
            self.sel.register(s, selectors.EVENT_READ)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key, _ in self.sel.select(0.5):
                s = key.fileobj
                chunk = s.recv(65536)
                if not chunk:
                    self.bad += 1
                    self.sel.unregister(s)
                    continue
                bufs[s] += chunk
                got = self._answer(bufs[s])
                if got is not None:
                    status, size = got
                    if status == b"200":
                        self.ok += 1
                    else:
                        self.bad += 1
                    bufs[s] = bufs[s][size:]
                    s.send(self.req)
        for s in self.socks:
            s.close()


def test_a_saturated_event_loop_grows_the_web_garden(h):
    # 50 keep-alive connections are far below max_concurrency (10000), and opened one at
    # a time none waits in the queue: what fills an event loop is its CPU. The worker
    # counts windows where its loop thread ran or waited for a CPU >= 90% of the time as
    # busy time, and the garden grows on that ("saturated").
    assert get_json(h, "gard.test", "/info")["pid"]
    assert len(ready_pids(h, "gard")) == 1
    load = KeepAliveLoad(h.port, "gard.test", "/info", 50)
    load.run(5.0)
    assert load.ok > 1000 and load.bad == 0, (load.ok, load.bad)
    h.wait_for(lambda: len(ready_pids(h, "gard")) == 2, timeout=10,
               what="gard's second worker")
    reasons = [ln for ln in log_lines(h, "spawn", "gard") if "REASON=saturated" in ln]
    assert reasons, log_lines(h, "spawn", "gard")
