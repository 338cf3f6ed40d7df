"""Cgroup objects: one logical cgroup and its kernel files, as a v2 and a v1 backend.

`Cgroup` is the contract, `_V2Cgroup` and `_V1Cgroup` the backends; kernel.cgroups finds
which one this host has (detect) and builds hostd's subtree of them (CgroupTree). Here
are membership (attach, pids), the interface files (read, write), the resources, and
lifetime (kill, remove, move_to), with the file helpers under them. Nothing here decides
where a cgroup is: each gets its path and directories from its tree (or its parent).

No policy: callers decide what a limit is and what to do with an OSError. Every OSError
names the file (as its `filename`) and what was being done.

Resources: every Cgroup has the same methods and each backend knows its own files, so no
caller names a cgroup file or tests the version (one line a method: v2 file, v1 file):

    set_memory_max     memory.max                 memory.limit_in_bytes
    set_memory_high    memory.high                memory.soft_limit_in_bytes (no throttle in v1)
    set_pids_max       pids.max                   pids.max
    set_cpu_quota      cpu.max                    cpu.cfs_period_us, then cpu.cfs_quota_us
    set_cpus           cpuset.cpus                cpuset.cpus (+ cpuset.mems from the parent)
    cpu_usage_usec     cpu.stat usage_usec        cpuacct.usage (ns)
    oom_kills          memory.events oom_kill     memory.oom_control oom_kill
    memory_limit_hits  memory.events.local oom    memory.failcnt
    memory_watch       memory.high, memory.events memory.usage_in_bytes, memory.oom_control
                       (shared inotify)           (eventfds via cgroup.event_control)
"""
from __future__ import annotations

import errno
import os
import posixpath
import signal
import time

from kernel import memevents

#: v2 controllers enabled for the subtree when the parent offers them
V2_WANTED = ("memory", "cpu", "cpuset", "pids")

_V2_KEY = "unified"


def backend(version: int) -> type["Cgroup"]:
    """The Cgroup class of cgroup `version` (1 or 2), the class of every Cgroup a tree of
    that version hands out. Raises: ValueError for another version."""
    try:
        return {1: _V1Cgroup, 2: _V2Cgroup}[version]
    except KeyError:
        raise ValueError(f"cgroup version must be 1 or 2, not {version!r}") from None


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"not a usable cgroup name: {name!r}")


# --------------------------------------------------------------------------- file helpers

