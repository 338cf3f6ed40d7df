"""What a pool's [isolation] means on this host: its identity, its filesystem view, and
the checks made before its first worker starts.

The supervisor decides everything here and sends the result in the spawn spec; the
zygote (hostd/zygote.py) and kernel/ only carry it out. So the rules are plain
functions over the config, tested without processes (tests/unit/test_isolation.py).

Identity ("dynamic"): a uid/gid from [hostd] identity_range, one per pool, kept in
<state_dir>/identities.json so it is the same after a restart or a reload (IIS's
ApplicationPoolIdentity). An identity is never given to another pool, even after its
pool is removed: files the old site left behind must not change owner.
"""
from __future__ import annotations

import contextlib
import json
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from kernel import fsview
from kernel.fsview import View

#: the identity store's name for the front ends' uid (no pool name starts with "@")
FRONTEND_KEY = "@frontends"
#: directories that are private (a fresh tmpfs) in a "site" view
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
#: directories hidden in every "site" view (besides hostd's own and other pools')
HIDDEN_DIRS = ("/root", "/home")


@dataclass(frozen=True)
class Identity:
    """Who a pool's workers are on the host."""

    uid: int
    gid: int
    kind: str          # "dynamic" | "user"
    user: str | None   # the account name for "user:NAME"

    def to_dict(self) -> dict:
        return {"uid": self.uid, "gid": self.gid, "identity": self.kind, "user": self.user}


class IdentityStore:
    """Pool -> dynamic uid, and pool -> index of its private /30 network, kept in a
    JSON file written atomically (tmp + fsync + rename)."""

    def __init__(self, path: Path, first: int, last: int):
        self.path = Path(path)
        self.first, self.last = first, last
        self.uids: dict[str, int] = {}
        self.nets: dict[str, int] = {}
        self.holding = self.dirty = False
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise OSError(f"{self.path}: unreadable identity file ({exc}); fix or move "
                          "it aside: it keeps the pools' uids stable") from None
        self.uids = {str(k): int(v) for k, v in (data.get("uids") or {}).items()}
        self.nets = {str(k): int(v) for k, v in (data.get("nets") or {}).items()}

    def _save(self) -> None:
        self.dirty = False
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "uids": self.uids, "nets": self.nets}, f, indent=1,
                      sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def held(self):
        """Within it, what uid() and net_index() allocate is saved once, at the end (a
        start with 1,000 new pools wrote and fsynced the file 1,000 times, ~3 s): for
        loading many pools at once. A worker spawned meanwhile runs with a uid the file
        records a moment later; were hostd killed in between, the same allocation order
        gives the same uids at the next start.
        Raises: OSError from the save."""
        if self.holding:
            yield self
            return
        self.holding = True
        try:
            yield self
        finally:
            self.holding = False
            if self.dirty:
                self._save()

    def _changed(self) -> None:
        if self.holding:
            self.dirty = True
        else:
            self._save()

    def uid(self, pool: str) -> int:
        """Takes: a pool name. Returns: its uid (= gid), allocating and saving one the
        first time (at the end of held(), within one). Raises: OSError when the range
        is exhausted or the file cannot be written."""
        if pool in self.uids:
            return self.uids[pool]
        taken = set(self.uids.values())
        for uid in range(self.first, self.last + 1):
            if uid in taken or _account_exists(uid):
                continue
            self.uids[pool] = uid
            self._changed()
            return uid
        raise OSError(f"identity_range {self.first}-{self.last} is exhausted "
                      f"({len(taken)} pools have one)")

    def net_index(self, pool: str) -> int:
        """Takes: a pool name. Returns: the index of its /30 in private_network,
        allocated and saved the first time. Raises: OSError when it cannot be saved."""
        if pool not in self.nets:
            taken = set(self.nets.values())
            self.nets[pool] = next(i for i in range(len(taken) + 1) if i not in taken)
            self._changed()
        return self.nets[pool]


