#!/usr/bin/env python3
"""ASGI benchmark (issue 15): hostd vs uvicorn, Granian and hypercorn.

    sudo python3 bench/asgi.py [--rounds 3] [--duration 8] [--connections 50]
                               [--ws-clients 50] [--ws-size 32]
                               [--only hostd,uvicorn,granian,hypercorn[,uvicorn-wsproto]]
                               [--json out.json] [--keep-tmp]

One interleaved run: in each round every selected server gets a turn (the order
rotates by one each round), one server at a time, under /tmp/hostd-bench.lock
(flock). Everyone runs the same plain ASGI app (bench/asgi_app.py: `GET /` ->
{"hello":"world"} as application/json, `/ws` a WebSocket echo) with 2 worker
processes and uvloop. Each turn measures:

- http-json: `wrk -t2 -cN --latency http://127.0.0.1:PORT/` (keep-alive);
- ws-echo: bench/wsecho.c (built here with gcc; bench/wsecho.py without gcc): M
  WebSocket connections, each sending a small masked text frame and waiting for
  its echo, in a loop, for D seconds; it counts only echoes equal to what it sent.

Server CPU per request or message: utime+stime of the server's whole process tree
from /proc (bench/run's server_cpu) over the measured window / requests or messages.
The WebSocket client connects and handshakes first and says "ready"; the CPU is
sampled, the client told "go", and sampled again when it reports, before it closes
anything. See bench/README.md ("ASGI: bench/asgi.py").
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import tls as T  # noqa: E402  bench/tls.py: its lock, CPU split and bench/run (T.R)

R = T.R
log, BenchError = R.log, R.BenchError

APP_MODULE = "asgi_app:app"
APP_FILE = BENCH_DIR / "asgi_app.py"
BODY = b'{"hello":"world"}'
CLIENT_C = BENCH_DIR / "wsecho.c"
CLIENT_PY = BENCH_DIR / "wsecho.py"
LOCK_PATH = T.LOCK_PATH
WRK_THREADS = 2
WS_THREADS = 2                    # the WebSocket client's threads, as wrk's
WARMUP_CONNS = 200                # also grows hostd's pool to processes = 2
WARMUP_SECONDS = 1
#: hostd's garden grows when its worker was saturated over a whole one-second sample
#: (workers/asgi.py LOOP_SATURATED, hostd/garden.py): a warm-up to grow it must span one
GROW_WARMUP_SECONDS = 3
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# name -> (label, pip packages it needs in bench/.venv)
SERVERS = {
    "hostd": ("hostd: frontends = 2, pool interface = \"asgi\", processes = 2, "
              "event_loop = \"uvloop\", always_running, [isolation] enabled = false", []),
    "uvicorn": ("uvicorn --http httptools --loop uvloop --ws websockets-sansio --workers 2 "
                "(websockets-sansio: what --ws auto picks with websockets installed)",
                ["uvicorn", "uvloop", "httptools", "websockets"]),
    "granian": ("granian --interface asgi --workers 2 --loop uvloop (Rust HTTP and WebSocket)",
                ["granian", "uvloop"]),
    "hypercorn": ("hypercorn --workers 2 --worker-class uvloop (h11, wsproto)",
                  ["hypercorn", "uvloop", "wsproto"]),
    "uvicorn-wsproto": ("uvicorn --http httptools --loop uvloop --ws wsproto --workers 2 "
                        "(extra, only with --only: the same framing library as hostd's)",
                        ["uvicorn", "uvloop", "httptools", "wsproto"]),
}
DEFAULT_SERVERS = ["hostd", "uvicorn", "granian", "hypercorn"]
MODES = {
    "http-json": "hello JSON, keep-alive (wrk -t2)",
    "ws-echo": "WebSocket echo round trips (bench/wsecho)",
}
UNIT = {"http-json": "req", "ws-echo": "msg"}
PEER_PACKAGES = ["uvicorn", "uvloop", "httptools", "granian", "hypercorn", "wsproto",
                 "websockets", "h11"]


# --------------------------------------------------------------------------
# installation and the client

def ensure_peers(selected: list[str], venv: Path, no_install: bool) -> dict:
    """Checks (and pip-installs unless no_install) what the selected peers need in
    `venv`. Removes those that cannot be had from `selected` (in place). Returns
    {"python": ..., "skipped": {name: why}}."""
    out: dict = {"skipped": {}}
    need = sorted({p for s in selected for p in SERVERS[s][1]})
    if not need:
        return out
    py = venv / "bin" / "python"
    if not py.exists():
        if no_install:
            raise BenchError(f"no venv at {venv} and --no-install given")
        log(f"creating venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    out["python"] = str(py)

    def missing():
        code = ("import importlib.util as u, sys; "
                f"print(' '.join(p for p in {need!r} if u.find_spec(p) is None))")
        return subprocess.run([str(py), "-c", code], capture_output=True,
                              text=True).stdout.split()

    lack = missing()
    if lack and not no_install:
        logf = venv / "pip-install-asgi.log"
        log(f"pip install {' '.join(lack)} into {venv} (log: {logf})")
        with open(logf, "w") as f:
            r = subprocess.run([str(py), "-m", "pip", "install", "-q", *lack],
                               stdout=f, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            log(f"pip install FAILED (exit {r.returncode}):\n"
                f"{logf.read_text(errors='replace')[-2000:]}")
        lack = missing()
    for s in list(selected):
        gone = [p for p in SERVERS[s][1] if p in lack]
        if gone:
            selected.remove(s)
            out["skipped"][s] = f"missing in {venv}: {', '.join(gone)}"
            log(f"SKIP {s}: {out['skipped'][s]}")
    return out


def package_versions(py: str | None) -> dict:
    if not py:
        return {}
    code = ("import importlib.metadata as m, json\n"
            "out = {}\n"
            f"for p in {PEER_PACKAGES!r}:\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"error": r.stderr[-300:]}


def build_client(tmp: Path) -> tuple[list[str], str]:
    """(command, description) of the WebSocket load client: bench/wsecho.c built
    with gcc -O2 into the tmpdir, or bench/wsecho.py if there is no gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        log("WARNING: no gcc: the WebSocket client is the Python fallback (bench/wsecho.py), "
            "much slower than the C one: ws-echo figures then describe the client")
        py = BENCH_DIR / ".venv" / "bin" / "python"
        return [str(py if py.exists() else sys.executable), str(CLIENT_PY)], \
            "bench/wsecho.py (Python fallback: no gcc)"
    exe = tmp / "wsecho"
    r = subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(CLIENT_C), "-lpthread"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"building {CLIENT_C} failed:\n{r.stderr[-2000:]}")
    ver = subprocess.run([gcc, "--version"], capture_output=True, text=True).stdout
    return [str(exe)], f"bench/wsecho.c ({ver.splitlines()[0] if ver else gcc} -O2)"


