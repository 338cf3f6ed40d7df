"""The control socket: HTTP/1.0 + JSON over AF_UNIX at run_dir/control.sock (mode 0600),
so `curl --unix-socket /run/hostd/control.sock http://hostd/status` works as well as
hostctl. Served from the supervisor's loop: requests are tiny and answered at once.

Endpoints (later issues add more):
  GET  /status                     -> the status document (hostd.supervisor.status)
  POST /pools/NAME/start|stop|recycle -> {"ok": bool, "message": str}
  POST /workers/PID/recycle        -> {"ok": bool, "message": str}
  POST /reload                     -> {"ok": true, "message": ...}
  GET  /counters[?pool=NAME]       -> {"pools": [...]} (Supervisor.counters)
  GET  /requests[?pool=NAME]       -> {"requests": [{"pool", "worker_pid", "method", "path",
                                       "host", "client", "elapsed"}]}, longest first
  POST /workers/PID/kill           -> {"ok": bool, "message": str}
  GET  /orphans                    -> {"orphans": [{"pool", "pid", "id", "reason", "orphaned_for", "rss"}]}
  POST /orphans/PID/kill           -> {"ok": bool, "message": str}
"""
from __future__ import annotations

import json
import os
import socket
import time

_MAX_REQUEST = 65536
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error"}


class ControlServer:
    """Takes the socket path and the supervisor whose methods the endpoints call."""

    def __init__(self, path, supervisor):
        self.path = str(path)
        self.supervisor = supervisor
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)          # created 0600: root (hostd's user) only
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}

    def accept(self, watch, unwatch) -> None:
        """Accepts waiting clients; `watch(fd, handler)`/`unwatch(fd)` are the loop's."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self.clients[conn.fileno()] = (conn, bytearray())
            watch(conn.fileno(), lambda ev, fd=conn.fileno(): self._readable(fd, unwatch))

    def _readable(self, fd: int, unwatch) -> None:
        conn, buf = self.clients[fd]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            buf += data
        request = _parse(buf) if data else None
        if data and request is None and len(buf) < _MAX_REQUEST:
            return   # incomplete
        unwatch(fd)
        del self.clients[fd]
        if request is not None:
            status, doc = self.dispatch(*request)
        elif data:
            status, doc = 413, {"ok": False, "message": "request too large"}
        else:
            conn.close()
            return
        body = json.dumps(doc, indent=1).encode() + b"\n"
        head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        try:
            conn.settimeout(2.0)
            conn.sendall(head + body)
        except OSError:
            pass
        conn.close()

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        """Returns (HTTP status, JSON document) for one request."""
        sup = self.supervisor
        parts = [p for p in path.split("?")[0].split("/") if p]
        try:
            if parts == ["status"]:
                if method != "GET":
                    return 405, {"ok": False, "message": "use GET"}
                return 200, sup.status()
            query = dict(q.split("=", 1) for q in path.partition("?")[2].split("&") if "=" in q)
            if parts == ["counters"] and method == "GET":
                return 200, sup.counters(query.get("pool"))
            if parts == ["requests"] and method == "GET":
                return 200, sup.live_requests(query.get("pool"))
            if len(parts) == 3 and parts[0] == "workers" and parts[2] == "kill" and method == "POST":
                try:
                    pid = int(parts[1])
                except ValueError:
                    return 400, {"ok": False, "message": f"not a pid: {parts[1]!r}"}
                ok, message = sup.kill_worker(pid)
                return (200 if ok else 404), {"ok": ok, "message": message}
            if parts == ["orphans"] and method == "GET":
                return 200, {"orphans": sup.orphans()}
            if len(parts) == 3 and parts[0] == "orphans" and parts[2] == "kill" and method == "POST":
                try:
                    pid = int(parts[1])
                except ValueError:
                    return 400, {"ok": False, "message": f"not a pid: {parts[1]!r}"}
                ok, message = sup.kill_orphan(pid)
                return (200 if ok else 404), {"ok": ok, "message": message}
            if len(parts) == 3 and parts[0] == "workers" and parts[2] == "recycle" and method == "POST":
                try:
                    pid = int(parts[1])
                except ValueError:
                    return 400, {"ok": False, "message": f"not a pid: {parts[1]!r}"}
                ok, message = sup.recycle_worker(pid)
                return (200 if ok else 404 if "no worker" in message else 409), \
                    {"ok": ok, "message": message}
            if parts == ["reload"] and method == "POST":
                sup.reload()
                return 200, {"ok": True, "message": "reloaded"}
            if len(parts) == 3 and parts[0] == "pools" and method == "POST":
                name, action = parts[1], parts[2]
                actions = {"start": sup.start_pool, "stop": sup.stop_pool,
                           "recycle": sup.recycle_pool}
                if action not in actions:
                    return 404, {"ok": False, "message": f"unknown pool action {action!r}"}
                ok, message = actions[action](name)
                return (200 if ok else 404 if "no pool" in message else 409), \
                    {"ok": ok, "message": message}
        except Exception as exc:   # a control request must never take the supervisor down
            import traceback
            from hostd import log
            log.error("control_error", traceback.format_exc())
            return 500, {"ok": False, "message": f"{type(exc).__name__}: {exc}"}
        return 404, {"ok": False, "message": f"no endpoint {method} {path}"}

    def close(self) -> None:
        for conn, _ in self.clients.values():
            conn.close()
        self.clients.clear()
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _parse(buf: bytearray):
    """Returns (method, path, body) once a whole request is in buf, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    try:
        method, path, _version = head[0].split(" ", 2)
    except ValueError:
        return ("BAD", "/", b"")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return ("BAD", "/", b"")
    if len(buf) < end + 4 + length:
        return None
    return method, path, bytes(buf[end + 4:end + 4 + length])