# --- whether a pool is isolated ----------------------------------------------------
#: why a pool's workers run as they do (status "isolation_reason", check-config)
ISOLATED = "isolated"
OPTED_OUT = "[isolation] enabled = false"
NO_ROOT = "hostd is not root"


@dataclass(frozen=True)
class Decision:
    """decide's answer: isolated or not, why (one of the reasons above), and the error
    that fails the pool (None: the pool runs)."""

    isolated: bool
    why: str
    error: str | None = None


def decide(iso, is_root: bool) -> Decision:
    """Takes: a pool's Isolation (hostd.config: its table, or the defaults with
    declared=False when it has none) and whether hostd runs as root. Returns the
    Decision. Never raises.

    | table                    | root                  | not root                      |
    |--------------------------|-----------------------|-------------------------------|
    | none (declared=False)    | isolated (defaults)   | not isolated (hostd warns)    |
    | enabled = true (written) | isolated              | error: needs root             |
    | enabled = false          | not isolated, warned  | not isolated, warned          |
    """
    if not iso.enabled:
        return Decision(False, OPTED_OUT)
    if is_root:
        return Decision(True, ISOLATED)
    if iso.declared:
        return Decision(False, NO_ROOT, "[isolation] needs hostd to run as root (uids, "
                        "namespaces); run hostd as root, or opt out with "
                        "[isolation] enabled = false")
    return Decision(False, NO_ROOT)


def describe(cfg, is_root: bool, known_uids: dict[str, int]) -> str:
    """`hostd --check-config`: what the pool's workers will be (one or two lines). Takes the
    PoolConfig, whether hostd (here: the checking process) is root, and the uids
    state_dir/identities.json already holds (a dynamic identity not yet given is
    given at the pool's first start). Returns the text. Never raises."""
    iso = cfg.isolation
    d = decide(iso, is_root)
    if d.error is not None:
        return f"FAILS: {d.error}"
    if not d.isolated:
        who = "root" if is_root else "hostd's user"
        return f"NOT ISOLATED ({d.why}): runs as {who}, in hostd's namespaces"
    if iso.identity == "dynamic":
        uid = known_uids.get(cfg.name)
        who = f"uid/gid {uid} (dynamic)" if uid is not None else \
            "dynamic uid/gid (a new one from identity_range at first start)"
    else:
        who = iso.identity
        try:
            entry = pwd.getpwnam(iso.identity[5:])
            who += f" (uid {entry.pw_uid} gid {entry.pw_gid})"
        except KeyError:
            pass
    spaces = ["user"] if iso.user_namespace else []
    if iso.filesystem == "site":
        spaces += ["mount", "pid"]
        view = ("site: system read-only, own /tmp, /var/tmp, /dev/shm, own /proc; sees "
                + ", ".join(pool_dirs(cfg)) + " (" + ("read-only" if iso.read_only
                                                     else "writable") + ")"
                + "".join(f", {d} (read-only)" for d in iso.show)
                + " and the Python runtime; other sites and hostd's files hidden")
    else:
        view = "host (the uid alone protects the host's files)"
    if iso.network != "host":
        spaces.append("network")
    ns = ", ".join(spaces) if spaces else "none"
    return f"isolated: {who}; namespaces: {ns}; network {iso.network}\nview: {view}"


def _account_exists(uid: int) -> bool:
    """A uid or gid the host's account database already knows is never handed out."""
    import grp
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def resolve_identity(pool: str, identity: str, store: IdentityStore) -> Identity:
    """Takes: the pool name, its [isolation] identity, the store. Returns: Identity.
    Raises: OSError (dynamic: cannot allocate), KeyError (the account vanished)."""
    if identity == "dynamic":
        uid = store.uid(pool)
        return Identity(uid, uid, "dynamic", None)
    name = identity.partition(":")[2]
    entry = pwd.getpwnam(name)
    return Identity(entry.pw_uid, entry.pw_gid, "user", name)


