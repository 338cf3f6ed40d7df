#!/usr/bin/env python3
"""HTTPS benchmark (issue 14): hostd vs nginx, uWSGI and Granian over TLS.

    sudo python3 bench/tls.py [--rounds 3] [--duration 10] [--connections 50]
                              [--only hostd,nginx,uwsgi,granian] [--resumed]
                              [--json out.json] [--keep-tmp]

One interleaved run: in each round every selected server gets a turn (the order
rotates by one each round), one server at a time, under /tmp/hostd-bench.lock
(flock). Everyone gets the same ECDSA P-256 certificate (made here with the openssl
CLI, CN and SAN bench.test), the same hello app (bench/app.py; nginx: `return 200`
of the same bytes) and 2 worker processes. Each turn measures, with wrk -t2 -cN:

- https-keepalive: `wrk https://bench.test:PORT/` (one handshake per connection);
- https-new: the same with `-H "Connection: close"` and wrk's TLS session
  resumption turned off (see below): every request a new TCP connection and a full
  TLS handshake;
- https-resumed (only with --resumed): the same without that: wrk's own behaviour,
  which resumes the TLS session when the server lets it;
- plain-keepalive (hostd and nginx): their own plain HTTP keep-alive, same server,
  same turn, on a second (plain) listener (nginx's HTTPS/plain ratio is printed as
  the reference for hostd's: the cost of OpenSSL and of wrk's TLS on this machine).

wrk and TLS sessions: wrk (4.1) keeps one SSL object per connection and, on a
reconnect, calls SSL_shutdown + SSL_clear on it. SSL_clear keeps a cleanly shut-down
session, so the next SSL_connect offers it (TLS 1.3: the server's session ticket as
a PSK) and the server may resume it. To measure full handshakes the https-new mode
runs wrk with LD_PRELOAD of a 10-line shim (built here with gcc) whose SSL_clear
drops the session first. The script checks both behaviours against its own Python
TLS server at the start (JSON: meta.wrk_tls_sessions).

SNI: wrk sends the URL's host as SNI and resolves it with getaddrinfo. The script
adds `127.0.0.1 bench.test` to /etc/hosts for the run (and removes exactly that line
at the end) unless bench.test already resolves to 127.0.0.1. With --no-hosts-file
it uses https://127.0.0.1:PORT/ instead (wrk then sends SNI "127.0.0.1") and gives
hostd `tls_default_pool = "bench"` so that the unbound name reaches the pool.

Server CPU per request: utime+stime of the server's whole process tree from /proc
(bench/run's server_cpu), after - before each wrk run, / the requests wrk completed.
See bench/README.md ("HTTPS: bench/tls.py").
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import importlib.machinery
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent


def _load_run():
    """bench/run (no .py suffix) as a module: its helpers are this script's too."""
    loader = importlib.machinery.SourceFileLoader("bench_run", str(BENCH_DIR / "run"))
    spec = importlib.util.spec_from_loader("bench_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


R = _load_run()
log, BenchError = R.log, R.BenchError
APP_FILE = R.APP_FILE
BODY = R.BODY                     # b"Hello, world!"

HOST = "bench.test"
LOCK_PATH = "/tmp/hostd-bench.lock"
HOSTS_FILE = Path("/etc/hosts")
WRK_THREADS = 2
WARMUP_CONNS = 200                # also grows hostd's pool to processes = 2
WARMUP_SECONDS = 1

# name -> (label, how it treats wrk's connections)
SERVERS = {
    "hostd": ("hostd: frontends = 2, pool processes = 2, threads = 1, [isolation] enabled = false",
              "a front end peeks the ClientHello (SNI) and hands the untouched socket to a pool "
              "worker, which terminates TLS and keeps the connection alive"),
    "nginx": ("nginx: worker_processes 2, listen ssl, `return 200` (the ceiling: no Python)",
              "each worker terminates TLS and keeps the connection alive; the body is a static "
              "`return 200`, no app"),
    "uwsgi": ("uWSGI --https (2 router processes, --http-keepalive) + --processes 2",
              "its HTTP router terminates TLS and keeps the client connection alive; per request "
              "it opens a uwsgi-protocol connection to one of the 2 workers. On Connection: close "
              "it closes without saying so in the response: wrk then counts one read error per "
              "request (expected). Its key exchange is P-256 only: a client offering X25519 "
              "first (wrk, curl) gets a HelloRetryRequest on every full handshake"),
    "granian": ("Granian --interface wsgi --workers 2 --ssl-certificate/--ssl-keyfile",
                "each worker terminates TLS (rustls) and keeps the connection alive; the app "
                "runs on its blocking threads (default)"),
}
ALL_SERVERS = list(SERVERS)
# mode -> (scheme, Connection: close?, resumption off?)
MODES = {
    "https-keepalive": ("https", False, False),
    "https-new": ("https", True, True),
    "https-resumed": ("https", True, False),
    "plain-keepalive": ("http", False, False),
}


# --------------------------------------------------------------------------
# certificate, wrk shim, /etc/hosts, lock

def make_certificate(d: Path) -> tuple[Path, Path, dict]:
    """Writes an ECDSA P-256 self-signed certificate for bench.test (CN and SAN)
    and its PKCS#8 key into `d`. Returns (cert, key, info); raises BenchError."""
    cert, key = d / "bench.test.crt", d / "bench.test.key"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
                        "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"openssl req failed: {r.stderr[-1500:]}")
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"],
                          capture_output=True, text=True).stdout
    info = {"subject": f"CN={HOST}", "san": f"DNS:{HOST}",
            "key": "ECDSA P-256" if "P-256" in text else "?", "signature": "ecdsa-with-SHA256"}
    return cert, key, info


SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
/* wrk reuses one SSL per connection: SSL_shutdown + SSL_clear, then SSL_connect.
   SSL_clear keeps a cleanly closed session, so wrk resumes it.  Drop it first. */
int SSL_clear(void *s) {
    static int (*real_clear)(void *);
    static int (*set_session)(void *, void *);
    if (!real_clear) {
        real_clear = (int (*)(void *))dlsym(RTLD_NEXT, "SSL_clear");
        set_session = (int (*)(void *, void *))dlsym(RTLD_NEXT, "SSL_set_session");
    }
    if (set_session) set_session(s, NULL);
    return real_clear(s);
}
"""


def build_shim(d: Path) -> Path:
    """Compiles the no-resumption SSL_clear shim for wrk. Returns the .so path;
    raises BenchError without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise BenchError("no gcc: needed for wrk's no-resumption shim (apt-get install gcc)")
    src, so = d / "wrk_noresume.c", d / "wrk_noresume.so"
    src.write_text(SHIM_C)
    r = subprocess.run([gcc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"building {src} failed: {r.stderr[-1500:]}")
    return so


def probe_wrk_sessions(wrk: str, shim: Path, cert: Path, key: Path) -> dict:
    """Runs wrk -t1 -c1 -d1s -H 'Connection: close' against a small Python TLS
    server, with and without the shim, and counts full and resumed handshakes.
    Returns {"wrk": {...}, "wrk_with_shim": {...}, "sni": [...]}; raises BenchError
    when the shim does not stop resumption."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    seen_sni: set = set()
    ctx.sni_callback = lambda s, name, c: seen_sni.add(name)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(128)
    ls.settimeout(0.2)
    port = ls.getsockname()[1]
    counts = {"full": 0, "resumed": 0, "versions": set()}
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            try:
                c.settimeout(2)
                s = ctx.wrap_socket(c, server_side=True)
                counts["resumed" if s.session_reused else "full"] += 1
                counts["versions"].add(s.version())
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = s.recv(4096)
                    if not data:
                        break
                    buf += data
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\n"
                          + BODY)
                s.close()
            except (OSError, ssl.SSLError):
                c.close()

    out = {}
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        for label, env in (("wrk", None), ("wrk_with_shim", dict(os.environ, LD_PRELOAD=str(shim)))):
            counts.update(full=0, resumed=0)
            subprocess.run([wrk, "-t1", "-c1", "-d1s", "-H", "Connection: close",
                            f"https://127.0.0.1:{port}/"], env=env, capture_output=True,
                           timeout=30)
            time.sleep(0.3)
            out[label] = {"full_handshakes": counts["full"], "resumed": counts["resumed"]}
    finally:
        stop.set()
        t.join(5)
        ls.close()
    out["versions"] = sorted(counts["versions"])
    out["sni_sent_for_ip_url"] = sorted(seen_sni)
    if out["wrk_with_shim"]["resumed"] or not out["wrk_with_shim"]["full_handshakes"]:
        raise BenchError(f"the no-resumption shim did not work: {out}")
    return out


class HostsEntry:
    """`127.0.0.1 bench.test` in /etc/hosts for the run: add() appends it unless the
    name already resolves to 127.0.0.1; remove() takes out exactly that line."""

    def __init__(self, name: str):
        self.name, self.line = name, None

    def add(self) -> str:
        """Returns what it did; raises BenchError if the name resolves elsewhere."""
        try:
            addrs = {a[4][0] for a in socket.getaddrinfo(self.name, None, socket.AF_INET)}
        except socket.gaierror:
            addrs = set()
        if addrs == {"127.0.0.1"}:
            return f"{self.name} already resolves to 127.0.0.1"
        if addrs:
            raise BenchError(f"{self.name} resolves to {sorted(addrs)}, not 127.0.0.1")
        text = HOSTS_FILE.read_text()
        self.line = f"127.0.0.1\t{self.name}\t# hostd bench/tls.py pid {os.getpid()}\n"
        with open(HOSTS_FILE, "a") as f:
            f.write(("" if text.endswith("\n") or not text else "\n") + self.line)
        return f"added '127.0.0.1 {self.name}' to {HOSTS_FILE} for the run"

    def remove(self) -> None:
        if not self.line:
            return
        text = HOSTS_FILE.read_text()
        if self.line in text:
            # rewritten in place: /etc/hosts may be a bind mount (no rename over it)
            with open(HOSTS_FILE, "r+") as f:
                f.write(text.replace(self.line, "", 1))
                f.truncate()
        self.line = None


class BenchLock:
    """flock on /tmp/hostd-bench.lock for one server's turn."""

    def __init__(self, path: str):
        self.path, self.fd = path, None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {self.path} (another benchmark holds it)")
            t0 = time.monotonic()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            log(f"got {self.path} after {time.monotonic() - t0:.0f}s")
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


# --------------------------------------------------------------------------
# servers

def write_hostd_config(tmp: Path, port: int, plain_port: int, cert: Path, key: Path,
                       default_pool: bool) -> Path:
    """hostd main file (listen + listen_tls, frontends = 2) and pool bench.toml
    ([tls] with the shared pair, processes = 2, not isolated). Returns the main file."""
    d = tmp / "hostd"
    for sub in ("pools.d", "state", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    cfg = d / "hostd.toml"
    cfg.write_text(
        "[hostd]\n"
        f'listen = ["127.0.0.1:{plain_port}"]\n'
        f'listen_tls = ["127.0.0.1:{port}"]\n'
        + ('tls_default_pool = "bench"\n' if default_pool else "")
        + "frontends = 2\n"
        'pools_dir = "pools.d"\n'
        f'state_dir = "{d / "state"}"\n'
        f'run_dir = "{d / "run"}"\n'
    )
    (d / "pools.d" / "bench.toml").write_text(
        'app = "app:application"\n'
        f'directory = "{BENCH_DIR}"\n'
        f'bindings = ["{HOST}"]\n'
        'start_mode = "always_running"\n'
        "processes = 2\n"
        "threads = 1\n"
        'idle_timeout = "0"\n'
        "[isolation]\n"
        "enabled = false\n"
        "[tls]\n"
        f'certificate = "{cert}"\n'
        f'key = "{key}"\n'
    )
    return cfg


def write_nginx_config(tmp: Path, port: int, nginx: str, cert: Path, key: Path,
                       plain_port: int) -> Path:
    d = tmp / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    v = subprocess.run([nginx, "-V"], capture_output=True, text=True)
    vtext = v.stdout + v.stderr
    temps = []
    for mod in sorted(set(re.findall(r"--http-(\w+)-temp-path", vtext))):
        directive = "client_body" if mod == "client-body" else mod
        if f"--without-http_{directive}_module" in vtext:
            continue
        (d / f"{directive}_temp").mkdir(exist_ok=True)
        temps.append(f"    {directive}_temp_path {d / (directive + '_temp')};\n")
    cfg = d / "nginx.conf"
    cfg.write_text(
        "worker_processes 2;\n"
        f"pid {d / 'nginx.pid'};\n"
        f"error_log {d / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        "    keepalive_requests 1000000;\n"
        + "".join(temps) +
        "    server {\n"
        f"        listen 127.0.0.1:{port} ssl backlog=4096;\n"
        f"        server_name {HOST};\n"
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n"
        # nginx 1.22's default is TLSv1 TLSv1.1 TLSv1.2: TLS 1.3 like the others
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        default_type text/plain;\n"
        "        location / {\n"
        f'            return 200 "{BODY.decode()}";\n'
        "        }\n"
        "    }\n"
        # the same answer in plain HTTP: nginx's own HTTPS/plain ratio, the reference
        # for hostd's (what OpenSSL and wrk's TLS cost on this machine)
        "    server {\n"
        f"        listen 127.0.0.1:{plain_port} backlog=4096;\n"
        f"        server_name {HOST};\n"
        "        default_type text/plain;\n"
        "        location / {\n"
        f'            return 200 "{BODY.decode()}";\n'
        "        }\n"
        "    }\n"
        "}\n"
    )
    return cfg


def server_cmd(name: str, args, tools: dict, tmp: Path, cert: Path, key: Path, hostd_cmd):
    """(cmd, cwd, env) to start `name` on 127.0.0.1:args.port with TLS."""
    port = args.port
    if name == "hostd":
        cfg = write_hostd_config(tmp, port, args.plain_port, cert, key, args.no_hosts_file)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_DIR) + (os.pathsep + env["PYTHONPATH"]
                                             if env.get("PYTHONPATH") else "")
        return hostd_cmd + ["--config", str(cfg)], cfg.parent, env
    if name == "nginx":
        cfg = write_nginx_config(tmp, port, tools["nginx"], cert, key, args.plain_port)
        return [tools["nginx"], "-c", str(cfg), "-p", str(cfg.parent) + "/",
                "-e", str(cfg.parent / "error.log"), "-g", "daemon off;"], cfg.parent, None
    if name == "uwsgi":
        # --https: the HTTP router terminates TLS; --http-keepalive keeps the client's
        # connections; 2 router processes beside the 2 workers (--die-on-term: in uWSGI
        # 2.0 SIGTERM on the master means "reload").
        return [tools["uwsgi"], "--master", "--processes", "2",
                "--https", f"127.0.0.1:{port},{cert},{key}",
                "--http-keepalive", "--http-processes", "2",
                "--wsgi-file", str(APP_FILE), "--disable-logging", "--die-on-term"], BENCH_DIR, None
    if name == "granian":
        return [tools["granian"], "--interface", "wsgi", "--workers", "2",
                "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(BENCH_DIR),
                "--log-level", "warning", "--no-access-log",
                "--ssl-certificate", str(cert), "--ssl-keyfile", str(key),
                "app:application"], BENCH_DIR, None
    raise ValueError(name)


def ensure_uwsgi_https(tools: dict, venv: Path, no_install: bool) -> str | None:
    """None if bench/.venv's uwsgi has --https, else why not (after trying to
    rebuild it against libssl-dev unless no_install)."""
    def has_https():
        r = subprocess.run([tools["uwsgi"], "--help"], capture_output=True, text=True)
        return re.search(r"^\s+--https\s", r.stdout, re.M) is not None
    if has_https():
        return None
    if no_install:
        return "bench/.venv's uwsgi was built without SSL (no --https) and --no-install given"
    if not Path("/usr/include/openssl/ssl.h").exists():
        R._apt_install("libssl-dev")
    logf = venv / "pip-install-uwsgi-ssl.log"
    log(f"uwsgi has no --https: rebuilding it against OpenSSL (log: {logf})")
    with open(logf, "w") as f:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--no-binary", "uwsgi", "--no-cache-dir", "--force-reinstall", "uwsgi"],
                       stdout=f, stderr=subprocess.STDOUT)
    return None if has_https() else f"uwsgi rebuilt without --https (see {logf})"


