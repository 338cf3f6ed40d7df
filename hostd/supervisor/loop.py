"""The supervisor (the WAS role): start, the loop, signals, the tick, event routing.

Signal handlers only queue the signal (gunicorn's arbiter); the loop dispatches each to
`handle_<name>`. The tick is a flat list of duties, one small method each. The rooms
below report what happened as events (hostd.supervisor.events); `route` hands each to
its `on_<event>` handler here, which passes it to the room that decides. Layers, bottom
up (no room imports or calls one above it):

  reactor, records, lifecycle, policy
  placement, connections        where pools run; connections the supervisor holds
  processes, frontends          the zygote, workers, front ends (the OS seam)
  sizing, health, recycling     how many workers; are they well; when they are replaced
  views, shutdown               the documents; stopping in phases
  pools                         config -> pools; what worker events mean for a pool
  loop, commands                this file; hostctl's handlers

What it owns, and who closes it: the listening sockets (frontends.py, until exit); per
pool its queue, semaphores and reroute channel (records.Pool, when it is removed or at
exit); per worker its channel and scoreboard (processes.py, when it is reaped); the
shared reroute channel and the connections held (connections.py); the cgroup tree
(placement.py); the control and metrics sockets, the signal pipe and the reactor (here).
"""
from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path

from hostd import config as hconfig
from hostd import log, protocol
from hostd.control import ControlServer
from hostd.lifecycle import PoolState
from hostd.sdnotify import Notifier
from hostd.supervisor.commands import Commands
from hostd.supervisor.connections import Connections
from hostd.supervisor.frontends import FrontEnds
from hostd.supervisor.health import Health
from hostd.supervisor.placement import Placement
from hostd.supervisor.pools import Pools
from hostd.supervisor.processes import Processes
from hostd.supervisor.reactor import Reactor
from hostd.supervisor.records import Registry, show_addr
from hostd.supervisor.recycling import Recycling
from hostd.supervisor.shutdown import Shutdown
from hostd.supervisor.sizing import Sizing
from hostd.supervisor.views import Views
from kernel import proc
from workers import h1fast

P = PoolState
#: how long READY=1 waits for always_running pools before saying so anyway
READY_WAIT = 90.0
TICK = 0.05
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1)


def os_seams(registry: Registry, reactor: Reactor) -> tuple:
    """The rooms that touch the OS: (placement, connections, processes, frontends)."""
    placement = Placement(registry, reactor)
    connections = Connections(registry, reactor)
    processes = Processes(registry, reactor, placement, connections)
    frontends = FrontEnds(registry, reactor, processes, connections, placement)
    return placement, connections, processes, frontends


