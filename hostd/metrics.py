"""Prometheus metrics: /metrics in the text exposition format (version 0.0.4), served
from the supervisor's loop on [hostd] metrics_listen. `render` is pure: it turns the
counters document (Supervisor.counters) into text, so tests parse it with
prometheus_client's own parser.
"""
from __future__ import annotations

import socket

#: (name, type, help, how to get samples from one pool's counters)
_POOL_METRICS = [
    ("hostd_requests_total", "counter", "Requests answered by the pool's workers.",
     lambda p: [({}, p["requests"])]),
    ("hostd_requests_per_second", "gauge", "Requests per second over the last 10 seconds.",
     lambda p: [({}, p["requests_per_second"])]),
    ("hostd_active_requests", "gauge", "Requests running now.", lambda p: [({}, p["active"])]),
    ("hostd_queued_connections", "gauge", "Connections waiting in the pool's queue.",
     lambda p: [({}, p["queued"])]),
    ("hostd_responses_total", "counter", "Responses by status class.",
     lambda p: [({"class": c}, n) for c, n in p["responses"].items()]),
    ("hostd_received_bytes_total", "counter", "Bytes received from clients.",
     lambda p: [({}, p["bytes_in"])]),
    ("hostd_sent_bytes_total", "counter", "Response body bytes sent to clients.",
     lambda p: [({}, p["bytes_out"])]),
    ("hostd_workers", "gauge", "Worker processes (starting or ready).",
     lambda p: [({}, p["workers"])]),
    ("hostd_memory_bytes", "gauge", "Resident memory of the pool's workers.",
     lambda p: [({}, p["memory"])]),
    ("hostd_cpu_seconds_total", "counter", "CPU time of the pool's workers, exited ones included.",
     lambda p: [({}, p["cpu_seconds"])]),
    ("hostd_recycles_total", "counter", "Worker recycles by reason.",
     lambda p: [({"reason": r}, n) for r, n in p["recycles"].items()]),
    ("hostd_crashes_total", "counter", "Worker crashes and failed starts.",
     lambda p: [({}, p["crashes"])]),
    ("hostd_rapid_fail_stops_total", "counter", "Times rapid-fail protection stopped the pool.",
     lambda p: [({}, p["rapid_fail_stops"])]),
    ("hostd_queue_full_total", "counter", "Connections refused because the queue was full.",
     lambda p: [({}, p["queue_full"])]),
]

_BINDING_METRICS = [
    ("hostd_binding_requests_total", "counter", "Requests per binding.",
     lambda b: [({}, b["requests"])]),
    ("hostd_binding_responses_total", "counter", "Responses per binding by status class.",
     lambda b: [({"class": c}, n) for c, n in b["responses"].items()]),
    ("hostd_binding_sent_bytes_total", "counter", "Response body bytes per binding.",
     lambda b: [({}, b["bytes_out"])]),
]


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def render(counters: dict) -> str:
    """Takes Supervisor.counters(); returns the exposition text."""
    lines = []
    for name, kind, help_, samples in _POOL_METRICS:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for pool in counters["pools"]:
            for labels, value in samples(pool):
                lines.append(f"{name}{_labels({'pool': pool['name'], **labels})} {value}")
    for name, kind, help_, samples in _BINDING_METRICS:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        for pool in counters["pools"]:
            for b in pool["bindings"]:
                for labels, value in samples(b):
                    lines.append(f"{name}"
                                 f"{_labels({'pool': pool['name'], 'binding': b['binding'], **labels})}"
                                 f" {value}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """A tiny HTTP/1.0 server for GET /metrics, driven by the supervisor's epoll loop."""

    def __init__(self, host: str, port: int, supervisor):
        from kernel.sockets import listen_tcp
        self.sock = listen_tcp(host, port, backlog=64, reuseport=False)
        self.supervisor = supervisor
        self.clients: dict[int, tuple[socket.socket, bytes]] = {}

    def accept(self, watch, unwatch) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self.clients[conn.fileno()] = (conn, b"")
            watch(conn.fileno(), lambda ev, fd=conn.fileno(): self._readable(fd, unwatch))

    def _readable(self, fd: int, unwatch) -> None:
        conn, buf = self.clients[fd]
        try:
            data = conn.recv(8192)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf += data
        if data and b"\r\n\r\n" not in buf and len(buf) < 16384:
            self.clients[fd] = (conn, buf)
            return
        unwatch(fd)
        del self.clients[fd]
        line = buf.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
            body = render(self.supervisor.counters()).encode()
            head = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        else:
            body = b"not found: try /metrics\n"
            head = b"HTTP/1.0 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)
        try:
            conn.settimeout(2.0)
            conn.sendall(head + body)
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        for conn, _ in self.clients.values():
            conn.close()
        self.clients.clear()
        self.sock.close()
