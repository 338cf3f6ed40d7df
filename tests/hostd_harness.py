"""Runs a real hostd process on loopback for tests, with configs written from dicts.

    h = Hostd(tmp_path, pools={"alpha": {"app": "app:application", "directory": ..., ...}})
    h.start(); status, headers, body = h.get("alpha.localhost", "/"); h.stop()
"""
from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from hostd import hostctl

REPO = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def toml_dump(doc: dict) -> str:
    """Top-level scalars first, then [tables] (dict values whose values are not dicts
    become inline tables only when the key is "env")."""
    lines, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict) and k != "env":
            tables.append((k, v))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


class Hostd:
    """One hostd process with its own config directory under `root`."""

    def __init__(self, root: Path, pools: dict[str, dict | str], hostd: dict | None = None,
                 defaults: dict | None = None, port: int | None = None,
                 root_workers: bool = False):
        """root_workers: every pool file without an [isolation] table gets `[isolation]
        enabled = false` (root workers in hostd's namespaces), for a test that assumes
        them: it reads the app's os.getpid() as the host's pid (a worker is pid 1 of its
        own namespace), or shares files under pytest's /tmp with the app (private in an
        isolated worker's view). Without it pools get hostd's default: isolated."""
        self.root_workers = root_workers
        self.root = Path(root)
        self.port = port or free_port()
        self.config = self.root / "hostd.toml"
        self.pools_dir = self.root / "pools.d"
        self.pools_dir.mkdir(parents=True, exist_ok=True)
        main = {"listen": [f"127.0.0.1:{self.port}"], "frontends": 2, "pools_dir": "pools.d",
                "state_dir": str(self.root / "state"), "run_dir": str(self.root / "run")}
        main.update(hostd or {})
        doc = {"hostd": main}
        if defaults:
            doc["defaults"] = defaults
        self.config.write_text(toml_dump(doc))
        self.config.chmod(0o600)
        for name, pool in pools.items():
            self.write_pool(name, pool)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "hostd.log"

    @property
    def socket_path(self) -> str:
        return str(self.root / "run" / "control.sock")

    def write_pool(self, name: str, pool: dict | str) -> Path:
        path = self.pools_dir / f"{name}.toml"
        if self.root_workers:
            if isinstance(pool, str):
                if "[isolation]" not in pool:
                    pool += "\n[isolation]\nenabled = false\n"
            elif "isolation" not in pool:
                pool = {**pool, "isolation": {"enabled": False}}
        path.write_text(pool if isinstance(pool, str) else toml_dump(pool))
        path.chmod(0o600)   # pool files may hold env values: hostd refuses them readable
        return path

    def remove_pool(self, name: str) -> None:
        (self.pools_dir / f"{name}.toml").unlink()

    # --- process -----------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float = 20.0) -> "Hostd":
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "hostd.cli", "--config", str(self.config)],
                                     stdout=self._log, stderr=self._log, env=env, cwd=str(REPO))
        if wait:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hostd exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    doc = self.status()
                    if len(doc["frontends"]) >= 1 and self._port_open():
                        return self
                except OSError:
                    pass
                time.sleep(0.05)
            raise RuntimeError(f"hostd did not come up:\n{self.log()}")
        return self

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        hung = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                hung = True
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        # a stop that hangs is a bug (a worker that escaped its kill once hid here for
        # 30 s a run): say so instead of killing quietly
        assert not hung, f"hostd did not exit within {timeout:g}s of SIGTERM; killed"
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- control -------------------------------------------------------------------
    def status(self) -> dict:
        code, doc = hostctl.call(self.socket_path, "GET", "/status")
        assert code == 200, doc
        return doc

    def pool(self, name: str) -> dict:
        for p in self.status()["pools"]:
            if p["name"] == name:
                return p
        raise KeyError(name)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hostd.hostctl", "--socket", self.socket_path,
                               *args], capture_output=True, text=True, cwd=str(REPO), timeout=30)

    def wait_for(self, predicate, timeout: float = 10.0, interval: float = 0.05, what: str = ""):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what or predicate}: last={last!r}\n"
                             f"--- hostd log ---\n{self.log()[-6000:]}")

    # --- HTTP ----------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, host: str, path: str = "/", method: str = "GET", body: bytes | None = None,
                headers: dict | None = None, timeout: float = 10.0):
        """One request on a new connection. Returns (status, headers dict, body)."""
        conn = self.connect(timeout)
        try:
            h = {"Host": host}
            h.update(headers or {})
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def get(self, host: str, path: str = "/", **kw):
        return self.request(host, path, **kw)

    def raw(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Sends raw bytes, returns everything read until the server closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                out += chunk
            return out


class Load:
    """Keep-alive clients hammering pools until stopped; counts failures."""

    def __init__(self, h: "Hostd", hosts: list[str], clients: int = 50, new_conn: bool = False,
                 path: str = "/"):
        self.h, self.hosts, self.new_conn, self.path = h, hosts, new_conn, path
        self.latencies: list[float] = []
        self.pids: collections.Counter = collections.Counter()
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failures: list = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, i: int) -> None:
        host = self.hosts[i % len(self.hosts)]
        conn = None
        while not self.stop_flag.is_set():
            try:
                if conn is None:
                    conn = self.h.connect(timeout=30)
                t0 = time.monotonic()
                conn.request("GET", self.path, headers={"Host": host})
                resp = conn.getresponse()
                body = resp.read()      # IncompleteRead on a truncated response
                if resp.status != 200:
                    raise RuntimeError(f"{resp.status} {body[:200]!r}")
                with self.lock:
                    self.ok += 1
                    self.latencies.append(time.monotonic() - t0)
                    if body.isdigit():
                        self.pids[int(body)] += 1
                if self.new_conn or resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:
                with self.lock:
                    self.failures.append((host, repr(exc)))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)



    def p99(self) -> float:
        lat = sorted(self.latencies)
        return lat[int(len(lat) * 0.99)] if lat else 0.0
