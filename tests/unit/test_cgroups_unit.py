"""kernel/cgroups.py path logic on a fake filesystem: parsing, backend choice, directories,
and which files each backend's resource methods write and read.

No root and no real cgroups: detect() takes the texts of /proc/self/cgroup and
/proc/self/mountinfo, whose mount points here are directories under tmp_path; the
interface files are plain files the tests create (empty, as a write does not truncate).
"""
from __future__ import annotations

import errno
import os

import pytest

from kernel import cgroupfs as cgroups  # the backends: backend(), the _write_file they use
from kernel.cgroups import CgroupUnavailable, detect, parse_mountinfo, parse_proc_cgroup
from kernel.memevents import Inotify

HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/abc
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

V2_CGROUP = "0::/system.slice/hostd.service\n"


def mountinfo(base, lines):
    """mountinfo text: lines of (mount root, mount point below base, fstype, super opts)."""
    out = ["22 1 0:21 / /proc rw,nosuid - proc proc rw"]
    for i, (root, where, fstype, opts) in enumerate(lines):
        out.append(f"{30 + i} 23 0:{40 + i} {root} {base}/{where} rw,relatime - "
                   f"{fstype} {fstype} {opts}")
    return "\n".join(out) + "\n"


def mk(path, files=None):
    os.makedirs(path, exist_ok=True)
    for name, text in (files or {}).items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)


@pytest.fixture
def hybrid(tmp_path):
    base = str(tmp_path)
    for c in ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "systemd"):
        mk(f"{base}/{c}")
    mk(f"{base}/memory/process_api/abc")
    mk(f"{base}/unified", {"cgroup.controllers": "hugetlb\n"})
    mi = mountinfo(base, [("/", c, "cgroup", f"rw,{c}") for c in
                          ("cpu", "cpuacct", "cpuset", "memory", "freezer", "pids")]
                   + [("/", "systemd", "cgroup", "rw,name=systemd"),
                      ("/", "unified", "cgroup2", "rw")])
    return base, mi


@pytest.fixture
def v2host(tmp_path):
    base = str(tmp_path)
    mk(f"{base}/cg", {"cgroup.controllers": "cpuset cpu io memory pids\n"})
    mk(f"{base}/cg/system.slice", {"cgroup.controllers": "cpuset cpu io memory pids\n",
                                   "cgroup.type": "domain\n"})
    mk(f"{base}/cg/system.slice/hostd.service",
       {"cgroup.controllers": "cpu memory pids\n", "cgroup.type": "domain\n"})
    return base, mountinfo(base, [("/", "cg", "cgroup2", "rw,nsdelegate")])


# --------------------------------------------------------------------------- parsing

def test_parse_proc_cgroup_hybrid_comounted_named_and_v2():
    got = parse_proc_cgroup("2:cpu,cpuacct:/a\n1:name=systemd:/s\n0::/u\n\n")
    assert got == {"cpu": "/a", "cpuacct": "/a", "name=systemd": "/s", "": "/u"}
    assert parse_proc_cgroup(HYBRID_CGROUP)["memory"] == "/process_api/abc"
    assert parse_proc_cgroup("0::/path:with:colons\n") == {"": "/path:with:colons"}
    with pytest.raises(ValueError):
        parse_proc_cgroup("garbage\n")


def test_parse_mountinfo_keeps_cgroup_mounts_and_unescapes():
    text = ("22 1 0:21 / /proc rw - proc proc rw\n"
            "35 31 0:32 /sub /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
    m1, m2 = parse_mountinfo(text)
    assert (m1.mountpoint, m1.root, m1.fstype) == ("/sys/fs/cgroup/mem ory", "/sub", "cgroup")
    assert "memory" in m1.options
    assert (m2.mountpoint, m2.fstype) == ("/sys/fs/cgroup/unified", "cgroup2")


# --------------------------------------------------------------------------- detect

def test_hybrid_picks_v1_with_base_below_own_cgroup_in_each_hierarchy(hybrid):
    base, mi = hybrid
    t = detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mi)
    assert t.version == 1 and t.path == "/hostd"
    assert t.dirs == {"memory": f"{base}/memory/process_api/abc/hostd",
                      "cpu": f"{base}/cpu/hostd", "cpuset": f"{base}/cpuset/hostd",
                      "pids": f"{base}/pids/hostd", "freezer": f"{base}/freezer/hostd",
                      "cpuacct": f"{base}/cpuacct/hostd"}
    w = t._base.child("pool-a").child("worker-3")
    assert w.path == "/hostd/pool-a/worker-3"
    assert w.dirs["memory"] == f"{base}/memory/process_api/abc/hostd/pool-a/worker-3"
    assert sorted(w.procs_files()) == sorted(d + "/cgroup.procs" for d in w.dirs.values())
    assert detect(name="x", proc_cgroup=HYBRID_CGROUP, mountinfo=mi).path == "/x"


