"""Recycling (IIS: periodic restart by time, requests, memory, schedule, on demand, and
overlapped recycling): the triggers, one recycle at a time per pool, the overlap.

Seven triggers: time, requests, virtual_memory and schedule are polled on the tick
(policy.recycle_due, policy.schedule_due); private_memory and memory_max come from the
kernel (MemoryEvent, MemoryFence); on_demand from hostctl; cpu from [limits] cpu_action.
How each recycle proceeds is policy.recycle_mode; this room acts through processes.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import time

from hostd import log
from hostd.lifecycle import PoolState, WorkerState
from hostd.supervisor import policy
from hostd.supervisor.policy import RecycleMode
from kernel import memevents, procfs

if TYPE_CHECKING:
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.processes import Processes
    from hostd.supervisor.records import Registry

P, W = PoolState, WorkerState


@dataclass(eq=False)
class Recycling:
    registry: Registry
    processes: Processes
    placement: Placement

    def recycle(self, worker, reason: str, urgent: bool = False) -> bool:
        """Recycles one worker: overlapping (replacement first, then drain) or not
        (drain, then start). One recycle at a time per pool; others wait their turn,
        except urgent ones (a worker at its memory limit). Returns False when the
        worker is not in a state to be recycled."""
        pool = worker.pool
        plan = worker.recycle
        if urgent and plan.reason and worker.state == W.READY:
            # already being replaced, but at its limit: stop it taking work right now
            # (connections wait in the queue for the replacement, none is lost)
            self.processes.drain(worker, f"recycle: {reason}")
            return True
        if worker.state not in (W.READY, W.STARTING) or plan.reason:
            return False
        mode = policy.recycle_mode(reason, urgent, self.busy(pool),
                                   pool.cfg.recycling.overlapping, pool.state == P.STARTED,
                                   self.registry.stopping)
        if mode == RecycleMode.QUEUE:
            if all(w is not worker for w, _ in pool.pending_recycles):
                pool.pending_recycles.append((worker, reason))
            return True
        plan.reason = reason
        plan.started = time.monotonic()
        pool.recycles[reason] += 1
        log.notice("recycle", f"recycling worker {worker.label} pid {worker.pid} ({reason})",
                   POOL=pool.name, WORKER_PID=worker.pid, REASON=reason,
                   WORKER_REQUESTS=worker.stats()["requests"], POOL_REQUESTS=pool.requests())
        worker.reason = f"recycle: {reason}"
        if mode == RecycleMode.DRAIN_FIRST:
            # a worker that is growing must not take one more request: it drains now
            # (idle keep-alive connections go back to the front ends), then its
            # replacement starts; meanwhile connections wait in the queue
            self.processes.drain(worker, worker.reason)
            self.processes.spawn(pool, f"recycle: {reason}")
            return True
        if mode == RecycleMode.OVERLAP:
            new = self.processes.spawn(pool, f"recycle: {reason}")
            if new is not None:
                new.recycle.replaces = worker
                return True
        plan.respawn_after = mode in (RecycleMode.RESPAWN_AFTER, RecycleMode.OVERLAP)
        self.processes.drain(worker, worker.reason)
        return True

    def busy(self, pool) -> bool:
        """Whether a recycle of the pool is under way (a replacement starting, or a
        recycled worker draining)."""
        return any(w.recycle.replaces is not None or
                   (w.recycle.reason and w.state in (W.DRAINING, W.STOPPING))
                   for w in pool.workers.values())

    def next(self, pool) -> None:
        """Starts the recycles that waited their turn, while none is under way."""
        while pool.pending_recycles and not self.busy(pool):
            worker, reason = pool.pending_recycles.popleft()
            if worker.state == W.READY and not worker.recycle.reason:
                self.recycle(worker, reason)

    def replacement_ready(self, worker) -> bool:
        """A new worker is READY: when it replaces one (an overlapping recycle, or an
        unhealthy worker), the old one drains now. Returns whether it did."""
        pool = worker.pool
        elapsed = round((time.monotonic() - worker.spawned_at) * 1000, 1)
        old = worker.recycle.replaces
        if old is None:
            if worker.spawn_reason.startswith("recycle: "):
                log.info("recycle_ready", f"replacement worker {worker.label} ready",
                         POOL=pool.name, WORKER_PID=worker.pid,
                         REASON=worker.spawn_reason[len("recycle: "):], ELAPSED_MS=elapsed)
            return False
        # an unhealthy worker's replacement: the old one has no recycle reason of its
        # own, so the reason is why it was replaced, timed from the replacement's start
        log.info("recycle_ready", f"replacement of worker {old.label} ready",
                 POOL=pool.name, WORKER_PID=worker.pid, OLD_PID=old.pid,
                 REASON=old.recycle.reason or old.reason or "replaced", ELAPSED_MS=elapsed)
        self.processes.drain(old, old.reason or "replaced")
        worker.recycle.replaces = None
        return True

    def replacement_gone(self, worker) -> None:
        """A replacement died before it was ready: the old worker keeps serving, and
        may be recycled again by the next trigger."""
        if worker.recycle.replaces is not None:
            worker.recycle.replaces.recycle.reason = ""
            worker.recycle.replaces = None

    # ------------------------------------------------------------------ triggers
    def tick(self, now: float, second: bool) -> None:
        """Duty: the polled triggers of every started pool with workers; once a second,
        cpu_action."""
        for pool in self.registry.serving_staffed():
            self._check(pool, now, second)
            if second:
                self._check_cpu(pool, now)

    def _check(self, pool, now: float, second: bool) -> None:
        r = pool.cfg.recycling
        for w in list(pool.workers.values()):
            if w.state != W.READY or w.recycle.reason:
                continue
            vm = procfs.vmsize(w.pid) if second and r.virtual_memory else None
            reason = policy.recycle_due(now, w.recycle.at, w.recycle.request_limit,
                                        w.stats()["requests"], vm, r.virtual_memory)
            if reason == "time":
                w.recycle.at = None
            elif reason == "requests":
                w.recycle.request_limit = 0
            if reason is not None:
                self.recycle(w, reason)
        if second and r.schedule:
            stamp = time.strftime("%Y-%m-%d %H:%M")
            if policy.schedule_due(stamp, r.schedule, pool.schedule_fired):
                pool.schedule_fired = {stamp}
                for w in [w for w in pool.workers.values() if w.state == W.READY]:
                    self.recycle(w, "schedule")

    def _check_cpu(self, pool, now: float) -> None:
        """cpu_action kill / recycle: the pool's CPU use over cpu_interval passed cpu_max."""
        lim = pool.cfg.limits
        pct = pool.limits.cpu_over(lim, now) if pool.limits is not None else None
        if pct is None:
            return
        reason = (f"cpu {pct:.0f}% over cpu_interval ({lim.cpu_interval:g}s) passed "
                  f"cpu_max ({lim.cpu_max}%)")
        log.warning("cpu_limit", f"pool {pool.name}: {reason}: {lim.cpu_action}",
                    POOL=pool.name, REASON=reason, ACTION=lim.cpu_action)
        for w in pool.alive():
            if lim.cpu_action == "recycle":
                self.recycle(w, "cpu")
            elif w.pid is not None and w.life.triggers("kill"):
                self.processes.kill(w, f"cpu_action kill: {reason}")

    def on_memory_event(self, worker, kinds) -> None:
        """The kernel says the worker's cgroup passed private_memory or neared its
        worker_memory_max."""
        verdict = policy.memory_recycle(kinds, memevents.HIGH, memevents.MAX)
        if verdict is not None:
            self.recycle(worker, verdict[0], urgent=verdict[1])

    def on_memory_fence(self, worker) -> None:
        """The worker fenced itself at its memory threshold and holds no work."""
        if worker.memwatch is None or worker.state not in (W.READY, W.STARTING):
            return
        reason = "memory_max" if self.placement.near_memory_max(worker) else "private_memory"
        # urgent: a fenced worker holds no work, so it does not wait for its turn
        if not self.recycle(worker, reason, urgent=True) and worker.state == W.READY:
            # already being recycled for another reason: it holds no work, drain it now
            self.processes.drain(worker, worker.reason or "memory fence")

    def on_app_request(self, worker, reason: str) -> None:
        """The app asked for it (workers.report_unhealthy): a recycle."""
        if worker.state == W.READY:
            self.recycle(worker, "app: " + reason[:200])

    # ------------------------------------------------------------------ hostctl
    def recycle_pool(self, name: str) -> tuple[bool, str]:
        """`hostctl pool recycle`: every worker, one at a time."""
        pool = self.registry.pools.get(name)
        if pool is None:
            return False, f"no pool named {name}"
        # a preload pool's zygote first: the replacements import the app anew
        self.processes.renew_zygote(pool, "hostctl pool recycle")
        workers = [w for w in pool.workers.values() if w.state == W.READY]
        for w in workers:
            self.recycle(w, "on_demand")
        return True, f"recycling {len(workers)} worker(s) of pool {name}"

    def recycle_worker(self, pid: int) -> tuple[bool, str]:
        """`hostctl worker recycle PID`."""
        w = self.registry.find_worker(pid, self.registry.pools.values())
        if w is None:
            return False, f"no worker with pid {pid}"
        if self.recycle(w, "on_demand"):
            return True, f"recycling worker {pid} of pool {w.pool.name}"
        return False, f"worker {pid} is {w.state.value}"
