"""Pool and worker lifecycles as data: states, the transitions allowed between them,
what triggers each one (h11's EVENT_TRIGGERED_TRANSITIONS), and guarded objects that
refuse any other transition and log each one with its reason.

Rule: everything that decides a pool's or a worker's next state lives here or in
hostd.supervisor.policy. The supervisor's rooms say what happened (`life.on(event,
reason)`); these tables say which state follows.

No I/O here beyond the log line, so tests drive every transition without processes
(supervisor's states.py is the model).
"""
from __future__ import annotations

import collections
import enum
from typing import Callable

from hostd import log


class PoolState(str, enum.Enum):
    STARTING = "starting"   # queue and routes being put in place
    STARTED = "started"     # taking requests (workers start on demand or are running)
    STOPPING = "stopping"   # routes withdrawn, workers draining
    STOPPED = "stopped"     # no workers; requests answered 503 (or reset)
    FAILED = "failed"       # broken config or rapid-fail protection; requests answered 503


class WorkerState(str, enum.Enum):
    SPAWNING = "spawning"   # asked the zygote for a process; no pid yet
    STARTING = "starting"   # process exists, importing the app
    READY = "ready"         # taking connections from the pool queue
    DRAINING = "draining"   # no new work; finishing, handing idle connections back
    STOPPING = "stopping"   # being killed
    EXITED = "exited"       # reaped
    ORPHANED = "orphaned"   # kept alive for debugging, out of the queue


P, W = PoolState, WorkerState

POOL_TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    P.STARTING: frozenset({P.STARTED, P.FAILED, P.STOPPING}),
    P.STARTED: frozenset({P.STOPPING, P.FAILED}),
    P.STOPPING: frozenset({P.STOPPED, P.FAILED}),
    P.STOPPED: frozenset({P.STARTING}),
    P.FAILED: frozenset({P.STARTING, P.STOPPING, P.STOPPED}),
}

WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    W.SPAWNING: frozenset({W.STARTING, W.EXITED}),
    W.STARTING: frozenset({W.READY, W.DRAINING, W.STOPPING, W.EXITED}),
    W.READY: frozenset({W.DRAINING, W.STOPPING, W.EXITED, W.ORPHANED}),
    W.DRAINING: frozenset({W.STOPPING, W.EXITED}),
    W.STOPPING: frozenset({W.EXITED}),
    W.ORPHANED: frozenset({W.STOPPING, W.EXITED}),
    W.EXITED: frozenset(),
}

#: what moves a worker: (state, event) -> next state
WORKER_EVENTS: dict[tuple[WorkerState, str], WorkerState] = {
    (W.SPAWNING, "spawned"): W.STARTING,      # the zygote named its pid
    (W.SPAWNING, "spawn_failed"): W.EXITED,   # the zygote could not fork it, or died
    (W.STARTING, "ready"): W.READY,           # READY: the app is loaded
    (W.STARTING, "kill"): W.STOPPING,         # drained while starting, startup_limit, hostctl
    (W.READY, "drain"): W.DRAINING,           # recycle, idle_timeout, reload, stop, pool stop
    (W.READY, "kill"): W.STOPPING,            # unhealthy_action kill, cpu_action kill, hostctl
    (W.READY, "orphan"): W.ORPHANED,          # unhealthy with [health] orphan
    (W.DRAINING, "kill"): W.STOPPING,         # shutdown_limit passed
    (W.ORPHANED, "kill"): W.STOPPING,         # hostctl orphan kill, drained (it hangs)
    **{(s, "reaped"): W.EXITED for s in (W.STARTING, W.READY, W.DRAINING, W.STOPPING,
                                          W.ORPHANED)},
}

#: what moves a pool: (state, event) -> next state
POOL_EVENTS: dict[tuple[PoolState, str], PoolState] = {
    (P.STARTING, "worker_ready"): P.STARTED,  # its first worker is ready
    (P.STARTING, "on_demand"): P.STARTED,     # on_demand: the first request starts a worker
    **{(s, "fail"): P.FAILED for s in (P.STARTING, P.STARTED, P.STOPPING)},   # rapid-fail, config
    **{(s, "stop"): P.STOPPING for s in (P.STARTING, P.STARTED, P.FAILED)},   # hostctl, reload, SIGTERM
    (P.STOPPING, "stopped"): P.STOPPED,       # its last worker exited
    (P.FAILED, "stopped"): P.STOPPED,         # retired while failed
    (P.STOPPED, "start"): P.STARTING,         # hostctl pool start
    (P.FAILED, "start"): P.STARTING,
}