# --------------------------------------------------------------------------
# client checks

def _client_ctx(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))   # verifies bench.test's name
    return ctx


def _read_response(sock) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before the headers ({buf[:80]!r})")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
    n = int(m.group(1)) if m else 0
    while len(body) < n:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed in the body")
        body += data
    return status, body[:n]


def get_once(port: int, ctx: ssl.SSLContext | None, sni: str | None, session=None):
    """One GET / (Host bench.test), over TLS with `ctx` (None: plain). Returns
    (status, body, info: version, cipher, reused, session)."""
    tls = ctx is not None
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s = ctx.wrap_socket(raw, server_hostname=sni, session=session) if tls else raw
        s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        status, body = _read_response(s)
        info = {}
        if tls:
            info = {"version": s.version(), "cipher": s.cipher()[0],
                    "reused": s.session_reused, "session": s.session}
        return status, body, info
    finally:
        raw.close()


def wait_ready(srv, args, cafile: Path, sni: str | None, timeout: float = R.READY_TIMEOUT):
    """Polls GET / over TLS (and plain for hostd) until 200 and bench/app.py's body."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    ctx = _client_ctx(cafile)
    checks = [(args.port, ctx)] + ([(args.plain_port, None)] if srv.name in ("hostd", "nginx")
                                   else [])
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise BenchError(f"{srv.name} exited with status {srv.proc.returncode} before "
                             f"answering; log {srv.logfile}:\n{srv.log_tail()}")
        try:
            ok = True
            for port, c in checks:
                status, body, _ = get_once(port, c, sni)
                if status != 200 or body != BODY:
                    ok, last = False, f"port {port}: status {status}, body {body[:60]!r}"
            if ok:
                return
        except (OSError, ssl.SSLError, ValueError, IndexError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise BenchError(f"{srv.name} did not answer 200 {BODY!r} on 127.0.0.1:{args.port} within "
                     f"{timeout:.0f}s (last: {last}); log {srv.logfile}:\n{srv.log_tail()}")


def tls_probe(port: int, cafile: Path, sni: str | None) -> dict:
    """What the server negotiates with OpenSSL's client (s_client -brief: version,
    cipher, key exchange group, signature) and whether it resumes a session from
    its own ticket (1 connection, then 4 with its session). Not measured."""
    out: dict = {}
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"]
    if sni:
        cmd += ["-servername", sni]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=10)
        for line in (r.stdout + r.stderr).splitlines():
            k, sep, v = line.partition(": ")
            if sep and k in ("Protocol version", "Ciphersuite", "Signature type",
                             "Server Temp Key"):
                out[k] = v.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        out["s_client_error"] = str(e)
    try:
        ctx = _client_ctx(cafile)
        _s, _b, first = get_once(port, ctx, sni)
        sess, reused = first["session"], 0
        for _ in range(4):
            _s, _b, info = get_once(port, ctx, sni, session=sess)
            reused += bool(info["reused"])
        out["resumed_of_4"] = reused
        out["ticket"] = bool(sess is not None and sess.has_ticket)
    except (OSError, ssl.SSLError, ValueError) as e:
        out["resume_error"] = f"{type(e).__name__}: {e}"
    return out


def _comm(pid: int) -> str:
    """A process's name for the CPU split: hostd's proctitle without its slot or pool
    number ("hostd: frontend", "hostd: worker"; the supervisor's comm is "hostd"),
    else /proc/PID/comm."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    if comm == "hostd":
        return "hostd: supervisor"
    m = re.match(r"hostd: (\w+)", comm)
    return f"hostd: {m.group(1)}" if m else comm


def cpu_split(before: dict, after: dict) -> dict:
    """{process name: CPU seconds} between two R.server_cpu samples."""
    out: dict = {}
    for (pid, start), t in after.items():
        name = _comm(pid)
        out[name] = out.get(name, 0.0) + (t - before.get((pid, start), 0)) / R.CLK_TCK
    return out


# --------------------------------------------------------------------------
# wrk

def run_wrk(wrk: str, url: str, duration: float, conns: int, close: bool,
            shim: Path | None) -> tuple[dict, str]:
    cmd = [wrk, f"-t{WRK_THREADS}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(url)
    env = dict(os.environ, LD_PRELOAD=str(shim)) if shim else None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, env=env)
    out = r.stdout + r.stderr
    if r.returncode != 0 and "Requests/sec" not in out:
        raise BenchError(f"wrk failed (exit {r.returncode}): {' '.join(cmd)}\n{out}")
    res = R.parse_wrk(out)
    if res["rps"] is None:
        raise BenchError(f"could not parse wrk output:\n{out}")
    shown = ("LD_PRELOAD=wrk_noresume.so " if shim else "") + " ".join(cmd)
    return res, shown


def server_modes(name: str, args) -> list[str]:
    modes = ["https-keepalive", "https-new"]
    if args.resumed:
        modes.append("https-resumed")
    if name in ("hostd", "nginx"):
        modes.append("plain-keepalive")
    return modes


def bench_turn(name: str, args, tools, tmp, cert, key, shim, hostd_cmd, rnd: int) -> dict:
    """Starts `name`, checks it, warms it up, measures its modes, stops it."""
    R.wait_port_free(args.port)
    if name in ("hostd", "nginx"):
        R.wait_port_free(args.plain_port)
    cmd, cwd, env = server_cmd(name, args, tools, tmp, cert, key, hostd_cmd)
    srv = R.Server(name, cmd, tmp / f"{name}.log", cwd, env)
    host = "127.0.0.1" if args.no_hosts_file else HOST
    sni = None if args.no_hosts_file else HOST
    urls = {"https": f"https://{host}:{args.port}/", "http": f"http://{host}:{args.plain_port}/"}
    result = {"server": name, "round": rnd, "cmd": cmd, "modes": {}, "notes": [],
              "loadavg": os.getloadavg()}
    log(f"round {rnd}: {name}: starting")
    srv.start()
    try:
        wait_ready(srv, args, cert, sni)
        result["tls"] = tls_probe(args.port, cert, sni)
        run_wrk(tools["wrk"], urls["https"], WARMUP_SECONDS, WARMUP_CONNS, False, None)
        if name == "hostd":
            hostctl = R.hostctl_cmd(args.hostctl)
            n, info = R.hostd_status(cwd / "hostd.toml", hostctl)
            tries = 0
            while n is not None and n < 2 and tries < 3:
                tries += 1
                log(f"hostd: {info}; warming up again to grow the pool")
                run_wrk(tools["wrk"], urls["https"], WARMUP_SECONDS, WARMUP_CONNS, False, None)
                n, info = R.hostd_status(cwd / "hostd.toml", hostctl)
            if n is None:
                log(f"hostd: pool size not checked: {info}")
            elif n < 2:
                log(f"WARNING: hostd: {info}: fewer than 2 workers")
            result["notes"].append(f"pool: {info}")
        run_wrk(tools["wrk"], urls["https"], WARMUP_SECONDS, args.connections, True, shim)
        for mode in server_modes(name, args):
            scheme, close, no_resume = MODES[mode]
            before = R.server_cpu(srv.proc.pid)
            res, wcmd = run_wrk(tools["wrk"], urls[scheme], args.duration, args.connections,
                                close, shim if no_resume else None)
            after = R.server_cpu(srv.proc.pid)
            cpu_s, nproc = R.cpu_delta(before, after)
            res.update(server_cpu_s=cpu_s, server_procs=nproc, wrk_cmd=wcmd,
                       cpu_by_process=cpu_split(before, after),
                       cpu_us_per_req=cpu_s * 1e6 / res["requests"] if res["requests"] else None)
            result["modes"][mode] = res
            errs = {k: v for k, v in res["socket_errors"].items() if v}
            extra = ""
            if res["non_2xx_3xx"] or errs:
                extra = f"  ERRORS: non-2xx/3xx={res['non_2xx_3xx']} socket={errs or 0}"
            cpu = "-" if res["cpu_us_per_req"] is None else f"{res['cpu_us_per_req']:.1f}"
            log(f"round {rnd}: {name:8s} {mode:16s} {res['rps']:9.0f} rps  "
                f"p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  "
                f"cpu {cpu} us/req ({nproc} procs){extra}")
        if srv.proc.poll() is not None:
            result["notes"].append(f"server exited during the run (status {srv.proc.returncode})")
    finally:
        log(f"round {rnd}: {name}: stopping")
        srv.stop()
        R.wait_port_free(args.port)
    return result


# --------------------------------------------------------------------------
# summary

def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict], servers: list[str]) -> tuple[list[dict], list[dict]]:
    by: dict = {}   # (server, mode) -> {round: res}
    for r in runs:
        for mode, res in r["modes"].items():
            by.setdefault((r["server"], mode), {})[r["round"]] = res

    def per_round_ratio(a, b):
        """median over rounds of rps(a) / rps(b), both from the same round"""
        x, y = by.get(a), by.get(b)
        if not x or not y:
            return None
        return _median([x[k]["rps"] / y[k]["rps"] for k in x if k in y and y[k]["rps"]])

    rows = []
    for s in servers:
        for mode in MODES:
            rr = by.get((s, mode))
            if not rr:
                continue
            vals = list(rr.values())
            rows.append({
                "server": s, "mode": mode, "rounds": len(vals),
                "rps": statistics.median(v["rps"] for v in vals),
                "rps_by_round": [rr[k]["rps"] for k in sorted(rr)],
                "p50_ms": _median(v["p50_ms"] for v in vals),
                "p99_ms": _median(v["p99_ms"] for v in vals),
                "cpu_us_per_req": _median(v.get("cpu_us_per_req") for v in vals),
                "non_2xx_3xx": sum(v["non_2xx_3xx"] for v in vals),
                "socket_errors": sum(sum(v["socket_errors"].values()) for v in vals),
                "ratio_to_hostd": per_round_ratio((s, mode), ("hostd", mode)),
            })

    targets = []

    def target(text, a, b, need):
        v = per_round_ratio(a, b)
        targets.append({"target": text, "value": v, "need": need, "num": list(a), "den": list(b),
                        "pass": None if v is None else v >= need})

    target("hostd HTTPS keep-alive >= 0.8x its plain keep-alive",
           ("hostd", "https-keepalive"), ("hostd", "plain-keepalive"), 0.8)
    # reference, not a target: the same ratio for nginx (C, the same OpenSSL, the same
    # wrk on the same 2 cores)
    targets.append({"target": "(reference) nginx HTTPS keep-alive / its plain keep-alive",
                    "value": per_round_ratio(("nginx", "https-keepalive"),
                                             ("nginx", "plain-keepalive")),
                    "need": None, "num": ["nginx", "https-keepalive"],
                    "den": ["nginx", "plain-keepalive"], "pass": None})
    target("hostd new TLS conns/s >= 0.7x nginx", ("hostd", "https-new"), ("nginx", "https-new"), 0.7)
    target("hostd new TLS conns/s >= 1.0x uWSGI", ("hostd", "https-new"), ("uwsgi", "https-new"), 1.0)
    target("hostd new TLS conns/s >= 1.0x Granian", ("hostd", "https-new"),
           ("granian", "https-new"), 1.0)
    return rows, targets


