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

Where things are: this module detects the backend (parse_proc_cgroup, parse_mountinfo,
Hierarchy, detect) and owns the subtree (CgroupTree: setup, pool, worker, orphans,
teardown). kernel.cgroupfs holds the Cgroup objects themselves: the `Cgroup` contract,
the v2 and v1 backends with their resource methods (set_memory_max, set_pids_max,
cpu_usage_usec, memory_watch, ...; the table of each one's v2 and v1 files is its
docstring) and the file helpers. kernel.cgroupfs does not import this module; this one
re-exports its names (Cgroup, backend, ...), so callers import kernel.cgroups only.
"""
from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import dataclass

from kernel.cgroupfs import (V2_WANTED, Cgroup, _V1Cgroup, _V2Cgroup, _V2_KEY, _check_name,
                             _enable_controllers, _read_pids, _read_text)
# not used here, re-exported: callers and tests import kernel.cgroups only
from kernel.cgroupfs import _write_file, backend  # noqa: F401

#: v1 hierarchies hostd needs; without all of them there is no v1 backend
V1_REQUIRED = ("memory", "cpu", "cpuset", "pids", "freezer")
#: v1 hierarchies used when mounted (cpuacct: per-cgroup CPU usage, which v1 cpu.stat lacks)
V1_OPTIONAL = ("cpuacct",)


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

    def has_pool(self, name: str) -> bool:
        """Whether `<base>/pool-<name>` exists (in every hierarchy)."""
        _check_name(name)
        return self._base.child(f"pool-{name}").exists()

    def worker(self, pool: str, wid: int) -> Cgroup:
        """Creates (if needed) and returns the leaf `<base>/pool-<pool>/worker-<wid>`
        (and the pool if missing). Raises as pool()."""
        cg = self.pool(pool).child(f"worker-{int(wid)}")
        cg._create(inner=False)
        return cg

    def zygote(self, pool: str, n: int) -> Cgroup:
        """Creates (if needed) and returns the leaf `<base>/pool-<pool>/zygote-<n>`: a
        preload pool's zygote (its n-th) and the workers it forks that need no cgroup of
        their own. Raises as pool()."""
        cg = self.pool(pool).child(f"zygote-{int(n)}")
        cg._create(inner=False)
        return cg

    def orphans(self, pool: str) -> Cgroup:
        """Creates (if needed) and returns `<base>/pool-<pool>/orphans`, the parent of the
        leaves of workers hostd no longer supervises (Cgroup.move_to). Raises as pool()."""
        cg = self.pool(pool).child("orphans")
        cg._create(inner=True)
        return cg

    def pressure_file(self, resource: str) -> str | None:
        """The pressure file of hostd's subtree for `resource` (kernel.psi), or None:
        v1 cgroups have none (v2 overrides)."""
        return None

    def pools(self) -> list[Cgroup]:
        """Returns the pool cgroups that exist below the base (also from an earlier run)."""
        d = next(iter(self.dirs.values()))
        try:
            names = sorted(n for n in os.listdir(d) if n.startswith("pool-")
                           and os.path.isdir(posixpath.join(d, n)))
        except FileNotFoundError:
            return []
        return [self._base.child(n) for n in names]

    def stale_bases(self, prefix: str) -> list[Cgroup]:
        """Bases left by earlier supervisors that were killed (v1: see _V1Tree). v2 has
        one base, the supervisor's own cgroup, which systemd or a restart reuses: []."""
        return []

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

    def pressure_file(self, resource: str) -> str | None:
        """The base's <resource>.pressure: the stalls of hostd and all its pools (the
        supervisor itself sits in a leaf below it)."""
        return posixpath.join(self._base.dir, f"{resource}.pressure")


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

    def stale_bases(self, prefix: str) -> list[Cgroup]:
        """The bases other supervisors made beside ours (`<prefix><pid>`, as detect's
        `name` gives them) whose supervisor no longer runs: what a SIGKILLed hostd left.
        Its processes died with it (PDEATHSIG), so remove() clears each one. A base may
        exist in only some hierarchies (the returned Cgroup's dirs has just those): use
        remove(), which needs none in particular, not kill() (v1 kill needs the freezer).
        Only siblings of our own base, inside our own cgroup, are looked at."""
        if not self._owns_base:
            return []
        own = posixpath.basename(next(iter(self.dirs.values())))
        found: dict[str, dict[str, str]] = {}
        for key, d in self.dirs.items():
            parent = posixpath.dirname(d)
            try:
                names = os.listdir(parent)
            except OSError:
                continue
            for n in names:
                pid = n[len(prefix):]
                if n == own or not n.startswith(prefix) or not pid.isdigit() \
                        or os.path.exists(f"/proc/{pid}"):
                    continue
                if os.path.isdir(posixpath.join(parent, n)):
                    found.setdefault(n, {})[key] = posixpath.join(parent, n)
        return [self._cgroup_cls("/" + n, dirs) for n, dirs in sorted(found.items())]


def _check_root(h: Hierarchy, root: str) -> None:
    if not _inside(root, h.own):
        raise CgroupUnavailable(errno.EPERM, f"cgroup_root {root} is not inside this "
                                f"process's cgroup {h.own} in the {h.key} hierarchy; hostd "
                                f"only manages cgroups below its own", root)
