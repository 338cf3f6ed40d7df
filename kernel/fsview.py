"""A pool's filesystem view: what a worker sees in its own mount namespace.

Two halves, h11-style:

* `plan(view)` is pure: it turns a `View` (what to hide, what to show, what to make
  private) into the ordered list of mount operations that builds it. It touches
  nothing, so the rules are unit-tested without root (tests/unit/test_fsview.py).
* `apply(ops)` does the I/O in the calling process, which must already be in a new
  mount namespace (ns.unshare(CLONE_NEWNS)) and still be real root.

The view, in order:
1. every mount becomes a slave (nothing propagates back to the host) and read-only;
2. paths are handled from the shallowest to the deepest, so a parent is built before
   what lies in it:
   * hide: an empty tmpfs over the directory, mode 000 (listing it fails with EACCES),
     or 0711 when something below it is shown (it can be crossed, not listed);
   * show: the host directory bind-mounted at the same path (created inside a hiding
     tmpfs when needed), read-only or writable;
   * private: a fresh, empty, writable tmpfs (mode 1777);
   * bind: another host directory, writable, at this path — how a pool's own /tmp,
     shared by its workers and kept across recycles, replaces the host's;
3. a new /proc for the worker's own pid namespace.

The sources of "show" are opened (O_PATH) before anything is hidden, so a directory
under a hidden one (a site under /home, the interpreter under /root) is still reached.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace

from kernel import ns

HIDDEN_MODE = 0o000
CROSSING_MODE = 0o711
PRIVATE_MODE = 0o1777


@dataclass(frozen=True)
class View:
    """What a worker's filesystem looks like. Paths are absolute and normalised."""

    hide: tuple[str, ...] = ()
    show: tuple[tuple[str, bool], ...] = ()      # (path, writable)
    private: tuple[str, ...] = ()
    new_proc: bool = True
    read_only_system: bool = True
    binds: tuple[tuple[str, str], ...] = ()      # (host source, target), writable
    #: the new /proc shows only processes of the viewer's own uid (hidepid=invisible):
    #: for a view whose processes stay in the host's pid namespace (a preload pool's
    #: zygote and its workers), so they see their pool's processes and no other
    proc_hidepid: bool = False
    #: host paths shown again read-only, as the host has them, inside a hidden
    #: directory (the other entries of a parent of many sites hidden as one mount:
    #: hostd/isolation.py). Directories or files; one gone from the host is skipped,
    #: and the pool's access check does not ask that it can read them.
    reshow: tuple[str, ...] = ()

    def to_spec(self) -> dict:
        return {"hide": list(self.hide), "show": [list(s) for s in self.show],
                "private": list(self.private), "new_proc": self.new_proc,
                "read_only_system": self.read_only_system,
                "binds": [list(b) for b in self.binds], "proc_hidepid": self.proc_hidepid,
                "reshow": list(self.reshow)}

    @classmethod
    def from_spec(cls, spec: dict) -> "View":
        return cls(tuple(spec["hide"]), tuple((p, bool(w)) for p, w in spec["show"]),
                   tuple(spec["private"]), bool(spec["new_proc"]),
                   bool(spec["read_only_system"]),
                   tuple((s, t) for s, t in spec.get("binds", ())),
                   bool(spec.get("proc_hidepid", False)),
                   tuple(spec.get("reshow", ())))

    def sources(self) -> list[str]:
        """The host paths bind-mounted into the view, in Op.source order."""
        return [p for p, _ in self.show] + list(self.reshow) + [s for s, _ in self.binds]


@dataclass(frozen=True)
class Op:
    """One step of building a view: kind is "slave", "readonly", "hide", "mkdirs",
    "bind", "private" or "proc"; `mode` for tmpfs (for proc: 2 = hidepid=invisible);
    `writable` for bind;
    `source` indexes the O_PATH descriptors opened by apply() (for bind, and for the
    mkdirs before it: a shown file needs a file to mount on)."""

    kind: str
    path: str
    mode: int = 0
    writable: bool = False
    source: int = -1
    below: tuple[str, ...] = field(default=())


