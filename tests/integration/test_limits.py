"""[limits] of a pool's cgroup against the real kernel (the isolation issue's acceptance):
memory_max, pids_max, cpus, cpu_max, cpu_action. Root with cgroups; on this suite's host the
v1 backend (hybrid), in the VM the v2 one (tests/vm/test_limits.py checks the files)."""
from __future__ import annotations

import re
import threading
import time

import pytest

from hostd_harness import APPS, Hostd, Load


def pool(bindings, limits=None, **kw):
    doc = {"app": "limits_app:application", "directory": str(APPS), "bindings": bindings,
           "start_mode": "always_running"}
    doc.update(kw)
    if limits:
        doc["limits"] = limits
    return doc


def events(h: Hostd, event: str, **fields) -> list[str]:
    return [l for l in h.log().splitlines()
            if re.match(rf"<\d>{event} ", l) and all(f"{k}={v}" in l for k, v in fields.items())]


def ready(h: Hostd, name: str) -> list[dict]:
    return [w for w in h.pool(name)["workers"] if w["state"] == "ready"]


def started(h: Hostd, *names: str) -> None:
    if "no_cgroups" in h.log():
        pytest.skip("cgroups unavailable")
    for n in names:
        h.wait_for(lambda: ready(h, n), timeout=20, what=f"pool {n} ready")


def rps(h: Hostd, host: str, seconds: float, clients: int = 4) -> float:
    with Load(h, [host], clients=clients) as load:
        time.sleep(seconds)
    assert load.failures == [], load.failures[:3]
    return load.ok / seconds


def in_background(fn):
    out = {}

    def run():
        try:
            out["result"] = fn()
        except Exception as exc:          # the request of a killed worker fails
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# --- config ------------------------------------------------------------------------
def test_limits_keys_parse_and_check(tmp_path):
    from hostd.config import ConfigErrors, Limits, load_main, load_pools
    (tmp_path / "pools.d").mkdir()
    (tmp_path / "hostd.toml").write_text('[hostd]\npools_dir = "pools.d"\n')
    head = f'app = "m:app"\ndirectory = "{tmp_path}"\nbindings = ["a.test"]\n[limits]\n'
    (tmp_path / "pools.d" / "a.toml").write_text(
        head + 'memory_max = "512M"\nmemory_high = "400M"\nworker_memory_max = "256M"\n'
        'cpus = "0"\ncpu_max = "150%"\ncpu_action = "kill"\ncpu_interval = "2s"\npids_max = 256\n')
    (tmp_path / "pools.d" / "b.toml").write_text(
        head.replace("a.test", "b.test") + 'cpus = "0-4095"\ncpu_max = "50"\n'
        'cpu_action = "panic"\npids_max = -1\n')
    (tmp_path / "pools.d" / "c.toml").write_text(head.replace("a.test", "c.test"))
    pools, broken = load_pools(load_main(tmp_path / "hostd.toml"))
    a = pools["a"].limits
    assert a == Limits(worker_memory_max=256 << 20, memory_max=512 << 20,
                       memory_high=400 << 20, cpus="0", cpu_max=150, cpu_action="kill",
                       cpu_interval=2.0, pids_max=256)
    assert pools["c"].limits == Limits() and Limits().cpu_action == "throttle" \
        and Limits().cpu_interval == 300.0
    errors = {e.key: e.problem for e in broken["b"]}
    assert set(errors) == {"limits.cpus", "limits.cpu_max", "limits.cpu_action",
                           "limits.pids_max"}, errors
    assert "do not exist on this host" in errors["limits.cpus"]


def test_pool_limits_without_cgroups_are_an_error_not_ignored(tmp_path):
    from hostd.config import Limits, PoolConfig
    from hostd.supervisor import policy
    cfg = PoolConfig(name="m", file=tmp_path / "m.toml", app="a:b", directory=tmp_path,
                     virtualenv=None, bindings=(), start_mode="on_demand", processes=1,
                     threads=1, queue_length=10, idle_timeout=0.0,
                     load_balancer_capabilities="http_503", env=(),
                     limits=Limits(memory_max=1 << 28, cpus="0", pids_max=10))
    problem = policy.unsupported(cfg, has_cgroups=False)
    assert "m.toml" in problem
    for key in ("limits.memory_max", "limits.cpus", "limits.pids_max"):
        assert key in problem, problem
    assert "limits.cpu_max" not in problem


