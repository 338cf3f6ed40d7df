"""`hostctl`: drive a running hostd through its control socket.

  hostctl [--config PATH | --socket PATH] status [POOL] [--state STATE] [--json]
  hostctl [...] pool start|stop|recycle|identity NAME [--json]
  hostctl [...] worker recycle|kill PID [--json]
  hostctl [...] requests [POOL] [--json]
  hostctl [...] counters [POOL] [--json]
  hostctl [...] orphans [--json]
  hostctl [...] orphan kill PID [--json]
  hostctl [...] reload [--json]
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from hostd import DEFAULT_CONFIG

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 3


def socket_path(config: str | None, sock: str | None) -> str:
    """The control socket: --socket, else run_dir/control.sock of the config's main file."""
    if sock:
        return sock
    from hostd import config as hconfig
    try:
        main = hconfig.load_main(Path(config or DEFAULT_CONFIG))
    except hconfig.ConfigErrors as exc:
        raise SystemExit(f"hostctl: cannot read {config or DEFAULT_CONFIG}:\n{exc}")
    return str(main.run_dir / "control.sock")


def call(path: str, method: str, url: str, timeout: float = 10.0) -> tuple[int, dict]:
    """One request on the control socket (hostd.control: HTTP/1.1, one response with a
    Content-Length, then the server closes). Not http.client: its import alone was a
    quarter of `hostctl status`'s time. Returns (HTTP status, document). Raises OSError
    when hostd is unreachable or the answer is cut or not HTTP."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        extra = "Content-Length: 0\r\n" if method == "POST" else ""
        sock.sendall(f"{method} {url} HTTP/1.1\r\nHost: hostd\r\n{extra}"
                     "Connection: close\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise OSError(f"hostctl: not an HTTP answer from {path}: {data[:80]!r}")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and len(body) < int(value):
            raise OSError(f"hostctl: answer from {path} cut at {len(body)} of {value.strip()} bytes")
    return int(parts[1]), json.loads(body or b"{}")


def _mib(n) -> str:
    return f"{(n or 0) / 1048576:.1f}M"


def table(rows: list[list], header: list[str]) -> str:
    """An aligned text table."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _isolated(pool: dict) -> str:
    """The ISOLATED column: yes, or no and why in a word (opt-out, no root)."""
    if pool.get("isolated"):
        return "yes"
    if pool.get("isolated") is None:    # a broken pool (or an older hostd)
        return "-"
    return "no (enabled=false)" if (pool.get("isolation_reason") or "").endswith("false") \
        else "no (not root)"


def show_status(doc: dict) -> str:
    pools = [[p["name"], p["state"], len(p["workers"]), p.get("queued", 0),
              (p.get("identity") or {}).get("uid", "-"),
              _isolated(p), " ".join(p["bindings"]) or "-"] for p in doc["pools"]]
    out = [table(pools, ["POOL", "STATE", "WORKERS", "QUEUED", "UID", "ISOLATED",
                         "BINDINGS"])]
    opted = [p["name"] for p in doc["pools"] if p.get("isolated") is False
             and p.get("isolation_reason") == "[isolation] enabled = false"]
    if opted:
        out.append("\nisolated: false ([isolation] enabled = false; workers run as hostd's "
                   "user): " + ", ".join(opted))
    errors = [f"  {p['name']}: {p['error']}" for p in doc["pools"] if p.get("error")]
    if errors:
        out.append("\nerrors:\n" + "\n".join(errors))
    tls = show_certificates(doc)
    if tls:
        out.append("\n" + tls)
    asgi = [[p["name"], p["interface"], p.get("websockets_open", 0)]
            for p in doc["pools"] if p.get("interface") == "asgi"]
    if asgi:
        out.append("\n" + table(asgi, ["POOL", "INTERFACE", "WEBSOCKETS"]))
    import time as _t
    workers = [[p["name"], w["pid"], w["state"], w["requests"], w.get("connections", 0),
                f'{100 * (w.get("busy") or 0):.0f}%', _mib(w["rss"]),
                _t.strftime("%H:%M:%S", _t.localtime(w.get("started", 0))),
                w.get("last_recycle_reason") or "-"]
               for p in doc["pools"] for w in p["workers"]]
    if workers:
        out.append("\n" + table(workers, ["POOL", "PID", "STATE", "REQUESTS", "CONNS", "BUSY",
                                           "RSS", "STARTED", "LAST RECYCLE"]))
    return "\n".join(out)


