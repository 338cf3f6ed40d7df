"""The ASGI worker (interface = "asgi"): one asyncio event loop per worker process
(uvloop when it can be imported, asyncio's own otherwise) that pulls client
connections from the pool's queue -- the same queue, handoff, reroute, slots and
counters as the WSGI worker (workers/runtime.py) -- and serves the pool's ASGI 3.0
application on them: `http` (workers/asgi_http.py), `websocket`
(workers/asgi_ws.py, framing by the websockets library's sans-I/O Protocol) and `lifespan` (here).

Threads and owners:
- the loop thread owns every connection, the app's coroutines and the queue;
- the control thread (workers/control.py, shared with WSGI) answers pings: "stuck"
  means the loop has not run its heartbeat for ping_timeout (a sync call blocking
  it), measured from that thread;
- the queue, the memory fence and the wake eventfd sit in a small epoll of our own
  (EPOLLEXCLUSIVE on the queue, as the WSGI worker), whose descriptor the event loop
  watches: the control thread may take the queue out of it (ORPHAN) without the loop.

Entry point: `run_asgi_worker`, called by workers.runtime.run_worker for an ASGI pool.
"""
from __future__ import annotations

import asyncio
import mmap
import os
import select
import signal
import socket
import time
import traceback
from collections import deque

from hostd import log, protocol
from hostd.accesslog import AccessLog
from hostd.router import Router, decode_path, normalise_host, split_target
from kernel import proc
from kernel.fdpass import recv_into_with_fds, send_with_fds

from .control import ControlChannel
from .http import configure as configure_limits

_SB = protocol.Scoreboard
_REQUESTS, _ACTIVE, _CONNECTIONS, _LAST = _SB.REQUESTS, _SB.ACTIVE, _SB.CONNECTIONS, \
    _SB.LAST_ACTIVITY
BUSY_TOTAL, BUSY_SINCE = _SB.BUSY_TOTAL, _SB.BUSY_SINCE
_ONE = (1).to_bytes(8, "little")
_AF_INET, _STREAM = socket.AF_INET, socket.SOCK_STREAM
_QUEUE_EVENTS = select.EPOLLIN | select.EPOLLEXCLUSIVE
_IN = select.EPOLLIN

#: how often the loop stamps its heartbeat (the control thread's "stuck" reads it)
HEARTBEAT = 0.25
#: a heartbeat window in which the loop thread ran or waited for a CPU this share of
#: the time counts as time at full capacity (the scoreboard's busy time, what the web
#: garden grows and sheds on: an event loop saturates its CPU long before it reaches
#: max_concurrency)
LOOP_SATURATED = 0.9
#: how long a reroute send may wait for the front ends to make room
REROUTE_TIMEOUT = 5.0
#: draining: open WebSockets are closed with 1001 this long before shutdown_limit, so
#: the close handshake, lifespan shutdown and the exit fit before the supervisor kills
WS_CLOSE_BEFORE = 1.0
#: ... and the peers get this long to answer the close frame
WS_CLOSE_WAIT = 0.3
#: hostd stops (not a recycle): WebSockets and TLS connections get this long
STOP_GRACE = 1.5
#: a draining worker's TLS HTTP connections (as workers/runtime.py's TLS_*): served
#: until shutdown_limit - TLS_CLOSE_BEFORE; the last TLS_CLOSE_PHASE of that, responses
#: say Connection: close and those idle TLS_IDLE_CLOSE are closed
TLS_CLOSE_BEFORE = 5.0
TLS_CLOSE_PHASE = 2.0
TLS_IDLE_CLOSE = 0.5
#: lifespan's ASGI versions
ASGI = {"version": "3.0", "spec_version": "2.3"}


class StartupFailed(Exception):
    """Lifespan startup failed (or the app raised before completing it with
    lifespan = "on"): a startup failure, counted for rapid-fail."""