def test_v1_files_are_chosen_by_prefix_and_missing_ones_are_errors(hybrid):
    base, mi = hybrid
    w = detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mi)._base.child("pool-a")
    assert w._file("memory.limit_in_bytes") == w.dirs["memory"] + "/memory.limit_in_bytes"
    assert w._file("cpuset.cpus") == w.dirs["cpuset"] + "/cpuset.cpus"
    assert w._file("cpuacct.usage") == w.dirs["cpuacct"] + "/cpuacct.usage"
    with pytest.raises(OSError) as err:
        w.write("blkio.weight", "100")
    assert err.value.errno == errno.ENOENT and "blkio.weight" in str(err.value)
    for ambiguous in ("cgroup.procs", "tasks", "notify_on_release"):
        with pytest.raises(OSError) as err:
            w.read(ambiguous)
        assert err.value.errno == errno.EINVAL
    mk(w.dirs["memory"])                       # the dir exists, the v2 file does not
    with pytest.raises(FileNotFoundError) as err:
        w.write("memory.max", "1")
    assert err.value.filename == w.dirs["memory"] + "/memory.max"


def test_comounted_cpu_cpuacct_is_one_hierarchy(tmp_path):
    base = str(tmp_path)
    for c in ("memory", "cpu,cpuacct", "cpuset", "pids", "freezer"):
        mk(f"{base}/{c}")
    mi = mountinfo(base, [("/", c, "cgroup", f"rw,{c}") for c in
                          ("memory", "cpu,cpuacct", "cpuset", "pids", "freezer")])
    text = "5:memory:/\n4:cpu,cpuacct:/\n3:cpuset:/\n2:pids:/\n1:freezer:/\n"
    t = detect(proc_cgroup=text, mountinfo=mi)
    assert sorted(t.dirs) == ["cpu,cpuacct", "cpuset", "freezer", "memory", "pids"]
    w = t._base.child("w")
    assert w._file("cpuacct.usage") == w._file("cpu.shares").replace("cpu.shares",
                                                                      "cpuacct.usage")
    assert len(w.procs_files()) == 5


def test_v2_host_base_is_our_own_cgroup(v2host):
    base, mi = v2host
    t = detect(proc_cgroup=V2_CGROUP, mountinfo=mi)
    assert t.version == 2 and t.path == "/hostd.service"
    assert t.dirs == {"unified": f"{base}/cg/system.slice/hostd.service"}
    assert not t._at_root
    w = t._base.child("pool-a").child("worker-1")
    assert w.path == "/hostd.service/pool-a/worker-1"
    assert w.procs_files() == [f"{base}/cg/system.slice/hostd.service/pool-a/worker-1"
                               "/cgroup.procs"]
    assert w._file("memory.max").endswith("/worker-1/memory.max")
    with pytest.raises(ValueError):
        w._file("../cgroup.procs")


def test_v2_mount_of_a_subtree_cgroup_namespace_or_bind(tmp_path):
    # the mount shows the hierarchy from /system.slice down: our path maps below it
    base = str(tmp_path)
    mk(f"{base}/cg", {"cgroup.controllers": "memory pids\n"})
    mk(f"{base}/cg/hostd.service", {"cgroup.controllers": "memory pids\n",
                                    "cgroup.type": "domain\n"})
    mi = mountinfo(base, [("/system.slice", "cg", "cgroup2", "rw")])
    t = detect(proc_cgroup=V2_CGROUP, mountinfo=mi)
    assert t.dirs == {"unified": f"{base}/cg/hostd.service"}
    # a mount of some other subtree does not hold us: no backend
    mi = mountinfo(base, [("/user.slice", "cg", "cgroup2", "rw")])
    with pytest.raises(CgroupUnavailable):
        detect(proc_cgroup=V2_CGROUP, mountinfo=mi)


