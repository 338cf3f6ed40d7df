"""What hostd's processes say to each other, in one place.

Channels (all AF_UNIX SOCK_SEQPACKET, so a message is never split or merged):

* **pool queue** — one socketpair per pool, owned by the supervisor. Front ends send to
  its `in` end, the pool's workers receive from its `out` end when they have capacity
  (pull model). A message is one client connection: exactly one descriptor (SCM_RIGHTS)
  and, as payload, every byte already read from it (possibly b""). Nothing else.
* **reroute** — one socketpair for the whole server. Workers send to its `in` end the
  connections that must be routed again (a kept-alive request for another pool's host,
  idle keep-alive connections of a draining worker); front ends receive from its `out`
  end. Same message format as the pool queue.
* **control** — one socketpair per front end and per worker. Messages are JSON objects
  with a "t" (type) key, encoded by `encode`/`decode` below; some carry descriptors.

The queue's length is counted by an eventfd in semaphore mode, initialised to the
pool's queue_length: a front end takes a slot (read) before it enqueues and answers 503
when none is left; a worker gives the slot back (write 1) when it dequeues. The kernel
queue itself only holds ~net.unix.max_dgram_qlen + 1 messages; what does not fit is
parked by the supervisor (see hostd.supervisor), still holding its slot.
"""
from __future__ import annotations

import json
import mmap
import os
import struct

#: largest payload of a queue or reroute message (bytes already read from a client)
MAX_HANDOFF_BYTES = 1 << 18

#: largest control message
MAX_CONTROL_BYTES = 1 << 20


def encode(msg: dict) -> bytes:
    """Serialise one control message. Takes a JSON-able dict with a "t" key."""
    return json.dumps(msg, separators=(",", ":")).encode()


def decode(data: bytes) -> dict:
    """Parse one control message. Raises ValueError when it is not a JSON object with "t"."""
    msg = json.loads(data)
    if not isinstance(msg, dict) or "t" not in msg:
        raise ValueError(f"not a control message: {data[:80]!r}")
    return msg


# --- control message types -------------------------------------------------------
# worker -> supervisor
READY = "ready"                    # app imported, taking connections
STARTUP_FAILED = "startup_failed"  # {"error": traceback text}; the worker then exits EXIT_APP_LOAD
PONG = "pong"                      # {"seq": n, "stuck": bool}
# supervisor -> worker
DRAIN = "drain"                    # stop taking work, finish, hand idle connections back, exit 0
ROUTES = "routes"                  # {"routes": table}: the whole binding table (hostd.router)
SHED = "shed"                      # {"n": k}: hand k idle keep-alive connections back (web garden)
PING = "ping"                      # {"seq": n}
# supervisor -> front end
POOLS = "pools"                    # {"pools": {name: {"state", "lb", "slot"}}, "routes": table}
                                   # + descriptors: each pool's queue `in` end and eventfd, in
                                   #   the order of "fds": [[name, "queue"|"sem"], ...]
STOP = "stop"                      # stop accepting, finish what was read, exit 0
# front end -> supervisor
PARK = "park"                      # {"pool": name} + one descriptor and payload "data" (latin-1):
                                   #   the pool queue was full (EAGAIN); supervisor parks it

# --- exit codes (gunicorn's arbiter names its exits; so do we) ----------------------
EXIT_OK = 0
EXIT_CONFIG = 2          # hostd: the main config is unusable
EXIT_APP_LOAD = 3        # worker: the app could not be imported
EXIT_WORKER_BOOT = 4     # worker: the runtime itself failed before the app was loaded
EXIT_SUPERVISOR_GONE = 5 # worker/front end: the control channel closed


