"""Fakes of the supervisor's OS seams, and a house that wires the real rooms to them.

`FakeProcesses` is the real hostd.supervisor.processes.Processes with its OS calls
replaced (no fork, no SPAWN request, no signal, no wait4): every worker lifecycle move,
exit verdict, release into PoolTotals and posted event is the real code's. The test
plays the process side with `start`, `ready`, `message`, `exit`, `spawn_failed` and
`zygote_died`.

`House` builds a real `Supervisor` with fakes for its OS rooms (`seams`): the real
Registry, Reactor, Sizing, Health, Recycling, Pools, Shutdown, Views and Commands, and
its real `route()`, `on_<event>` handlers, `_tick`, `reload` and `stop` run: the routing
is under test too. Time is a `Clock` put in place of the `time` module of every supervisor
module that reads it, so limits, deadlines and ELAPSED_MS are exact.

Nothing here needs root or makes a child process; the records' own socketpairs,
memfds and eventfds are real (and closed by `House.close`).
"""
from __future__ import annotations

import collections

import os
import signal
import socket
import time as _time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from hostd import config as hconfig
from hostd import log, protocol
from hostd.lifecycle import WorkerState
from hostd.router import Binding
from hostd.sdnotify import Notifier
from hostd.supervisor import health as health_mod
from hostd.supervisor import loop as loop_mod
from hostd.supervisor import records as records_mod
from hostd.supervisor import recycling as recycling_mod
from hostd.supervisor import shutdown as shutdown_mod
from hostd.supervisor import views as views_mod
from hostd.supervisor.events import ChildExited
from hostd.supervisor.loop import Supervisor
from hostd.supervisor import processes as processes_mod
from hostd.supervisor.processes import Processes
from hostd.supervisor.records import FrontEndProc, PoolZygote, Worker  # noqa: F401

W = WorkerState
#: fake pids: above PID_MAX_LIMIT (2**22), so /proc never has them (procfs answers 0)
PID_BASE = 5_000_000
#: wall clock of the fake time at monotonic 0
WALL_BASE = 1_700_000_000.0


# ---------------------------------------------------------------------- config records
def main_config(base: Path = Path("/nonexistent/hostd"), **over) -> hconfig.MainConfig:
    """A real MainConfig with the defaults of [hostd] (one front end, one listen)."""
    values = dict(path=base / "hostd.toml", listen=(("127.0.0.1", 8080),), frontends=1,
                  pools_dir=base / "pools", state_dir=base / "state", run_dir=base / "run",
                  max_header_bytes=16384, defaults={})
    values.update(over)
    return hconfig.MainConfig(**values)


def pool_config(name: str = "a", *, bindings=None, health=None, recycling=None,
                limits=None, **over) -> hconfig.PoolConfig:
    """A real PoolConfig (as tests/integration/test_recycling.py builds one):
    always_running, one process, one binding `<name>.test`; keyword arguments override
    fields, `health=`/`recycling=`/`limits=` take dicts of that table's fields."""
    values = dict(name=name, file=Path(f"/nonexistent/pools/{name}.toml"), app="app:app",
                  directory=Path("/nonexistent/site"), virtualenv=None,
                  bindings=tuple(Binding.parse(b) for b in (bindings or [f"{name}.test"])),
                  start_mode="always_running", processes=1, threads=4, queue_length=16,
                  idle_timeout=0.0, load_balancer_capabilities="http_503", env=(),
                  health=hconfig.Health(**(health or {})),
                  recycling=hconfig.Recycling(**(recycling or {})),
                  limits=hconfig.Limits(**(limits or {})))
    values.update(over)
    return hconfig.PoolConfig(**values)


# ---------------------------------------------------------------------- time
class Clock:
    """Stands in for the `time` module of the supervisor's modules: monotonic() is
    `now`, time() is WALL_BASE + now, strftime formats that wall time."""

    def __init__(self, now: float = 1000.0, wall_base: float = WALL_BASE):
        self.now = now
        self.wall_base = wall_base

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall_base + self.now

    def strftime(self, fmt: str, t=None) -> str:
        return _time.strftime(fmt, t if t is not None else _time.localtime(self.time()))

    def __getattr__(self, name):
        return getattr(_time, name)


