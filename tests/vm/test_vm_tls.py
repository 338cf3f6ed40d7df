"""HTTPS under systemd (issue 14, the VM bullet): hostd.socket with a TLS listener beside
the plain one, and `systemctl restart hostd` under HTTPS load: 0 failed requests.

A TLS connection cannot be handed back to a front end, so on a stop ("hostd stopping") a
worker's TLS connections get a short grace (workers/runtime.py, Worker._tls_drain): every
response says `Connection: close`, idle ones are closed with close_notify, all are gone
after ~2 s. Clients that move when told to then lose nothing: their new connections wait
in the backlog of the socket systemd holds until the new hostd takes it.

Two kinds of load, several threads each:
  oneshot    one request per new TLS connection;
  keepalive  one connection for many requests; it moves to a new one only when a
             response said `Connection: close`, or when the server closed it (idle)
             before the next request was sent.
FAILED: a connect refused or reset, a TLS error, a request sent that got no (whole)
response, a status other than 200. Certificates: a test CA (tests/tlscerts.py, the
openssl CLI, which the guest has: ca-certificates depends on it)."""
from __future__ import annotations

import json
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tlscerts import CA
from vmtest import (CONFIG, DEMO_APP, POOLS_DIR, REPO, TEST_APPS, UNIT, status, systemctl,
                    toml_value, unit_property, wait_for)

SOCKET_FILE = Path("/etc/systemd/system/hostd.socket")
TLS_DIR = Path("/etc/hostd/tls-vmtest")
TLS_ADDR = "0.0.0.0:8443"
TLS_PORT = 8443
POOL = "tlsvm"
NAME = "tlsvm.test"
TIMEOUT = 60.0          # a client's every wait: the new hostd may take a while to start
THREADS = 3             # per kind


