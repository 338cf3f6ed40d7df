"""Where a pool runs: its cgroup and [limits], its workers' cgroups and memory watches,
its identity, network namespace and private /tmp (IIS: the application pool identity
and its job object).

Owns: the cgroup tree (torn down at exit), the identity store, the v2 memory watches'
one shared inotify instance and every worker's MemoryWatch (closed in release_worker).
Reports: MemoryEvent when the kernel says a worker's cgroup passed a memory threshold;
recycling.py decides what follows. kernel/ knows every cgroup file; this room only asks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import contextlib
import ipaddress
import os
import time

from hostd import isolation, log, poollimits, protocol
from hostd.supervisor import policy
from hostd.supervisor.events import MemoryEvent
from kernel import cgroups as kcgroups
from kernel import fdpass, memevents

#: seconds an index of the pools' views is kept (isolation.ViewIndex lists directories)
VIEW_INDEX_AGE = 10.0
#: pending network namespaces made per tick (~5 ms each: a thousand in ~12 s at 20 Hz)
NETWORKS_PER_TICK = 4

#: v1: each supervisor's base cgroup is BASE_PREFIX + its pid, beside its own cgroup
BASE_PREFIX = "hostd."

def _user_name() -> str:
    """hostd's own user, as a warning names it ("root", or "uid N")."""
    import pwd
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


if TYPE_CHECKING:
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry


