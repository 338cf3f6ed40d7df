"""Prometheus metrics: /metrics in the text exposition format (version 0.0.4), served
from the supervisor's loop on [hostd] metrics_listen. `render` is pure: it turns the
counters document (Supervisor.counters) into text, so tests parse it with
prometheus_client's own parser.
"""
from __future__ import annotations

import gzip

from hostd.loophttp import LoopHTTPServer

#: status classes whose series are always there (what an error ratio divides); the
#: others (1xx, 3xx, 4xx) appear once nonzero, so that a thousand idle pools do not
#: fill the page with zeros (counters JSON keeps every class)
_ALWAYS_CLASSES = ("2xx", "5xx")


def _classes(responses: dict) -> list:
    return [({"class": c}, n) for c, n in responses.items() if n or c in _ALWAYS_CLASSES]


#: (name, type, help, how to get samples from one pool's counters)
_POOL_METRICS = [
    ("hostd_requests_total", "counter", "Requests answered by the pool's workers.",
     lambda p: [({}, p["requests"])]),
    ("hostd_requests_per_second", "gauge", "Requests per second over the last 10 seconds.",
     lambda p: [({}, p["requests_per_second"])]),
    ("hostd_active_requests", "gauge", "Requests running now.", lambda p: [({}, p["active"])]),
    ("hostd_queued_connections", "gauge", "Connections waiting in the pool's queue.",
     lambda p: [({}, p["queued"])]),
    ("hostd_responses_total", "counter", "Responses by status class (2xx and 5xx always; "
     "1xx, 3xx, 4xx once nonzero).", lambda p: _classes(p["responses"])),
    ("hostd_received_bytes_total", "counter", "Bytes received from clients.",
     lambda p: [({}, p["bytes_in"])]),
    ("hostd_sent_bytes_total", "counter", "Response body bytes sent to clients.",
     lambda p: [({}, p["bytes_out"])]),
    ("hostd_workers", "gauge", "Worker processes (starting or ready).",
     lambda p: [({}, p["workers"])]),
    ("hostd_memory_bytes", "gauge", "Memory charged to the pool's cgroup (without cgroups: its workers' PSS).",
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
    ("hostd_binding_responses_total", "counter", "Responses per binding by status class "
     "(2xx and 5xx always; 1xx, 3xx, 4xx once nonzero).", lambda b: _classes(b["responses"])),
    ("hostd_binding_sent_bytes_total", "counter", "Response body bytes per binding.",
     lambda b: [({}, b["bytes_out"])]),
]


#: HTTPS, only for pools with [tls] (their counters' "tls" is not null): a thousand
#: plain pools add nothing to the page, not even HELP lines
_TLS_FAILURES = ("timeout", "closed", "version", "certificate", "protocol")
_TLS_METRICS = [
    ("hostd_tls_handshakes_total", "counter", "Completed TLS handshakes by protocol version.",
     lambda t: [({"version": "1.2"}, t["tls1_2"]), ({"version": "1.3"}, t["tls1_3"])]),
    ("hostd_tls_handshake_failures_total", "counter", "Failed TLS handshakes by reason "
     "(timeout: not done within header_timeout; closed: the client went; version: no common "
     "version; certificate: the client refused ours; protocol: any other TLS error).",
     lambda t: [({"reason": r}, t[f"failed_{r}"]) for r in _TLS_FAILURES]),
    ("hostd_tls_misdirected_requests_total", "counter", "Requests answered 421 (a Host the "
     "connection's pool does not bind).", lambda t: [({}, t["misdirected"])]),
    ("hostd_tls_certificate_expiry_seconds", "gauge", "When each certificate of the pool "
     "expires (notAfter), seconds since the epoch.",
     lambda t: [({"certificate": c["file"]}, c["not_after"]) for c in t["certificates"]]),
]


#: WebSockets, only for ASGI pools (their counters' "websockets" is not null)
_WS_METRICS = [
    ("hostd_websockets_open", "gauge", "WebSockets open now on the pool's workers.",
     lambda w: [({}, w["open"])]),
    ("hostd_websocket_messages_total", "counter", "WebSocket messages, received and sent.",
     lambda w: [({}, w["messages"])]),
    ("hostd_websocket_upgrades_total", "counter", "Connections upgraded to WebSocket.",
     lambda w: [({}, w["upgraded"])]),
]


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _accepts_gzip(value: str) -> bool:
    """Accept-Encoding names gzip with a q above 0 (RFC 9110 §12.5.3)."""
    for item in value.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


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
    # families of one part of a pool's counters, only for the pools that have it
    for part, families in (("tls", _TLS_METRICS), ("websockets", _WS_METRICS)):
        having = [p for p in counters["pools"] if p.get(part)]
        if not having:
            continue
        for name, kind, help_, samples in families:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            for pool in having:
                for labels, value in samples(pool[part]):
                    lines.append(f"{name}{_labels({'pool': pool['name'], **labels})} {value}")
    refused = (counters.get("front_ends") or {}).get("refused") or {}
    lines += ["# HELP hostd_frontend_refusals_total Connections or requests the front ends "
              "refused themselves, by reason (malformed heads, timeouts, refused TLS hellos).",
              "# TYPE hostd_frontend_refusals_total counter"]
    for reason, n in sorted(refused.items()):
        lines.append(f"hostd_frontend_refusals_total{_labels({'reason': reason})} {n}")
    return "\n".join(lines) + "\n"


class MetricsServer(LoopHTTPServer):
    """GET /metrics, driven by the supervisor's epoll loop."""

    def __init__(self, host: str, port: int, supervisor):
        from kernel.sockets import listen_tcp
        super().__init__()
        self.sock = listen_tcp(host, port, backlog=64, reuseport=False)
        self.supervisor = supervisor

    def respond_headers(self, method: str, path: str, body: bytes, headers: dict):
        """GET /metrics; gzip-compressed when the scraper accepts it (Prometheus
        always does: with a thousand pools the page is ~0.9 MiB, ~0.1 MiB gzipped)."""
        if method == "GET" and path.split("?")[0] == "/metrics":
            text = render(self.supervisor.counters()).encode()
            ctype = "text/plain; version=0.0.4; charset=utf-8"
            if _accepts_gzip(headers.get("accept-encoding", "")):
                return 200, ctype, gzip.compress(text, 6), {"Content-Encoding": "gzip"}
            return 200, ctype, text
        return 404, "text/plain", b"not found: try /metrics\n"

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        return self.respond_headers(method, path, body, {})[:3]

    def close(self) -> None:
        self.close_clients()
        self.sock.close()
