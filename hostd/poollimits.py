"""A pool's [limits] on its cgroup `<base>/pool-<name>` (IIS: the application pool's
job object limits and CPU settings).

The pool cgroup is the parent of its workers' leaves, so a limit written there holds for
all the pool's workers together: an OOM kill at `memory_max` picks a victim inside the
pool, `pids_max` bounds a fork bomb to the pool, `cpus` and `cpu_max` confine its CPU use.

    key            the pool cgroup's method (kernel/cgroupfs.py: its v2 and v1 files)
    memory_max     set_memory_max
    memory_high    set_memory_high (v1 has no throttle)
    cpus           set_cpus ("" = the parent's CPUs)
    cpu_max        set_cpu_quota (cpu_action "throttle") or cpu_usage_usec (kill, recycle)
    pids_max       set_pids_max
    OOM kills      oom_kills (the worker's cgroup), memory_limit_hits (the pool's)

`cpu_max` is a quota only with cpu_action "throttle". With "kill" or "recycle" the pool
runs unthrottled and `PoolLimits.cpu_over` says when its average use over `cpu_interval`
passed cpu_max (a quota would keep it from ever passing it), as IIS's KillW3wp does.

A limit that cannot be written is a `LimitError` naming the config file, the key and the
cgroup file; the supervisor fails the pool with it (never ignored).
"""
from __future__ import annotations

import collections

from hostd.config import Limits

#: the pool-wide keys (worker_memory_max is per worker: the supervisor sets it on each
#: worker's cgroup)
POOL_KEYS = ("memory_max", "memory_high", "cpus", "cpu_max", "pids_max")
#: the Cgroup method that writes each key but cpu_max (a quota: _write_quota)
_SETTERS = {"cpus": "set_cpus", "memory_high": "set_memory_high",
            "memory_max": "set_memory_max", "pids_max": "set_pids_max"}
CFS_PERIOD_US = 100_000
_DEFAULT = Limits()


class LimitError(Exception):
    """A limit the running backend cannot apply; str() names file, key and cgroup file."""


def wanted(limits: Limits) -> list[str]:
    """The pool-wide keys a config sets ("limits.memory_max", ...), in table order."""
    return [f"limits.{k}" for k in POOL_KEYS if getattr(limits, k) != getattr(_DEFAULT, k)]


def _pool_wide_default(limits: Limits) -> bool:
    """No limit of the pool's own cgroup is set (worker_memory_max is per worker)."""
    return all(getattr(limits, k) == getattr(_DEFAULT, k)
               for k in ("cpus", "memory_high", "memory_max", "pids_max")) \
        and not _quota(limits) and not limits.cpu_max


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
        self.cg = None                       # the pool's kernel.cgroups.Cgroup, once applied
        self.applied: Limits | None = None   # what the cgroup holds; None = not known yet
        self.samples: collections.deque = collections.deque()   # (monotonic, usage µs)
        self._pool_ooms = None

    # ------------------------------------------------------------------ writing
    def apply(self, limits: Limits, file) -> None:
        """Creates the pool's cgroup if needed and writes every limit that is set or was
        set before (a key back at its default is switched off again).
        Raises LimitError naming `file`, the key and the cgroup file.
        A pool that sets no pool-wide limit gets its cgroup with its first worker
        (CgroupTree.worker makes it): a thousand cold pools made four thousand v1
        cgroups at start, and every worker's join into its own got slower with them."""
        if self.cg is None and _pool_wide_default(limits) and not self.tree.has_pool(self.name):
            return
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
                self._write_key(key, new, file)
            elif first:
                # the cgroup may be left from a pool of that name that had it set (a
                # retired pool): switch it off; a backend without the file has it off
                try:
                    self._write_key(key, new, file)
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

    def _set(self, key: str, shown: str, file, method, *args) -> None:
        """Calls `method` (one of the pool's Cgroup's) with `args`. Raises LimitError
        naming `file`, the key, the cgroup file (the OSError's) and the version."""
        try:
            method(*args)
        except OSError as exc:
            where = exc.filename or "the pool's cgroup"
            raise LimitError(f"{file}: limits.{key}: cgroup v{self.version} cannot apply "
                             f"{shown} to {where}: {exc.strerror}") from None

    def _write_key(self, key: str, value, file) -> None:
        self._set(key, repr(str(value)), file, getattr(self.cg, _SETTERS[key]), value)

    def _write_quota(self, quota: int, file) -> None:
        self._set("cpu_max", f"a quota of {quota} µs per {CFS_PERIOD_US} µs", file,
                  self.cg.set_cpu_quota, quota, CFS_PERIOD_US)

    # ------------------------------------------------------------------ CPU
    def cpu_usage(self) -> int:
        """The pool's CPU time so far in µs (all workers, past and present).
        Raises OSError naming the file (ValueError: not a number)."""
        return self.cg.cpu_usage_usec()

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
            kills = worker_cg.oom_kills()
        except (OSError, ValueError):
            return None
        if not kills:
            return None
        return "pool memory_max" if self._pool_hit() else "memory"

    def _pool_hit(self) -> bool:
        """Whether the pool cgroup itself ran out (not a worker's own limit) since the
        last call (its memory_limit_hits counter grew)."""
        if self.cg is None or self.applied is None or not self.applied.memory_max:
            return False
        try:
            n = self.cg.memory_limit_hits()
        except (OSError, ValueError):
            return True                      # cannot tell; the pool has a cap: say so
        hit = n > (self._pool_ooms or 0)
        self._pool_ooms = n
        return hit

