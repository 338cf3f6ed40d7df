"""Worker health (IIS: ping, startup and shutdown time limits, rapid-fail protection,
orphaning): the checks on the tick, what an unhealthy worker gets, the orphan actions.

The verdicts are policy.health_check / policy.unhealthy_action; this room sends pings
and acts through processes.py. Rapid-fail protection trips here and is reported as
RapidFailTripped: failing the pool is pools.py's business.

Owns: the orphan actions (their pipes; the processes are reaped by processes.py, which
reports ChildExited).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import os
import subprocess
import time

from hostd import log, protocol
from hostd.lifecycle import PoolState, WorkerState
from hostd.supervisor import policy
from hostd.supervisor.events import RapidFailTripped
from hostd.supervisor.policy import HealthCheck, UnhealthyAction
from hostd.supervisor.records import exit_text

if TYPE_CHECKING:
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.processes import Processes
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry

P, W = PoolState, WorkerState
OWNER = "orphan_action"


@dataclass(eq=False)
class Health:
    registry: Registry
    reactor: Reactor
    processes: Processes
    placement: Placement

    def __post_init__(self):
        self.actions: dict[int, tuple] = {}    # orphan_action pid -> (worker, cmd, proc, output)

    # ------------------------------------------------------------------ the tick
    def tick(self, now: float) -> None:
        """Duty: startup and shutdown limits, pings and their timeouts, every pool with
        workers (running or retired)."""
        for pool in self.registry.staffed_pools():
            h = pool.cfg.health if pool.cfg is not None else None
            for w in list(pool.workers.values()):
                check = policy.health_check(
                    w.state, now, h, spawned_at=w.spawned_at, drain_at=w.drain_at,
                    ready_at=w.ready_at, last_ping=w.health.last_ping,
                    ping_sent=w.health.ping_sent, has_channel=w.ctl is not None)
                if check is not None:
                    self._act(w, check, h, now)

    def _act(self, w, check: HealthCheck, h, now: float) -> None:
        pool = w.pool
        reason = policy.health_reason(check, h)
        if check == HealthCheck.STARTUP_TIMEOUT:
            log.error("startup_timeout", f"worker {w.label} pid {w.pid}: {reason}",
                      POOL=pool.name, WORKER_PID=w.pid, REASON=reason)
            self.processes.kill(w, reason)                 # STARTING -> STOPPING
            self.count(w, reason)
        elif check == HealthCheck.SHUTDOWN_TIMEOUT:
            log.warning("shutdown_timeout", f"worker {w.label} pid {w.pid}: {reason}",
                        POOL=pool.name, WORKER_PID=w.pid, REASON=reason)
            self.processes.kill(w, reason)                 # DRAINING -> STOPPING
        elif check == HealthCheck.PING_DUE:
            w.health.ping_seq += 1
            w.health.ping_sent = w.health.last_ping = now
            # a worker that cannot be reached is dying; reaping tells
            self.processes.send(w, protocol.ping(w.health.ping_seq))
        elif check == HealthCheck.PING_TIMEOUT:
            self.unhealthy(w, reason)

    def on_pong(self, worker, seq, stuck: bool) -> None:
        if seq == worker.health.ping_seq:
            worker.health.ping_sent = None
        if stuck and worker.state == W.READY:
            self.unhealthy(worker, "every app thread is stuck on the same request for over "
                           f"{worker.pool.cfg.health.ping_timeout:g}s")

    # ------------------------------------------------------------------ failures
    def count_failure(self, worker, reason: str) -> str | None:
        """Counts a crash, startup failure or health kill toward rapid-fail protection
        (once per worker). Returns the reason the pool must fail for when this one
        tripped it, else None."""
        if worker.health.failure_counted:
            return None
        worker.health.failure_counted = True
        pool = worker.pool
        if pool.state in (P.STARTED, P.STARTING) and pool.rapid.record(time.monotonic()):
            pool.totals.rapid_fail_stops += 1
            return (f"rapid-fail protection: {pool.rapid.max_failures} failures within "
                    f"{pool.rapid.interval:g}s; last: {reason}")
        return None

    def count(self, worker, reason: str) -> None:
        """count_failure, reporting a trip as RapidFailTripped."""
        tripped = self.count_failure(worker, reason)
        if tripped is not None:
            self.reactor.post(RapidFailTripped(worker.pool, tripped))

    def unhealthy(self, worker, reason: str) -> None:
        """A READY worker failed its health check: orphan it, kill it or replace it
        (overlapping: the replacement first, then the old one drains)."""
        if worker.state != W.READY:
            return
        pool = worker.pool
        h = pool.cfg.health
        worker.reason = f"unhealthy: {reason}"
        log.error("unhealthy", f"worker {worker.label} pid {worker.pid}: {reason}",
                  POOL=pool.name, WORKER_PID=worker.pid, REASON=reason)
        tripped = self.count_failure(worker, worker.reason)
        if tripped is not None:
            # rapid-fail: the pool fails (and drains this worker); nothing replaces it
            self.reactor.post(RapidFailTripped(pool, tripped))
            return
        serving = pool.state == P.STARTED and not self.registry.stopping
        action = policy.unhealthy_action(h, pool.state == P.STARTED, self.registry.stopping)
        if action == UnhealthyAction.ORPHAN:
            self._orphan(worker, reason)
        elif action == UnhealthyAction.KILL:
            self.processes.kill(worker, worker.reason)      # READY -> STOPPING
        elif action == UnhealthyAction.REPLACE:
            new = self.processes.spawn(pool, f"replace unhealthy worker {worker.id}")
            if new is not None:
                new.recycle.replaces = worker    # it drains once `new` is ready
                return
            self.processes.drain(worker, worker.reason)
        else:
            self.processes.drain(worker, worker.reason)
        if serving and not pool.alive():
            self.processes.spawn(pool, f"replace worker {worker.id}")

    # ------------------------------------------------------------------ orphans
    def _orphan(self, worker, reason: str) -> None:
        """Keeps a failed worker alive for debugging: out of the queue, not killed; its
        orphan_action runs; a replacement serves the pool."""
        pool = worker.pool
        worker.life.on("orphan", reason)                   # READY -> ORPHANED
        worker.orphaned_at = time.monotonic()
        self.processes.send(worker, protocol.orphan())
        self.placement.orphan(worker)
        log.warning("orphan", f"worker {worker.label} pid {worker.pid} orphaned: {reason}",
                    POOL=pool.name, WORKER_PID=worker.pid, REASON=reason)
        action = pool.cfg.health.orphan_action
        if action:
            self._run_action(worker, action.replace("{pid}", str(worker.pid))
                             .replace("{pool}", pool.name))
        if pool.state == P.STARTED and not self.registry.stopping:
            self.processes.spawn(pool, f"replace orphaned worker {worker.id}")

    def kill_orphan(self, pid: int) -> tuple[bool, str]:
        """`hostctl orphan kill PID`."""
        w = self.registry.find_worker(pid)
        if w is None or w.state != W.ORPHANED:
            return False, f"no orphaned worker with pid {pid}"
        self.processes.kill(w, "hostctl orphan kill")          # ORPHANED -> STOPPING
        return True, f"orphan {pid} of pool {w.pool.name} killed"

    def _run_action(self, worker, command: str) -> None:
        """Runs the admin's command with /bin/sh; its output is logged when it ends."""
        try:
            child = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     close_fds=True, start_new_session=True)
        except OSError as exc:
            log.error("orphan_action", f"cannot run {command!r}: {exc}", POOL=worker.pool.name)
            return
        self.actions[child.pid] = (worker, command, child, bytearray())
        self.processes.track(child.pid, OWNER)
        fd = child.stdout.fileno()
        os.set_blocking(fd, False)
        self.reactor.watch(fd, lambda ev, pid=child.pid: self._action_output(pid))

    def _action_output(self, pid: int) -> None:
        _w, _c, child, buf = self.actions[pid]
        try:
            chunk = os.read(child.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if chunk and len(buf) < 1 << 20:
            buf += chunk
        if not chunk:
            self.reactor.unwatch(child.stdout.fileno())

    def on_action_exited(self, pid: int, status: int) -> None:
        if pid not in self.actions:
            return
        worker, command, child, buf = self.actions.pop(pid)
        try:
            rest = child.stdout.read()
            if rest:
                buf += rest
        except (OSError, ValueError):
            pass
        self.reactor.unwatch(child.stdout.fileno())
        child.stdout.close()
        child.returncode = os.waitstatus_to_exitcode(status)
        log.notice("orphan_action", f"{command!r} exited ({exit_text(child.returncode)})",
                   POOL=worker.pool.name, WORKER_PID=worker.pid,
                   OUTPUT=buf.decode("utf-8", "replace"))
