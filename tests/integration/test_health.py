"""Issue 4 acceptance: health and lifecycle, with deliberately bad apps, real hostd."""
from __future__ import annotations

import concurrent.futures
import os
import re
import socket
import threading
import time

import pytest

from hostd_harness import APPS, Hostd


def pool(bindings, app="health_app:application", health=None, **kw):
    doc = {"app": app, "directory": str(APPS), "bindings": bindings}
    doc.update(kw)
    if health:
        doc["health"] = health
    return doc


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def ready_pids(h: Hostd, name: str) -> set[int]:
    return {w["pid"] for w in h.pool(name)["workers"] if w["state"] == "ready"}


def event_times(h: Hostd, event: str) -> list[str]:
    return [l for l in h.log().splitlines() if re.match(rf"<\d>{event} ", l)]


def test_hung_worker_found_and_replaced_while_garden_serves(tmp_path):
    interval, timeout = 1.0, 2.0
    h = Hostd(tmp_path, {"a": pool(["a.test"], processes=2, health={
        "ping_interval": "1s", "ping_timeout": "2s", "shutdown_limit": "2s"})})
    h.start()
    try:
        hung: dict = {}

        def hang():
            t0 = time.monotonic()
            try:
                h.get("a.test", "/hang", timeout=30)
                hung["result"] = "answered"
            except http_errors() as exc:
                hung["result"] = f"closed: {exc!r}"
            hung["closed_after"] = time.monotonic() - t0
        t = threading.Thread(target=hang)
        t.start()
        t0 = time.monotonic()
        h.wait_for(lambda: len(h.pool("a")["workers"]) == 2, what="garden of 2")
        served, failed = 0, []
        while time.monotonic() - t0 < 8:
            try:
                status, _, _ = h.get("a.test", "/ok", timeout=10)
                served += 1
                if status != 200:
                    failed.append(status)
            except Exception as exc:
                failed.append(repr(exc))
            if event_times(h, "unhealthy") and not t.is_alive():
                break
        t.join(30)
        assert failed == [] and served > 10
        lines = event_times(h, "unhealthy")
        assert lines, h.log()
        assert hung.get("result", "").startswith("closed"), hung
        assert hung["closed_after"] < timeout + interval + 1 + 2.0 + 1.0, hung  # + shutdown_limit
        assert ready_pids(h, "a"), "replacement serves"
    finally:
        h.stop()


def _field(line, name):
    return re.search(rf"{name}=(\S+)", line).group(1)


def http_errors():
    import http.client
    return (http.client.HTTPException, socket.timeout, OSError)


def test_unhealthy_detection_time(tmp_path):
    """Measured precisely: from the hang starting to the `unhealthy` event."""
    h = Hostd(tmp_path, {"a": pool(["a.test"], start_mode="always_running", health={
        "ping_interval": "1s", "ping_timeout": "2s", "shutdown_limit": "1s",
        "unhealthy_action": "kill"})})
    h.start()
    try:
        h.wait_for(lambda: ready_pids(h, "a"), what="ready")
        old = ready_pids(h, "a")
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: a.test\r\n\r\n")
        t0 = time.monotonic()
        h.wait_for(lambda: event_times(h, "unhealthy"), timeout=10, interval=0.02)
        elapsed = time.monotonic() - t0
        assert elapsed <= 2.0 + 1.0 + 1.0, elapsed
        s.settimeout(5)
        assert s.recv(100) == b""          # the hung connection is closed (killed)
        s.close()
        h.wait_for(lambda: ready_pids(h, "a") - old, what="replacement")
        assert h.get("a.test", "/ok")[0] == 200
    finally:
        h.stop()


@pytest.mark.parametrize("lb", ["http_503", "tcp_reset"])
def test_rapid_fail_then_pool_start(tmp_path, lb):
    site = tmp_path / "site"
    site.mkdir()
    (site / "flaky.py").write_text("raise ImportError('broken on purpose')\n")
    h = Hostd(tmp_path, {
        "bad": {"app": "flaky:application", "directory": str(site), "bindings": ["bad.test"],
                "load_balancer_capabilities": lb,
                "health": {"rapid_fail_max_crashes": 3, "rapid_fail_interval": "1m"}},
        "good": pool(["good.test"])})
    h.start()
    try:
        t0 = time.monotonic()
        try:
            status = h.get("bad.test")[0]
        except ConnectionResetError:
            status = "reset"
        assert time.monotonic() - t0 < 1.0
        assert status == (503 if lb == "http_503" else "reset")
        assert h.pool("bad")["state"] == "failed"
        assert len(event_times(h, "startup_failed")) == 3
        assert len(event_times(h, "rapid_fail")) == 1
        # failed: answered at once, no new start attempts
        for _ in range(3):
            try:
                status = h.get("bad.test")[0]
            except ConnectionResetError:
                status = "reset"
            assert status == (503 if lb == "http_503" else "reset")
        assert len(event_times(h, "startup_failed")) == 3
        assert h.get("good.test", "/ok")[0] == 200
        (site / "flaky.py").write_text(
            "def application(e, sr):\n    sr('200 OK', [('Content-Length', '5')])\n"
            "    return [b'fixed']\n")
        r = h.ctl("pool", "start", "bad")
        assert r.returncode == 0, r
        status, _, body = h.get("bad.test")
        assert (status, body) == (200, b"fixed")
    finally:
        h.stop()


