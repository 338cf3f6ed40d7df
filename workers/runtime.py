"""The worker process (the IIS w3wp role): one epoll loop that pulls client connections
from its pool's queue, serves the pool's WSGI application on them, keeps them alive,
and hands them back to the front end when they belong elsewhere or when it drains.

Entry point: `run_worker`, called by the zygote in the forked worker process.
"""
from __future__ import annotations

import mmap
import gc
import os
import queue as _queue
import select
import signal
import socket
import threading
import time
import traceback
from collections import deque

from hostd import log, protocol
from hostd.accesslog import AccessLog
from hostd.router import Router, decode_path, normalise_host, split_target
from kernel import proc
from kernel.fdpass import recv_into_with_fds, send_with_fds

from . import h1fast
from .h1fast import parse as _fast_parse
from .app import load_app
from .control import ControlChannel
from .http import Connection, TLSConnection, configure as configure_limits
from .wsgi import ErrorStream, FileWrapper

_SB = protocol.Scoreboard
BUSY_TOTAL, BUSY_SINCE = _SB.BUSY_TOTAL, _SB.BUSY_SINCE
_REQUESTS, _ACTIVE, _CONNECTIONS, _LAST = _SB.REQUESTS, _SB.ACTIVE, _SB.CONNECTIONS, \
    _SB.LAST_ACTIVITY

_IN = select.EPOLLIN
_AF_INET, _STREAM = socket.AF_INET, socket.SOCK_STREAM
_QUEUE_EVENTS = select.EPOLLIN | select.EPOLLEXCLUSIVE
_ONE = (1).to_bytes(8, "little")
#: how long a reroute send may wait for the front ends to make room
REROUTE_TIMEOUT = 5.0
#: a draining worker's TLS connections (Worker._tls_drain): when hostd stops, how long
#: they get to move; for a recycle, they are served until shutdown_limit minus
#: TLS_CLOSE_BEFORE; the last TLS_CLOSE_PHASE of that, responses say Connection: close
#: and connections idle TLS_IDLE_CLOSE are closed
TLS_STOP_GRACE = 2.0
TLS_CLOSE_BEFORE = 5.0
TLS_CLOSE_PHASE = 2.0
TLS_IDLE_CLOSE = 0.5