# --- the kernel ----------------------------------------------------------------------
@pytest.mark.root
def test_memory_max_oom_stays_in_the_pool(tmp_path):
    h = Hostd(tmp_path, {"a": pool(["a.test"], {"memory_max": "100M"}),
                         "b": pool(["b.test"])})
    h.start()
    try:
        started(h, "a", "b")
        before = rps(h, "b.test", 3.0)
        with Load(h, ["b.test"], clients=4) as load:
            t0 = time.monotonic()
            for i in range(3):
                try:
                    status, _, body = h.get("a.test", "/alloc?mb=400", timeout=60)
                except OSError:
                    pass           # its worker was killed under it
                else:
                    assert status != 200, body
                # v1 without swap may reclaim page cache for a while before the OOM kill
                h.wait_for(lambda: len(events(h, "oom", POOL="a")) > i, timeout=60,
                           what=f"OOM kill {i + 1}")
                h.wait_for(lambda: ready(h, "a"), timeout=20, what="a replaced")
            during_s = time.monotonic() - t0
        during = load.ok / during_s
        assert load.failures == [], load.failures[:3]
        ooms = events(h, "oom", POOL="a", LIMIT="pool_memory_max")
        assert len(ooms) >= 3, h.log()[-3000:]
        assert events(h, "crash", POOL="a"), "an OOM kill counts as a crash"
        assert not events(h, "oom", POOL="b") and not events(h, "crash", POOL="b")
        print(f"\nmemory_max: pool b {before:.0f} rps before, {during:.0f} rps during "
              f"{len(ooms)} OOM kills in pool a")
        assert during >= 0.5 * before, (before, during)
    finally:
        h.stop()


@pytest.mark.root
def test_pids_max_bounds_a_fork_bomb(tmp_path):
    h = Hostd(tmp_path, {"a": pool(["a.test"], {"pids_max": 64}), "b": pool(["b.test"])})
    h.start()
    try:
        started(h, "a", "b")
        before = rps(h, "b.test", 2.0)
        t, out = in_background(lambda: h.get("a.test", "/forkbomb?seconds=3", timeout=30))
        time.sleep(0.5)
        during = rps(h, "b.test", 2.0)
        t.join(30)
        status, _, body = out["result"]
        forks, eagain = map(int, body.split())
        assert status == 200 and eagain > 0 and forks < 64, body
        assert h.get("b.test")[0] == 200 and h.get("a.test")[0] == 200
        print(f"\npids_max 64: {forks} forks, {eagain} refused (EAGAIN); pool b {before:.0f} "
              f"rps before, {during:.0f} during")
        assert during >= 0.5 * before, (before, during)
    finally:
        h.stop()


@pytest.mark.root
def test_cpus_pins_the_workers(tmp_path):
    h = Hostd(tmp_path, {"a": pool(["a.test"], {"cpus": "1"}), "b": pool(["b.test"])})
    h.start()
    try:
        started(h, "a", "b")
        pid = ready(h, "a")[0]["pid"]
        status = open(f"/proc/{pid}/status").read()
        assert re.search(r"^Cpus_allowed_list:\s*1$", status, re.M), status
        assert h.get("a.test", "/cpus")[2] == b"1"
        assert h.get("b.test", "/cpus")[2] != b"1"
    finally:
        h.stop()


@pytest.mark.root
def test_cpu_max_throttles_a_hog(tmp_path):
    h = Hostd(tmp_path, {"a": pool(["a.test"], {"cpu_max": "20%"})})
    h.start()
    try:
        started(h, "a")
        status, _, body = h.get("a.test", "/burn?seconds=5", timeout=30)
        cpu, wall = map(float, body.split())
        print(f"\ncpu_max 20%: the hog got {cpu:.2f} s of CPU in {wall:.2f} s "
              f"({100 * cpu / wall:.1f}%)")
        assert status == 200 and cpu / wall <= 0.25, body
    finally:
        h.stop()


@pytest.mark.root
@pytest.mark.parametrize("action", ["kill", "recycle"])
def test_cpu_action_acts_after_cpu_interval(tmp_path, action):
    h = Hostd(tmp_path, {"a": pool(["a.test"], {"cpu_max": "20%", "cpu_action": action,
                                               "cpu_interval": "2s"},
                                   health={"shutdown_limit": "3s"})})
    h.start()
    try:
        started(h, "a")
        old = ready(h, "a")[0]["pid"]
        t0 = time.monotonic()
        t, out = in_background(lambda: h.get("a.test", "/burn?seconds=8", timeout=30))
        h.wait_for(lambda: events(h, "cpu_limit", POOL="a", ACTION=action), timeout=15,
                   what="cpu_limit")
        acted = time.monotonic() - t0
        h.wait_for(lambda: [w for w in ready(h, "a") if w["pid"] != old], timeout=20,
                   what="a new worker")
        t.join(30)
        if action == "kill":
            assert "error" in out, out          # the hog's request died with its worker
            assert not events(h, "crash", POOL="a")
        else:
            assert h.pool("a")["recycles"].get("cpu", 0) >= 1
            assert events(h, "recycle", POOL="a", REASON="cpu")
        print(f"\ncpu_action {action}: acted {acted:.1f} s after the hog started")
        assert 2.0 <= acted <= 6.0, acted
        assert h.get("a.test")[0] == 200
    finally:
        h.stop()


