"""A pool's [limits] on its cgroup `<base>/pool-<name>` (IIS: the application pool's
job object limits and CPU settings).

The pool cgroup is the parent of its workers' leaves, so a limit written there holds for
all the pool's workers together: an OOM kill at `memory_max` picks a victim inside the
pool, `pids_max` bounds a fork bomb to the pool, `cpus` and `cpu_max` confine its CPU use.

    key            cgroup v2                 cgroup v1
    memory_max     memory.max                memory.limit_in_bytes
    memory_high    memory.high               memory.soft_limit_in_bytes (no throttle in v1)
    cpus           cpuset.cpus               cpuset.cpus (+ cpuset.mems from the parent)
    cpu_max        cpu.max                   cpu.cfs_quota_us / cpu.cfs_period_us
    pids_max       pids.max                  pids.max
    cpu usage      cpu.stat usage_usec       cpuacct.usage

`cpu_max` is a quota only with cpu_action "throttle". With "kill" or "recycle" the pool
runs unthrottled and `PoolLimits.cpu_over` says when its average use over `cpu_interval`
passed cpu_max (a quota would keep it from ever passing it), as IIS's KillW3wp does.

A limit that cannot be written is a `LimitError` naming the config file, the key and the
cgroup file; the supervisor fails the pool with it (never ignored).
"""
from __future__ import annotations

import collections
import os
import posixpath

from hostd.config import Limits

#: the pool-wide keys (worker_memory_max is per worker: Supervisor._memory_limits)
POOL_KEYS = ("memory_max", "memory_high", "cpus", "cpu_max", "pids_max")
CFS_PERIOD_US = 100_000
_DEFAULT = Limits()


class LimitError(Exception):
    """A limit the running backend cannot apply; str() names file, key and cgroup file."""


def wanted(limits: Limits) -> list[str]:
    """The pool-wide keys a config sets ("limits.memory_max", ...), in table order."""
    return [f"limits.{k}" for k in POOL_KEYS if getattr(limits, k) != getattr(_DEFAULT, k)]


def _quota(limits: Limits) -> int:
    """The CFS quota in µs per period (0 = none): cpu_max, with cpu_action throttle only."""
    if not limits.cpu_max or limits.cpu_action != "throttle":
        return 0
    return limits.cpu_max * CFS_PERIOD_US // 100