# --- the view ------------------------------------------------------------------------
def runtime_dirs() -> list[str]:
    """The host directories a worker imports from after it gave up root: the
    interpreter's library directories and where hostd's own packages live. They are
    shown read-only in a "site" view, and must be readable by the pool's identity."""
    import hostd
    import kernel
    import workers
    dirs = {os.path.dirname(os.path.dirname(os.path.abspath(m.__file__)))
            for m in (hostd, workers, kernel)}
    for entry in sys.path:
        if entry and os.path.isabs(entry) and os.path.isdir(entry):
            dirs.add(os.path.normpath(entry))
    # one directory inside another is already visible through it
    out = sorted(dirs)
    return [d for d in out if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in out)]


def pool_dirs(cfg) -> list[str]:
    """A pool's own directories: its working directory and its virtualenv."""
    out = [str(cfg.directory)]
    if cfg.virtualenv is not None:
        out.append(str(cfg.virtualenv))
    return out


#: hidden sites under one parent from which the parent itself is hidden instead (when
#: it holds nothing but sites): one mount instead of hundreds
COLLAPSE_AT = 8
#: ... or when what else it holds is at most this many plain directories and files:
#: those are shown again inside it, read-only, as the read-only system had them (a
#: thousand sites in /srv/www beside a README made 999 mounts per worker: its start
#: took 44 -> 89 ms as workers accumulated, every mount of the box slower)
COLLAPSE_EXTRAS = 16


def _plain(path: str, lstat) -> bool:
    """A directory or a regular file, not a symbolic link (what a view can show again)."""
    try:
        mode = lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) or stat.S_ISREG(mode)


def build_view(cfg, main, others: list, runtime: list[str] | None = None,
               tmp: dict[str, str] | None = None, listdir=os.listdir, lstat=os.lstat) -> View:
    """Takes: the pool's config, the MainConfig, the other pools' configs. Returns: the
    View of filesystem = "site": system read-only; the pool's directory (writable
    unless read_only) and virtualenv, the runtime and [isolation] show visible;
    /tmp, /var/tmp, /dev/shm private; /root, /home, hostd's config, state and run
    directories, the access log's directory and the other pools' directories hidden.
    `tmp` maps those private directories to host directories of the pool's own (so its
    workers share them, across recycles); without it each worker gets fresh tmpfs.
    Many sites under one parent (COLLAPSE_AT or more) hide as that parent, one mount
    instead of hundreds (this pool's own are shown inside it again, fsview crossing the
    hidden parent), when the parent holds nothing else but at most COLLAPSE_EXTRAS plain
    directories and files: those are shown again inside it (View.reshow, read-only as
    the read-only system had them), so nothing visible before is hidden. A parent with
    more, or with a symbolic link, keeps one hide per site (listdir, lstat: how a parent
    is listed). (ViewIndex.view, with an index of these pools.)"""
    return ViewIndex([cfg, *others], listdir, lstat).view(cfg, main, runtime, tmp)