def _under(path: str, parent: str) -> bool:
    return path == parent or parent == "/" or path.startswith(parent.rstrip("/") + "/")


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


def _parent(path: str) -> str:
    """os.path.dirname for a normalised absolute path, without its generality."""
    return path[:path.rfind("/")] or "/"


def _check(view: View) -> None:
    """Raises ValueError for a relative or unnormalised path, or the root itself
    in hide/private (what plan and pruned refuse)."""
    for p in (*view.hide, *(s for s, _ in view.show), *view.private, *view.reshow,
              *(x for b in view.binds for x in b)):
        if not p.startswith("/") or os.path.normpath(p) != p:
            raise ValueError(f"view path {p!r} must be absolute and normalised")
    for p in (*view.hide, *view.private, *(t for _, t in view.binds)):
        if p == "/":
            raise ValueError("cannot hide or replace / itself")


def plan(view: View) -> list[Op]:
    """Takes: a View. Returns: the ordered mount operations that build it.
    Raises: ValueError for a relative path or the root itself in hide/private."""
    _check(view)
    ops: list[Op] = [Op("slave", "/")]
    if view.read_only_system:
        ops.append(Op("readonly", "/"))
    entries = ([(p, "hide", False) for p in view.hide]
               + [(p, "show", w) for p, w in view.show]
               + [(p, "show", False) for p in view.reshow]
               + [(p, "private", True) for p in view.private]
               + [(t, "private", True) for _, t in view.binds])
    # shallow first; at equal depth hide before private before show, so a path that
    # is both hidden and shown ends up shown
    order = {"hide": 0, "private": 1, "show": 2}
    entries.sort(key=lambda e: (_depth(e[0]), order[e[1]], e[0]))
    applied: dict[str, str] = {}     # path -> kind of the entries applied so far
    shows = [p for p, _ in view.show] + list(view.reshow)
    bind_source = {t: len(shows) + i for i, (_, t) in enumerate(view.binds)}
    for path, kind, writable in entries:
        # what currently covers `path`: the deepest entry already applied at or above it
        # (a walk up its ancestors: a view with a thousand hidden sites stays linear)
        cover, p = None, path
        while cover is None:
            k = applied.get(p)
            if k is not None:
                cover = (p, k)
            elif p == "/":
                break
            else:
                p = _parent(p)
        hidden = cover is not None and cover[1] in ("hide", "private") and cover[0] != path
        if kind == "hide":
            if hidden:
                # already invisible: under a hidden directory, or under a private one
                # (a fresh tmpfs, or the pool's own /tmp), where the host's path is not
                continue
            below = tuple(s for s in shows if s != path and _under(s, path))
            ops.append(Op("hide", path, CROSSING_MODE if below else HIDDEN_MODE, below=below))
        elif kind == "private":
            if hidden:
                ops.append(Op("mkdirs", path, source=bind_source.get(path, -1)))
            if path in bind_source:
                ops.append(Op("bind", path, writable=True, source=bind_source[path]))
            else:
                ops.append(Op("private", path, PRIVATE_MODE))
        else:
            source = shows.index(path)
            if hidden:
                ops.append(Op("mkdirs", path, source=source))
            ops.append(Op("bind", path, writable=writable, source=source))
        applied[path] = kind
    if view.new_proc:
        ops.append(Op("proc", "/proc", mode=2 if view.proc_hidepid else 0))
    return ops


