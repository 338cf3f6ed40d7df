"""Web garden balance, sans-IO: when a pool adds a worker because the ones it has are
saturated, and when a saturated worker gives idle keep-alive connections back so that
their next requests reach a worker with room.

Why: a worker pulls connections from the pool queue only while it has room, so a garden
grows on connections that wait in the queue. Kept-alive connections never wait there:
they stay with the worker that took them first, and a burst of them can all land on one
worker before a second is ready. Without this, `processes = 4` under a keep-alive load
(a reverse proxy's upstream pool, a benchmark) can run on one worker forever.

The supervisor samples each ready worker's scoreboard once a second
(`Scoreboard.busy`: seconds at full capacity) and calls `decide`; it does the I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

#: busy fraction at or above which a worker has no room
SATURATED = 0.9
#: busy fraction at or below which a worker has room for more connections
ROOM = 0.5


@dataclass(frozen=True)
class Sample:
    """One ready worker over the last interval."""
    key: Hashable        # the caller's handle for the worker
    busy: float          # fraction of the interval it spent at full capacity, 0..1
    connections: int     # connections it holds now


@dataclass(frozen=True)
class Decision:
    grow: bool                       # start one more worker ("saturated")
    shed_from: Hashable | None       # the worker that gives connections back
    shed: int                        # how many idle keep-alive connections it gives back


NOTHING = Decision(False, None, 0)


def decide(samples: list[Sample], processes: int, starting: int) -> Decision:
    """Takes the ready workers' samples, the garden's size (`processes`) and how many
    workers are starting now. Returns the decision:

    * grow when every ready worker is saturated, none is starting and the garden has
      room (one worker at a time, like growth on a waiting queue);
    * shed when the busiest worker is saturated, holds at least two connections and
      another ready worker has room: half the difference of their connection counts
      (at least one) goes back to the front ends.

    Raises nothing; an empty list decides nothing."""
    if not samples or processes < 2:
        return NOTHING
    grow = (starting == 0 and len(samples) < processes
            and all(s.busy >= SATURATED for s in samples))
    busiest = max(samples, key=lambda s: (s.busy, s.connections))
    roomy = [s for s in samples if s is not busiest and s.busy <= ROOM]
    if busiest.busy < SATURATED or busiest.connections < 2 or not roomy:
        return Decision(grow, None, 0)
    least = min(roomy, key=lambda s: s.connections)
    return Decision(grow, busiest.key, max(1, (busiest.connections - least.connections) // 2))
