"""A test harness that plays the supervisor and a front end for one worker process.

It creates the pool queue (SOCK_SEQPACKET socketpair), the eventfd queue semaphore, the
reroute and control socketpairs and a Scoreboard, forks a child that calls
`workers.runtime.run_worker` and `os._exit`s with its result (stderr goes to a file the
test can read), and runs a tiny front end: a TCP listener on 127.0.0.1:0 and a thread
that accepts, reads the request head (until CRLFCRLF), takes a semaphore slot and sends
the socket + bytes read into the queue.

Usage:
    with WorkerHarness("worker_basic:app") as h:
        conn = http.client.HTTPConnection("127.0.0.1", h.port)
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref

from hostd import protocol
from kernel.fdpass import recv_with_fds, send_with_fds

APPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps")


class WorkerHarness:
    def __init__(self, app: str = "worker_basic:app", *, pool: str = "alpha",
                 threads: int = 1, routes=None, keepalive_timeout: float = 75.0,
                 queue_len: int = 16, directory: str = APPS_DIR, env=None,
                 virtualenv=None, max_header_bytes: int = 16384, worker_id: int = 1,
                 tls: dict | None = None, header_timeout: float | None = None,
                 health: dict | None = None):
        """tls: a WorkerSpec.tls dict: the listener is then a TLS one (its port in
        tls_ports), the worker loads the context as hostd/zygote.py would, and the
        harness hands connections over with nothing read, as the front end does."""
        self.pool = pool
        self.queue_len = queue_len
        if routes is None:
            routes = [[pool, "*"]]
        self.spec = {
            "pool": pool, "worker_id": worker_id, "generation": 1,
            "max_header_bytes": max_header_bytes, "keepalive_timeout": keepalive_timeout,
            "config": {"name": pool, "app": app, "directory": directory,
                       "virtualenv": virtualenv, "env": env or {}, "threads": threads,
                       "bindings": [b for p, b in routes if p == pool]},
            "routes": routes,
        }
        self.tls = tls
        if tls is not None:
            self.spec["tls"] = tls
        if header_timeout is not None:
            self.spec["header_timeout"] = header_timeout
        if health is not None:
            self.spec["config"]["health"] = health
        self.pid = None
        self.exit_code = None
        self.port = None
        self._stop = threading.Event()
        self._thread = None
        self.accepted = 0
        self.rejected = 0

    # --- lifecycle ----------------------------------------------------------------------
    def start(self, wait_ready: bool = True) -> "WorkerHarness":
        self.queue_out, self.queue_in = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sem_fd = os.eventfd(self.queue_len, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
        self.reroute_out, self.reroute_in = socket.socketpair(socket.AF_UNIX,
                                                              socket.SOCK_SEQPACKET)
        self.ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.board = protocol.Scoreboard.create()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        if self.tls is not None:
            self.spec["tls_ports"] = [self.port]
        self.stderr_file = tempfile.NamedTemporaryFile(prefix="worker-stderr-", delete=False)
        self.stderr_path = self.stderr_file.name
        pid = os.fork()
        if pid == 0:  # the worker
            code = protocol.EXIT_WORKER_BOOT
            try:
                os.dup2(self.stderr_file.fileno(), 2)
                sys.stderr = open(2, "w", closefd=False, buffering=1)
                self.queue_in.close()
                self.reroute_out.close()
                self.ctl.close()
                self.listener.close()
                from workers.runtime import run_worker
                ctx = None
                if self.tls is not None:
                    from workers.tls import make_context
                    ctx = make_context(self.tls)
                code = run_worker(self.spec, ctl_child, self.queue_out, self.sem_fd,
                                  self.reroute_in, self.board, None, ctx)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                try:
                    sys.stderr.flush()
                except Exception:
                    pass
                os._exit(code)
        self.pid = pid
        ctl_child.close()
        self._thread = threading.Thread(target=self._front_end, daemon=True)
        self._thread.start()
        if wait_ready:
            msg = self.ctl_recv(timeout=20)
            if msg is None or msg.get("t") != "ready":
                raise RuntimeError(f"worker did not become ready: {msg!r}\n{self.log()}")
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.pid is not None and self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait_exit(5)
        for s in ("listener", "queue_out", "queue_in", "reroute_out", "reroute_in", "ctl"):
            obj = getattr(self, s, None)
            if obj is not None:
                obj.close()
        if getattr(self, "sem_fd", None) is not None:
            os.close(self.sem_fd)
            self.sem_fd = None
        if getattr(self, "board", None) is not None:
            self.board.close()
            self.board = None
        try:
            os.unlink(self.stderr_path)
        except (OSError, AttributeError):
            pass

    def wait_exit(self, timeout: float = 10.0):
        """Waits for the worker to exit; returns its exit code (None on timeout)."""
        if self.exit_code is not None:
            return self.exit_code
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                return self.exit_code
            time.sleep(0.01)
        return None

    def log(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # --- the front end --------------------------------------------------------------------
    def _front_end(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:
                return
            threading.Thread(target=self._hand_over, args=(client,), daemon=True).start()

    def _hand_over(self, client: socket.socket) -> None:
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                client.setblocking(False)
                self.enqueue(client, b"")      # nothing read: the worker does TLS
                return
            client.settimeout(10)
            buf = b""
            while b"\r\n\r\n" not in buf and len(buf) < 65536:
                data = client.recv(65536)
                if not data:
                    return
                buf += data
            self.enqueue(client, buf)
        except OSError:
            pass
        finally:
            client.close()

    def enqueue(self, client: socket.socket, data: bytes) -> bool:
        """Sends a client socket + bytes into the pool queue, taking a semaphore slot
        first (503 when none is left, as the real front end does)."""
        try:
            os.eventfd_read(self.sem_fd)
        except BlockingIOError:
            self.rejected += 1
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            return False
        send_with_fds(self.queue_in, data, [client.fileno()])
        self.accepted += 1
        return True

    # --- talking to the worker ---------------------------------------------------------------
    def ctl_send(self, msg: dict) -> None:
        self.ctl.send(protocol.encode(msg))

    def ctl_recv(self, timeout: float = 5.0):
        """Next control message from the worker, or None on timeout / EOF."""
        r, _, _ = select.select([self.ctl], [], [], timeout)
        if not r:
            return None
        data = self.ctl.recv(protocol.MAX_CONTROL_BYTES)
        if not data:
            return None
        return protocol.decode(data)

    def reroute_recv(self, timeout: float = 5.0):
        """Next (bytes, socket) the worker sent back to the front ends, or None."""
        r, _, _ = select.select([self.reroute_out], [], [], timeout)
        if not r:
            return None
        data, fds = recv_with_fds(self.reroute_out, protocol.MAX_HANDOFF_BYTES, maxfds=1)
        if not fds:
            return None
        return data, socket.socket(fileno=fds[0])

    def sem_value(self) -> int:
        """Free queue slots now (reads the semaphore down and puts it back)."""
        n = 0
        while True:
            try:
                os.eventfd_read(self.sem_fd)
            except BlockingIOError:
                break
            n += 1
        if n:
            os.eventfd_write(self.sem_fd, n)
        return n

    def scoreboard(self) -> dict:
        return self.board.read()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


_leftovers: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, method: str = "GET"):
    """Reads one HTTP/1.1 response from a raw socket; returns (status, headers, body).
    headers: dict of lower-case name -> value. Handles Content-Length, chunked and
    read-until-close bodies. Leftover bytes are kept on the socket object."""
    buf = _leftovers.pop(sock, b"")
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response head: {buf!r}")
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if method == "HEAD" or status in (204, 304) or status < 200:
        pass
    elif "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed mid-body")
            buf += data
        body, buf = buf[:n], buf[n:]
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            while b"\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed mid-chunked body")
                buf += data
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed mid-chunk")
                buf += data
            if size == 0:
                buf = buf[2:]
                break
            parts.append(buf[:size])
            buf = buf[size + 2:]
        body = b"".join(parts)
    else:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
        body, buf = buf, b""
    _leftovers[sock] = buf
    return status, headers, body
