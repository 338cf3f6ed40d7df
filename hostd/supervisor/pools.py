"""Application pools: from config to running pools and back (IIS: WAS's pool manager).
Add, fail, start, stop, reload, change and retire pools; what a worker's readiness or
exit means for its pool.

A reload is a diff (policy.reload_plan): new pools start, removed pools drain and
retire, a changed pool gets a new generation of workers and its old workers drain
once the new ones are ready (nginx's "a config change is a new generation"). A pool
whose file is broken stays in the table, FAILED, with its valid bindings, so its hosts
are answered 503 and never fall through to another site.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

import os

from hostd import config as hconfig
from hostd import log, protocol
from hostd.lifecycle import WORKER_ALIVE, PoolState, WorkerState
from hostd.supervisor import policy
from hostd.supervisor.policy import ReloadStep
from hostd.supervisor.records import Pool
from kernel import sockets

if TYPE_CHECKING:
    from hostd.supervisor.connections import Connections
    from hostd.supervisor.frontends import FrontEnds
    from hostd.supervisor.health import Health
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.processes import Processes
    from hostd.supervisor.records import Registry
    from hostd.supervisor.recycling import Recycling
    from hostd.supervisor.sizing import Sizing

P, W = PoolState, WorkerState


@dataclass(eq=False)
class Pools:
    registry: Registry
    _: KW_ONLY
    placement: Placement
    connections: Connections
    processes: Processes
    frontends: FrontEnds
    sizing: Sizing
    health: Health
    recycling: Recycling

    def __post_init__(self):
        #: what the last load read of each pool file: a reload re-reads only the files
        #: that changed (hconfig.PoolFileCache)
        self.files = hconfig.PoolFileCache()

    # ------------------------------------------------------------------ adding
    def load(self) -> None:
        """At start: every pool file of pools_dir."""
        pools, broken = hconfig.load_pool_files(self.registry.main, cache=self.files)
        with self.placement.identities_held():
            for name, cfg in sorted(pools.items()):
                self.add(name, cfg)
        for name, bad in sorted(broken.items()):
            self.add_broken(bad)
        self.placement.warn_unisolated(self.registry.pools.values())
        self._tls_warnings(pools)

    def _tls_warnings(self, pools: dict) -> None:
        """At start and reload: tls_default_pool that names no usable pool, [tls] pools
        without a TLS listener, and certificates close to expiry (tls_expiring)."""
        main = self.registry.main
        problem = hconfig.tls_default_problem(main, pools)
        if problem is not None:
            log.warning("tls_default_pool", problem)
        certs = self.processes.certificates
        tls_pools = [p for p in self.registry.pools.values()
                     if p.cfg is not None and p.cfg.tls is not None]
        if tls_pools and not certs.ports:
            log.warning("tls_no_listener", f"{len(tls_pools)} pool(s) have [tls] but hostd "
                        "has no TLS listener ([hostd] listen_tls; a restart binds it)")
        certs.check_expiry(tls_pools)

    def add(self, name: str, cfg) -> Pool:
        """A new pool record for `cfg`, started (or FAILED with the reason)."""
        pool = Pool(name, cfg)
        self.registry.pools[name] = pool
        # (why, check, whether the check logs its own error)
        checks = (("configuration cannot be applied", lambda: self.placement.unsupported(cfg), False),
                  ("isolation cannot be applied", lambda: self.placement.isolate(pool), False),
                  ("limits cannot be applied", lambda: self.placement.pool_limits(pool), True))
        for why, check, logged in checks:
            problem = check()
            if problem is not None:
                pool.error = problem
                if not logged:
                    log.error("config_error", problem, POOL=name)
                pool.life.on("fail", why)
                return pool
        self._begin(pool)
        return pool

    def _begin(self, pool) -> None:
        if pool.cfg.start_mode == "always_running":
            self.processes.spawn(pool, "always_running")   # STARTED when it is ready
        else:
            pool.life.on("on_demand", "on_demand: a worker starts with the first request")
        self.processes.want_zygote(pool)     # preload: its own zygote (the warm tier)
        self.sizing.update_demand(pool)

    def add_broken(self, bad: "hconfig.BrokenPool") -> Pool:
        """A pool whose file failed validation: FAILED, with its errors, keeping the
        bindings that are valid themselves (so its hosts get 503, not another site)."""
        name = bad.name
        text = "; ".join(str(e) for e in bad.errors)
        for e in bad.errors:
            log.error("config_error", str(e), POOL=name)
        pool = Pool(name, None, error=text, bindings=bad.bindings)
        pool.life.on("fail", "config_error")
        self.registry.pools[name] = pool
        return pool

    # ------------------------------------------------------------------ failing, starting, stopping
    def fail(self, pool, reason: str, event: str) -> None:
        """Stops a pool that cannot serve (rapid-fail, limits, isolation): FAILED,
        workers drained, waiting connections answered 503."""
        if not pool.life.triggers("fail"):
            return
        pool.life.on("fail", reason)
        pool.error = reason
        log.error(event, f"pool {pool.name} failed: {reason}", POOL=pool.name, REASON=reason)
        for w in list(pool.workers.values()):
            self.processes.drain(w, "pool failed")
        self.processes.want_zygote(pool)     # failed: its zygote, if any, retires
        self.connections.fail_queue(pool)
        self.sizing.update_demand(pool)
        self.frontends.broadcast([pool])

    def start_pool(self, name: str) -> tuple[bool, str]:
        """`hostctl pool start`: brings a stopped or failed pool back, resets rapid-fail."""
        pool = self.registry.pools.get(name)
        if pool is None:
            return False, f"no pool named {name}"
        if pool.cfg is None:
            return False, f"pool {name} has a broken configuration: {pool.error}"
        if pool.state in (P.STARTED, P.STARTING):
            return True, f"pool {name} is already {pool.state.value}"
        if not pool.life.triggers("start"):
            return False, f"pool {name} is {pool.state.value}: start it once it has stopped"
        pool.rapid.reset()
        problem = self.placement.isolate(pool) or self.placement.pool_limits(pool)
        if problem is not None:
            pool.error = problem
            return False, problem
        pool.error = None
        pool.life.on("start", "hostctl pool start")
        self._begin(pool)
        self.frontends.broadcast([pool])
        return True, f"pool {name} started"

    def stop_pool(self, name: str) -> tuple[bool, str]:
        """`hostctl pool stop`: drains its workers; requests get 503 until started."""
        pool = self.registry.pools.get(name)
        if pool is None:
            return False, f"no pool named {name}"
        if pool.state in (P.STOPPED, P.STOPPING):
            return True, f"pool {name} is already {pool.state.value}"
        pool.life.on("stop", "hostctl pool stop")
        self.processes.want_zygote(pool)     # stopping: its zygote, if any, retires
        for w in list(pool.workers.values()):
            self.processes.drain(w, "pool stop")
        self.connections.fail_queue(pool)
        self.sizing.update_demand(pool)
        self.frontends.broadcast([pool])
        self._maybe_stopped(pool)
        return True, f"pool {name} stopping"

    def _maybe_stopped(self, pool) -> None:
        if pool.state == P.STOPPING and all(w.state == W.EXITED for w in pool.workers.values()):
            pool.life.on("stopped", "all workers exited")
            self.frontends.broadcast([pool])

    # ------------------------------------------------------------------ worker events
    def on_worker_ready(self, worker) -> None:
        """A worker is READY: its pool is started; a replacement's old worker drains; a
        new generation's worker replaces the oldest of an older one."""
        pool = worker.pool
        if pool.state == P.STARTING:
            pool.life.on("worker_ready", f"worker {worker.id} ready")
            self.frontends.broadcast([pool])
        if not self.recycling.replacement_ready(worker) and worker.generation == pool.generation:
            # an overlapping replacement: the oldest worker of an older generation goes
            old = [w for w in pool.workers.values()
                   if w.generation < pool.generation and w.state in (W.READY, W.STARTING)]
            if old:
                self.processes.drain(min(old, key=lambda w: w.id), "config changed")
        if worker.generation < pool.generation or pool.state not in (P.STARTED, P.STARTING):
            self.processes.drain(worker, "superseded")

    def on_worker_exited(self, worker, reason: str, failed: bool) -> None:
        """A worker is gone: a failure counts toward rapid-fail; an always_running pool
        left without a worker gets one; a non-overlapping recycle starts its
        replacement; the next recycle may begin."""
        pool = worker.pool
        stopping = self.registry.stopping
        if failed and pool.state in (P.STARTED, P.STARTING):
            tripped = self.health.count_failure(worker, reason)
            if tripped is not None:
                self.fail(pool, tripped, "rapid_fail")
            elif pool.cfg is not None and pool.cfg.start_mode == "always_running" \
                    and not pool.alive():
                self.processes.spawn(pool, "replace failed worker")
        elif worker.recycle.respawn_after and pool.state == P.STARTED and not stopping \
                and len(pool.alive()) < pool.cfg.processes:
            # a non-overlapping recycle: its replacement starts now, as a recycle (a
            # garden that grew meanwhile, on a queue or on saturation, has its worker)
            self.processes.spawn(pool, f"recycle: {worker.recycle.reason}")
        elif pool.cfg is not None and policy.respawn_needed(
                pool.state, pool.cfg.start_mode == "always_running", len(pool.alive()), stopping):
            self.processes.spawn(pool, "always_running")
        self.recycling.replacement_gone(worker)
        self.sizing.update_demand(pool)
        self._maybe_stopped(pool)
        self.recycling.next(pool)

    def on_spawn_refused(self, worker, reason: str) -> None:
        """No cgroup for a new worker: a failure of its pool."""
        tripped = self.health.count_failure(worker, reason)
        if tripped is not None:
            self.fail(worker.pool, tripped, "rapid_fail")

    def on_queue_full(self, counts: dict) -> None:
        for name, n in counts.items():
            pool = self.registry.pools.get(name)
            if pool is not None:
                pool.totals.queue_full += int(n)

    # ------------------------------------------------------------------ reload
    def reload(self, config_path) -> None:
        """SIGHUP: applies policy.reload_plan of the new configuration. The listening
        sockets stay open throughout; a broken main file changes nothing."""
        try:
            main = hconfig.load_main(config_path)
            pools, broken = hconfig.load_pool_files(main, cache=self.files)
        except hconfig.ConfigErrors as exc:
            for e in exc.errors:
                log.error("config_error", str(e))
            log.error("reload_failed", "main configuration is broken; keeping the running one")
            return
        old_main = self.registry.main
        if main.listen != old_main.listen or \
                (main.frontends or os.cpu_count()) != len(self.frontends.slots):
            log.warning("reload", "listen/frontends changed: restart hostd to apply them")
        if main.listen_tls != self.processes.certificates.listen_tls:
            log.warning("reload", "listen_tls changed: restart hostd to apply it (the TLS "
                        "listeners bound at start stay)")
        if main.run_dir != old_main.run_dir:
            log.warning("reload", "run_dir changed: restart hostd to apply it")
        self.registry.main = main
        if main.idle_pressure != old_main.idle_pressure:
            try:
                self.placement.setup_pressure()
            except OSError as exc:
                log.error("config_error", f"{exc}; idle workers are not stopped on pressure")
        running = {n: (p.cfg, p.state) for n, p in self.registry.pools.items()}
        added = False
        plan = policy.reload_plan(running, pools, broken, self.placement.unsupported)
        changing = {name for step, name, _ in plan if step == ReloadStep.CHANGE}
        certs = self.processes.certificates
        # certificates first: a changed pool's new generation gets the pairs that load
        # (the new ones, or the previous ones when the new ones are bad); an unchanged
        # pool whose pair changed is replaced like a changed one
        renew = []
        for name, pool in self.registry.pools.items():
            if pool.cfg is not None and name in pools and (name in changing or
                                                           pools[name] == pool.cfg):
                if certs.refresh(name, pools[name]) and name not in changing:
                    renew.append(pool)
        with self.placement.identities_held():
            for step, name, reason in plan:
                added = added or step in (ReloadStep.ADD, ReloadStep.REPLACE)
                if step == ReloadStep.CHANGE:
                    self._change(self.registry.pools[name], pools[name])
                    continue
                if step in (ReloadStep.RETIRE, ReloadStep.BROKEN, ReloadStep.REPLACE):
                    old = self.registry.pools.pop(name, None)
                    certs.forget(name)
                    if old is not None:
                        self.retire(old, reason)
                if step == ReloadStep.BROKEN:
                    self.add_broken(broken[name])
                elif step in (ReloadStep.ADD, ReloadStep.REPLACE):
                    self.add(name, pools[name])
        if added:
            # a pool zygote's view was made at its start: one that hides other sites
            # is replaced, so its next workers hide the new ones too
            for name, rec in list(self.processes.pool_zygotes.items()):
                pool = self.registry.pools.get(name)
                if pool is rec.pool and pool.cfg is not None and \
                        pool.cfg.isolation.filesystem == "site" and rec.state != "failed":
                    self.processes.renew_zygote(pool, "pools added: a view that hides them")
        for pool in renew:
            self.renew_tls(pool)
        tables = self.registry.worker_tables()
        for pool in self.registry.staffed_pools():
            if self.registry.pools.get(pool.name) is not pool:
                continue                # retired: draining, routes no more
            live = [w for w in pool.workers.values() if w.state in (W.STARTING, W.READY)]
            if live:    # each pool's share of the table (router.worker_table)
                routes = protocol.routes(self.registry.worker_routes(pool.name, tables))
                for w in live:
                    self.processes.send(w, routes)
        self.frontends.broadcast()
        self.placement.warn_unisolated(self.registry.pools.values())
        self._tls_warnings(pools)
        log.notice("reloaded", f"configuration reloaded: {len(self.registry.pools)} pools")

    def _change(self, pool, cfg) -> None:
        """A changed pool: a new generation of workers; the old ones drain once their
        replacements are ready (on_worker_ready)."""
        pool.cfg = cfg
        pool.bindings = tuple(cfg.bindings)
        problem = self.placement.isolate(pool)
        if problem is not None:
            self.fail(pool, problem, "isolation_failed")
            return
        problem = self.placement.pool_limits(pool)
        if problem is not None:
            self.fail(pool, problem, "limits_failed")
            return
        pool.rapid.max_failures = cfg.health.rapid_fail_max_crashes
        pool.rapid.interval = cfg.health.rapid_fail_interval
        pool.generation += 1
        self.processes.want_zygote(pool)     # a new generation: a new zygote (or none)
        if cfg.queue_length != pool.queue_len:
            self._resize_queue(pool, cfg.queue_length)
        if pool.state not in (P.STARTED, P.STARTING):
            return   # stopped (hostctl pool stop): it starts with the new config on start
        log.notice("recycle", f"pool {pool.name} changed; replacing its workers",
                   POOL=pool.name, REASON="config")
        self._replace_workers(pool, "config", "config changed")

    def renew_tls(self, pool) -> None:
        """The pool's certificate changed (and loads): a new generation of workers, as
        for a changed config (replacements first, the old ones drain once they are
        ready; a preload pool's zygote is replaced), so new connections get the new
        certificate while open ones finish on the old workers."""
        pool.generation += 1
        self.processes.want_zygote(pool)
        if pool.state not in (P.STARTED, P.STARTING):
            return
        log.notice("recycle", f"pool {pool.name}: certificate changed; replacing its "
                   "workers", POOL=pool.name, REASON="tls")
        self._replace_workers(pool, "tls", "certificate changed")

    def _replace_workers(self, pool, reason: str, why: str) -> None:
        """A new generation's workers for the live ones (counted as `reason` recycles):
        starting ones are dropped, each ready one gets a replacement (an
        always_running pool at least one), those beyond `processes` drain now."""
        cfg = pool.cfg
        old = [w for w in pool.workers.values() if w.state in WORKER_ALIVE]
        pool.recycles[reason] += len(old)
        for w in old:
            if w.state in (W.SPAWNING, W.STARTING):
                self.processes.drain(w, why)
        ready = [w for w in old if w.state == W.READY]
        n = max(len(ready), 1) if cfg.start_mode == "always_running" else len(ready)
        for _ in range(min(n, cfg.processes)):
            self.processes.spawn(pool, why)
        # old READY workers beyond the new `processes` have no replacement: drain now
        for w in ready[min(n, cfg.processes):]:
            self.processes.drain(w, why)
        self.sizing.update_demand(pool)

    def _resize_queue(self, pool, new_len: int) -> None:
        delta = new_len - pool.queue_len
        pool.queue_len = new_len
        if delta > 0:
            sockets.give_slot(pool.sem, delta)
        else:
            for _ in range(-delta):
                if not sockets.take_slot(pool.sem):
                    pool.sem_debt += 1

    # ------------------------------------------------------------------ retiring
    def retire(self, pool, reason: str) -> None:
        """Takes a pool out of service: routes are withdrawn (the caller broadcasts),
        workers drain, waiting connections are routed again."""
        if pool.life.triggers("stop"):
            pool.life.on("stop", reason)
        self.processes.retire_zygote(pool, reason)
        self.sizing.forget_demand(pool)
        for w in list(pool.workers.values()):
            self.processes.drain(w, reason)
        self.registry.retired.append(pool)
        # what still waits in its queue is routed again once the front ends have the
        # new table (finish_retired, on the tick, once its workers are gone)
        self.connections.reroute_queue(pool)

    def finish_retired(self) -> None:
        """Duty: retired pools whose workers are all gone are closed."""
        for pool in [p for p in self.registry.retired if not p.workers]:
            self.connections.reroute_queue(pool)
            self.connections.forget_parked(pool)
            if pool.life.triggers("stopped"):
                pool.life.on("stopped", "retired")
            self.registry.retired.remove(pool)
            self.connections.close_relay(pool)
            self.placement.release_pool(pool, self.registry.pools.get(pool.name))
            pool.close()
