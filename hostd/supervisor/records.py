"""The supervisor's records: what it knows of each worker, pool and front end.

Records hold state and close their own descriptors; they decide nothing (hostd.lifecycle
and hostd.supervisor.policy decide) and call nothing above them. The sub-records group
the fields one room owns: a worker's `HealthState` is health.py's, its `RecyclePlan`
recycling.py's; a pool's `PoolTotals` keeps what exited workers counted, so every
`_total` stays monotonic across recycles, crashes and idle exits.

`Registry` is the house's shared table of pools: pools.py adds and removes them, the
other rooms read it.
"""
from __future__ import annotations

import collections
import os
import socket
import time
from dataclasses import dataclass, field

from hostd import protocol
from hostd.lifecycle import (WORKER_ALIVE, PoolState, RapidFail, WorkerState,
                             pool_lifecycle, worker_lifecycle)
from hostd.router import Router
from kernel import sockets

P, W = PoolState, WorkerState


@dataclass
class HealthState:
    """health.py's part of a worker: pings and whether its failure was counted."""
    ping_seq: int = 0
    ping_sent: float | None = None       # outstanding ping (monotonic)
    last_ping: float | None = None
    failure_counted: bool = False        # counted once for rapid-fail


@dataclass
class RecyclePlan:
    """recycling.py's part of a worker: its triggers and a recycle under way."""
    at: float | None = None              # [recycling] time deadline (monotonic)
    request_limit: int = 0               # [recycling] requests limit
    reason: str = ""                     # set once a recycle of it has begun
    started: float = 0.0                 # when that recycle began (monotonic)
    respawn_after: bool = False          # non-overlapping recycle: spawn on exit
    replaces: "Worker | None" = None     # the unhealthy/recycled worker it replaces


class PoolZygote:
    """The supervisor's record of a preload pool's own zygote (hostd.zygote.
    pool_zygote_main): the warm tier. Owns its channel (closed by close()). `users`
    counts the live workers it forked into its own cgroup (`cgroup`, removed once the
    zygote and they are gone)."""

    #: states: spawning (asked the zygote) -> starting (importing the app) -> ready;
    #: failed (it could not start: not retried for this generation); retired (replaced
    #: or its pool stopped: its channel closed, it exits)
    def __init__(self, pool: "Pool", n: int, now: float | None = None):
        self.pool = pool
        self.n = n
        self.generation = pool.generation
        self.state = "spawning"
        self.pid: int | None = None
        self.chan: socket.socket | None = None
        self.cgroup = None
        self.users = 0
        self.started_at = time.monotonic() if now is None else now
        self.started_wall = time.time()
        self.ready_at: float | None = None
        self.boot: dict[str, float] = {}
        self.error: str | None = None
        self.exited = False

    @property
    def label(self) -> str:
        return f"{self.pool.name} zygote-{self.n}"

    def close(self) -> None:
        if self.chan is not None:
            self.chan.close()
            self.chan = None


class Worker:
    """The supervisor's record of one worker process (the process itself is
    workers/runtime.py). Owns its control channel and scoreboard (closed by close())."""

    def __init__(self, pool: "Pool", wid: int, generation: int, now: float | None = None):
        self.pool = pool
        self.id = wid
        self.generation = generation
        self.life = worker_lifecycle(pool.name, wid)
        self.pid: int | None = None
        self.ctl: socket.socket | None = None
        self.board: protocol.Scoreboard | None = protocol.Scoreboard.create()
        self.spawned_at = time.monotonic() if now is None else now
        self.started_wall = time.time()
        self.spawn_sent: float | None = None
        self.ready_at: float | None = None
        self.ready_early = False            # READY can overtake the zygote's "spawned" reply
        self.drain_at: float | None = None
        self.drain_reason = ""
        self.exit_status: int | None = None
        self.startup_error: str | None = None
        self.isolated = False               # spawned with [isolation] (its own uid and view)
        self.released_seen = 0              # global connection slots given back for it
        self.boot: dict[str, float] = {}    # step -> ms, from spawn request to READY
        self.orphaned_at: float | None = None
        self.reason = ""                    # why it was drained/killed/orphaned
        self.cgroup = None                  # kernel.cgroups.Cgroup, when available
        self.memwatch = None                # kernel.memevents.MemoryWatch
        self.oom = False
        self.slot = 0                       # its place in the web garden at spawn
        self.spawn_reason = ""              # why it started (a recycle's reason)
        self.cpu_at_exit = 0.0
        self.busy_sample: tuple[float, float] | None = None   # (when, Scoreboard.busy)
        self.busy_frac = 0.0                # at full capacity, share of the last second
        self.health = HealthState()
        self.recycle = RecyclePlan()
        self.via: "PoolZygote | None" = None   # forked by its pool's zygote (preload)
        self.in_zygote_cgroup = False          # ... and left in that zygote's cgroup

    @property
    def state(self) -> WorkerState:
        return self.life.state

    @property
    def label(self) -> str:
        return f"{self.pool.name}#{self.id}"

    def stats(self) -> dict:
        """The scoreboard's {"requests", "active", "connections", ...}; zeros once closed."""
        if self.board is None:
            return {"requests": 0, "active": 0, "connections": 0, "last_activity": 0.0,
                    "pid": 0}
        return self.board.read()

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.board is not None:
            self.board.close()
            self.board = None