def choose_loop(kind: str):
    """Returns (a new event loop, its name). kind: "auto" (uvloop when importable, from
    the pool's virtualenv or hostd's), "uvloop" (ImportError when it is not there) or
    "asyncio"."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ImportError("event_loop = \"uvloop\" but uvloop cannot be imported "
                                  "(install it into the pool's virtualenv or hostd's)") from None
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def raise_nofile(want: int) -> int:
    """An ASGI worker holds one descriptor per connection, thousands of idle WebSockets
    among them: its soft RLIMIT_NOFILE (often 1024) goes up towards the hard limit, to
    max_concurrency plus room for the app's own files. Returns the soft limit now."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want + 1024
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


class AsgiWorker(ControlChannel):
    """An ASGI pool's worker (see the module docstring)."""

    def __init__(self, spec: dict, ctl: socket.socket, queue: socket.socket, sem_fd: int,
                 reroute: socket.socket, scoreboard: protocol.Scoreboard, app,
                 tls_context=None):
        ws = protocol.WorkerSpec.from_spec(spec)
        self.pool = ws.pool
        self.worker_id = ws.worker_id
        self.max_header_bytes = ws.max_header_bytes
        self.keepalive_timeout = ws.keepalive_timeout
        configure_limits(self, ws, spec.get("conn_sems") or [])
        cfg = ws.config             # (a hand-built spec may leave keys out: defaults)
        self.max_concurrency = int(cfg.get("max_concurrency") or 10000)
        self.threads = 1                       # ControlChannel's view: one loop
        self.event_loop_kind = cfg.get("event_loop") or "auto"
        self.lifespan_mode = cfg.get("lifespan") or "auto"
        self.ws_max_size = int(cfg.get("websocket_max_size") or (16 << 20))
        health = ws.health()
        self.ping_timeout = health.ping_timeout
        self.request_timeout = health.request_timeout
        self.shutdown_limit = health.shutdown_limit
        self.startup_limit = health.startup_limit
        hcfg = cfg.get("health") or {}
        self.ws_ping_interval = float(hcfg.get("websocket_ping_interval", 20.0))
        self.ws_ping_timeout = float(hcfg.get("websocket_ping_timeout", 20.0))
        self.app = app
        self.ctl = ctl
        self.queue = queue
        self.qbuf = mmap.mmap(-1, protocol.MAX_HANDOFF_BYTES)
        self.qview = memoryview(self.qbuf)
        self.sem_fd = sem_fd
        self.reroute = reroute
        self.board = scoreboard
        self.pid = spec.get("host_pid") or os.getpid()
        self.ns_init = os.getpid() == 1
        self.access = AccessLog(ws.access_log, self.pool, self.pid,
                                spec.get("access_log_fd", -1)) if ws.access_log else None
        self.router = Router.from_table(ws.routes)
        self.route_cache: dict = {}
        self.tls_context = tls_context
        self.tls_ports = frozenset(ws.tls_ports) if tls_context is not None else frozenset()
        self.tls_counts = [0] * len(_SB.TLS_FIELDS)
        self.tls_closing = False
        self.ws_counts = [0] * len(_SB.WS_FIELDS)   # open, messages, upgraded
        self.binding_index = {text: i for i, text in
                              enumerate(ws.pool_value("bindings")[:_SB.MAX_BINDINGS])}
        self.counts = [0] * (_SB.COUNT_FIELDS * max(len(self.binding_index), 1))
        self.bytes_in = 0
        self.reported_slow: set = set()
        #: what runs now: {cycle or websocket: itself}; read by the control thread
        #: (live_requests, request_timeout, the pong's busy count)
        self.busy: dict = {}
        self.ctl_events: deque = deque()
        self.orphaned = False
        self.conns: set = set()                # every HttpProtocol we hold
        self.waiting: deque = deque()          # connections paused at max_concurrency
        self.ep = select.epoll()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.queue_registered = False
        self.draining = False
        self.drain_began = 0.0
        self.drain_reason = ""
        self.fenced = False
        self.fence_fd = -1
        self.shed_left = 0
        self.shed_at = 0.0
        self.exit_code = protocol.EXIT_OK
        self.stop_signal = False
        self.ctl_open = True
        self.now = time.monotonic()
        self.beat = self.now                   # the loop's heartbeat (stuck)
        self.served = 0
        self.running = 0                       # requests + WebSockets in flight
        self.last_activity = self.now
        self.busy_total = 0.0
        self.loop_load = None                  # LoopLoad of the loop thread (_main)
        self.bd = scoreboard.doubles()
        self.bq = scoreboard.quads()
        self.loop = None
        self.loop_name = ""
        self.done = None                       # future: the drain is over
        self.lifespan = None                   # Lifespan, when the app speaks it
        self.state: dict = {}                  # lifespan state, copied into each scope
        self.base_scope = {"asgi": {"version": "3.0", "spec_version": "2.3"},
                           "scheme": "http"}
        self.base_scope["extensions"] = {}

    # --- scoreboard and counters ----------------------------------------------------
    def _board(self) -> None:
        self.board.write(self.served, self.running, len(self.conns), self.last_activity,
                         self.pid)
        self.board.write_counts(self.bytes_in, self.counts)
        self.board.write_ws(self.ws_counts)
        if self.tls_context is not None:
            self.board.write_tls(self.tls_counts)

    def request_begun(self, item) -> None:
        """A request or a WebSocket starts running (item: its cycle)."""
        self.running += 1
        self.busy[item] = item
        if self.running >= self.max_concurrency:
            self.bd[BUSY_SINCE] = self.now
            self._queue_off()
        bq = self.bq
        bq[_ACTIVE] = self.running

    def request_ended(self, item) -> None:
        """A request or a WebSocket is over (its response sent or the peer gone)."""
        self.busy.pop(item, None)
        self.running -= 1
        if self.running + 1 >= self.max_concurrency:
            bd = self.bd
            if bd[BUSY_SINCE]:
                self.busy_total += time.monotonic() - bd[BUSY_SINCE]
                bd[BUSY_TOTAL] = self.busy_total
                bd[BUSY_SINCE] = 0.0
        self.served += 1
        self.last_activity = now = time.monotonic()
        bq = self.bq
        bq[_REQUESTS] = self.served
        bq[_ACTIVE] = self.running
        self.bd[_LAST] = now
        if self.running < self.max_concurrency:
            waiting = self.waiting
            while waiting and self.running < self.max_concurrency:
                waiting.popleft().resume_after_limit()
            if not self.draining and not self.queue_registered:
                self._queue_on()

    def resolve(self, host, port, url, key=None):
        """Route cache miss: (route, scope update or None, counter offset). The update
        is (root_path, path, raw_path, query_string, server name or None): the
        binding's prefix is the root_path; path keeps it (ASGI: the full path)."""
        authority, raw_path, raw_query = split_target(url)
        path = decode_path(raw_path)
        route = self.router.route(authority if authority is not None else host, port, path)
        if route is None or route.pool != self.pool:
            hit = (route, None, 0)
        else:
            prefix = route.binding.prefix
            if prefix == "/":
                prefix = ""
            hit = (route, (prefix, path, raw_path, raw_query,
                           authority or normalise_host(host) or None),
                   self.binding_index.get(route.binding.text, 0) * _SB.COUNT_FIELDS)
        cache = self.route_cache
        if len(cache) >= 4096:
            cache.clear()
        cache[key if key is not None else (host, url, port)] = hit
        return hit

    # --- connection slots and handoff -----------------------------------------------
    def release_slots(self, handed: bool) -> None:
        """A connection is gone: its pool slot always, its global one unless the front
        end took the connection back (as workers/http.py Connection.close)."""
        if self.pool_csem >= 0:
            os.write(self.pool_csem, _ONE)
        if not handed:
            if self.csem >= 0:
                os.write(self.csem, _ONE)
            elif self.released >= 0:
                self.released += 1
                self.board.write_released(self.released)

    def reroute_send(self, fd: int, data: bytes) -> bool:
        """Sends a connection (fd + bytes) to the front ends. False when it can't."""
        deadline = None
        while True:
            try:
                send_with_fds(self.reroute, data, [fd], socket.MSG_DONTWAIT)
                return True
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + REROUTE_TIMEOUT
                if now >= deadline:
                    log.warning("reroute_full", "front ends did not take a connection",
                                POOL=self.pool)
                    return False
                p = select.poll()
                p.register(self.reroute.fileno(), select.POLLOUT)
                p.poll((deadline - now) * 1000.0)
            except OSError as exc:
                log.warning("reroute_failed", str(exc), POOL=self.pool)
                return False

    # --- the queue ------------------------------------------------------------------
    def _queue_on(self) -> None:
        if self.queue is not None and not self.orphaned and not self.queue_registered:
            self.ep.register(self.queue.fileno(), _QUEUE_EVENTS)
            self.queue_registered = True

    def _queue_off(self) -> None:
        if self.queue_registered:
            self.queue_registered = False
            try:
                self.ep.unregister(self.queue.fileno())
            except OSError:
                pass

    def _on_epoll(self) -> None:
        """Loop thread: our epoll is readable (the queue, the wake eventfd, the fence)."""
        self.now = time.monotonic()
        qfd = self.queue.fileno() if self.queue is not None else -2
        for fd, _ev in self.ep.poll(0):
            if fd == qfd:
                if self.queue_registered:
                    for _ in range(16):            # a burst, not one per loop turn
                        if not self._take() or not self.queue_registered:
                            break
            elif fd == self.wake_fd:
                try:
                    os.eventfd_read(self.wake_fd)
                except BlockingIOError:
                    pass
                if self.ctl_events:
                    self._on_ctl_events()
                if self.stop_signal and (self.fenced or not self.draining):
                    self.drain_reason = protocol.DrainReason.HOSTD_STOPPING
                    self.begin_drain(protocol.EXIT_OK)
            elif fd == self.fence_fd:
                self._fence()

    def _take(self) -> bool:
        """One connection from the pool queue. Returns False when there was none."""
        try:
            n, fds = recv_into_with_fds(self.queue, self.qbuf, socket.MSG_DONTWAIT, maxfds=1)
        except BlockingIOError:
            return False
        except RuntimeError as exc:
            os.write(self.sem_fd, _ONE)
            log.error("queue_truncated", str(exc), POOL=self.pool)
            return True
        except OSError as exc:
            log.error("queue_error", str(exc), POOL=self.pool)
            self._queue_off()
            self.queue = None
            return False
        data = self.qview[:n].tobytes() if n else b""
        if not fds:
            if not data:
                self._queue_off()
                self.queue = None
            return False
        os.write(self.sem_fd, _ONE)
        try:
            sock = socket.socket(_AF_INET, _STREAM, 0, fds[0])
        except OSError:
            os.close(fds[0])
            return True
        tls = bool(self.tls_ports) and not data and self._is_tls(sock)
        from .asgi_http import HttpProtocol
        proto = HttpProtocol(self, data, tls)
        self.conns.add(proto)
        self.last_activity = self.now
        self.loop.create_task(self._attach(sock, proto, tls))
        return True

    def _is_tls(self, sock) -> bool:
        try:
            return sock.getsockname()[1] in self.tls_ports
        except OSError:
            return False

    async def _attach(self, sock, proto, tls: bool) -> None:
        try:
            if tls:
                await self.loop.connect_accepted_socket(
                    lambda: proto, sock, ssl=self.tls_context,
                    ssl_handshake_timeout=self.header_timeout)
            else:
                await self.loop.connect_accepted_socket(lambda: proto, sock)
        except (OSError, asyncio.TimeoutError, ConnectionError, Exception) as exc:
            if tls:
                from .tls import F_TIMEOUT, failure_field
                self.tls_counts[F_TIMEOUT if isinstance(exc, (asyncio.TimeoutError,
                                                              TimeoutError))
                                else failure_field(exc)] += 1
            proto.attach_failed()
            try:
                sock.close()
            except OSError:
                pass

    # --- draining -------------------------------------------------------------------
    def begin_drain(self, code: int) -> None:
        """Stop taking connections; idle plain ones go back to the front ends at once,
        busy ones after their response; WebSockets and TLS connections stay (drain_step
        decides their end)."""
        if not self.draining or self.fenced:
            self.exit_code = code
        if not self.draining:
            self.drain_began = time.monotonic()
            self.tls_closing = self.drain_reason == protocol.DrainReason.HOSTD_STOPPING
        self.draining = True
        self.fenced = False
        self._queue_off()
        for conn in list(self.conns):
            conn.drain()

    def shed(self, n: int) -> int:
        """Hands n idle plain keep-alive connections back to the front ends (the
        supervisor asks a saturated worker when another has room). Returns how many."""
        gone = 0
        if self.draining:
            return 0
        for conn in list(self.conns):
            if gone >= n:
                break
            if conn.idle() and not conn.tls and conn.handoff(b""):
                gone += 1
        self.shed_left = 0
        self._board()
        return gone

    def drain_step(self) -> bool:
        """Loop thread, draining, from the tick: ends WebSockets and TLS connections
        when their time is up. Returns True when the worker may exit."""
        now = time.monotonic()
        elapsed = now - self.drain_began
        stopping = self.drain_reason == protocol.DrainReason.HOSTD_STOPPING
        ws_end = STOP_GRACE if stopping else self.shutdown_limit - WS_CLOSE_BEFORE
        tls_keep = STOP_GRACE if stopping else max(1.0, self.shutdown_limit - TLS_CLOSE_BEFORE)
        if elapsed >= tls_keep - TLS_CLOSE_PHASE:
            self.tls_closing = True
        for conn in list(self.conns):
            if conn.websocket is not None:
                if elapsed >= ws_end:
                    conn.websocket.going_away()
                if elapsed >= ws_end + WS_CLOSE_WAIT:
                    conn.abort()
            elif conn.tls:
                if elapsed >= tls_keep or (self.tls_closing and conn.idle()
                                           and now - conn.last >= TLS_IDLE_CLOSE):
                    conn.close()
            elif conn.idle():
                conn.drain()
        return not self.conns and self.running == 0

    # --- ticks ----------------------------------------------------------------------
    def _heartbeat(self) -> None:
        self.beat = now = time.monotonic()
        load = self.loop_load.sample(now) if self.loop_load is not None else None
        if load is not None and load[0] >= LOOP_SATURATED and not self.bd[BUSY_SINCE]:
            self.busy_total += load[1]
            self.bd[BUSY_TOTAL] = self.busy_total
        self.loop.call_later(HEARTBEAT, self._heartbeat)

    def stuck(self, now: float) -> bool:
        """Control thread: the loop has not run its heartbeat for ping_timeout."""
        return now - self.beat > self.ping_timeout

    def _busy_now(self) -> list:
        """Control thread: what runs now (the loop may change busy meanwhile)."""
        for _ in range(5):
            try:
                return list(self.busy)
            except RuntimeError:        # changed size during iteration: again
                continue
        return []

    def _check_request_timeout(self) -> None:
        now = time.monotonic()
        for item in self._busy_now():
            start = item.start
            if item.websocket_kind:
                continue        # a WebSocket is long by nature
            if now - start > self.request_timeout and (id(item), start) not in self.reported_slow:
                self.reported_slow.add((id(item), start))
                self._ctl_send(protocol.unhealthy(
                    f"request_timeout: {item.method} {item.path} running {now - start:.1f}s"))

    def live_requests(self, now: float) -> list[dict]:
        out = []
        for item in self._busy_now():
            host = item.host
            if isinstance(host, bytes):
                host = host.decode("latin-1")
            entry = {"method": item.method, "path": item.full_path(), "host": host,
                     "client": item.client, "elapsed": round(now - item.start, 3)}
            if item.websocket_kind:
                entry["websocket"] = True
                entry["messages"] = item.messages
            out.append(entry)
        return out

    def _sweep(self) -> None:
        """Idle keep-alive past keepalive_timeout, heads past header_timeout, sends
        stuck past send_timeout, WebSocket pings."""
        now = time.monotonic()
        self.now = now
        for conn in list(self.conns):
            conn.sweep(now)

    async def _ticker(self) -> None:
        interval = max(0.05, min(0.5, self.keepalive_timeout / 4, self.header_timeout / 4))
        while True:
            # draining: often enough for drain_step's deadlines and a prompt exit
            await asyncio.sleep(0.05 if self.draining else interval)
            self.now = now = time.monotonic()
            self._sweep()
            self._board()
            if self.access is not None:
                self.access.tick(now)
            if self.ns_init:
                from .runtime import reap_orphans
                reap_orphans()
            if self.draining and self.drain_step() and not self.fenced:
                self.done.set_result(None) if not self.done.done() else None
                return

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = True
        try:
            os.eventfd_write(self.wake_fd, 1)
        except OSError:
            pass

    # --- the main -------------------------------------------------------------------
    def run(self, trace: list) -> int:
        """Starts the loop: lifespan startup, "ready", serve until drained, lifespan
        shutdown. Returns the exit code."""
        raise_nofile(self.max_concurrency)
        loop, self.loop_name = choose_loop(self.event_loop_kind)
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(self._main(trace))
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                pass
            loop.close()

    async def _main(self, trace: list) -> int:
        loop = self.loop
        self.done = loop.create_future()
        self.ctl.setblocking(False)
        self.queue.setblocking(False)
        self.loop_load = LoopLoad.of_this_thread()
        self._heartbeat()
        import threading
        threading.Thread(target=self._control_thread, daemon=True,
                         name=f"{self.pool}#{self.worker_id}-control").start()
        try:
            proc.set_pdeathsig(signal.SIGTERM)
        except OSError:
            pass
        # lifespan startup, before "ready"
        if self.lifespan_mode != "off":
            self.lifespan = Lifespan(self)
            try:
                await self.lifespan.startup()
            except StartupFailed as exc:
                log.error("startup_failed", str(exc), POOL=self.pool)
                self._ctl_send(protocol.startup_failed(str(exc)))
                return protocol.EXIT_APP_LOAD
        trace.append(("worker_init", time.monotonic()))
        try:
            self.ctl.send(protocol.ready(trace))
        except OSError:
            return protocol.EXIT_SUPERVISOR_GONE
        self.ep.register(self.wake_fd, _IN)
        loop.add_reader(self.ep.fileno(), self._on_epoll)
        self._queue_on()
        self._board()
        ticker = loop.create_task(self._ticker())
        if self.stop_signal:
            os.eventfd_write(self.wake_fd, 1)
        await self.done
        ticker.cancel()
        loop.remove_reader(self.ep.fileno())
        if self.lifespan is not None and self.lifespan.started:
            left = self.shutdown_limit - (time.monotonic() - self.drain_began) - 0.2
            await self.lifespan.shutdown(max(0.5, left))
        self.running = 0
        self._board()
        if self.access is not None:
            self.access.close()
        self.loop_load.close()
        return self.exit_code