class WsClient:
    """One run of the load client: start() (connect + handshakes), go(), result()."""

    def __init__(self, cmd: list[str], port: int, conns: int, duration: float, size: int,
                 threads: int = WS_THREADS):
        self.argv = cmd + ["-a", "127.0.0.1", "-p", str(port), "-u", "/ws", "-c", str(conns),
                           "-t", str(threads), "-d", f"{duration:g}", "-s", str(size)]
        self.duration = duration
        self.proc = None

    def _line(self, prefix: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"ws client: no '{prefix}' line within {timeout:.0f}s")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if not r:
                continue
            ch = os.read(self.proc.stdout.fileno(), 1)
            if not ch:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise BenchError(f"ws client exited (status {self.proc.wait()}) before "
                                 f"'{prefix}': {buf.decode(errors='replace')}{err}")
            buf += ch
            if ch == b"\n":
                line = buf.decode().strip()
                buf = b""
                if line.startswith(prefix + " "):
                    return json.loads(line[len(prefix) + 1:])

    def start(self) -> dict:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        return self._line("ready", 60)

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        return self._line("result", self.duration + 30)

    def finish(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.write(b"bye\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def run(self) -> dict:
        """start, go, result, finish: for warm-ups and the self-test"""
        try:
            ready = self.start()
            if not ready["connected"]:
                raise BenchError(f"ws client: no connection: {ready['first_error']}")
            self.go()
            res = self.result()
            res["ready"] = ready
            return res
        finally:
            self.finish()


# --------------------------------------------------------------------------
# the client's self-test: a deliberately imperfect echo server

def _accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise ConnectionError("eof")
        b += d
    return b


def _read_client_frame(s: socket.socket) -> tuple[int, bytes]:
    h = _recv_exact(s, 2)
    if not h[1] & 0x80:
        raise ValueError("unmasked client frame")
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exact(s, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exact(s, 8))[0]
    mask = _recv_exact(s, 4)
    p = _recv_exact(s, n)
    return h[0] & 0x0F, bytes(b ^ mask[i & 3] for i, b in enumerate(p))


def _server_frame(op: int, p: bytes, fin: bool = True) -> bytes:
    assert len(p) < 126
    return bytes([(0x80 if fin else 0) | op, len(p)]) + p


SELFTEST_CORRUPT_AT = 7           # the 7th echo of each connection is wrong


def selftest_client(cmd: list[str]) -> dict:
    """Runs the client (2 connections, 1 s) against a threaded echo server that
    answers message 3 with a ping first (the pong must come back with its
    payload), message 4 in two fragments, and message 7 with one byte changed.
    The client must count exactly 6 echoes per connection, 1 bad payload per
    connection, 1 ping each, and send only masked frames. Raises BenchError."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ls.settimeout(0.2)
    port = ls.getsockname()[1]
    stop = threading.Event()
    seen = {"echoed_ok": 0, "corrupted": 0, "pongs_ok": 0, "problems": []}
    lock = threading.Lock()

    def handle(c: socket.socket):
        try:
            c.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                head += c.recv(4096)
            key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head).group(1).decode()
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nsec-websocket-accept: "
                      + _accept_value(key).encode() + b"\r\n\r\n")
            k = 0
            while not stop.is_set():
                op, p = _read_client_frame(c)
                if op == 8:
                    return
                k += 1
                if k == 3:
                    c.sendall(_server_frame(9, b"ping-3") + _server_frame(1, p))
                    op2, p2 = _read_client_frame(c)
                    with lock:
                        if op2 == 10 and p2 == b"ping-3":
                            seen["pongs_ok"] += 1
                        else:
                            seen["problems"].append(f"expected a pong, got op {op2} {p2!r}")
                    with lock:
                        seen["echoed_ok"] += 1
                elif k == 4:
                    c.sendall(_server_frame(1, p[:10], fin=False) + _server_frame(0, p[10:]))
                    with lock:
                        seen["echoed_ok"] += 1
                elif k == SELFTEST_CORRUPT_AT:
                    c.sendall(_server_frame(1, p[:-1] + (b"y" if p[-1:] != b"y" else b"z")))
                    with lock:
                        seen["corrupted"] += 1
                else:
                    c.sendall(_server_frame(1, p))
                    with lock:
                        seen["echoed_ok"] += 1
        except (OSError, ConnectionError, ValueError, AttributeError) as e:
            if not stop.is_set() and str(e) != "eof":
                with lock:
                    seen["problems"].append(f"{type(e).__name__}: {e}")
        finally:
            c.close()

    def serve():
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        res = WsClient(cmd, port, 2, 1.0, 32, threads=1).run()
    finally:
        stop.set()
        t.join(2)
        ls.close()
    want_ok = 2 * (SELFTEST_CORRUPT_AT - 1)
    out = {"client_messages": res["messages"], "client_bad_payload": res["bad_payload"],
           "client_pings": res["pings"], "client_alive_at_end": res["alive_at_end"],
           "server_echoed_ok": seen["echoed_ok"], "server_corrupted": seen["corrupted"],
           "server_pongs_ok": seen["pongs_ok"], "problems": seen["problems"],
           "accept_for_fixed_key": _accept_value(WS_KEY)}
    ok = (res["messages"] == want_ok == seen["echoed_ok"] and res["bad_payload"] == 2
          and seen["corrupted"] == 2 and res["pings"] == 2 and seen["pongs_ok"] == 2
          and res["alive_at_end"] == 0 and res["protocol_errors"] == 0 and not seen["problems"]
          and out["accept_for_fixed_key"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    out["ok"] = ok
    if not ok:
        raise BenchError(f"the WebSocket client's self-test failed (want {want_ok} echoes "
                         f"counted, 2 bad, 2 pongs): {out}; client said {res}")
    return out


# --------------------------------------------------------------------------
# servers

def hostd_asgi_missing(hostd_cmd: list[str], cfg: Path) -> str | None:
    """None if this checkout's hostd can run the ASGI pool, else why not."""
    if not (REPO_DIR / "workers" / "asgi.py").exists():
        return "no workers/asgi.py in the checkout"
    r = subprocess.run(hostd_cmd + ["--config", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=60, env=hostd_env(),
                       cwd=cfg.parent)
    if r.returncode != 0:
        text = (r.stdout + r.stderr).strip()
        return f"`hostd --check-config` refuses the ASGI pool: {text[-800:]}"
    return None


def hostd_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_DIR) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
    return env


def write_hostd_config(tmp: Path, port: int, loop: str) -> Path:
    """hostd main file (listen, frontends = 2) and pool bench.toml (interface =
    "asgi", processes = 2, not isolated). Returns the main file."""
    d = tmp / "hostd"
    for sub in ("pools.d", "state", "run"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    cfg = d / "hostd.toml"
    cfg.write_text(
        "[hostd]\n"
        f'listen = ["127.0.0.1:{port}"]\n'
        "frontends = 2\n"
        'pools_dir = "pools.d"\n'
        f'state_dir = "{d / "state"}"\n'
        f'run_dir = "{d / "run"}"\n'
    )
    (d / "pools.d" / "bench.toml").write_text(
        f'app = "{APP_MODULE}"\n'
        'interface = "asgi"\n'
        + (f'event_loop = "{loop}"\n' if loop != "auto" else "")
        + f'directory = "{BENCH_DIR}"\n'
        'bindings = ["*"]\n'
        'start_mode = "always_running"\n'
        "processes = 2\n"
        'idle_timeout = "0"\n'
        "[isolation]\n"
        "enabled = false\n"
    )
    return cfg


def server_cmd(name: str, args, venv: Path, tmp: Path, hostd_cmd):
    """(cmd, cwd, env) to start `name` on 127.0.0.1:args.port."""
    port, b = args.port, venv / "bin"
    if name == "hostd":
        cfg = write_hostd_config(tmp, port, args.hostd_loop)
        return hostd_cmd + ["--config", str(cfg)], cfg.parent, hostd_env()
    if name in ("uvicorn", "uvicorn-wsproto"):
        ws = "wsproto" if name == "uvicorn-wsproto" else "websockets-sansio"
        return [str(b / "uvicorn"), "--http", "httptools", "--loop", "uvloop", "--ws", ws,
                "--workers", "2", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning", "--app-dir", str(BENCH_DIR),
                APP_MODULE], BENCH_DIR, None
    if name == "granian":
        return [str(b / "granian"), "--interface", "asgi", "--workers", "2", "--loop", "uvloop",
                "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(BENCH_DIR),
                "--log-level", "warning", "--no-access-log", APP_MODULE], BENCH_DIR, None
    if name == "hypercorn":
        return [str(b / "hypercorn"), "--workers", "2", "--worker-class", "uvloop",
                "--bind", f"127.0.0.1:{port}", "--log-level", "warning", APP_MODULE], \
            BENCH_DIR, None
    raise ValueError(name)


def check_http(port: int) -> str | None:
    """None if GET / answers 200, the JSON body and content-type application/json."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                return f"closed before the headers ({buf[:80]!r})"
            buf += d
        head, _, body = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        n = int(m.group(1)) if m else 0
        while len(body) < n:
            d = s.recv(65536)
            if not d:
                return "closed in the body"
            body += d
        ctype = re.search(rb"\r\ncontent-type:\s*([^\r]*)", head, re.I)
        if status != 200 or body[:n] != BODY:
            return f"status {status}, body {body[:60]!r}"
        if not ctype or ctype.group(1).strip().lower() != b"application/json":
            return f"content-type {ctype.group(1) if ctype else None!r}"
        return None
    finally:
        s.close()


def check_ws(port: int) -> str | None:
    """None if /ws upgrades (with the right accept value) and echoes one text message."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                return f"closed during the handshake ({buf[:80]!r})"
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            return f"handshake answered {head.splitlines()[0]!r}"
        m = re.search(rb"(?im)^sec-websocket-accept:\s*(\S+)", head)
        if not m or m.group(1).decode() != _accept_value(WS_KEY):
            return "wrong Sec-WebSocket-Accept"
        msg = b"bench/asgi.py check"
        mask = os.urandom(4)
        s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask
                  + bytes(b ^ mask[i & 3] for i, b in enumerate(msg)))
        while len(rest) < 2 + len(msg):
            d = s.recv(4096)
            if not d:
                return "closed before the echo"
            rest += d
        if rest[:2] != bytes([0x81, len(msg)]) or rest[2:2 + len(msg)] != msg:
            return f"bad echo {rest[:40]!r}"
        s.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i & 3]
                                                     for i, b in enumerate(b"\x03\xe8")))
        return None
    finally:
        s.close()