# --- scoreboard -------------------------------------------------------------------
class Scoreboard:
    """A worker's counters in a shared memfd page: the worker writes, the supervisor reads.

    One writer per field set (the worker's loop thread), so no lock is needed; readers
    may see a value one update old, never a torn one (8-byte aligned stores).

    Layout (little-endian): requests served (Q), requests running now (Q), connections
    held (Q), last activity as CLOCK_MONOTONIC seconds (d), worker pid (Q); at offset 40
    and 48 the web garden's saturation signal: seconds spent at full capacity so far (d)
    and since when it has been at full capacity (d, CLOCK_MONOTONIC; 0 = it has room);
    at offset 64, the global connection slots an isolated worker has released (Q: it
    holds no descriptor of the global semaphore, the supervisor gives them back).
    """

    _FMT = struct.Struct("<QQQdQ")
    SIZE = 8192
    #: per-binding counters: requests, responses 1xx..5xx, bytes sent
    COUNT_FIELDS = 7
    _COUNTS_AT = 128
    MAX_BINDINGS = (SIZE - _COUNTS_AT - 8) // (COUNT_FIELDS * 8)

    def __init__(self, fd: int):
        """Takes a memfd (or any file) of at least SIZE bytes; the caller keeps owning fd."""
        self.fd = fd
        self._map = mmap.mmap(fd, self.SIZE)

    @classmethod
    def create(cls) -> "Scoreboard":
        """Returns a new zeroed scoreboard backed by a fresh memfd."""
        fd = os.memfd_create("hostd-scoreboard", os.MFD_CLOEXEC)
        os.ftruncate(fd, cls.SIZE)
        return cls(fd)

    def write(self, requests: int, active: int, connections: int, last_activity: float,
              pid: int) -> None:
        self._FMT.pack_into(self._map, 0, requests, active, connections, last_activity, pid)

    #: indexes in doubles(): busy seconds so far, busy since (0 = not busy now)
    BUSY_TOTAL, BUSY_SINCE = 5, 6

    def doubles(self) -> memoryview:
        """The page as native doubles, for the worker's per-loop busy stores (a store into
        a memoryview costs less than a pack)."""
        return memoryview(self._map).cast("d")

    def busy(self, now: float) -> float:
        """Seconds the worker has spent at full capacity up to `now` (CLOCK_MONOTONIC)."""
        total, since = struct.unpack_from("<dd", self._map, 40)
        return total + (now - since if since else 0.0)

    def read(self) -> dict:
        """Returns {"requests", "active", "connections", "last_activity", "pid"}."""
        r, a, c, t, p = self._FMT.unpack_from(self._map, 0)
        return {"requests": r, "active": a, "connections": c, "last_activity": t, "pid": p}

    def write_counts(self, bytes_in: int, counts: list[int]) -> None:
        """The worker's traffic counters (flushed from its loop's tick, not per request):
        bytes received, then COUNT_FIELDS values per binding of its pool, in the order
        of the pool's `bindings`."""
        n = min(len(counts), self.MAX_BINDINGS * self.COUNT_FIELDS)
        struct.pack_into(f"<Q{n}Q", self._map, self._COUNTS_AT, bytes_in, *counts[:n])

    _RELEASED_AT = 64

    def write_released(self, n: int) -> None:
        """An isolated worker: how many global connection slots it has released so far."""
        struct.pack_into("<Q", self._map, self._RELEASED_AT, n)

    def read_released(self) -> int:
        return struct.unpack_from("<Q", self._map, self._RELEASED_AT)[0]

    def read_counts(self, nbindings: int) -> tuple[int, list[list[int]]]:
        """Returns (bytes received, [[requests, 1xx, 2xx, 3xx, 4xx, 5xx, bytes sent] per
        binding])."""
        nb = min(nbindings, self.MAX_BINDINGS)
        values = struct.unpack_from(f"<Q{nb * self.COUNT_FIELDS}Q", self._map, self._COUNTS_AT)
        f = self.COUNT_FIELDS
        return values[0], [list(values[1 + i * f:1 + (i + 1) * f]) for i in range(nb)]

    def close(self) -> None:
        """Unmaps and closes the descriptor."""
        self._map.close()
        os.close(self.fd)