# ---------------------------------------------------------------------- processes
def _wait_status(code: int) -> int:
    """The wait status whose os.waitstatus_to_exitcode is `code` (negative: a signal)."""
    return -code if code < 0 else code << 8


class FakeProcesses(Processes):
    """The real Processes with its OS calls replaced: no fork (start_zygote), no SPAWN
    request (_ask_zygote: the control channel is a socketpair whose other end the test
    writes to), no SIGKILL (_kill_tree), no wait4 (reap), no waiting at the stop. Every
    decision is the real one. Records every call the rooms make in `calls`:
    ("spawn", pool, reason), ("drain", label, reason), ("kill", label, reason),
    ("kill_all",), ("track", pid, owner), ("reap",), ("close_zygote",),
    ("wait_children", timeout); messages sent in `sent` as (label, decoded message);
    SIGKILLs it would have sent in `sigkills` as labels. The test plays the process
    side with `start`, `ready`, `message`, `exit`, `spawn_failed` and `zygote_died`."""

    def __init__(self, registry, reactor, placement, connections, clock: Clock):
        super().__init__(registry, reactor, placement, connections)
        self.clock = clock
        self.calls: list[tuple] = []
        self.sent: list[tuple[str, dict]] = []
        self.unsent: list[tuple[str, dict]] = []
        self.sigkills: list[str] = []
        self.refuse = False               # spawn() returns None (no zygote, unreachable)
        self.dead_channels: set[int] = set()   # id(worker) whose send() fails
        self.peers: dict[int, socket.socket] = {}   # id(worker) -> the worker's end
        self._zygote_peer: socket.socket | None = None
        self._next_pid = PID_BASE
        self.zygote_peers: dict[str, socket.socket] = {}   # pool -> its pool zygote's end

    # ------------------------------------------------------------ helpers for tests
    def take(self) -> list[tuple]:
        """The calls recorded since the last take()."""
        out, self.calls = self.calls, []
        return out

    def messages(self, worker=None, kind: str | None = None) -> list[dict]:
        return [m for label, m in self.sent
                if (worker is None or label == worker.label) and (kind is None or m["t"] == kind)]

    def new_pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    # ------------------------------------------------------------ the OS calls, replaced
    def start_zygote(self) -> None:
        self.calls.append(("start_zygote",))
        if self._zygote_peer is not None:
            self._zygote_peer.close()
        self.zygote, self._zygote_peer = socket.socketpair(socket.AF_UNIX,
                                                           socket.SOCK_SEQPACKET)
        self.zygote_pid = self.new_pid()

    def _ask_zygote(self, sid: int, worker: Worker, isolation):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.peers[id(worker)] = theirs
        return mine

    def _ask_for_pool_zygote(self, sid: int, spec):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.calls.append(("spawn_zygote", spec.pool, spec.generation))
        self.zygote_peers[spec.pool] = theirs
        return mine

    def _kill_tree(self, worker: Worker) -> None:
        if worker.pid is not None:
            self.sigkills.append(worker.label)

    def send(self, worker: Worker, message: bytes) -> bool:
        msg = protocol.decode(message)
        if worker.ctl is None or id(worker) in self.dead_channels:
            self.unsent.append((worker.label, msg))
            return False
        self.sent.append((worker.label, msg))
        return True

    def reap(self) -> None:
        self.calls.append(("reap",))

    def close_zygote(self) -> None:
        self.calls.append(("close_zygote",))
        super().close_zygote()

    def wait_children(self, timeout: float) -> None:
        self.calls.append(("wait_children", timeout))

    # ------------------------------------------------------------ the calls, recorded
    def spawn(self, pool, reason: str) -> Worker | None:
        self.calls.append(("spawn", pool.name, reason))
        return None if self.refuse else super().spawn(pool, reason)

    def drain(self, worker: Worker, reason: str) -> None:
        self.calls.append(("drain", worker.label, reason))
        super().drain(worker, reason)

    def kill(self, worker: Worker, reason: str) -> None:
        self.calls.append(("kill", worker.label, reason))
        super().kill(worker, reason)

    def kill_all(self) -> None:
        self.calls.append(("kill_all",))
        super().kill_all()

    def track(self, pid: int, owner: str) -> None:
        self.calls.append(("track", pid, owner))
        super().track(pid, owner)

    # ------------------------------------------------------------ the process side
    def _sid(self, worker: Worker) -> int:
        return next(sid for sid, w in self.spawning.items() if w is worker)

    def start(self, worker: Worker, pid: int | None = None) -> int:
        """The zygote named the worker's pid (its SPAWNED reply)."""
        pid = pid if pid is not None else self.new_pid()
        del self.spawning[self._sid(worker)]
        self._spawned(worker, pid)
        return pid

    def spawn_failed(self, worker: Worker, error: str = "fork failed") -> None:
        """The zygote could not fork it (its SPAWN_FAILED reply)."""
        del self.spawning[self._sid(worker)]
        self._spawn_failed(worker, error)

    def zygote_died(self) -> None:
        """The zygote was reaped: every SPAWNING worker is gone (not counted), a new
        zygote runs, ZygoteRestarted is posted."""
        self._zygote_exited(_wait_status(-signal.SIGKILL))

    def pool_zygote_up(self, name: str, pid: int | None = None) -> "PoolZygote":
        """The zygote forked pool `name`'s zygote (SPAWNED) and it says ZYGOTE_READY."""
        rec = self.pool_zygotes[name]
        sid = next(sid for sid, r in self.zygote_spawning.items() if r is rec)
        del self.zygote_spawning[sid]
        self._pool_zygote_spawned(rec, {"t": protocol.SPAWNED, "id": sid,
                                        "pid": pid or self.new_pid()})
        self.pool_zygote_says(name, {"t": protocol.ZYGOTE_READY, "trace": []})
        return rec

    def pool_zygote_says(self, name: str, msg: dict) -> None:
        """Pool `name`'s zygote writes `msg` on its channel."""
        self.zygote_peers[name].send(protocol.encode(msg))
        self._pool_zygote_readable(self.pool_zygotes[name])

    def pool_zygote_exit(self, rec, code: int = 0) -> None:
        """A pool zygote's process was reaped."""
        self._pool_zygote_exited(rec, _wait_status(code))

    def message(self, worker: Worker, msg: dict) -> None:
        """The worker writes `msg` on its control channel; read() takes it."""
        self.peers[id(worker)].send(protocol.encode(msg))
        self.read(worker)

    def ready(self, worker: Worker, trace=()) -> None:
        """The worker reports READY."""
        self.message(worker, {"t": protocol.READY, "trace": list(trace)})

    def up(self, worker: Worker, pid: int | None = None) -> Worker:
        """start + ready."""
        self.start(worker, pid)
        self.ready(worker)
        return worker

    def child_exited(self, pid: int, status: int = 0) -> None:
        """A tracked child was reaped (Processes.reap posts ChildExited)."""
        self.reactor.post(ChildExited(pid, status, self.tracked.pop(pid)))

    def exit(self, worker: Worker, code: int = 0, *, startup_error: str | None = None,
             cpu: float = 0.0) -> tuple[str, bool]:
        """The worker's process exited with `code` (os.waitstatus_to_exitcode: negative
        = that signal), as reap finds it. Returns the verdict (from the WorkerExited
        event it posted)."""
        if startup_error is not None:
            worker.startup_error = startup_error
        self.workers_by_pid.pop(worker.pid, None)
        worker.cpu_at_exit = cpu
        self._exited(worker, _wait_status(code))
        reason = self.reactor.events[-1].reason
        # policy.exit_verdict: the exits it does not count as failures are "exited (...)"
        return reason, not reason.startswith("exited ")

    def _release(self, worker: Worker) -> None:
        super()._release(worker)
        peer = self.peers.pop(id(worker), None)
        if peer is not None:
            peer.close()

    def close(self) -> None:
        for peer in list(self.peers.values()) + list(self.zygote_peers.values()):
            peer.close()
        self.peers.clear()
        self.zygote_peers.clear()
        for rec in list(self.pool_zygotes.values()) + list(self.zygotes_by_pid.values()):
            rec.close()
        for sock in (self.zygote, self._zygote_peer):
            if sock is not None:
                sock.close()