def wait_ready(srv, port: int, timeout: float = R.READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise BenchError(f"{srv.name} exited with status {srv.proc.returncode} before "
                             f"answering; log {srv.logfile}:\n{srv.log_tail()}")
        try:
            last = check_http(port)
            if last is None:
                last = check_ws(port)
                if last is None:
                    return
                last = f"/ws: {last}"
        except (OSError, ValueError, IndexError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.2)
    raise BenchError(f"{srv.name} did not serve GET / (JSON) and /ws (echo) on 127.0.0.1:{port} "
                     f"within {timeout:.0f}s (last: {last}); log {srv.logfile}:\n{srv.log_tail()}")


def conns_by_process(root: int, port: int) -> list[dict]:
    """Established TCP connections with local port `port`, per process of the
    server's tree (by socket inode in /proc/PID/fd): where the WebSockets live."""
    inodes = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            p = line.split()
            if len(p) > 9 and p[3] == "01" and int(p[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(p[9])
    out = []
    for pid, _start in R.server_cpu(root):
        n = 0
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    n += 1
        except OSError:
            continue
        if n:
            out.append({"pid": pid, "process": T._comm(pid), "connections": n})
    return sorted(out, key=lambda x: -x["connections"])


def proc_cpu_s(pid: int) -> float | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = data[data.rfind(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / R.CLK_TCK


# --------------------------------------------------------------------------
# one turn

def run_wrk(wrk: str, port: int, duration: float, conns: int,
            spread_root: int | None = None) -> tuple[dict, str]:
    """wrk keep-alive on GET /; with spread_root, also samples halfway through
    which of that server's processes hold the connections (res["connections_by_process"])."""
    cmd = [wrk, f"-t{WRK_THREADS}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency",
           f"http://127.0.0.1:{port}/"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    spread = None
    try:
        if spread_root is not None:
            try:
                p.wait(max(1, round(duration)) / 2)
            except subprocess.TimeoutExpired:
                spread = conns_by_process(spread_root, port)
        out, _ = p.communicate(timeout=duration + 60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    if p.returncode != 0 and "Requests/sec" not in out:
        raise BenchError(f"wrk failed (exit {p.returncode}): {' '.join(cmd)}\n{out}")
    res = R.parse_wrk(out)
    if res["rps"] is None:
        raise BenchError(f"could not parse wrk output:\n{out}")
    if spread is not None:
        res["connections_by_process"] = spread
    return res, " ".join(cmd)


def _ws_errors(res: dict) -> int:
    return sum(res.get(k, 0) for k in ("bad_payload", "closed_by_server", "eof",
                                       "socket_errors", "protocol_errors"))


def measure_http(srv, args, tools) -> dict:
    before = R.server_cpu(srv.proc.pid)
    res, wcmd = run_wrk(tools["wrk"], args.port, args.duration, args.connections,
                        spread_root=srv.proc.pid)
    after = R.server_cpu(srv.proc.pid)
    cpu_s, nproc = R.cpu_delta(before, after)
    res.update(server_cpu_s=cpu_s, server_procs=nproc, cmd=wcmd, units=res["requests"],
               rate=res["rps"], cpu_by_process=T.cpu_split(before, after),
               cpu_us_per_unit=cpu_s * 1e6 / res["requests"] if res["requests"] else None,
               errors=res["non_2xx_3xx"] + sum(res["socket_errors"].values()))
    return res


def measure_ws(srv, args, client_cmd) -> dict:
    c = WsClient(client_cmd, args.port, args.ws_clients, args.duration, args.ws_size)
    try:
        ready = c.start()
        if ready["handshake_failed"]:
            raise BenchError(f"ws: {ready['handshake_failed']} of {args.ws_clients} handshakes "
                             f"failed: {ready['first_error']}")
        spread = conns_by_process(srv.proc.pid, args.port)
        before = R.server_cpu(srv.proc.pid)
        cbefore = proc_cpu_s(c.proc.pid)
        c.go()
        res = c.result()
        after = R.server_cpu(srv.proc.pid)
        cafter = proc_cpu_s(c.proc.pid)
    finally:
        c.finish()
    cpu_s, nproc = R.cpu_delta(before, after)
    n = res["messages"]
    res.update(ready=ready, connections_by_process=spread, server_cpu_s=cpu_s,
               server_procs=nproc, cmd=" ".join(c.argv), units=n,
               cpu_by_process=T.cpu_split(before, after),
               cpu_us_per_unit=cpu_s * 1e6 / n if n else None,
               client_cpu_us_per_msg=((cafter - cbefore) * 1e6 / n
                                      if n and cafter is not None and cbefore is not None
                                      else None),
               p50_ms=res["p50_us"] / 1000 if res["p50_us"] >= 0 else None,
               p99_ms=res["p99_us"] / 1000 if res["p99_us"] >= 0 else None,
               errors=_ws_errors(res))
    return res


def bench_turn(name: str, args, tools, venv: Path, tmp: Path, client_cmd, hostd_cmd,
               rnd: int) -> dict:
    """Starts `name`, checks it, warms it up, measures both modes, stops it."""
    R.wait_port_free(args.port)
    cmd, cwd, env = server_cmd(name, args, venv, tmp, hostd_cmd)
    if name == "hostd":
        why = hostd_asgi_missing(hostd_cmd, cwd / "hostd.toml")
        if why:
            raise BenchError(f"hostd: no ASGI support yet ({why})")
    srv = R.Server(name, cmd, tmp / f"{name}.log", cwd, env)
    result = {"server": name, "round": rnd, "cmd": cmd, "modes": {}, "notes": [],
              "loadavg": os.getloadavg()}
    log(f"round {rnd}: {name}: starting")
    srv.start()
    try:
        wait_ready(srv, args.port)
        run_wrk(tools["wrk"], args.port, WARMUP_SECONDS, WARMUP_CONNS)
        if name == "hostd":
            hostctl = R.hostctl_cmd(args.hostctl)
            n, info = R.hostd_status(cwd / "hostd.toml", hostctl)
            tries = 0
            while n is not None and n < 2 and tries < 3:
                tries += 1
                log(f"hostd: {info}; warming up again to grow the pool")
                run_wrk(tools["wrk"], args.port, GROW_WARMUP_SECONDS, WARMUP_CONNS)
                n, info = R.hostd_status(cwd / "hostd.toml", hostctl)
            if n is None:
                log(f"hostd: pool size not checked: {info}")
            elif n < 2:
                log(f"WARNING: hostd: {info}: fewer than 2 workers")
            result["notes"].append(f"pool: {info}")
        warm = WsClient(client_cmd, args.port, args.ws_clients, WARMUP_SECONDS,
                        args.ws_size).run()
        if _ws_errors(warm) or not warm["messages"]:
            raise BenchError(f"ws warm-up: {warm['messages']} echoes, errors: "
                             f"{warm['first_error'] or '-'} ({warm})")
        for mode in MODES:
            res = measure_http(srv, args, tools) if mode == "http-json" else \
                measure_ws(srv, args, client_cmd)
            result["modes"][mode] = res
            cpu = "-" if res["cpu_us_per_unit"] is None else f"{res['cpu_us_per_unit']:.1f}"
            extra = ""
            if res["errors"]:
                extra = f"  ERRORS: {res['errors']}" + (
                    f" ({res.get('first_error')})" if res.get("first_error") else "")
            spread = ""
            if res.get("connections_by_process") is not None:
                spread = "  conns/process " + ("/".join(
                    str(x["connections"]) for x in res["connections_by_process"]) or "?")
            p50 = "-" if res.get("p50_ms") is None else f"{res['p50_ms']:.2f}"
            p99 = "-" if res.get("p99_ms") is None else f"{res['p99_ms']:.2f}"
            log(f"round {rnd}: {name:9s} {mode:9s} {res['rate']:9.0f} {UNIT[mode]}/s  "
                f"p50 {p50} ms  p99 {p99} ms  cpu {cpu} us/{UNIT[mode]} "
                f"({res['server_procs']} procs){spread}{extra}")
        if srv.proc.poll() is not None:
            result["notes"].append(f"server exited during the run (status {srv.proc.returncode})")
    finally:
        log(f"round {rnd}: {name}: stopping")
        srv.stop()
        R.wait_port_free(args.port)
    return result


# --------------------------------------------------------------------------
# summary

_median = T._median


def summarize(runs: list[dict], servers: list[str]) -> tuple[list[dict], list[dict]]:
    by: dict = {}   # (server, mode) -> {round: res}
    for r in runs:
        for mode, res in r["modes"].items():
            by.setdefault((r["server"], mode), {})[r["round"]] = res

    def per_round_ratio(a, b):
        """median over rounds of rate(a) / rate(b), both from the same round"""
        x, y = by.get(a), by.get(b)
        if not x or not y:
            return None
        return _median([x[k]["rate"] / y[k]["rate"] for k in x if k in y and y[k]["rate"]])

    rows = []
    for s in servers:
        for mode in MODES:
            rr = by.get((s, mode))
            if not rr:
                continue
            vals = list(rr.values())
            rows.append({
                "server": s, "mode": mode, "unit": UNIT[mode], "rounds": len(vals),
                "rate": statistics.median(v["rate"] for v in vals),
                "rate_by_round": [rr[k]["rate"] for k in sorted(rr)],
                "p50_ms": _median(v.get("p50_ms") for v in vals),
                "p99_ms": _median(v.get("p99_ms") for v in vals),
                "cpu_us_per_unit": _median(v.get("cpu_us_per_unit") for v in vals),
                "errors": sum(v["errors"] for v in vals),
                "ratio_to_hostd": per_round_ratio((s, mode), ("hostd", mode)),
            })

    targets = []

    def target(text, a, b, need):
        v = per_round_ratio(a, b)
        targets.append({"target": text, "value": v, "need": need, "num": list(a), "den": list(b),
                        "pass": None if v is None or need is None else v >= need})

    for mode in MODES:
        target(f"hostd {mode} >= 1.0x uvicorn", ("hostd", mode), ("uvicorn", mode), 1.0)
        target(f"hostd {mode} >= 0.8x Granian", ("hostd", mode), ("granian", mode), 0.8)
    for mode in MODES:
        target(f"(info) hostd {mode} / hypercorn", ("hostd", mode), ("hypercorn", mode), None)
        if "uvicorn-wsproto" in servers:
            target(f"(info) hostd {mode} / uvicorn-wsproto", ("hostd", mode),
                   ("uvicorn-wsproto", mode), None)
    return rows, targets


def split_lines(runs, server: str) -> list[str]:
    """`server`'s CPU µs per request/message by process kind, per mode (medians)."""
    per: dict = {}
    for run in runs:
        if run["server"] != server:
            continue
        for mode, res in run["modes"].items():
            if res.get("units"):
                for kind, sec in res.get("cpu_by_process", {}).items():
                    per.setdefault(mode, {}).setdefault(kind, []).append(sec * 1e6 / res["units"])
    out = []
    for mode, kinds in per.items():
        meds = sorted(((k, statistics.median(v)) for k, v in kinds.items()), key=lambda kv: -kv[1])
        out.append(f"      CPU us/{UNIT[mode]} by process ({mode}): "
                   + ", ".join(f"{k.replace('hostd: ', '')} {v:.1f}" for k, v in meds if v > 0.05))
    return out


def format_targets(targets) -> list[str]:
    out = []
    for t in targets:
        if t["need"] is None:
            if t["value"] is not None:
                out.append(f"  INFO  {t['target']}: {t['value']:.2f}x")
        elif t["pass"] is None:
            out.append(f"  SKIP  {t['target']} (no data)")
        else:
            out.append(f"  {'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']:.2f}x")
    return out


def print_report(rows, targets, meta, runs, failures) -> None:
    print()
    print(f"hostd ASGI benchmark: {meta['rounds']} round(s) x {meta['duration']:g}s, "
          f"{meta['nproc']} CPUs shared with the load generators; loadavg start "
          f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}, end "
          f"{' '.join(f'{x:.2f}' for x in meta.get('loadavg_end', ()))}")
    print(f"http-json: wrk -t{WRK_THREADS} -c{meta['connections']} keep-alive GET / -> "
          f"{BODY.decode()} (application/json)")
    print(f"ws-echo: {meta['ws_client']}, {meta['ws_clients']} connections x 1 message in "
          f"flight, {meta['ws_size']}-byte text frames, {WS_THREADS} threads; only correct "
          f"echoes counted")
    print("medians over rounds; x hostd = median over rounds of (rate / hostd's rate in the same "
          "mode and round);")
    print("cpu us = utime+stime of the server's process tree (/proc) over the measured window / "
          "requests or messages")
    print(f"load average at each turn: {meta.get('turn_loadavg', '-')}")
    print()
    hdr = (f"{'server':16s} {'mode':9s} {'rate/s':>9s} {'x hostd':>8s} {'p50 ms':>7s} "
           f"{'p99 ms':>7s} {'cpu us':>9s}  {'by round':20s} errors")
    print(hdr)
    print("-" * len(hdr))
    last = None
    for r in rows:
        if last is not None and r["server"] != last:
            print()
        last = r["server"]
        f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        cpu = "-" if r["cpu_us_per_unit"] is None else f"{r['cpu_us_per_unit']:.1f}/{r['unit']}"
        print(f"{r['server']:16s} {r['mode']:9s} {r['rate']:9.0f} {f(r['ratio_to_hostd']):>8s} "
              f"{f(r['p50_ms']):>7s} {f(r['p99_ms']):>7s} {cpu:>9s}  "
              f"{'/'.join(f'{x:.0f}' for x in r['rate_by_round']):20s} {r['errors'] or '-'}")
    print()
    shown = list(dict.fromkeys(r["server"] for r in rows))
    for name in shown:
        print(f"  {name}: {SERVERS[name][0]}")
        for mode, what in (("http-json", "wrk connections"), ("ws-echo", "WebSockets")):
            spreads = [run["modes"][mode].get("connections_by_process") for run in runs
                       if run["server"] == name and mode in run["modes"]]
            spreads = [s for s in spreads if s is not None]
            if spreads:
                print(f"      {what} per process (each round): "
                      + "; ".join("/".join(str(x["connections"]) for x in s) or "?"
                                  for s in spreads))
        ccpu = [run["modes"]["ws-echo"].get("client_cpu_us_per_msg") for run in runs
                if run["server"] == name and "ws-echo" in run["modes"]]
        if _median(ccpu) is not None:
            print(f"      ws client CPU: {_median(ccpu):.1f} us/msg")
        if name == "hostd":
            for line in split_lines(runs, name):
                print(line)
    for name, why in meta.get("skipped", {}).items():
        print(f"  {name}: SKIPPED: {why}")
    st = meta.get("ws_client_selftest")
    if st:
        print(f"  ws client self-test: {'ok' if st['ok'] else 'FAILED'} ({st['client_messages']} "
              f"echoes counted = {st['server_echoed_ok']} sent right, {st['client_bad_payload']} "
              f"corrupted echoes caught, {st['client_pings']} pings answered)")
    print()
    print("TARGETS (issue 15; ratios are medians of per-round ratios):")
    for line in format_targets(targets):
        print(line)
    for f in failures:
        print(f"FAILED: round {f['round']} {f['server']}: {f['error'].splitlines()[0]}")


# --------------------------------------------------------------------------

def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(DEFAULT_SERVERS)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in SERVERS]
    if bad:
        raise SystemExit(f"--only: unknown server(s) {bad}; known: {', '.join(SERVERS)}")
    return [s for s in SERVERS if s in names]


def versions(tools: dict, venv_py: str | None, hostd_cmd, client: str) -> dict:
    v = {"wrk": R.tool_versions(tools, None).get("wrk"), "python": sys.version.split()[0],
         "ws_client": client}
    v["peers"] = package_versions(venv_py)
    if venv_py:
        v["peers_python"] = subprocess.run([venv_py, "-c", "import sys; print(sys.version.split()[0])"],
                                           capture_output=True, text=True).stdout.strip()
    if hostd_cmd:
        git = lambda *a: subprocess.run(["git", "-C", str(REPO_DIR), *a], capture_output=True,  # noqa: E731
                                        text=True).stdout.strip()
        v["hostd"] = (f"checkout {git('rev-parse', '--short', 'HEAD')}"
                      + (" + uncommitted changes" if git("status", "--porcelain", "--", "hostd",
                                                         "workers") else ""))
        py = REPO_DIR / ".venv" / "bin" / "python"
        if py.exists():
            v["hostd_venv"] = package_versions(str(py))
            v["hostd_python"] = subprocess.run(
                [str(py), "-c", "import sys; print(sys.version.split()[0])"],
                capture_output=True, text=True).stdout.strip()
    return v


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--duration", type=int, default=8,
                    help="seconds per measurement (whole seconds, for wrk; default 8)")
    ap.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    ap.add_argument("--ws-clients", type=int, default=50,
                    help="WebSocket connections, one message in flight each (default 50)")
    ap.add_argument("--ws-size", type=int, default=32,
                    help="WebSocket text message size in bytes, 20..65535 (default 32)")
    ap.add_argument("--only", help=f"comma list of servers: {','.join(SERVERS)} "
                    f"(default {','.join(DEFAULT_SERVERS)})")
    ap.add_argument("--port", type=int, default=18090, help="port every server listens on "
                    "(default 18090)")
    ap.add_argument("--hostd-loop", default="uvloop", choices=("uvloop", "auto", "asyncio"),
                    help="hostd pool's event_loop (default uvloop, like every peer here)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    ap.add_argument("--venv", default=os.environ.get("BENCH_VENV", str(BENCH_DIR / ".venv")),
                    help="venv for the peers (default bench/.venv)")
    ap.add_argument("--hostd", default=os.environ.get("HOSTD"),
                    help="hostd command (default: the checkout's .venv/bin/hostd)")
    ap.add_argument("--hostctl", default=os.environ.get("HOSTCTL"),
                    help="hostctl command (default: the checkout's .venv/bin/hostctl)")
    ap.add_argument("--lock", default=LOCK_PATH, help=f"flock file held for each server's turn "
                    f"(default {LOCK_PATH})")
    ap.add_argument("--no-install", action="store_true", help="never apt-get/pip install")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the tmpdir (configs, logs)")
    args = ap.parse_args()
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.ws_clients < 1:
        ap.error("--rounds, --connections and --ws-clients must be >= 1 and --duration > 0")
    if not 20 <= args.ws_size <= 65535:
        ap.error("--ws-size must be 20..65535")

    selected = parse_only(args.only)
    venv = Path(args.venv)
    tools = R.ensure_tools([], venv, args.no_install)          # wrk
    peers = ensure_peers(selected, venv, args.no_install)
    if not selected:
        raise BenchError("no server left to benchmark")
    hostd_cmd = R.hostd_cmd_default(args.hostd) if "hostd" in selected else None

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="hostd-bench-asgi-"))
    runs, failures = [], []
    client_cmd, client_desc = build_client(tmp)
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "kernel": platform.release(), "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "rounds": args.rounds, "duration": args.duration,
        "connections": args.connections, "ws_clients": args.ws_clients,
        "ws_size": args.ws_size, "port": args.port, "servers": selected,
        "skipped": peers["skipped"], "ws_client": client_desc, "tmpdir": str(tmp),
        "versions": versions(tools, peers.get("python"), hostd_cmd, client_desc),
        "server_configs": {s: SERVERS[s][0] for s in selected},
        "wrk": f"-t{WRK_THREADS} -c{args.connections} --latency",
        "warmup": f"wrk -t{WRK_THREADS} -c{WARMUP_CONNS} -d{WARMUP_SECONDS}s, then "
                  f"{WARMUP_SECONDS}s of the WebSocket client",
        "app": str(APP_FILE.relative_to(REPO_DIR)),
    }
    try:
        meta["ws_client_selftest"] = selftest_client(client_cmd)
        log(f"ws client: {client_desc}; self-test ok ({meta['ws_client_selftest']})")
        log(f"servers: {', '.join(selected)}; {args.rounds} round(s) x {args.duration:g}s; "
            f"tmpdir {tmp}")
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(selected)
            for name in selected[k:] + selected[:k]:
                try:
                    with T.BenchLock(args.lock):
                        runs.append(bench_turn(name, args, tools, venv, tmp, client_cmd,
                                               hostd_cmd, rnd))
                except BenchError as e:
                    log(f"round {rnd}: {name} FAILED: {e}")
                    failures.append({"server": name, "round": rnd, "error": str(e)})
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        meta["loadavg_end"] = os.getloadavg()

    loads = [r["loadavg"][0] for r in runs]
    if loads:
        meta["turn_loadavg"] = (f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
                                f"max {max(loads):.2f}")
    rows, targets = summarize(runs, selected)
    print_report(rows, targets, meta, runs, failures)
    if args.json:
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