@dataclass
class PoolTotals:
    """What the pool's exited workers counted: added once per worker, at its exit."""
    requests: int = 0
    bytes_in: int = 0
    cpu: float = 0.0
    counts: dict = field(default_factory=dict)   # binding text -> COUNT_FIELDS values
    crashes: int = 0
    rapid_fail_stops: int = 0
    queue_full: int = 0
    #: Scoreboard.TLS_FIELDS name -> count (a TLS pool's handshakes, failures, 421s)
    tls: dict = field(default_factory=lambda: dict.fromkeys(protocol.Scoreboard.TLS_FIELDS, 0))
    #: an ASGI pool's WebSockets: messages and upgrades (Scoreboard.WS_FIELDS but
    #: "open": an exited worker has none open)
    websockets: dict = field(default_factory=lambda: {"messages": 0, "upgraded": 0})

    def add_exited(self, worker: Worker, texts: list[str]) -> None:
        """Adds an exiting worker's scoreboard (requests, bytes, per-binding counters,
        TLS and WebSocket counters) and CPU time; call before its board is closed."""
        self.cpu += worker.cpu_at_exit
        if worker.board is None:
            return
        self.requests += worker.board.read()["requests"]
        for k, v in worker.board.read_tls().items():
            self.tls[k] = self.tls.get(k, 0) + v
        ws = worker.board.read_ws()
        for k in self.websockets:
            self.websockets[k] += ws.get(k, 0)
        bytes_in, per = worker.board.read_counts(len(texts) or 1)
        self.bytes_in += bytes_in
        for text, values in zip(texts, per):
            acc = self.counts.setdefault(text, [0] * protocol.Scoreboard.COUNT_FIELDS)
            for i, v in enumerate(values):
                acc[i] += v


class Pool:
    """The supervisor's record of one application pool. Owns its queue socketpair,
    its eventfd semaphores and its own reroute channel (closed by close())."""

    def __init__(self, name: str, cfg, error: str | None = None, bindings: tuple = ()):
        self.name = name
        self.cfg = cfg
        #: its bindings; a pool whose file is broken keeps the valid ones, answered 503
        self.bindings = tuple(cfg.bindings) if cfg is not None else tuple(bindings)
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
        self.waiting_since: float | None = None  # a connection was last seen waiting
        self.recycles: collections.Counter = collections.Counter()   # reason -> count
        self.pending_recycles: collections.deque = collections.deque()
        self.schedule_fired: set[str] = set()   # "YYYY-MM-DD HH:MM" already done
        self.limits = None                      # hostd.poollimits.PoolLimits of its cgroup
        # [isolation] as resolved at pool start (hostd/isolation.py)
        self.identity = None
        self.netns: str | None = None           # its pinned network namespace
        self.netns_pending: str | None = None   # ... still to be made (network = "none")
        self.tmp: dict[str, str] | None = None  # its /tmp, /dev/shm, /var/tmp on the host
        self.link: str | None = None            # host side of its veth (network = "private")
        # isolated workers hand connections back through a channel of their pool's,
        # relayed by the supervisor (connections.py): made at the first such worker
        self.reroute_in: socket.socket | None = None
        self.reroute_out: socket.socket | None = None
        self.relay_paused = False
        self.totals = PoolTotals()
        self.rate_samples: collections.deque = collections.deque(maxlen=11)

    @property
    def state(self) -> PoolState:
        return self.life.state

    @property
    def binding_texts(self) -> list[str]:
        return [b.text for b in self.bindings]

    def alive(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state in WORKER_ALIVE]

    def tls_counters(self) -> dict[str, int]:
        """Scoreboard.TLS_FIELDS sums of every worker it ever had (monotonic): the
        exited ones' totals plus the live scoreboards."""
        out = dict(self.totals.tls)
        for w in self.workers.values():
            if w.board is not None:
                for k, v in w.board.read_tls().items():
                    out[k] = out.get(k, 0) + v
        return out

    def ws_counters(self) -> dict[str, int]:
        """An ASGI pool's WebSockets: {"open": open now on its live workers, "messages",
        "upgraded": so far by every worker it ever had (monotonic)}."""
        out = {"open": 0, **self.totals.websockets}
        for w in self.workers.values():
            if w.board is not None:
                for k, v in w.board.read_ws().items():
                    out[k] = out.get(k, 0) + v
        return out

    def requests(self) -> int:
        """Requests served so far, by every worker it ever had (monotonic)."""
        return self.totals.requests + sum(w.stats()["requests"] for w in self.workers.values())

    def sem_value(self) -> int:
        """Free queue slots (its queue_length when the eventfd cannot be read)."""
        try:
            return sockets.semaphore_value(self.sem)
        except OSError:
            return self.queue_len

    def queued(self) -> int:
        return max(self.queue_len - self.sem_value(), 0)

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
    """A front end process: its slot, pid and control channel (closed when reaped)."""

    def __init__(self, slot: int, pid: int, ctl: socket.socket):
        self.slot, self.pid, self.ctl = slot, pid, ctl
        self.known_fds: set[tuple[str, int]] = set()   # (pool, id(queue)) already sent


