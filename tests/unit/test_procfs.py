"""kernel/procfs.py on the test process itself: CPU seconds, virtual size and RSS from
/proc/PID, and 0 for a pid that is falsy or not alive."""
from __future__ import annotations

import os
import time

import pytest

from kernel import procfs


def status_kib(field: str) -> int:
    """A `Field:  N kB` line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def never_a_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())              # pids are below pid_max


def test_cpu_seconds_follows_the_process_cpu_time():
    before = procfs.cpu_seconds(os.getpid())
    end = time.process_time() + 0.3
    while time.process_time() < end:      # burn 0.3 s of CPU
        pass
    after = procfs.cpu_seconds(os.getpid())
    assert isinstance(after, float)
    assert after - before >= 0.2, (before, after)
    # ticks (1/CLK_TCK) against the precise clock: close, not equal
    assert abs(after - time.process_time()) < 0.5, (after, time.process_time())


def test_rss_and_vmsize_match_proc_status_and_grow_with_touched_memory():
    pid = os.getpid()
    rss, vm = procfs.rss(pid), procfs.vmsize(pid)
    assert 0 < rss <= vm
    assert abs(rss - status_kib("VmRSS")) < max(rss // 10, 4 << 20)
    assert abs(vm - status_kib("VmSize")) < max(vm // 10, 4 << 20)
    block = bytearray(64 << 20)           # zero-filled: every page touched
    try:
        assert procfs.rss(pid) - rss >= 48 << 20
        assert procfs.vmsize(pid) - vm >= 60 << 20
    finally:
        del block


def test_unknown_or_falsy_pid_is_zero():
    for pid in (None, 0, never_a_pid()):
        assert procfs.cpu_seconds(pid) == 0.0
        assert procfs.vmsize(pid) == 0
        assert procfs.rss(pid) == 0


# --- kernel/psi.py -----------------------------------------------------------------------
def test_psi_parse_and_source(tmp_path):
    from kernel import psi
    text = ("some avg10=12.50 avg60=3.00 avg300=0.75 total=123456\n"
            "full avg10=1.00 avg60=0.50 avg300=0.00 total=789\n")
    d = psi.parse(text)
    assert d["some"]["avg10"] == 12.5 and d["full"]["avg300"] == 0.0 and d["some"]["total"] == 123456
    with pytest.raises(ValueError):
        psi.parse("some avg10 12\n")
    # a v2 cgroup's memory.pressure wins over the host's file; without either: None
    proc, root = tmp_path / "proc", tmp_path / "cg"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/system.slice/hostd.service\n")
    assert psi.source(root=str(root), proc=str(proc)) is None
    (proc / "pressure").mkdir()
    (proc / "pressure" / "memory").write_text(text)
    assert psi.source(root=str(root), proc=str(proc)) == str(proc / "pressure" / "memory")
    unit = root / "system.slice" / "hostd.service"
    unit.mkdir(parents=True)
    (unit / "memory.pressure").write_text(text)
    assert psi.source(root=str(root), proc=str(proc)) == str(unit / "memory.pressure")
    # a hybrid host: the unified hierarchy under root/unified
    (unit / "memory.pressure").unlink()
    hy = root / "unified" / "system.slice" / "hostd.service"
    hy.mkdir(parents=True)
    (hy / "memory.pressure").write_text(text)
    assert psi.source(root=str(root), proc=str(proc)) == str(hy / "memory.pressure")


def test_psi_on_this_host_is_readable_or_absent():
    from kernel import psi
    path = psi.source()
    if path is None:
        pytest.skip("no PSI on this host (CONFIG_PSI off or psi=0)")
    assert "some" in psi.read(path)


class _Reads:
    """pss_private stand-in for PssCache: counts reads, answers (pid, reads so far)."""

    def __init__(self):
        self.n = 0

    def __call__(self, pid):
        self.n += 1
        return pid, self.n


def test_pss_cache_reads_once_per_max_age_per_process():
    now = [100.0]
    reads = _Reads()
    c = procfs.PssCache(2.0, read=reads, clock=lambda: now[0])
    assert c.get(7, "a") == (7, 1)
    assert c.get(7, "a") == (7, 1) and reads.n == 1       # cached
    assert c.get(8, "b") == (8, 2)                         # another process: read
    now[0] += 1.9
    assert c.get(7, "a") == (7, 1)
    now[0] += 0.2                                          # 2.1 s old: read again
    assert c.get(7, "a") == (7, 3)


def test_pss_cache_rereads_a_reused_pid_and_ignores_no_pid():
    reads = _Reads()
    c = procfs.PssCache(60.0, read=reads, clock=lambda: 5.0)
    assert c.get(7, "first") == (7, 1)
    assert c.get(7, "second") == (7, 2)    # same pid, another process (its birth differs)
    assert c.get(0) == (0, 0) and c.get(None) == (0, 0) and reads.n == 2


def test_pss_cache_drops_old_entries():
    now = [0.0]
    c = procfs.PssCache(1.0, read=_Reads(), clock=lambda: now[0])
    for pid in range(1, 50):
        c.get(pid)
    now[0] = 5.0
    c.get(1000)
    assert set(c._seen) == {1000}


def test_pss_cache_default_reads_this_process():
    pss, private = procfs.PssCache().get(os.getpid(), "me")
    assert pss > 0 and private > 0