class Worker(ControlChannel):
    def __init__(self, spec: dict, ctl: socket.socket, queue: socket.socket, sem_fd: int,
                 reroute: socket.socket, scoreboard: protocol.Scoreboard, app,
                 tls_context=None):
        """spec: the spawn spec (WorkerSpec.to_spec) with the zygote's keys added;
        tls_context: the pool's ssl.SSLContext (workers/tls.make_context, loaded by the
        zygote's child while root), None for a pool without [tls]."""
        ws = protocol.WorkerSpec.from_spec(spec)
        self.pool = ws.pool
        self.worker_id = ws.worker_id
        self.max_header_bytes = ws.max_header_bytes
        self.keepalive_timeout = ws.keepalive_timeout
        # client limits (workers/http.py); the zygote added the semaphores we were given
        configure_limits(self, ws, spec.get("conn_sems") or [])
        self.threads = ws.pool_value("threads")
        self.inline = self.threads == 1
        #: connections may take Connection.serve_fast (the C path's whole-request case)
        self.fast = self.inline and h1fast.ENABLED and not self.max_bandwidth
        self.app = app
        self.ctl = ctl
        self.queue = queue
        # reused by every dequeue; an anonymous mapping, so only the pages a handoff
        # fills are ever made (a bytearray is zeroed: 256 KiB private at once)
        self.qbuf = mmap.mmap(-1, protocol.MAX_HANDOFF_BYTES)
        self.qview = memoryview(self.qbuf)
        self.sem_fd = sem_fd
        self.reroute = reroute
        self.board = scoreboard
        # the host's pid: in its own pid namespace a worker's getpid() is 1
        self.pid = spec.get("host_pid") or os.getpid()
        # pid 1 of its own pid namespace (filesystem = "site"): orphans of the app
        # are re-parented to us, so we must reap them (reap_orphans)
        self.ns_init = os.getpid() == 1
        self.access = AccessLog(ws.access_log, self.pool, self.pid,
                                spec.get("access_log_fd", -1)) \
            if ws.access_log else None
        self.router = Router.from_table(ws.routes)
        self.route_cache: dict = {}
        # TLS (workers/tls.py): connections to these ports are TLS; their counters
        # (Scoreboard.TLS_FIELDS); a draining worker's TLS connections (_tls_drain)
        self.tls_context = tls_context
        self.tls_ports = frozenset(ws.tls_ports) if tls_context is not None else frozenset()
        self.tls_counts = [0] * len(protocol.Scoreboard.TLS_FIELDS)
        self.tls_closing = False
        self.drain_began = 0.0
        self.drain_reason = ""
        self.shutdown_limit = ws.health().shutdown_limit
        self.base_env = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": ErrorStream(self.pool),
            "wsgi.multithread": not self.inline,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "SCRIPT_NAME": "",
            "hostd.pool": self.pool,
            "hostd.worker_pid": self.pid,
        }
        health = ws.health()
        self.ping_timeout = health.ping_timeout
        self.request_timeout = health.request_timeout
        #: app thread id -> (start monotonic, environ) of the request it runs now; read
        #: by the control thread for pings (stuck) and request_timeout
        self.busy: dict[int, tuple] = {}
        self.loop_tid = threading.get_ident()   # inline requests run on this thread
        # traffic counters per binding of the pool (protocol.Scoreboard.write_counts):
        # plain list increments per request, flushed to the scoreboard from the tick
        self.binding_index = {text: i for i, text in
                              enumerate(ws.pool_value("bindings")[:protocol.Scoreboard.MAX_BINDINGS])}
        self.counts = [0] * (protocol.Scoreboard.COUNT_FIELDS * max(len(self.binding_index), 1))
        self.bytes_in = 0
        self.count_lock = threading.Lock()
        self.reported_slow: set[int] = set()
        self.ctl_events: deque = deque()   # control messages for the loop thread
        self.orphaned = False
        self.conns: dict[int, Connection] = {}
        self.ep = select.epoll()
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.queue_registered = False
        self.draining = False
        # fenced: draining because the cgroup passed its memory threshold, but held until
        # the supervisor's drain order (it recycles us; an exit of our own would look
        # like a crash to it)
        self.fenced = False
        self.fence_fd = -1
        self.shed_left = 0   # connections still to give back after their next response
        self.shed_at = 0.0   # ... asked then; what is not given back within a second lapses
        self.exit_code = protocol.EXIT_OK
        self.stop_signal = False
        self.ctl_open = True
        self.now = time.monotonic()
        self.served = 0
        self.running = 0
        self.last_activity = self.now
        # saturation (Scoreboard BUSY_*): inline, the time not spent waiting in epoll;
        # with threads, the time all of them were taken
        self.busy_total = 0.0
        self.bd = scoreboard.doubles()
        self.bq = scoreboard.quads()
        # threads > 1
        self.jobs: _queue.SimpleQueue | None = None
        self.done: deque = deque()
        self.pool_threads: list[threading.Thread] = []

    # --- helpers called by connections ------------------------------------------
    def resolve(self, host, port, url):
        """Route cache miss: (route, environ update, counter offset). The update holds
        SCRIPT_NAME, PATH_INFO, QUERY_STRING and SERVER_NAME (when the Host gives one);
        the offset is where the route's binding counts in `counts` (see count)."""
        authority, raw_path, raw_query = split_target(url)
        path = decode_path(raw_path)
        route = self.router.route(authority if authority is not None else host, port, path)
        if route is None or route.pool != self.pool:
            hit = (route, None, 0)
        else:
            prefix = route.binding.prefix
            if prefix == "/":
                prefix = ""
            update = {"SCRIPT_NAME": prefix, "PATH_INFO": path[len(prefix):],
                      "QUERY_STRING": raw_query.decode("latin-1")}
            server_name = authority or normalise_host(host)
            if server_name:
                update["SERVER_NAME"] = server_name
            hit = (route, update,
                   self.binding_index.get(route.binding.text, 0) * _SB.COUNT_FIELDS)
        cache = self.route_cache
        if len(cache) >= 4096:
            cache.clear()
        cache[(host, url, port)] = hit
        return hit

    def request_start(self) -> None:
        """Inline mode: a request is about to run. It is counted now, not after its
        response went out, so a status query right after the response sees it."""
        self.served += 1
        bq = self.bq      # write()'s fields, stored one by one (cheaper than a pack)
        bq[_REQUESTS] = self.served
        bq[_ACTIVE] = 1
        bq[_CONNECTIONS] = len(self.conns)

    def request_done(self) -> None:
        """Inline mode: one request answered; keep the scoreboard current."""
        self.last_activity = self.bd[_LAST] = time.monotonic()
        self.bq[_ACTIVE] = 0

    def _board(self) -> None:
        self.board.write(self.served, self.running, len(self.conns), self.last_activity,
                         self.pid)
        self.board.write_counts(self.bytes_in, self.counts)
        if self.tls_context is not None:
            self.board.write_tls(self.tls_counts)

    def count(self, at: int, status_class: int, sent: int) -> None:
        """One answered request, from a pool thread (threads > 1; an inline worker's
        loop thread counts in Connection._run, being the only one): at is the binding's
        offset in `counts` (resolve), status_class 1-5."""
        c = self.counts
        with self.count_lock:
            c[at] += 1
            c[at + status_class] += 1
            c[at + 6] += sent

    def forget(self, conn: Connection) -> None:
        """A connection closed itself. Pool threads leave the bookkeeping to the loop."""
        if not self.inline and conn.owned:
            return
        if conn.registered:
            conn.registered = False
            try:
                self.ep.unregister(conn.fd)
            except OSError:
                pass
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]

    def drop(self, conn: Connection) -> None:
        """Loop thread: the peer closed or failed; close our side."""
        conn.close()

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

    # --- scheduling ---------------------------------------------------------------
    def dispatch(self, conn: Connection) -> None:
        """Loop thread: conn has requests to answer (or an error to send)."""
        if self.inline:
            if conn.run_pending() and not conn.registered and not conn.closed:
                self.ep.register(conn.fd, _IN)
                conn.registered = True
            return
        if conn.registered:
            conn.registered = False
            self.ep.unregister(conn.fd)
        conn.owned = True
        self.running += 1
        if self.running == self.threads:
            self.bd[BUSY_SINCE] = self.now
        if self.running >= self.threads and self.queue_registered:
            self._queue_off()
        self.last_activity = self.now
        self._board()
        self.jobs.put(conn)

    def _thread_main(self) -> None:
        jobs = self.jobs
        done = self.done
        wake = self.wake_fd
        while True:
            conn = jobs.get()
            if conn is None:
                return
            try:
                conn.run_pending()
            except BaseException:
                log.error("worker_thread_error", traceback.format_exc(), POOL=self.pool)
                try:
                    conn.close()
                except Exception:
                    pass
            done.append(conn)
            os.eventfd_write(wake, 1)

    def _returned(self) -> None:
        """Loop thread: pool threads finished with these connections."""
        done = self.done
        while done:
            conn = done.popleft()
            conn.owned = False
            if self.running == self.threads:
                bd = self.bd
                self.busy_total += self.now - bd[BUSY_SINCE]
                bd[BUSY_TOTAL] = self.busy_total
                bd[BUSY_SINCE] = 0.0
            self.running -= 1
            self.served += conn.nserved
            conn.nserved = 0
            if conn.closed:
                if self.conns.get(conn.fd) is conn:
                    del self.conns[conn.fd]
            elif self.draining and not conn.tls:
                conn.handoff()
            else:
                self.ep.register(conn.fd, _IN)
                conn.registered = True
        self.last_activity = time.monotonic()
        self._board()
        if not self.draining and not self.queue_registered and self.running < self.threads:
            self._queue_on()

    # --- the queue ------------------------------------------------------------------
    def _queue_on(self) -> None:
        if self.queue is not None and not self.orphaned and not self.queue_registered:
            self.ep.register(self.queue.fileno(), _QUEUE_EVENTS)
            self.queue_registered = True

    def _queue_off(self) -> None:
        if self.queue_registered:
            self.queue_registered = False
            self.ep.unregister(self.queue.fileno())

    def _take(self) -> None:
        """One connection from the pool queue (if another worker did not take it)."""
        try:
            n, fds = recv_into_with_fds(self.queue, self.qbuf, socket.MSG_DONTWAIT, maxfds=1)
        except BlockingIOError:
            return
        except RuntimeError as exc:  # truncated: the descriptor was lost, slot still taken
            os.write(self.sem_fd, _ONE)
            log.error("queue_truncated", str(exc), POOL=self.pool)
            return
        except OSError as exc:
            log.error("queue_error", str(exc), POOL=self.pool)
            self._queue_off()
            self.queue = None
            return
        data = self.qview[:n].tobytes() if n else b""
        if not fds:
            if not data:  # every sender closed: the pool is going away
                self._queue_off()
                self.queue = None
            return
        os.write(self.sem_fd, _ONE)
        try:
            # the family given, not looked up (3 syscalls): only recv/send and the
            # address calls use the object, and those go by the kernel's answer
            sock = socket.socket(_AF_INET, _STREAM, 0, fds[0])
        except OSError:
            os.close(fds[0])
            return
        # already O_NONBLOCK (protocol.MAX_HANDOFF_BYTES): Python's own timeout stays
        # "none", so each call is one syscall raising BlockingIOError when it would
        # block, as with setblocking(False); TCP_NODELAY is inherited from the listener
        if self.tls_ports and not data and self._is_tls(sock):
            # from a TLS listener: the front end peeked at the ClientHello and consumed
            # nothing; the handshake runs in this loop (TLSConnection.on_readable)
            conn = TLSConnection(self, sock)
            conn.last = self.last_activity = self.now
            self.conns[conn.fd] = conn
            self.ep.register(conn.fd, _IN)
            conn.registered = True
            return
        conn = Connection(self, sock)
        conn.last = self.last_activity = self.now
        self.conns[conn.fd] = conn
        if data:
            if self.fast:
                # the common first request read whole: answered as on_readable answers
                # a kept-alive one (Connection.serve_fast), no Request record
                self.bytes_in += len(data)
                hit = _fast_parse(data, conn.base_env, conn.max_head, conn.max_url,
                                  self.max_body)
                if hit is not None:
                    conn.serve_fast(hit, data)
                    if conn.closed or conn.registered:   # (dispatch may have registered it)
                        return
                    self.ep.register(conn.fd, _IN)
                    conn.registered = True
                    return
                conn._feed_parser(data)     # declined: httptools (bytes_in counted)
            else:
                conn.feed(data)
        if conn.pending or conn.broken:
            if self.inline:
                if not conn.run_pending() or conn.closed:
                    return
            else:
                self.dispatch(conn)
                return
        self.ep.register(conn.fd, _IN)
        conn.registered = True

    def _is_tls(self, sock: socket.socket) -> bool:
        try:
            return sock.getsockname()[1] in self.tls_ports
        except OSError:
            return False

    def _tls_drain(self) -> bool:
        """Loop thread, draining: what becomes of the TLS connections, which cannot be
        handed back. For a recycle they are served as before (an open connection keeps
        its certificate and its worker) until shutdown_limit is near; then, or at once
        when hostd stops, every response says Connection: close and a connection idle
        for TLS_IDLE_CLOSE is closed (close_notify), so clients move to new connections
        between requests, never in the middle of one. Returns True while some are left
        and there is time."""
        now = self.now
        tls = [c for c in self.conns.values() if c.tls]
        if not tls:
            return False
        stopping = self.drain_reason == protocol.DrainReason.HOSTD_STOPPING
        keep = TLS_STOP_GRACE if stopping else max(1.0, self.shutdown_limit - TLS_CLOSE_BEFORE)
        elapsed = now - self.drain_began
        if elapsed < keep - TLS_CLOSE_PHASE:
            return True
        self.tls_closing = True
        final = elapsed >= keep
        for conn in tls:
            if final or (conn.registered and not conn.owned and conn.cur is None
                         and not conn.pending and now - conn.last >= TLS_IDLE_CLOSE):
                conn.close()
        return not final and any(c.tls and not c.closed for c in self.conns.values())

    def begin_drain(self, code: int) -> None:
        """Stop taking work; hand idle connections back; busy ones follow when done.
        Releases a memory fence's hold: the worker exits once idle."""
        if not self.draining or self.fenced:
            self.exit_code = code
        if not self.draining:
            self.drain_began = time.monotonic()
            # hostd stops: TLS connections are told to go from the next response on
            self.tls_closing = self.drain_reason == protocol.DrainReason.HOSTD_STOPPING
        self.draining = True
        self.fenced = False
        self._queue_off()
        for conn in list(self.conns.values()):
            if not conn.owned:
                conn.handoff()

    def shed(self, n: int) -> int:
        """Loop thread: hands n keep-alive connections back to the front ends, whose next
        requests then go through the pool queue to whichever worker has room (the
        supervisor asks a saturated worker when another one has room). Idle ones go now;
        the rest as they become idle, after their next response. Returns how many went
        now."""
        gone = 0
        if self.draining:
            return gone
        for conn in list(self.conns.values()):
            if gone >= n:
                break
            if conn.tls:
                continue        # a TLS connection stays where its session is
            if conn.registered and not conn.owned and conn.cur is None and not conn.pending:
                conn.handoff()
                gone += conn.handed
        self.shed_left = n - gone
        self.shed_at = self.now
        self._board()
        return gone

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = True
        try:
            os.eventfd_write(self.wake_fd, 1)
        except OSError:
            pass

    # --- the loop -----------------------------------------------------------------------
    def _sweep(self) -> None:
        """Closes idle keep-alive connections past keepalive_timeout, and answers 408 to
        those whose next head was not whole within header_timeout (a slowloris on a
        kept-alive connection: every byte would reset the idle clock)."""
        now = self.now
        limit = now - self.keepalive_timeout
        head_limit = now - self.header_timeout
        for conn in [c for c in self.conns.values() if c.registered]:
            if conn.head_since is not None and conn.head_since < head_limit:
                conn.head_timeout()
            elif conn.last < limit:
                conn.close()

    def run(self) -> int:
        ep = self.ep
        self.ctl.setblocking(False)
        self.queue.setblocking(False)
        ep.register(self.wake_fd, _IN)
        threading.Thread(target=self._control_thread, daemon=True,
                         name=f"{self.pool}#{self.worker_id}-control").start()
        # the supervisor's death was SIGKILL while we booted (hostd/zygote.py); now a
        # drain (SIGTERM), bounded by the control thread's SUPERVISOR_GONE_GRACE
        try:
            proc.set_pdeathsig(signal.SIGTERM)
        except OSError:
            pass
        if not self.inline:
            self.jobs = _queue.SimpleQueue()
            for i in range(self.threads):
                t = threading.Thread(target=self._thread_main, daemon=True,
                                     name=f"{self.pool}#{self.worker_id}-{i}")
                t.start()
                self.pool_threads.append(t)
        self._queue_on()
        self._board()
        conns = self.conns
        wake_fd = self.wake_fd
        queue_fd = self.queue.fileno()
        interval = max(0.05, min(1.0, self.keepalive_timeout / 4, self.header_timeout / 4))
        next_sweep = time.monotonic() + interval
        poll = ep.poll
        monotonic = time.monotonic
        inline = self.inline
        bd = self.bd
        busy_since = now = monotonic()
        while True:
            if inline:   # busy is whatever is not waiting here
                self.busy_total += monotonic() - busy_since
                bd[BUSY_TOTAL] = self.busy_total
                bd[BUSY_SINCE] = 0.0
            # draining with TLS connections left: wake often enough for _tls_drain's steps
            events = poll(0.1 if self.draining and self.tls_ports else interval)
            self.now = now = monotonic()
            if inline:
                bd[BUSY_SINCE] = busy_since = now
            for fd, _ev in events:
                conn = conns.get(fd)
                if conn is not None:
                    if conn.registered:
                        conn.on_readable()
                elif fd == queue_fd:
                    if self.queue_registered:
                        self._take()
                elif fd == wake_fd:
                    try:
                        os.eventfd_read(wake_fd)
                    except BlockingIOError:
                        pass
                    if self.done:
                        self._returned()
                    if self.ctl_events:
                        self._on_ctl_events()
                    if self.stop_signal and (self.fenced or not self.draining):
                        self.drain_reason = protocol.DrainReason.HOSTD_STOPPING   # SIGTERM
                        self.begin_drain(protocol.EXIT_OK)
                elif fd == self.fence_fd:
                    self._fence()
            if now >= next_sweep:
                next_sweep = now + interval
                self._sweep()
                if self.shed_left and now - self.shed_at > 1.0:
                    self.shed_left = 0
                self._board()
                if self.access is not None:
                    self.access.tick(now)
                if self.ns_init:
                    reap_orphans()
            if self.draining and self.running == 0 and not self.fenced \
                    and not (self.tls_ports and self._tls_drain()):
                # anything left is owned by nobody: hand it back too (TLS: close it)
                for conn in list(conns.values()):
                    conn.handoff()
                    if not conn.closed:
                        conn.close()
                break
        self._shutdown()
        return self.exit_code

    def _shutdown(self) -> None:
        if self.jobs is not None:
            for _ in self.pool_threads:
                self.jobs.put(None)
            for t in self.pool_threads:
                t.join(timeout=5.0)
        try:
            self.base_env["wsgi.errors"].flush()
        except Exception:
            pass
        self.running = 0
        self.conns.clear()
        self._board()
        if self.access is not None:
            self.access.close()


