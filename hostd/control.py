"""The control socket: HTTP/1.0 + JSON over AF_UNIX at run_dir/control.sock (mode 0600),
so `curl --unix-socket /run/hostd/control.sock http://hostd/status` works as well as
hostctl. Served from the supervisor's loop: requests are tiny and answered at once.

Endpoints (later issues add more):
  GET  /status                     -> the status document (hostd.supervisor.status)
  POST /pools/NAME/start|stop|recycle -> {"ok": bool, "message": str}
  GET  /pools/NAME/identity        -> {"ok", "pool", "uid", "gid", "identity": "dynamic"|
                                       "user"|"hostd", "user", "isolated", "message"}
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

from hostd.lifecycle import PoolState
from hostd.loophttp import Deferred, LoopHTTPServer

#: what `GET /status?state=` accepts
POOL_STATES = tuple(s.value for s in PoolState)


def _json(status: int, doc: dict) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(doc, indent=1).encode() + b"\n"


class ControlServer(LoopHTTPServer):
    """Takes the socket path and the command handlers whose methods the endpoints call
    (hostd.supervisor.commands.Commands)."""

    def __init__(self, path, supervisor):
        super().__init__()
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

    def respond(self, method: str, path: str, body: bytes):
        result = self.dispatch(method, path, body)
        if isinstance(result, Deferred):
            return result.map(_json)
        return _json(*result)

    def dispatch(self, method: str, path: str, body: bytes):
        """Returns (HTTP status, JSON document) for one request, or a Deferred resolved
        with them (GET /requests waits for the workers' replies)."""
        sup = self.supervisor
        parts = [p for p in path.split("?")[0].split("/") if p]
        try:
            query = dict(q.split("=", 1) for q in path.partition("?")[2].split("&") if "=" in q)
            if parts == ["status"]:
                if method != "GET":
                    return 405, {"ok": False, "message": "use GET"}
                state = query.get("state")
                if state is not None and state not in POOL_STATES:
                    return 400, {"ok": False, "message": f"state must be one of "
                                 f"{', '.join(POOL_STATES)}, not {state!r}"}
                doc = sup.status(query.get("pool"), state)
                if "pool" in query and not doc["pools"] and state is None:
                    return 404, {"ok": False, "message": f"no pool named {query['pool']}"}
                return 200, doc
            if parts == ["counters"] and method == "GET":
                return 200, sup.counters(query.get("pool"))
            if parts == ["requests"] and method == "GET":
                return sup.live_requests(query.get("pool"))
            if parts == ["orphans"] and method == "GET":
                return 200, {"orphans": sup.orphans()}
            pid_actions = {("workers", "kill"): sup.kill_worker,
                           ("workers", "recycle"): sup.recycle_worker,
                           ("orphans", "kill"): sup.kill_orphan}
            if len(parts) == 3 and (parts[0], parts[2]) in pid_actions and method == "POST":
                try:
                    pid = int(parts[1])
                except ValueError:
                    return 400, {"ok": False, "message": f"not a pid: {parts[1]!r}"}
                ok, message = pid_actions[parts[0], parts[2]](pid)
                return (200 if ok else 404 if "no " in message else 409), \
                    {"ok": ok, "message": message}
            if parts == ["reload"] and method == "POST":
                sup.reload()
                return 200, {"ok": True, "message": "reloaded"}
            if len(parts) == 3 and parts[0] == "pools" and parts[2] == "identity" \
                    and method == "GET":
                ok, doc = sup.pool_identity(parts[1])
                return (200 if ok else 404 if "no pool" in doc["message"] else 409), doc
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
        self.close_clients()
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