def test_segfault_queued_requests_served(tmp_path):
    h = Hostd(tmp_path, {"a": pool(["a.test"], start_mode="always_running")})
    h.start()
    try:
        h.wait_for(lambda: ready_pids(h, "a"))
        crasher = socket.create_connection(("127.0.0.1", h.port))
        crasher.sendall(b"GET /crash HTTP/1.1\r\nHost: a.test\r\n\r\n")
        time.sleep(0.05)
        with concurrent.futures.ThreadPoolExecutor(10) as ex:
            results = list(ex.map(lambda i: h.get("a.test", f"/ok?{i}", timeout=20)[0], range(10)))
        assert results == [200] * 10          # none of the queued requests lost
        crasher.settimeout(5)
        assert crasher.recv(100) == b""       # only the connection it held is lost
        assert "SIGSEGV" in h.log()
    finally:
        h.stop()


def test_startup_limit_kills_and_counts(tmp_path):
    h = Hostd(tmp_path, {"slow": pool(["slow.test"], app="health_slow_import:application",
                                      health={"startup_limit": "2s", "rapid_fail_max_crashes": 1})})
    h.start()
    try:
        t0 = time.monotonic()
        status = h.get("slow.test", timeout=20)[0]
        elapsed = time.monotonic() - t0
        assert status == 503
        assert 1.0 <= elapsed <= 3.5, elapsed     # killed at the limit (±1 s)
        assert event_times(h, "startup_timeout") and event_times(h, "rapid_fail")
        assert h.pool("slow")["state"] == "failed"
        assert h.pool("slow")["workers"] == []
    finally:
        h.stop()


def test_shutdown_limit_kills_worker_and_its_children(tmp_path):
    # root workers ([isolation] enabled = false): the app's pid and a marker file under pytest's /tmp
    h = Hostd(tmp_path, root_workers=True, pools={"a": pool(["a.test"], start_mode="always_running",
                                   health={"shutdown_limit": "2s"})})
    h.start()
    try:
        h.wait_for(lambda: ready_pids(h, "a"))
        (pid,) = ready_pids(h, "a")
        marker = tmp_path / "child.pid"
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(f"GET /work?{marker} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode())
        child = int(h.wait_for(lambda: marker.exists() and marker.read_text()))
        assert alive(child)
        t0 = time.monotonic()
        r = h.ctl("pool", "stop", "a")
        assert r.returncode == 0, r
        h.wait_for(lambda: not alive(pid), timeout=10, interval=0.02)
        elapsed = time.monotonic() - t0
        assert 1.0 <= elapsed <= 3.0, elapsed
        h.wait_for(lambda: not alive(child), timeout=3, what="the app's child gone too")
        assert event_times(h, "shutdown_timeout")
        s.close()
    finally:
        h.stop()


def test_orphan_kept_for_debugging(tmp_path):
    out = tmp_path / "orphan-action.txt"
    # root workers ([isolation] enabled = false): the app's pid and a marker file under pytest's /tmp
    h = Hostd(tmp_path, root_workers=True, pools={"a": pool(["a.test"], start_mode="always_running", health={
        "ping_interval": "1s", "ping_timeout": "1s", "orphan": True,
        "orphan_action": f"echo pid={{pid}} pool={{pool}} > {out}; echo dumped"})})
    h.start()
    try:
        h.wait_for(lambda: ready_pids(h, "a"))
        (old,) = ready_pids(h, "a")
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: a.test\r\n\r\n")
        h.wait_for(lambda: out.exists() and out.read_text(), timeout=10, what="orphan_action")
        assert out.read_text().strip() == f"pid={old} pool=a"
        h.wait_for(lambda: "dumped" in h.log(), what="action output logged")
        new = h.wait_for(lambda: ready_pids(h, "a") - {old}, what="replacement")
        # the orphan is alive but takes nothing from the queue
        for i in range(20):
            status, _, body = h.get("a.test", f"/ok?{i}")
            assert status == 200 and int(body) in new
        assert alive(old)
        r = h.ctl("orphans", "--json")
        assert r.returncode == 0 and f'"pid": {old}' in r.stdout, r
        assert str(old) in h.ctl("orphans").stdout
        r = h.ctl("orphan", "kill", str(old))
        assert r.returncode == 0, r
        h.wait_for(lambda: not alive(old), what="orphan killed")
        assert f'"pid": {old}' not in h.ctl("orphans", "--json").stdout
        s.close()
    finally:
        h.stop()


@pytest.mark.root
def test_stopping_a_pool_kills_its_double_forked_daemon(tmp_path):
    """IIS job-object semantics through the worker's cgroup: a daemon that left the
    worker's session and process tree still dies with the pool."""
    # root workers ([isolation] enabled = false): the app's pid and a marker file under pytest's /tmp
    h = Hostd(tmp_path, root_workers=True, pools={"a": pool(["a.test"])})
    h.start()
    try:
        if "no_cgroups" in h.log():
            pytest.skip("cgroups unavailable here: " + h.log())
        marker = tmp_path / "daemon.pid"
        assert h.get("a.test", f"/daemon?{marker}")[0] == 200
        daemon = int(h.wait_for(lambda: marker.exists() and marker.read_text()))
        assert alive(daemon)
        (worker,) = ready_pids(h, "a")
        assert os.getsid(daemon) != os.getsid(worker)   # it escaped the worker's session
        assert os.getpgid(daemon) != os.getpgid(worker)  # and its process group
        assert h.ctl("pool", "stop", "a").returncode == 0
        h.wait_for(lambda: not alive(daemon), timeout=10, what="daemon killed with its pool")
    finally:
        h.stop()