# ---------------------------------------------------------------------- placement
class FakeMemoryWatch:
    """What Placement.worker_cgroup leaves on a worker with a memory limit."""
    shared_inotify = True
    wd = -1

    def __init__(self, high: int, limit: int):
        self.high, self.limit = high, limit

    def close(self) -> None:
        pass


class FakePlacement:
    """No cgroups, no isolation. Problems can be set per pool name; `near_memory_max`
    and `oom` are what the kernel would say."""

    def __init__(self):
        self.cgroups = None
        self.frontend_ids = None
        self.unsupported_errors: dict[str, str] = {}
        self.isolate_errors: dict[str, str] = {}
        self.limits_errors: dict[str, str] = {}
        self.cgroup_error: str | None = None
        self.network_errors: dict[str, str] = {}
        self.near_max = False
        self.oom = False
        self.calls: list[tuple] = []

    def setup_cgroups(self) -> None:
        pass

    #: what pressure() reports ([hostd] idle_pressure's figure; None: off/unreadable)
    pressure_value = None

    def setup_pressure(self) -> None:
        pass

    def pressure(self):
        return self.pressure_value

    def unsupported(self, cfg) -> str | None:
        return self.unsupported_errors.get(cfg.name)

    def isolate(self, pool) -> str | None:
        return self.isolate_errors.get(pool.name)

    #: what decide assumes of hostd's user (the real one asks geteuid)
    root = False

    def identities_held(self):
        import contextlib
        return contextlib.nullcontext()

    def decide(self, pool):
        from hostd import isolation
        return isolation.decide(pool.cfg.isolation, self.root)

    def warn_unisolated(self, pools) -> None:
        from hostd.supervisor.placement import Placement
        self.calls.append(("warn_unisolated", sorted(p.name for p in pools)))
        Placement.warn_unisolated(self, pools)   # the real warnings (log only)

    def pool_limits(self, pool) -> str | None:
        return self.limits_errors.get(pool.name)

    def worker_cgroup(self, worker) -> None:
        """Like Placement.worker_cgroup: a memory watch when the pool has a memory
        limit (recycling.private_memory or limits.worker_memory_max)."""
        if self.cgroup_error is not None:
            raise OSError(self.cgroup_error)
        cfg = worker.pool.cfg
        if cfg.limits.worker_memory_max or cfg.recycling.private_memory:
            worker.memwatch = FakeMemoryWatch(cfg.recycling.private_memory,
                                              cfg.limits.worker_memory_max)

    def worker_isolation(self, pool):
        return None

    def zygote_cgroup(self, rec) -> None:
        self.calls.append(("zygote_cgroup", rec.label))

    def release_zygote_cgroup(self, rec) -> None:
        if rec.exited and rec.users == 0:
            self.calls.append(("release_zygote_cgroup", rec.label))

    def needs_worker_cgroup(self, pool) -> bool:
        return False      # as Placement's without cgroups

    def zygote_isolation(self, pool):
        return None

    def ensure_network(self, pool):
        return self.network_errors.get(pool.name)

    def prepare_networks(self) -> list:
        return []

    def fence_fd(self, worker):
        return None

    def near_memory_max(self, worker) -> bool:
        return self.near_max

    def oom_killed(self, worker) -> bool:
        return self.oom or worker.oom

    def release_worker(self, worker) -> None:
        self.calls.append(("release_worker", worker.label))
        if worker.memwatch is not None:
            worker.memwatch.close()
            worker.memwatch = None

    def release_pool(self, pool, successor=None) -> None:
        self.calls.append(("release_pool", pool.name, successor is not None))

    def orphan(self, worker) -> None:
        self.calls.append(("orphan", worker.label))

    def frontend_identity(self) -> None:
        pass

    def identity_doc(self, pool):
        return True, {"ok": True, "pool": pool.name}

    def send_access_log(self, workers) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- front ends
