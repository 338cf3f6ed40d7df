"""Readers of /proc/PID: CPU time and memory of a live process (0 when unknown)."""
from __future__ import annotations

import os
import time


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a live process (0.0 when unknown)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _statm(pid: int | None, field: int) -> int:
    """A /proc/PID/statm field in bytes (0: VmSize, 1: resident); 0 when unknown."""
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def vmsize(pid: int | None) -> int:
    """Virtual memory size of a live process in bytes (0 when unknown)."""
    return _statm(pid, 0)


def rss(pid: int | None) -> int:
    """Resident set size of a live process in bytes (0 when unknown)."""
    return _statm(pid, 1)


def smaps_rollup(pid: int | None) -> dict[str, int]:
    """/proc/PID/smaps_rollup as {field: bytes} ("Rss", "Pss", "Private_Dirty", ...);
    {} when unknown (no such process, no permission)."""
    if not pid:
        return {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024
    return out


def pss_private(pid: int | None) -> tuple[int, int]:
    """(PSS, private) of a live process in bytes, (0, 0) when unknown: PSS counts each
    shared page divided among its sharers (the zygote's copy-on-write pages once in
    all), private = Private_Clean + Private_Dirty (what the process alone holds)."""
    r = smaps_rollup(pid)
    return r.get("Pss", 0), r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)


class PssCache:
    """pss_private() per process, read at most once per `max_age` seconds: the kernel
    walks every page table of a process to answer smaps_rollup (about 0.5 ms for a
    worker here, so a status of 200 workers and 260 zygotes spent 210 ms on it).

    get(pid, born) takes the pid and something that changes when the pid is reused or
    the figures should be read afresh (hostd's views: the worker's start time and
    state, so a worker that just became ready is read again); returns (PSS, private) in
    bytes, (0, 0) when unknown. Entries older than max_age are dropped on the way.
    `read` and `clock` are the seams the unit tests replace."""

    def __init__(self, max_age: float = 2.0, read=None, clock=None):
        self.max_age = max_age
        self._read = read or pss_private
        self._clock = clock or time.monotonic
        self._seen: dict[int, tuple[object, float, tuple[int, int]]] = {}
        self._pruned = 0.0

    def get(self, pid: int | None, born: object = None) -> tuple[int, int]:
        if not pid:
            return 0, 0
        now = self._clock()
        if now - self._pruned > self.max_age:
            self._pruned = now
            self._seen = {p: e for p, e in self._seen.items() if now - e[1] <= self.max_age}
        hit = self._seen.get(pid)
        if hit is not None and hit[0] == born and now - hit[1] <= self.max_age:
            return hit[2]
        value = self._read(pid)
        self._seen[pid] = (born, now, value)
        return value