def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write_file(path: str, value: str) -> None:
    """One write(2) of `value` (the kernel parses each write as a whole).
    Raises OSError(errno, what, path) from open or write."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # no O_CREAT: a missing file is ENOENT
    except OSError as e:
        raise OSError(e.errno, f"{os.strerror(e.errno)} (opening to write {value!r})",
                      path) from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise OSError(e.errno, f"{os.strerror(e.errno)} (writing {value!r})", path) from None
    finally:
        os.close(fd)


def _read_file(path: str) -> str:
    try:
        return _read_text(path)
    except OSError as e:
        raise OSError(e.errno, f"{os.strerror(e.errno)} (reading)", path) from None


def _limit_text(n: int, none: str) -> str:
    """A limit as its file's text: `none` (the backend's "no limit") for 0.
    Raises ValueError for a negative `n`."""
    if n < 0:
        raise ValueError(f"a cgroup limit must be 0 (none) or positive, not {n}")
    return str(int(n)) if n else none


def _counters(text: str) -> dict[str, int]:
    """The `key value` lines of a flat-keyed file (cpu.stat, memory.events, ...)."""
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _read_pids(procs_path: str) -> list[int]:
    """Pids in one cgroup.procs; [] if the cgroup is gone (it may be removed meanwhile)."""
    try:
        return [int(x) for x in _read_text(procs_path).split()]
    except FileNotFoundError:
        return []


def _subdirs_bottom_up(top: str) -> list[str]:
    """Every directory from `top` down, children before parents (rmdir order)."""
    out: list[str] = []
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        out.append(dirpath)
    return out


def _wait(cond, deadline: float) -> bool:
    """Polls `cond()` with a growing interval (1 ms .. 20 ms) until true or `deadline`."""
    delay = 0.001
    while True:
        if cond():
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)


# --------------------------------------------------------------------------- Cgroup

class Cgroup:
    """One logical cgroup: one directory (v2) or the same relative path in each v1
    hierarchy.

    path: relative path starting with the base's name, e.g. "/hostd/pool-a/worker-3".
    dirs: {hierarchy key: absolute directory}, e.g. {"memory": "/sys/fs/cgroup/memory/
          hostd/pool-a/worker-3", ...}; v2 has the single key "unified".
    """
    version = 0

    def __init__(self, path: str, dirs: dict[str, str]):
        self.path = path
        self.dirs = dict(dirs)

    def __repr__(self) -> str:
        return f"<Cgroup v{self.version} {self.path}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Cgroup) and self.dirs == other.dirs

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.dirs.items())))

    # -- membership
    def procs_files(self) -> list[str]:
        """Returns the absolute paths of cgroup.procs, one per hierarchy. A process joins by
        writing its pid (or "0", meaning itself) into each, e.g. in the child between fork
        and exec so that it runs nothing outside its cgroup."""
        return [posixpath.join(d, "cgroup.procs") for d in self.dirs.values()]

    def attach(self, pid: int) -> None:
        """Moves process `pid` (all its threads) into this cgroup in every hierarchy.
        Raises: OSError naming the cgroup.procs file (ESRCH: no such process; v1 cpuset
        ENOSPC: the cpuset has no cpus/mems; v2 EBUSY: this cgroup is an inner node with
        controllers enabled)."""
        for f in self.procs_files():
            _write_file(f, str(pid))

    def pids(self) -> list[int]:
        """Returns the processes in this cgroup and every cgroup below it, sorted; [] when
        the cgroup does not exist. Zombies are not listed (they left at exit)."""
        seen: set[int] = set()
        top = self._pids_dir()
        for d in _subdirs_bottom_up(top) if os.path.isdir(top) else []:
            seen.update(_read_pids(posixpath.join(d, "cgroup.procs")))
        return sorted(seen)

    def exists(self) -> bool:
        """True when the directory exists in every hierarchy."""
        return all(os.path.isdir(d) for d in self.dirs.values())

    # -- files
    def write(self, filename: str, value: str) -> None:
        """Writes `value` to the interface file `filename` (e.g. "pids.max", "100").
        Raises: OSError(ENOENT) naming the file when this backend has no such file (a
        limit that cannot be applied is an error, never ignored); the kernel's OSError
        (EINVAL, EBUSY, ...) naming the file when it refuses the value."""
        _write_file(self._file(filename), value)

    def read(self, filename: str) -> str:
        """Returns the text of the interface file `filename` (not stripped).
        Raises: OSError naming the file (ENOENT when this backend has no such file)."""
        return _read_file(self._file(filename))

    # -- resources: the contract here, one implementation per backend (files: module doc)
    def set_memory_max(self, n: int) -> None:
        """Sets the hard memory limit of this cgroup and everything below it (the OOM
        killer picks a victim inside when it is reached).
        Takes: bytes; 0 = no limit.
        Raises: OSError naming the file (v1 EBUSY: below the current usage; ENOENT: no
        memory controller); ValueError for n < 0."""
        raise NotImplementedError

    def set_memory_high(self, n: int) -> None:
        """Sets the soft memory limit (v2: the kernel throttles and reclaims above it;
        v1: reclaim prefers this cgroup under pressure, no throttle).
        Takes: bytes; 0 = none.
        Raises: OSError naming the file; ValueError for n < 0."""
        raise NotImplementedError

    def set_pids_max(self, n: int) -> None:
        """Caps the number of processes and threads in this cgroup and below (fork fails
        with EAGAIN past it).
        Takes: the cap; 0 = none.
        Raises: OSError naming pids.max; ValueError for n < 0."""
        self.write("pids.max", _limit_text(n, "max"))     # the same file on v1 and v2

    def set_cpu_quota(self, quota_us: int, period_us: int) -> None:
        """Sets the CFS bandwidth: at most `quota_us` of CPU time per `period_us` (summed
        over CPUs: 2 * period = two CPUs).
        Takes: µs; quota 0 = none (the period is written anyway), period > 0.
        Raises: OSError naming the file; ValueError for a negative quota or period <= 0."""
        raise NotImplementedError

    def set_cpus(self, cpus: str) -> None:
        """Confines this cgroup (and everything below it) to a CPU list.
        Takes: a kernel CPU list ("0-3,6"); "" = the parent's CPUs again.
        Raises: OSError naming the file the kernel refused or that could not be read
        (EINVAL: not a subset of the parent's CPUs or not online)."""
        raise NotImplementedError

    def cpu_usage_usec(self) -> int:
        """Returns: the CPU time used by this cgroup and below so far, in µs (processes
        that left or exited included).
        Raises: OSError naming the file (ENOENT: no such counter on this backend);
        ValueError when the file does not hold a number."""
        raise NotImplementedError

    def oom_kills(self) -> int:
        """Returns: how many processes the OOM killer killed in this cgroup (0 when the
        kernel has no such counter, before 4.13).
        Raises: OSError naming the file."""
        raise NotImplementedError

    def memory_limit_hits(self) -> int:
        """Returns: how often this cgroup itself ran out at its own memory limit (not a
        limit below it); a counter that only grows.
        Raises: OSError naming the file; ValueError when it does not hold a number."""
        raise NotImplementedError

    def memory_usage(self) -> int:
        """Returns: the memory charged to this cgroup and below now, in bytes (its
        processes' pages, page cache and tmpfs pages included).
        Raises: OSError naming the file (ENOENT: no memory controller); ValueError."""
        raise NotImplementedError

    def memory_watch(self, high: int = 0, limit: int = 0,
                     inotify=None) -> memevents.MemoryWatch:
        """Builds the kernel's memory notifications for this cgroup (see
        kernel.memevents): HIGH past `high`, MAX at `limit`, OOM on an OOM kill.
        Takes: high and limit in bytes (0 = none; the limit itself is set_memory_max's,
        this only watches it); inotify: the shared memevents.Inotify, or a callable that
        returns it (called only by a backend that needs one, so v1 makes none).
        Returns: a MemoryWatch (the caller closes it); its `shared_inotify` says whether
        it reports through the Inotify (its `wd`) or through its own fileno().
        Raises: OSError naming the file; ValueError when a shared Inotify is needed and
        `inotify` is None."""
        raise NotImplementedError

    # -- lifetime
    def kill(self, timeout: float = 5.0) -> bool:
        """SIGKILLs every process in this cgroup and below (double-forked and setsid
        daemons included: they cannot leave the cgroup), then waits until it is empty.
        Takes: the seconds to wait in all.
        Returns: True when empty (also when it does not exist), False on timeout.
        Raises: OSError naming a file the kernel refused."""
        raise NotImplementedError

    def remove(self) -> None:
        """Removes this cgroup and every cgroup below it (leaves first) in every hierarchy.
        Already gone is fine. Raises: OSError(EBUSY) naming the directory when a cgroup
        still holds processes (kill() first)."""
        for d in self.dirs.values():
            if not os.path.isdir(d):
                continue
            for sub in _subdirs_bottom_up(d):
                try:
                    os.rmdir(sub)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise OSError(e.errno, f"{os.strerror(e.errno)} (rmdir; processes: "
                                  f"{_read_pids(posixpath.join(sub, 'cgroup.procs'))})",
                                  sub) from None

    def child(self, name: str) -> "Cgroup":
        """The Cgroup object for `<self>/<name>`; creates nothing."""
        _check_name(name)
        return type(self)(self.path.rstrip("/") + "/" + name,
                          {k: posixpath.join(d, name) for k, d in self.dirs.items()})

    def move_to(self, parent: "Cgroup", timeout: float = 5.0) -> "Cgroup":
        """Moves this cgroup's processes into a new leaf `<parent>/<our name>` and removes
        this cgroup. Cgroups cannot be renamed across parents, so this creates the new
        directory, migrates every pid (again while a process forks during the move) and
        removes the old one. The processes keep running.
        Returns: the new Cgroup.
        Raises: OSError naming the file or directory that failed; TimeoutError when pids
        keep appearing in the old cgroup for `timeout` seconds."""
        new = parent.child(posixpath.basename(self.path))
        new._create(inner=False)
        deadline = time.monotonic() + timeout
        while True:
            pids = self._all_pids()
            if not pids:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(errno.ETIMEDOUT, f"processes {pids} keep appearing",
                                   self._pids_dir())
            for pid in pids:
                try:
                    new.attach(pid)
                except ProcessLookupError:
                    pass                      # exited meanwhile
                except OSError as e:
                    if e.errno != errno.ESRCH:
                        raise
        self.remove()
        return new

    # -- backend parts
    def _all_pids(self) -> list[int]:
        return self.pids()

    def _pids_dir(self) -> str:
        raise NotImplementedError

    def _file(self, filename: str) -> str:
        raise NotImplementedError

    def _create(self, inner: bool) -> None:
        raise NotImplementedError


class _V2Cgroup(Cgroup):
    version = 2
    #: use cgroup.kill when the kernel has it (5.14+); tests set False to run the fallback
    use_cgroup_kill = True

    @property
    def dir(self) -> str:
        return self.dirs[_V2_KEY]

    def _pids_dir(self) -> str:
        return self.dir

    def _file(self, filename: str) -> str:
        _check_name(filename)
        return posixpath.join(self.dir, filename)

    def _create(self, inner: bool) -> None:
        _mkdir(self.dir)
        if inner:
            _enable_controllers(self.dir)

    # -- resources (the contract: Cgroup)
    def set_memory_max(self, n: int) -> None:
        """memory.max: `n` bytes, "max" for 0. Raises OSError naming memory.max."""
        self.write("memory.max", _limit_text(n, "max"))

    def set_memory_high(self, n: int) -> None:
        """memory.high: `n` bytes, "max" for 0. Raises OSError naming memory.high."""
        self.write("memory.high", _limit_text(n, "max"))

    def set_cpu_quota(self, quota_us: int, period_us: int) -> None:
        """cpu.max: "QUOTA PERIOD", "max PERIOD" for quota 0. Raises OSError naming
        cpu.max; ValueError for period_us <= 0."""
        if period_us <= 0:
            raise ValueError(f"a CFS period must be positive, not {period_us}")
        self.write("cpu.max", f"{_limit_text(quota_us, 'max')} {int(period_us)}")

    def set_cpus(self, cpus: str) -> None:
        """cpuset.cpus: the list, or a newline for "" (empty = the parent's CPUs; the
        kernel keeps children inside their parent itself). Raises OSError naming it."""
        self.write("cpuset.cpus", cpus or "\n")

    def cpu_usage_usec(self) -> int:
        """cpu.stat's usage_usec. Raises OSError naming cpu.stat (ENOENT without it)."""
        counters = _counters(self.read("cpu.stat"))
        if "usage_usec" not in counters:
            raise OSError(errno.ENOENT, "no usage_usec in cpu.stat", self._file("cpu.stat"))
        return counters["usage_usec"]

    def oom_kills(self) -> int:
        """memory.events' oom_kill (this cgroup and below). Raises OSError naming it."""
        return _counters(self.read("memory.events")).get("oom_kill", 0)

    def memory_limit_hits(self) -> int:
        """memory.events.local's oom: OOMs at this cgroup's own memory.max. Raises
        OSError naming memory.events.local."""
        return _counters(self.read("memory.events.local")).get("oom", 0)

    def memory_usage(self) -> int:
        """memory.current. Raises OSError naming it; ValueError."""
        return int(self.read("memory.current"))

    def memory_watch(self, high: int = 0, limit: int = 0,
                     inotify=None) -> memevents.MemoryWatch:
        """Writes memory.high = `high` (the v2 threshold is the kernel's own; the watch's
        release_high() lifts it), then watches memory.events through the shared Inotify.
        Raises: ValueError without `inotify`; OSError naming memory.high or
        memory.events."""
        if inotify is None:
            raise ValueError("cgroup v2 memory watches share the caller's Inotify")
        if high:
            self.set_memory_high(high)
        if callable(inotify):
            inotify = inotify()
        return memevents.MemoryWatch(self.dir, 2, high, limit, inotify=inotify)

    def _populated(self) -> bool:
        try:
            text = _read_text(posixpath.join(self.dir, "cgroup.events"))
        except FileNotFoundError:
            return False
        return "populated 1" in text

    def kill(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        if not os.path.isdir(self.dir):
            return True
        kill_file = posixpath.join(self.dir, "cgroup.kill")
        if self.use_cgroup_kill and os.path.exists(kill_file):
            # the kernel kills the whole subtree and new forks cannot escape (5.14+)
            _write_file(kill_file, "1")
        else:
            # freeze first: a frozen process cannot fork, so the list we SIGKILL is complete
            freeze = posixpath.join(self.dir, "cgroup.freeze")
            while self._populated() and time.monotonic() < deadline:
                _write_file(freeze, "1")
                try:
                    _wait(lambda: "frozen 1" in _read_file(
                        posixpath.join(self.dir, "cgroup.events")),
                          min(deadline, time.monotonic() + 1.0))
                    _sigkill_all(self.pids())
                finally:
                    _write_file(freeze, "0")   # SIGKILL is delivered once thawed
                _wait(lambda: not self._populated(), min(deadline, time.monotonic() + 0.5))
        return _wait(lambda: not self._populated(), deadline)


class _V1Cgroup(Cgroup):
    version = 1

    def _pids_dir(self) -> str:
        # the freezer hierarchy: it is the one kill() freezes, so what we list is what we kill
        return self.dirs["freezer"]

    def _all_pids(self) -> list[int]:
        # a process may be in this cgroup in some hierarchies only (a half-done attach)
        seen: set[int] = set()
        for d in self.dirs.values():
            for sub in _subdirs_bottom_up(d) if os.path.isdir(d) else []:
                seen.update(_read_pids(posixpath.join(sub, "cgroup.procs")))
        return sorted(seen)

    def _file(self, filename: str) -> str:
        _check_name(filename)
        ctrl = filename.split(".", 1)[0]
        if "." not in filename or ctrl == "cgroup":
            raise OSError(errno.EINVAL, "ambiguous in cgroup v1: every hierarchy has this "
                          "file; use a controller's file, procs_files() or pids()", filename)
        for key, d in self.dirs.items():
            if ctrl in key.split(","):
                return posixpath.join(d, filename)
        raise OSError(errno.ENOENT, f"the v1 backend has no {ctrl!r} hierarchy (it uses "
                      f"{', '.join(self.dirs)})", filename)

    # -- resources (the contract: Cgroup)
    def set_memory_max(self, n: int) -> None:
        """memory.limit_in_bytes: `n` bytes, "-1" for 0. Raises OSError naming it (EBUSY:
        below the current usage)."""
        self.write("memory.limit_in_bytes", _limit_text(n, "-1"))

    def set_memory_high(self, n: int) -> None:
        """memory.soft_limit_in_bytes: `n` bytes, "-1" for 0 (reclaim target, no
        throttle). Raises OSError naming it."""
        self.write("memory.soft_limit_in_bytes", _limit_text(n, "-1"))

    def set_cpu_quota(self, quota_us: int, period_us: int) -> None:
        """cpu.cfs_period_us, then cpu.cfs_quota_us ("-1" for quota 0). Raises OSError
        naming the file refused; ValueError for period_us <= 0."""
        if period_us <= 0:
            raise ValueError(f"a CFS period must be positive, not {period_us}")
        quota = _limit_text(quota_us, "-1")                 # ValueError before any write
        self.write("cpu.cfs_period_us", str(int(period_us)))
        self.write("cpu.cfs_quota_us", quota)

    def set_cpus(self, cpus: str) -> None:
        """cpuset.cpus of this cgroup and every cgroup below it. A v1 cpuset must stay a
        subset of its parent's, children included, and "" is not "inherit" there: it
        becomes the parent's list, and cpuset.mems is copied from the parent. Changing
        a cgroup that has children widens every level to old+new first (top-down),
        then narrows from the leaves up, so no step leaves a child outside its parent.
        Raises: OSError naming the cpuset.cpus/cpuset.mems file that could not be read
        (here or in the parent) or that the kernel refused."""
        own = self._file("cpuset.cpus")
        top = posixpath.dirname(own)
        parent = posixpath.dirname(top)
        parent_cpus = _read_file(posixpath.join(parent, "cpuset.cpus")).strip()
        mems = _read_file(posixpath.join(parent, "cpuset.mems")).strip()
        current = _read_file(own).strip()
        target = cpus or parent_cpus
        if current == target:
            return
        dirs = [dp for dp, _, _ in os.walk(top)]            # top-down
        union = ",".join(x for x in (current, target) if x)
        for sub in dirs:
            _write_file(posixpath.join(sub, "cpuset.mems"), mems)
            _write_file(posixpath.join(sub, "cpuset.cpus"), union)
        for sub in reversed(dirs):                          # leaves first
            _write_file(posixpath.join(sub, "cpuset.cpus"), target)

    def cpu_usage_usec(self) -> int:
        """cpuacct.usage (ns) // 1000. Raises OSError naming it (ENOENT: the cpuacct
        hierarchy is not mounted); ValueError when it holds no number."""
        return int(self.read("cpuacct.usage")) // 1000

    def oom_kills(self) -> int:
        """memory.oom_control's oom_kill (4.13+). Raises OSError naming it."""
        return _counters(self.read("memory.oom_control")).get("oom_kill", 0)

    def memory_limit_hits(self) -> int:
        """memory.failcnt: how often usage hit memory.limit_in_bytes (reclaim may have
        saved it; it counts the attempts). Raises OSError naming it; ValueError."""
        return int(self.read("memory.failcnt"))

    def memory_usage(self) -> int:
        """memory.usage_in_bytes. Raises OSError naming it; ValueError."""
        return int(self.read("memory.usage_in_bytes"))

    def memory_watch(self, high: int = 0, limit: int = 0,
                     inotify=None) -> memevents.MemoryWatch:
        """Eventfd thresholds on memory.usage_in_bytes (high; 15/16 of limit) and an OOM
        eventfd on memory.oom_control, registered in cgroup.event_control; `inotify` is
        not used (nor called). Raises: OSError naming the file."""
        directory = posixpath.dirname(self._file("memory.usage_in_bytes"))
        return memevents.MemoryWatch(directory, 1, high, limit)

    def _create(self, inner: bool) -> None:
        for key, d in self.dirs.items():
            if os.path.isdir(d):
                continue
            _mkdir(d)
            if "cpuset" in key.split(","):
                # a new v1 cpuset starts with empty cpuset.cpus and cpuset.mems, and the
                # kernel refuses to attach a task to it (ENOSPC): give it the parent's
                parent = posixpath.dirname(d)
                for f in ("cpuset.cpus", "cpuset.mems"):
                    value = _read_file(posixpath.join(parent, f)).strip()
                    if value:
                        _write_file(posixpath.join(d, f), value)

    def kill(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        fz = self.dirs["freezer"]
        if not os.path.isdir(fz):
            return True
        state = posixpath.join(fz, "freezer.state")
        while self.pids() and time.monotonic() < deadline:
            # freeze first: between reading cgroup.procs and kill(2) a process could fork a
            # child we never saw; a frozen cgroup cannot fork. Freezing a v1 cgroup freezes
            # its descendants, and freezer.state reads FROZEN once all of them are.
            _write_file(state, "FROZEN")
            try:
                _wait(lambda: _read_file(state).strip() == "FROZEN",
                      min(deadline, time.monotonic() + 1.0))
                _sigkill_all(self.pids())
            finally:
                _write_file(state, "THAWED")   # SIGKILL takes effect once thawed
            _wait(lambda: not self.pids(), min(deadline, time.monotonic() + 0.5))
        return _wait(lambda: not self.pids(), deadline)


def _sigkill_all(pids: list[int]) -> None:
    for pid in pids:
        if pid == os.getpid():
            continue                 # never ourselves (only possible with a misused base)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError as e:
        raise OSError(e.errno, f"{os.strerror(e.errno)} (mkdir)", path) from None


def _enable_controllers(d: str) -> list[str]:
    """Enables in `d`/cgroup.subtree_control the V2_WANTED controllers that `d` has
    (its cgroup.controllers), so its children can be limited. Returns those enabled."""
    have = _read_file(posixpath.join(d, "cgroup.controllers")).split()
    want = [c for c in V2_WANTED if c in have]
    if want:
        # one write, one answer: the kernel applies all of it or none
        _write_file(posixpath.join(d, "cgroup.subtree_control"),
                    " ".join("+" + c for c in want))
    return want