class FakeFrontEnds:
    """Counts broadcasts and stops; front ends are added with `add(slot, pid)` and
    leave through ChildExited (on_exited), as the real ones do."""

    def __init__(self, registry, processes):
        self.registry = registry
        self.processes = processes
        self.slots: list[list] = [[]]
        self.by_slot: dict[int, FrontEndProc] = {}
        self.pids: dict[int, int] = {}
        self.broadcasts = 0
        self.stops = 0
        self.channels_closed = 0
        self.restarts: list[int] = []
        self.refused = collections.Counter()    # as FrontEnds.refused

    def add(self, slot: int, pid: int) -> FrontEndProc:
        fe = FrontEndProc(slot, pid, None)
        self.by_slot[slot] = fe
        self.pids[pid] = slot
        self.processes.track(pid, "frontend")
        return fe

    def bind(self) -> None:
        pass

    def start_all(self) -> None:
        pass

    def start(self, slot: int) -> None:
        self.restarts.append(slot)

    def on_exited(self, pid: int, status: int) -> None:
        slot = self.pids.pop(pid, None)
        if slot is None:
            return
        self.by_slot.pop(slot, None)
        if not self.registry.stopping:
            self.start(slot)

    def send_pools(self, fe) -> None:
        pass

    def broadcast(self, changed=None) -> None:
        self.broadcasts += 1

    def stop_all(self) -> None:
        self.stops += 1

    def close_channels(self) -> None:
        self.channels_closed += 1

    def close_sockets(self) -> None:
        pass


