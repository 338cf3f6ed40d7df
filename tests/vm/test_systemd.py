"""systemd integration under real systemd + journald (VM only): Type=notify readiness,
the journal's native fields, the watchdog and socket activation."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from vmtest import REPO, UNIT, systemctl, unit_property, wait_for

SLOW_APP = '''\
import time
time.sleep(3)          # a slow import: keeps `systemctl start` activating


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
'''

DROPIN_DIR = Path("/etc/systemd/system/hostd.service.d")
SOCKET_FILE = Path("/etc/systemd/system/hostd.socket")


def journal_json(*matches: str, since: str | None = None) -> list[dict]:
    subprocess.run(["journalctl", "--sync"], timeout=60)
    args = ["journalctl", "-u", UNIT, "-o", "json", "--no-pager", *matches]
    if since:
        args += ["--after-cursor", since]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_start_is_active_only_after_ready(pool_files):
    pool_files.write("slowstart", ["slowstart.localhost"], app_source=SLOW_APP,
                     start_mode="always_running")
    systemctl("stop", UNIT)
    systemctl("start", "--no-block", UNIT)
    seen = set()
    t0 = time.monotonic()
    activating_for = 0.0

    def active():
        nonlocal activating_for
        state = unit_property("ActiveState")
        seen.add(state)
        if state == "activating":
            activating_for = time.monotonic() - t0
        return state == "active"
    wait_for(active, timeout=120, interval=0.1, what="hostd active")
    assert "activating" in seen, seen
    assert activating_for >= 2.0, activating_for        # the 3 s import held it
    # by the time it is active the slow pool has its ready worker
    from vmtest import pools
    ps = pools()
    assert ps["slowstart"]["state"] == "started"
    assert any(w["state"] == "ready" for w in ps["slowstart"]["workers"])
    # READY came through the journal's native protocol with our fields
    ready = journal_json("EVENT=ready", "SYSLOG_IDENTIFIER=hostd")
    assert ready and ready[-1]["MESSAGE_ID"] and ready[-1]["PRIORITY"] == "5"
    assert "pools" in unit_property("StatusText")


def test_reload_logs_a_config_recycle_with_fields(pool_files, journal):
    t0 = int(time.time() * 1e6)
    pool_files.write("gamma", ["gamma.localhost"], start_mode="always_running",
                     env={"GREETING": "one"})
    pool_files.reload(expect=["gamma"])
    # the changed pool is recycled under load: every request answered
    stop, lock, results = threading.Event(), threading.Lock(), {}
    threads = [threading.Thread(target=_load, args=(stop, results, lock, "gamma.localhost"))
               for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        pool_files.write("gamma", ["gamma.localhost"], start_mode="always_running",
                         env={"GREETING": "two"})
        pool_files.reload(expect=["gamma"])
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert results.get("ok", 0) > 10 and set(results) == {"ok"}, results
    rec = wait_for(lambda: [e for e in journal_json("-b", "POOL=gamma", "EVENT=recycle")
                            if int(e["__REALTIME_TIMESTAMP"]) >= t0],
                   timeout=30, what=lambda: "EVENT=recycle of gamma in the journal; gamma's: "
                   + repr([e.get("MESSAGE") for e in journal_json("-b", "POOL=gamma")][-10:]))
    assert any(e.get("REASON") == "config" for e in rec), rec
    e = rec[-1]
    assert e["SYSLOG_IDENTIFIER"] == "hostd" and len(e["MESSAGE_ID"]) == 32
    assert e["PRIORITY"] == "5"
    # every process logs natively: a worker's own records carry HOSTD_PROCESS=worker ...
    procs = {x.get("HOSTD_PROCESS", "") for x in journal_json("-b")
             if int(x["__REALTIME_TIMESTAMP"]) >= t0}
    assert "supervisor" in procs, procs
    # journalctl -x explains it once the catalog is installed
    cat = Path("/usr/lib/systemd/catalog/hostd.catalog")
    if cat.exists():
        out = subprocess.run(["journalctl", "-u", UNIT, "-x", "--no-pager", "POOL=gamma",
                              "EVENT=recycle"], capture_output=True, text=True).stdout
        assert "hostd: recycle" in out


def test_a_stopped_supervisor_is_restarted_by_the_watchdog():
    DROPIN_DIR.mkdir(exist_ok=True)
    dropin = DROPIN_DIR / "zz-watchdog-test.conf"
    dropin.write_text("[Service]\nWatchdogSec=3s\nTimeoutAbortSec=3s\n")
    try:
        systemctl("daemon-reload")
        systemctl("restart", UNIT)
        old = int(unit_property("MainPID"))
        restarts = int(unit_property("NRestarts") or 0)
        time.sleep(4)                      # alive across more than one WatchdogSec
        assert int(unit_property("MainPID")) == old
        os.kill(old, signal.SIGSTOP)
        wait_for(lambda: int(unit_property("NRestarts") or 0) > restarts and
                 unit_property("ActiveState") == "active" and
                 int(unit_property("MainPID")) not in (0, old),
                 timeout=90, interval=0.5, what="a watchdog restart of hostd")
        log = subprocess.run(["journalctl", "-u", UNIT, "--no-pager", "-n", "200"],
                             capture_output=True, text=True).stdout
        assert "atchdog" in log
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except (OSError, UnboundLocalError):
            pass
        dropin.unlink(missing_ok=True)
        systemctl("daemon-reload")
        systemctl("reset-failed", UNIT, check=False)
        systemctl("restart", UNIT)


def _load(stop: threading.Event, results: dict, lock: threading.Lock,
          host: str = "alpha.localhost") -> None:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", 8080), timeout=30) as s:
                s.sendall(request)
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            key = "ok" if data.startswith(b"HTTP/1.1 200") else "bad:" + data[:12].decode("latin-1")
        except OSError as exc:
            key = type(exc).__name__
        with lock:
            results[key] = results.get(key, 0) + 1
        time.sleep(0.01)


def test_socket_activation_restart_resets_nothing(http):
    shutil.copy(REPO / "systemd" / "hostd.socket", SOCKET_FILE)
    try:
        systemctl("daemon-reload")
        systemctl("stop", UNIT)
        systemctl("start", "hostd.socket")
        systemctl("start", UNIT)
        pid = int(unit_property("MainPID"))
        wait_for(lambda: [e for e in journal_json("-b", "EVENT=socket_activation")
                          if e.get("_PID") == str(pid)], timeout=30,
                 what="hostd took its sockets from systemd")
        http.wait_status("alpha.localhost", 200)
        stop, lock, results = threading.Event(), threading.Lock(), {}
        threads = [threading.Thread(target=_load, args=(stop, results, lock)) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(2)
            systemctl("restart", UNIT)
            assert int(unit_property("MainPID")) != pid
            time.sleep(2)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert results.get("ok", 0) > 10, results
        assert set(results) == {"ok"}, results     # no reset, refused or broken answer
    finally:
        systemctl("stop", "hostd.socket", check=False)
        systemctl("stop", UNIT, check=False)
        SOCKET_FILE.unlink(missing_ok=True)
        systemctl("daemon-reload")
        systemctl("start", UNIT)
