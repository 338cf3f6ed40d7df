"""The supervisor (the WAS role): one loop that owns every process, queue and socket.

Signal handlers only queue the signal (gunicorn's arbiter); the loop dispatches, with one
small method per duty: reap children, read channels, start workers on demand, grow and
shrink web gardens, reload, stop. Pool and worker states live in hostd.lifecycle.

What it owns, and who closes it:
* listening sockets — created once, kept until exit, lent to every front end of a slot;
* per pool: the queue socketpair and its eventfd semaphore, parked connections;
* per worker: the control channel and the scoreboard memfd (closed when reaped);
* per front end: the control channel (closed when reaped);
* the reroute socketpair, the zygote channel, the control socket.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import itertools
import json
import os
import select
import signal
import socket
import time
import traceback
from pathlib import Path

from hostd import config as hconfig
from hostd import garden, isolation, log, poollimits, protocol
from hostd.control import ControlServer
from hostd.lifecycle import (WORKER_ALIVE, PoolState, RapidFail, WorkerState,
                             pool_lifecycle, worker_lifecycle)
from hostd.router import Router
from hostd import sdnotify
from hostd.sdnotify import Notifier
from kernel import cgroups as kcgroups
from kernel import memevents
from kernel import fdpass, proc, sockets

P, W = PoolState, WorkerState

#: how long SIGTERM lets in-flight requests finish before killing (the health issue
#: makes this the pools' shutdown_limit)
STOP_GRACE = 90.0
TICK = 0.05
_POOL_FDS_BATCH = 64


class Worker:
    """The supervisor's record of one worker process."""

    def __init__(self, pool: "Pool", wid: int, generation: int):
        self.pool = pool
        self.id = wid
        self.generation = generation
        self.life = worker_lifecycle(pool.name, wid)
        self.pid: int | None = None
        self.ctl: socket.socket | None = None
        self.board = protocol.Scoreboard.create()
        self.spawned_at = time.monotonic()
        self.started_wall = time.time()
        self.ready_at: float | None = None
        self.drain_at: float | None = None
        self.drain_reason = ""
        self.exit_status: int | None = None
        self.startup_error: str | None = None
        self.ready_early = False   # READY can overtake the zygote's "spawned" reply
        self.isolated = False      # spawned with [isolation] (its own uid and view)
        self.released_seen = 0     # global connection slots given back for it (isolated)
        self.boot: dict[str, float] = {}   # step -> ms, from spawn request to READY
        self.spawn_sent: float | None = None
        self.ping_seq = 0
        self.ping_sent: float | None = None    # outstanding ping (monotonic)
        self.failure_counted = False           # counted once for rapid-fail
        self.replaces: "Worker | None" = None  # the unhealthy/recycled worker it replaces
        self.orphaned_at: float | None = None
        self.last_ping: float | None = None
        self.reason = ""                        # why it was drained/killed/orphaned
        self.cgroup = None                      # kernel.cgroups.Cgroup, when available
        self.memwatch = None                    # kernel.memevents.MemoryWatch
        self.slot = 0                           # its place in the web garden at spawn
        self.spawn_reason = ""                  # why it started (a recycle's reason)
        self.recycling = ""                     # set once a recycle of it has begun
        self.respawn_after = False              # non-overlapping recycle: spawn on exit
        self.recycle_at: float | None = None    # [recycling] time deadline (monotonic)
        self.request_limit = 0                  # [recycling] requests limit
        self.oom = False
        self.recycle_started = 0.0
        self.cpu_at_exit = 0.0
        self.replies: dict[int, list] = {}      # requests query seq -> live requests
        self.busy_sample: tuple[float, float] | None = None   # (when, Scoreboard.busy)
        self.busy_frac = 0.0                    # at full capacity, share of the last second

    @property
    def state(self) -> WorkerState:
        return self.life.state

    def stats(self) -> dict:
        return self.board.read()

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.board is not None:
            self.board.close()
            self.board = None


class Pool:
    """The supervisor's record of one application pool."""

    def __init__(self, name: str, cfg: "hconfig.PoolConfig | None", error: str | None = None):
        self.name = name
        self.cfg = cfg
        self.life = pool_lifecycle(name)
        self.generation = 1
        self.error = error
        self.workers: dict[int, Worker] = {}
        self.queue_in, self.queue_out = sockets.seqpacket_pair()
        sockets.enlarge_buffers(self.queue_in)
        self.queue_len = cfg.queue_length if cfg else 1
        self.sem = sockets.semaphore(self.queue_len)
        # max_connections of the pool (slots travel with connections: hostd/frontend.py)
        self.csem = sockets.semaphore(cfg.max_connections) if cfg and cfg.max_connections else -1
        self.sem_debt = 0
        self.parked: collections.deque = collections.deque()
        h = cfg.health if cfg is not None else None
        self.rapid = RapidFail(h.rapid_fail_max_crashes, h.rapid_fail_interval) if h else RapidFail()
        self.watch_demand = False
        self.watch_parked = False
        self.last_shrink = 0.0
        self.recycles: collections.Counter = collections.Counter()   # reason -> count
        self.pending_recycles: collections.deque = collections.deque()
        self.schedule_fired: set[str] = set()   # "YYYY-MM-DD HH:MM" already done
        self.served_by_gone = 0                 # requests of workers that have exited
        self.limits: poollimits.PoolLimits | None = None   # its cgroup's [limits]
        # [isolation] as resolved at pool start (hostd/isolation.py)
        self.identity: isolation.Identity | None = None
        self.netns: str | None = None      # its pinned network namespace
        self.tmp: dict[str, str] | None = None   # its /tmp, /dev/shm, /var/tmp on the host
        # isolated workers hand connections back through a channel of their pool's,
        # relayed by the supervisor (Supervisor._relay): made at the first such worker
        self.reroute_in: socket.socket | None = None
        self.reroute_out: socket.socket | None = None
        self.relay_paused = False
        self.link: str | None = None       # host side of its veth (network = "private")
        # counters of workers that have exited, kept so totals never go backwards
        self.gone_counts: dict[str, list[int]] = {}   # binding text -> 7 counters
        self.gone_bytes_in = 0
        self.gone_cpu = 0.0
        self.crashes = 0
        self.rapid_fail_stops = 0
        self.queue_full = 0
        self.rate_samples: collections.deque = collections.deque(maxlen=11)

    @property
    def state(self) -> PoolState:
        return self.life.state

    def alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state in WORKER_ALIVE]

    def close(self) -> None:
        self.queue_in.close()
        self.queue_out.close()
        for s in (self.reroute_in, self.reroute_out):
            if s is not None:
                s.close()
        self.reroute_in = self.reroute_out = None
        os.close(self.sem)
        if self.csem >= 0:
            os.close(self.csem)


class FrontEndProc:
    def __init__(self, slot: int, pid: int, ctl: socket.socket):
        self.slot, self.pid, self.ctl = slot, pid, ctl
        self.known_fds: set[tuple[str, int]] = set()   # (pool, id(queue)) already sent


