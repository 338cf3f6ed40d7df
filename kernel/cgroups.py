"""Control groups: one interface over cgroup v2 and v1, with the kernel's files as the API.

hostd owns one subtree (the *base*) and is its single writer:

    <base>/supervisor            v2 only: the supervisor's leaf (no processes in inner nodes)
    <base>/pool-<name>           one per application pool (an inner node)
    <base>/pool-<name>/worker-<id>   one leaf per worker process
    <base>/pool-<name>/orphans/worker-<id>   workers hostd no longer supervises but lets finish

`detect()` picks the backend at run time:

* v2 when our cgroup is on a unified hierarchy that has resource controllers (a systemd
  host or VM; with `Delegate=yes` the base is our own service cgroup);
* v1 when the memory, cpu, cpuset, pids and freezer hierarchies are mounted (a hybrid or
  legacy host; the base is `<our cgroup in each hierarchy>/hostd`). A v1 "cgroup" is the
  same relative path in each hierarchy, so one logical Cgroup is several directories.

Rule kept by everything here: directories are created, processes moved and directories
removed only below the cgroup this process runs in (per hierarchy) or below an explicit
`root` that lies inside it. Nothing above or beside the base is ever written.

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
from dataclasses import dataclass

from kernel import memevents

#: v1 hierarchies hostd needs; without all of them there is no v1 backend
V1_REQUIRED = ("memory", "cpu", "cpuset", "pids", "freezer")
#: v1 hierarchies used when mounted (cpuacct: per-cgroup CPU usage, which v1 cpu.stat lacks)
V1_OPTIONAL = ("cpuacct",)
#: v2 controllers enabled for the subtree when the parent offers them
V2_WANTED = ("memory", "cpu", "cpuset", "pids")

_V2_KEY = "unified"


def backend(version: int) -> type["Cgroup"]:
    """The Cgroup class of cgroup `version` (1 or 2). `backend(tree.version).set_pids_max(
    cg, 10)` is `cg.set_pids_max(10)` for a Cgroup of that tree, and works as well on an
    object with just read() and write() (a test's fake): every limit setter and counter
    but v1 set_cpus and memory_watch reaches its files through those two.
    Raises: ValueError for another version."""
    try:
        return {1: _V1Cgroup, 2: _V2Cgroup}[version]
    except KeyError:
        raise ValueError(f"cgroup version must be 1 or 2, not {version!r}") from None


class CgroupUnavailable(OSError):
    """No usable cgroup backend, or the configured `cgroup_root` cannot be used."""


# --------------------------------------------------------------------------- parsing

def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Parses /proc/<pid>/cgroup.

    Takes: the file's text, lines of `hierarchy-id:controller-list:path`.
    Returns: {controller: path}; a line naming several controllers (`2:cpu,cpuacct:/x`)
    gives one entry per controller, a named hierarchy keeps its name (`name=systemd`),
    and the v2 line (`0::/x`) is under the key "" .
    Raises: ValueError on a malformed line.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            raise ValueError(f"malformed /proc/<pid>/cgroup line: {line!r}")
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            out[""] = path
        else:
            for c in ctrls.split(","):
                if c:
                    out[c] = path
    return out


@dataclass(frozen=True)
class Mount:
    """One line of /proc/<pid>/mountinfo that mounts a cgroup filesystem."""
    mountpoint: str          # where it is mounted, e.g. /sys/fs/cgroup/memory
    root: str                # which subtree of the hierarchy is mounted there (field 4)
    fstype: str              # "cgroup" (v1) or "cgroup2"
    options: frozenset[str]  # super options; for v1 they include the controllers


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parses /proc/<pid>/mountinfo.

    Takes: the file's text.
    Returns: the cgroup and cgroup2 mounts, in file order.
    Raises: nothing for lines it does not understand (skipped).
    """
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(Mount(mountpoint=_unescape(lf[4]), root=_unescape(lf[3]),
                            fstype=rf[0], options=frozenset(rf[2].split(","))))
    return mounts


def _inside(path: str, top: str) -> bool:
    """True when cgroup path `path` is `top` or below it."""
    return top == "/" or path == top or path.startswith(top.rstrip("/") + "/")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and where we are in it."""
    key: str                    # "memory", "cpu,cpuacct", ... or "unified" (v2)
    controllers: tuple[str, ...]
    mount: Mount
    own: str                    # our cgroup path in it, as /proc/self/cgroup shows it

    def dir(self, cgpath: str) -> str:
        """Absolute directory of the cgroup `cgpath` (a path as /proc/self/cgroup shows it).
        Raises CgroupUnavailable when that cgroup is not visible through this mount."""
        if not _inside(cgpath, self.mount.root):
            raise CgroupUnavailable(errno.ENOENT, f"cgroup {cgpath} is outside the subtree "
                                    f"{self.mount.root} mounted at {self.mount.mountpoint}")
        rel = cgpath[len(self.mount.root.rstrip("/")):].lstrip("/")
        return posixpath.join(self.mount.mountpoint, rel) if rel else self.mount.mountpoint


def _find_hierarchies(text: str, mounts: list[Mount]) -> dict[str, Hierarchy]:
    """{controller or "": Hierarchy} for every hierarchy we are in that is mounted so that
    our own cgroup is visible (a bind mount of some other subtree does not count)."""
    found: dict[str, Hierarchy] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, own = parts
        v2 = hid == "0" and ctrls == ""
        names = tuple(c for c in ctrls.split(",") if c)
        for m in mounts:
            if ((v2 and m.fstype == "cgroup2")
                    or (not v2 and names and m.fstype == "cgroup" and set(names) <= m.options)):
                if _inside(own, m.root):
                    h = Hierarchy(_V2_KEY if v2 else ",".join(names), names, m, own)
                    for c in (names or ("",)):
                        found.setdefault(c, h)
                    break
    return found


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


# --------------------------------------------------------------------------- detect

def detect(root: str | None = None, *, name: str = "hostd", version: int | None = None,
           proc_cgroup: str | None = None, mountinfo: str | None = None) -> "CgroupTree":
    """Finds the cgroup backend this process can use.

    Takes:
      root: the `cgroup_root` override, a path relative to the hierarchy root
        ("/hostd-test"). It must exist, be writable and lie at or below our own cgroup
        (in v1: in every hierarchy used, each of which must have it). It is then the base.
      name: v1 only, the base's name below our own cgroup when `root` is not given.
      version: None picks automatically (v2 when the unified hierarchy offers any of
        memory, cpu, cpuset, pids at our parent or at its root; else v1). 1 or 2 forces
        a backend, e.g. v2 on a hybrid host whose unified hierarchy lacks those
        controllers (processes, freeze and kill work there; limits raise ENOENT).
      proc_cgroup, mountinfo: the texts of /proc/self/cgroup and /proc/self/mountinfo
        (read from /proc when None; tests pass fakes).
    Returns: a CgroupTree (nothing is created until setup()).
    Raises: CgroupUnavailable saying what is missing; ValueError for a bad name/version.
    """
    if version not in (None, 1, 2):
        raise ValueError(f"cgroup version must be 1, 2 or None, not {version!r}")
    _check_name(name)
    text = proc_cgroup if proc_cgroup is not None else _read_text("/proc/self/cgroup")
    parse_proc_cgroup(text)                      # raises ValueError on garbage
    mounts = parse_mountinfo(mountinfo if mountinfo is not None
                             else _read_text("/proc/self/mountinfo"))
    hier = _find_hierarchies(text, mounts)
    if root is not None:
        if not root.startswith("/"):
            raise CgroupUnavailable(errno.EINVAL, f"cgroup_root {root!r} must start with / "
                                    f"(a path relative to the hierarchy root, e.g. /hostd)")
        root = "/" + posixpath.normpath(root).lstrip("/")

    v2 = hier.get("")
    why_not_v2 = "no cgroup2 hierarchy holds this process"
    if version == 1:
        why_not_v2 = "cgroup v1 was requested"
    elif v2 is not None:
        if version == 2 or (version is None and _v2_has_controllers(v2)):
            return _V2Tree(v2, root)
        why_not_v2 = (f"the cgroup2 hierarchy at {v2.mount.mountpoint} has none of "
                      f"{', '.join(V2_WANTED)} (hybrid host)")
    if version == 2:
        raise CgroupUnavailable(errno.ENOENT, f"cgroup v2 requested but {why_not_v2}")

    missing = [c for c in V1_REQUIRED if c not in hier]
    if missing:
        raise CgroupUnavailable(errno.ENOENT, f"no usable cgroups: {why_not_v2}, and the v1 "
                                f"hierarchies {', '.join(missing)} are not mounted "
                                f"(need {', '.join(V1_REQUIRED)})")
    used = {c: hier[c] for c in V1_REQUIRED + V1_OPTIONAL if c in hier}
    return _V1Tree(used, root, name)


def _v2_has_controllers(h: Hierarchy) -> bool:
    # cgroup.controllers at our parent lists what could be delegated to us; at the mount
    # root it lists what the hierarchy has at all. A controller lives on one hierarchy
    # only, so on a hybrid host the unified mount lacks the ones bound to v1 (it may still
    # have e.g. hugetlb, which is why "non-empty" is not the test).
    parent = posixpath.dirname(h.own) if h.own != "/" else "/"
    for cg in (parent, h.mount.root):
        try:
            have = _read_text(posixpath.join(h.dir(cg), "cgroup.controllers")).split()
        except OSError:
            continue
        if set(have) & set(V2_WANTED):
            return True
    return False


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"not a usable cgroup name: {name!r}")


# --------------------------------------------------------------------------- file helpers

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


# --------------------------------------------------------------------------- trees

class CgroupTree:
    """hostd's subtree. hostd is the single writer of everything below the base.

    version: 1 or 2.
    path: the base's relative path, e.g. "/hostd".
    dirs: {hierarchy key: absolute directory of the base}.
    enabled: the controllers whose files pools and workers have (v2: after setup()).
    """
    version = 0
    _cgroup_cls: type[Cgroup] = Cgroup

    def __init__(self, path: str, dirs: dict[str, str]):
        self.path = path
        self.dirs = dict(dirs)
        self._base = self._cgroup_cls(path, dirs)

    def __repr__(self) -> str:
        return f"<CgroupTree v{self.version} {self.dirs}>"

    def setup(self) -> None:
        raise NotImplementedError

    def pool(self, name: str) -> Cgroup:
        """Creates (if needed) and returns `<base>/pool-<name>`, an inner node (v2: its
        children get the controllers it has). Raises ValueError for a name that is not
        one path component; OSError naming the directory or file that failed."""
        _check_name(name)
        cg = self._base.child(f"pool-{name}")
        cg._create(inner=True)
        return cg

    def worker(self, pool: str, wid: int) -> Cgroup:
        """Creates (if needed) and returns the leaf `<base>/pool-<pool>/worker-<wid>`
        (and the pool if missing). Raises as pool()."""
        cg = self.pool(pool).child(f"worker-{int(wid)}")
        cg._create(inner=False)
        return cg

    def orphans(self, pool: str) -> Cgroup:
        """Creates (if needed) and returns `<base>/pool-<pool>/orphans`, the parent of the
        leaves of workers hostd no longer supervises (Cgroup.move_to). Raises as pool()."""
        cg = self.pool(pool).child("orphans")
        cg._create(inner=True)
        return cg

    def pools(self) -> list[Cgroup]:
        """Returns the pool cgroups that exist below the base (also from an earlier run)."""
        d = next(iter(self.dirs.values()))
        try:
            names = sorted(n for n in os.listdir(d) if n.startswith("pool-")
                           and os.path.isdir(posixpath.join(d, n)))
        except FileNotFoundError:
            return []
        return [self._base.child(n) for n in names]

    def teardown(self, timeout: float = 5.0) -> None:
        """Kills every process in every pool and removes the pools (with their workers and
        orphans); v1 also removes the base it created. Raises OSError naming what could
        not be killed or removed (TimeoutError if a pool did not empty in `timeout`)."""
        for cg in self.pools():
            if not cg.kill(timeout):
                raise TimeoutError(errno.ETIMEDOUT, f"processes {cg.pids()} survived kill",
                                   cg._pids_dir())
            cg.remove()


class _V2Tree(CgroupTree):
    version = 2
    _cgroup_cls = _V2Cgroup

    def __init__(self, h: Hierarchy, root: str | None):
        if root is not None:
            _check_root(h, root)
        base = root if root is not None else h.own
        d = h.dir(base)
        if not os.path.isdir(d) or not os.access(d, os.W_OK):
            raise CgroupUnavailable(errno.EACCES, f"cgroup {base} ({d}) is not a writable "
                                    f"directory", d)
        self.hierarchy = h
        #: the controllers enabled for the children by setup() (what the base offers)
        self.enabled: list[str] = []
        # the real root cgroup has no cgroup.type (a cgroup namespace's "/" does): only the
        # real root may hold processes and enable controllers for its children at once
        self._at_root = not os.path.exists(posixpath.join(d, "cgroup.type"))
        super().__init__("/" + posixpath.basename(base) if base != "/" else "/",
                         {_V2_KEY: d})

    def setup(self) -> None:
        """Moves every process of the base into the leaf `<base>/supervisor` (v2 allows no
        processes in a cgroup whose controllers are enabled for its children), then enables
        in `<base>/cgroup.subtree_control` what the base has of memory, cpu, cpuset, pids.
        The root cgroup is exempt from that rule, so with the root as base nothing moves.
        Raises: OSError naming the file that failed."""
        base = self._base.dir
        sup = self._base.child("supervisor")
        sup._create(inner=False)
        if not self._at_root:
            for _ in range(100):       # again while a process forks during the move
                pids = _read_pids(posixpath.join(base, "cgroup.procs"))
                if not pids:
                    break
                for pid in pids:
                    try:
                        sup.attach(pid)
                    except OSError as e:
                        if e.errno != errno.ESRCH:
                            raise
        self.enabled = _enable_controllers(base)

    @property
    def supervisor(self) -> Cgroup:
        """The supervisor's leaf (v2)."""
        return self._base.child("supervisor")


class _V1Tree(CgroupTree):
    version = 1
    _cgroup_cls = _V1Cgroup

    def __init__(self, hier: dict[str, Hierarchy], root: str | None, name: str):
        by_key = {h.key: h for h in hier.values()}
        dirs: dict[str, str] = {}
        for key, h in by_key.items():
            if root is not None:
                _check_root(h, root)
                d = h.dir(root)
                if not os.path.isdir(d) or not os.access(d, os.W_OK):
                    raise CgroupUnavailable(errno.ENOENT, f"cgroup_root {root} is not a "
                                            f"writable directory in the {key} hierarchy", d)
            else:
                own = h.dir(h.own)
                if not os.access(own, os.W_OK):
                    raise CgroupUnavailable(errno.EACCES, f"our cgroup {h.own} in the {key} "
                                            f"hierarchy is not writable (not root?)", own)
                d = posixpath.join(own, name)
            dirs[key] = d
        self.hierarchies = by_key
        #: the controllers limits can use (v1: every hierarchy used is one)
        self.enabled = [c for c in V1_REQUIRED + V1_OPTIONAL if c in hier]
        self._owns_base = root is None
        super().__init__("/" + (posixpath.basename(root) if root else name), dirs)

    def setup(self) -> None:
        """Creates the base in each hierarchy (cpuset: with the parent's cpus and mems).
        The supervisor stays where it is (v1 allows processes in inner nodes).
        Raises: OSError naming the directory or file that failed."""
        self._base._create(inner=True)

    def teardown(self, timeout: float = 5.0) -> None:
        super().teardown(timeout)
        if self._owns_base:
            self._base.remove()


def _check_root(h: Hierarchy, root: str) -> None:
    if not _inside(root, h.own):
        raise CgroupUnavailable(errno.EPERM, f"cgroup_root {root} is not inside this "
                                f"process's cgroup {h.own} in the {h.key} hierarchy; hostd "
                                f"only manages cgroups below its own", root)
