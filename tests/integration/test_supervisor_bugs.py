"""Regression tests for five supervisor bugs, each against a real hostd (real processes,
real HTTP over 127.0.0.1). Every test fails on the tree before the fixes, for the reason
its docstring gives."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hostd import hostctl
from hostd_harness import APPS, Hostd, free_port


def pool(bindings, app="health_app:application", health=None, **kw):
    doc = {"app": app, "directory": str(APPS), "bindings": bindings}
    doc.update(kw)
    if health:
        doc["health"] = health
    return doc


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited: nothing runs)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def workers(h: Hostd, name: str, state: str | None = None) -> list[dict]:
    return [w for w in h.pool(name)["workers"] if state is None or w["state"] == state]


def ready_pids(h: Hostd, name: str) -> set[int]:
    return {w["pid"] for w in workers(h, name, "ready")}


def counters(h: Hostd) -> dict:
    code, doc = hostctl.call(h.socket_path, "GET", "/counters")
    assert code == 200, doc
    return doc


def flatten(doc: dict) -> dict[str, float]:
    """Every counter of `hostctl counters --json` that is a running total, by a path
    like "a.responses.2xx" or "a.bindings[a.test].bytes_out"."""
    out: dict[str, float] = {}
    for p in doc["pools"]:
        n = p["name"]
        for key in ("requests", "bytes_in", "bytes_out", "cpu_seconds", "crashes",
                    "rapid_fail_stops", "queue_full"):
            out[f"{n}.{key}"] = p[key]
        for cls, v in p["responses"].items():
            out[f"{n}.responses.{cls}"] = v
        for reason, v in p["recycles"].items():
            out[f"{n}.recycles.{reason}"] = v
        for b in p["bindings"]:
            t = b["binding"]
            out[f"{n}.bindings[{t}].requests"] = b["requests"]
            out[f"{n}.bindings[{t}].bytes_out"] = b["bytes_out"]
            for cls, v in b["responses"].items():
                out[f"{n}.bindings[{t}].responses.{cls}"] = v
    return out


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def log_fields(line: str) -> dict[str, str]:
    """The key=value fields of one stderr log line (hostd/log.py: values with spaces,
    quotes or '=' are JSON strings)."""
    out = {}
    for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line):
        out[k] = json.loads(v) if v.startswith('"') else v
    return out


def events(h: Hostd, event: str) -> list[str]:
    return [l for l in h.log().splitlines() if re.match(rf"<\d>{event} ", l)]


# ================================================================== bug 1
def test_counters_never_go_backwards_and_crashes_are_counted(tmp_path):
    """Bug 1: `_keep_counts` was never called and `Pool.crashes` never incremented: when a
    worker exited (crash, kill -9, recycle, idle timeout) its responses, bytes and CPU
    seconds left the pool's and bindings' totals (seen: responses 2xx 40 -> 5), and
    `crashes` / `hostd_crashes_total` stayed 0. Every running total must never decrease
    between samples, and the two crashes (a segfault, a kill -9 from outside of a READY
    worker) must be counted, in `counters` and in /metrics."""
    metrics_port = free_port()
    h = Hostd(tmp_path, {
        "a": pool(["a.test", "a.test/x/"], start_mode="always_running",
                  health={"rapid_fail_max_crashes": 0}),
        "b": pool(["b.test"], idle_timeout="3s")},
        hostd={"metrics_listen": f"127.0.0.1:{metrics_port}"})
    h.start()
    samples: list[tuple[str, dict]] = []

    def sample(what: str) -> None:
        time.sleep(1.3)          # workers write their counters to the scoreboard each second
        samples.append((what, flatten(counters(h))))

    def serve(n: int) -> None:
        for i in range(n):
            assert h.get("a.test", f"/ok?{i}")[0] == 200
            assert h.get("a.test", f"/x/ok?{i}")[0] == 200

    def replaced(old: int) -> int:
        return min(h.wait_for(lambda: ready_pids(h, "a") - {old}, timeout=15,
                              what=f"a replacement of {old}"))
    try:
        (first,) = h.wait_for(lambda: ready_pids(h, "a"), what="a ready")
        for i in range(5):
            assert h.get("b.test", f"/ok?{i}")[0] == 200   # b's worker exits when idle
        serve(10)
        sample("served")
        assert samples[-1][1]["a.responses.2xx"] == 20, samples[-1]

        crasher = socket.create_connection(("127.0.0.1", h.port), timeout=10)
        crasher.sendall(b"GET /crash HTTP/1.1\r\nHost: a.test\r\n\r\n")
        second = replaced(first)
        crasher.close()
        sample("after a segfault")
        serve(5)
        sample("served more")

        os.kill(second, signal.SIGKILL)       # from outside, while READY: a crash
        third = replaced(second)
        sample("after kill -9")
        serve(5)
        sample("served more")

        code, doc = hostctl.call(h.socket_path, "POST", f"/workers/{third}/recycle")
        assert code == 200, doc
        h.wait_for(lambda: third not in {w["pid"] for w in workers(h, "a")}, timeout=15,
                   what="recycled worker gone")
        h.wait_for(lambda: workers(h, "b") == [], timeout=10, what="b's worker idle exit")
        sample("after a recycle and an idle exit")

        went_back = []
        for (w0, s0), (w1, s1) in zip(samples, samples[1:]):
            for key, v0 in s0.items():
                v1 = s1.get(key, 0)
                if v1 < v0 - (0.001 if key.endswith("cpu_seconds") else 0):
                    went_back.append(f"{key}: {v0} ({w0}) -> {v1} ({w1})")
        assert went_back == [], "counters went backwards:\n" + "\n".join(went_back)
        last = samples[-1][1]
        assert last["a.responses.2xx"] == 40 and last["b.responses.2xx"] == 5, last
        assert last["a.bindings[a.test].responses.2xx"] == 20, last
        assert last["a.crashes"] == 2, f"2 crashes (segfault, kill -9) counted as {last['a.crashes']}"
        assert last.get("a.recycles.on_demand") == 1, last
        text = scrape(metrics_port)
        assert metric(text, "hostd_crashes_total", pool="a") == 2, \
            [l for l in text.splitlines() if "crashes" in l]
        assert metric(text, "hostd_responses_total", pool="a", **{"class": "2xx"}) == 40
    finally:
        h.stop()


# ================================================================== bug 2
def site_dir(root: Path) -> Path:
    """A copy of the test apps any uid may read (an isolated pool's own identity)."""
    d = root / "site"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    for name in ("health_app.py", "health_slow_import.py"):
        shutil.copy(APPS / name, d / name)
        (d / name).chmod(0o644)
    return d


def remove_cgroups(supervisor_pid: int) -> None:
    """Test hygiene: the (empty) cgroup subtree of a supervisor that was SIGKILLed
    (hostd.PID in each v1 hierarchy, or the v2 one), which it could not remove itself."""
    for base in glob.glob(f"/sys/fs/cgroup/*/hostd.{supervisor_pid}") + \
            glob.glob(f"/sys/fs/cgroup/hostd.{supervisor_pid}"):
        for d, _subdirs, _files in sorted(os.walk(base), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(d)
            except OSError:
                pass


def unmount_under(root: Path) -> None:
    """Test hygiene: mounts a SIGKILLed supervisor left under `root` (an isolated
    pool's /tmp tmpfs in run_dir), which only a restart and a clean stop would remove."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in reversed(points):
        if point.startswith(str(root) + "/"):
            subprocess.run(["umount", "-l", point], capture_output=True)


@pytest.mark.parametrize("isolated", [
    pytest.param(False, id="plain"),
    pytest.param(True, marks=pytest.mark.root, id="isolated-pidns")])
def test_nothing_outlives_a_killed_supervisor(tmp_path, isolated):
    """Bug 2: after a SIGKILL of the supervisor, a hung worker that was DRAINING (found
    unhealthy, replaced, waiting for its long shutdown_limit) lived on, re-parented to
    init, forever: its PDEATHSIG is SIGTERM, which the worker handles as a graceful
    drain, and its control thread's EOF too only begins a drain the hung app never
    finishes. (In a pid namespace, [isolation] filesystem = "site", a STARTING worker
    whose import hangs survived too: its init ignores a default-action SIGTERM.)
    Whatever hostd started (workers hung and draining, starting, ready; front ends; the
    zygote; and the child the hung app started) must be gone within 5 s of the
    supervisor's death, and a hostd started again on the same config must start clean
    and serve."""
    if isolated:
        directory = site_dir(tmp_path)
        extra = {"directory": str(directory), "isolation": {"filesystem": "site"}}
        hang = b"/hang"
    else:
        # root workers: the app's child writes its pid to a marker under pytest's /tmp
        extra = {"isolation": {"enabled": False}}
        marker = tmp_path / "child.pid"     # the app's child (ignores SIGTERM) writes it
        hang = f"/work?{marker}".encode()
    h = Hostd(tmp_path, {
        "hang": pool(["hang.test"], start_mode="always_running", health={
            "ping_interval": "1s", "ping_timeout": "1s", "shutdown_limit": "120s"}, **extra),
        "slow": pool(["slow.test"], app="health_slow_import:application",
                     start_mode="always_running", health={"startup_limit": "120s"}, **extra),
        "ok": pool(["ok.test"], start_mode="always_running")})
    h.start()
    killed = h.proc.pid
    pids: dict[int, str] = {}
    try:
        (hung,) = h.wait_for(lambda: ready_pids(h, "hang"), timeout=20, what="hang ready")
        h.wait_for(lambda: ready_pids(h, "ok"), what="ok ready")
        s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
        s.sendall(b"GET " + hang + b" HTTP/1.1\r\nHost: hang.test\r\n\r\n")
        h.wait_for(lambda: hung in {w["pid"] for w in workers(h, "hang", "draining")},
                   timeout=15, what="the hung worker draining (unhealthy, replaced)")
        h.wait_for(lambda: [w for w in workers(h, "slow", "starting") if w["pid"]],
                   what="slow worker starting")
        doc = h.status()
        for p in doc["pools"]:
            for w in p["workers"]:
                if w["pid"]:
                    pids[w["pid"]] = f"worker {p['name']} {w['state']}"
        for fe in doc["frontends"]:
            pids[fe["pid"]] = "front end"
        pids[doc["zygote"]] = "zygote"
        if not isolated:
            pids[int(marker.read_text())] = "the hung app's child"
        assert pids[hung] == "worker hang draining", pids
        assert "worker slow starting" in pids.values() and "worker hang ready" in pids.values()
        assert all(alive(pid) for pid in pids), pids

        h.proc.send_signal(signal.SIGKILL)
        h.proc.wait(5)
        killed_at = time.monotonic()
        left = {pid: what for pid, what in pids.items() if alive(pid)}
        while left and time.monotonic() - killed_at < 5.0:
            time.sleep(0.05)
            left = {pid: what for pid, what in pids.items() if alive(pid)}
        assert left == {}, f"alive {time.monotonic() - killed_at:.1f}s after the " \
                           f"supervisor's SIGKILL: {left}"
        s.close()
        h._log.close()

        h.start()
        status, _, body = h.get("ok.test", "/ok")
        assert status == 200 and body.isdigit(), (status, body)
    finally:
        for pid in pids:             # what survived the kill must not outlive the test
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if h.proc.poll() is None:
            h.stop()
        remove_cgroups(killed)
        if isolated:
            unmount_under(tmp_path)


# ================================================================== bug 3
def test_broken_pool_file_keeps_its_bindings_and_answers_503(tmp_path):
    """Bug 3: a pool whose file failed validation lost its bindings: its hosts were
    answered 404 "No site is bound", or, with a catch-all `*` pool, by another site.
    The README promises 503. The pool's bindings are valid, only another key is not:
    its host must get 503 (not 404, not the catch-all's answer), and `status --json`
    shows the pool failed, with its error and its bindings."""
    broken = pool(["broken.test", "shop.test/broken/"], start_mode="always_running")
    broken["no_such_key"] = 1
    h = Hostd(tmp_path, {"broken": broken, "catchall": pool(["*"])})
    h.start()
    try:
        status, _, body = h.get("other.test", "/ok")
        assert status == 200 and body.isdigit(), (status, body)   # the catch-all serves
        for host, path in (("broken.test", "/"), ("broken.test", "/ok"),
                           ("shop.test", "/broken/x")):
            status, headers, body = h.get(host, path)
            assert status == 503, f"{host}{path}: {status} {body[:80]!r} (want 503)"
            assert not body.isdigit(), "answered by the catch-all pool"
        assert h.get("shop.test", "/else")[0] == 200               # outside the prefix
        # a kept-alive connection the catch-all's worker holds: its next request for the
        # broken pool's host goes back to the front ends (the workers' route table has
        # the binding too), and is answered 503 as well
        conn = h.connect()
        try:
            for host, want in (("other.test", 200), ("broken.test", 503)):
                conn.request("GET", "/ok", headers={"Host": host})
                resp = conn.getresponse()
                body = resp.read()
                assert resp.status == want, f"kept-alive {host}: {resp.status} {body[:80]!r}"
        finally:
            conn.close()
        p = h.pool("broken")
        assert p["state"] == "failed", p
        assert "no_such_key" in (p["error"] or ""), p
        assert p["bindings"] == ["broken.test", "shop.test/broken/"], p
    finally:
        h.stop()


# ================================================================== bug 4
def test_live_requests_does_not_block_the_supervisor(tmp_path):
    """Bug 4: `live_requests` (GET /requests, `hostctl requests`) waited for the workers'
    answers in a `select` of up to 1 s inside the supervisor's loop: with a worker whose
    control thread cannot answer (SIGSTOPped here), the supervisor served nothing else
    for that second. A GET /status sent 0.1 s after the /requests call must come back in
    well under a second, and /requests must still list the other worker's request."""
    h = Hostd(tmp_path, {
        "a": pool(["a.test"], start_mode="always_running"),
        "b": pool(["b.test"], app="core_app:application", start_mode="always_running")})
    h.start()
    stopped = None
    runner = threading.Thread(target=lambda: h.get("b.test", "/sleep?t=6", timeout=20))
    try:
        (stopped,) = h.wait_for(lambda: ready_pids(h, "a"), what="a ready")
        h.wait_for(lambda: ready_pids(h, "b"), what="b ready")
        runner.start()

        def listed():
            code, doc = hostctl.call(h.socket_path, "GET", "/requests")
            return [r for r in doc["requests"] if r["path"].startswith("/sleep")]
        h.wait_for(listed, what="b's request listed")
        os.kill(stopped, signal.SIGSTOP)
        result: dict = {}

        def ask_requests():
            t0 = time.monotonic()
            result["requests"] = hostctl.call(h.socket_path, "GET", "/requests")
            result["requests_s"] = time.monotonic() - t0
        t = threading.Thread(target=ask_requests)
        t.start()
        time.sleep(0.1)
        t0 = time.monotonic()
        code, doc = hostctl.call(h.socket_path, "GET", "/status")
        status_s = time.monotonic() - t0
        t.join(15)
        assert code == 200 and doc["pools"], doc
        assert status_s < 0.5, f"GET /status took {status_s:.2f}s while GET /requests " \
                               f"waited for a stopped worker ({result.get('requests_s')})"
        code, answer = result["requests"]
        assert code == 200, answer
        assert [r for r in answer["requests"] if r["path"] == "/sleep?t=6"
                and r["pool"] == "b"], answer
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        if runner.ident is not None:
            runner.join(20)
        h.stop()


# ================================================================== bug 5
def test_recycle_ready_of_an_unhealthy_worker_logs_its_reason_and_time(tmp_path):
    """Bug 5: when an unhealthy worker's replacement became ready (overlapping recycle,
    the default unhealthy_action), `recycle_ready` logged ELAPSED_MS=649606.7 (the time
    since boot: the worker's recycle_started was never set) and REASON="" (its
    `recycling` was never set), though the replacement was ready in under a second.
    ELAPSED_MS must be the time since the recycle began (< 30 s), REASON must say
    unhealthy."""
    h = Hostd(tmp_path, {"a": pool(["a.test"], start_mode="always_running", health={
        "ping_interval": "1s", "ping_timeout": "1s", "shutdown_limit": "2s"})})
    h.start()
    try:
        (old,) = h.wait_for(lambda: ready_pids(h, "a"), what="a ready")
        s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: a.test\r\n\r\n")
        (line,) = h.wait_for(lambda: events(h, "recycle_ready"), timeout=15,
                             what="recycle_ready logged")
        s.close()
        assert events(h, "unhealthy"), h.log()
        f = log_fields(line)
        assert f.get("OLD_PID") == str(old), line
        assert float(f["ELAPSED_MS"]) < 30000, line
        assert f.get("REASON") and "unhealthy" in f["REASON"], line
        assert h.wait_for(lambda: ready_pids(h, "a") - {old}, what="replacement serves")
    finally:
        h.stop()


def test_hostd_starts_beside_a_partial_base_a_killed_hostd_left(tmp_path):
    """A SIGKILLed hostd can leave its v1 base `hostd.<pid>` in only some hierarchies
    (seen: cpu, cpuacct and memory, not freezer or pids). The start-up sweep of such
    leftovers crashed hostd (a v1 kill needs the freezer): it must start, serve, and
    remove the empty leftover."""
    from kernel import cgroups
    try:
        own = cgroups.detect(name="hostd.probe")
    except cgroups.CgroupUnavailable as e:
        pytest.skip(f"no usable cgroups here: {e}")
    if own.version != 1:
        pytest.skip("v2: one base, the supervisor's own cgroup; nothing is left beside it")
    dead = subprocess.Popen(["true"])
    dead.wait()
    key = sorted(own.dirs)[0]
    left = os.path.join(os.path.dirname(own.dirs[key]), f"hostd.{dead.pid}")
    os.makedirs(os.path.join(left, "pool-x", "worker-1"))
    h = Hostd(tmp_path, {"ok": pool(["ok.test"], start_mode="always_running")})
    try:
        h.start()
        status, _, body = h.get("ok.test", "/ok")
        assert status == 200, (status, body)
        assert not os.path.exists(left), "the empty leftover base was not removed"
        assert events(h, "cgroup_stale")
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.stop()
        for d in (os.path.join(left, "pool-x", "worker-1"), os.path.join(left, "pool-x"), left):
            if os.path.isdir(d):
                os.rmdir(d)