class Supervisor:
    def __init__(self, config_path: Path, main: "hconfig.MainConfig"):
        self.config_path = config_path
        self.main = main
        self.pid = os.getpid()
        self.ep = select.epoll()
        self.handlers: dict[int, callable] = {}
        self.signals: collections.deque[int] = collections.deque()
        self.pools: dict[str, Pool] = {}
        self.retired: list[Pool] = []          # removed pools still draining
        self.workers_by_pid: dict[int, Worker] = {}
        self.spawning: dict[int, Worker] = {}  # spawn request id -> worker
        self.early_exits: dict[int, int] = {}  # pid reaped before the zygote named it
        self.frontends: dict[int, FrontEndProc] = {}
        self.frontend_pids: dict[int, int] = {}
        self.slots: list[list[socket.socket]] = []
        self.reroute_in, self.reroute_out = sockets.seqpacket_pair()
        sockets.enlarge_buffers(self.reroute_in)
        self.zygote_pid: int | None = None
        self.zygote: socket.socket | None = None
        self.spawn_ids = itertools.count(1)
        self.worker_ids: dict[str, itertools.count] = {}
        self.control: ControlServer | None = None
        self.stopping = False
        self.stop_phase = 0
        self.phase_deadline = 0.0
        self.stop_deadline = 0.0
        self.started_at = time.time()
        self.start_mono = time.monotonic()
        self.next_idle_check = 0.0
        self.next_second = 0.0
        self.notify = Notifier()
        self.actions: dict[int, tuple] = {}    # orphan_action pid -> (worker, cmd, proc, output)
        self.cgroups = None                    # kernel.cgroups tree, when available
        self.identities: isolation.IdentityStore | None = None   # opened when first needed
        self.runtime_dirs: list[str] | None = None
        self.frontend_ids: tuple[int, int] | None = None   # (uid, gid) the front ends drop to
        # connections on their way back to the front ends that the shared reroute
        # channel could not take yet (it is never written blocking): (fd, bytes)
        self.reroute_outbox: collections.deque = collections.deque()
        # v2 memory watches: one inotify instance, watch descriptor -> worker
        self.memory_inotify: memevents.Inotify | None = None
        self.memory_wds: dict[int, Worker] = {}
        self.ready_sent = False

    # ============================================================ start and run
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
        self._setup_cgroups()
        self._bind()
        self.main.run_dir.mkdir(parents=True, exist_ok=True)
        self.control = ControlServer(self.main.run_dir / "control.sock", self)
        self._watch(self.control.sock.fileno(), self._control_accept)
        self.metrics = None
        if self.main.metrics_listen:
            from hostd.metrics import MetricsServer
            host, port = self.main.metrics_listen
            self.metrics = MetricsServer(host, port, self)
            self._watch(self.metrics.sock.fileno(),
                        lambda ev: self.metrics.accept(self._watch, self._unwatch))
        self._start_zygote()
        self._frontend_identity()
        pools, broken = hconfig.load_pools(self.main)
        for name, cfg in sorted(pools.items()):
            self._add_pool(name, cfg)
        for name, errors in sorted(broken.items()):
            self._add_broken_pool(name, errors)
        for slot in range(len(self.slots)):
            self._start_frontend(slot)
        log.notice("start", f"hostd started: {len(self.pools)} pools, "
                   f"{len(self.slots)} front ends, listening on "
                   + ", ".join(_show_addr(h, p) for h, p in self.main.listen),
                   CONFIG=str(self.config_path))

    def _setup_cgroups(self) -> None:
        """Every worker gets a cgroup of its own under hostd's subtree (IIS job-object
        semantics: stopping a worker kills everything it started). Without root or
        cgroups, workers are killed by process group instead, and we say so."""
        if os.geteuid() != 0:
            return
        try:
            # v1 (hybrid hosts): one base per supervisor, so two hostds never share one
            tree = kcgroups.detect(name=f"hostd.{self.pid}")
            tree.setup()
        except (kcgroups.CgroupUnavailable, OSError) as exc:
            log.warning("no_cgroups", f"cgroups unavailable, workers are not contained: {exc}")
            return
        self.cgroups = tree
        log.info("cgroups", f"cgroup v{tree.version} subtree at {tree.path}",
                 CGROUP=tree.path, VERSION=tree.version)

    def run(self) -> int:
        """The loop. Returns the exit code."""
        while True:
            timeout = TICK
            try:
                events = self.ep.poll(timeout)
            except InterruptedError:
                events = []
            for fd, ev in events:
                handler = self.handlers.get(fd)
                if handler is not None:
                    handler(ev)
            while self.signals:
                self._on_signal(self.signals.popleft())
            now = time.monotonic()
            self._tick(now)
            self.notify.tick(now, self._status_line)   # WATCHDOG=1 when due, STATUS= on change
            if not self.ready_sent:
                self._maybe_ready(now)
            if self.stopping and self._stopped(now):
                break
        self._close_everything()
        log.notice("exit", "hostd stopped")
        return protocol.EXIT_OK

    def _maybe_ready(self, now: float) -> None:
        """READY=1 once the sockets are bound and every always_running pool has a
        ready worker (or has failed), so `systemctl start` returns when hostd serves."""
        waiting = [p.name for p in self.pools.values() if p.state == P.STARTING]
        if waiting and now - self.start_mono < STOP_GRACE:
            return
        self.ready_sent = True
        self.notify.ready(self._status_line())
        log.notice("ready", "hostd is ready", POOLS=len(self.pools))

    def _status_line(self) -> str:
        workers = sum(len(p.alive()) for p in self.pools.values())
        failed = sum(1 for p in self.pools.values() if p.state == P.FAILED)
        return f"{len(self.pools)} pools ({failed} failed), {workers} workers"

    # ============================================================ signals
    def _install_signals(self) -> None:
        self._sigr, self._sigw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._sigw)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            signal.signal(sig, self._queue_signal)
        self._watch(self._sigr, self._drain_wakeup)

    def _queue_signal(self, signum, _frame) -> None:
        self.signals.append(signum)   # only queue: the loop dispatches

    def _drain_wakeup(self, _ev) -> None:
        try:
            while os.read(self._sigr, 512):
                pass
        except BlockingIOError:
            pass

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self._reap()
        elif signum == signal.SIGHUP:
            self.reload()
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self.stop(f"signal {signal.Signals(signum).name}")
        elif signum == signal.SIGUSR1:   # logrotate: workers reopen their access log
            log.info("reopen_logs", "SIGUSR1: reopening access logs")
            self._send_access_log()
            for pid, worker in list(self.workers_by_pid.items()):
                if worker.isolated:
                    continue   # got the new file from _send_access_log
                try:
                    os.kill(pid, signal.SIGUSR1)
                except OSError:
                    pass

    # ============================================================ epoll helpers
    def _watch(self, fd: int, handler, events: int = select.EPOLLIN) -> None:
        self.ep.register(fd, events)
        self.handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        self.handlers.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass

    # ============================================================ sockets
    def _bind(self) -> None:
        n = self.main.frontends or os.cpu_count() or 1
        passed = sdnotify.listen_fds()
        if passed:   # socket activation (systemd/hostd.socket): all front ends share them
            shared = sdnotify.match_listen(passed, self.main.listen)
            self.slots = [shared for _slot in range(n)]
            self._note_listen_ports()
            return
        for _slot in range(n):
            self.slots.append([sockets.listen_tcp(h, p) for h, p in self.main.listen])
        self._note_listen_ports()

    def _note_listen_ports(self) -> None:
        #: the ports of hostd's listening sockets: a handed-back connection must be
        #: to one of them (_client_connection)
        self.listen_ports = {s.getsockname()[1] for slot in self.slots for s in slot}

    # ============================================================ zygote
    def _start_zygote(self) -> None:
        mine, theirs = sockets.seqpacket_pair()
        pid = os.fork()
        if pid == 0:
            code = protocol.EXIT_WORKER_BOOT
            try:
                proc.close_fds_except({theirs.fileno(), 2, 1})
                from hostd.zygote import zygote_main
                code = zygote_main(theirs, self.pid)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        self.zygote_pid, self.zygote = pid, mine
        self._watch(mine.fileno(), self._zygote_readable)
        log.info("zygote", "zygote started", CHILD_PID=pid)

    def _zygote_readable(self, _ev) -> None:
        while True:
            try:
                data = self.zygote.recv(protocol.MAX_CONTROL_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                return   # the zygote died: _reap restarts it
            msg = protocol.decode(data)
            worker = self.spawning.pop(msg.get("id"), None)
            if worker is None:
                continue
            if msg["t"] == "spawned":
                self._worker_spawned(worker, msg["pid"])
            else:
                worker.life.to(W.EXITED, f"spawn failed: {msg.get('error')}")
                self._worker_gone(worker, failed=True, reason=str(msg.get("error")))

    # ============================================================ front ends
    def _start_frontend(self, slot: int) -> None:
        mine, theirs = sockets.seqpacket_pair()
        sockets.enlarge_buffers(mine)
        listeners = self.slots[slot]
        keep = {theirs.fileno(), self.reroute_out.fileno(), 1, 2} | {s.fileno() for s in listeners}
        settings = {"max_header_bytes": self.main.max_header_bytes, **self._limit_settings(),
                    "identity": self.frontend_ids, "supervisor_pid": self.pid}
        keep.add(settings["conn_sem"])
        pid = os.fork()
        if pid == 0:
            code = protocol.EXIT_WORKER_BOOT
            try:
                proc.close_fds_except(keep)
                from hostd.frontend import frontend_main
                code = frontend_main(slot, listeners, theirs, self.reroute_out, settings)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        fe = FrontEndProc(slot, pid, mine)
        self.frontends[slot] = fe
        self.frontend_pids[pid] = slot
        self._watch(mine.fileno(), lambda ev, fe=fe: self._frontend_readable(fe))
        self._send_pools(fe)
        log.info("frontend_start", f"front end #{slot} started", SLOT=slot, CHILD_PID=pid)

    def _send_pools(self, fe: FrontEndProc) -> None:
        """Sends the front end the descriptors it lacks, then the pool table."""
        missing = [p for p in self.pools.values() if (p.name, id(p.queue_in)) not in fe.known_fds]
        for i in range(0, len(missing), _POOL_FDS_BATCH):
            batch = missing[i:i + _POOL_FDS_BATCH]
            fds = [fd for p in batch for fd in (p.queue_in.fileno(), p.sem, p.csem) if fd != -1]
            try:
                fdpass.send_with_fds(fe.ctl, protocol.encode(
                    {"t": "pool_fds", "names": [p.name for p in batch],
                     "conn_sems": [p.csem >= 0 for p in batch]}), fds)
            except OSError:
                return   # it died; reaping restarts it and sends everything again
            fe.known_fds.update((p.name, id(p.queue_in)) for p in batch)
        table = {p.name: {"state": p.state.value,
                          "lb": p.cfg.load_balancer_capabilities if p.cfg else "http_503",
                          "max_body": p.cfg.max_body_size if p.cfg and
                          p.cfg.max_body_size is not None else -1}
                 for p in self.pools.values()}
        try:
            fe.ctl.sendall(protocol.encode({"t": protocol.POOLS, "pools": table,
                                            "routes": self.router_table()}))
        except OSError:
            pass
        live = {(p.name, id(p.queue_in)) for p in self.pools.values()}
        fe.known_fds &= live

    def _broadcast_pools(self) -> None:
        for fe in self.frontends.values():
            self._send_pools(fe)

    def router_table(self) -> list:
        """The whole binding table. Failed and stopped pools keep their bindings, so their
        hosts are answered 503 rather than 404."""
        entries = [(p.name, b) for p in self.pools.values() if p.cfg is not None
                   for b in p.cfg.bindings]
        return Router(entries).to_table()

    def _frontend_readable(self, fe: FrontEndProc) -> None:
        for _ in range(64):
            try:
                data, fds = fdpass.recv_with_fds(fe.ctl, protocol.MAX_HANDOFF_BYTES + 256,
                                                 socket.MSG_DONTWAIT, maxfds=1)
            except BlockingIOError:
                return
            except (OSError, RuntimeError):
                return
            if not data:
                return
            if data[:1] == b"P" and fds:
                name, _, buf = data[1:].partition(b"\x00")
                self._park(name.decode(), fds[0], buf)
            elif data[:1] == b"{":
                try:
                    msg = protocol.decode(data)
                except ValueError:
                    continue
                if msg["t"] == "counters":
                    for name, n in (msg.get("queue_full") or {}).items():
                        if name in self.pools:
                            self.pools[name].queue_full += int(n)

    # ============================================================ parking
    def _park(self, name: str, fd: int, buf: bytes) -> None:
        """A front end found the pool's kernel queue full; hold the connection until
        there is room (it keeps the queue slot the front end took)."""
        pool = self.pools.get(name)
        if pool is None or pool.state not in (P.STARTED, P.STARTING):
            self._answer_fd(fd, b"503", pool)
            if pool is not None:
                sockets.give_slot(pool.sem)
            return
        pool.parked.append((fd, buf))
        self._flush_parked(pool)

    def _flush_parked(self, pool: Pool) -> None:
        _send_queued(pool.queue_in, pool.parked)
        want = bool(pool.parked)
        if want != pool.watch_parked:
            pool.watch_parked = want
            if want:
                self._watch(pool.queue_in.fileno(), lambda ev, p=pool: self._flush_parked(p),
                            select.EPOLLOUT)
            else:
                self._unwatch(pool.queue_in.fileno())

    def _answer_fd(self, fd: int, kind: bytes, pool: Pool | None) -> None:
        """Answers a connection the supervisor holds: 503 (or RST for tcp_reset pools)."""
        from hostd.frontend import unavailable
        sockets.give_slot(self._limit_settings()["conn_sem"])   # its connection slots
        if pool is not None and pool.csem >= 0:
            sockets.give_slot(pool.csem)
        sock = socket.socket(fileno=fd)
        if pool is not None and pool.cfg is not None and \
                pool.cfg.load_balancer_capabilities == "tcp_reset":
            sockets.reset_connection(sock)
            return
        try:
            sock.setblocking(False)
            sock.send(unavailable(pool.name if pool else "?"))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def _fail_queue(self, pool: Pool) -> None:
        """Answers every connection waiting for a pool that cannot serve them."""
        while pool.parked:
            fd, _ = pool.parked.popleft()
            self._answer_fd(fd, b"503", pool)
            sockets.give_slot(pool.sem)
        while True:
            try:
                _data, fds = fdpass.recv_with_fds(pool.queue_out, protocol.MAX_HANDOFF_BYTES,
                                                  socket.MSG_DONTWAIT, maxfds=1)
            except (BlockingIOError, RuntimeError):
                break
            for fd in fds:
                self._answer_fd(fd, b"503", pool)
            sockets.give_slot(pool.sem)
        if pool.watch_parked:
            pool.watch_parked = False
            self._unwatch(pool.queue_in.fileno())

    def _reroute_queue(self, pool: Pool) -> None:
        """Gives every connection waiting for a removed pool back to the front ends,
        which route it again (to the pool that took the binding over, or 404)."""
        while pool.parked:
            fd, buf = pool.parked.popleft()
            self._send_reroute(fd, buf, pool)
        while True:
            try:
                data, fds = fdpass.recv_with_fds(pool.queue_out, protocol.MAX_HANDOFF_BYTES,
                                                 socket.MSG_DONTWAIT, maxfds=1)
            except (BlockingIOError, RuntimeError):
                break
            for fd in fds:
                self._send_reroute(fd, data, pool)

    def _limit_settings(self) -> dict:
        """The client limits of [hostd] for front ends and workers, and the global
        max_connections semaphore (made once: a new value needs a restart)."""
        if getattr(self, "conn_sem", None) is None:
            self.conn_sem = sockets.semaphore(self.main.max_connections)
            self.conn_sem_max = self.main.max_connections
        m = self.main
        return {"conn_sem": self.conn_sem, "header_timeout": m.header_timeout,
                "keepalive_timeout": m.keepalive_timeout, "send_timeout": m.send_timeout,
                "min_request_bytes_per_second": m.min_request_bytes_per_second,
                "max_body_size": m.max_body_size}

    def _send_reroute(self, fd: int, buf: bytes, pool: Pool | None = None) -> None:
        if pool is not None and pool.csem >= 0:
            sockets.give_slot(pool.csem)   # it leaves the pool (keeps its global slot)
        self._reroute(fd, buf)

    # ------------------------------------------------------------ the reroute relay
    def _reroute(self, fd: int, buf: bytes) -> None:
        """Hands a connection (fd + the bytes already read) to the front ends through
        the shared reroute channel, never blocking the loop: when the channel is full
        it waits in the outbox, flushed on EPOLLOUT. Takes ownership of fd."""
        was_empty = not self.reroute_outbox
        self.reroute_outbox.append((fd, buf))
        if was_empty and not _send_queued(self.reroute_in, self.reroute_outbox):
            self._watch(self.reroute_in.fileno(), self._flush_outbox, select.EPOLLOUT)

    def _flush_outbox(self, _ev=None) -> None:
        if not _send_queued(self.reroute_in, self.reroute_outbox):
            return
        self._unwatch(self.reroute_in.fileno())
        for pool in list(self.pools.values()) + self.retired:
            if pool.relay_paused:
                pool.relay_paused = False
                self._watch(pool.reroute_out.fileno(), lambda ev, p=pool: self._relay(p))

    def _pool_reroute(self, pool: Pool) -> socket.socket:
        """The pool's own reroute channel for its isolated workers (made once). A
        worker that floods it fills only its pool's channel; the shared one is
        written by the supervisor alone, which takes turns between pools."""
        if pool.reroute_in is None:
            pool.reroute_in, pool.reroute_out = sockets.seqpacket_pair()
            pool.reroute_out.setblocking(False)
            self._watch(pool.reroute_out.fileno(), lambda ev, p=pool: self._relay(p))
        return pool.reroute_in

    def _relay(self, pool: Pool) -> None:
        """Connections an isolated worker hands back: checked (a TCP connection to one
        of hostd's own ports, not whatever descriptor the app chose to send) and passed
        on, at most _RELAY_BATCH per turn so pools take turns. While the outbox is
        long the pool's channel is not read: only its own workers wait."""
        for _ in range(_RELAY_BATCH):
            if len(self.reroute_outbox) >= _OUTBOX_MAX:
                pool.relay_paused = True
                self._unwatch(pool.reroute_out.fileno())
                return
            try:
                data, fds = fdpass.recv_with_fds(pool.reroute_out, protocol.MAX_HANDOFF_BYTES,
                                                 socket.MSG_DONTWAIT, maxfds=1)
            except BlockingIOError:
                return
            except (RuntimeError, OSError):
                continue
            for fd in fds[1:]:
                os.close(fd)
            if not fds:
                if not data:
                    return
                continue
            if self._client_connection(fds[0]):
                self._reroute(fds[0], data)
            else:
                os.close(fds[0])
                log.warning("reroute_refused", f"pool {pool.name} handed back a descriptor "
                            "that is not a client connection of hostd; closed", POOL=pool.name)

    def _client_connection(self, fd: int) -> bool:
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            return False
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                return False
            s.getpeername()
            return s.getsockname()[1] in self.listen_ports
        except OSError:
            return False
        finally:
            s.close()

    def _close_relay(self, pool: Pool) -> None:
        """A pool going away: what its workers handed back is passed on first."""
        if pool.reroute_out is None:
            return
        self._relay(pool)
        if not pool.relay_paused:
            self._unwatch(pool.reroute_out.fileno())
        pool.relay_paused = False

    # ============================================================ pools
    def _unsupported(self, cfg) -> str | None:
        """What this host cannot apply of a pool's config (a clear error, never ignored)."""
        if self.cgroups is None:
            wanted = [k for k, v in (("limits.worker_memory_max", cfg.limits.worker_memory_max),
                                     ("recycling.private_memory", cfg.recycling.private_memory))
                      if v] + poollimits.wanted(cfg.limits)
            if wanted:
                return (f"{cfg.file}: {', '.join(wanted)}: needs cgroups, which this hostd "
                        "does not have (run it as root on a host with cgroups)")
        return None

    def _add_pool(self, name: str, cfg) -> Pool:
        problem = self._unsupported(cfg)
        if problem is not None:
            pool = Pool(name, cfg, error=problem)
            pool.life.to(P.FAILED, "configuration cannot be applied")
            log.error("config_error", problem, POOL=name)
            self.pools[name] = pool
            return pool
        pool = Pool(name, cfg)
        self.pools[name] = pool
        self.worker_ids.setdefault(name, itertools.count(1))
        problem = self._isolate(pool)
        if problem is not None:
            pool.error = problem
            log.error("config_error", problem, POOL=name)
            pool.life.to(P.FAILED, "isolation cannot be applied")
            return pool
        problem = self._pool_limits(pool)
        if problem is not None:
            pool.error = problem
            pool.life.to(P.FAILED, "limits cannot be applied")
            return pool
        if cfg.start_mode == "always_running":
            self._spawn(pool, "always_running")
        else:
            pool.life.to(P.STARTED, "on_demand: a worker starts with the first request")
        self._update_demand(pool)
        return pool

    def _add_broken_pool(self, name: str, errors: list) -> Pool:
        text = "; ".join(str(e) for e in errors)
        for e in errors:
            log.error("config_error", str(e), POOL=name)
        pool = Pool(name, None, error=text)
        pool.life.to(P.FAILED, "config_error")
        self.pools[name] = pool
        return pool

    def _fail_pool(self, pool: Pool, reason: str, event: str) -> None:
        if not pool.life.can(P.FAILED):
            return
        pool.life.to(P.FAILED, reason)
        pool.error = reason
        log.error(event, f"pool {pool.name} failed: {reason}", POOL=pool.name, REASON=reason)
        for w in list(pool.workers.values()):
            self._drain(w, "pool failed")
        self._fail_queue(pool)
        self._update_demand(pool)
        self._broadcast_pools()

    def start_pool(self, name: str) -> tuple[bool, str]:
        """`hostctl pool start`: brings a stopped or failed pool back, resets rapid-fail."""
        pool = self.pools.get(name)
        if pool is None:
            return False, f"no pool named {name}"
        if pool.cfg is None:
            return False, f"pool {name} has a broken configuration: {pool.error}"
        if pool.state in (P.STARTED, P.STARTING):
            return True, f"pool {name} is already {pool.state.value}"
        pool.rapid.reset()
        problem = self._isolate(pool) or self._pool_limits(pool)
        if problem is not None:
            pool.error = problem
            return False, problem
        pool.error = None
        pool.life.to(P.STARTING, "hostctl pool start")
        if pool.cfg.start_mode == "always_running":
            self._spawn(pool, "always_running")
        else:
            pool.life.to(P.STARTED, "on_demand")
        self._update_demand(pool)
        self._broadcast_pools()
        return True, f"pool {name} started"

    def stop_pool(self, name: str) -> tuple[bool, str]:
        """`hostctl pool stop`: drains its workers; requests get 503 until started."""
        pool = self.pools.get(name)
        if pool is None:
            return False, f"no pool named {name}"
        if pool.state in (P.STOPPED, P.STOPPING):
            return True, f"pool {name} is already {pool.state.value}"
        pool.life.to(P.STOPPING, "hostctl pool stop")
        for w in list(pool.workers.values()):
            self._drain(w, "pool stop")
        self._fail_queue(pool)
        self._update_demand(pool)
        self._broadcast_pools()
        self._maybe_stopped(pool)
        return True, f"pool {name} stopping"

    def _maybe_stopped(self, pool: Pool) -> None:
        if pool.state == P.STOPPING and not any(
                w.state != W.EXITED for w in pool.workers.values()):
            pool.life.to(P.STOPPED, "all workers exited")
            self._broadcast_pools()

    def _update_demand(self, pool: Pool) -> None:
        """Watch the pool's queue while it has no worker: the first waiting connection
        starts one (demand start). With workers, growth is checked on the tick, so
        the supervisor is never woken per request."""
        want = (pool.state in (P.STARTED, P.STARTING) and not self.stopping
                and not pool.alive() and pool.cfg is not None)
        if want == pool.watch_demand:
            return
        pool.watch_demand = want
        fd = pool.queue_out.fileno()
        if want:
            self._watch(fd, lambda ev, p=pool: self._demand(p))
        else:
            self._unwatch(fd)

    def _demand(self, pool: Pool) -> None:
        self._spawn(pool, "demand")
        self._update_demand(pool)

    # ============================================================ workers
    def _spawn(self, pool: Pool, reason: str) -> Worker | None:
        """Asks the zygote for a worker of `pool` (current generation)."""
        if self.zygote is None or pool.cfg is None:
            return None
        wid = next(self.worker_ids[pool.name])
        worker = Worker(pool, wid, pool.generation)
        ctl_mine, ctl_theirs = sockets.seqpacket_pair()
        worker.slot = len(pool.alive())
        worker.spawn_reason = reason
        self._plan_recycle(pool, worker, first_life=not reason.startswith("recycle"))
        if self.cgroups is not None:
            try:
                worker.cgroup = self.cgroups.worker(pool.name, wid)
                self._memory_limits(pool, worker)
            except OSError as exc:
                log.error("cgroup_failed", f"worker cgroup of pool {pool.name}: {exc}",
                          POOL=pool.name)
                if worker.cgroup is not None:
                    try:
                        worker.cgroup.remove()
                    except OSError:
                        pass
                worker.close()
                self._count_failure(worker, f"cgroup: {exc}")
                return None
        worker_iso = self._worker_isolation(pool)
        worker.isolated = worker_iso is not None
        spec = {"pool": pool.name, "worker_id": wid, "generation": pool.generation,
                "global_slots_via_board": worker.isolated,
                "cgroup_procs": worker.cgroup.procs_files() if worker.cgroup else [],
                "isolation": worker_iso,
                "max_header_bytes": self.main.max_header_bytes, **self._limit_settings(),
                "access_log": self.main.access_log,
                "config": pool.cfg.to_spec(), "routes": self.router_table()}
        sid = next(self.spawn_ids)
        reroute = self._pool_reroute(pool) if worker.isolated else self.reroute_in
        fds = [ctl_theirs.fileno(), pool.queue_out.fileno(), pool.sem,
               reroute.fileno(), worker.board.fd]
        if not worker.isolated:
            fds.append(self._limit_settings()["conn_sem"])
        if pool.csem >= 0:
            fds.append(pool.csem)
        worker.spawn_sent = time.monotonic()
        try:
            fdpass.send_with_fds(self.zygote, protocol.encode(
                {"t": "spawn", "id": sid, "spec": spec}), fds)
        except OSError as exc:
            ctl_mine.close()
            ctl_theirs.close()
            worker.close()
            log.error("spawn_failed", f"cannot reach the zygote: {exc}", POOL=pool.name)
            return None
        ctl_theirs.close()
        worker.ctl = ctl_mine
        if worker.memwatch is not None:
            self._send_fence(worker)
        pool.workers[wid] = worker
        self.spawning[sid] = worker
        self._watch(ctl_mine.fileno(), lambda ev, w=worker: self._worker_readable(w))
        log.info("spawn", f"starting worker {pool.name}#{wid} ({reason})",
                 POOL=pool.name, WORKER_ID=wid, REASON=reason)
        return worker

    def _send_fence(self, worker: Worker) -> None:
        """v1: gives the worker its own copy of the kernel's memory notification (queued
        on its control channel until it reads it): it stops taking requests the moment
        it passes the threshold, not a round trip later. Without it, the supervisor's
        own watch still recycles the worker, a few requests later. (v2 has none to
        give: memory.high throttles the worker until the supervisor acts.)"""
        try:
            fd = worker.memwatch.fence()
            if fd is None:
                return
            try:
                fdpass.send_with_fds(worker.ctl, protocol.encode({"t": "memory_fence"}), [fd])
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("memory_fence", f"worker {worker.pool.name}#{worker.id}: {exc}",
                        POOL=worker.pool.name)

    def _worker_spawned(self, worker: Worker, pid: int) -> None:
        worker.pid = pid
        self.workers_by_pid[pid] = worker
        worker.life.to(W.STARTING, f"pid {pid}")
        if pid in self.early_exits:
            self._worker_exited(worker, self.early_exits.pop(pid))
        elif worker.ready_early:
            self._worker_ready(worker)

    def _worker_readable(self, worker: Worker) -> None:
        while worker.ctl is not None:
            try:
                data = worker.ctl.recv(protocol.MAX_CONTROL_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                # EOF: the process is exiting; reaping decides what it means
                self._unwatch(worker.ctl.fileno())
                return
            try:
                msg = protocol.decode(data)
            except ValueError:
                continue
            kind = msg["t"]
            if kind == protocol.READY:
                worker.boot = _boot_steps(worker, msg.get("trace") or [], time.monotonic())
                self._worker_ready(worker)
            elif kind == protocol.STARTUP_FAILED:
                worker.startup_error = str(msg.get("error", ""))
            elif kind == "requests_reply":
                worker.replies[msg.get("seq")] = msg.get("requests") or []
            elif kind == protocol.PONG:
                if msg.get("seq") == worker.ping_seq:
                    worker.ping_sent = None
                if msg.get("stuck") and worker.state == W.READY:
                    self._unhealthy(worker, "every app thread is stuck on the same request "
                                    f"for over {worker.pool.cfg.health.ping_timeout:g}s")
            elif kind == "memory_fence":
                # the worker passed its memory threshold and stopped taking requests;
                # the kernel tells us too, but this message is what makes sure it is
                # recycled (it waits for our drain order)
                self._memory_fenced(worker)
            elif kind == "unhealthy":
                if worker.state == W.READY and msg.get("app"):
                    # the app asked for it (workers.report_unhealthy): a recycle
                    self.recycle(worker, "app: " + str(msg.get("reason", ""))[:200])
                elif worker.state == W.READY:
                    self._unhealthy(worker, str(msg.get("reason", "reported by the worker")))

    def _worker_ready(self, worker: Worker) -> None:
        if worker.state == W.SPAWNING:
            worker.ready_early = True
            return
        if worker.state != W.STARTING:
            return
        worker.ready_at = time.monotonic()
        worker.life.to(W.READY, "app loaded")
        pool = worker.pool
        if pool.state == P.STARTING:
            pool.life.to(P.STARTED, f"worker {worker.id} ready")
            self._broadcast_pools()
        if worker.spawn_reason.startswith("recycle: ") and worker.replaces is None:
            log.info("recycle_ready", f"replacement worker {pool.name}#{worker.id} ready",
                     POOL=pool.name, WORKER_PID=worker.pid,
                     REASON=worker.spawn_reason[len("recycle: "):],
                     ELAPSED_MS=round((time.monotonic() - worker.spawned_at) * 1000, 1))
        if worker.replaces is not None:
            # overlapping recycle: the replacement is ready, the old one drains now
            old = worker.replaces
            log.info("recycle_ready", f"replacement of worker {pool.name}#{old.id} ready",
                     POOL=pool.name, WORKER_PID=worker.pid, OLD_PID=old.pid,
                     REASON=old.recycling,
                     ELAPSED_MS=round((time.monotonic() - old.recycle_started) * 1000, 1))
            self._drain(old, old.reason or "replaced")
            worker.replaces = None
        elif worker.generation == pool.generation:
            # an overlapping replacement: the oldest worker of an older generation goes
            old = [w for w in pool.workers.values()
                   if w.generation < pool.generation and w.state in (W.READY, W.STARTING)]
            if old:
                self._drain(min(old, key=lambda w: w.id), "config changed")
        if worker.generation < pool.generation or pool.state not in (P.STARTED, P.STARTING):
            self._drain(worker, "superseded")

    def _drain(self, worker: Worker, reason: str) -> None:
        """Asks a worker to finish and exit; kills it if it has not started yet."""
        if worker.state in (W.DRAINING, W.STOPPING, W.EXITED):
            return
        if worker.state == W.ORPHANED:     # it hangs by definition: nothing to drain
            worker.life.to(W.STOPPING, reason)
            self._kill(worker)
            return
        if worker.state == W.SPAWNING:
            worker.drain_reason = reason
            worker.drain_at = time.monotonic()
            return   # drained as soon as it has a pid
        if worker.state == W.STARTING:
            worker.life.to(W.STOPPING, reason)
            self._kill(worker)
            return
        worker.life.to(W.DRAINING, reason)
        worker.drain_at = time.monotonic()
        try:
            worker.ctl.sendall(protocol.encode({"t": protocol.DRAIN, "reason": reason}))
        except (OSError, AttributeError):
            self._kill(worker)

    def _kill(self, worker: Worker) -> None:
        """Kills the worker and everything it started: its cgroup when it has one, and
        its process group (every worker is a session leader) or itself by pid. The pid
        always: a worker joins its cgroup during its boot, so one killed while starting
        (a replacement when hostd stops) may not be in it yet, and would live on until
        the shutdown limit. The pid cannot be another process's: it is our child (or
        its parent's, the zygote's), unreaped."""
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

    # ============================================================ reaping
    def _reap(self) -> None:
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
                self._worker_exited(worker, status)
            elif pid in self.frontend_pids:
                self._frontend_exited(self.frontend_pids.pop(pid), status)
            elif pid == self.zygote_pid:
                self._zygote_exited(status)
            elif pid in self.actions:
                self._orphan_action_done(pid, status)
            else:
                self.early_exits[pid] = status

    def _worker_exited(self, worker: Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        worker.exit_status = code
        pool = worker.pool
        expected = worker.state in (W.DRAINING, W.STOPPING, W.ORPHANED)
        startup = worker.state == W.STARTING
        if code == protocol.EXIT_APP_LOAD or startup and not expected:
            reason = "startup failed: " + (worker.startup_error.strip().splitlines()[-1]
                                           if worker.startup_error else f"exit {code}")
            failed = True
        elif code == -signal.SIGKILL and self._oom_killed(worker):
            reason, failed = "killed by the OOM killer (oom_kill)", True
        elif expected:
            reason, failed = f"exited ({_exit_text(code)})", False
        else:
            reason, failed = f"crashed ({_exit_text(code)})", True
        worker.life.to(W.EXITED, reason)
        if failed:
            log.error("crash", f"worker {pool.name}#{worker.id} pid {worker.pid}: {reason}",
                      POOL=pool.name, WORKER_PID=worker.pid, REASON=reason)
        # a worker killed for its health was counted when it was killed
        self._worker_gone(worker, failed and not worker.failure_counted, reason)

    def _worker_gone(self, worker: Worker, failed: bool, reason: str) -> None:
        pool = worker.pool
        if worker.board is not None:
            stats = worker.stats()
            pool.served_by_gone += stats["requests"]
            self._released_slots(worker)
            if stats["connections"]:   # it died holding connections: their slots
                sockets.give_slot(self._limit_settings()["conn_sem"], stats["connections"])
                if pool.csem >= 0:
                    sockets.give_slot(pool.csem, stats["connections"])
        if worker.ctl is not None:
            self._unwatch(worker.ctl.fileno())
        worker.close()
        if worker.memwatch is not None:
            if worker.memwatch.version == 2:
                self.memory_wds.pop(worker.memwatch.wd, None)
            else:
                self._unwatch(worker.memwatch.fileno())
            worker.memwatch.close()
            worker.memwatch = None
        if worker.cgroup is not None:
            # whatever the worker started dies with it (a double-forked daemon too)
            try:
                if worker.cgroup.pids():
                    log.info("cgroup_leftovers", f"killing what worker {pool.name}#{worker.id} "
                             "left behind", POOL=pool.name, WORKER_PID=worker.pid)
                    worker.cgroup.kill()
                worker.cgroup.remove()
            except OSError as exc:
                log.warning("cgroup_remove", str(exc), POOL=pool.name)
            worker.cgroup = None
        pool.workers.pop(worker.id, None)
        if failed and pool.state in (P.STARTED, P.STARTING):
            self._count_failure(worker, reason)
            if pool.state in (P.STARTED, P.STARTING) and pool.cfg is not None \
                    and pool.cfg.start_mode == "always_running" and not pool.alive():
                self._spawn(pool, "replace failed worker")
        elif pool.state in (P.STARTED,) and pool.cfg is not None and \
                pool.cfg.start_mode == "always_running" and not pool.alive() and not self.stopping:
            self._spawn(pool, "always_running")
        if worker.replaces is not None:
            # the replacement died before it was ready: the old worker keeps serving,
            # and may be recycled again by the next trigger
            worker.replaces.recycling = ""
            worker.replaces = None
        if worker.respawn_after and pool.state == P.STARTED and not self.stopping \
                and len(pool.alive()) < pool.cfg.processes:
            # (a garden that grew meanwhile, on a queue or on saturation, has its worker)
            self._spawn(pool, f"recycle: {worker.recycling}")
        self._update_demand(pool)
        self._maybe_stopped(pool)
        self._next_recycle(pool)

    def _frontend_exited(self, slot: int, status: int) -> None:
        fe = self.frontends.pop(slot, None)
        if fe is not None:
            self._unwatch(fe.ctl.fileno())
            fe.ctl.close()
        if self.stopping:
            return
        log.error("frontend_crash", f"front end #{slot} exited ({_exit_text(os.waitstatus_to_exitcode(status))}); restarting",
                  SLOT=slot)
        self._start_frontend(slot)

    def _zygote_exited(self, status: int) -> None:
        if self.zygote is not None:
            self._unwatch(self.zygote.fileno())
            self.zygote.close()
            self.zygote = None
        for sid, worker in list(self.spawning.items()):
            del self.spawning[sid]
            worker.life.to(W.EXITED, "zygote died before spawning")
            self._worker_gone(worker, failed=False, reason="zygote died")
        if self.stopping:
            return
        log.error("zygote_crash", f"zygote exited ({_exit_text(os.waitstatus_to_exitcode(status))}); restarting")
        self._start_zygote()
        for pool in self.pools.values():
            self._update_demand(pool)

    # ============================================================ the tick
    def _tick(self, now: float) -> None:
        second = now >= self.next_second
        if second:
            self.next_second = now + 1.0
            for pool in self.pools.values():
                pool.rate_samples.append((now, self._pool_requests(pool)))
        for pool in self.pools.values():
            for w in pool.workers.values():
                if w.isolated and w.board is not None:
                    self._released_slots(w)
            if pool.state == P.STARTED and pool.cfg is not None and not self.stopping:
                self._grow(pool)
                self._check_recycling(pool, now, second)
                if second:
                    self._check_cpu(pool, now)
                    self._balance(pool, now)
            for w in list(pool.workers.values()):
                if w.state == W.SPAWNING and w.drain_at is not None and w.pid is not None:
                    self._drain(w, w.drain_reason)
        for pool in list(self.pools.values()) + self.retired:
            self._check_health(pool, now)
        for pool in [p for p in self.retired if not p.workers]:
            self._finish_retired(pool)
        if now >= self.next_idle_check:
            self.next_idle_check = now + 0.5
            for pool in self.pools.values():
                self._shrink(pool, now)

    def _check_health(self, pool: Pool, now: float) -> None:
        """Startup and shutdown limits, pings and their timeouts, for one pool."""
        h = pool.cfg.health if pool.cfg is not None else None
        startup_limit = h.startup_limit if h else 90.0
        shutdown_limit = h.shutdown_limit if h else STOP_GRACE
        for w in list(pool.workers.values()):
            state = w.state
            if state == W.STARTING and now - w.spawned_at > startup_limit:
                reason = f"not ready within startup_limit ({startup_limit:g}s)"
                w.life.to(W.STOPPING, reason)
                log.error("startup_timeout", f"worker {pool.name}#{w.id} pid {w.pid}: {reason}",
                          POOL=pool.name, WORKER_PID=w.pid, REASON=reason)
                self._count_failure(w, reason)
                self._kill(w)
            elif state == W.DRAINING and w.drain_at is not None and \
                    now - w.drain_at > shutdown_limit:
                reason = f"did not exit within shutdown_limit ({shutdown_limit:g}s)"
                w.life.to(W.STOPPING, reason)
                log.warning("shutdown_timeout", f"worker {pool.name}#{w.id} pid {w.pid}: {reason}",
                            POOL=pool.name, WORKER_PID=w.pid, REASON=reason)
                self._kill(w)
            elif state == W.READY and h is not None and h.ping_interval > 0 and w.ctl is not None:
                if w.ping_sent is None:
                    if now - (w.last_ping or w.ready_at or now) >= h.ping_interval:
                        w.ping_seq += 1
                        w.ping_sent = w.last_ping = now
                        try:
                            w.ctl.sendall(protocol.encode({"t": protocol.PING, "seq": w.ping_seq}))
                        except OSError:
                            pass   # it is dying; reaping tells
                elif now - w.ping_sent > h.ping_timeout:
                    self._unhealthy(w, f"no answer to ping within ping_timeout ({h.ping_timeout:g}s)")

    def _count_failure(self, worker: Worker, reason: str) -> None:
        """Crashes, startup failures and health kills count toward rapid-fail protection."""
        if worker.failure_counted:
            return
        worker.failure_counted = True
        pool = worker.pool
        if pool.state in (P.STARTED, P.STARTING) and pool.rapid.record(time.monotonic()):
            h = pool.cfg.health if pool.cfg else None
            pool.rapid_fail_stops += 1
            self._fail_pool(pool, f"rapid-fail protection: {pool.rapid.max_failures} failures "
                            f"within {pool.rapid.interval:g}s; last: {reason}", "rapid_fail")

    def _unhealthy(self, worker: Worker, reason: str) -> None:
        """A worker failed its health check: orphan it, kill it or recycle it (overlapping)."""
        if worker.state != W.READY:
            return
        pool = worker.pool
        h = pool.cfg.health
        worker.reason = f"unhealthy: {reason}"
        log.error("unhealthy", f"worker {pool.name}#{worker.id} pid {worker.pid}: {reason}",
                  POOL=pool.name, WORKER_PID=worker.pid, REASON=reason)
        self._count_failure(worker, worker.reason)
        if h.orphan:
            self._orphan(worker, reason)
        elif h.unhealthy_action == "kill":
            worker.life.to(W.STOPPING, worker.reason)
            self._kill(worker)
        else:
            if pool.state == P.STARTED and not self.stopping:
                new = self._spawn(pool, f"replace unhealthy worker {worker.id}")
                if new is not None:
                    new.replaces = worker
                    return
            self._drain(worker, worker.reason)
        if pool.state == P.STARTED and not pool.alive() and not self.stopping:
            self._spawn(pool, f"replace worker {worker.id}")

    def _orphan(self, worker: Worker, reason: str) -> None:
        """Keeps a failed worker alive for debugging: out of the queue, not killed; its
        orphan_action runs; a replacement serves the pool."""
        pool = worker.pool
        worker.life.to(W.ORPHANED, reason)
        worker.orphaned_at = time.monotonic()
        try:
            worker.ctl.sendall(protocol.encode({"t": "orphan"}))
        except (OSError, AttributeError):
            pass
        cg = worker.cgroup
        if cg is not None and self.cgroups is not None:
            try:
                worker.cgroup = cg.move_to(self.cgroups.orphans(pool.name))
            except OSError as exc:
                log.warning("orphan_cgroup", str(exc), POOL=pool.name, WORKER_PID=worker.pid)
        log.warning("orphan", f"worker {pool.name}#{worker.id} pid {worker.pid} orphaned: {reason}",
                    POOL=pool.name, WORKER_PID=worker.pid, REASON=reason)
        action = pool.cfg.health.orphan_action
        if action:
            self._run_orphan_action(worker, action.replace("{pid}", str(worker.pid))
                                    .replace("{pool}", pool.name))
        if pool.state == P.STARTED and not self.stopping:
            self._spawn(pool, f"replace orphaned worker {worker.id}")

    def _run_orphan_action(self, worker: Worker, command: str) -> None:
        """Runs the admin's command with /bin/sh; its output is logged when it ends."""
        import subprocess
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            log.error("orphan_action", f"cannot run {command!r}: {exc}", POOL=worker.pool.name)
            return
        self.actions[proc.pid] = (worker, command, proc, bytearray())
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)

        def readable(_ev, pid=proc.pid):
            _w, _c, p, buf = self.actions[pid]
            try:
                chunk = os.read(p.stdout.fileno(), 65536)
            except BlockingIOError:
                return
            if chunk and len(buf) < 1 << 20:
                buf += chunk
            if not chunk:
                self._unwatch(p.stdout.fileno())
        self._watch(fd, readable)

    def _orphan_action_done(self, pid: int, status: int) -> None:
        worker, command, proc, buf = self.actions.pop(pid)
        try:
            rest = proc.stdout.read()
            if rest:
                buf += rest
        except (OSError, ValueError):
            pass
        self._unwatch(proc.stdout.fileno())
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.notice("orphan_action", f"{command!r} exited ({_exit_text(proc.returncode)})",
                   POOL=worker.pool.name, WORKER_PID=worker.pid, OUTPUT=buf.decode("utf-8", "replace"))

    def orphans(self) -> list[dict]:
        """`hostctl orphans`."""
        now = time.monotonic()
        return [{"pool": p.name, "pid": w.pid, "id": w.id, "reason": w.reason,
                 "orphaned_for": round(now - w.orphaned_at, 1), "rss": _rss(w.pid)}
                for p in list(self.pools.values()) + self.retired
                for w in p.workers.values() if w.state == W.ORPHANED]

    def kill_orphan(self, pid: int) -> tuple[bool, str]:
        """`hostctl orphan kill PID`."""
        for p in list(self.pools.values()) + self.retired:
            for w in p.workers.values():
                if w.pid == pid and w.state == W.ORPHANED:
                    w.life.to(W.STOPPING, "hostctl orphan kill")
                    self._kill(w)
                    return True, f"orphan {pid} of pool {p.name} killed"
        return False, f"no orphaned worker with pid {pid}"

    # ============================================================ counters
    def _keep_counts(self, pool: Pool, worker: Worker) -> None:
        """Adds an exiting worker's traffic counters to its pool's totals."""
        texts = [b.text for b in pool.cfg.bindings] if pool.cfg else []
        bytes_in, per = worker.board.read_counts(len(texts) or 1)
        pool.gone_bytes_in += bytes_in
        for text, values in zip(texts or ["-"], per):
            acc = pool.gone_counts.setdefault(text, [0] * protocol.Scoreboard.COUNT_FIELDS)
            for i, v in enumerate(values):
                acc[i] += v

    def _pool_requests(self, pool: Pool) -> int:
        return pool.served_by_gone + sum(w.stats()["requests"] for w in pool.workers.values()
                                         if w.board is not None)

    def counters(self, name: str | None = None) -> dict:
        """The counters document (`hostctl counters`, /metrics). Per pool: requests
        total, requests/s over the last 10 s, active, queued, responses by class, bytes
        in/out, workers, memory, CPU seconds, recycles by reason, crashes, rapid-fail
        stops, queue-full rejections; per binding: requests, responses by class, bytes
        out."""
        out = []
        for pool in sorted(self.pools.values(), key=lambda p: p.name):
            if name is not None and pool.name != name:
                continue
            texts = [b.text for b in pool.cfg.bindings] if pool.cfg else []
            per = {t: list(pool.gone_counts.get(t, [0] * 7)) for t in texts}
            bytes_in = pool.gone_bytes_in
            active = memory = 0
            cpu = pool.gone_cpu
            live = [w for w in pool.workers.values() if w.board is not None]
            for w in live:
                b_in, counts = w.board.read_counts(len(texts) or 1)
                bytes_in += b_in
                for t, values in zip(texts, counts):
                    acc = per[t]
                    for i, v in enumerate(values):
                        acc[i] += v
                st = w.stats()
                active += st["active"]
                memory += _rss(w.pid)
                cpu += _cpu_seconds(w.pid)
            samples = pool.rate_samples
            rate = 0.0
            if len(samples) >= 2:
                (t0, n0), (t1, n1) = samples[0], samples[-1]
                rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
            classes = {f"{c}xx": sum(v[c] for v in per.values()) for c in range(1, 6)}
            out.append({
                "name": pool.name, "state": pool.state.value,
                "requests": self._pool_requests(pool), "requests_per_second": round(rate, 2),
                "active": active, "queued": max(pool.queue_len - _sem_value(pool), 0),
                "responses": classes, "bytes_in": bytes_in,
                "bytes_out": sum(v[6] for v in per.values()),
                "workers": len(pool.alive()), "memory": memory, "cpu_seconds": round(cpu, 3),
                "recycles": dict(pool.recycles), "crashes": pool.crashes,
                "rapid_fail_stops": pool.rapid_fail_stops, "queue_full": pool.queue_full,
                "bindings": [{"binding": t, "requests": v[0],
                              "responses": {f"{c}xx": v[c] for c in range(1, 6)},
                              "bytes_out": v[6]} for t, v in per.items()],
            })
        return {"pools": out}

    def live_requests(self, name: str | None = None, timeout: float = 1.0) -> dict:
        """`hostctl requests`: asks every worker's control thread (it answers even when
        the app hangs) for the requests it runs now; sorted by elapsed, longest first."""
        self.query_seq = getattr(self, "query_seq", 0) + 1
        seq = self.query_seq
        asked = []
        for pool in self.pools.values():
            if name is not None and pool.name != name:
                continue
            for w in pool.workers.values():
                if w.ctl is not None and w.state in (W.READY, W.DRAINING, W.ORPHANED):
                    try:
                        w.ctl.sendall(protocol.encode({"t": "requests", "seq": seq}))
                        asked.append(w)
                    except OSError:
                        pass
        deadline = time.monotonic() + timeout
        while any(seq not in w.replies for w in asked) and time.monotonic() < deadline:
            fds = [w.ctl for w in asked if seq not in w.replies and w.ctl is not None]
            if not fds:
                break
            ready, _, _ = select.select(fds, [], [], max(deadline - time.monotonic(), 0))
            for sock in ready:
                for w in asked:
                    if w.ctl is sock:
                        self._worker_readable(w)
        out = []
        for w in asked:
            for r in w.replies.pop(seq, []):
                r.update({"pool": w.pool.name, "worker_pid": w.pid})
                out.append(r)
        out.sort(key=lambda r: -r["elapsed"])
        return {"requests": out}

    def kill_worker(self, pid: int) -> tuple[bool, str]:
        """`hostctl worker kill PID`: kills it (and its cgroup) now; counted as a kill."""
        for pool in self.pools.values():
            for w in pool.workers.values():
                if w.pid == pid and w.state not in (W.EXITED, W.STOPPING):
                    w.life.to(W.STOPPING, "hostctl worker kill")
                    self._kill(w)
                    return True, f"worker {pid} of pool {pool.name} killed"
        return False, f"no running worker with pid {pid}"

    # ============================================================ recycling
    def _plan_recycle(self, pool: Pool, worker: Worker, first_life: bool) -> None:
        """Time and request limits of a new worker. A garden's first workers get
        staggered fractions ((slot+1)/N) so they never all recycle at once; the
        replacements then keep that spread with full periods."""
        r = pool.cfg.recycling
        n = max(pool.cfg.processes, 1)
        share = (min(worker.slot, n - 1) + 1) / n if first_life else 1.0
        if r.time > 0:
            worker.recycle_at = time.monotonic() + r.time * share
        if r.requests > 0:
            worker.request_limit = max(1, int(r.requests * share))

    def _memory_limits(self, pool: Pool, worker: Worker) -> None:
        """worker_memory_max on the worker's cgroup, and the kernel watch that recycles at
        private_memory (v2 memory.high + memory.events; v1 eventfd thresholds)."""
        cg, tree = worker.cgroup, self.cgroups
        limit = pool.cfg.limits.worker_memory_max
        high = pool.cfg.recycling.private_memory
        if not limit and not high:
            return
        if tree.version == 2:
            if limit:
                cg.write("memory.max", str(limit))
            if high:
                cg.write("memory.high", str(high))
            directory = cg.dirs.get("") or next(iter(cg.dirs.values()))
        else:
            if limit:
                cg.write("memory.limit_in_bytes", str(limit))
            directory = cg.dirs["memory"]
        if tree.version == 2:
            worker.memwatch = memevents.MemoryWatch(directory, 2, high, limit,
                                                    inotify=self._memory_inotify())
            self.memory_wds[worker.memwatch.wd] = worker
        else:
            worker.memwatch = memevents.MemoryWatch(directory, 1, high, limit)
            self._watch(worker.memwatch.fileno(), lambda ev, w=worker: self._memory_event(w))

    def _memory_inotify(self) -> memevents.Inotify:
        """v2: the one inotify instance every worker's memory.events watch shares."""
        if self.memory_inotify is None:
            self.memory_inotify = memevents.Inotify()
            self._watch(self.memory_inotify.fileno(), self._memory_inotify_readable)
        return self.memory_inotify

    def _memory_inotify_readable(self, _ev) -> None:
        for wd in self.memory_inotify.read():
            worker = self.memory_wds.get(wd)
            if worker is not None:
                self._memory_event(worker)

    # ============================================================ isolation
    def _isolate(self, pool: Pool) -> str | None:
        """Resolves the pool's [isolation] (identity, network namespace) and checks that
        its identity can read what its workers need. Returns the error (naming the
        file and key), or None. The filesystem view is made per spawn
        (_worker_isolation), so it hides pools added since."""
        cfg, iso = pool.cfg, pool.cfg.isolation
        if iso is None:
            pool.identity = None
            if pool.netns is not None:
                self._drop_network(pool)
            self._drop_tmp(pool)
            if os.geteuid() == 0:
                log.warning("unisolated", f"pool {pool.name} has no [isolation]: its workers "
                            "run as root, in hostd's namespaces", POOL=pool.name)
            return None
        if os.geteuid() != 0:
            return (f"{cfg.file}: [isolation] needs hostd to run as root (uids, namespaces); "
                    "remove the table or run hostd as root")
        try:
            identity = isolation.resolve_identity(pool.name, iso.identity, self._identities())
        except (OSError, KeyError) as exc:
            return f"{cfg.file}: isolation.identity: {exc}"
        if iso.filesystem == "site":
            try:
                self._pool_tmp(pool)
            except OSError as exc:
                return f"{cfg.file}: isolation.filesystem: cannot make the pool's /tmp: {exc}"
        elif pool.tmp is not None:
            self._drop_tmp(pool)
        view = self._view(pool) if iso.filesystem == "site" else None
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

    def _frontend_identity(self) -> None:
        """The front ends parse what any client sends: once their sockets are set up they
        drop root for a uid of their own (never a pool's, so no site can signal or
        ptrace them), with no capabilities. [hostd] frontend_identity; a change needs a
        restart."""
        choice = self.main.frontend_identity
        if os.geteuid() != 0 or choice == "root":
            return
        try:
            ident = isolation.resolve_identity(isolation.FRONTEND_KEY, choice, self._identities())
        except (OSError, KeyError) as exc:
            log.error("frontend_identity", f"{self.main.path}: hostd.frontend_identity: {exc}; "
                      "the front ends stay root")
            return
        self.frontend_ids = (ident.uid, ident.gid)
        log.info("identity", f"front ends run as uid {ident.uid} gid {ident.gid} ({choice})",
                 UID=ident.uid, GID=ident.gid)

    def _identities(self) -> isolation.IdentityStore:
        if self.identities is None:
            first, last = self.main.identity_range
            self.identities = isolation.IdentityStore(
                self.main.state_dir / "identities.json", first, last)
        return self.identities

    def _runtime_dirs(self) -> list[str]:
        if self.runtime_dirs is None:
            self.runtime_dirs = isolation.runtime_dirs()
        return self.runtime_dirs

    def _view(self, pool: Pool):
        others = [p.cfg for p in self.pools.values() if p is not pool and p.cfg is not None]
        return isolation.build_view(pool.cfg, self.main, others, self._runtime_dirs(),
                                    pool.tmp)

    def _pool_tmp(self, pool: Pool) -> None:
        """The pool's own /tmp and /dev/shm (a tmpfs of its own in run_dir, which its
        workers share and which outlives recycles) and /var/tmp (in state_dir, kept
        across restarts like the host's). Pages a pool writes there are charged to the
        writer's memory cgroup, so [limits] memory_max bounds them.
        Raises: OSError."""
        from kernel import ns
        base = self.main.run_dir / "tmp" / pool.name
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.path.ismount(base):
            ns.mount("tmpfs", str(base), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=0711")
        var = self.main.state_dir / "tmp" / pool.name
        var.mkdir(parents=True, exist_ok=True)
        for d in (base / "tmp", base / "shm", var):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o1777)
        pool.tmp = {"/tmp": str(base / "tmp"), "/dev/shm": str(base / "shm"),
                    "/var/tmp": str(var)}

    def _drop_tmp(self, pool: Pool) -> None:
        """Unmounts the pool's /tmp tmpfs (its /var/tmp stays, as the host's would)."""
        if pool.tmp is None:
            return
        from kernel import ns
        base = os.path.dirname(pool.tmp["/tmp"])
        try:
            ns.umount(base, ns.MNT_DETACH)
            os.rmdir(base)
        except OSError as exc:
            log.warning("tmp", f"pool {pool.name}: cannot remove its /tmp: {exc}", POOL=pool.name)
        pool.tmp = None

    def _worker_isolation(self, pool: Pool) -> dict | None:
        """The spawn spec's "isolation": what the zygote applies (hostd/zygote.py)."""
        iso = pool.cfg.isolation
        if iso is None or pool.identity is None:
            return None
        if iso.filesystem == "site":
            view = self._view(pool)
        else:
            view = isolation.runtime_view(pool.identity, self._runtime_dirs())
        return {"uid": pool.identity.uid, "gid": pool.identity.gid,
                "userns": iso.user_namespace, "pidns": iso.filesystem == "site",
                "view": view.to_spec() if view is not None else None,
                "netns": pool.netns}

    def _pool_network(self, pool: Pool) -> None:
        """network = "none"/"private": the pool's own network namespace, pinned at
        run_dir/netns/<pool>; "private" adds a veth pair with a /30 of private_network.
        Raises: OSError, RuntimeError, ValueError."""
        from kernel import netns
        mode = pool.cfg.isolation.network
        if mode == "host":
            self._drop_network(pool)
            return
        path = str(self.main.run_dir / "netns" / pool.name)
        netns.create(path)
        pool.netns = path
        if mode == "private" and pool.link is None:
            import ipaddress
            index = self._identities().net_index(pool.name)
            host, inside, plen = netns.subnet(ipaddress.IPv4Network(self.main.private_network), index)
            ifname = netns.ifname(pool.name, index)
            netns.private_link(path, ifname, str(host), str(inside), plen)
            pool.link = ifname
            log.info("network", f"pool {pool.name}: {ifname} {host}/{plen} <-> eth0 {inside}",
                     POOL=pool.name, INTERFACE=ifname)
        elif mode == "none" and pool.link is not None:
            netns.remove_link(pool.link)
            pool.link = None

    def _drop_network(self, pool: Pool) -> None:
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

    def pool_identity(self, name: str) -> tuple[bool, dict]:
        """`hostctl pool identity NAME`: the uid/gid the pool's workers run as."""
        pool = self.pools.get(name)
        if pool is None:
            return False, {"ok": False, "message": f"no pool named {name}"}
        if pool.cfg is None:
            return False, {"ok": False, "message": f"pool {name} has a broken configuration: {pool.error}"}
        iso = pool.cfg.isolation
        if iso is None:
            doc = {"uid": os.geteuid(), "gid": os.getegid(), "identity": "hostd",
                   "user": None}
        else:
            identity = pool.identity
            if identity is None:
                try:
                    identity = isolation.resolve_identity(name, iso.identity, self._identities())
                except (OSError, KeyError) as exc:
                    return False, {"ok": False, "message": f"pool {name}: {exc}"}
            doc = identity.to_dict()
        return True, {"ok": True, "pool": name, **doc,
                      "isolated": iso is not None,
                      "message": f"pool {name}: uid {doc['uid']} gid {doc['gid']} ({doc['identity']})"}

    def _released_slots(self, worker: Worker) -> None:
        """An isolated worker holds no descriptor of the global connection semaphore:
        the slots of the connections it closed are given back here, from its scoreboard
        (within one tick). It cannot inflate the limit past max_connections: at most the
        slots taken now are given back."""
        released = worker.board.read_released()
        delta = released - worker.released_seen
        if delta <= 0:
            return
        worker.released_seen = released
        sem = self._limit_settings()["conn_sem"]
        taken = self.conn_sem_max - sockets.semaphore_value(sem)
        if taken > 0:
            sockets.give_slot(sem, min(delta, taken))

    def _send_access_log(self) -> None:
        """logrotate for isolated workers, which can neither see nor open the file: the
        supervisor opens it and sends each one the descriptor over its control channel."""
        target = self.main.access_log
        isolated = [w for w in self.workers_by_pid.values() if w.isolated and w.ctl is not None]
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
                    fdpass.send_with_fds(w.ctl, protocol.encode({"t": "access_log"}), [fd])
                except OSError:
                    pass
        finally:
            os.close(fd)

    def _pool_limits(self, pool: Pool) -> str | None:
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

    def _oom_killed(self, worker: Worker) -> bool:
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
                else f"OOM kill in the cgroup of worker {pool.name}#{worker.id}")
        log.error("oom", f"{text}; killed worker {pool.name}#{worker.id} pid {worker.pid}",
                  POOL=pool.name, WORKER_PID=worker.pid, REASON="oom_kill",
                  LIMIT=where.replace(" ", "_"))
        return True

    def _check_cpu(self, pool: Pool, now: float) -> None:
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
            elif w.pid is not None and w.life.can(W.STOPPING):
                w.life.to(W.STOPPING, f"cpu_action kill: {reason}")
                self._kill(w)

    def _memory_event(self, worker: Worker) -> None:
        if worker.memwatch is None:
            return
        events = worker.memwatch.read()
        if memevents.HIGH in events:
            try:
                worker.memwatch.release_high()
            except OSError as exc:
                log.warning("cgroup_failed", f"worker {worker.pool.name}#{worker.id}: {exc}",
                            POOL=worker.pool.name)
        if memevents.OOM in events:
            worker.oom = True
            log.error("oom", f"worker {worker.pool.name}#{worker.id} pid {worker.pid}: "
                      "OOM kill in its cgroup", POOL=worker.pool.name, WORKER_PID=worker.pid,
                      REASON="oom_kill")
        if memevents.MAX in events:
            # at its hard limit: recycle now, before the OOM killer picks it
            self.recycle(worker, "memory_max", urgent=True)
        elif memevents.HIGH in events:
            self.recycle(worker, "private_memory")

    def _memory_fenced(self, worker: Worker) -> None:
        watch = worker.memwatch
        if watch is None or worker.state not in (W.READY, W.STARTING):
            return
        at_max = watch.limit and watch.usage() >= watch.near_limit()
        # urgent: a fenced worker holds no work, so it does not wait for its turn
        if not self.recycle(worker, "memory_max" if at_max else "private_memory",
                            urgent=True) and worker.state == W.READY:
            # already being recycled for another reason: it holds no work, drain it now
            self._drain(worker, worker.reason or "memory fence")

    def recycle(self, worker: Worker, reason: str, urgent: bool = False) -> bool:
        """Recycles one worker: overlapping (replacement first, then drain) or not
        (drain, then start). One recycle at a time per pool; others wait their turn,
        except urgent ones (a worker at its memory limit). Returns False when the
        worker is not in a state to be recycled."""
        pool = worker.pool
        if urgent and worker.recycling and worker.state == W.READY:
            # already being replaced, but at its limit: stop it taking work right now
            # (connections wait in the queue for the replacement, none is lost)
            self._drain(worker, f"recycle: {reason}")
            return True
        if worker.state not in (W.READY, W.STARTING) or worker.recycling:
            return False
        if not urgent and self._recycle_busy(pool):
            if all(w is not worker for w, _ in pool.pending_recycles):
                pool.pending_recycles.append((worker, reason))
            return True
        worker.recycling = reason
        worker.recycle_started = time.monotonic()
        pool.recycles[reason] += 1
        served = sum(w.stats()["requests"] for w in pool.workers.values() if w.board is not None)
        log.notice("recycle", f"recycling worker {pool.name}#{worker.id} pid {worker.pid} "
                   f"({reason})", POOL=pool.name, WORKER_PID=worker.pid, REASON=reason,
                   WORKER_REQUESTS=worker.stats()["requests"] if worker.board else 0,
                   POOL_REQUESTS=served + pool.served_by_gone)
        worker.reason = f"recycle: {reason}"
        if reason in _MEMORY_REASONS and pool.state == P.STARTED and not self.stopping:
            # a worker that is growing must not take one more request: it drains now
            # (idle keep-alive connections go back to the front ends), then its
            # replacement starts; meanwhile connections wait in the queue
            self._drain(worker, worker.reason)
            self._spawn(pool, f"recycle: {reason}")
            return True
        if pool.cfg.recycling.overlapping and pool.state == P.STARTED and not self.stopping:
            new = self._spawn(pool, f"recycle: {reason}")
            if new is not None:
                new.replaces = worker
                return True
        worker.respawn_after = pool.state == P.STARTED and not self.stopping
        self._drain(worker, worker.reason)
        return True

    def _recycle_busy(self, pool: Pool) -> bool:
        return any(w.replaces is not None or (w.recycling and w.state in (W.DRAINING, W.STOPPING))
                   for w in pool.workers.values())

    def _next_recycle(self, pool: Pool) -> None:
        while pool.pending_recycles and not self._recycle_busy(pool):
            worker, reason = pool.pending_recycles.popleft()
            if worker.state == W.READY and not worker.recycling:
                self.recycle(worker, reason)

    def recycle_pool(self, name: str) -> tuple[bool, str]:
        """`hostctl pool recycle`: every worker, one at a time."""
        pool = self.pools.get(name)
        if pool is None:
            return False, f"no pool named {name}"
        workers = [w for w in pool.workers.values() if w.state == W.READY]
        for w in workers:
            self.recycle(w, "on_demand")
        return True, f"recycling {len(workers)} worker(s) of pool {name}"

    def recycle_worker(self, pid: int) -> tuple[bool, str]:
        """`hostctl worker recycle PID`."""
        for pool in self.pools.values():
            for w in pool.workers.values():
                if w.pid == pid:
                    if self.recycle(w, "on_demand"):
                        return True, f"recycling worker {pid} of pool {pool.name}"
                    return False, f"worker {pid} is {w.state.value}"
        return False, f"no worker with pid {pid}"

    def _check_recycling(self, pool: Pool, now: float, second: bool) -> None:
        """Time, requests, virtual memory and schedule triggers (the memory ones are
        kernel events, see _memory_event)."""
        r = pool.cfg.recycling
        for w in list(pool.workers.values()):
            if w.state != W.READY or w.recycling:
                continue
            if w.recycle_at is not None and now >= w.recycle_at:
                w.recycle_at = None
                self.recycle(w, "time")
            elif w.request_limit and w.board is not None and \
                    w.board.read()["requests"] >= w.request_limit:
                w.request_limit = 0
                self.recycle(w, "requests")
            elif second and r.virtual_memory and _vmsize(w.pid) > r.virtual_memory:
                self.recycle(w, "virtual_memory")
        if second and r.schedule:
            stamp = time.strftime("%Y-%m-%d %H:%M")
            hhmm = stamp[-5:]
            if hhmm in r.schedule and stamp not in pool.schedule_fired:
                pool.schedule_fired = {stamp}
                for w in [w for w in pool.workers.values() if w.state == W.READY]:
                    self.recycle(w, "schedule")

    def _grow(self, pool: Pool) -> None:
        """Web garden growth: a connection waiting while every worker is busy (workers
        pull only when they have capacity) adds a worker, one at a time."""
        alive = pool.alive()
        if not alive or len(alive) >= pool.cfg.processes:
            return
        if any(w.state in (W.SPAWNING, W.STARTING) for w in alive):
            return
        if pool.parked or _readable(pool.queue_out):
            self._spawn(pool, "queue waiting")

    def _balance(self, pool: Pool, now: float) -> None:
        """Once a second: samples how saturated each ready worker was, then lets
        hostd.garden decide whether the garden grows and which worker gives idle
        keep-alive connections back to the front ends."""
        samples, starting = [], 0
        for w in pool.workers.values():
            if w.state in (W.SPAWNING, W.STARTING):
                starting += 1
                continue
            if w.state != W.READY or w.recycling or w.board is None:
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
            self._spawn(pool, "saturated")
        if d.shed_from is not None:
            w = d.shed_from
            log.info("rebalance", f"worker {pool.name}#{w.id} is saturated: it gives {d.shed} "
                     "idle keep-alive connection(s) back for a worker with room",
                     POOL=pool.name, WORKER_PID=w.pid, COUNT=d.shed)
            try:
                w.ctl.sendall(protocol.encode({"t": protocol.SHED, "n": d.shed}))
            except (OSError, AttributeError):
                pass

    def _shrink(self, pool: Pool, now: float) -> None:
        """Idle timeout, one worker at a time: workers above the first end after
        idle_timeout without a request; the last one too, unless always_running."""
        cfg = pool.cfg
        if cfg is None or pool.state != P.STARTED or cfg.idle_timeout <= 0:
            return
        if any(w.state == W.DRAINING for w in pool.workers.values()):
            return
        ready = [w for w in pool.workers.values() if w.state == W.READY]
        alive = pool.alive()
        floor = 1 if cfg.start_mode == "always_running" else 0
        if len(alive) <= floor:
            return
        idle = []
        for w in ready:
            s = w.stats()
            last = max(s["last_activity"], w.ready_at or 0.0)
            if s["active"] == 0 and now - last >= cfg.idle_timeout:
                idle.append((last, w))
        if idle:
            _last, victim = min(idle, key=lambda t: t[0])
            log.info("idle", f"worker {pool.name}#{victim.id} idle for {cfg.idle_timeout:g}s",
                     POOL=pool.name, WORKER_PID=victim.pid, REASON="idle_timeout")
            self._drain(victim, "idle_timeout")

    # ============================================================ reload
    def reload(self) -> None:
        """SIGHUP: new pools start, removed pools drain, changed pools get new workers
        before the old ones drain. Listening sockets stay open throughout."""
        log.notice("reload", "reloading configuration", CONFIG=str(self.config_path))
        self.notify.reloading()
        try:
            self._reload()
        finally:
            self.notify.ready(self._status_line())

    def _reload(self) -> None:
        try:
            main = hconfig.load_main(self.config_path)
            pools, broken = hconfig.load_pools(main)
        except hconfig.ConfigErrors as exc:
            for e in exc.errors:
                log.error("config_error", str(e))
            log.error("reload_failed", "main configuration is broken; keeping the running one")
            return
        if main.listen != self.main.listen or (main.frontends or os.cpu_count()) != len(self.slots):
            log.warning("reload", "listen/frontends changed: restart hostd to apply them")
        if main.run_dir != self.main.run_dir:
            log.warning("reload", "run_dir changed: restart hostd to apply it")
        self.main = main
        for name in list(self.pools):
            if name not in pools and name not in broken:
                self._retire(self.pools.pop(name), "removed from configuration")
        for name, errors in sorted(broken.items()):
            old = self.pools.pop(name, None)
            if old is not None:
                self._retire(old, "configuration broken")
            self._add_broken_pool(name, errors)
        for name, cfg in sorted(pools.items()):
            old = self.pools.get(name)
            if old is None:
                self._add_pool(name, cfg)
            elif old.cfg is None:
                self._retire(self.pools.pop(name), "configuration fixed")
                self._add_pool(name, cfg)
            elif old.cfg != cfg and self._unsupported(cfg) is not None:
                self._retire(self.pools.pop(name), "configuration cannot be applied")
                self._add_pool(name, cfg)
            elif old.cfg != cfg and old.state == P.FAILED:
                self._retire(self.pools.pop(name), "configuration changed")
                self._add_pool(name, cfg)
            elif old.cfg != cfg:
                self._change_pool(old, cfg)
        routes = self.router_table()
        for pool in self.pools.values():
            for w in pool.workers.values():
                if w.ctl is not None and w.state in (W.STARTING, W.READY):
                    try:
                        w.ctl.sendall(protocol.encode({"t": protocol.ROUTES, "routes": routes}))
                    except OSError:
                        pass
        self._broadcast_pools()
        log.notice("reloaded", f"configuration reloaded: {len(self.pools)} pools")

    def _change_pool(self, pool: Pool, cfg) -> None:
        pool.cfg = cfg
        problem = self._isolate(pool)
        if problem is not None:
            self._fail_pool(pool, problem, "isolation_failed")
            return
        problem = self._pool_limits(pool)
        if problem is not None:
            self._fail_pool(pool, problem, "limits_failed")
            return
        pool.rapid.max_failures = cfg.health.rapid_fail_max_crashes
        pool.rapid.interval = cfg.health.rapid_fail_interval
        pool.generation += 1
        if cfg.queue_length != pool.queue_len:
            self._resize_queue(pool, cfg.queue_length)
        log.notice("recycle", f"pool {pool.name} changed; replacing its workers",
                   POOL=pool.name, REASON="config")
        pool.recycles["config"] += sum(1 for w in pool.workers.values() if w.state in WORKER_ALIVE)
        old = [w for w in pool.workers.values() if w.state in WORKER_ALIVE]
        for w in old:
            if w.state in (W.SPAWNING, W.STARTING):
                self._drain(w, "config changed")
        n = sum(1 for w in old if w.state == W.READY)
        if cfg.start_mode == "always_running":
            n = max(n, 1)
        for _ in range(min(n, cfg.processes) or 0):
            self._spawn(pool, "config changed")
        # old READY workers beyond the new `processes` have no replacement: drain now
        surplus = [w for w in old if w.state == W.READY][min(n, cfg.processes):]
        for w in surplus:
            self._drain(w, "config changed")
        self._update_demand(pool)

    def _resize_queue(self, pool: Pool, new_len: int) -> None:
        delta = new_len - pool.queue_len
        pool.queue_len = new_len
        if delta > 0:
            sockets.give_slot(pool.sem, delta)
        else:
            for _ in range(-delta):
                if not sockets.take_slot(pool.sem):
                    pool.sem_debt += 1

    def _retire(self, pool: Pool, reason: str) -> None:
        """Takes a pool out of service: routes are withdrawn (the caller broadcasts),
        workers drain, waiting connections are routed again."""
        if pool.life.can(P.STOPPING):
            pool.life.to(P.STOPPING, reason)
        pool.watch_demand and self._unwatch(pool.queue_out.fileno())
        pool.watch_demand = False
        for w in list(pool.workers.values()):
            self._drain(w, reason)
        self.retired.append(pool)
        # what still waits in its queue is routed again once the front ends have the
        # new table (the tick finishes retired pools whose workers are gone)
        self._reroute_queue(pool)

    def _finish_retired(self, pool: Pool) -> None:
        self._reroute_queue(pool)
        if pool.watch_parked:
            self._unwatch(pool.queue_in.fileno())
        if pool.life.can(P.STOPPED):
            pool.life.to(P.STOPPED, "retired")
        self.retired.remove(pool)
        self._close_relay(pool)
        successor = self.pools.get(pool.name)
        if successor is None or successor.netns is None:
            self._drop_network(pool)   # not when a re-added pool of that name uses it
        if successor is None or successor.tmp is None:
            self._drop_tmp(pool)
        pool.close()

    # ============================================================ stop
    def stop(self, reason: str) -> None:
        """SIGTERM/SIGINT: stop accepting, let in-flight requests finish, exit 0."""
        if self.stopping:
            return
        self.stopping = True
        self.notify.stopping()
        limits = [p.cfg.health.shutdown_limit for p in self.pools.values() if p.cfg is not None]
        self.stop_deadline = time.monotonic() + max(limits or [STOP_GRACE]) + 1.0
        log.notice("stop", f"stopping ({reason})", REASON=reason)
        # phase 1: front ends stop accepting, hand off the heads they are reading, exit.
        # Workers keep serving meanwhile, and until the queues are empty (phase 2), so a
        # connection accepted before the stop is answered; then they drain (phase 3).
        for fe in self.frontends.values():
            try:
                fe.ctl.sendall(protocol.encode({"t": protocol.STOP}))
            except OSError:
                pass
        self.stop_phase = 1
        self.phase_deadline = time.monotonic() + min(self.main.header_timeout, 5.0) + 1.0
        if self.control is not None:
            self._unwatch(self.control.sock.fileno())
            self.control.close()
            self.control = None
        if getattr(self, "metrics", None) is not None:
            self._unwatch(self.metrics.sock.fileno())
            self.metrics.close()
            self.metrics = None

    def _stop_workers(self) -> None:
        """Phase 3 of a stop: every worker drains."""
        self.stop_phase = 3
        limits = [p.cfg.health.shutdown_limit for p in self.pools.values() if p.cfg is not None]
        self.stop_deadline = time.monotonic() + max(limits or [STOP_GRACE]) + 1.0
        for pool in list(self.pools.values()):
            if pool.life.can(P.STOPPING):
                pool.life.to(P.STOPPING, "hostd stopping")
            pool.watch_demand and self._unwatch(pool.queue_out.fileno())
            pool.watch_demand = False
            if not pool.alive():
                self._fail_queue(pool)   # nobody left to serve what waits: 503, not silence
            for w in list(pool.workers.values()):
                self._drain(w, "hostd stopping")

    def _stopped(self, now: float) -> bool:
        if self.stop_phase == 1:
            if self.frontends and now < self.phase_deadline:
                return False
            self.stop_phase = 2
            self.phase_deadline = now + 5.0
        if self.stop_phase == 2:
            waiting = any(p.parked or (p.cfg is not None and p.alive() and
                                       _sem_value(p) < p.queue_len)
                          for p in self.pools.values())
            if waiting and now < self.phase_deadline:
                return False
            self._stop_workers()
        workers_left = any(w.state != W.EXITED for p in list(self.pools.values()) + self.retired
                           for w in p.workers.values())
        if workers_left and now < self.stop_deadline:
            return False
        if workers_left:
            for p in list(self.pools.values()) + self.retired:
                for w in p.workers.values():
                    self._kill(w)
        # workers are gone: front ends may go (they only hold heads being read)
        for fe in list(self.frontends.values()):
            if fe.ctl is not None:
                self._unwatch(fe.ctl.fileno())
                fe.ctl.close()
                fe.ctl = None
        deadline = time.monotonic() + 5.0
        children = set(self.frontend_pids) | {p for p in self.workers_by_pid}
        if self.zygote is not None:
            self._unwatch(self.zygote.fileno())
            self.zygote.close()
            self.zygote = None
        if self.zygote_pid:
            children.add(self.zygote_pid)
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
        return True

    def _close_everything(self) -> None:
        for slot in self.slots:
            for s in slot:
                s.close()
        for pool in list(self.pools.values()) + self.retired:
            for fd, _ in pool.parked:
                os.close(fd)
            pool.parked.clear()
            self._drop_network(pool)
            self._drop_tmp(pool)
            pool.close()
        for fd, _ in self.reroute_outbox:
            os.close(fd)
        self.reroute_outbox.clear()
        self.reroute_in.close()
        self.reroute_out.close()
        if self.memory_inotify is not None:
            self.memory_inotify.close()
        self.ep.close()
        if self.cgroups is not None:
            try:
                self.cgroups.teardown()
            except (OSError, TimeoutError) as exc:
                log.warning("cgroup_teardown", str(exc))

    # ============================================================ control socket
    def _control_accept(self, _ev) -> None:
        self.control.accept(self._watch, self._unwatch)

    def status(self) -> dict:
        """The `hostctl status` document (JSON shape is a contract; extend, don't change)."""
        pools = []
        for pool in sorted(self.pools.values(), key=lambda p: p.name):
            workers = []
            for w in sorted(pool.workers.values(), key=lambda w: w.id):
                if w.state == W.EXITED:
                    continue
                s = w.stats() if w.board is not None else {"requests": 0, "active": 0,
                                                          "connections": 0}
                workers.append({"pid": w.pid, "id": w.id, "state": w.state.value,
                                "requests": s["requests"], "active": s["active"],
                                "connections": s["connections"],
                                "busy": round(w.busy_frac, 3), "rss": _rss(w.pid),
                                "cpu_seconds": round(_cpu_seconds(w.pid), 3),
                                "generation": w.generation,
                                "started": round(w.started_wall, 3),
                                "start_reason": w.spawn_reason,
                                "last_recycle_reason": w.spawn_reason[len("recycle: "):]
                                if w.spawn_reason.startswith("recycle: ") else None,
                                "recycling": w.recycling or None,
                                "boot_ms": w.boot or None})
            queued = self.pools[pool.name].queue_len - _sem_value(pool)
            pools.append({"name": pool.name, "state": pool.state.value,
                          "bindings": [b.text for b in pool.cfg.bindings] if pool.cfg else [],
                          "workers": workers, "queued": max(queued, 0),
                          "processes": pool.cfg.processes if pool.cfg else 0,
                          "start_mode": pool.cfg.start_mode if pool.cfg else None,
                          "error": pool.error,
                          "recycles": dict(pool.recycles),
                          "limits": dataclasses.asdict(pool.cfg.limits) if pool.cfg else None,
                          "isolation": dataclasses.asdict(pool.cfg.isolation)
                          if pool.cfg and pool.cfg.isolation else None,
                          "identity": pool.identity.to_dict() if pool.identity else None,
                          "file": str(pool.cfg.file) if pool.cfg else None})
        return {"pid": self.pid, "started": round(self.started_at, 3),
                "listen": [_show_addr(h, p) for h, p in self.main.listen],
                "frontends": [{"slot": fe.slot, "pid": fe.pid} for fe in
                              sorted(self.frontends.values(), key=lambda f: f.slot)],
                "zygote": self.zygote_pid, "pools": pools,
                "frontend_uid": self.frontend_ids[0] if self.frontend_ids else os.geteuid()}


#: connections relayed from one pool's reroute channel per turn of the loop
_RELAY_BATCH = 64
#: connections waiting for room in the shared reroute channel before pools wait too
_OUTBOX_MAX = 1024

#: recycle reasons for a worker whose memory grows: it stops taking work at once
_MEMORY_REASONS = frozenset({"private_memory", "memory_max"})


def _boot_steps(worker: Worker, trace: list, now: float) -> dict[str, float]:
    """{step: ms spent in it} from the spawn request to READY: the supervisor's own
    part (cgroup), then the steps the zygote and the worker stamped (hostd/zygote.py),
    then the READY message's trip back. CLOCK_MONOTONIC is one clock for every process
    (a pid namespace has no clock of its own), so the stamps compare."""
    steps, last = {}, worker.spawned_at
    for name, t in [("supervisor", worker.spawn_sent)] + [tuple(x) for x in trace] + [("ready_msg", now)]:
        if t is None:
            continue
        steps[str(name)] = round((t - last) * 1000, 2)
        last = t
    steps["total"] = round((now - worker.spawned_at) * 1000, 2)
    return steps


def _send_queued(sock: socket.socket, box: collections.deque) -> bool:
    """Sends the (fd, bytes) connections waiting in `box` down `sock` without blocking,
    closing our copy of each one sent (or refused). Returns True when box is empty."""
    while box:
        fd, buf = box[0]
        try:
            fdpass.send_with_fds(sock, buf, (fd,), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            pass
        box.popleft()
        os.close(fd)
    return True


def _sem_value(pool: Pool) -> int:
    try:
        return sockets.semaphore_value(pool.sem)
    except OSError:
        return pool.queue_len


def _readable(sock: socket.socket) -> bool:
    r, _, _ = select.select([sock], [], [], 0)
    return bool(r)


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a live process (0.0 when unknown)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _statm(pid: int | None, field: int) -> int:
    """A /proc/PID/statm field in bytes (0: VmSize, 1: resident); 0 when unknown."""
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _vmsize(pid: int | None) -> int:
    return _statm(pid, 0)


def _rss(pid: int | None) -> int:
    return _statm(pid, 1)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def _show_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