def journal_json(*matches: str) -> list[dict]:
    subprocess.run(["journalctl", "--sync"], timeout=60)
    out = subprocess.run(["journalctl", "-u", UNIT, "-b", "-o", "json", "--no-pager",
                          *matches], capture_output=True, text=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def took_both_sockets(pid: int) -> list[dict]:
    """hostd (MainPID `pid`) logged that it took 2 sockets from systemd, and no
    socket_activation warning (an address it had to bind itself, a socket it closed)."""
    evs = [e for e in journal_json("EVENT=socket_activation") if e.get("_PID") == str(pid)]
    took = [e for e in evs if e.get("SOCKETS") == "2"]
    return evs if took and all(e.get("PRIORITY") != "4" for e in evs) else []


# ---- the HTTPS client -----------------------------------------------------------------

class NoResponse(Exception):
    """A request was sent and no whole response came."""


def connect(ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", TLS_PORT), timeout=TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname=NAME)
    except BaseException:
        raw.close()
        raise


def read_response(s: ssl.SSLSocket) -> tuple[int, dict, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise NoResponse(f"closed before a response ({len(buf)} bytes of a head)")
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    code = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (ln.partition(":") for ln in lines[1:])}
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(body) < n:
            d = s.recv(65536)
            if not d:
                raise NoResponse("closed mid-body")
            body += d
    else:                                   # (not the demo app's): to the close
        while d := s.recv(65536):
            body += d
    return code, headers, body


def closed_by_server(s: ssl.SSLSocket) -> bool:
    """Before a request on a kept-alive connection: did the server close it (close_notify
    or FIN) while it was idle? Records that are not application data (TLS 1.3 session
    tickets) are consumed and are not a close. Application data here is a server error."""
    if not s.pending() and not select.select([s], [], [], 0)[0]:
        return False
    s.settimeout(0.0)
    try:
        d = s.recv(1)
    except ssl.SSLWantReadError:
        return False
    except ssl.SSLZeroReturnError:
        return True
    finally:
        s.settimeout(TIMEOUT)
    if d:
        raise NoResponse(f"unsolicited bytes on an idle connection: {d!r}")
    return True


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok: dict[str, list[float]] = {"oneshot": [], "keepalive": []}   # done at
        self.counts: dict[str, int] = {}
        self.failed: list[tuple[float, str, str]] = []
        self.slowest = 0.0

    def success(self, kind: str, took: float) -> None:
        with self.lock:
            self.ok[kind].append(time.monotonic())
            self.slowest = max(self.slowest, took)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, kind: str, what: str, exc) -> None:
        with self.lock:
            self.failed.append((time.monotonic(), f"{kind}: {what}",
                                f"{type(exc).__name__}: {exc}"))


def oneshot(ctx, stop: threading.Event, tally: Tally) -> None:
    req = f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            s = connect(ctx)
        except OSError as exc:              # refused, reset, TLS error, timeout
            tally.fail("oneshot", "connect/handshake", exc)
            time.sleep(0.1)
            continue
        try:
            s.sendall(req)
            code, _, body = read_response(s)
        except (OSError, NoResponse) as exc:
            tally.fail("oneshot", "request sent, no response", exc)
            continue
        finally:
            s.close()
        if code == 200 and f"pool={POOL}".encode() in body:
            tally.success("oneshot", time.monotonic() - t0)
        else:
            tally.fail("oneshot", "answer", f"{code} {body[:80]!r}")
        time.sleep(0.01)


def keepalive(ctx, stop: threading.Event, tally: Tally) -> None:
    req = f"GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode()
    s = None
    try:
        while not stop.is_set():
            if s is None:
                try:
                    s = connect(ctx)
                except OSError as exc:
                    tally.fail("keepalive", "connect/handshake", exc)
                    time.sleep(0.1)
                    continue
                tally.count("keepalive connections")
            else:
                try:
                    gone = closed_by_server(s)
                    if gone:
                        tally.count("keepalive closed idle by the server")
                except (OSError, NoResponse) as exc:     # e.g. a reset of an idle one
                    tally.fail("keepalive", "idle connection broken", exc)
                    gone = True
                if gone:
                    s.close()
                    s = None
                    continue
            t0 = time.monotonic()
            try:
                s.sendall(req)
                code, headers, body = read_response(s)
            except (OSError, NoResponse) as exc:
                tally.fail("keepalive", "request sent, no response", exc)
                s.close()
                s = None
                continue
            if code == 200 and f"pool={POOL}".encode() in body:
                tally.success("keepalive", time.monotonic() - t0)
            else:
                tally.fail("keepalive", "answer", f"{code} {body[:80]!r}")
            if headers.get("connection", "").lower() == "close":
                tally.count("keepalive told Connection: close")
                s.close()
                s = None
            time.sleep(0.01)
    finally:
        if s is not None:
            s.close()


# ---- the test ----------------------------------------------------------------------------

def test_restart_under_https_load_with_socket_activation(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("the guest has no openssl CLI (tests/tlscerts.py needs it): add openssl "
                    "to vagrant/build-image.sh's package list")
    ca = CA(tmp_path)
    leaf = ca.issue(NAME)
    main_before = CONFIG.read_bytes()
    pool_file = POOLS_DIR / f"{POOL}.toml"
    app_dir = TEST_APPS / POOL
    try:
        # certificates where a production host keeps them (not /tmp: PrivateTmp=yes)
        TLS_DIR.mkdir(mode=0o700, exist_ok=True)
        cert, key = TLS_DIR / f"{POOL}.crt", TLS_DIR / f"{POOL}.key"
        shutil.copyfile(leaf.cert, cert)
        shutil.copyfile(leaf.key, key)
        key.chmod(0o600)                    # 0600 root: the worker reads it before it drops
        cert.chmod(0o644)
        # the socket unit as shipped, plus the TLS address
        shipped = (REPO / "systemd" / "hostd.socket").read_text()
        unit = re.sub(r"^(ListenStream=0\.0\.0\.0:8080)$", rf"\1\nListenStream={TLS_ADDR}",
                      shipped, count=1, flags=re.M)
        assert unit != shipped, "systemd/hostd.socket has no ListenStream=0.0.0.0:8080"
        SOCKET_FILE.write_text(unit)
        # the main file with listen_tls, a pool with [tls] (isolated, as by default)
        text = main_before.decode()
        main = re.sub(r"^(listen = .*)$", rf'\1\nlisten_tls = ["{TLS_ADDR}"]', text,
                      count=1, flags=re.M)
        assert main != text, f"no `listen = ` line in {CONFIG}"
        CONFIG.write_text(main)
        app_dir.mkdir(parents=True, exist_ok=True)
        (app_dir / "app.py").write_text(DEMO_APP)
        doc = {"app": "app:application", "directory": str(app_dir), "bindings": [NAME],
               "start_mode": "always_running",
               "tls": {"certificate": str(cert), "key": str(key)}}
        pool_file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in doc.items()))
        pool_file.chmod(0o600)

        systemctl("daemon-reload")
        systemctl("stop", UNIT)
        systemctl("start", "hostd.socket")
        systemctl("start", UNIT)
        pid = int(unit_property("MainPID"))
        wait_for(lambda: took_both_sockets(pid), timeout=30,
                 what=lambda: "hostd took both sockets from systemd; its events: "
                 + repr([(e.get("PRIORITY"), e.get("MESSAGE"))
                         for e in journal_json("EVENT=socket_activation")][-6:]))
        assert TLS_ADDR in json.dumps(status().get("listen_tls"))

        # HTTPS verifies with the test CA, SNI = the pool's name
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        s = connect(ctx)
        try:
            assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == NAME
            s.sendall(f"GET /hello HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
            code, _, body = read_response(s)
            assert code == 200 and f"pool={POOL} ".encode() in body, (code, body)
        finally:
            s.close()

        # one more kept-alive connection that stays idle: the old worker closes it, with
        # close_notify (a ragged EOF or a reset would raise), while hostd stops
        idle = ctx.wrap_socket(socket.create_connection(("127.0.0.1", TLS_PORT),
                                                        timeout=TIMEOUT * 2),
                               server_hostname=NAME, suppress_ragged_eofs=False)
        idle.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        assert read_response(idle)[0] == 200
        idle_end: list = []

        def watch_idle():
            try:
                got = repr(idle.recv(1))
                idle_end.append((time.monotonic(), got))
            except OSError as exc:
                idle_end.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
        watcher = threading.Thread(target=watch_idle, daemon=True)
        watcher.start()

        stop, tally = threading.Event(), Tally()
        threads = [threading.Thread(target=fn, args=(ctx, stop, tally), daemon=True)
                   for fn in (oneshot, keepalive) for _ in range(THREADS)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(v) >= 10 for v in tally.ok.values()), timeout=120,
                     what=lambda: "HTTPS load under way: ok "
                     f"{ {k: len(v) for k, v in tally.ok.items()} }, failed {tally.failed[:3]}")
            time.sleep(1.0)
            t_restart = time.monotonic()
            systemctl("restart", UNIT)
            t_back = time.monotonic()
            new_pid = int(unit_property("MainPID"))
            assert new_pid not in (0, pid)
            # 2+ s of load on the new hostd, both kinds served by it
            wait_for(lambda: time.monotonic() - t_back >= 3.0 and
                     all(sum(1 for t in v if t > t_back) >= 10 for v in tally.ok.values()),
                     timeout=120, what="HTTPS load served by the new hostd")
        finally:
            stop.set()
            for t in threads:
                t.join(TIMEOUT + 10)
        watcher.join(TIMEOUT * 2)
        idle.close()
        wait_for(lambda: took_both_sockets(new_pid), timeout=30,
                 what="the new hostd took both sockets from systemd")

        def around(kind):
            v = tally.ok[kind]
            return {"ok": len(v), "before": sum(1 for t in v if t < t_restart),
                    "during": sum(1 for t in v if t_restart <= t <= t_back),
                    "after": sum(1 for t in v if t > t_back)}
        figures = {"restart_s": round(t_back - t_restart, 2),
                   "oneshot": around("oneshot"), "keepalive": around("keepalive"),
                   "failed": len(tally.failed), "slowest_request_s": round(tally.slowest, 2),
                   **tally.counts,
                   "idle_connection": idle_end and
                   [round(idle_end[0][0] - t_restart, 2), idle_end[0][1]]}
        print(f"\nHTTPS restart under load: {json.dumps(figures)}")
        assert not tally.failed, (figures, [(round(t - t_restart, 2), w, e)
                                            for t, w, e in tally.failed[:20]])
        for kind in ("oneshot", "keepalive"):
            assert figures[kind]["ok"] >= 30 and figures[kind]["after"] >= 10, figures
        # the keep-alive clients were moved off the old hostd's workers by the server
        moved = tally.counts.get("keepalive told Connection: close", 0) + \
            tally.counts.get("keepalive closed idle by the server", 0)
        assert moved >= 1, figures
        # the idle one: closed by the old hostd while it stopped, cleanly
        assert idle_end and idle_end[0][1] == "b''", figures
        assert t_restart < idle_end[0][0] < t_back, figures
    finally:
        systemctl("stop", "hostd.socket", check=False)
        systemctl("stop", UNIT, check=False)
        SOCKET_FILE.unlink(missing_ok=True)
        CONFIG.write_bytes(main_before)
        pool_file.unlink(missing_ok=True)
        shutil.rmtree(app_dir, ignore_errors=True)
        shutil.rmtree(TLS_DIR, ignore_errors=True)
        systemctl("daemon-reload")
        systemctl("reset-failed", UNIT, check=False)
        systemctl("start", UNIT)
