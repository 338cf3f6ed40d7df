"""kernel/cgroups.py against the real kernel: real cgroups, real processes.

Every test works in a base of its own with a unique name, created only below this
process's own cgroup (per hierarchy), and removes everything it created, even on failure.

Backends:
* "auto": whatever detect() picks here (v1 on a hybrid host, v2 on a systemd host/VM).
  v1 gets a unique base name; v2 gets a unique `root=` below our own cgroup.
* "v2": detect(version=2) on the unified hierarchy even when it has no resource
  controllers (hybrid host): processes, cgroup.kill, freeze and move work there, limits
  must fail loudly.
"""
from __future__ import annotations

import errno
import os
import posixpath
import signal
import subprocess
import sys
import time
import uuid

import pytest

from kernel import cgroups
from kernel.cgroups import CgroupUnavailable, detect

pytestmark = pytest.mark.root

PREFIX = "hostd-test-"


# --------------------------------------------------------------------------- helpers

def _own_v2() -> cgroups.Hierarchy | None:
    text = open("/proc/self/cgroup").read()
    mounts = cgroups.parse_mountinfo(open("/proc/self/mountinfo").read())
    return cgroups._find_hierarchies(text, mounts).get("")


def _rm_tree(top: str) -> None:
    """rmdir `top` and everything below it, leaves first; already gone is fine."""
    if not os.path.isdir(top):
        return
    for dirpath, _d, _f in os.walk(top, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass


def _kill_tree_procs(top: str) -> None:
    """SIGKILL what is left in a test cgroup (only used when a test failed midway)."""
    if not os.path.isdir(top):
        return
    for dirpath, _d, _f in os.walk(top):
        for pid in cgroups._read_pids(posixpath.join(dirpath, "cgroup.procs")):
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Env:
    """One test's tree plus everything to undo."""

    def __init__(self, tree: cgroups.CgroupTree, created: list[str]):
        self.tree = tree
        self.created = created          # top directories this test owns (removed at the end)
        self.procs: list[subprocess.Popen] = []

    def spawn(self, cg: cgroups.Cgroup | None, code: str, **kw) -> subprocess.Popen:
        """A python child that joins `cg` (each procs file, "0" = itself) before it runs
        anything, through preexec_fn."""
        files = cg.procs_files() if cg is not None else []

        def join():
            for f in files:
                with open(f, "w") as fh:
                    fh.write("0")
        p = subprocess.Popen([sys.executable, "-c", code], preexec_fn=join,
                             stdout=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def expected_paths(self, cg: cgroups.Cgroup) -> dict[str, str]:
        """{hierarchy key: path as /proc/<pid>/cgroup shows it} for cg."""
        t = self.tree
        hier = t.hierarchies if t.version == 1 else {"unified": t.hierarchy}
        out = {}
        for key, d in cg.dirs.items():
            m = hier[key].mount
            out[key] = m.root.rstrip("/") + d[len(m.mountpoint):] or "/"
        return out

    def in_cgroup(self, pid: int, cg: cgroups.Cgroup) -> bool:
        proc = cgroups.parse_proc_cgroup(open(f"/proc/{pid}/cgroup").read())
        for key, path in self.expected_paths(cg).items():
            ctrl = "" if key == "unified" else key.split(",")[0]
            if proc.get(ctrl) != path:
                return False
        return True


def _make_env(kind: str) -> Env:
    tag = PREFIX + uuid.uuid4().hex[:10]
    if kind == "auto":
        try:
            tree = detect(name=tag)
        except CgroupUnavailable as e:
            pytest.skip(f"no usable cgroups here: {e}")
        if tree.version == 1:
            return Env(tree, list(tree.dirs.values()))
        kind = "v2"                               # a real v2 host: same as below
    h = _own_v2()
    if h is None:
        pytest.skip("no cgroup2 hierarchy holds this process")
    root = h.own.rstrip("/") + "/" + tag
    d = h.dir(root)
    os.mkdir(d)
    try:
        tree = detect(root=root, version=2)
    except BaseException:
        os.rmdir(d)
        raise
    return Env(tree, [d])


@pytest.fixture(params=["auto", "v2"])
def env(request):
    e = _make_env(request.param)
    try:
        yield e
    finally:
        for p in e.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
        try:
            e.tree.teardown()
        finally:
            for top in e.created:
                _kill_tree_procs(top)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    try:
                        _rm_tree(top)
                        break
                    except OSError:
                        time.sleep(0.05)
            left = [top for top in e.created if os.path.exists(top)]
            assert not left, f"test left cgroups behind: {left}"


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for PID 1 or a subreaper to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_line(p: subprocess.Popen) -> str:
    line = p.stdout.readline()
    assert line, f"child exited early ({p.poll()})"
    return line.strip()


SLEEPER = "import sys, time; print('up', flush=True); time.sleep(600)"

# the spawned process double-forks a daemon (fork, setsid, fork, middle exits) and prints
# the daemon's pid; the daemon is then no child of anything we know
DAEMONIZER = r"""
import os, sys, time
r, w = os.pipe()
mid = os.fork()
if mid == 0:
    os.setsid()
    d = os.fork()
    if d == 0:
        os.close(r); os.write(w, b"%d\n" % os.getpid()); os.close(w)
        time.sleep(600); os._exit(0)
    os._exit(0)
os.close(w)
os.waitpid(mid, 0)
print(os.read(r, 64).decode().strip(), flush=True)
time.sleep(600)
"""


# --------------------------------------------------------------------------- tests

def test_worker_cgroup_joined_before_exec(env):
    t = env.tree
    t.setup()
    w = t.worker("a", 3)
    assert w.path == t.path.rstrip("/") + "/pool-a/worker-3"
    assert w.exists() and all(f.endswith("/cgroup.procs") for f in w.procs_files())
    assert len(w.procs_files()) == len(set(w.procs_files())) == len(w.dirs)
    p = env.spawn(w, SLEEPER)
    assert _wait_line(p) == "up"
    assert env.in_cgroup(p.pid, w), open(f"/proc/{p.pid}/cgroup").read()
    assert w.pids() == [p.pid]
    assert t.pool("a").pids() == [p.pid], "pids() is recursive"
    assert os.getpid() not in w.pids()


def test_attach_moves_a_running_process(env):
    t = env.tree
    t.setup()
    w = t.worker("a", 1)
    p = env.spawn(None, SLEEPER)
    _wait_line(p)
    w.attach(p.pid)
    assert env.in_cgroup(p.pid, w) and w.pids() == [p.pid]
    with pytest.raises(OSError) as err:
        w.attach(2 ** 22 + 12345)           # above pid_max: no such process
    assert "cgroup.procs" in str(err.value)


@pytest.mark.parametrize("use_cgroup_kill", [True, False], ids=["native", "freeze"])
def test_kill_gets_double_forked_daemon_and_nothing_else(env, use_cgroup_kill, monkeypatch):
    t = env.tree
    if t.version == 1 and not use_cgroup_kill:
        pytest.skip("v1 always freezes; one run is enough")
    monkeypatch.setattr(cgroups._V2Cgroup, "use_cgroup_kill", use_cgroup_kill)
    t.setup()
    w = t.worker("a", 1)
    sibling = t.worker("a", 2)
    p = env.spawn(w, DAEMONIZER)
    daemon = int(_wait_line(p))
    s = env.spawn(sibling, SLEEPER)
    outside = env.spawn(None, SLEEPER)
    _wait_line(s), _wait_line(outside)
    assert daemon != p.pid and _alive(daemon)
    assert open(f"/proc/{daemon}/stat").read().rsplit(")", 1)[1].split()[1] != str(p.pid), \
        "the daemon is not the spawned process's child"
    assert sorted(w.pids()) == sorted([p.pid, daemon])

    t0 = time.monotonic()
    assert w.kill(timeout=5) is True
    took = time.monotonic() - t0
    assert w.pids() == []
    assert not _alive(daemon), "double-forked daemon survived"
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert _alive(s.pid) and _alive(outside.pid) and _alive(os.getpid())
    assert sibling.pids() == [s.pid]
    assert took < 2, took
    w.remove()
    assert not any(os.path.exists(d) for d in w.dirs.values())
    assert w.kill() is True, "killing a removed cgroup is a no-op"


def test_kill_wins_against_a_process_forking_all_the_time(env):
    t = env.tree
    t.setup()
    w = t.worker("a", 1)
    forker = ("import os, time\nprint('up', flush=True)\n"
              "while True:\n"
              "    try:\n"
              "        if os.fork() == 0:\n"
              "            time.sleep(600); os._exit(0)\n"
              "    except OSError:\n"
              "        pass\n"
              "    time.sleep(0.001)\n")
    p = env.spawn(w, forker)
    _wait_line(p)
    time.sleep(0.3)
    n = len(w.pids())
    assert n > 10, n
    assert w.kill(timeout=5) is True
    assert w.pids() == []
    p.wait(timeout=5)


def test_write_and_read_limits(env):
    t = env.tree
    t.setup()
    w = t.worker("a", 1)
    v1 = t.version == 1
    enabled = set(t.enabled)
    mem = "memory.limit_in_bytes" if v1 else "memory.max"
    cases = [("pids", "pids.max", "17", "17"),
             ("memory", mem, str(512 << 20), str(512 << 20)),
             ("cpuset", "cpuset.cpus", "0", "0")]
    for ctrl, f, value, back in cases:
        if ctrl in enabled:
            w.write(f, value)
            assert w.read(f).strip() == back
        else:
            # v2 without that controller: the file is absent and that is an error
            with pytest.raises(FileNotFoundError) as err:
                w.write(f, value)
            assert f in str(err.value)
            with pytest.raises(FileNotFoundError):
                w.read(f)
    # a file of the other backend does not exist here: error naming it, never ignored
    other = "memory.max" if v1 else "memory.limit_in_bytes"
    with pytest.raises(OSError) as err:
        w.write(other, "1048576")
    assert err.value.errno == errno.ENOENT and other in str(err.value)
    with pytest.raises(OSError) as err:
        w.write("hugetlb.2MB.limit_in_bytes" if v1 else "no.such_file", "1")
    assert err.value.errno == errno.ENOENT
    if "pids" in enabled:
        with pytest.raises(OSError) as err:         # the kernel refuses the value
            w.write("pids.max", "-5")
        assert err.value.errno == errno.EINVAL and "pids.max" in str(err.value)
    if v1:
        with pytest.raises(OSError) as err:
            w.write("cgroup.procs", "0")
        assert err.value.errno == errno.EINVAL and "ambiguous" in str(err.value)
    with pytest.raises(ValueError):
        w.write("../escape", "1")


def test_pids_limit_is_enforced(env):
    t = env.tree
    t.setup()
    if t.version == 2 and "pids" not in t.enabled:
        pytest.skip("the pids controller is not available on this v2 hierarchy")
    w = t.worker("a", 1)
    w.write("pids.max", "4")
    code = ("import os, time\nok = fail = 0\n"
            "for _ in range(10):\n"
            "    try:\n"
            "        if os.fork() == 0:\n"
            "            time.sleep(600); os._exit(0)\n"
            "        ok += 1\n"
            "    except BlockingIOError:\n"
            "        fail += 1\n"
            "print(ok, fail, flush=True)\ntime.sleep(600)\n")
    p = env.spawn(w, code)
    ok, fail = map(int, _wait_line(p).split())
    assert (ok, fail) == (3, 7)                  # 1 + 3 children = 4
    assert w.kill() is True


def test_memory_limit_is_enforced(env):
    t = env.tree
    t.setup()
    if t.version == 2 and "memory" not in t.enabled:
        pytest.skip("the memory controller is not available on this v2 hierarchy")
    w = t.worker("a", 1)
    w.write("memory.limit_in_bytes" if t.version == 1 else "memory.max", str(64 << 20))
    if t.version == 1 and os.path.exists(w.dirs["memory"] + "/memory.memsw.limit_in_bytes"):
        w.write("memory.memsw.limit_in_bytes", str(64 << 20))   # no escape into swap
    elif t.version == 2:
        try:
            w.write("memory.swap.max", "0")
        except FileNotFoundError:
            pass
    p = env.spawn(w, "b = bytearray(256 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
                     "print('survived', flush=True)")
    assert p.wait(timeout=30) == -signal.SIGKILL, "the OOM killer ends it"


def test_cpuset_is_copied_from_the_parent_so_attach_works(env):
    t = env.tree
    if t.version != 1:
        pytest.skip("v1 cpuset detail")
    t.setup()
    w = t.worker("a", 1)
    parent = posixpath.dirname(t.dirs["cpuset"])
    for f in ("cpuset.cpus", "cpuset.mems"):
        assert w.read(f).strip() == open(f"{parent}/{f}").read().strip() != ""


def test_move_to_orphans_keeps_the_process(env):
    t = env.tree
    t.setup()
    w = t.worker("a", 7)
    p = env.spawn(w, DAEMONIZER)
    daemon = int(_wait_line(p))
    orphans = t.orphans("a")
    assert orphans.path == t.path.rstrip("/") + "/pool-a/orphans"
    new = w.move_to(orphans)
    assert new.path == orphans.path + "/worker-7"
    assert not any(os.path.exists(d) for d in w.dirs.values()), "old cgroup removed"
    assert sorted(new.pids()) == sorted([p.pid, daemon])
    assert p.poll() is None and _alive(daemon)
    assert env.in_cgroup(p.pid, new) and env.in_cgroup(daemon, new)
    # a new worker with the same id can start meanwhile
    again = t.worker("a", 7)
    assert again.pids() == [] and again != new
    assert t.pool("a").kill() is True
    assert not _alive(daemon)


def test_teardown_removes_everything_created(env):
    t = env.tree
    t.setup()
    t.worker("a", 1), t.worker("a", 2), t.worker("b", 1)
    for cg in (t.worker("a", 1), t.worker("b", 1)):
        env.spawn(cg, DAEMONIZER)
    moved = t.worker("a", 2)
    env.spawn(moved, SLEEPER)
    moved.move_to(t.orphans("a"))
    for p in env.procs:
        _wait_line(p)
    assert [c.path.rsplit("/", 1)[1] for c in t.pools()] == ["pool-a", "pool-b"]
    t.teardown()
    assert t.pools() == []
    for p in env.procs:
        assert p.wait(timeout=5) == -signal.SIGKILL
    for d in t.dirs.values():
        if t.version == 1:
            assert not os.path.exists(d), "v1 removes its base"
        else:
            left = sorted(n for n in os.listdir(d) if os.path.isdir(posixpath.join(d, n)))
            assert left == ["supervisor"], "v2 leaves the base and the supervisor leaf"
    t.teardown()                                 # idempotent


def test_pool_names_must_be_one_component(env):
    t = env.tree
    t.setup()
    for bad in ("", "a/b", "..", "."):
        with pytest.raises(ValueError):
            t.pool(bad)
        with pytest.raises(ValueError):
            t.pool("a").child(bad)
    assert t.pool("x") == t.pool("x"), "idempotent"


def test_v2_setup_moves_the_base_processes_into_a_supervisor_leaf():
    e = _make_env("v2")
    t = e.tree
    try:
        d = t.dirs["unified"]
        p = e.spawn(cgroups._V2Cgroup(t.path, {"unified": d}), SLEEPER)   # a process in the base
        _wait_line(p)
        t.setup()
        assert cgroups._read_pids(d + "/cgroup.procs") == []
        assert t.supervisor.pids() == [p.pid]
        assert e.in_cgroup(p.pid, t.supervisor)
        assert set(t.enabled) <= set(cgroups.V2_WANTED)
        assert t.supervisor.kill() is True
    finally:
        for p in e.procs:
            p.kill(), p.wait(), p.stdout.close()
        _kill_tree_procs(e.created[0])
        _rm_tree(e.created[0])
    assert not os.path.exists(e.created[0])


# --------------------------------------------------------------------------- detect()

def test_detect_refuses_a_root_outside_our_cgroup_or_missing():
    text = open("/proc/self/cgroup").read()
    mounts = cgroups.parse_mountinfo(open("/proc/self/mountinfo").read())
    hier = cgroups._find_hierarchies(text, mounts)
    try:
        tree = detect()
    except CgroupUnavailable as e:
        pytest.skip(f"no usable cgroups here: {e}")
    owns = ({h.own for h in tree.hierarchies.values()} if tree.version == 1
            else {tree.hierarchy.own})
    deepest = max(owns, key=len)
    missing = deepest.rstrip("/") + "/" + PREFIX + "missing-" + uuid.uuid4().hex[:6]
    with pytest.raises(CgroupUnavailable) as err:
        detect(root=missing)
    assert missing in str(err.value)
    with pytest.raises(CgroupUnavailable):
        detect(root="relative/path")
    outside = [h.own for h in hier.values() if h.own != "/"]
    if not outside:
        pytest.skip("this process is in the root cgroup everywhere: nothing is outside it")
    sibling = posixpath.dirname(outside[0]).rstrip("/") + "/" + PREFIX + "sibling"
    with pytest.raises(CgroupUnavailable) as err:
        detect(root=sibling)
    assert "not inside" in str(err.value) and sibling in str(err.value)


def test_detect_v1_root_positive():
    try:
        tree = detect()
    except CgroupUnavailable as e:
        pytest.skip(f"no usable cgroups here: {e}")
    if tree.version != 1:
        pytest.skip("v1 only (the v2 tests above all run with root=)")
    owns = {h.own for h in tree.hierarchies.values()}
    if len(owns) != 1:
        pytest.skip(f"our v1 cgroups differ per hierarchy ({sorted(owns)}): a root the same "
                    "in every hierarchy would need directories outside hostd's business")
    root = owns.pop().rstrip("/") + "/" + PREFIX + uuid.uuid4().hex[:10]
    dirs = [h.dir(root) for h in tree.hierarchies.values()]
    try:
        for d in dirs:
            os.mkdir(d)
        t = detect(root=root)
        t.setup()
        w = t.worker("a", 1)
        assert w.path == "/" + posixpath.basename(root) + "/pool-a/worker-1"
        t.teardown()
        assert all(os.path.isdir(d) for d in dirs), "a given root is left in place"
    finally:
        for d in dirs:
            _rm_tree(d)


def test_supervisor_kill_reaches_a_worker_not_yet_in_its_cgroup(env):
    """A worker joins its cgroup during its boot. hostd stopping while a replacement was
    starting used to kill only the (still empty) cgroup: the worker lived on, and the
    stop waited out its shutdown limit (30 s in the test harness, 1 run in 3 of
    test_garden_request_recycles_are_spread)."""
    from types import SimpleNamespace

    from hostd.supervisor.processes import kill_tree
    env.tree.setup()
    cg = env.tree.worker("p", 1)
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    env.procs.append(p)
    assert cg.pids() == []
    kill_tree(SimpleNamespace(pid=p.pid, cgroup=cg, pool=SimpleNamespace(name="p")))
    assert p.wait(timeout=5) == -signal.SIGKILL


def test_stale_bases_are_the_dead_supervisors_siblings_only():
    """A SIGKILLed hostd leaves its v1 base `hostd.<pid>` beside ours (its workers die
    with it; a stop would have torn the base down). stale_bases lists the bases of
    supervisors that no longer run, never our own or a live one's, and they can be
    removed; Placement does that at start."""
    prefix = PREFIX + uuid.uuid4().hex[:6] + "."
    try:
        mine = detect(name=prefix + str(os.getpid()))
    except CgroupUnavailable as e:
        pytest.skip(f"no usable cgroups here: {e}")
    if mine.version != 1:
        pytest.skip("v2 has one base, the supervisor's own cgroup: nothing to sweep")
    dead = subprocess.Popen(["true"])
    dead.wait()                                   # a pid that no longer runs
    live = detect(name=prefix + "1")              # pid 1 always runs
    gone = detect(name=prefix + str(dead.pid))
    made = []
    try:
        for t in (mine, live, gone):
            t.setup()
            made += list(t.dirs.values())
        gone.worker("p", 1)                        # what the dead one left: pool, worker
        partial = detect(name=prefix + str(dead.pid + 1 if not os.path.exists(
            f"/proc/{dead.pid + 1}") else 999_999_999))
        partial.setup()
        made += list(partial.dirs.values())
        some = sorted(partial.dirs)[0]             # left in one hierarchy only
        for key, d in partial.dirs.items():
            if key != some:
                os.rmdir(d)
        stale = [cg for cg in mine.stale_bases(prefix) if cg.path != partial.path]
        (half,) = [cg for cg in mine.stale_bases(prefix) if cg.path == partial.path]
        assert list(half.dirs) == [some]
        half.remove()                              # needs no freezer (v1 kill would)
        assert not os.path.exists(partial.dirs[some])
        assert [cg.path for cg in stale] == [gone.path]
        assert set(stale[0].dirs.values()) == set(gone.dirs.values())
        assert live.stale_bases(prefix) == [] or \
            [cg.path for cg in live.stale_bases(prefix)] == [gone.path]
        stale[0].remove()
        assert not any(os.path.exists(d) for d in gone.dirs.values())
        assert all(os.path.isdir(d) for d in mine.dirs.values())
        assert mine.stale_bases(prefix) == []
    finally:
        for top in made:
            _rm_tree(top)
