"""kernel/cgroups.py path logic on a fake filesystem: parsing, backend choice, directories.

No root and no real cgroups: detect() takes the texts of /proc/self/cgroup and
/proc/self/mountinfo, whose mount points here are directories under tmp_path.
"""
from __future__ import annotations

import errno
import os

import pytest

from kernel.cgroups import CgroupUnavailable, detect, parse_mountinfo, parse_proc_cgroup

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
