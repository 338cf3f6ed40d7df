#!/usr/bin/env python3
"""uWSGI's Emperor running many sites, the way uWSGI hosts many sites: one vassal per
site (its own master and worker, its own socket) and uWSGI's HTTP router in front, to
which each vassal subscribes with its host name (the subscription server): the
Emperor's equivalent of hostd's front end routing by Host to per-site processes.
bench/density.py runs it beside hostd, in the same run, on the same sites.

    sudo .venv/bin/python bench/emperor.py [--sites 50]   (alone: a smoke run)

Each vassal: `master`, `processes = 1`, `threads` = hostd's pool default (hostd/config.py),
`module = app:application` in the site's directory, a uwsgi `socket` on 127.0.0.1 of its
own, `subscribe-to` the router's subscription server with its host name. The router:
`--http 127.0.0.1:PORT --http-subscription-server 127.0.0.1:SUBPORT --http-processes 2`
(hostd's density run has 2 front ends) `--http-keepalive --http-auto-chunked`.

How it treats the load generator's connections: the router keeps each client connection
alive (`http-keepalive`; bench/app.py answers with a Content-Length, `http-auto-chunked`
covers an app that does not) and speaks the uwsgi protocol to the vassals over a new
connection per request, as it always does.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
UWSGI = HERE / ".venv" / "bin" / "uwsgi"
sys.path.insert(0, str(HERE.parent))


def hostd_threads() -> int:
    """hostd's pool default `threads` (what each of its workers runs with)."""
    from hostd.config import POOL_KEYS
    return POOL_KEYS["threads"].default


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range: the
    router opens a new connection to a vassal per request, and a port handed out by
    bind(0) could be some such connection's local port by the time a vassal binds it
    (uWSGI then curses the vassal and retries the same port forever). Each is held
    bound until all are chosen, so none is handed out twice."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    held, port = [], max(1024, low - 12000 - random.randrange(4000))
    try:
        while len(held) < n and port < low:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
                held.append(s)
            except OSError:
                s.close()
            port += 1
        if len(held) < n:
            raise RuntimeError(f"no {n} free ports below {low}")
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def ensure_uwsgi() -> Path:
    """bench/.venv/bin/uwsgi, installed the way bench/run installs it (pip, compiled
    from source). Raises RuntimeError when it cannot be installed."""
    if UWSGI.exists():
        return UWSGI
    venv = UWSGI.parent.parent
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "uwsgi"],
                   check=False, stdout=subprocess.DEVNULL)
    if not UWSGI.exists():
        raise RuntimeError("uWSGI could not be installed into bench/.venv (pip install "
                           "uwsgi: it compiles from source, needs gcc and python3-dev)")
    return UWSGI


def get(port: int, host: str, timeout: float = 5.0) -> int:
    """Status of GET / with Host `host` through the router (0: no answer)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
        return int(data.split()[1]) if data.startswith(b"HTTP/1.") else 0
    except (OSError, ValueError, IndexError):
        return 0


class Emperor:
    """The Emperor with one vassal per site and the HTTP router with its subscription
    server. `sites`: {host name: site directory holding app.py with `application`}.
    `threads`: each vassal's (None: hostd's pool default). Use as a context manager:
    on exit every process it started is gone (their sessions killed) and its files
    removed."""

    def __init__(self, sites: dict[str, Path], threads: int | None = None,
                 router_processes: int = 2, python_path: str | None = None):
        self.sites, self.router_processes = sites, router_processes
        self.threads = hostd_threads() if threads is None else threads
        self.python_path = python_path
        self.dir: Path | None = None
        self.port = self.subport = 0
        self.vassal_ports: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []

    def _vassal(self, host: str, site: Path) -> str:
        port = self.vassal_ports[host]
        lines = ["[uwsgi]", "master = true", "processes = 1", f"threads = {self.threads}",
                 f"chdir = {site}", "module = app:application",
                 f"socket = 127.0.0.1:{port}",
                 f"subscribe-to = 127.0.0.1:{self.subport}:{host}",
                 "disable-logging = true", "die-on-term = true"]
        if self.threads > 1:
            lines.append("enable-threads = true")
        if self.python_path:
            lines.append(f"pythonpath = {self.python_path}")
        return "\n".join(lines) + "\n"

    def __enter__(self) -> "Emperor":
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)     # nothing left behind, whatever failed
            raise
        return self

    def _start(self) -> None:
        uwsgi = str(ensure_uwsgi())
        # ports chosen just before they are bound
        self.port, self.subport, *ports = free_ports(2 + len(self.sites))
        self.vassal_ports = dict(zip(self.sites, ports))
        self.dir = Path(tempfile.mkdtemp(prefix="hostd-emperor-"))
        vassals = self.dir / "vassals"
        vassals.mkdir()
        log = open(self.dir / "uwsgi.log", "ab")
        # the router first: vassals subscribe to it as they come up (and every few
        # seconds after, so order does not matter)
        self.procs.append(subprocess.Popen(
            [uwsgi, "--master", "--die-on-term", "--http", f"127.0.0.1:{self.port}",
             "--http-subscription-server", f"127.0.0.1:{self.subport}",
             "--http-processes", str(self.router_processes), "--http-keepalive",
             "--http-auto-chunked", "--disable-logging"],
            stdout=log, stderr=log, start_new_session=True))
        for host, site in self.sites.items():
            (vassals / f"{host}.ini").write_text(self._vassal(host, site))
        self.procs.append(subprocess.Popen(
            [uwsgi, "--emperor", str(vassals), "--die-on-term", "--disable-logging"],
            stdout=log, stderr=log, start_new_session=True))
        log.close()
        deadline = time.monotonic() + 120
        waiting = set(self.sites)
        while waiting and time.monotonic() < deadline:
            waiting = {h for h in waiting if get(self.port, h, 2.0) != 200}
            if waiting:
                time.sleep(0.2)
        if waiting:
            tail = (self.dir / "uwsgi.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"Emperor: {len(waiting)} vassal(s) never answered 200 in "
                               f"120 s, e.g. {sorted(waiting)[:3]}; uWSGI's log ends:\n{tail}")
        self.started = time.monotonic()

    def pids(self) -> list[int]:
        """Every process of the Emperor, its vassals and the router (their sessions)."""
        sids = {p.pid for p in self.procs}
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in sids:   # session id
                out.append(int(entry))
        return out

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        left = self.pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=50)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hostd-emperor-sites-"))
    sites = {}
    for i in range(args.sites):
        d = root / f"s{i:03d}"
        d.mkdir()
        shutil.copy(HERE / "app.py", d / "app.py")
        sites[f"s{i:03d}.emperor"] = d
    t0 = time.monotonic()
    try:
        with Emperor(sites) as em:
            print(f"{args.sites} vassals answering in {time.monotonic() - t0:.1f} s on port "
                  f"{em.port}; {len(em.pids())} processes")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
