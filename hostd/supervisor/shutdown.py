"""Stopping hostd (SIGTERM/SIGINT) in named phases, so a request accepted before the
signal is answered (policy.StopPhase, policy.STOP_TRANSITIONS):

  FRONTENDS  front ends stop accepting, hand off the heads they are reading, exit;
             workers keep serving
  QUEUES     workers keep serving until no connection waits in a pool queue
  WORKERS    every worker drains, within the largest shutdown_limit (then killed)
  DONE       front-end channels and the zygote closed, children reaped: exit 0

Then `close` releases what the house owns, bottom up.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

import time

from hostd import log, protocol
from hostd.lifecycle import PoolState, WorkerState
from hostd.supervisor import policy
from hostd.supervisor.policy import StopPhase

if TYPE_CHECKING:
    from hostd.supervisor.connections import Connections
    from hostd.supervisor.frontends import FrontEnds
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.processes import Processes
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry
    from hostd.supervisor.sizing import Sizing

P, W = PoolState, WorkerState


@dataclass(eq=False)
class Shutdown:
    registry: Registry
    reactor: Reactor
    _: KW_ONLY
    frontends: FrontEnds
    processes: Processes
    connections: Connections
    placement: Placement
    sizing: Sizing

    def __post_init__(self):
        self.phase = StopPhase.RUNNING
        self.deadline = 0.0

    def _grace(self) -> float:
        limits = [p.cfg.health.shutdown_limit for p in self.registry.pools.values()
                  if p.cfg is not None]
        return max(limits or [policy.DEFAULT_SHUTDOWN_LIMIT]) + 1.0

    def begin(self, reason: str) -> bool:
        """Starts the stop (phase FRONTENDS). Returns False when already stopping."""
        if self.registry.stopping:
            return False
        self.registry.stopping = True
        log.notice("stop", f"stopping ({reason})", REASON=reason)
        self.frontends.stop_all()
        self._enter(StopPhase.FRONTENDS, time.monotonic())
        return True

    def _enter(self, phase: StopPhase, now: float) -> None:
        self.phase = phase
        if phase == StopPhase.FRONTENDS:
            self.deadline = now + min(self.registry.main.header_timeout, 5.0) + 1.0
        elif phase == StopPhase.QUEUES:
            self.deadline = now + 5.0
        elif phase == StopPhase.WORKERS:
            self.deadline = now + self._grace()
            self._stop_workers()
        elif phase == StopPhase.DONE:
            self._finish()

    def tick(self, now: float) -> bool:
        """Duty while stopping: moves through the phases. Returns True once DONE."""
        while self.phase not in (StopPhase.RUNNING, StopPhase.DONE):
            nxt = policy.next_stop_phase(
                self.phase, now, self.deadline,
                frontends_left=bool(self.frontends.by_slot),
                queues_waiting=self._queues_waiting(),
                workers_left=any(w.state != W.EXITED for w in self.registry.every_worker()))
            if nxt == self.phase:
                return False
            self._enter(nxt, now)
        return self.phase == StopPhase.DONE

    def _queues_waiting(self) -> bool:
        return any(p.parked or (p.cfg is not None and p.alive() and p.sem_value() < p.queue_len)
                   for p in self.registry.pools.values())

    def _stop_workers(self) -> None:
        """Every pool stops and every worker drains; what waits where nobody is left to
        serve it gets 503, not silence."""
        for pool in list(self.registry.pools.values()):
            if pool.life.triggers("stop"):
                pool.life.on("stop", "hostd stopping")
            self.sizing.forget_demand(pool)
            if not pool.alive():
                self.connections.fail_queue(pool)
            for w in list(pool.workers.values()):
                self.processes.drain(w, protocol.DrainReason.HOSTD_STOPPING)

    def _finish(self) -> None:
        """Workers are gone (or past the deadline, killed): front ends may go (they only
        hold heads being read), the zygote is closed, every child reaped."""
        if any(w.state != W.EXITED for w in self.registry.every_worker()):
            self.processes.kill_all()
        self.frontends.close_channels()
        self.processes.close_zygote()
        self.processes.wait_children(5.0)

    def close(self) -> None:
        """At exit: what the house owns, released from the top down to the reactor."""
        self.frontends.close_sockets()
        for pool in self.registry.every_pool():
            self.placement.release_pool(pool)
        self.connections.close()
        for pool in self.registry.every_pool():
            pool.close()
        self.placement.close()
        self.reactor.close()