def test_v2_root_override_must_be_inside_and_exist(v2host):
    base, mi = v2host
    own = "/system.slice/hostd.service"
    mk(f"{base}/cg{own}/sub", {"cgroup.type": "domain\n"})
    t = detect(root=own + "/sub", proc_cgroup=V2_CGROUP, mountinfo=mi)
    assert t.dirs == {"unified": f"{base}/cg{own}/sub"} and t.path == "/sub"
    with pytest.raises(CgroupUnavailable) as err:
        detect(root="/system.slice", proc_cgroup=V2_CGROUP, mountinfo=mi)
    assert err.value.errno == errno.EPERM and "/system.slice" in str(err.value)
    with pytest.raises(CgroupUnavailable) as err:
        detect(root=own + "/nope", proc_cgroup=V2_CGROUP, mountinfo=mi)
    assert own + "/nope" in str(err.value)
    with pytest.raises(CgroupUnavailable):
        detect(root="sub", proc_cgroup=V2_CGROUP, mountinfo=mi)
    with pytest.raises(CgroupUnavailable) as err:      # normalised before the check
        detect(root=own + "/../../x", proc_cgroup=V2_CGROUP, mountinfo=mi)
    assert "/x" in str(err.value)


def test_v1_root_override_is_checked_in_every_hierarchy(hybrid):
    base, mi = hybrid
    # /x is inside "/" for cpu etc. but not inside memory's /process_api/abc
    for c in ("memory", "cpu", "cpuacct", "cpuset", "pids", "freezer"):
        mk(f"{base}/{c}/x")
    with pytest.raises(CgroupUnavailable) as err:
        detect(root="/x", proc_cgroup=HYBRID_CGROUP, mountinfo=mi)
    assert "memory" in str(err.value) and "/process_api/abc" in str(err.value)
    # inside everywhere, but missing in some hierarchies
    mk(f"{base}/memory/process_api/abc/r")
    with pytest.raises(CgroupUnavailable) as err:
        detect(root="/process_api/abc/r", proc_cgroup=HYBRID_CGROUP, mountinfo=mi)
    assert "/process_api/abc/r" in str(err.value)
    for c in ("cpu", "cpuacct", "cpuset", "pids", "freezer"):
        mk(f"{base}/{c}/process_api/abc/r")
    t = detect(root="/process_api/abc/r", proc_cgroup=HYBRID_CGROUP, mountinfo=mi)
    assert t.path == "/r" and t.dirs["cpu"] == f"{base}/cpu/process_api/abc/r"
    assert not t._owns_base


def test_v2_wins_only_with_resource_controllers_and_can_be_forced(hybrid, v2host):
    base, mi = hybrid
    assert detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mi).version == 1
    forced = detect(version=2, proc_cgroup=HYBRID_CGROUP, mountinfo=mi)
    assert forced.version == 2 and forced.dirs == {"unified": f"{base}/unified"}
    assert forced._at_root, "no cgroup.type: the real root, nothing to move at setup"
    base2, mi2 = v2host
    with pytest.raises(CgroupUnavailable) as err:
        detect(version=1, proc_cgroup=V2_CGROUP, mountinfo=mi2)
    assert "memory" in str(err.value)


def test_nothing_mounted_is_a_clear_error(tmp_path):
    with pytest.raises(CgroupUnavailable) as err:
        detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mountinfo(str(tmp_path), []))
    msg = str(err.value)
    assert "no cgroup2" in msg and "memory" in msg and "freezer" in msg
    with pytest.raises(CgroupUnavailable):
        detect(version=2, proc_cgroup=HYBRID_CGROUP, mountinfo=mountinfo(str(tmp_path), []))
    with pytest.raises(ValueError):
        detect(version=3)
    with pytest.raises(ValueError):
        detect(name="a/b")


# --------------------------------------------------------------------------- resources

def files(d, *names, **texts):
    """Creates interface files in d: empty ones, and ones with a text."""
    mk(d, {**{n: "" for n in names}, **texts})


def taken(d, name):
    """What was written to the file since the last call (then empties it again)."""
    path = os.path.join(d, name)
    with open(path) as f:
        text = f.read()
    open(path, "w").close()
    return text


def test_backend_is_the_class_of_each_version(hybrid, v2host):
    assert cgroups.backend(1) is type(detect(proc_cgroup=HYBRID_CGROUP,
                                             mountinfo=hybrid[1])._base)
    assert cgroups.backend(2) is type(detect(proc_cgroup=V2_CGROUP, mountinfo=v2host[1])._base)
    with pytest.raises(ValueError):
        cgroups.backend(3)