class Registry:
    """The pools of the house, and the flags every room reads. pools.py adds and
    removes pools; shutdown.py sets `stopping`."""

    def __init__(self, main, pid: int):
        self.main = main
        self.pid = pid
        self.pools: dict[str, Pool] = {}
        self.retired: list[Pool] = []        # removed pools still draining
        self.stopping = False
        #: the pools (running or retired) that have worker records, in the order they
        #: got their first: what the tick's duties walk, so that a thousand cold pools
        #: cost the tick nothing (processes.py keeps it: staff / unstaff)
        self.staffed: dict[int, Pool] = {}
        #: the pools whose requests/s is sampled each second: the staffed ones, and a
        #: pool whose last worker left until its 10 s window is flat (views.tick_second)
        self.sampled: dict[int, Pool] = {}
        self._tables = None                  # (key, WorkerTables): worker_tables' cache

    def staff(self, pool: Pool) -> None:
        """A worker record was added to pool.workers."""
        self.staffed[id(pool)] = pool
        self.sampled[id(pool)] = pool

    def unstaff(self, pool: Pool) -> None:
        """A worker record was removed: the pool leaves `staffed` with its last."""
        if not pool.workers:
            self.staffed.pop(id(pool), None)

    def staffed_pools(self) -> list[Pool]:
        """The pools with worker records (a snapshot: duties may add or remove)."""
        return list(self.staffed.values())

    def every_pool(self) -> list[Pool]:
        """Running and retired pools (retired ones may still have workers)."""
        return list(self.pools.values()) + self.retired

    def serving(self):
        """The started pools with a config, while hostd is not stopping: those whose
        gardens grow and whose workers recycle."""
        if self.stopping:
            return
        for pool in self.pools.values():
            if pool.state == P.STARTED and pool.cfg is not None:
                yield pool

    def serving_staffed(self):
        """serving() of the pools that have workers (a garden without workers grows by
        demand start, which the queue's watch does; none has a worker to recycle)."""
        if self.stopping:
            return
        for pool in self.staffed_pools():
            if pool.state == P.STARTED and pool.cfg is not None and \
                    self.pools.get(pool.name) is pool:
                yield pool

    def every_worker(self):
        for pool in self.every_pool():
            yield from pool.workers.values()

    def find_worker(self, pid: int, pools=None) -> Worker | None:
        for pool in pools if pools is not None else self.every_pool():
            for w in pool.workers.values():
                if w.pid == pid:
                    return w
        return None

    def router_table(self) -> list:
        """The whole binding table. Failed and stopped pools keep their bindings (a
        broken pool file its valid ones), so their hosts are answered 503, not 404."""
        return Router([(p.name, b) for p in self.pools.values() for b in p.bindings]).to_table()

    def worker_routes(self, pool_name: str, tables=None) -> list:
        """What a pool's workers route by (hostd.router.WorkerTables): its bindings and
        those that can outrank them. tables: a WorkerTables of router_table() already
        made (a reload makes one for every pool), if any."""
        return (tables if tables is not None else self.worker_tables()).for_pool(pool_name)

    def worker_tables(self):
        """The WorkerTables of the current bindings, made again only when a pool's
        bindings changed (a spawn with 1,000 pools paid ~8 ms for the table)."""
        from hostd.router import WorkerTables
        key = tuple((p.name, p.bindings) for p in self.pools.values())
        if self._tables is None or self._tables[0] != key:
            self._tables = (key, WorkerTables(self.router_table()))
        return self._tables[1]


def show_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def exit_text(code: int) -> str:
    """"exit N" or "signal NAME" for a waitstatus_to_exitcode() value."""
    import signal
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"