def hostd_split_lines(runs) -> list[str]:
    """hostd's CPU µs per request by process kind, per mode, medians over rounds."""
    per: dict = {}   # mode -> kind -> [us/req per round]
    for run in runs:
        if run["server"] != "hostd":
            continue
        for mode, res in run["modes"].items():
            if res.get("requests"):
                for kind, sec in res.get("cpu_by_process", {}).items():
                    per.setdefault(mode, {}).setdefault(kind, []).append(
                        sec * 1e6 / res["requests"])
    out = []
    for mode, kinds in per.items():
        meds = sorted(((k, statistics.median(v)) for k, v in kinds.items()), key=lambda kv: -kv[1])
        out.append(f"      CPU us/req by process ({mode}): "
                   + ", ".join(f"{k.replace('hostd: ', '')} {v:.1f}" for k, v in meds if v > 0.05))
    return out


def format_targets(targets) -> list[str]:
    out = []
    for t in targets:
        if t["need"] is None and t["value"] is not None:
            out.append(f"  INFO  {t['target']}: {t['value']:.2f}x")
        elif t["pass"] is None:
            out.append(f"  SKIP  {t['target']} (no data)")
        else:
            out.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']:.2f}x")
    return out


def print_report(rows, targets, meta, runs) -> None:
    print()
    print(f"hostd HTTPS benchmark: {meta['rounds']} round(s) x {meta['duration']:g}s, "
          f"wrk -t{WRK_THREADS} -c{meta['connections']}, {meta['nproc']} CPUs (wrk shares them); "
          f"loadavg start {' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}, end "
          f"{' '.join(f'{x:.2f}' for x in meta.get('loadavg_end', ()))}")
    print(f"certificate: {meta['certificate']['key']}, {meta['certificate']['subject']}, "
          f"SAN {meta['certificate']['san']}; SNI: {meta['sni']}")
    print("medians over rounds; x hostd = median over rounds of (rps / hostd's rps in the same "
          "mode and round);")
    print("cpu us/req = utime+stime of the server's process tree (/proc) during the wrk run / "
          "requests completed")
    print("https-new: Connection: close, full handshake per connection (wrk's resumption off); "
          "https-resumed: wrk's own resumption")
    print(f"load average at each turn: {meta.get('turn_loadavg', '-')}")
    print()
    hdr = (f"{'server':9s} {'mode':16s} {'rps':>9s} {'x hostd':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
           f"{'cpu us/req':>10s}  {'rps by round':18s} errors")
    print(hdr)
    print("-" * len(hdr))
    last = None
    for r in rows:
        if last is not None and r["server"] != last:
            print()
        last = r["server"]
        f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        errs = []
        if r["non_2xx_3xx"]:
            errs.append(f"non-2xx/3xx {r['non_2xx_3xx']}")
        if r["socket_errors"]:
            errs.append(f"socket {r['socket_errors']}")
        print(f"{r['server']:9s} {r['mode']:16s} {r['rps']:9.0f} {f(r['ratio_to_hostd']):>8s} "
              f"{f(r['p50_ms']):>8s} {f(r['p99_ms']):>8s} {f(r['cpu_us_per_req'], 1):>10s}  "
              f"{'/'.join(f'{x:.0f}' for x in r['rps_by_round']):18s} {', '.join(errs) or '-'}")
    print()
    shown = list(dict.fromkeys(r["server"] for r in rows))
    probes = {}
    for run in runs:
        if run.get("tls"):
            probes.setdefault(run["server"], run["tls"])
    for name in shown:
        label, conns = SERVERS[name]
        print(f"  {name}: {label}")
        print(f"      connections: {conns}")
        p = probes.get(name)
        if p:
            bits = [p.get("Protocol version", "?"), p.get("Ciphersuite", "?"),
                    "key exchange " + p.get("Server Temp Key", "?"),
                    "signature " + p.get("Signature type", "?")]
            res = (f"resumes its own session {p['resumed_of_4']}/4" if "resumed_of_4" in p
                   else p.get("resume_error", "?"))
            print(f"      TLS (openssl s_client): {', '.join(bits)}; {res}"
                  f"{' (ticket)' if p.get('ticket') else ''}")
        if name == "hostd":
            for line in hostd_split_lines(runs):
                print(line)
    for name, why in meta.get("skipped", {}).items():
        print(f"  {name}: SKIPPED: {why}")
    ws = meta.get("wrk_tls_sessions", {})
    if ws:
        print(f"  wrk's TLS sessions (own Python TLS server, -c1 1 s, Connection: close): "
              f"plain wrk {ws['wrk']['full_handshakes']} full + {ws['wrk']['resumed']} resumed; "
              f"with the shim {ws['wrk_with_shim']['full_handshakes']} full + "
              f"{ws['wrk_with_shim']['resumed']} resumed")
    print()
    print("TARGETS (issue 14):")
    for line in format_targets(targets):
        print(line)


