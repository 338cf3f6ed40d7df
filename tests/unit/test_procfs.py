"""kernel/procfs.py on the test process itself: CPU seconds, virtual size and RSS from
/proc/PID, and 0 for a pid that is falsy or not alive."""
from __future__ import annotations

import os
import time

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
