"""What hostd's processes say to each other, in one place.

Channels (all AF_UNIX SOCK_SEQPACKET, so a message is never split or merged):

* **pool queue** — one socketpair per pool, owned by the supervisor. Front ends send to
  its `in` end, the pool's workers receive from its `out` end when they have capacity
  (pull model). A message is one client connection: exactly one descriptor (SCM_RIGHTS)
  and, as payload, every byte already read from it (possibly b""). Nothing else.
* **reroute** — one socketpair for the whole server; front ends receive from its `out`
  end the connections that must be routed again (a kept-alive request for another
  pool's host, idle keep-alive connections of a draining or shedding worker). Workers of
  unisolated pools send to its `in` end; an isolated worker sends to its pool's own
  reroute socketpair, which the supervisor reads, checks (a TCP connection to one of
  hostd's ports) and relays to the shared `in` end. Same message format as the pool
  queue.
* **control** — one socketpair per front end and per worker. Messages are JSON objects
  with a "t" key (the kind), encoded by `encode`/`decode` below; some carry descriptors
  (SCM_RIGHTS). The one exception is the front end's PARK frame, which is not JSON
  (`encode_park`/`decode_park`).
* **zygote** — one socketpair between the supervisor and the zygote, JSON messages
  like the control channel's: SPAWN, answered by SPAWNED or SPAWN_FAILED; SPAWN_ZYGOTE
  (a pool's own zygote), answered the same way.
* **pool zygote** — one socketpair between the supervisor and each `preload = true`
  pool's zygote (hostd.zygote.pool_zygote_main), which imported that pool's app once:
  ZYGOTE_READY or STARTUP_FAILED once, then SPAWN answered by SPAWNED (with
  "placing": the worker waits until PLACED says the supervisor put it in its cgroup)
  or SPAWN_FAILED.

The kinds, by direction (their fields: the comments at the constants below; each kind
has a constructor here that returns the encoded message, e.g. `drain(reason)`):

  worker -> supervisor      READY, STARTUP_FAILED, PONG, REQUESTS_REPLY, UNHEALTHY,
                            MEMORY_FENCE
  supervisor -> worker      DRAIN, ROUTES, SHED, PING, REQUESTS, ORPHAN, ACCESS_LOG,
                            MEMORY_FENCE
  supervisor -> front end   POOL_FDS, POOLS, POOL_STATES, STOP
  front end -> supervisor   COUNTERS, and the PARK frame (PARK_TAG)
  supervisor -> zygote      SPAWN, SPAWN_ZYGOTE
  zygote -> supervisor      SPAWNED, SPAWN_FAILED
  supervisor -> pool zygote SPAWN, PLACED
  pool zygote -> supervisor ZYGOTE_READY, STARTUP_FAILED, SPARE, SPAWNED, SPAWN_FAILED

SPAWN's "spec" is a `WorkerSpec` as a dict (`WorkerSpec.to_spec`); the zygote adds keys
of its own to that dict before the worker reads it ("trace", "host_pid",
"access_log_fd", "conn_sems"). A front end's `FrontEndSettings` are handed over across
the fork, never sent. Both take their defaults from hostd.config (the [hostd] keys).

The queue's length is counted by an eventfd in semaphore mode, initialised to the
pool's queue_length: a front end takes a slot (read) before it enqueues and answers 503
when none is left; a worker gives the slot back (write 1) when it dequeues. The kernel
queue itself only holds ~net.unix.max_dgram_qlen + 1 messages; what does not fit is
parked by the supervisor (see hostd.supervisor), still holding its slot.
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

#: largest payload of a queue or reroute message (bytes already read from a client).
#: The descriptor such a message carries is a TCP (or, in tests, AF_UNIX) stream socket
#: that is already O_NONBLOCK: the front end makes it so at accept, and nothing that
#: passes it on changes it; workers rely on that and do not ask the kernel again.
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


# --- control message kinds (every "t" any of hostd's processes sends) ---------------
# worker -> supervisor (its control channel)
READY = "ready"                    # {"trace": [[step, monotonic], ...]}: app imported, taking connections
STARTUP_FAILED = "startup_failed"  # {"error": traceback text}; the worker then exits EXIT_APP_LOAD
PONG = "pong"                      # {"seq": n, "stuck": bool, "busy": threads busy}
REQUESTS_REPLY = "requests_reply"  # {"seq": n, "requests": [{"method", "path", "host", "client", "elapsed"}]}
UNHEALTHY = "unhealthy"            # {"reason": str, "app": bool}: request_timeout, or the app asked
MEMORY_FENCE = "memory_fence"      # {}: passed its memory threshold, holds no work, waits for DRAIN
# supervisor -> worker
DRAIN = "drain"                    # {"reason": str}: stop taking work, finish, hand idle connections back, exit 0
ROUTES = "routes"                  # {"routes": table}: the whole binding table (hostd.router)
SHED = "shed"                      # {"n": k}: hand k idle keep-alive connections back (web garden)
PING = "ping"                      # {"seq": n}
REQUESTS = "requests"              # {"seq": n}: which requests run now (answered by REQUESTS_REPLY)
ORPHAN = "orphan"                  # {}: out of the queue at once, kept alive for debugging
ACCESS_LOG = "access_log"          # {} + one descriptor: the reopened access log (isolated workers)
# MEMORY_FENCE, supervisor -> worker: {} + one descriptor, the kernel's memory notification (v1)
# supervisor -> front end
POOL_FDS = "pool_fds"              # {"names": [pool, ...], "conn_sems": [bool, ...]} + descriptors:
                                   #   per pool its queue `in` end, its queue eventfd and, where
                                   #   conn_sems says so, its max_connections eventfd
POOLS = "pools"                    # {"pools": {name: {"state", "lb", "max_body", "tls", "redirect"}},
                                   #  "routes": table, "tls_default": pool name or ""}
                                   #   tls: the pool has a [tls] table (it takes TLS listeners'
                                   #   connections); redirect: [tls] redirect_http (plain → 308)
POOL_STATES = "pool_states"        # {"pools": {name: {"state", "lb", "max_body", ...}}}: only these
                                   # pools changed (their descriptors and every binding did not)
STOP = "stop"                      # stop accepting, finish what was read, exit 0
# front end -> supervisor
COUNTERS = "counters"              # {"queue_full": {pool: n}, "refused": {name: n}}: rejections
                                   # since the last report (refused: the front end's own, by
                                   # limits.Counters name; absent when none)
# PARK (front end -> supervisor) is not JSON: PARK_TAG + pool name + NUL + the bytes read,
# with one descriptor (the connection): the pool queue was full (EAGAIN); the
# supervisor parks it, still holding its queue slot. encode_park / decode_park.
PARK_TAG = b"P"
# supervisor <-> zygote (the zygote channel)
SPAWN = "spawn"                    # {"id": n, "spec": WorkerSpec} + descriptors [control, queue out,
                                   #   queue eventfd, reroute in, scoreboard memfd, conn eventfds...]
SPAWNED = "spawned"                # {"id": n, "pid": p, "placing": bool (pool zygote only)}
SPAWN_FAILED = "spawn_failed"      # {"id": n, "error": str}
SPAWN_ZYGOTE = "spawn_zygote"      # {"id": n, "spec": WorkerSpec with role "zygote"} + descriptors
                                   #   [the pool zygote's channel]
# supervisor <-> a pool's zygote (its own channel); SPAWN, SPAWNED, SPAWN_FAILED as above
ZYGOTE_READY = "zygote_ready"      # {"trace": [[step, monotonic], ...]}: app imported, heap frozen
SPARE = "spare"                    # {"pid": p}: a worker process forked ahead of time, waiting
                                   #   for its SPAWN (a SPAWNED may name it); reap it if it exits
PLACED = "placed"                  # {"id": n, "error"?: str}: the worker of spawn n is in its
                                   #   cgroup: let it run (with "error": kill it)


def encode_park(pool: str, data: bytes) -> bytes:
    """The PARK frame for a connection of `pool` with `data` already read from it."""
    return PARK_TAG + pool.encode() + b"\x00" + data


def decode_park(frame: bytes) -> tuple[str, bytes] | None:
    """Returns (pool, data) of a PARK frame, or None when `frame` is not one."""
    if frame[:1] != PARK_TAG:
        return None
    name, sep, data = frame[1:].partition(b"\x00")
    if not sep:
        return None
    return name.decode("utf-8", "replace"), data


# --- constructors: one per kind, each returns the encoded message --------------------
def ready(trace: list) -> bytes:
    return encode({"t": READY, "trace": trace})


def startup_failed(error: str) -> bytes:
    return encode({"t": STARTUP_FAILED, "error": error})


def pong(seq, stuck: bool, busy: int) -> bytes:
    return encode({"t": PONG, "seq": seq, "stuck": stuck, "busy": busy})


def requests_reply(seq, requests: list) -> bytes:
    return encode({"t": REQUESTS_REPLY, "seq": seq, "requests": requests})


def unhealthy(reason: str, app: bool = False) -> bytes:
    """app: the app asked (workers.report_unhealthy); not sent when False."""
    msg: dict = {"t": UNHEALTHY, "app": True} if app else {"t": UNHEALTHY}
    msg["reason"] = reason
    return encode(msg)


def memory_fence() -> bytes:
    return encode({"t": MEMORY_FENCE})


class DrainReason:
    """DRAIN reasons a worker acts on."""

    #: hostd itself stops (hostd/supervisor/shutdown.py): a worker's TLS connections,
    #: which cannot be handed back, get only a short grace (workers/runtime.py
    #: Worker._tls_drain); for any other reason (a recycle) they are served on
    HOSTD_STOPPING = "hostd stopping"


def drain(reason: str) -> bytes:
    return encode({"t": DRAIN, "reason": reason})


def routes(table: list) -> bytes:
    return encode({"t": ROUTES, "routes": table})


def shed(n: int) -> bytes:
    return encode({"t": SHED, "n": n})


def ping(seq: int) -> bytes:
    return encode({"t": PING, "seq": seq})


def requests(seq: int) -> bytes:
    return encode({"t": REQUESTS, "seq": seq})


def orphan() -> bytes:
    return encode({"t": ORPHAN})


def access_log() -> bytes:
    return encode({"t": ACCESS_LOG})


def pool_fds(names: list[str], conn_sems: list[bool]) -> bytes:
    return encode({"t": POOL_FDS, "names": names, "conn_sems": conn_sems})


def pools(table: dict, routes: list) -> bytes:
    return encode({"t": POOLS, "pools": table, "routes": routes})


def pool_states(table: dict) -> bytes:
    return encode({"t": POOL_STATES, "pools": table})


def stop() -> bytes:
    return encode({"t": STOP})


def counters(queue_full: dict[str, int], refused: dict[str, int] | None = None) -> bytes:
    """queue_full: per pool, rejections since the last report; refused: the front end's
    own refusals since the last report, by limits.Counters name (header_timeout,
    reject_400, tls_not_tls, ...)."""
    msg = {"t": COUNTERS, "queue_full": queue_full}
    if refused:
        msg["refused"] = refused
    return encode(msg)


def spawn(id: int, spec: "WorkerSpec | Mapping", placing: bool = False) -> bytes:
    """spec: a WorkerSpec, or its dict (WorkerSpec.to_spec). placing (to a pool
    zygote): hold the worker until PLACED."""
    body = spec.to_spec() if isinstance(spec, WorkerSpec) else dict(spec)
    msg = {"t": SPAWN, "id": id, "spec": body}
    if placing:
        msg["placing"] = True
    return encode(msg)


def spawned(id: int, pid: int, placing: bool = False) -> bytes:
    msg = {"t": SPAWNED, "id": id, "pid": pid}
    if placing:
        msg["placing"] = True
    return encode(msg)


def spawn_zygote(id: int, spec: "WorkerSpec") -> bytes:
    return encode({"t": SPAWN_ZYGOTE, "id": id, "spec": spec.to_spec()})


def zygote_ready(trace: list) -> bytes:
    return encode({"t": ZYGOTE_READY, "trace": trace})


def spare(pid: int) -> bytes:
    return encode({"t": SPARE, "pid": pid})


def placed(id: int, error: str | None = None) -> bytes:
    """error: the worker could not be placed (the pool zygote kills it)."""
    msg = {"t": PLACED, "id": id}
    if error:
        msg["error"] = error
    return encode(msg)


def spawn_failed(id: int | None, error: str) -> bytes:
    return encode({"t": SPAWN_FAILED, "id": id, "error": error})


# --- typed settings: the spawn spec and the front end's settings ----------------------
def _config():
    from hostd import config   # not at the top: hostd.config imports this module
    return config


def _hostd_default(key: str):
    """A field whose default is the [hostd] key's default in hostd.config (HOSTD_KEYS:
    what a loaded MainConfig holds when the key is not written)."""
    return field(default_factory=lambda: _config().HOSTD_KEYS[key].default)


class _Spec:
    """to_spec/from_spec of a settings dataclass."""

    def to_spec(self) -> dict:
        """Returns: the fields as a dict (JSON-able for a WorkerSpec)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_spec(cls, spec: Mapping):
        """Takes: a dict made by to_spec, or a partial one (hand-built, in tests); keys
        that are not fields are ignored (the zygote adds some). Missing fields get
        their defaults. Raises TypeError without the required ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class ClientLimits(_Spec):
    """The [hostd] client limits, which the front ends and the workers both get, and
    the global max_connections semaphore."""

    max_header_bytes: int = _hostd_default("max_header_bytes")
    conn_sem: int = -1                   # the supervisor's eventfd (-1: none)
    header_timeout: float = _hostd_default("header_timeout")
    keepalive_timeout: float = _hostd_default("keepalive_timeout")
    send_timeout: float = _hostd_default("send_timeout")
    min_request_bytes_per_second: int = _hostd_default("min_request_bytes_per_second")
    max_body_size: int = _hostd_default("max_body_size")


@dataclass(frozen=True, kw_only=True)
class WorkerSpec(ClientLimits):
    """What a worker is started with (the SPAWN message's "spec"). conn_sem is a
    descriptor number of the supervisor's: a worker uses the semaphores passed to it
    (the "conn_sems" the zygote adds)."""

    pool: str
    worker_id: int = 0
    generation: int = 0
    #: isolated: no descriptor of the global max_connections semaphore; the released
    #: slots are counted in the scoreboard and given back by the supervisor
    global_slots_via_board: bool = False
    cgroup_procs: list[str] = field(default_factory=list)   # cgroup.procs files to join
    isolation: dict | None = None        # what the zygote applies (hostd.isolation)
    access_log: str = _hostd_default("access_log")
    config: dict = field(default_factory=dict)   # PoolConfig.to_spec()
    routes: list = field(default_factory=list)   # the whole binding table (hostd.router)
    #: "worker", or "zygote": a preload pool's own zygote (hostd.zygote.pool_zygote_main)
    role: str = "worker"
    #: the pool's TLS (None: it has no [tls] table): {"pairs": [[certificate, key], ...]
    #: (the files the worker loads while still root: the supervisor's snapshot copies,
    #: hostd/tlsconf.py), "names": [[dns name or wildcard, ...] per pair, from the
    #: certificate], "min_version": "1.2" | "1.3"}
    tls: dict | None = None
    #: the ports of hostd's TLS listeners: a connection to one of them is TLS
    tls_ports: list = field(default_factory=list)

    def pool_value(self, key: str) -> Any:
        """The pool config's `key`; when a (hand-built) config leaves it out, the
        default hostd.config gives it (POOL_KEYS). Raises KeyError for a required key."""
        if key in self.config:
            return self.config[key]
        default = _config().POOL_KEYS[key].default
        if default is _config().REQUIRED:
            raise KeyError(key)
        return default

    def health(self):
        """The pool's [health] table as a hostd.config.Health (its defaults for what
        the config leaves out)."""
        return _config().Health(**self.config.get("health", {}))


@dataclass(frozen=True, kw_only=True)
class FrontEndSettings(ClientLimits):
    """What a front end is started with (handed over across the fork, not sent)."""

    identity: tuple[int, int] | None = None   # (uid, gid) to drop to; None: stay
    supervisor_pid: int | None = None    # exit at once when the parent is not it
    #: the ports of the TLS listeners among those lent to it ([hostd] listen_tls): their
    #: connections' ClientHellos are peeked and routed by SNI, nothing is read
    tls_ports: frozenset[int] = frozenset()


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
    holds no descriptor of the global semaphore, the supervisor gives them back); at
    offset 72, TLS_FIELDS (Q each: a TLS pool's handshakes, versions and failures by
    reason); at offset 144, WS_FIELDS (an ASGI worker's WebSockets); at _COUNTS_AT, bytes received and the per-binding counters.
    """

    _FMT = struct.Struct("<QQQdQ")
    SIZE = 8192
    #: per-binding counters: requests, responses 1xx..5xx, bytes sent
    COUNT_FIELDS = 7
    #: TLS counters (workers/tls.py counts them, the loop's tick stores them): completed
    #: handshakes, of which TLS 1.2 / 1.3; failed handshakes by reason: not done within
    #: header_timeout, peer closed, no common protocol version, the client refused our
    #: certificate (its alert), any other TLS error; requests answered 421 (Host not one
    #: of the connection's pool)
    TLS_FIELDS = ("handshakes", "tls1_2", "tls1_3", "failed_timeout", "failed_closed",
                  "failed_version", "failed_certificate", "failed_protocol", "misdirected")
    _TLS_AT = 72
    #: an ASGI worker's WebSockets (workers/asgi.py): open now, messages so far (both
    #: ways), connections upgraded so far
    WS_FIELDS = ("open", "messages", "upgraded")
    _WS_AT = 144
    _COUNTS_AT = 192
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
    #: indexes in quads() and doubles() of write()'s fields, for per-request stores
    REQUESTS, ACTIVE, CONNECTIONS, LAST_ACTIVITY = 0, 1, 2, 3

    def quads(self) -> memoryview:
        """The page as native unsigned 64-bit ints (little-endian on every host hostd
        runs on, as write() packs them), for the worker's per-request stores."""
        return memoryview(self._map).cast("Q")

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

    def write_tls(self, values: list[int]) -> None:
        """The worker's TLS counters, len(TLS_FIELDS) values in that order."""
        struct.pack_into(f"<{len(self.TLS_FIELDS)}Q", self._map, self._TLS_AT, *values)

    def read_tls(self) -> dict[str, int]:
        """Returns {TLS_FIELDS name: count} (all 0 for a worker without TLS)."""
        values = struct.unpack_from(f"<{len(self.TLS_FIELDS)}Q", self._map, self._TLS_AT)
        return dict(zip(self.TLS_FIELDS, values))

    def write_ws(self, values: list[int]) -> None:
        """An ASGI worker's WebSocket counters, len(WS_FIELDS) values in that order."""
        struct.pack_into(f"<{len(self.WS_FIELDS)}Q", self._map, self._WS_AT, *values)

    def read_ws(self) -> dict[str, int]:
        """Returns {WS_FIELDS name: count} (all 0 for a WSGI worker)."""
        values = struct.unpack_from(f"<{len(self.WS_FIELDS)}Q", self._map, self._WS_AT)
        return dict(zip(self.WS_FIELDS, values))

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