class PoolLimits:
    """The limits of one pool's cgroup, what it holds now and its CPU usage samples."""

    def __init__(self, tree, name: str):
        self.tree = tree
        self.name = name
        self.version = tree.version
        self.cg = None
        self.applied: Limits | None = None   # what the cgroup holds; None = not known yet
        self.samples: collections.deque = collections.deque()   # (monotonic, usage µs)
        self._pool_ooms = None

    # ------------------------------------------------------------------ writing
    def apply(self, limits: Limits, file) -> None:
        """Creates the pool's cgroup if needed and writes every limit that is set or was
        set before (a key back at its default is switched off again).
        Raises LimitError naming `file`, the key and the cgroup file."""
        try:
            self.cg = self.tree.pool(self.name)
        except OSError as exc:
            raise LimitError(f"{file}: limits: cannot create the pool's cgroup: "
                             f"{exc.strerror} ({exc.filename})") from None
        first = self.applied is None
        old = self.applied or _DEFAULT
        for key in ("cpus", "memory_high", "memory_max", "pids_max"):
            new = getattr(limits, key)
            if new != getattr(old, key) or new != getattr(_DEFAULT, key):
                self._write_key(key, new, file, old)
            elif first:
                # the cgroup may be left from a pool of that name that had it set (a
                # retired pool): switch it off; a backend without the file has it off
                try:
                    self._write_key(key, new, file, old)
                except LimitError:
                    pass
        if _quota(limits) != _quota(old) or _quota(limits):
            self._write_quota(_quota(limits), file)
        elif first:
            try:
                self._write_quota(0, file)
            except LimitError:
                pass
        if limits.cpu_max and limits.cpu_action != "throttle":
            # the usage counter must be readable, else cpu_action could never act
            try:
                self.cpu_usage()
            except OSError as exc:
                raise LimitError(f"{file}: limits.cpu_action: cannot read the pool's CPU "
                                 f"usage: {exc.strerror} ({exc.filename})") from None
        if limits.cpu_max != old.cpu_max or limits.cpu_interval != old.cpu_interval \
                or limits.cpu_action != old.cpu_action:
            self.samples.clear()
        self.applied = limits

    def _write(self, key: str, filename: str, value: str, file) -> None:
        try:
            self.cg.write(filename, value)
        except OSError as exc:
            where = exc.filename or filename
            raise LimitError(f"{file}: limits.{key}: cgroup v{self.version} cannot apply "
                             f"{value!r} to {where}: {exc.strerror}") from None

    def _write_key(self, key: str, value, file, old: Limits) -> None:
        v2 = self.version == 2
        if key == "memory_max":
            self._write(key, "memory.max" if v2 else "memory.limit_in_bytes",
                        str(value) if value else ("max" if v2 else "-1"), file)
        elif key == "memory_high":
            self._write(key, "memory.high" if v2 else "memory.soft_limit_in_bytes",
                        str(value) if value else ("max" if v2 else "-1"), file)
        elif key == "pids_max":
            self._write(key, "pids.max", str(value) if value else "max", file)
        elif key == "cpus":
            if v2:
                # "" (written as a newline) = inherit the parent's CPUs again
                self._write(key, "cpuset.cpus", value or "\n", file)
            else:
                self._v1_cpus(value, file)

    def _v1_cpus(self, value: str, file) -> None:
        """v1: a cpuset must be a subset of its parent's, children included, and starts
        empty: mems come from the parent, "" means the parent's CPUs. Changing a pool
        whose worker cgroups exist widens every level to old+new first, then narrows
        from the leaves up, so no step leaves a child outside its parent."""
        try:
            d = self.cg._file("cpuset.cpus")
            pool_dir = posixpath.dirname(d)
            parent = posixpath.dirname(pool_dir)
            with open(posixpath.join(parent, "cpuset.cpus")) as f:
                parent_cpus = f.read().strip()
            with open(posixpath.join(parent, "cpuset.mems")) as f:
                mems = f.read().strip()
            with open(d) as f:
                current = f.read().strip()
        except OSError as exc:
            raise LimitError(f"{file}: limits.cpus: cannot read {exc.filename}: "
                             f"{exc.strerror}") from None
        target = value or parent_cpus
        if current == target:
            return
        dirs = [dp for dp, _, _ in os.walk(pool_dir)]           # top-down
        union = ",".join(x for x in (current, target) if x)
        try:
            for sub in dirs:
                _write(posixpath.join(sub, "cpuset.mems"), mems)
                _write(posixpath.join(sub, "cpuset.cpus"), union)
            for sub in reversed(dirs):                          # leaves first
                _write(posixpath.join(sub, "cpuset.cpus"), target)
        except OSError as exc:
            raise LimitError(f"{file}: limits.cpus: cgroup v1 cannot apply {target!r} to "
                             f"{exc.filename}: {exc.strerror}") from None

    def _write_quota(self, quota: int, file) -> None:
        if self.version == 2:
            self._write("cpu_max", "cpu.max",
                        f"{quota if quota else 'max'} {CFS_PERIOD_US}", file)
        else:
            self._write("cpu_max", "cpu.cfs_period_us", str(CFS_PERIOD_US), file)
            self._write("cpu_max", "cpu.cfs_quota_us", str(quota) if quota else "-1", file)

    # ------------------------------------------------------------------ CPU
    def cpu_usage(self) -> int:
        """The pool's CPU time so far in µs (all workers, past and present).
        Raises OSError naming the file."""
        if self.version == 2:
            for line in self.cg.read("cpu.stat").splitlines():
                k, _, v = line.partition(" ")
                if k == "usage_usec":
                    return int(v)
            raise OSError(2, "no usage_usec in cpu.stat", self.cg._file("cpu.stat"))
        return int(self.cg.read("cpuacct.usage")) // 1000

    def cpu_over(self, limits: Limits, now: float) -> float | None:
        """Takes one sample (call it about once a second). Returns the pool's average CPU
        use in percent of one CPU over the last cpu_interval when that passed cpu_max
        (cpu_action kill/recycle only; the window then starts again), else None."""
        if self.cg is None or not limits.cpu_max or limits.cpu_action == "throttle":
            return None
        try:
            usage = self.cpu_usage()
        except (OSError, ValueError):
            return None
        self.samples.append((now, usage))
        while len(self.samples) > 2 and now - self.samples[1][0] >= limits.cpu_interval:
            self.samples.popleft()
        t0, u0 = self.samples[0]
        if now - t0 < limits.cpu_interval * 0.999:
            return None                      # not a full window yet
        pct = (usage - u0) / 1e6 / (now - t0) * 100
        if pct <= limits.cpu_max:
            return None
        self.samples.clear()
        return pct

    # ------------------------------------------------------------------ OOM
    def oom_killed(self, worker_cg) -> str | None:
        """After a worker died of SIGKILL: whether the OOM killer did it (its cgroup's
        oom_kill counter; the victim's own cgroup counts it on v1 and v2), and at which
        limit. Returns "pool memory_max" or "worker_memory_max" / "memory", or None."""
        if worker_cg is None:
            return None
        try:
            if self.version == 2:
                kills = _counters(worker_cg.read("memory.events")).get("oom_kill", 0)
            else:
                kills = _counters(worker_cg.read("memory.oom_control")).get("oom_kill", 0)
        except OSError:
            return None
        if not kills:
            return None
        return "pool memory_max" if self._pool_hit() else "memory"

    def _pool_hit(self) -> bool:
        """Whether the pool cgroup itself ran out (not a worker's own limit) since the
        last call: v2 memory.events.local `oom`, v1 memory.failcnt of the pool."""
        if self.cg is None or self.applied is None or not self.applied.memory_max:
            return False
        try:
            if self.version == 2:
                n = _counters(self.cg.read("memory.events.local")).get("oom", 0)
            else:
                n = int(self.cg.read("memory.failcnt"))
        except (OSError, ValueError):
            return True                      # cannot tell; the pool has a cap: say so
        hit = n > (self._pool_ooms or 0)
        self._pool_ooms = n
        return hit


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(fd)


def _counters(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out