class ViewIndex:
    """What every pool's view needs to know of all the pools, made once for a set of
    pools (the supervisor keeps one until the pools' directories change): each pool's
    directories, and which parents of many sites hold nothing but sites (listed once).
    A view is then made in time that does not grow with the other pools' number beyond
    one pass over their directories (with a thousand pools: ~5 ms -> well under 1)."""

    def __init__(self, cfgs: list, listdir=os.listdir, lstat=os.lstat):
        self.cfgs = list(cfgs)     # held: the supervisor keys this index by their ids
        self.dirs = [(c.name, pool_dirs(c)) for c in cfgs]
        self.count = len(cfgs)
        every = {d for _, ds in self.dirs for d in ds}
        self.every = every
        groups: dict[str, list[str]] = {}
        for d in every:
            parent = os.path.dirname(d.rstrip("/"))
            if parent not in ("", "/"):
                groups.setdefault(parent, []).append(d)
        #: parent -> its sites, for parents that hold nothing but pools' directories
        #: and at most COLLAPSE_EXTRAS plain directories and files (self.extras)
        self.collapsible: dict[str, list[str]] = {}
        self.extras: dict[str, list[str]] = {}
        for parent, children in groups.items():
            if len(children) < COLLAPSE_AT:
                continue
            try:
                entries = listdir(parent)
            except OSError:
                continue
            others = sorted(p for p in (os.path.join(parent, e) for e in entries)
                            if p not in every)
            if len(others) > COLLAPSE_EXTRAS or not all(_plain(p, lstat) for p in others):
                continue
            self.collapsible[parent] = children
            self.extras[parent] = others
        #: views made from this index, by what they are made of (a spawn of a pool
        #: among a thousand took ~1.7 ms to make its view again)
        self.views: dict[tuple, tuple] = {}    # key -> (cfg, main, View)

    def view(self, cfg, main, runtime: list[str] | None = None,
             tmp: dict[str, str] | None = None) -> View:
        """build_view for `cfg`, one of the indexed pools (by name); made once per
        pool config, main config, runtime and `tmp` while this index lives."""
        key = (id(cfg), id(main), None if runtime is None else tuple(runtime),
               tuple(sorted((tmp or {}).items())))
        made = self.views.get(key)
        if made is None or made[0] is not cfg or made[1] is not main:   # (an id reused)
            made = self.views[key] = (cfg, main, self._view(cfg, main, runtime, tmp))
        return made[2]

    def _view(self, cfg, main, runtime: list[str] | None,
              tmp: dict[str, str] | None) -> View:
        iso = cfg.isolation
        mine = pool_dirs(cfg)
        # a directory that leads to this pool's own files is never hidden
        leads: set[str] = set()
        for m in mine:
            p = m.rstrip("/")
            while p not in ("", "/"):
                leads.add(p)
                p = os.path.dirname(p)
        hide = set(HIDDEN_DIRS)
        hide.update(str(p) for p in (main.state_dir, main.run_dir, main.pools_dir,
                                     main.path.parent))
        if main.access_log not in ("", "journal"):
            hide.add(os.path.dirname(main.access_log))
        name = cfg.name
        for other, ds in self.dirs:
            if other != name:
                for d in ds:
                    if d.rstrip("/") not in leads:
                        hide.add(d)
        hide.discard("/")
        reshow: list[str] = []     # a collapsed parent's other entries, shown again
        if self.count - 1 >= COLLAPSE_AT:
            for parent, children in self.collapsible.items():
                inside = [c for c in children if c in hide]
                if len(inside) < COLLAPSE_AT:
                    continue
                # under a hidden directory, or a private one (the host's entries are not
                # there at all: none may be shown again), the per-site hides are pruned
                p, covered = parent, False
                while not covered and p not in ("", "/"):
                    covered = (p != parent and p in hide) or p in PRIVATE_DIRS
                    p = os.path.dirname(p)
                if covered:
                    continue
                hide.difference_update(inside)
                hide.add(parent)
                reshow.extend(self.extras.get(parent, ()))
        show = [(mine[0], not iso.read_only)] + [(d, False) for d in mine[1:]]
        for d in (runtime if runtime is not None else runtime_dirs()) + list(iso.show):
            if d not in dict(show):
                show.append((d, False))
        # a hidden directory that is also the pool's or the runtime's is shown, not hidden
        shown = {p for p, _ in show}
        hide = {h for h in hide if h not in shown}
        # never shown again: what is hidden on purpose (hostd's directories, another
        # pool's virtualenv) or shown already
        reshow = [r for r in reshow if r not in hide and r not in shown]
        tmp = tmp or {}
        # without what lies in a directory hidden or made private anyway: with the
        # sites under hostd's own (hidden) directory, or /tmp, a thousand entries
        return fsview.pruned(View(hide=tuple(sorted(hide)), show=tuple(show),
                                  private=tuple(d for d in PRIVATE_DIRS if d not in tmp),
                                  new_proc=True, read_only_system=True,
                                  binds=tuple((tmp[d], d) for d in PRIVATE_DIRS if d in tmp),
                                  reshow=tuple(reshow)))