@dataclass(eq=False)
class Placement:
    registry: Registry
    reactor: Reactor

    def __post_init__(self):
        self.cgroups = None                    # kernel.cgroups tree, when available
        self.identities: isolation.IdentityStore | None = None   # opened when first needed
        self.runtime_dirs: list[str] | None = None
        self.tmp_mounted: str | None = None    # run_dir/tmp, the pools' /tmp tmpfs
        self.frontend_ids: tuple[int, int] | None = None   # (uid, gid) the front ends drop to
        self.memory_inotify: memevents.Inotify | None = None
        self.memory_wds: dict[int, object] = {}            # v2 watch descriptor -> worker
        self.view_index = None      # (key, made at, isolation.ViewIndex): _view's cache
        self.networks_pending: dict[str, object] = {}   # pool name -> Pool (network none)

    @property
    def main(self):
        return self.registry.main

    # ------------------------------------------------------------------ cgroups
    def setup_cgroups(self) -> None:
        """Every worker gets a cgroup of its own under hostd's subtree (IIS job-object
        semantics: stopping a worker kills everything it started). Without root or
        cgroups, workers are killed by process group instead, and we say so."""
        if os.geteuid() != 0:
            return
        try:
            # v1 (hybrid hosts): one base per supervisor, so two hostds never share one
            tree = kcgroups.detect(name=f"{BASE_PREFIX}{self.registry.pid}")
            tree.setup()
        except (kcgroups.CgroupUnavailable, OSError) as exc:
            log.warning("no_cgroups", f"cgroups unavailable, workers are not contained: {exc}")
            return
        self.cgroups = tree
        self._sweep_stale(tree)
        log.info("cgroups", f"cgroup v{tree.version} subtree at {tree.path}",
                 CGROUP=tree.path, VERSION=tree.version)

    def _sweep_stale(self, tree) -> None:
        """Removes the v1 bases of earlier hostds that were killed (SIGKILL leaves them:
        a stop tears its own down). Only bases beside ours whose supervisor is gone, and
        only empty ones: their processes died with their supervisor (PDEATHSIG); one
        that still holds a process is left alone and said so. Never fails the start."""
        for cg in tree.stale_bases(BASE_PREFIX):
            try:
                cg.remove()
            except OSError as exc:
                log.warning("cgroup_remove", f"{cg.path}, left by a hostd that was killed: "
                            f"{exc}", CGROUP=cg.path)
                continue
            log.info("cgroup_stale", f"removed {cg.path}, left by a hostd that was killed",
                     CGROUP=cg.path)

    def unsupported(self, cfg) -> str | None:
        """What this host cannot apply of a pool's config, or None (policy.unsupported)."""
        return policy.unsupported(cfg, self.cgroups is not None)

    def pool_limits(self, pool) -> str | None:
        """Writes the pool's [limits] to its cgroup (created here, before any worker);
        returns the error (file, key, cgroup file) when one cannot be applied."""
        if self.cgroups is None or pool.cfg is None:
            return None
        if pool.limits is None:
            pool.limits = poollimits.PoolLimits(self.cgroups, pool.name)
        try:
            pool.limits.apply(pool.cfg.limits, pool.cfg.file)
        except poollimits.LimitError as exc:
            log.error("config_error", str(exc), POOL=pool.name)
            return str(exc)
        return None

    def worker_cgroup(self, worker) -> None:
        """Gives a new worker its cgroup, worker_memory_max and the kernel watch that
        recycles it at private_memory (v2 memory.high + memory.events; v1 eventfd
        thresholds). Without cgroups it does nothing.
        Raises: OSError (the caller refuses the spawn); what was made is released."""
        if self.cgroups is None:
            return
        pool = worker.pool
        try:
            worker.cgroup = self.cgroups.worker(pool.name, worker.id)
            if pool.limits is not None and pool.limits.cg is None:
                pool.limits.cg = self.cgroups.pool(pool.name)   # made with the first worker
            limit = pool.cfg.limits.worker_memory_max
            high = pool.cfg.recycling.private_memory
            if not limit and not high:
                return
            if limit:
                worker.cgroup.set_memory_max(limit)
            # v2 throttles at memory.high and reports it through the shared inotify
            # instance (made on first use); v1 signals an eventfd threshold
            worker.memwatch = worker.cgroup.memory_watch(high, limit, inotify=self._inotify)
        except OSError:
            self.release_worker(worker)
            raise
        if worker.memwatch.shared_inotify:
            self.memory_wds[worker.memwatch.wd] = worker
        else:
            self.reactor.watch(worker.memwatch.fileno(), lambda ev, w=worker: self._memory(w))

    def _inotify(self) -> memevents.Inotify:
        """v2: the one inotify instance every worker's memory.events watch shares."""
        if self.memory_inotify is None:
            self.memory_inotify = memevents.Inotify()
            self.reactor.watch(self.memory_inotify.fileno(), self._inotify_readable)
        return self.memory_inotify

    def _inotify_readable(self, _ev) -> None:
        for wd in self.memory_inotify.read():
            worker = self.memory_wds.get(wd)
            if worker is not None:
                self._memory(worker)

    def _memory(self, worker) -> None:
        """The kernel's memory events of one worker: lifts memory.high once it is
        passed (throttled workers crawl), notes an OOM kill, reports the rest."""
        if worker.memwatch is None:
            return
        kinds = frozenset(worker.memwatch.read())
        if memevents.HIGH in kinds:
            try:
                worker.memwatch.release_high()
            except OSError as exc:
                log.warning("cgroup_failed", f"worker {worker.label}: {exc}",
                            POOL=worker.pool.name)
        if memevents.OOM in kinds:
            worker.oom = True
            log.error("oom", f"worker {worker.label} pid {worker.pid}: OOM kill in its cgroup",
                      POOL=worker.pool.name, WORKER_PID=worker.pid, REASON="oom_kill")
        if kinds:
            self.reactor.post(MemoryEvent(worker, kinds))

    def zygote_cgroup(self, rec) -> None:
        """A preload pool's zygote: its leaf `pool-<name>/zygote-<n>` (kernel.cgroups),
        where the workers it forks without a cgroup of their own stay too. Without
        cgroups it does nothing. Raises: OSError (the zygote is not started)."""
        if self.cgroups is None:
            return
        pool = rec.pool
        rec.cgroup = self.cgroups.zygote(pool.name, rec.n)
        if pool.limits is not None and pool.limits.cg is None:
            pool.limits.cg = self.cgroups.pool(pool.name)

    def release_zygote_cgroup(self, rec) -> None:
        """Removes a pool zygote's leaf once it and the workers in it are gone, killing
        what they left behind there."""
        cg = rec.cgroup
        if cg is None or not rec.exited or rec.users > 0:
            return
        try:
            if cg.pids():
                log.info("cgroup_leftovers", f"killing what {rec.label} and its workers "
                         "left behind", POOL=rec.pool.name)
                cg.kill()
            cg.remove()
        except OSError as exc:
            log.warning("cgroup_remove", str(exc), POOL=rec.pool.name)
        rec.cgroup = None

    def needs_worker_cgroup(self, pool) -> bool:
        """A worker forked by its pool's zygote gets a cgroup of its own (a move that
        costs a few ms on the spawn's path) only for what needs one: worker_memory_max
        or private_memory recycling (the kernel's per-worker memory events)."""
        cfg = pool.cfg
        return self.cgroups is not None and bool(cfg.limits.worker_memory_max
                                                 or cfg.recycling.private_memory)

    def fence_fd(self, worker) -> int | None:
        """v1: a new descriptor the kernel signals when the worker passes its memory
        threshold (its own copy of the notification), or None (v2, no watch)."""
        return worker.memwatch.fence() if worker.memwatch is not None else None

    def near_memory_max(self, worker) -> bool:
        watch = worker.memwatch
        return bool(watch is not None and watch.limit and watch.usage() >= watch.near_limit())

    def release_worker(self, worker) -> None:
        """Closes the worker's memory watch and removes its cgroup, killing whatever it
        left behind there (a double-forked daemon too)."""
        if worker.memwatch is not None:
            if worker.memwatch.shared_inotify:
                self.memory_wds.pop(worker.memwatch.wd, None)
            else:
                self.reactor.unwatch(worker.memwatch.fileno())
            worker.memwatch.close()
            worker.memwatch = None
        if worker.cgroup is not None:
            pool = worker.pool
            try:
                if worker.cgroup.pids():
                    log.info("cgroup_leftovers", f"killing what worker {worker.label} "
                             "left behind", POOL=pool.name, WORKER_PID=worker.pid)
                    worker.cgroup.kill()
                worker.cgroup.remove()
            except OSError as exc:
                log.warning("cgroup_remove", str(exc), POOL=pool.name)
            worker.cgroup = None

    def orphan(self, worker) -> None:
        """Moves an orphaned worker's cgroup out of its pool (kept for debugging)."""
        cg = worker.cgroup
        if cg is None or self.cgroups is None:
            return
        try:
            worker.cgroup = cg.move_to(self.cgroups.orphans(worker.pool.name))
        except OSError as exc:
            log.warning("orphan_cgroup", str(exc), POOL=worker.pool.name, WORKER_PID=worker.pid)

    def oom_killed(self, worker) -> bool:
        """A worker died of SIGKILL: was it the OOM killer (its own or the pool's limit)?
        Logs `oom` when the worker's memory watch has not already."""
        if worker.oom:
            return True
        pool = worker.pool
        where = pool.limits.oom_killed(worker.cgroup) if pool.limits is not None else None
        if where is None:
            return False
        worker.oom = True
        text = (f"pool {pool.name}: OOM kill in the pool's cgroup at memory_max "
                f"({pool.limits.applied.memory_max} bytes)" if where == "pool memory_max"
                else f"OOM kill in the cgroup of worker {worker.label}")
        log.error("oom", f"{text}; killed worker {worker.label} pid {worker.pid}",
                  POOL=pool.name, WORKER_PID=worker.pid, REASON="oom_kill",
                  LIMIT=where.replace(" ", "_"))
        return True

    # ------------------------------------------------------------------ identity, view
    def isolate(self, pool) -> str | None:
        """Resolves the pool's [isolation] (identity, network namespace) and checks that
        its identity can read what its workers need. Returns the error (naming the
        file and key), or None. The filesystem view is made per spawn
        (worker_isolation), so it hides pools added since."""
        cfg, iso = pool.cfg, pool.cfg.isolation
        decision = self.decide(pool)
        if decision.error is not None:
            return f"{cfg.file}: {decision.error}"
        if not decision.isolated:
            pool.identity = None
            if pool.netns is not None:
                self.drop_network(pool)
            self.drop_tmp(pool)
            return None
        try:
            identity = isolation.resolve_identity(pool.name, iso.identity, self.identity_store())
        except (OSError, KeyError) as exc:
            return f"{cfg.file}: isolation.identity: {exc}"
        if iso.filesystem == "site":
            try:
                self._pool_tmp(pool)
            except OSError as exc:
                return f"{cfg.file}: isolation.filesystem: cannot make the pool's /tmp: {exc}"
        elif pool.tmp is not None:
            self.drop_tmp(pool)
        # the check's view leaves the other pools out: hiding one never hides what leads
        # to this pool's own files (build_view), so they cannot change its verdict, and
        # building it against every pool made a 1,000-pool start quadratic
        view = isolation.build_view(cfg, self.main, [], self._runtime_dirs(), pool.tmp) \
            if iso.filesystem == "site" else None
        problem = isolation.access_problem(cfg, identity, view, self._runtime_dirs())
        if problem is not None:
            return problem
        try:
            self._pool_network(pool)
        except (OSError, RuntimeError, ValueError) as exc:
            return f"{cfg.file}: isolation.network: {exc}"
        if pool.identity != identity:
            log.info("identity", f"pool {pool.name} runs as uid {identity.uid} gid "
                     f"{identity.gid} ({iso.identity})", POOL=pool.name, UID=identity.uid,
                     GID=identity.gid)
        pool.identity = identity
        return None

    def decide(self, pool) -> isolation.Decision:
        """Whether the pool's workers are isolated (hostd/isolation.py decide)."""
        return isolation.decide(pool.cfg.isolation, os.geteuid() == 0)

    def warn_unisolated(self, pools) -> None:
        """At start and after every reload: one warning per pool that opted out
        ([isolation] enabled = false), so the choice is never silent."""
        for pool in pools:
            if pool.cfg is not None and not pool.cfg.isolation.enabled:
                log.warning("unisolated", f"pool {pool.name}: [isolation] enabled = false "
                            f"({pool.cfg.file}): its workers run as {_user_name()}, in "
                            "hostd's namespaces, and can read every site", POOL=pool.name)

    def frontend_identity(self) -> None:
        """The front ends parse what any client sends: once their sockets are set up they
        drop root for a uid of their own (never a pool's, so no site can signal or
        ptrace them), with no capabilities. [hostd] frontend_identity; a change needs a
        restart."""
        choice = self.main.frontend_identity
        if os.geteuid() != 0 or choice == "root":
            return
        try:
            ident = isolation.resolve_identity(isolation.FRONTEND_KEY, choice,
                                               self.identity_store())
        except (OSError, KeyError) as exc:
            log.error("frontend_identity", f"{self.main.path}: hostd.frontend_identity: {exc}; "
                      "the front ends stay root")
            return
        self.frontend_ids = (ident.uid, ident.gid)
        log.info("identity", f"front ends run as uid {ident.uid} gid {ident.gid} ({choice})",
                 UID=ident.uid, GID=ident.gid)

    @contextlib.contextmanager
    def identities_held(self):
        """Many pools at once (start, reload): the identities given meanwhile are saved
        once, at the end (IdentityStore.held). Never raises: a store that cannot be
        opened is each pool's error (isolate), one that cannot be saved is logged."""
        try:
            store = self.identity_store() if os.geteuid() == 0 else None
        except OSError:
            store = None
        if store is None:
            yield
            return
        try:
            with store.held():
                yield
        except OSError as exc:
            log.error("identity", f"{store.path}: the pools' identities could not be "
                      f"saved: {exc}; they are given again, the same way, at the next start")

    # ------------------------------------------------------------------ memory pressure
    def setup_pressure(self) -> None:
        """[hostd] idle_pressure: finds the pressure file to watch (kernel.psi.source:
        the v2 cgroup hostd runs in, else /proc/pressure/memory).
        Raises OSError naming the key when this host has neither."""
        rule = self.registry.main.idle_pressure
        self.psi_path = None
        if rule is None:
            return
        from kernel import psi
        base = self.cgroups.pressure_file(rule.resource) if self.cgroups is not None else None
        self.psi_path = psi.source(rule.resource, first=base)
        if self.psi_path is None:
            raise OSError(f"{self.registry.main.path}: hostd.idle_pressure: this host has no "
                          f"pressure stall information ({rule.resource}.pressure of hostd's "
                          f"cgroup v2, or /proc/pressure/{rule.resource}: a kernel with "
                          "CONFIG_PSI, not booted with psi=0); remove the key")
        log.info("pressure", f"idle_pressure {rule.text!r}: watching {self.psi_path}",
                 FILE=self.psi_path)

    def pressure(self) -> float | None:
        """The watched pressure figure now (the rule's kind and window, in percent), or
        None when idle_pressure is off or the file cannot be read this time."""
        rule = self.registry.main.idle_pressure
        if rule is None or getattr(self, "psi_path", None) is None:
            return None
        from kernel import psi
        try:
            return psi.read(self.psi_path).get(rule.kind, {}).get(rule.window)
        except (OSError, ValueError):
            return None

    def identity_store(self) -> isolation.IdentityStore:
        if self.identities is None:
            first, last = self.main.identity_range
            self.identities = isolation.IdentityStore(
                self.main.state_dir / "identities.json", first, last)
        return self.identities

    def _runtime_dirs(self) -> list[str]:
        if self.runtime_dirs is None:
            self.runtime_dirs = isolation.runtime_dirs()
        return self.runtime_dirs

    def _view(self, pool):
        """The pool's view (isolation.ViewIndex.view), from an index of every pool that
        is made again when a pool's config changes, or after VIEW_INDEX_AGE seconds (it
        lists the parents of many sites: what is in them may change)."""
        pools = [p for p in self.registry.pools.values() if p.cfg is not None]
        if pool not in pools:
            pools.append(pool)
        # the index holds these configs, so no id in the key is reused while it lives
        key = tuple(id(p.cfg) for p in pools)
        now = time.monotonic()
        cached = self.view_index
        if cached is None or cached[0] != key or now - cached[1] > VIEW_INDEX_AGE:
            cached = self.view_index = (key, now, isolation.ViewIndex([p.cfg for p in pools]))
        return cached[2].view(pool.cfg, self.main, self._runtime_dirs(), pool.tmp)

    def worker_isolation(self, pool) -> dict | None:
        """The spawn spec's "isolation": what the zygote applies (hostd/zygote.py)."""
        iso = pool.cfg.isolation
        if pool.identity is None:       # not isolated (isolate decided)
            return None
        if iso.filesystem == "site":
            view = self._view(pool)
        else:
            view = isolation.runtime_view(pool.identity, self._runtime_dirs())
        return {"uid": pool.identity.uid, "gid": pool.identity.gid,
                "userns": iso.user_namespace, "pidns": iso.filesystem == "site",
                "view": view.to_spec() if view is not None else None,
                "netns": pool.netns}

    def zygote_isolation(self, pool) -> dict | None:
        """The pool zygote's "isolation": its workers' (worker_isolation) without a pid
        namespace of its own (it must stay in the supervisor's, so that the workers it
        double-forks are re-parented to the supervisor, not to it), so its view's /proc
        shows only the pool's uid's processes (hidepid=invisible)."""
        iso = self.worker_isolation(pool)
        if iso is None:
            return None
        iso = dict(iso, pidns=False)
        if iso.get("view") and iso["view"].get("new_proc"):
            iso["view"] = dict(iso["view"], proc_hidepid=True)
        return iso

    def identity_doc(self, pool) -> tuple[bool, dict]:
        """`hostctl pool identity NAME`: the uid/gid the pool's workers run as."""
        name = pool.name
        iso = pool.cfg.isolation
        decision = self.decide(pool)
        if not decision.isolated:
            doc = {"uid": os.geteuid(), "gid": os.getegid(), "identity": "hostd", "user": None}
        else:
            identity = pool.identity
            if identity is None:
                try:
                    identity = isolation.resolve_identity(name, iso.identity,
                                                          self.identity_store())
                except (OSError, KeyError) as exc:
                    return False, {"ok": False, "message": f"pool {name}: {exc}"}
            doc = identity.to_dict()
        return True, {"ok": True, "pool": name, **doc, "isolated": decision.isolated,
                      "isolation_reason": decision.why,
                      "message": f"pool {name}: uid {doc['uid']} gid {doc['gid']} "
                                 f"({doc['identity']})"}

    # ------------------------------------------------------------------ private dirs, network
    def _pool_tmp(self, pool) -> None:
        """The pool's own /tmp and /dev/shm (directories of its own in one tmpfs at
        run_dir/tmp, shared by every pool: one mount on the host, not one per pool, for
        each mount is copied into every worker's mount namespace; its workers share them
        and they outlive recycles) and /var/tmp (in state_dir, kept across restarts like
        the host's). Pages a pool writes there are charged to the writer's memory cgroup,
        so [limits] memory_max bounds them. Raises: OSError."""
        from kernel import ns
        top = self.main.run_dir / "tmp"
        top.mkdir(mode=0o711, parents=True, exist_ok=True)
        if not os.path.ismount(top):
            ns.mount("tmpfs", str(top), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=0711")
        self.tmp_mounted = str(top)     # (or a killed hostd's, adopted: removed at stop)
        base = top / pool.name
        base.mkdir(mode=0o711, exist_ok=True)
        var = self.main.state_dir / "tmp" / pool.name
        var.mkdir(parents=True, exist_ok=True)
        for d in (base / "tmp", base / "shm", var):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o1777)
        pool.tmp = {"/tmp": str(base / "tmp"), "/dev/shm": str(base / "shm"),
                    "/var/tmp": str(var)}

    def drop_tmp(self, pool) -> None:
        """Removes the pool's /tmp and /dev/shm with what is in them (its /var/tmp
        stays, as the host's would)."""
        if pool.tmp is None:
            return
        import shutil
        base = os.path.dirname(pool.tmp["/tmp"])
        try:
            shutil.rmtree(base)
        except OSError as exc:
            log.warning("tmp", f"pool {pool.name}: cannot remove its /tmp: {exc}", POOL=pool.name)
        pool.tmp = None

    def _pool_network(self, pool) -> None:
        """network = "none"/"private": the pool's own network namespace, pinned at
        run_dir/netns/<pool>; "private" adds a veth pair with a /30 of private_network.
        Raises: OSError, RuntimeError, ValueError."""
        from kernel import netns
        mode = pool.cfg.isolation.network
        if mode == "host":
            self.drop_network(pool)
            return
        path = str(self.main.run_dir / "netns" / pool.name)
        if mode == "none" and pool.netns is None:
            # made in the background after the start (prepare_networks), or by the
            # pool's first spawn, whichever comes first: a thousand of them at ~5 ms
            # each kept hostd from being ready for 5 s
            pool.netns_pending = path
            self.networks_pending[pool.name] = pool
            if pool.link is not None:
                netns.remove_link(pool.link)
                pool.link = None
            return
        netns.create(path)
        pool.netns = path
        if mode == "private" and pool.link is None:
            index = self.identity_store().net_index(pool.name)
            host, inside, plen = netns.subnet(ipaddress.IPv4Network(self.main.private_network),
                                              index)
            ifname = netns.ifname(pool.name, index)
            netns.private_link(path, ifname, str(host), str(inside), plen)
            pool.link = ifname
            log.info("network", f"pool {pool.name}: {ifname} {host}/{plen} <-> eth0 {inside}",
                     POOL=pool.name, INTERFACE=ifname)
        elif mode == "none" and pool.link is not None:
            netns.remove_link(pool.link)
            pool.link = None

    def ensure_network(self, pool) -> str | None:
        """Makes the pool's network namespace if it is still pending. Returns the
        error (naming the file and key), or None."""
        path = pool.netns_pending
        if path is None:
            return None
        self.networks_pending.pop(pool.name, None)   # the duty tries it once
        from kernel import netns
        try:
            netns.create(path)
        except (OSError, RuntimeError, ValueError) as exc:
            # still pending: no worker of a network = "none" pool ever runs without it
            return f"{pool.cfg.file}: isolation.network: {exc}"
        pool.netns, pool.netns_pending = path, None
        return None

    def prepare_networks(self, limit: int = NETWORKS_PER_TICK) -> list:
        """Duty: makes up to `limit` pending network namespaces. Returns [(pool,
        error)] of those that could not be made (the caller fails those pools)."""
        failed = []
        while self.networks_pending and limit > 0:
            name = next(iter(self.networks_pending))
            pool = self.networks_pending[name]
            if self.registry.pools.get(name) is not pool:
                self.networks_pending.pop(name)
                continue
            limit -= 1
            problem = self.ensure_network(pool)
            if problem is not None:
                failed.append((pool, problem))
        return failed

    def drop_network(self, pool) -> None:
        if pool.netns_pending is not None:
            self.networks_pending.pop(pool.name, None)
            pool.netns_pending = None
        if pool.netns is None and pool.link is None:
            return
        from kernel import netns
        try:
            if pool.link is not None:
                netns.remove_link(pool.link)
            if pool.netns is not None:
                netns.destroy(pool.netns)
        except (OSError, RuntimeError) as exc:
            log.warning("network", f"pool {pool.name}: cannot remove its network: {exc}",
                        POOL=pool.name)
        pool.netns = pool.link = None

    def release_pool(self, pool, successor=None) -> None:
        """A pool record goes away: its network and /tmp too, unless `successor` (a
        re-added pool of that name) uses them."""
        if successor is None or successor.netns is None:
            self.drop_network(pool)
        if successor is None or successor.tmp is None:
            self.drop_tmp(pool)

    def send_access_log(self, workers) -> None:
        """logrotate for isolated workers, which can neither see nor open the file: the
        supervisor opens it and sends each one the descriptor over its control channel."""
        target = self.main.access_log
        isolated = [w for w in workers if w.isolated and w.ctl is not None]
        if target in ("", "journal") or not isolated:
            return
        from hostd.accesslog import open_file
        try:
            fd = open_file(target)
        except OSError as exc:
            log.error("access_log", f"cannot open {target}: {exc}")
            return
        try:
            for w in isolated:
                try:
                    fdpass.send_with_fds(w.ctl, protocol.access_log(), [fd])
                except OSError:
                    pass
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.memory_inotify is not None:
            self.memory_inotify.close()
        if self.tmp_mounted:
            from kernel import ns
            try:            # the pools' /tmp tmpfs (every pool's was removed before)
                ns.umount(self.tmp_mounted, ns.MNT_DETACH)
                os.rmdir(self.tmp_mounted)
            except OSError as exc:
                log.warning("tmp", f"cannot remove {self.tmp_mounted}: {exc}")
            self.tmp_mounted = None
        if self.cgroups is not None:
            try:
                self.cgroups.teardown()
            except (OSError, TimeoutError) as exc:
                log.warning("cgroup_teardown", str(exc))