def _expiry(cert: dict) -> str:
    days = cert.get("expires_in_days")
    if days is None:
        return "-"
    when = (cert.get("not_after") or "")[:10]
    if days < 0:
        return f"{when} (EXPIRED)"
    return f"{when} ({days:g} days)" + (" SOON" if days < 14 else "")


def show_certificates(doc: dict) -> str:
    """The HTTPS part of `hostctl status`: each TLS pool's certificates (subject,
    names, expiry) and its last certificate error; "" when no pool has [tls]."""
    rows, errors = [], []
    for p in doc["pools"]:
        tls = p.get("tls")
        if not tls:
            continue
        for c in tls["certificates"]:
            rows.append([p["name"], c.get("subject") or c.get("error") or "-",
                         " ".join(c.get("names") or []) or "-", _expiry(c),
                         tls["min_version"] + ("+" if tls["min_version"] == "1.2" else ""),
                         "308" if tls.get("redirect_http") else "-"])
        if tls.get("last_error"):
            errors.append(f"  {p['name']}: {tls['last_error']}")
    if not rows:
        return ""
    out = []
    if doc.get("listen_tls"):
        out.append("listen_tls: " + ", ".join(doc["listen_tls"]))
    out.append(table(rows, ["POOL", "SUBJECT", "NAMES", "EXPIRES", "TLS", "HTTP"]))
    if errors:
        out.append("certificate errors (the previous certificate is in use):\n"
                   + "\n".join(errors))
    return "\n".join(out)


def show_counters(doc: dict) -> str:
    rows = []
    for p in doc["pools"]:
        r = p["responses"]
        rows.append([p["name"], p["requests"], f'{p["requests_per_second"]:g}', p["active"],
                     p["queued"], r["2xx"], r["3xx"], r["4xx"], r["5xx"], p["bytes_in"],
                     p["bytes_out"], p["workers"], _mib(p["memory"]), f'{p["cpu_seconds"]:g}',
                     sum(p["recycles"].values()), p["crashes"], p["rapid_fail_stops"],
                     p["queue_full"]])
    out = [table(rows, ["POOL", "REQUESTS", "REQ/S", "ACTIVE", "QUEUED", "2XX", "3XX", "4XX",
                        "5XX", "IN", "OUT", "WORKERS", "MEMORY", "CPU_S", "RECYCLES",
                        "CRASHES", "RAPID_FAIL", "QUEUE_FULL"])]
    brows = [[p["name"], b["binding"], b["requests"], b["responses"]["2xx"],
              b["responses"]["4xx"], b["responses"]["5xx"], b["bytes_out"]]
             for p in doc["pools"] for b in p["bindings"]]
    if brows:
        out.append("\n" + table(brows, ["POOL", "BINDING", "REQUESTS", "2XX", "4XX", "5XX", "OUT"]))
    trows = [[p["name"], t["handshakes"], t["tls1_2"], t["tls1_3"], t["failed_timeout"],
              t["failed_closed"], t["failed_version"], t["failed_certificate"],
              t["failed_protocol"], t["misdirected"]]
             for p in doc["pools"] for t in [p.get("tls")] if t]
    if trows:
        out.append("\n" + table(trows, ["POOL", "HANDSHAKES", "TLS1.2", "TLS1.3", "FAIL_TIMEOUT",
                                          "FAIL_CLOSED", "FAIL_VERSION", "FAIL_CERT",
                                          "FAIL_PROTOCOL", "421"]))
    wrows = [[p["name"], w["open"], w["messages"], w["upgraded"]]
             for p in doc["pools"] for w in [p.get("websockets")] if w]
    if wrows:
        out.append("\n" + table(wrows, ["POOL", "WEBSOCKETS", "WS_MESSAGES", "WS_UPGRADES"]))
    refused = (doc.get("front_ends") or {}).get("refused") or {}
    if refused:
        out.append("\nfront ends refused: " + ", ".join(f"{k} {v}" for k, v in refused.items()))
    return "\n".join(out)