def pruned(view: View) -> View:
    """Takes: a View. Returns: the same view without the hidden paths that plan() skips
    (each lies in a directory the view already hides or makes private), so that
    plan(pruned(view)) == plan(view). What a worker is sent: a pool among a thousand
    whose sites lie under a hidden directory hides a handful of paths, not a thousand
    (each of which its worker would decode and keep). Raises: as plan()."""
    _check(view)
    hidden = set(view.hide)
    covered = set(view.private) | {t for _, t in view.binds}
    shown = {p for p, _ in view.show} | set(view.reshow)
    kept = []
    for h in view.hide:
        # what plan finds covering h: its deepest ancestor among the view's paths
        p, keep = h, True
        while p != "/":
            p = _parent(p)
            if p in shown:
                break
            if p in hidden or p in covered:
                keep = False
                break
        if keep:
            kept.append(h)
    if len(kept) == len(view.hide):
        return view
    return replace(view, hide=tuple(kept))


def apply(view: View, ops: list[Op] | None = None) -> None:
    """Builds the view in the current mount namespace. The caller unshared CLONE_NEWNS
    and is root of the host's user namespace. A hidden path that does not exist on
    the host is skipped; a shown path that does not exist is an error.
    Raises: OSError naming the path."""
    ops = plan(view) if ops is None else ops
    sources: list = []
    first, end = len(view.show), len(view.show) + len(view.reshow)   # reshow's in sources
    try:
        for index, path in enumerate(view.sources()):
            again = first <= index < end
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW
                             if again else os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                if again and stat.S_ISLNK(os.fstat(fd).st_mode):
                    os.close(fd)         # became a symbolic link: not shown
                    sources.append(None)
                    continue
                sources.append(fd)
            except OSError as exc:
                if again:        # gone from the host since it was listed: nothing to show
                    sources.append(None)
                    continue
                raise OSError(exc.errno, f"cannot show {path} in the pool's view: "
                                         f"{exc.strerror}") from None
        for op in ops:
            if op.source >= 0 and sources[op.source] is None:
                continue                         # a reshown path that is gone
            _apply_one(op, sources)
    finally:
        for fd in sources:
            if fd is not None:
                os.close(fd)


def _apply_one(op: Op, sources: list[int]) -> None:
    if op.kind == "slave":
        ns.make_slave(op.path)
    elif op.kind == "readonly":
        ns.make_readonly_tree(op.path)
    elif op.kind == "mkdirs":
        if op.source >= 0 and not stat.S_ISDIR(os.fstat(sources[op.source]).st_mode):
            _mkdirs(os.path.dirname(op.path))        # a file is shown: a file to mount on
            os.close(os.open(op.path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
        else:
            _mkdirs(op.path)
    elif op.kind == "hide":
        if not os.path.isdir(op.path):
            return
        ns.mount("tmpfs", op.path, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC,
                 f"mode={op.mode:o},size=64k,nr_inodes=256")
    elif op.kind == "private":
        if not os.path.isdir(op.path):
            return
        ns.mount("tmpfs", op.path, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV,
                 f"mode={op.mode:o}")
    elif op.kind == "bind":
        ns.mount(f"/proc/self/fd/{sources[op.source]}", op.path, None, ns.MS_BIND | ns.MS_REC)
        flags = ns.MS_BIND | ns.MS_REMOUNT | ns.MS_NOSUID | ns.MS_NODEV
        if not op.writable:
            flags |= ns.MS_RDONLY
        ns.mount(None, op.path, None, flags)
    elif op.kind == "proc":
        ns.mount("proc", "/proc", "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC,
                 "hidepid=invisible" if op.mode == 2 else None)
    else:  # pragma: no cover - plan() makes only the kinds above
        raise ValueError(f"unknown view operation {op.kind!r}")


def _mkdirs(path: str) -> None:
    """Creates `path` and its missing parents, crossable but not listable: these are
    directories inside a hiding tmpfs that lead to something shown."""
    parts = path.strip("/").split("/")
    current = ""
    for part in parts:
        current += "/" + part
        if not os.path.isdir(current):
            os.mkdir(current, CROSSING_MODE)
            os.chmod(current, CROSSING_MODE)   # mkdir's mode passes through the umask