#: worker states in which a process exists or is about to (counts toward `processes`)
WORKER_ALIVE = frozenset({W.SPAWNING, W.STARTING, W.READY})


class IllegalTransition(Exception):
    """A transition the table does not allow; carries .subject, .old, .new."""

    def __init__(self, subject: str, old, new, event: str | None = None):
        what = f"{old.value} -> {new.value}" if new is not None else f"{event!r} in {old.value}"
        super().__init__(f"{subject}: illegal transition {what}")
        self.subject, self.old, self.new, self.event = subject, old, new, event


class Lifecycle:
    """A guarded state holder.

    Takes: the transition table, the initial state, a subject for log lines (e.g.
    "pool alpha"), log fields, and an optional observer called as
    observer(old, new, reason) after each transition.
    """

    def __init__(self, table: dict, initial, subject: str, fields: dict | None = None,
                 observer: Callable | None = None, event: str = "state",
                 events: dict | None = None):
        self.table = table
        self.events = events or {}
        self.state = initial
        self.subject = subject
        self.fields = fields or {}
        self.observer = observer
        self.event = event
        self.history: collections.deque = collections.deque(maxlen=16)

    def can(self, new) -> bool:
        """Returns whether `new` is reachable from the current state."""
        return new in self.table[self.state]

    def on(self, event: str, reason: str):
        """Takes the transition `event` triggers from the current state (the *_EVENTS
        table given at construction). Returns the new state.
        Raises IllegalTransition (state unchanged) when the event means nothing here."""
        new = self.events.get((self.state, event))
        if new is None:
            raise IllegalTransition(self.subject, self.state, None, event)
        self.to(new, reason)
        return new

    def triggers(self, event: str) -> bool:
        """Whether `event` moves the current state."""
        return (self.state, event) in self.events

    def to(self, new, reason: str) -> None:
        """Moves to `new`, logging old -> new and the reason.

        Raises IllegalTransition (state unchanged) when the table forbids it.
        """
        old = self.state
        if new not in self.table[old]:
            raise IllegalTransition(self.subject, old, new)
        self.state = new
        self.history.append((old, new, reason))
        log.info(self.event, f"{self.subject}: {old.value} -> {new.value}",
                 STATE=new.value, OLD_STATE=old.value, REASON=reason, **self.fields)
        if self.observer is not None:
            self.observer(old, new, reason)


def pool_lifecycle(name: str, observer: Callable | None = None) -> Lifecycle:
    """Returns the lifecycle of a new pool, in STARTING."""
    return Lifecycle(POOL_TRANSITIONS, P.STARTING, f"pool {name}", {"POOL": name},
                     observer, event="pool_state", events=POOL_EVENTS)


def worker_lifecycle(pool: str, worker_id: int, observer: Callable | None = None) -> Lifecycle:
    """Returns the lifecycle of a new worker, in SPAWNING."""
    return Lifecycle(WORKER_TRANSITIONS, W.SPAWNING, f"worker {pool}#{worker_id}",
                     {"POOL": pool, "WORKER_ID": worker_id}, observer, event="worker_state",
                     events=WORKER_EVENTS)


class RapidFail:
    """Counts failures in a sliding window; trips at `max_failures` within `interval` s.

    IIS rapid-fail protection: crashes, startup failures and health kills all count.
    """

    def __init__(self, max_failures: int = 5, interval: float = 300.0):
        self.max_failures = max_failures
        self.interval = interval
        self._times: collections.deque[float] = collections.deque()

    def record(self, now: float) -> bool:
        """Records a failure at `now`; returns True when the pool must be stopped."""
        self._times.append(now)
        while self._times and now - self._times[0] > self.interval:
            self._times.popleft()
        return self.max_failures > 0 and len(self._times) >= self.max_failures

    def count(self, now: float) -> int:
        while self._times and now - self._times[0] > self.interval:
            self._times.popleft()
        return len(self._times)

    def reset(self) -> None:
        self._times.clear()