def reap_orphans() -> int:
    """As pid 1 of the pool's pid namespace: reaps exited processes the app lost track
    of (a daemon that double-forked and setsid()ed, then died). Only zombies of another
    session are taken: a child of the app in our own session may still be waited for
    by the app (subprocess.Popen), and reaping it would steal its exit status.
    Returns how many were reaped. The namespace is small, so the /proc scan is cheap;
    it runs on the loop's sweep, never per request."""
    reaped = 0
    own_sid = os.getsid(0)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit() or entry == "1":
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        # state, ppid, pgrp, session
        if fields[0] == b"Z" and fields[1] == b"1" and int(fields[3]) != own_sid:
            try:
                os.waitpid(int(entry), os.WNOHANG)
                reaped += 1
            except ChildProcessError:
                pass
    return reaped


def run_worker(spec: dict, ctl: socket.socket, queue: socket.socket, sem_fd: int,
               reroute: socket.socket, scoreboard: protocol.Scoreboard, app=None,
               tls_context=None) -> int:
    """The worker process's main. Returns the exit code (the caller os._exit()s with it).

    tls_context: the pool's TLS context (hostd/zygote.py loaded it while root).
    Loads the pool's application unless `app` is given (a preload pool's zygote
    imported it before forking this worker; startup_failed + EXIT_APP_LOAD when the
    load fails), says
    "ready" on ctl, then serves until drained (EXIT_OK) or the supervisor goes away
    (EXIT_SUPERVISOR_GONE).
    """
    gc.enable()     # (a preload pool's zygote forks us with it off: hostd/zygote.py)
    pool = spec.get("pool", "?")
    log.set_process(f"worker {pool}#{spec.get('worker_id', 0)}")
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (only in odd embeddings)
        pass
    def startup_failed(event: str, code: int) -> int:
        """Logs the traceback, tells the supervisor, returns the exit code."""
        tb = traceback.format_exc()
        log.error(event, tb, POOL=pool)
        try:
            ctl.send(protocol.startup_failed(tb))
        except OSError:
            pass
        return code

    trace = spec.get("trace") or []
    interface = (spec.get("config") or {}).get("interface") or "wsgi"
    if app is None:
        try:
            app = load_app(spec.get("config") or {})
        except BaseException:
            return startup_failed("startup_failed", protocol.EXIT_APP_LOAD)
        trace.append(("app_import", time.monotonic()))
        try:        # (a preload pool's zygote checked its app before forking us)
            from .app import check_interface
            check_interface(app, interface)
        except BaseException:
            return startup_failed("startup_failed", protocol.EXIT_APP_LOAD)
    if interface == "asgi":
        from .asgi import run_asgi_worker
        return run_asgi_worker(spec, ctl, queue, sem_fd, reroute, scoreboard, app,
                               tls_context, trace, startup_failed)
    try:
        worker = Worker(spec, ctl, queue, sem_fd, reroute, scoreboard, app, tls_context)
    except BaseException:
        return startup_failed("worker_boot_failed", protocol.EXIT_WORKER_BOOT)
    try:
        signal.signal(signal.SIGTERM, worker._on_signal)
        # SIGUSR1 (forwarded by the supervisor): reopen the access log at the next tick
        signal.signal(signal.SIGUSR1, lambda *_: worker.access is not None and
                      setattr(worker.access, "reopen", True))
    except ValueError:
        pass
    import workers as _api

    def _report(reason: str) -> bool:
        worker._ctl_send(protocol.unhealthy(reason, app=True))
        return worker.ctl_open
    _api._reporter = _report
    try:
        trace.append(("worker_init", time.monotonic()))
        ctl.send(protocol.ready(trace))
    except OSError:
        return protocol.EXIT_SUPERVISOR_GONE
    return worker.run()