def show_requests(doc: dict) -> str:
    """`hostctl requests`: one row per request running now; a WebSocket is one long
    request, its METHOD "websocket (N messages)"."""
    rows = [[r["pool"], r["worker_pid"],
             f'websocket ({r.get("messages", 0)} messages)' if r.get("websocket")
             else r["method"], r["path"], r["client"], f'{r["elapsed"]:.1f}s']
            for r in doc["requests"]]
    return table(rows, ["POOL", "PID", "METHOD", "PATH", "CLIENT", "ELAPSED"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hostctl", description="control a running hostd")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--config", help=f"hostd's main file (default {DEFAULT_CONFIG})")
    where.add_argument("--socket", help="the control socket (default: run_dir/control.sock)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="pools, bindings and workers")
    st.add_argument("pool", nargs="?", help="only this pool")
    st.add_argument("--state", choices=["starting", "started", "stopping", "stopped", "failed"],
                    help="only pools in this state")
    st.add_argument("--json", action="store_true")
    pl = sub.add_parser("pool", help="start, stop or recycle a pool; show its identity (uid/gid)")
    pl.add_argument("action", choices=["start", "stop", "recycle", "identity"])
    pl.add_argument("name")
    pl.add_argument("--json", action="store_true")
    wk = sub.add_parser("worker", help="recycle a worker")
    wk.add_argument("action", choices=["recycle", "kill"])
    wk.add_argument("pid", type=int)
    wk.add_argument("--json", action="store_true")
    rq = sub.add_parser("requests", help="the requests executing now, longest first")
    rq.add_argument("pool", nargs="?")
    rq.add_argument("--json", action="store_true")
    ct = sub.add_parser("counters", help="per-pool and per-binding counters")
    ct.add_argument("pool", nargs="?")
    ct.add_argument("--json", action="store_true")
    orp = sub.add_parser("orphans", help="workers kept alive for debugging ([health] orphan)")
    orp.add_argument("--json", action="store_true")
    ok = sub.add_parser("orphan", help="end an orphaned worker")
    ok.add_argument("action", choices=["kill"])
    ok.add_argument("pid", type=int)
    ok.add_argument("--json", action="store_true")
    rl = sub.add_parser("reload", help="re-read the configuration (as SIGHUP)")
    rl.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    path = socket_path(args.config, args.socket)
    try:
        if args.cmd == "status":
            query = "&".join(f"{k}={v}" for k, v in (("pool", args.pool), ("state", args.state))
                             if v)
            code, doc = call(path, "GET", "/status" + (f"?{query}" if query else ""))
        elif args.cmd == "pool" and args.action == "identity":
            code, doc = call(path, "GET", f"/pools/{args.name}/identity")
        elif args.cmd == "pool":
            code, doc = call(path, "POST", f"/pools/{args.name}/{args.action}")
        elif args.cmd == "worker":
            code, doc = call(path, "POST", f"/workers/{args.pid}/{args.action}")
        elif args.cmd == "orphans":
            code, doc = call(path, "GET", "/orphans")
        elif args.cmd == "requests":
            code, doc = call(path, "GET", "/requests" + (f"?pool={args.pool}" if args.pool else ""))
        elif args.cmd == "counters":
            code, doc = call(path, "GET", "/counters" + (f"?pool={args.pool}" if args.pool else ""))
        elif args.cmd == "orphan":
            code, doc = call(path, "POST", f"/orphans/{args.pid}/kill")
        else:
            code, doc = call(path, "POST", "/reload")
    except OSError as exc:
        print(f"hostctl: cannot reach hostd at {path}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.cmd == "status" and code == 200:
        print(show_status(doc))
    elif args.cmd == "requests" and code == 200:
        print(show_requests(doc))
    elif args.cmd == "counters" and code == 200:
        print(show_counters(doc))
    elif args.cmd == "orphans" and code == 200:
        print(table([[o["pool"], o["pid"], f'{o["orphaned_for"]:g}s', _mib(o["rss"]), o["reason"]]
                     for o in doc["orphans"]], ["POOL", "PID", "ORPHANED", "RSS", "REASON"]))
    else:
        print(doc.get("message", doc))
    return EXIT_OK if code == 200 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