def test_v2_limits_are_written_to_their_files_and_0_is_none(v2host):
    base, mi = v2host
    pool = detect(proc_cgroup=V2_CGROUP, mountinfo=mi)._base.child("pool-a")
    d = pool.dir
    files(d, "memory.max", "memory.high", "pids.max", "cpu.max", "cpuset.cpus")
    for n, text in ((512 << 20, str(512 << 20)), (0, "max")):
        pool.set_memory_max(n)
        pool.set_memory_high(n)
        assert taken(d, "memory.max") == text and taken(d, "memory.high") == text
    pool.set_pids_max(64)
    assert taken(d, "pids.max") == "64"
    pool.set_pids_max(0)
    assert taken(d, "pids.max") == "max"
    pool.set_cpu_quota(50_000, 100_000)
    assert taken(d, "cpu.max") == "50000 100000"
    pool.set_cpu_quota(0, 100_000)
    assert taken(d, "cpu.max") == "max 100000"
    pool.set_cpus("1-2")
    assert taken(d, "cpuset.cpus") == "1-2"
    pool.set_cpus("")                         # a newline: the parent's CPUs again
    assert taken(d, "cpuset.cpus") == "\n"
    for bad in (lambda: pool.set_memory_max(-1), lambda: pool.set_pids_max(-5),
                lambda: pool.set_cpu_quota(-1, 100_000), lambda: pool.set_cpu_quota(1, 0)):
        with pytest.raises(ValueError):
            bad()
    os.unlink(os.path.join(d, "pids.max"))
    with pytest.raises(FileNotFoundError) as err:
        pool.set_pids_max(10)
    assert err.value.filename == os.path.join(d, "pids.max")


def test_v2_counters(v2host):
    base, mi = v2host
    w = detect(proc_cgroup=V2_CGROUP, mountinfo=mi)._base.child("pool-a").child("worker-1")
    files(w.dir, **{"cpu.stat": "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 2\n",
                    "memory.events": "low 0\nhigh 4\nmax 2\noom 1\noom_kill 3\n",
                    "memory.events.local": "low 0\nhigh 0\nmax 5\noom 2\noom_kill 0\n"})
    assert w.cpu_usage_usec() == 1234567
    assert w.oom_kills() == 3 and w.memory_limit_hits() == 2
    files(w.dir, **{"cpu.stat": "nr_periods 0\n", "memory.events": "low 0\n"})
    with pytest.raises(OSError) as err:
        w.cpu_usage_usec()
    assert err.value.errno == errno.ENOENT
    assert err.value.filename == os.path.join(w.dir, "cpu.stat")
    assert w.oom_kills() == 0                 # a kernel without the counter
    os.unlink(os.path.join(w.dir, "memory.events.local"))
    with pytest.raises(FileNotFoundError) as err:
        w.memory_limit_hits()
    assert err.value.filename == os.path.join(w.dir, "memory.events.local")


def test_v2_memory_watch_writes_memory_high_and_shares_the_inotify(v2host):
    base, mi = v2host
    w = detect(proc_cgroup=V2_CGROUP, mountinfo=mi)._base.child("pool-a").child("worker-1")
    files(w.dir, "memory.high", **{"memory.events": "high 0\nmax 0\noom_kill 0\n"})
    with pytest.raises(ValueError):
        w.memory_watch(64 << 20, 128 << 20)
    assert taken(w.dir, "memory.high") == ""  # refused before writing anything
    ino, made = Inotify(), []
    try:
        watch = w.memory_watch(64 << 20, 128 << 20,
                               inotify=lambda: made.append(1) or ino)   # made on demand
        assert made == [1] and watch.shared_inotify and watch.fileno() == -1
        assert watch.directory == w.dir and watch.limit == 128 << 20
        assert taken(w.dir, "memory.high") == str(64 << 20)
        watch.close()
        watch = w.memory_watch(0, 128 << 20, inotify=ino)   # an Inotify itself; no high
        assert watch.shared_inotify and taken(w.dir, "memory.high") == ""
        watch.close()
    finally:
        ino.close()