# ---------------------------------------------------------------------- connections
class FakeConnections:
    """Records what the rooms do with held connections: ("fail_queue", pool),
    ("reroute_queue", pool), ("close_relay", pool), ("forget_parked", pool),
    ("give_back", pool, n), ("released_slots", label), ("park", pool, fd).
    `waiting_pools` are the pools whose queue has a connection waiting."""

    def __init__(self, registry):
        self.registry = registry
        self.calls: list[tuple] = []
        self.waiting_pools: set[str] = set()
        self.conn_sem = -1
        self.listen_ports: set[int] = set()

    def limit_settings(self) -> dict:
        m = self.registry.main
        return {"conn_sem": self.conn_sem, "header_timeout": m.header_timeout,
                "keepalive_timeout": m.keepalive_timeout, "send_timeout": m.send_timeout,
                "min_request_bytes_per_second": m.min_request_bytes_per_second,
                "max_body_size": m.max_body_size}

    def park(self, name: str, fd: int, buf: bytes) -> None:
        self.calls.append(("park", name, fd))
        os.close(fd)

    def waiting(self, pool) -> bool:
        return bool(pool.parked) or pool.name in self.waiting_pools

    def fail_queue(self, pool) -> None:
        self.calls.append(("fail_queue", pool.name))

    def reroute_queue(self, pool) -> None:
        self.calls.append(("reroute_queue", pool.name))

    def forget_parked(self, pool) -> None:
        self.calls.append(("forget_parked", pool.name))

    def close_relay(self, pool) -> None:
        self.calls.append(("close_relay", pool.name))

    def give_back(self, pool, n: int) -> None:
        self.calls.append(("give_back", pool.name, n))

    def released_slots(self, worker) -> None:
        self.calls.append(("released_slots", worker.label))

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- the house
class House:
    """The real rooms around the fakes, and a real Supervisor's routing and tick.

    Takes the pool configs to add at once (their order), a MainConfig, and the clock
    (a Clock at 1000.0 by default). `sup` is the Supervisor; `route()` and `tick()`
    are its own. Close with close() (the `house` fixture does)."""

    TIME_MODULES = (records_mod, health_mod, recycling_mod, views_mod, shutdown_mod, loop_mod,
                    processes_mod)

    def __init__(self, *cfgs, main: hconfig.MainConfig | None = None,
                 clock: Clock | None = None):
        self.clock = clock or Clock()
        self._stack = ExitStack()
        for mod in self.TIME_MODULES:
            self._stack.enter_context(mock.patch.object(mod, "time", self.clock))
        self.main = main or main_config()
        self.config_path = self.main.path
        def seams(registry, reactor):
            placement, connections = FakePlacement(), FakeConnections(registry)
            processes = FakeProcesses(registry, reactor, placement, connections, self.clock)
            return placement, connections, processes, FakeFrontEnds(registry, processes)

        sup = self.sup = Supervisor(self.config_path, self.main, seams=seams)
        sup.notify = Notifier("")          # not under systemd: sends nothing
        for name in ("registry", "reactor", "placement", "connections", "processes",
                     "frontends", "sizing", "health", "recycling", "views", "shutdown",
                     "pools", "commands"):
            setattr(self, name, getattr(sup, name))
        self.processes.start_zygote()
        self.processes.take()
        for cfg in cfgs:
            self.add(cfg)

    # ------------------------------------------------------------ driving
    def add(self, cfg):
        """pools.add, then the events it caused routed."""
        pool = self.pools.add(cfg.name, cfg)
        self.route()
        return pool

    def pool(self, name: str = "a"):
        return self.registry.pools[name]

    def workers(self, name: str = "a", state: WorkerState | None = None) -> list[Worker]:
        return [w for _, w in sorted(self.pool(name).workers.items())
                if state is None or w.state == state]

    def route(self) -> None:
        self.sup.route()

    def tick(self, advance: float = 0.0) -> bool:
        """Advances the clock, then one turn of the real tick (it routes)."""
        self.clock.advance(advance)
        return self.sup._tick(self.clock.monotonic())

    def up(self, worker: Worker) -> Worker:
        """The worker gets its pid and becomes ready; events routed."""
        self.processes.up(worker)
        self.route()
        return worker

    def exit(self, worker: Worker, code: int = 0, **kw) -> tuple[str, bool]:
        verdict = self.processes.exit(worker, code, **kw)
        self.route()
        return verdict

    def post(self, event) -> None:
        self.reactor.post(event)
        self.route()

    def reload(self, pools: dict, broken: dict | None = None, main=None) -> None:
        """SIGHUP with these pools ({name: PoolConfig}) and broken files ({name:
        [ConfigError]}): the real Supervisor.reload, the loaders replaced."""
        new_main = main or self.registry.main
        bad = {name: as_broken(name, errors) for name, errors in (broken or {}).items()}
        with mock.patch.object(hconfig, "load_main", lambda path: new_main), \
                mock.patch.object(hconfig, "load_pool_files", lambda m, cache=None: (dict(pools), bad)):
            self.sup.reload()

    def calls(self) -> list[tuple]:
        return self.processes.take()

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        self.processes.close()
        for pool in self.registry.every_pool():
            for w in list(pool.workers.values()):
                w.close()
            pool.close()
        self.registry.pools.clear()
        self.registry.retired.clear()
        self.reactor.close()
        self._stack.close()