def runtime_view(identity: Identity, runtime: list[str]) -> View | None:
    """filesystem = "host" on a host whose Python lives where the pool's uid cannot
    go (a pyenv under /root): a minimal view that changes nothing else. The first
    ancestor the uid cannot enter is hidden (crossable, not listable: the uid could
    not read it anyway) and the runtime directories under it are shown read-only.
    No read-only system, no own /proc. Returns None when the runtime is reachable."""
    hide, show = set(), []
    for d in runtime:
        parts = Path(d).parts
        for i in range(2, len(parts)):
            ancestor = str(Path(*parts[:i]))
            if unreadable(ancestor, identity.uid, identity.gid) is not None:
                hide.add(ancestor)
                show.append((d, False))
                break
    if not show:
        return None
    return View(hide=tuple(sorted(hide)), show=tuple(show), private=(), new_proc=False,
                read_only_system=False)


# --- checks before a pool starts ----------------------------------------------------
def unreadable(path: str, uid: int, gid: int, crossable=lambda p: False) -> str | None:
    """Why `uid`/`gid` cannot list and enter directory `path`, or None.

    Walks every ancestor (each needs search permission) with the plain mode bits the
    kernel checks (ACLs are not read). `crossable(p)` says an ancestor is replaced in
    the worker's view by a directory it can cross (inside a hidden or private tmpfs).
    """
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        current = str(Path(*parts[:i]))
        last = i == len(parts)
        if not last and crossable(current):
            continue
        try:
            st = os.stat(current)
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        need = (stat.S_IROTH | stat.S_IXOTH) if last else stat.S_IXOTH
        if st.st_uid == uid:
            need <<= 6
        elif st.st_gid == gid:
            need <<= 3
        if st.st_mode & need != need:
            what = "read" if last else "enter"
            return (f"uid {uid} cannot {what} {current} (owner {st.st_uid}:{st.st_gid}, "
                    f"mode {stat.S_IMODE(st.st_mode):03o})")
    return None


def access_problem(cfg, identity: Identity, view: View | None,
                   runtime: list[str] | None = None) -> str | None:
    """The first directory the pool's identity cannot read, as a clear error naming
    the file and what to do, or None. Checked at pool start.

    filesystem = "site" (a view): what the view shows, with its hidden and private
    ancestors crossable. "host" (no view): the pool's own directories as the host has
    them; the runtime's directories only by their own mode, since runtime_view shows
    them through any ancestor the uid cannot enter."""
    never = lambda p: False   # noqa: E731
    if view is not None:
        covers = [*view.hide, *view.private, *(t for _, t in view.binds)]

        def crossable(p: str) -> bool:
            return any(p == c or p.startswith(c.rstrip("/") + "/") for c in covers)
        checks = [(p, crossable) for p, _ in view.show]
    else:
        runtime = runtime if runtime is not None else runtime_dirs()
        checks = [(d, never) for d in pool_dirs(cfg)]
        checks += [(d, lambda p, d=d: p != d) for d in runtime]
    for d, crossable in checks:
        problem = unreadable(d, identity.uid, identity.gid, crossable)
        if problem is not None:
            if "cannot enter" in problem:
                hint = (f"every directory above {d} must be enterable by uid {identity.uid} "
                        "(chmod o+x, or an ACL)"
                        + (", or use filesystem = \"site\"" if view is None else ""))
            elif d in pool_dirs(cfg):
                hint = f"chown -R {identity.uid}:{identity.gid} {d}, or make it readable"
            else:
                hint = ("make the Python runtime's directories world-readable (README: what "
                        "a host needs)")
            return (f"{cfg.file}: isolation.identity: the pool's identity cannot read "
                    f"{d}: {problem}; {hint}")
    return None
