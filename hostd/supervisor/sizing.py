"""How many workers a pool runs: demand start, web garden growth and balance, idle
shrink (IIS: on-demand start, web gardens, idle time-out).

Demand: while a pool has no live worker its queue is watched, and the first waiting
connection starts one. With workers, growth is checked on the tick, so the supervisor is
never woken per request. The decisions are hostd.garden's and policy's; this room
samples and acts through processes.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hostd import garden, log, protocol
from hostd.lifecycle import PoolState, WorkerState
from hostd.supervisor import policy

if TYPE_CHECKING:
    from hostd.supervisor.connections import Connections
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.processes import Processes
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry

P, W = PoolState, WorkerState


@dataclass(eq=False)
class Sizing:
    registry: Registry
    reactor: Reactor
    processes: Processes
    connections: Connections
    placement: Placement
    #: above [hostd] idle_pressure at the last look (pressure)
    pressured: bool = False

    # ------------------------------------------------------------------ demand
    def update_demand(self, pool) -> None:
        """Watches the pool's queue while it has no live worker (demand start)."""
        want = (pool.state in (P.STARTED, P.STARTING) and not self.registry.stopping
                and not pool.alive() and pool.cfg is not None)
        if want == pool.watch_demand:
            return
        pool.watch_demand = want
        fd = pool.queue_out.fileno()
        if want:
            self.reactor.watch(fd, lambda ev, p=pool: self._demand(p))
        else:
            self.reactor.unwatch(fd)

    def forget_demand(self, pool) -> None:
        """Stops watching a pool that stops or retires."""
        if pool.watch_demand:
            self.reactor.unwatch(pool.queue_out.fileno())
        pool.watch_demand = False

    def _demand(self, pool) -> None:
        self.processes.spawn(pool, "demand")
        self.update_demand(pool)

    # ------------------------------------------------------------------ the tick
    def tick(self, now: float, second: bool) -> None:
        """Duty: every started pool with workers grows on its queue; once a second, on
        saturation (one without workers starts on demand: update_demand's watch)."""
        for pool in self.registry.serving_staffed():
            self.grow(pool, now)
            if second:
                self.balance(pool, now)

    def grow(self, pool, now: float) -> None:
        """Web garden growth: connections found waiting twice (policy.GROW_WINDOW) while
        every worker is busy add a worker, one at a time."""
        alive = pool.alive()
        starting = sum(1 for w in alive if w.state in (W.SPAWNING, W.STARTING))
        if not policy.may_grow(len(alive), pool.cfg.processes, starting):
            pool.waiting_since = None
            return
        grow, pool.waiting_since = policy.grow_due(self.connections.waiting(pool),
                                                   pool.waiting_since, now)
        if grow:
            self.processes.spawn(pool, "queue waiting")

    def balance(self, pool, now: float) -> None:
        """Once a second: samples how saturated each ready worker was, then lets
        hostd.garden decide whether the garden grows and which worker gives idle
        keep-alive connections back to the front ends."""
        samples, starting = [], 0
        for w in pool.workers.values():
            if w.state in (W.SPAWNING, W.STARTING):
                starting += 1
                continue
            if w.state != W.READY or w.recycle.reason or w.board is None:
                continue
            busy = w.board.busy(now)
            then, before = w.busy_sample or (w.ready_at or now, 0.0)
            w.busy_sample = (now, busy)
            if now - then < 0.5:
                continue    # just ready: no interval to judge yet
            w.busy_frac = min(1.0, max(0.0, (busy - before) / (now - then)))
            samples.append(garden.Sample(w, w.busy_frac, w.stats()["connections"]))
        d = garden.decide(samples, pool.cfg.processes, starting)
        if d.grow and len(pool.alive()) < pool.cfg.processes:
            self.processes.spawn(pool, "saturated")
        if d.shed_from is not None:
            w = d.shed_from
            log.info("rebalance", f"worker {w.label} is saturated: it gives {d.shed} "
                     "idle keep-alive connection(s) back for a worker with room",
                     POOL=pool.name, WORKER_PID=w.pid, COUNT=d.shed)
            self.processes.send(w, protocol.shed(d.shed))

    def pressure(self, now: float) -> None:
        """Duty, once a second: above [hostd] idle_pressure, idle workers are stopped
        oldest-idle first (policy.pressure_victims), ahead of their idle_timeout; when
        none is left to stop, warm pool zygotes of pools without workers go
        (policy.zygote_victims), wanted again once the pressure is gone. The event says
        why. Crossing the threshold either way is logged once."""
        rule = self.registry.main.idle_pressure
        if rule is None:
            if self.processes.zygotes_evicted:    # idle_pressure taken out by a reload
                self.processes.unevict_zygotes()
            return
        value = self.placement.pressure()
        if value is None:
            return
        above = value > rule.threshold
        if above != self.pressured:
            self.pressured = above
            (log.warning if above else log.notice)(
                "memory_pressure", f"memory pressure {rule.kind} {rule.window} {value:.2f} "
                f"{'>' if above else '<='} {rule.threshold:g} (idle_pressure): "
                + ("idle workers (then warm zygotes) are stopped" if above
                   else "idle workers and warm zygotes are kept again"),
                PRESSURE=value, THRESHOLD=rule.threshold)
            if not above:
                self.processes.unevict_zygotes()   # the warm tier comes back
        if not above or self.registry.stopping:
            return
        candidates = []
        for pool in self.registry.staffed_pools():
            if self.registry.pools.get(pool.name) is not pool or pool.state != P.STARTED \
                    or pool.cfg is None:
                continue
            ready = [w for w in pool.workers.values() if w.state == W.READY]
            last_one = pool.cfg.start_mode == "always_running" and len(pool.alive()) <= 1
            for w in ready:
                s = w.stats()
                candidates.append(policy.PressureCandidate(
                    w, pool.name, max(s["last_activity"], w.ready_at or 0.0), s["active"],
                    last_one))
        victims = policy.pressure_victims(candidates, now)
        for victim in victims:
            idle = now - max(victim.stats()["last_activity"], victim.ready_at or 0.0)
            log.info("idle", f"worker {victim.label} idle for {idle:.0f}s stopped: memory "
                     f"pressure {rule.kind} {rule.window} {value:.2f} > {rule.threshold:g} "
                     "(idle_pressure)", POOL=victim.pool.name, WORKER_PID=victim.pid,
                     REASON="memory_pressure", PRESSURE=value)
            self.processes.drain(victim, "memory_pressure")
        if not victims:
            self._evict_zygotes(value, rule)

    def _evict_zygotes(self, value: float, rule) -> None:
        """No idle worker left to stop: warm pool zygotes of pools without a live
        worker are retired (policy.zygote_victims), until the pressure is gone."""
        warm = [(rec.pool.name, rec.ready_at or 0.0)
                for rec in self.processes.pool_zygotes.values()
                if rec.state == "ready" and not rec.pool.alive()]
        for name in policy.zygote_victims(warm):
            pool = self.registry.pools[name]
            log.info("idle", f"zygote of pool {name} retired: memory pressure {rule.kind} "
                     f"{rule.window} {value:.2f} > {rule.threshold:g} (idle_pressure); it "
                     "starts again once the pressure is gone", POOL=name,
                     REASON="memory_pressure", PRESSURE=value)
            self.processes.evict_zygote(pool)

    def shrink(self, now: float) -> None:
        """Duty (every 0.5 s): idle timeout, one worker at a time per pool."""
        for pool in self.registry.staffed_pools():
            if self.registry.pools.get(pool.name) is not pool:
                continue            # retired: its workers are draining already
            cfg = pool.cfg
            if cfg is None or pool.state != P.STARTED:
                continue
            candidates = []
            for w in pool.workers.values():
                if w.state == W.READY:
                    s = w.stats()
                    candidates.append(policy.IdleCandidate(
                        w, max(s["last_activity"], w.ready_at or 0.0), s["active"]))
            victim = policy.idle_victim(
                candidates, len(pool.alive()), cfg.start_mode == "always_running",
                cfg.idle_timeout, now,
                any(w.state == W.DRAINING for w in pool.workers.values()))
            if victim is not None:
                log.info("idle", f"worker {victim.label} idle for {cfg.idle_timeout:g}s",
                         POOL=pool.name, WORKER_PID=victim.pid, REASON="idle_timeout")
                self.processes.drain(victim, "idle_timeout")
