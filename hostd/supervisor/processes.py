"""The zygote and the workers: spawn, talk, drain, kill, reap (the OS seam).

Every process call of the supervisor's worker life is here, behind a narrow interface
(`spawn`, `drain`, `kill`, `send`, `reap`) that the rooms above use and that unit tests
replace with a fake (tests/unit/supervisor_fakes.py). What comes back from the
processes becomes events: READY -> WorkerReady, PONG -> Pong, MEMORY_FENCE ->
MemoryFence, UNHEALTHY -> WorkerUnhealthy, REQUESTS_REPLY -> RequestsReply, an exit ->
WorkerExited with policy.exit_verdict's reason. This room never decides what an event
means for the pool.

Preload pools (`preload = true`) have a zygote of their own (the warm tier: records.
PoolZygote), started here one or two at a time (`start_zygotes`, a duty), replaced
with their pool's generation, retired when the pool stops; a worker of such a pool is
asked of it when it is ready for the pool's generation, of the zygote otherwise.

Owns: the zygote and every pool zygote (channels closed and processes reaped here), every worker's
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
from hostd.supervisor.certificates import Certificates
from hostd.supervisor.events import (ChildExited, MemoryFence, Pong, RequestsReply,
                                     SpawnRefused, WorkerExited, WorkerReady,
                                     WorkerUnhealthy, ZygoteRestarted)
from hostd.supervisor.records import PoolZygote, Worker, exit_text
from kernel import fdpass, proc, sockets

if TYPE_CHECKING:
    from hostd.supervisor.connections import Connections
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry

W = WorkerState
#: pids reaped before the zygote named them (kept for the "spawned" reply; bounded)
_EARLY_EXITS_MAX = 4096
#: pool zygotes importing their app at once (the rest wait their turn: a thousand
#: preload pools must not fork a thousand imports at hostd's start)
ZYGOTES_BOOTING_MAX = 2
#: a pool zygote that dies sooner after its ready is not restarted for this generation
ZYGOTE_MIN_LIFE = 3.0


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
        self.pool_zygotes: dict[str, PoolZygote] = {}   # pool -> its current zygote
        self.zygotes_by_pid: dict[int, PoolZygote] = {}  # every pool zygote not reaped
        self.zygote_spawning: dict[int, PoolZygote] = {}  # spawn id -> pool zygote asked for
        self.zygotes_wanted: dict[str, object] = {}      # pool name -> Pool, in order
        self.zygote_numbers: dict[str, itertools.count] = {}
        self.spares: dict[int, PoolZygote] = {}          # pid -> the pool zygote it waits for
        self.zygotes_evicted: dict[str, object] = {}     # pool name -> Pool, memory pressure
        #: the pools' TLS: snapshots of their pairs, what a spec's tls gets
        self.certificates = Certificates(self.registry)

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
            rec = self.zygote_spawning.pop(msg.get("id"), None)
            if rec is not None:
                self._pool_zygote_spawned(rec, msg)
                continue
            self._spawn_answer(msg)

    def _spawn_answer(self, msg: dict) -> None:
        """SPAWNED / SPAWN_FAILED for a worker, from the zygote or a pool zygote."""
        worker = self.spawning.pop(msg.get("id"), None)
        if worker is None:
            return
        if msg["t"] == protocol.SPAWNED:
            self._spawned(worker, msg["pid"])
            if msg.get("placing"):
                self._place(worker, msg["id"])
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
            if worker.via is not None:
                continue
            del self.spawning[sid]
            worker.life.on("spawn_failed", "zygote died before spawning")
            self._gone(worker, "zygote died", False)
        for sid, rec in list(self.zygote_spawning.items()):
            del self.zygote_spawning[sid]
            self._pool_zygote_failed(rec, "the zygote died before forking it")
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
        rec = self.pool_zygotes.get(pool.name)
        if rec is not None and rec.state == "ready" and rec.generation == pool.generation \
                and rec.chan is not None:
            worker.via = rec       # the warm tier: forked from the pool's own zygote
        problem = self.placement.ensure_network(pool)
        if problem is not None:
            log.error("isolation_failed", problem, POOL=pool.name)
            worker.close()
            self.reactor.post(SpawnRefused(worker, problem))
            return None
        try:
            if worker.via is None or self.placement.needs_worker_cgroup(pool):
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
        if worker.via is not None and worker.cgroup is None:
            worker.via.users += 1     # in the pool zygote's cgroup until it exits
            worker.in_zygote_cgroup = True
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
        spec = self.worker_spec(worker, isolation)
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
            if worker.via is not None:
                # its zygote holds it until PLACED when it gets a cgroup of its own
                fdpass.send_with_fds(worker.via.chan, protocol.spawn(
                    sid, spec, placing=worker.cgroup is not None), fds)
            else:
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

    def worker_spec(self, worker: Worker, isolation: dict | None) -> protocol.WorkerSpec:
        """The WorkerSpec of a new worker of its pool's current generation: its
        config, routes, limits, and (HTTPS) its pool's snapshot pairs and the TLS
        listeners' ports."""
        pool = worker.pool
        return protocol.WorkerSpec(
            pool=pool.name, worker_id=worker.id, generation=pool.generation,
            global_slots_via_board=worker.isolated,
            cgroup_procs=worker.cgroup.procs_files() if worker.cgroup else [],
            isolation=isolation, **self.connections.limit_settings(),
            access_log=self.registry.main.access_log,
            config=pool.cfg.to_spec(), routes=self.registry.worker_routes(pool.name),
            tls=self.certificates.spec(pool), tls_ports=list(self.certificates.ports))

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

    def _place(self, worker: Worker, sid: int) -> None:
        """A pool zygote forked `worker` and holds it: into its own cgroup, then
        PLACED (with the error when it cannot be placed: the pool zygote kills it and
        its exit is reaped as any other)."""
        rec, error = worker.via, None
        try:
            worker.cgroup.attach(worker.pid)
        except (OSError, AttributeError) as exc:
            error = f"cgroup: {exc}"
            log.error("cgroup_failed", f"worker {worker.label}: {error}", POOL=worker.pool.name)
        if rec is not None and rec.chan is not None:
            try:
                rec.chan.sendall(protocol.placed(sid, error))
            except OSError:
                pass     # the pool zygote is gone: it killed the worker, reaping follows

    # ------------------------------------------------------------------ pool zygotes
    def want_zygote(self, pool) -> None:
        """A preload pool that is started or starting gets a zygote of its own for its
        generation (started by start_zygotes, a duty); an older one is retired.
        Anything else: its zygote, if any, is retired."""
        cfg = pool.cfg
        wanted = cfg is not None and cfg.preload and not self.registry.stopping and \
            pool.state.value in ("started", "starting")
        rec = self.pool_zygotes.get(pool.name)
        if rec is not None and (not wanted or rec.generation != pool.generation):
            self.retire_zygote(pool, "replaced" if wanted else "pool not running")
            rec = None
        if wanted and rec is None and pool.name not in self.zygotes_evicted:
            self.zygotes_wanted[pool.name] = pool
        elif not wanted:
            self.zygotes_wanted.pop(pool.name, None)

    def renew_zygote(self, pool, reason: str) -> None:
        """Replaces a preload pool's zygote (hostctl pool recycle, pools added to the
        view it hides): what spawns until the new one is ready imports the app anew."""
        if pool.name in self.pool_zygotes:
            self.retire_zygote(pool, reason)
        self.want_zygote(pool)

    def evict_zygote(self, pool) -> None:
        """Memory pressure: the pool's zygote is retired and not wanted again until
        unevict_zygotes (the pressure is gone); its workers are forked cold meanwhile."""
        self.retire_zygote(pool, "memory_pressure")
        self.zygotes_evicted[pool.name] = pool

    def unevict_zygotes(self) -> None:
        """The pressure is gone: every zygote evicted for it is wanted again."""
        evicted, self.zygotes_evicted = self.zygotes_evicted, {}
        for name, pool in evicted.items():
            if self.registry.pools.get(name) is pool:
                self.want_zygote(pool)

    def start_zygotes(self) -> None:
        """Duty: starts wanted pool zygotes, ZYGOTES_BOOTING_MAX at a time."""
        if not self.zygotes_wanted or self.zygote is None:
            return
        booting = sum(1 for r in self.pool_zygotes.values()
                      if r.state in ("spawning", "starting"))
        while self.zygotes_wanted and booting < ZYGOTES_BOOTING_MAX:
            name = next(iter(self.zygotes_wanted))
            pool = self.zygotes_wanted.pop(name)
            if self.registry.pools.get(name) is not pool or pool.cfg is None \
                    or not pool.cfg.preload or name in self.pool_zygotes:
                continue
            if self._start_pool_zygote(pool):
                booting += 1

    def _start_pool_zygote(self, pool) -> bool:
        """Asks the zygote for the pool's own zygote (protocol.SPAWN_ZYGOTE). Returns
        False when it cannot be asked (logged)."""
        if self.placement.ensure_network(pool) is not None:
            return False     # its first spawn says why (and fails the pool)
        n = next(self.zygote_numbers.setdefault(pool.name, itertools.count(1)))
        rec = PoolZygote(pool, n)
        try:
            self.placement.zygote_cgroup(rec)
        except OSError as exc:
            log.error("cgroup_failed", f"zygote cgroup of pool {pool.name}: {exc}",
                      POOL=pool.name)
            return False
        spec = protocol.WorkerSpec(
            pool=pool.name, worker_id=0, generation=pool.generation, role="zygote",
            cgroup_procs=rec.cgroup.procs_files() if rec.cgroup else [],
            isolation=self.placement.zygote_isolation(pool),
            access_log=self.registry.main.access_log, config=pool.cfg.to_spec(),
            tls=self.certificates.spec(pool), tls_ports=list(self.certificates.ports))
        sid = next(self.spawn_ids)
        mine = self._ask_for_pool_zygote(sid, spec)
        if mine is None:
            rec.exited = True
            self.placement.release_zygote_cgroup(rec)
            return False
        rec.chan = mine
        self.pool_zygotes[pool.name] = rec
        self.zygote_spawning[sid] = rec
        self.reactor.watch(mine.fileno(), lambda ev, r=rec: self._pool_zygote_readable(r))
        log.info("zygote", f"starting the zygote of pool {pool.name} (preload)",
                 POOL=pool.name)
        return True

    def _ask_for_pool_zygote(self, sid: int, spec) -> socket.socket | None:
        """The OS half: SPAWN_ZYGOTE with the new channel's other end. Returns the
        supervisor's end, or None when the zygote cannot be reached (logged)."""
        mine, theirs = sockets.seqpacket_pair()
        try:
            fdpass.send_with_fds(self.zygote, protocol.spawn_zygote(sid, spec),
                                 [theirs.fileno()])
        except OSError as exc:
            mine.close()
            log.error("spawn_failed", f"cannot reach the zygote: {exc}", POOL=spec.pool)
            return None
        finally:
            theirs.close()
        return mine

    def _pool_zygote_spawned(self, rec: PoolZygote, msg: dict) -> None:
        if msg["t"] != protocol.SPAWNED:
            self._pool_zygote_failed(rec, f"spawn failed: {msg.get('error')}")
            rec.exited = True
            self.placement.release_zygote_cgroup(rec)
            return
        rec.pid = msg["pid"]
        self.zygotes_by_pid[rec.pid] = rec
        if rec.state == "spawning":
            rec.state = "starting"
        if rec.pid in self.early_exits:
            self._pool_zygote_exited(rec, self.early_exits.pop(rec.pid))

    def _pool_zygote_readable(self, rec: PoolZygote) -> None:
        while rec.chan is not None:
            data = _recv(rec.chan)
            if data is None:
                return
            if not data:
                self.reactor.unwatch(rec.chan.fileno())
                rec.close()
                if self.pool_zygotes.get(rec.pool.name) is rec and rec.state == "ready":
                    rec.state = "retired"    # exiting: reaping says why
                return
            try:
                msg = protocol.decode(data)
            except ValueError:
                continue
            kind = msg["t"]
            if kind == protocol.ZYGOTE_READY:
                if rec.state in ("spawning", "starting"):
                    rec.state = "ready"
                    now = time.monotonic()
                    rec.ready_at = now
                    rec.boot = _trace_ms(rec.started_at, msg.get("trace") or [], now)
                    log.info("zygote_ready", f"zygote of pool {rec.pool.name} ready "
                             f"(pid {rec.pid}, {rec.boot.get('total', 0):.0f} ms)",
                             POOL=rec.pool.name, CHILD_PID=rec.pid)
            elif kind == protocol.STARTUP_FAILED:
                lines = str(msg.get("error", "")).strip().splitlines()
                self._pool_zygote_failed(rec, lines[-1] if lines else "app import failed")
            elif kind == protocol.SPARE:
                pid = msg.get("pid")
                if isinstance(pid, int) and pid > 0:
                    if pid in self.early_exits:
                        continue      # it died before we heard of it: reaped already
                    self.spares[pid] = rec
                    rec.users += 1    # in its zygote's cgroup
            elif kind in (protocol.SPAWNED, protocol.SPAWN_FAILED):
                pid = msg.get("pid")
                if pid in self.spares:
                    self._spare_gone(pid)   # it is that worker now
                self._spawn_answer(msg)

    def _spare_gone(self, pid: int) -> None:
        rec = self.spares.pop(pid)
        rec.users -= 1
        self.placement.release_zygote_cgroup(rec)

    def _pool_zygote_failed(self, rec: PoolZygote, error: str) -> None:
        """It cannot start: its pool's workers come from the zygote (each imports the
        app and reports its own failure); no retry until the pool's next generation."""
        if rec.state == "failed":
            return
        rec.state, rec.error = "failed", error
        log.error("zygote_failed", f"zygote of pool {rec.pool.name} failed: {error}; its "
                  "workers import the app themselves", POOL=rec.pool.name, REASON=error[:200])

    def retire_zygote(self, pool, reason: str) -> None:
        """Its channel closes: the pool zygote exits (reaped here); the workers it
        forked are the supervisor's children and go on."""
        rec = self.pool_zygotes.pop(pool.name, None)
        self.zygotes_wanted.pop(pool.name, None)
        if rec is None:
            return
        if rec.state != "failed":
            rec.state = "retired"
        log.info("zygote_retired", f"zygote of pool {pool.name} retired ({reason})",
                 POOL=pool.name, REASON=reason)
        self._drop_pool_zygote_channel(rec)
        if rec.pid is None and rec not in self.zygote_spawning.values():
            rec.exited = True
            self.placement.release_zygote_cgroup(rec)

    def _drop_pool_zygote_channel(self, rec: PoolZygote) -> None:
        if rec.chan is not None:
            self.reactor.unwatch(rec.chan.fileno())
            rec.close()
        # spawns it had not answered: failed (a worker it forked and named is reaped)
        for sid, worker in list(self.spawning.items()):
            if worker.via is rec:
                del self.spawning[sid]
                worker.life.on("spawn_failed", "pool zygote gone before spawning")
                self._gone(worker, "pool zygote gone", False)

    def _pool_zygote_exited(self, rec: PoolZygote, status: int) -> None:
        rec.exited = True
        self.zygotes_by_pid.pop(rec.pid, None)
        self._drop_pool_zygote_channel(rec)
        self.placement.release_zygote_cgroup(rec)
        pool = rec.pool
        if self.pool_zygotes.get(pool.name) is not rec:
            return                        # retired: an expected exit
        del self.pool_zygotes[pool.name]
        code = os.waitstatus_to_exitcode(status)
        lived = time.monotonic() - (rec.ready_at or time.monotonic())
        if rec.state in ("ready", "retired") and lived >= ZYGOTE_MIN_LIFE:
            log.error("zygote_crash", f"zygote of pool {pool.name} exited "
                      f"({exit_text(code)}); restarting it", POOL=pool.name, CHILD_PID=rec.pid)
            self.want_zygote(pool)
        else:
            self._pool_zygote_failed(rec, rec.error or f"exited while starting ({exit_text(code)})")
            self.pool_zygotes[pool.name] = rec   # kept, failed: no retry this generation

    def zygote_doc(self, pool) -> dict | None:
        """Status of a pool's zygote: {"pid", "state", "generation", "boot_ms",
        "started", "error"} or None (no preload, or none yet)."""
        rec = self.pool_zygotes.get(pool.name)
        if rec is None:
            if pool.name in self.zygotes_evicted:
                return {"state": "evicted"}      # memory pressure: back once it is gone
            return {"state": "waiting"} if pool.name in self.zygotes_wanted else None
        return {"pid": rec.pid, "state": rec.state, "generation": rec.generation,
                "boot_ms": rec.boot.get("total"), "started": rec.started_wall,
                "workers_forked_in_its_cgroup": rec.users, "error": rec.error}

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
        for pid in list(self.zygotes_by_pid) + list(self.spares):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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
            elif pid in self.zygotes_by_pid:
                self._pool_zygote_exited(self.zygotes_by_pid[pid], status)
            elif pid in self.spares:
                # a spare that never served (its zygote retired), or one a SPAWNED we
                # have not read yet names: kept for it
                self._spare_gone(pid)
                self.early_exits[pid] = status
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
        rec = worker.via
        if rec is not None and worker.in_zygote_cgroup:
            worker.in_zygote_cgroup = False
            rec.users -= 1
            self.placement.release_zygote_cgroup(rec)
        worker.via = None
        pool.workers.pop(worker.id, None)
        self.registry.unstaff(pool)

    # ------------------------------------------------------------------ stop
    def children(self) -> set[int]:
        """Every child process still known (workers, tracked children, the zygote)."""
        kids = set(self.workers_by_pid) | set(self.tracked) | set(self.zygotes_by_pid) | \
            set(self.spares)
        if self.zygote_pid:
            kids.add(self.zygote_pid)
        return kids

    def close_zygote(self) -> None:
        """At the stop: the zygote's and every pool zygote's channel closes, so they
        exit (reaped by wait_children)."""
        self._drop_zygote_channel()
        for name in list(self.pool_zygotes):
            self.retire_zygote(self.pool_zygotes[name].pool, "hostd stopping")

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


def _trace_ms(start: float, trace: list, now: float) -> dict[str, float]:
    """{step: ms} of a pool zygote's boot (as boot_steps)."""
    steps, last = {}, start
    for name, t in [tuple(x) for x in trace] + [("ready_msg", now)]:
        steps[str(name)] = round((t - last) * 1000, 2)
        last = t
    steps["total"] = round((now - start) * 1000, 2)
    return steps


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
