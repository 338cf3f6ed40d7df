"""Issue 16, the warm tier: `preload = true` gives a pool its own zygote, which imports
the app once, freezes its heap and forks the pool's workers (real hostd, real
processes, cgroups and namespaces; root)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from hostd_harness import APPS, Hostd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (isolated pools)")


def pool(binding, **kw):
    doc = {"app": "preload_app:application", "directory": str(APPS), "bindings": [binding]}
    doc.update(kw)
    return doc


def answer(h, host, path="/"):
    status, _, body = h.get(host, path)
    assert status == 200, body
    return json.loads(body)


def zygote(h, name):
    return h.pool(name).get("zygote") or {}


def wait_zygote(h, name, not_pid=None, timeout=30):
    return h.wait_for(lambda: zygote(h, name).get("state") == "ready"
                      and zygote(h, name).get("pid") != not_pid and zygote(h, name),
                      timeout, what=f"pool {name}'s zygote ready")


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1))


def spares(pool):
    out = subprocess.run(["pgrep", "-f", f"^hostd: spare {pool}$"], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def events(h, name):
    return [l for l in h.log().splitlines() if re.match(rf"<\d>{name} ", l)]


@pytest.fixture
def two(tmp_path):
    h = Hostd(tmp_path, {"p": pool("p.test", preload=True, processes=2),
                         "q": pool("q.test")}).start()
    yield h
    h.stop()


def test_workers_come_from_the_pools_zygote_and_share_its_heap(two):
    h = two
    z = wait_zygote(h, "p")
    h.wait_for(lambda: spares("p"), 10, what="a spare of pool p")
    [spare] = spares("p")
    a = answer(h, "p.test")
    assert a["import_pid"] == z["pid"] != a["pid"]     # imported once, in the zygote
    assert a["pid"] == spare                           # the spare became the worker
    assert uid_of(spare) != 0
    assert a["frozen"] > 10000                          # gc.freeze() ran after the import
    assert a["gc_enabled"] is True      # (off in the zygote while it imports, on in workers)
    q = answer(h, "q.test")
    assert q["import_pid"] == q["pid"]                  # no preload: the worker imports
    assert zygote(h, "q") == {}
    # the worker that answered (processes = 2: a loaded box may grow p's garden; q's
    # worker, in a pid namespace of its own, knows itself as pid 1)
    [pw] = [w for w in h.pool("p")["workers"] if w["pid"] == a["pid"]]
    [qw] = [w for w in h.pool("q")["workers"] if w["state"] == "ready"]
    assert pw["state"] == "ready"
    assert pw["preloaded"] is True and qw["preloaded"] is False
    assert "app_import" not in pw["boot_ms"] and "app_import" in qw["boot_ms"]
    # the app's ~16 MiB of import-time objects: shared by the preloaded worker
    assert pw["private"] < qw["private"] / 2, (pw, qw)
    assert pw["private"] < 8 << 20


def test_the_zygote_is_confined_like_the_pools_workers(two):
    h = two
    z = wait_zygote(h, "p")
    ident = h.pool("p")["identity"]
    assert uid_of(z["pid"]) == ident["uid"] != 0
    a = answer(h, "p.test")
    assert uid_of(a["pid"]) == ident["uid"]
    q = answer(h, "q.test")
    # its /proc shows its own uid's processes at most: no other pool's, not hostd's
    seen = set(answer(h, "p.test", "/procs")["procs"])
    others = {h.proc.pid, *[w["pid"] for w in h.pool("q")["workers"]],
              *[fe["pid"] for fe in h.status()["frontends"]], h.status()["zygote"]}
    assert a["pid"] in seen and not (seen & others), (seen, others)
    del q
    # the zygote sits in a cgroup of its pool's (pool-p/zygote-N), as do the workers
    # it forked without a cgroup of their own
    with open(f"/proc/{z['pid']}/cgroup") as f:
        assert re.search(r"/pool-p/zygote-\d+$", f.read(), re.M)
    with open(f"/proc/{a['pid']}/cgroup") as f:
        assert re.search(r"/pool-p/zygote-\d+$", f.read(), re.M)


def test_a_config_change_or_a_recycle_replaces_the_zygote(tmp_path):
    h = Hostd(tmp_path, {"p": pool("p.test", preload=True, env={"IMPORT_MARK": "one"})}).start()
    try:
        z1 = wait_zygote(h, "p")
        assert answer(h, "p.test")["mark"] == "one"
        h.write_pool("p", pool("p.test", preload=True, env={"IMPORT_MARK": "two"}))
        h.signal(signal.SIGHUP)
        z2 = wait_zygote(h, "p", not_pid=z1["pid"])
        assert z2["generation"] == z1["generation"] + 1
        h.wait_for(lambda: not os.path.exists(f"/proc/{z1['pid']}"), 10, what="old zygote exits")
        h.wait_for(lambda: answer(h, "p.test")["mark"] == "two", 20, what="new code served")
        assert h.ctl("pool", "recycle", "p").returncode == 0
        z3 = wait_zygote(h, "p", not_pid=z2["pid"])
        # the replacement started before z3 was ready: it imported the app itself,
        # never from the retired zygote
        h.wait_for(lambda: answer(h, "p.test")["import_pid"] != z2["pid"], 30,
                   what="no worker of the retired zygote")
        # the next worker (a worker recycle) comes from the new zygote
        [w] = [w for w in h.pool("p")["workers"] if w["state"] == "ready"]
        assert h.ctl("worker", "recycle", str(w["pid"])).returncode == 0
        h.wait_for(lambda: answer(h, "p.test")["import_pid"] == z3["pid"], 30,
                   what="a worker of the new zygote")
        assert any("hostctl pool recycle" in l for l in events(h, "zygote_retired"))
    finally:
        h.stop()


def test_a_dead_zygote_is_replaced_and_its_workers_go_on(two):
    h = two
    z = wait_zygote(h, "p")
    a = answer(h, "p.test")
    time.sleep(3.2)       # ready longer than ZYGOTE_MIN_LIFE: a crash is restarted
    os.kill(z["pid"], signal.SIGKILL)
    z2 = wait_zygote(h, "p", not_pid=z["pid"])
    assert answer(h, "p.test")["pid"] == a["pid"]      # the worker it forked goes on
    assert events(h, "zygote_crash")
    assert z2["pid"] != z["pid"]


def test_a_failed_import_is_reported_and_workers_still_start(tmp_path):
    h = Hostd(tmp_path, {"p": pool("p.test", preload=True, env={"IMPORT_FAIL": "1"})}).start()
    try:
        h.wait_for(lambda: zygote(h, "p").get("state") == "failed", 20, what="zygote failed")
        assert "IMPORT_FAIL is set" in zygote(h, "p")["error"]
        [line] = events(h, "zygote_failed")
        assert "POOL=p" in line and "IMPORT_FAIL" in line
        # a request: the worker imports for itself, fails, and that is what the pool sees
        status, _, _ = h.get("p.test", "/")
        assert status in (500, 502, 503)
        h.wait_for(lambda: events(h, "startup_failed"), 10, what="the worker's own failure")
    finally:
        h.stop()


def test_per_worker_memory_limits_place_the_worker_in_its_own_cgroup(tmp_path):
    h = Hostd(tmp_path, {"p": pool("p.test", preload=True,
                                   recycling={"private_memory": "300M"})}).start()
    try:
        z = wait_zygote(h, "p")
        a = answer(h, "p.test")
        assert a["import_pid"] == z["pid"]
        with open(f"/proc/{a['pid']}/cgroup") as f:
            text = f.read()
        assert re.search(r"/pool-p/worker-\d+$", text, re.M), text
    finally:
        h.stop()


def test_stopping_the_pool_retires_its_zygote(two):
    h = two
    z = wait_zygote(h, "p")
    answer(h, "p.test")
    # a spare (a worker forked ahead of time, waiting for its spawn) is there
    h.wait_for(lambda: spares("p"), 10, what="a spare of pool p")
    assert h.ctl("pool", "stop", "p").returncode == 0
    h.wait_for(lambda: not os.path.exists(f"/proc/{z['pid']}"), 15, what="zygote gone")
    h.wait_for(lambda: not spares("p"), 10, what="its spare gone (reaped)")
    h.wait_for(lambda: h.pool("p")["state"] == "stopped", 15)
    assert zygote(h, "p") == {}
    assert h.ctl("pool", "start", "p").returncode == 0
    z2 = wait_zygote(h, "p")
    assert z2["pid"] != z["pid"]