def test_v1_limits_are_written_to_their_files_and_0_is_none(hybrid):
    base, mi = hybrid
    pool = detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mi)._base.child("pool-a")
    mem, cpu, pids = pool.dirs["memory"], pool.dirs["cpu"], pool.dirs["pids"]
    files(mem, "memory.limit_in_bytes", "memory.soft_limit_in_bytes")
    files(cpu, "cpu.cfs_period_us", "cpu.cfs_quota_us")
    files(pids, "pids.max")
    for n, text in ((256 << 20, str(256 << 20)), (0, "-1")):
        pool.set_memory_max(n)
        pool.set_memory_high(n)
        assert taken(mem, "memory.limit_in_bytes") == text
        assert taken(mem, "memory.soft_limit_in_bytes") == text
    pool.set_pids_max(0)
    assert taken(pids, "pids.max") == "max"
    pool.set_cpu_quota(150_000, 100_000)
    assert taken(cpu, "cpu.cfs_period_us") == "100000"
    assert taken(cpu, "cpu.cfs_quota_us") == "150000"
    pool.set_cpu_quota(0, 100_000)
    assert taken(cpu, "cpu.cfs_period_us") == "100000"
    assert taken(cpu, "cpu.cfs_quota_us") == "-1"
    with pytest.raises(ValueError):
        pool.set_cpu_quota(-2, 100_000)
    assert taken(cpu, "cpu.cfs_period_us") == ""          # refused before any write
    os.unlink(os.path.join(cpu, "cpu.cfs_quota_us"))      # the period goes first
    with pytest.raises(FileNotFoundError) as err:
        pool.set_cpu_quota(10_000, 100_000)
    assert err.value.filename == os.path.join(cpu, "cpu.cfs_quota_us")
    assert taken(cpu, "cpu.cfs_period_us") == "100000"


def test_v1_counters(hybrid):
    base, mi = hybrid
    w = detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mi)._base.child("pool-a")
    files(w.dirs["cpuacct"], **{"cpuacct.usage": "2500999000\n"})
    files(w.dirs["memory"], **{"memory.failcnt": "7\n", "memory.oom_control":
                               "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"})
    assert w.cpu_usage_usec() == 2_500_999            # ns -> µs
    assert w.oom_kills() == 2 and w.memory_limit_hits() == 7
    files(w.dirs["cpuacct"], **{"cpuacct.usage": "garbage\n"})
    with pytest.raises(ValueError):
        w.cpu_usage_usec()
    os.unlink(os.path.join(w.dirs["memory"], "memory.oom_control"))
    with pytest.raises(FileNotFoundError) as err:
        w.oom_kills()
    assert err.value.filename == os.path.join(w.dirs["memory"], "memory.oom_control")


def test_v1_cpus_widen_top_down_then_narrow_from_the_leaves(hybrid, monkeypatch):
    base, mi = hybrid
    t = detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mi)
    pool = t._base.child("pool-a")
    top, leaf = pool.dirs["cpuset"], pool.child("worker-1").dirs["cpuset"]
    files(t.dirs["cpuset"], **{"cpuset.cpus": "0-3\n", "cpuset.mems": "0\n"})
    for d in (top, leaf):
        files(d, **{"cpuset.cpus": "1\n", "cpuset.mems": "0\n"})
    writes = []
    real = cgroups._write_file

    def record(path, value):
        writes.append((os.path.relpath(path, top), value))
        open(path, "w").close()               # a real cgroup file replaces its value
        real(path, value)
    monkeypatch.setattr(cgroups, "_write_file", record)
    pool.set_cpus("2")
    assert writes == [("cpuset.mems", "0"), ("cpuset.cpus", "1,2"),
                      ("worker-1/cpuset.mems", "0"), ("worker-1/cpuset.cpus", "1,2"),
                      ("worker-1/cpuset.cpus", "2"), ("cpuset.cpus", "2")]
    writes.clear()
    pool.set_cpus("2")                        # already so: nothing written
    assert writes == []
    pool.set_cpus("")                         # "" = the parent's list, explicitly in v1
    assert writes[-1] == ("cpuset.cpus", "0-3")
    assert taken(leaf, "cpuset.cpus") == "0-3"
    os.unlink(os.path.join(t.dirs["cpuset"], "cpuset.mems"))
    with pytest.raises(FileNotFoundError) as err:
        pool.set_cpus("1")
    assert err.value.filename == os.path.join(t.dirs["cpuset"], "cpuset.mems")


def test_v1_memory_watch_is_on_the_memory_hierarchy_and_makes_no_inotify(hybrid):
    base, mi = hybrid
    w = detect(proc_cgroup=HYBRID_CGROUP, mountinfo=mi)._base.child("pool-a").child("w-1")
    d = w.dirs["memory"]
    files(d, "cgroup.event_control", **{"memory.usage_in_bytes": "0\n",
                                        "memory.oom_control": "oom_kill 0\n"})

    def no_inotify():
        raise AssertionError("v1 needs no inotify")
    watch = w.memory_watch(64 << 20, 128 << 20, inotify=no_inotify)
    try:
        assert not watch.shared_inotify and watch.fileno() >= 0
        assert watch.directory == d and watch.high == 64 << 20
        # the last registration (each one is a write of its own): the limit's threshold
        assert taken(d, "cgroup.event_control").endswith(f" {watch.near_limit()}")
    finally:
        watch.close()