@pytest.mark.root
def test_reload_changes_limits_and_a_refused_limit_fails_the_pool(tmp_path):
    import signal
    h = Hostd(tmp_path, {"a": pool(["a.test"], {"cpus": "1"}), "b": pool(["b.test"])})
    h.start()
    try:
        started(h, "a", "b")
        # cpus 1 -> 0 with the old worker's cgroup still there (v1: children follow)
        h.write_pool("a", pool(["a.test"], {"cpus": "0"}))
        h.signal(signal.SIGHUP)
        h.wait_for(lambda: [w for w in ready(h, "a") if w["generation"] == 2], timeout=20,
                   what="the new worker")
        assert h.get("a.test", "/cpus")[2] == b"0"
        # a cap below what the pool holds: the kernel refuses it (EBUSY), the pool fails
        assert h.get("b.test", "/alloc?mb=64")[0] == 200
        h.write_pool("b", pool(["b.test"], {"memory_max": "16M"}))
        h.signal(signal.SIGHUP)
        h.wait_for(lambda: h.pool("b")["state"] == "failed", timeout=20, what="b failed")
        err = events(h, "config_error", POOL="b")[-1]
        assert "b.toml" in err and "limits.memory_max" in err and "memory." in err, err
        assert h.get("a.test")[0] == 200
        assert h.get("b.test")[0] == 503
    finally:
        h.stop()


# --- the logic, against a fake cgroup (both backends' file names) ----------------------
from kernel.cgroups import _V2Cgroup  # noqa: E402


class _FakeCg(_V2Cgroup):
    """The real v2 backend's methods over a dict of its interface files."""

    def __init__(self, files=None, refuse=()):
        super().__init__("/hostd/pool-a", {"unified": "/fake/pool-a"})
        self.files, self.refuse = dict(files or {}), set(refuse)

    def write(self, name, value):
        if name in self.refuse:
            raise OSError(22, "Invalid argument", f"/fake/pool-a/{name}")
        self.files[name] = value

    def read(self, name):
        return self.files[name]


class _FakeTree:
    def __init__(self, version, cg):
        self.version, self.cg = version, cg

    def pool(self, name):
        return self.cg


def test_v2_files_and_switching_off_on_reload():
    from hostd.config import Limits
    from hostd.poollimits import PoolLimits
    cg = _FakeCg({"cpu.stat": "usage_usec 0\n"})
    pl = PoolLimits(_FakeTree(2, cg), "a")
    pl.apply(Limits(memory_max=512 << 20, memory_high=400 << 20, cpus="1", cpu_max=50,
                    pids_max=256), "a.toml")
    del cg.files["cpu.stat"]
    assert cg.files == {"memory.max": str(512 << 20), "memory.high": str(400 << 20),
                        "cpuset.cpus": "1", "cpu.max": "50000 100000", "pids.max": "256"}
    cg.files["cpu.stat"] = "usage_usec 0\n"
    pl.apply(Limits(cpu_max=150, cpu_action="kill"), "a.toml")   # kill: no quota
    del cg.files["cpu.stat"]
    assert cg.files == {"memory.max": "max", "memory.high": "max", "cpuset.cpus": "\n",
                        "cpu.max": "max 100000", "pids.max": "max"}


def test_refused_limit_names_file_key_and_cgroup_file():
    from hostd.config import Limits
    from hostd.poollimits import LimitError, PoolLimits
    pl = PoolLimits(_FakeTree(2, _FakeCg(refuse={"pids.max"})), "a")
    with pytest.raises(LimitError) as e:
        pl.apply(Limits(pids_max=10), "/etc/hostd/pools.d/a.toml")
    assert str(e.value).startswith("/etc/hostd/pools.d/a.toml: limits.pids_max: cgroup v2 ")
    assert "/fake/pool-a/pids.max" in str(e.value)


def test_cpu_over_needs_a_full_window_and_then_restarts():
    from hostd.config import Limits
    from hostd.poollimits import PoolLimits
    cg = _FakeCg({"cpu.stat": "usage_usec 0\n"})
    pl = PoolLimits(_FakeTree(2, cg), "a")
    lim = Limits(cpu_max=50, cpu_action="recycle", cpu_interval=3.0)
    pl.apply(lim, "a.toml")
    got = []
    for t in range(10):                      # 80% of one CPU, sampled once a second
        cg.files["cpu.stat"] = f"usage_usec {t * 800_000}\n"
        got.append(pl.cpu_over(lim, 100.0 + t))
    assert got[:3] == [None] * 3 and round(got[3]) == 80
    assert got[4:7] == [None] * 3 and round(got[7]) == 80   # a new window after acting
    quiet = Limits(cpu_max=90, cpu_action="kill", cpu_interval=3.0)
    pl.apply(quiet, "a.toml")
    assert all(pl.cpu_over(quiet, 200.0 + t) is None for t in range(6))