# --------------------------------------------------------------------------

def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(ALL_SERVERS)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SERVERS]
    if bad:
        raise SystemExit(f"--only: unknown server(s) {bad}; known: {', '.join(ALL_SERVERS)}")
    return [s for s in ALL_SERVERS if s in names]


def versions(tools: dict, hostd_cmd) -> dict:
    v = R.tool_versions(tools, hostd_cmd)
    if hostd_cmd:   # hostd has no --version: the checkout's commit (+ "dirty": others' edits)
        git = lambda *a: subprocess.run(["git", "-C", str(REPO_DIR), *a], capture_output=True,  # noqa: E731
                                        text=True).stdout.strip()
        v["hostd"] = (f"checkout {git('rev-parse', '--short', 'HEAD')}"
                      + (" + uncommitted changes" if git("status", "--porcelain", "--", "hostd",
                                                         "workers") else ""))
    v["openssl_cli"] = subprocess.run(["openssl", "version"], capture_output=True,
                                      text=True).stdout.strip()
    v["python_ssl"] = ssl.OPENSSL_VERSION
    if hostd_cmd:
        py = REPO_DIR / ".venv" / "bin" / "python"
        if py.exists():
            v["hostd_python_ssl"] = subprocess.run(
                [str(py), "-c", "import ssl, sys; print(sys.version.split()[0], ssl.OPENSSL_VERSION)"],
                capture_output=True, text=True).stdout.strip()
    if "granian" in tools:
        gpy = Path(tools["granian"]).parent / "python"
        v["granian_pkg"] = subprocess.run(
            [str(gpy), "-c", "import importlib.metadata as m; print(m.version('granian'))"],
            capture_output=True, text=True).stdout.strip() + " (rustls)"
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (whole seconds: wrk takes no fractions; default 10)")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--only", help=f"comma list of servers: {','.join(ALL_SERVERS)}")
    ap.add_argument("--resumed", action="store_true",
                    help="also measure https-resumed: Connection: close with wrk's own session "
                    "resumption")
    ap.add_argument("--port", type=int, default=18443, help="TLS port every server listens on "
                    "(default 18443)")
    ap.add_argument("--plain-port", type=int, default=18080,
                    help="hostd's plain listener for plain-keepalive (default 18080)")
    ap.add_argument("--no-hosts-file", action="store_true",
                    help="do not add bench.test to /etc/hosts: wrk uses 127.0.0.1 (SNI "
                    "'127.0.0.1') and hostd gets tls_default_pool = \"bench\"")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    ap.add_argument("--venv", default=os.environ.get("BENCH_VENV", str(BENCH_DIR / ".venv")),
                    help="venv for uwsgi and granian (default bench/.venv)")
    ap.add_argument("--hostd", default=os.environ.get("HOSTD"),
                    help="hostd command (default: the checkout's .venv/bin/hostd)")
    ap.add_argument("--hostctl", default=os.environ.get("HOSTCTL"),
                    help="hostctl command (default: the checkout's .venv/bin/hostctl)")
    ap.add_argument("--lock", default=LOCK_PATH, help=f"flock file held for each server's turn "
                    f"(default {LOCK_PATH})")
    ap.add_argument("--no-install", action="store_true", help="never apt-get/pip install")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the tmpdir (configs, logs)")
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        ap.error("--rounds and --connections must be >= 1 and --duration > 0")
    if args.port == args.plain_port:
        ap.error("--port and --plain-port must differ")

    selected = parse_only(args.only)
    tools = R.ensure_tools(selected, Path(args.venv), args.no_install)
    if "uwsgi" in selected:
        why = ensure_uwsgi_https(tools, Path(args.venv), args.no_install)
        if why:
            selected.remove("uwsgi")
            tools["skipped"]["uwsgi"] = why
            log(f"SKIP uwsgi: {why}")
    if not selected:
        raise BenchError("no server left to benchmark")
    hostd_cmd = R.hostd_cmd_default(args.hostd) if "hostd" in selected else None

    # SIGTERM runs the finally blocks (servers stopped, /etc/hosts restored)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="hostd-bench-tls-"))
    hosts = HostsEntry(HOST)
    runs, failures = [], []
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "kernel": platform.release(), "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "rounds": args.rounds, "duration": args.duration,
        "connections": args.connections, "port": args.port, "plain_port": args.plain_port,
        "servers": selected, "skipped": tools.get("skipped", {}),
        "versions": versions(tools, hostd_cmd), "tmpdir": str(tmp),
        "wrk": f"-t{WRK_THREADS} -c{args.connections} --latency",
        "warmup": f"wrk -t{WRK_THREADS} -c{WARMUP_CONNS} -d{WARMUP_SECONDS}s keep-alive, then "
                  f"{WARMUP_SECONDS}s of new connections",
    }
    try:
        cert, key, meta["certificate"] = make_certificate(tmp)
        shim = build_shim(tmp)
        meta["wrk_tls_sessions"] = probe_wrk_sessions(tools["wrk"], shim, cert, key)
        log(f"wrk and TLS sessions: {meta['wrk_tls_sessions']}")
        if args.no_hosts_file:
            meta["sni"] = ("URLs https://127.0.0.1:PORT/: wrk sends SNI '127.0.0.1'; hostd's "
                           "tls_default_pool = \"bench\" takes the unbound name")
        else:
            meta["sni"] = f"{hosts.add()}; wrk sends SNI {HOST} (https://{HOST}:PORT/)"
        log(f"SNI: {meta['sni']}")
        log(f"servers: {', '.join(selected)}; {args.rounds} round(s) x {args.duration:g}s; "
            f"tmpdir {tmp}")
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(selected)
            for name in selected[k:] + selected[:k]:
                try:
                    with BenchLock(args.lock):
                        runs.append(bench_turn(name, args, tools, tmp, cert, key, shim,
                                               hostd_cmd, rnd))
                except BenchError as e:
                    log(f"round {rnd}: {name} FAILED: {e}")
                    failures.append({"server": name, "round": rnd, "error": str(e)})
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        hosts.remove()
        meta["loadavg_end"] = os.getloadavg()

    loads = [r["loadavg"][0] for r in runs]
    if loads:
        meta["turn_loadavg"] = f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"
    rows, targets = summarize(runs, selected)
    print_report(rows, targets, meta, runs)
    for f in failures:
        print(f"FAILED: round {f['round']} {f['server']}: {f['error'].splitlines()[0]}")
    if args.json:
        for run in runs:   # the probe's SSLSession objects are not JSON
            run.get("tls", {}).pop("session", None)
        out = {"meta": meta, "summary": rows, "targets": targets, "runs": runs,
               "failures": failures}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
        log(f"wrote {args.json}")
    if args.keep_tmp or failures:
        log(f"configs and server logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures or not runs else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"ERROR: {e}")
        sys.exit(2)