class LogCapture:
    """Every log record: (priority, event, message, fields). Install with
    monkeypatch.setattr(hostd.log, "emit", capture) — every log.info/notice/...
    goes through emit."""

    def __init__(self):
        self.records: list[tuple[int, str, str, dict]] = []

    def __call__(self, priority, event, message="", **fields):
        self.records.append((priority, event, message, fields))

    def events(self, name: str) -> list[dict]:
        return [dict(fields, MESSAGE=msg) for _p, ev, msg, fields in self.records if ev == name]


try:
    import pytest
except ImportError:   # pragma: no cover
    pytest = None

if pytest is not None:
    @pytest.fixture
    def make_house():
        """A House builder; every house made is closed after the test."""
        made: list[House] = []

        def make(*cfgs, **kw) -> House:
            house = House(*cfgs, **kw)
            made.append(house)
            return house
        yield make
        for house in made:
            house.close()

    @pytest.fixture
    def logs(monkeypatch) -> LogCapture:
        capture = LogCapture()
        monkeypatch.setattr(log, "emit", capture)
        return capture


def as_broken(name: str, errors, bindings=()) -> "hconfig.BrokenPool":
    """A broken pool file as hconfig.load_pool_files returns it."""
    from pathlib import Path
    return hconfig.BrokenPool(name, Path(f"/x/{name}.toml"), tuple(errors), tuple(bindings))
