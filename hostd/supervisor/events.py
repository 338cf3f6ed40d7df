"""What the lower rooms report to the loop (they never call up).

A room posts an event on the reactor (`Reactor.post`); the loop takes each one off and
calls its `on_<name>` handler (hostd.supervisor.loop), which hands it to the room above
that owns the decision. Every event is a small frozen record: what happened, to whom.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Event:
    """Base: `name` is the handler's suffix (WorkerExited -> on_worker_exited)."""
    name = "event"


def _event(name: str):
    def deco(cls):
        cls.name = name
        return dataclass(frozen=True)(cls)
    return deco


# --- processes.py: the zygote, workers and other children ---------------------------
@_event("worker_ready")
class WorkerReady(Event):
    """A STARTING worker loaded its app and moved to READY."""
    worker: Any


@_event("worker_exited")
class WorkerExited(Event):
    """A worker was reaped (or never got a process): its verdict, its resources freed."""
    worker: Any
    reason: str
    failed: bool       # counts toward rapid-fail (not when its failure was counted already)


@_event("pong")
class Pong(Event):
    worker: Any
    seq: Any
    stuck: bool


@_event("memory_fence")
class MemoryFence(Event):
    """The worker passed its memory threshold, took no more work, waits for a drain."""
    worker: Any


@_event("worker_unhealthy")
class WorkerUnhealthy(Event):
    """The worker reported itself (request_timeout) or its app asked (app=True)."""
    worker: Any
    reason: str
    app: bool


@_event("requests_reply")
class RequestsReply(Event):
    worker: Any
    seq: Any
    requests: list


@_event("spawn_refused")
class SpawnRefused(Event):
    """A worker could not be given a cgroup: counts as a failure of its pool."""
    worker: Any
    reason: str


@_event("zygote_restarted")
class ZygoteRestarted(Event):
    """The zygote died and a new one runs: pools waiting for a worker check demand."""


@_event("child_exited")
class ChildExited(Event):
    """A child another room asked processes.py to reap (a front end, an orphan action)."""
    pid: int
    status: int
    owner: str


# --- frontends.py ------------------------------------------------------------------
@_event("connection_parked")
class ConnectionParked(Event):
    """A front end found a pool queue full and handed the connection to the supervisor."""
    pool: str
    fd: int
    data: bytes


@_event("queue_full")
class QueueFull(Event):
    """Rejections (queue full) a front end counted since its last report."""
    counts: dict


# --- placement.py ------------------------------------------------------------------
@_event("memory_event")
class MemoryEvent(Event):
    """The kernel's memory events of a worker's cgroup (kernel.memevents HIGH/MAX/OOM)."""
    worker: Any
    kinds: frozenset


# --- health.py ---------------------------------------------------------------------
@_event("rapid_fail")
class RapidFailTripped(Event):
    """Too many failures within rapid_fail_interval: the pool must stop."""
    pool: Any
    reason: str


ALL = [WorkerReady, WorkerExited, Pong, MemoryFence, WorkerUnhealthy, RequestsReply,
       SpawnRefused, ZygoteRestarted, ChildExited, ConnectionParked,
       QueueFull, MemoryEvent, RapidFailTripped]