class LoopLoad:
    """How saturated a thread (the event loop's) is: over each interval between two
    samples, the share of the wall time it ran on a CPU or waited runnable for one
    (/proc/thread-self/schedstat: on-CPU ns, run-queue wait ns). A loop that is never
    idle in its poll is at 1.0 even on a CPU shared with others, where its own CPU time
    alone would look low. Without schedstat, its CPU time (time.thread_time) alone.
    Owns the schedstat descriptor (close)."""

    def __init__(self, read, now: float):
        """read() -> (run_ns, wait_ns) of the thread so far; now: monotonic seconds."""
        self.read = read
        self.last = (now, *read())
        self.fd = -1

    @classmethod
    def of_this_thread(cls) -> LoopLoad:
        """The calling thread's, from schedstat if the kernel has it."""
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return cls(lambda: (time.thread_time_ns(), 0), time.monotonic())

        def read(fd=fd, pread=os.pread):
            run, wait = pread(fd, 64, 0).split()[:2]
            return int(run), int(wait)
        try:
            load = cls(read, time.monotonic())
        except (OSError, ValueError):
            os.close(fd)
            return cls(lambda: (time.thread_time_ns(), 0), time.monotonic())
        load.fd = fd
        return load

    def sample(self, now: float) -> tuple[float, float] | None:
        """Takes monotonic now. Returns (share 0..1, interval seconds) since the last
        sample, or None for an empty interval or a failed read."""
        then, run0, wait0 = self.last
        wall = now - then
        if wall <= 0:
            return None
        try:
            run, wait = self.read()
        except (OSError, ValueError):
            return None
        self.last = (now, run, wait)
        return min(1.0, (run - run0 + wait - wait0) / 1e9 / wall), wall

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Lifespan:
    """The app's lifespan scope: startup before "ready", shutdown at the end of the
    drain. An app that raises before answering startup (lifespan = "auto") has no
    lifespan support: fine (Django's get_asgi_application raises for it)."""

    def __init__(self, worker: AsgiWorker):
        self.worker = worker
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.answers: asyncio.Queue = asyncio.Queue()
        self.task = None
        self.started = False
        self.unsupported = False

    async def receive(self) -> dict:
        return await self.inbox.get()

    async def send(self, message: dict) -> None:
        t = message.get("type")
        if t not in ("lifespan.startup.complete", "lifespan.startup.failed",
                     "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            raise RuntimeError(f"lifespan: unexpected message type {t!r}")
        await self.answers.put(message)

    async def _run(self) -> None:
        w = self.worker
        scope = {"type": "lifespan", "asgi": dict(ASGI), "state": w.state}
        try:
            await w.app(scope, self.receive, self.send)
        except BaseException as exc:
            await self.answers.put({"type": "_raised", "exc": exc,
                                    "tb": traceback.format_exc()})
        else:
            await self.answers.put({"type": "_returned"})

    async def startup(self) -> None:
        w = self.worker
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        answer = await self.answers.get()
        t = answer["type"]
        if t == "lifespan.startup.complete":
            self.started = True
            return
        if t == "lifespan.startup.failed":
            raise StartupFailed(f"lifespan startup failed: {answer.get('message', '')}")
        if t == "_raised" and w.lifespan_mode == "on":
            raise StartupFailed("lifespan startup raised:\n" + answer["tb"])
        if t == "_returned" and w.lifespan_mode == "on":
            raise StartupFailed("lifespan = \"on\" but the app returned without "
                                "answering lifespan.startup")
        # auto: no lifespan support
        self.unsupported = True
        log.info("lifespan_unsupported", "the app does not support lifespan; going on "
                 "without it", POOL=w.pool)

    async def shutdown(self, timeout: float) -> None:
        w = self.worker
        await self.inbox.put({"type": "lifespan.shutdown"})
        try:
            answer = await asyncio.wait_for(self.answers.get(), timeout)
        except asyncio.TimeoutError:
            log.warning("lifespan_shutdown_timeout",
                        f"lifespan shutdown did not complete within {timeout:.1f}s",
                        POOL=w.pool)
            return
        if answer["type"] == "lifespan.shutdown.failed":
            log.warning("lifespan_shutdown_failed", answer.get("message", ""), POOL=w.pool)
        elif answer["type"] == "_raised":
            log.warning("lifespan_shutdown_failed", answer["tb"], POOL=w.pool)


def run_asgi_worker(spec: dict, ctl, queue, sem_fd, reroute, scoreboard, app,
                    tls_context, trace: list, startup_failed) -> int:
    """workers.runtime.run_worker's ASGI branch: app is loaded and checked; builds the
    worker and runs it. startup_failed(event, code) logs the current exception."""
    try:
        worker = AsgiWorker(spec, ctl, queue, sem_fd, reroute, scoreboard, app,
                            tls_context)
    except BaseException:
        return startup_failed("worker_boot_failed", protocol.EXIT_WORKER_BOOT)
    try:
        signal.signal(signal.SIGTERM, worker._on_signal)
        signal.signal(signal.SIGUSR1, lambda *_: worker.access is not None and
                      setattr(worker.access, "reopen", True))
    except ValueError:
        pass
    try:
        return worker.run(trace)
    except ImportError:
        return startup_failed("startup_failed", protocol.EXIT_APP_LOAD)