class Supervisor:
    def __init__(self, config_path: Path, main: "hconfig.MainConfig", seams=os_seams):
        """seams(registry, reactor) -> (placement, connections, processes, frontends):
        the OS rooms (os_seams); the unit tests pass fakes of them."""
        self.config_path = config_path
        self.pid = os.getpid()
        self.registry = reg = Registry(main, self.pid)
        self.reactor = r = Reactor()
        self.placement, self.connections, self.processes, self.frontends = seams(reg, r)
        self.sizing = Sizing(reg, r, self.processes, self.connections, self.placement)
        self.health = Health(reg, r, self.processes, self.placement)
        self.recycling = Recycling(reg, self.processes, self.placement)
        self.views = Views(reg, processes=self.processes, frontends=self.frontends,
                           placement=self.placement)
        self.shutdown = Shutdown(reg, r, frontends=self.frontends, processes=self.processes,
                                 connections=self.connections, placement=self.placement,
                                 sizing=self.sizing)
        self.pools = Pools(reg, placement=self.placement, connections=self.connections,
                           processes=self.processes, frontends=self.frontends,
                           sizing=self.sizing, health=self.health, recycling=self.recycling)
        self.commands = Commands(self)
        self.signals: collections.deque[int] = collections.deque()
        self.notify = Notifier()
        self.control: ControlServer | None = None
        self.metrics = None
        self.start_mono = time.monotonic()
        self.next_second = 0.0
        self.next_idle_check = 0.0
        self.ready_sent = False

    @property
    def main(self) -> "hconfig.MainConfig":
        return self.registry.main

    # ------------------------------------------------------------------ start and run
    def start(self) -> None:
        """Binds sockets, starts the zygote and front ends, loads pools.
        Raises OSError when a listening or control socket cannot be made."""
        if os.geteuid() != 0:
            log.warning("no_isolation", "hostd is running WITHOUT ROOT: pools are not isolated "
                        "from each other or from hostd (no cgroups, namespaces or own uids). "
                        "Run as root for isolation.")
        try:
            proc.set_child_subreaper()
        except OSError as exc:
            log.warning("no_subreaper", f"cannot become child subreaper: {exc}")
        self._install_signals()
        self.placement.setup_cgroups()
        self.placement.setup_pressure()
        self.frontends.bind()
        self.main.run_dir.mkdir(parents=True, exist_ok=True)
        self.processes.certificates.snapshots.clear()   # an earlier hostd's key copies
        self.control = ControlServer(self.main.run_dir / "control.sock", self.commands)
        self.reactor.watch(self.control.sock.fileno(),
                           lambda ev: self.control.accept(self.reactor.watch, self.reactor.unwatch))
        if self.main.metrics_listen:
            from hostd.metrics import MetricsServer
            host, port = self.main.metrics_listen
            self.metrics = MetricsServer(host, port, self.commands)
            self.reactor.watch(self.metrics.sock.fileno(),
                               lambda ev: self.metrics.accept(self.reactor.watch,
                                                              self.reactor.unwatch))
        self.processes.start_zygote()
        self.placement.frontend_identity()
        self.pools.load()
        self.frontends.start_all()
        self.route()
        log.notice("start", f"hostd started: {len(self.registry.pools)} pools, "
                   f"{len(self.frontends.slots)} front ends, listening on "
                   + ", ".join(show_addr(h, p) for h, p in self.main.listen)
                   + f"; workers' request path: {h1fast.describe()}",
                   CONFIG=str(self.config_path), REQUEST_PATH="c" if h1fast.ENABLED else "python")

    def run(self) -> int:
        """The loop. Returns the exit code."""
        while True:
            self.reactor.poll(TICK, self.route)
            while self.signals:
                self._dispatch_signal(self.signals.popleft())
                self.route()
            now = time.monotonic()
            if self._tick(now):
                break
        self.shutdown.close()
        log.notice("exit", "hostd stopped")
        return protocol.EXIT_OK

    # ------------------------------------------------------------------ signals
    def _install_signals(self) -> None:
        self._sigr, self._sigw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._sigw)
        for sig in SIGNALS:
            signal.signal(sig, self._queue_signal)
        self.reactor.watch(self._sigr, self._drain_wakeup)

    def _queue_signal(self, signum, _frame) -> None:
        self.signals.append(signum)   # only queue: the loop dispatches

    def _drain_wakeup(self, _ev) -> None:
        try:
            while os.read(self._sigr, 512):
                pass
        except BlockingIOError:
            pass

    def _dispatch_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name.lower()
        getattr(self, f"handle_{name[3:]}")()

    def handle_chld(self) -> None:
        self.processes.reap()

    def handle_hup(self) -> None:
        self.reload()

    def reload(self) -> None:
        """Reload: new pools start, removed pools drain, changed pools get new workers
        before the old ones drain. Listening sockets stay open throughout."""
        log.notice("reload", "reloading configuration", CONFIG=str(self.config_path))
        self.notify.reloading()
        try:
            self.pools.reload(self.config_path)
        finally:
            self.route()
            self.notify.ready(self._status_line())

    def handle_term(self) -> None:
        self.stop("signal SIGTERM")

    def handle_int(self) -> None:
        self.stop("signal SIGINT")

    def handle_usr1(self) -> None:
        """logrotate: workers reopen their access log (isolated ones get the new file)."""
        log.info("reopen_logs", "SIGUSR1: reopening access logs")
        workers = list(self.processes.workers_by_pid.items())
        self.placement.send_access_log([w for _pid, w in workers])
        for pid, worker in workers:
            if worker.isolated:
                continue   # got the new file from send_access_log
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                pass

    def stop(self, reason: str) -> None:
        """Stop accepting, let in-flight requests finish, exit 0 (shutdown.py's phases)."""
        if not self.shutdown.begin(reason):
            return
        self.notify.stopping()
        for server in (self.control, self.metrics):
            if server is not None:
                self.reactor.unwatch(server.sock.fileno())
                server.close()
        self.control = self.metrics = None

    # ------------------------------------------------------------------ the tick
    def _tick(self, now: float) -> bool:
        """One turn's duties, in order. Returns True when hostd has stopped."""
        second = now >= self.next_second
        if second:
            self.next_second = now + 1.0
            self.views.tick_second(now)
            self.sizing.pressure(now)
            self.processes.certificates.tick(now, self.registry.pools.values())
        self.connections.tick()
        for pool, problem in self.placement.prepare_networks():
            self.pools.fail(pool, problem, "isolation_failed")
        self.processes.start_zygotes()
        self.sizing.tick(now, second)
        self.recycling.tick(now, second)
        self.health.tick(now)
        self.pools.finish_retired()
        if now >= self.next_idle_check:
            self.next_idle_check = now + 0.5
            self.sizing.shrink(now)
        self.views.tick(now)
        self.route()
        self.notify.tick(now, self._status_line)   # WATCHDOG=1 when due, STATUS= on change
        if not self.ready_sent:
            self._maybe_ready(now)
        return self.registry.stopping and self.shutdown.tick(now)

    def _maybe_ready(self, now: float) -> None:
        """READY=1 once the sockets are bound and every always_running pool has a
        ready worker (or has failed), so `systemctl start` returns when hostd serves."""
        waiting = [p for p in self.registry.pools.values() if p.state == P.STARTING]
        if waiting and now - self.start_mono < READY_WAIT:
            return
        self.ready_sent = True
        self.notify.ready(self._status_line())
        log.notice("ready", "hostd is ready", POOLS=len(self.registry.pools))

    def _status_line(self) -> str:
        pools = self.registry.pools.values()
        workers = sum(len(p.alive()) for p in pools)
        failed = sum(1 for p in pools if p.state == P.FAILED)
        return f"{len(pools)} pools ({failed} failed), {workers} workers"

    # ------------------------------------------------------------------ events
    def route(self) -> None:
        """Hands every posted event to its on_<name> handler (which may post more)."""
        events = self.reactor.events
        while events:
            ev = events.popleft()
            getattr(self, "on_" + ev.name)(ev)

    def on_worker_ready(self, ev) -> None:
        self.pools.on_worker_ready(ev.worker)

    def on_worker_exited(self, ev) -> None:
        self.pools.on_worker_exited(ev.worker, ev.reason, ev.failed)

    def on_pong(self, ev) -> None:
        self.health.on_pong(ev.worker, ev.seq, ev.stuck)

    def on_memory_fence(self, ev) -> None:
        # the worker passed its memory threshold and stopped taking requests; the
        # kernel tells us too, but this message makes sure it is recycled
        self.recycling.on_memory_fence(ev.worker)

    def on_memory_event(self, ev) -> None:
        self.recycling.on_memory_event(ev.worker, ev.kinds)

    def on_worker_unhealthy(self, ev) -> None:
        if ev.app:
            self.recycling.on_app_request(ev.worker, ev.reason)
        else:
            self.health.unhealthy(ev.worker, ev.reason)

    def on_requests_reply(self, ev) -> None:
        self.views.on_requests_reply(ev.worker, ev.seq, ev.requests)

    def on_spawn_refused(self, ev) -> None:
        self.pools.on_spawn_refused(ev.worker, ev.reason)

    def on_rapid_fail(self, ev) -> None:
        self.pools.fail(ev.pool, ev.reason, "rapid_fail")

    def on_zygote_restarted(self, _ev) -> None:
        for pool in self.registry.pools.values():
            self.sizing.update_demand(pool)

    def on_child_exited(self, ev) -> None:
        if ev.owner == "frontend":
            self.frontends.on_exited(ev.pid, ev.status)
        else:
            self.health.on_action_exited(ev.pid, ev.status)

    def on_connection_parked(self, ev) -> None:
        self.connections.park(ev.pool, ev.fd, ev.data)

    def on_queue_full(self, ev) -> None:
        self.pools.on_queue_full(ev.counts)
