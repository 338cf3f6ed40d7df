"""The zygote and the workers: spawn, talk, drain, kill, reap (the OS seam).

Every process call of the supervisor's worker life is here, behind a narrow interface
(`spawn`, `drain`, `kill`, `send`, `reap`) that the rooms above use and that unit tests
replace with a fake (tests/unit/supervisor_fakes.py). What comes back from the
processes becomes events: READY -> WorkerReady, PONG -> Pong, MEMORY_FENCE ->
MemoryFence, UNHEALTHY -> WorkerUnhealthy, REQUESTS_REPLY -> RequestsReply, an exit ->
WorkerExited with policy.exit_verdict's reason. This room never decides what an event
means for the pool.

Owns: the zygote (its channel closed and the process reaped here), every worker's
control channel and scoreboard until it is reaped (released in `_release`), the
spawn requests in flight, and the reaping of every child, including those other rooms
`track` (front ends, orphan actions).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import collections
import itertools
import os
import signal
import socket
import time
import traceback

from hostd import log, protocol
from hostd.lifecycle import WorkerState
from hostd.supervisor import policy
from hostd.supervisor.events import (ChildExited, MemoryFence, Pong, RequestsReply,
                                     SpawnRefused, WorkerExited, WorkerReady,
                                     WorkerUnhealthy, ZygoteRestarted)
from hostd.supervisor.records import Worker, exit_text
from kernel import fdpass, proc, sockets

if TYPE_CHECKING:
    from hostd.supervisor.connections import Connections
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry

W = WorkerState
#: pids reaped before the zygote named them (kept for the "spawned" reply; bounded)
_EARLY_EXITS_MAX = 4096


def kill_tree(worker) -> None:
    """Kills a worker and everything it started: its cgroup when it has one, and its
    process group (every worker is a session leader) or itself by pid. The pid always:
    a worker joins its cgroup during its boot, so one killed while starting may not be
    in it yet. The pid cannot be another process's: it is our child (or its parent's,
    the zygote's), unreaped. Takes anything with .pid, .cgroup and .pool.name."""
    if worker.pid is None:
        return
    cg = worker.cgroup
    if cg is not None:
        try:
            cg.kill()
        except OSError as exc:
            log.error("cgroup_kill_failed", str(exc), POOL=worker.pool.name,
                      WORKER_PID=worker.pid)
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass(eq=False)
class Processes:
    registry: Registry
    reactor: Reactor
    placement: Placement
    connections: Connections

    def __post_init__(self):
        self.zygote_pid: int | None = None
        self.zygote: socket.socket | None = None
        self.spawn_ids = itertools.count(1)
        self.worker_ids: dict[str, itertools.count] = {}
        self.spawning: dict[int, Worker] = {}        # spawn request id -> worker
        self.workers_by_pid: dict[int, Worker] = {}
        self.early_exits: collections.OrderedDict = collections.OrderedDict()
        self.tracked: dict[int, str] = {}            # pid -> owner ("frontend", ...)

    # ------------------------------------------------------------------ zygote
    def start_zygote(self) -> None:
        """Forks the zygote (hostd/zygote.py), which forks every worker."""
        mine, theirs = sockets.seqpacket_pair()
        supervisor_pid = self.registry.pid
        pid = os.fork()
        if pid == 0:
            code = protocol.EXIT_WORKER_BOOT
            try:
                proc.close_fds_except({theirs.fileno(), 2, 1})
                from hostd.zygote import zygote_main
                code = zygote_main(theirs, supervisor_pid)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        self.zygote_pid, self.zygote = pid, mine
        self.reactor.watch(mine.fileno(), self._zygote_readable)
        log.info("zygote", "zygote started", CHILD_PID=pid)

    def _zygote_readable(self, _ev) -> None:
        while self.zygote is not None:
            data = _recv(self.zygote)
            if not data:
                return   # nothing more now, or the zygote died: reaping restarts it
            msg = protocol.decode(data)
            worker = self.spawning.pop(msg.get("id"), None)
            if worker is None:
                continue
            if msg["t"] == protocol.SPAWNED:
                self._spawned(worker, msg["pid"])
            else:
                self._spawn_failed(worker, str(msg.get("error")))

    def _spawn_failed(self, worker: Worker, error: str) -> None:
        """The zygote could not fork the worker: SPAWNING -> EXITED, a failure."""
        reason = f"spawn failed: {error}"
        worker.life.on("spawn_failed", reason)
        self._gone(worker, reason, True)

    def _zygote_exited(self, status: int) -> None:
        self._drop_zygote_channel()
        self.zygote_pid = None
        for sid, worker in list(self.spawning.items()):
            del self.spawning[sid]
            worker.life.on("spawn_failed", "zygote died before spawning")
            self._gone(worker, "zygote died", False)
        if self.registry.stopping:
            return
        log.error("zygote_crash", f"zygote exited ({exit_text(os.waitstatus_to_exitcode(status))}); "
                  "restarting")
        self.start_zygote()
        self.reactor.post(ZygoteRestarted())

    # ------------------------------------------------------------------ spawning
    def spawn(self, pool, reason: str) -> Worker | None:
        """Asks the zygote for a worker of `pool` (its current generation). Returns the
        new SPAWNING worker, or None when none can be started now (no zygote, no
        config, the zygote unreachable, or no cgroup: that one is reported as
        SpawnRefused, a failure of the pool)."""
        if self.zygote is None or pool.cfg is None:
            return None
        wid = next(self.worker_ids.setdefault(pool.name, itertools.count(1)))
        worker = Worker(pool, wid, pool.generation)
        worker.slot = len(pool.alive())
        worker.spawn_reason = reason
        worker.recycle.at, worker.recycle.request_limit = policy.recycle_plan(
            pool.cfg.recycling, pool.cfg.processes, worker.slot,
            not reason.startswith("recycle"), worker.spawned_at)
        try:
            self.placement.worker_cgroup(worker)
        except OSError as exc:
            log.error("cgroup_failed", f"worker cgroup of pool {pool.name}: {exc}", POOL=pool.name)
            worker.close()
            self.reactor.post(SpawnRefused(worker, f"cgroup: {exc}"))
            return None
        worker_iso = self.placement.worker_isolation(pool)
        worker.isolated = worker_iso is not None
        worker.spawn_sent = time.monotonic()
        sid = next(self.spawn_ids)
        ctl = self._ask_zygote(sid, worker, worker_iso)
        if ctl is None:
            self.placement.release_worker(worker)
            worker.close()
            return None
        worker.ctl = ctl
        pool.workers[wid] = worker
        self.registry.staff(pool)
        self.spawning[sid] = worker
        self.reactor.watch(ctl.fileno(), lambda ev, w=worker: self.read(w))
        log.info("spawn", f"starting worker {pool.name}#{wid} ({reason})",
                 POOL=pool.name, WORKER_ID=wid, REASON=reason)
        return worker

    def _ask_zygote(self, sid: int, worker: Worker, isolation: dict | None):
        """The OS half of spawn: the SPAWN request (spec and descriptors) down the zygote
        channel. Returns the supervisor's end of the worker's control channel, or None
        when the zygote cannot be reached (logged)."""
        pool = worker.pool
        spec = protocol.WorkerSpec(
            pool=pool.name, worker_id=worker.id, generation=pool.generation,
            global_slots_via_board=worker.isolated,
            cgroup_procs=worker.cgroup.procs_files() if worker.cgroup else [],
            isolation=isolation, **self.connections.limit_settings(),
            access_log=self.registry.main.access_log,
            config=pool.cfg.to_spec(), routes=self.registry.worker_routes(pool.name))
        reroute = self.connections.pool_reroute(pool) if worker.isolated \
            else self.connections.reroute_in
        ctl_mine, ctl_theirs = sockets.seqpacket_pair()
        fds = [ctl_theirs.fileno(), pool.queue_out.fileno(), pool.sem,
               reroute.fileno(), worker.board.fd]
        if not worker.isolated:
            fds.append(spec.conn_sem)
        if pool.csem >= 0:
            fds.append(pool.csem)
        try:
            fdpass.send_with_fds(self.zygote, protocol.spawn(sid, spec), fds)
        except OSError as exc:
            ctl_mine.close()
            log.error("spawn_failed", f"cannot reach the zygote: {exc}", POOL=pool.name)
            return None
        finally:
            ctl_theirs.close()
        worker.ctl = ctl_mine
        self._send_fence(worker)
        return ctl_mine

    def _send_fence(self, worker: Worker) -> None:
        """v1: gives the worker its own copy of the kernel's memory notification (queued
        on its control channel until it reads it): it stops taking requests the moment
        it passes the threshold, not a round trip later. Without it, the supervisor's
        own watch still recycles the worker, a few requests later. (v2 has none to
        give: memory.high throttles the worker until the supervisor acts.)"""
        try:
            fd = self.placement.fence_fd(worker)
            if fd is None:
                return
            try:
                fdpass.send_with_fds(worker.ctl, protocol.memory_fence(),
                                     [fd])
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("memory_fence", f"worker {worker.label}: {exc}", POOL=worker.pool.name)

    def _spawned(self, worker: Worker, pid: int) -> None:
        worker.pid = pid
        self.workers_by_pid[pid] = worker
        worker.life.on("spawned", f"pid {pid}")          # SPAWNING -> STARTING
        if pid in self.early_exits:
            self._exited(worker, self.early_exits.pop(pid))
        elif worker.drain_at is not None:
            self.drain(worker, worker.drain_reason)        # drained while it had no pid
        elif worker.ready_early:
            self._ready(worker)

    # ------------------------------------------------------------------ talking
    def read(self, worker: Worker) -> None:
        """The worker's control channel is readable: its messages become events."""
        while worker.ctl is not None:
            data = _recv(worker.ctl)
            if data is None:
                return
            if not data:
                # EOF: the process is exiting; reaping decides what it means
                self.reactor.unwatch(worker.ctl.fileno())
                return
            try:
                msg = protocol.decode(data)
            except ValueError:
                continue
            kind = msg["t"]
            if kind == protocol.READY:
                worker.boot = boot_steps(worker, msg.get("trace") or [], time.monotonic())
                self._ready(worker)
            elif kind == protocol.STARTUP_FAILED:
                worker.startup_error = str(msg.get("error", ""))
            elif kind == protocol.REQUESTS_REPLY:
                self.reactor.post(RequestsReply(worker, msg.get("seq"),
                                                msg.get("requests") or []))
            elif kind == protocol.PONG:
                self.reactor.post(Pong(worker, msg.get("seq"), bool(msg.get("stuck"))))
            elif kind == protocol.MEMORY_FENCE:
                self.reactor.post(MemoryFence(worker))
            elif kind == protocol.UNHEALTHY:
                self.reactor.post(WorkerUnhealthy(
                    worker, str(msg.get("reason", "reported by the worker")),
                    bool(msg.get("app"))))

    def _ready(self, worker: Worker) -> None:
        if worker.state == W.SPAWNING:
            worker.ready_early = True     # READY overtook the zygote's "spawned" reply
            return
        if worker.state != W.STARTING:
            return
        worker.ready_at = time.monotonic()
        worker.life.on("ready", "app loaded")               # STARTING -> READY
        self.reactor.post(WorkerReady(worker))

    def send(self, worker: Worker, message: bytes) -> bool:
        """Sends one control message; False when the worker's channel is gone."""
        if worker.ctl is None:
            return False
        try:
            worker.ctl.sendall(message)
            return True
        except OSError:
            return False

    # ------------------------------------------------------------------ ending
    def drain(self, worker: Worker, reason: str) -> None:
        """Asks a worker to finish and exit; kills it if it has not started yet."""
        state = worker.state
        if state in (W.DRAINING, W.STOPPING, W.EXITED):
            return
        if state == W.SPAWNING:
            worker.drain_reason = reason
            worker.drain_at = time.monotonic()
            return   # drained as soon as it has a pid
        if state in (W.ORPHANED, W.STARTING):
            # ORPHANED hangs by definition; STARTING holds no work: both -> STOPPING
            self.kill(worker, reason)
            return
        worker.life.on("drain", reason)                     # READY -> DRAINING
        worker.drain_at = time.monotonic()
        if not self.send(worker, protocol.drain(reason)):
            self._kill_tree(worker)

    def kill(self, worker: Worker, reason: str) -> None:
        """Moves the worker to STOPPING (when it is not there yet) and kills it."""
        if worker.life.triggers("kill"):
            worker.life.on("kill", reason)
        self._kill_tree(worker)

    def kill_all(self) -> None:
        for worker in self.registry.every_worker():
            self._kill_tree(worker)

    def _kill_tree(self, worker: Worker) -> None:
        kill_tree(worker)

    def track(self, pid: int, owner: str) -> None:
        """Reaps `pid` for another room: its exit is reported as ChildExited(owner)."""
        self.tracked[pid] = owner

    def reap(self) -> None:
        """SIGCHLD: reaps every exited child and reports what each exit means."""
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers_by_pid:
                worker = self.workers_by_pid.pop(pid)
                worker.cpu_at_exit = usage.ru_utime + usage.ru_stime
                self._exited(worker, status)
            elif pid in self.tracked:
                self.reactor.post(ChildExited(pid, status, self.tracked.pop(pid)))
            elif pid == self.zygote_pid:
                self._zygote_exited(status)
            else:
                self.early_exits[pid] = status
                while len(self.early_exits) > _EARLY_EXITS_MAX:
                    self.early_exits.popitem(last=False)

    def _exited(self, worker: Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        worker.exit_status = code
        oom = code == -signal.SIGKILL and self.placement.oom_killed(worker)
        reason, failed = policy.exit_verdict(worker.state, code, worker.startup_error, oom)
        worker.life.on("reaped", reason)                    # any -> EXITED
        if failed:
            pool = worker.pool
            log.error("crash", f"worker {worker.label} pid {worker.pid}: {reason}",
                      POOL=pool.name, WORKER_PID=worker.pid, REASON=reason)
        if policy.is_crash(reason):
            worker.pool.totals.crashes += 1
        # a worker killed for its health was counted when it was killed
        self._gone(worker, reason, failed and not worker.health.failure_counted)

    def _gone(self, worker: Worker, reason: str, failed: bool) -> None:
        self._release(worker)
        self.reactor.post(WorkerExited(worker, reason, failed))

    def _release(self, worker: Worker) -> None:
        """Frees what an exited worker held: its counters go to the pool's totals (so
        no total goes backwards), its connection slots back, its channel, scoreboard,
        memory watch and cgroup closed."""
        pool = worker.pool
        pool.totals.add_exited(worker, pool.binding_texts)
        if worker.board is not None:
            self.connections.released_slots(worker)
            # it died holding connections: their slots
            self.connections.give_back(pool, worker.stats()["connections"])
        if worker.ctl is not None:
            self.reactor.unwatch(worker.ctl.fileno())
        worker.close()
        self.placement.release_worker(worker)
        pool.workers.pop(worker.id, None)
        self.registry.unstaff(pool)

    # ------------------------------------------------------------------ stop
    def children(self) -> set[int]:
        """Every child process still known (workers, tracked children, the zygote)."""
        kids = set(self.workers_by_pid) | set(self.tracked)
        if self.zygote_pid:
            kids.add(self.zygote_pid)
        return kids

    def close_zygote(self) -> None:
        """At the stop: the zygote's channel closes, so it exits (reaped by
        wait_children)."""
        self._drop_zygote_channel()

    def _drop_zygote_channel(self) -> None:
        if self.zygote is not None:
            self.reactor.unwatch(self.zygote.fileno())
            self.zygote.close()
            self.zygote = None

    def wait_children(self, timeout: float) -> None:
        """At the very end of a stop: reaps what is left, SIGKILLs the rest at timeout."""
        children = self.children()
        deadline = time.monotonic() + timeout
        while children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)
                continue
            children.discard(pid)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _recv(sock: socket.socket) -> bytes | None:
    """One control message without blocking: None when none waits, b"" at EOF."""
    try:
        return sock.recv(protocol.MAX_CONTROL_BYTES, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def boot_steps(worker: Worker, trace: list, now: float) -> dict[str, float]:
    """{step: ms spent in it} from the spawn request to READY: the supervisor's own
    part (cgroup), then the steps the zygote and the worker stamped (hostd/zygote.py),
    then the READY message's trip back. CLOCK_MONOTONIC is one clock for every process
    (a pid namespace has no clock of its own), so the stamps compare."""
    steps, last = {}, worker.spawned_at
    for name, t in [("supervisor", worker.spawn_sent)] + [tuple(x) for x in trace] + \
            [("ready_msg", now)]:
        if t is None:
            continue
        steps[str(name)] = round((t - last) * 1000, 2)
        last = t
    steps["total"] = round((now - worker.spawned_at) * 1000, 2)
    return steps
