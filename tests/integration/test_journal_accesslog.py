"""journald + access log, on this machine: the access log's lines (combined format +
pool, pid, µs) count exactly the requests sent, SIGUSR1 reopens the file, the journald
native backend (against a stand-in journal socket) carries the fields from every
process, and socket-activated sockets survive a restart of hostd."""
from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

from hostd_harness import APPS, REPO, Hostd

COMBINED = re.compile(
    r'^(?P<ip>\S+) - - \[(?P<t>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
    r'"(?P<method>[A-Z]+) (?P<url>(?:[^"\\]|\\.)*) (?P<proto>HTTP/1\.[01])" (?P<status>\d{3}) '
    r'(?P<bytes>\d+|-) "(?P<ref>(?:[^"\\]|\\.)*)" "(?P<ua>(?:[^"\\]|\\.)*)" '
    r'(?P<pool>\S+) (?P<pid>\d+) (?P<us>\d+)$')


def hello(**kw):
    return {"app": "worker_hello:app", "directory": str(APPS), "bindings": ["a.test"], **kw}


def send(h: Hostd, n: int, ua: str = "t/1", referer: str | None = None, path="/p") -> None:
    c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    headers = {"Host": "a.test", "User-Agent": ua}
    if referer:
        headers["Referer"] = referer
    for i in range(n):
        c.request("GET", f"{path}{i}?q={i}", headers=headers)
        r = c.getresponse()
        assert r.status == 200
        r.read()
    c.close()


def test_access_log_lines_parse_and_count(tmp_path):
    path = tmp_path / "logs" / "access.log"
    h = Hostd(tmp_path, {"a": hello(processes=2, threads=4)}, hostd={"access_log": str(path)})
    h.start()
    try:
        send(h, 150)
        send(h, 50, ua='evil "agent" \\ x', referer="http://r.example/a b")
        threads = [threading.Thread(target=send, args=(h, 100)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # flushed once a second from each worker's loop: no stop needed to see them
        h.wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 600,
                   timeout=10, what="600 access log lines")
    finally:
        h.stop()
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    pids = set()
    for line in lines:
        m = COMBINED.match(line)
        assert m, line
        assert m["method"] == "GET" and m["status"] == "200" and m["bytes"] == "13"
        assert m["pool"] == "a" and m["ip"] == "127.0.0.1"
        pids.add(m["pid"])
    assert sum('"evil \\"agent\\" \\\\ x"' in x for x in lines) == 50
    assert sum('"http://r.example/a b"' in x for x in lines) == 50


def test_sigusr1_reopens_the_access_log(tmp_path):
    path = tmp_path / "access.log"
    h = Hostd(tmp_path, {"a": hello()}, hostd={"access_log": str(path)})
    h.start()
    try:
        send(h, 10)
        h.wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 10,
                   timeout=10, what="10 lines")
        path.rename(tmp_path / "access.log.1")          # logrotate
        h.signal(signal.SIGUSR1)
        h.wait_for(lambda: path.exists(), timeout=10, what="a reopened access.log")
        send(h, 7)
        h.wait_for(lambda: len(path.read_text().splitlines()) == 7, timeout=10,
                   what="7 lines in the new file")
        assert len((tmp_path / "access.log.1").read_text().splitlines()) == 10
        assert re.search(r"<6>reopen_logs ", h.log())
    finally:
        h.stop()


def parse_native(data: bytes) -> dict:
    """journald's native protocol: KEY=value\\n, or KEY\\n<u64 le length>value\\n."""
    out, i = {}, 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            v = data[nl + 9:nl + 9 + n]
            assert data[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
        out[k.decode()] = v.decode()
    return out


def test_journald_native_backend_from_every_process(tmp_path, monkeypatch):
    jpath = str(tmp_path / "journal.sock")
    js = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    js.bind(jpath)
    js.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    entries: list[dict] = []
    done = threading.Event()

    def reader():
        js.settimeout(0.2)
        while not done.is_set():
            try:
                entries.append(parse_native(js.recv(1 << 20)))
            except socket.timeout:
                continue
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    monkeypatch.setenv("HOSTD_LOG", "journal")
    monkeypatch.setenv("HOSTD_JOURNAL_SOCKET", jpath)
    broken = {"app": "worker_broken:app", "directory": str(APPS), "bindings": ["b.test"],
              "health": {"rapid_fail_max_crashes": 1}}
    # root workers ([isolation] enabled = false): the test's journal socket is under pytest's /tmp
    h = Hostd(tmp_path, root_workers=True, pools={"a": hello(), "b": broken}, hostd={"access_log": "journal"})
    h.start()
    try:
        send(h, 20)
        h.get("b.test", "/")
        h.wait_for(lambda: sum(e.get("EVENT") == "access" for e in entries) == 20,
                   timeout=10, what="20 access entries")
        h.wait_for(lambda: any(e.get("EVENT") == "startup_failed" for e in entries),
                   timeout=10, what="startup_failed")
    finally:
        h.stop()
        done.set()
        t.join()
    from hostd import log
    assert h.log().strip() == ""            # nothing on stderr: all of it went to the journal
    for e in entries:
        assert e["SYSLOG_IDENTIFIER"] == "hostd" and e["MESSAGE_ID"] == log.message_id(e["EVENT"])
        assert e["PRIORITY"].isdigit()
    start = [e for e in entries if e["EVENT"] == "start"]
    assert start and start[0]["HOSTD_PROCESS"] == "supervisor" and start[0]["PRIORITY"] == "5"
    assert start[0]["MESSAGE_ID"] == log.MESSAGE_IDS["start"]
    access = [e for e in entries if e["EVENT"] == "access"]
    assert all(COMBINED.match(e["MESSAGE"]) for e in access)
    assert all(e["POOL"] == "a" and e["STATUS"] == "200" for e in access)
    assert {e["HOSTD_PROCESS"] for e in access} == {"worker a#1"}
    failed = [e for e in entries if e["EVENT"] == "startup_failed"]
    assert "\n" in failed[0]["HOSTD_MESSAGE"] and failed[0]["POOL"] == "b"   # the binary form
    # MESSAGE= reads like the stderr line (without <N>): `journalctl -u hostd` as before
    assert start[0]["MESSAGE"].startswith("start proc=supervisor pid=")
    assert 'msg="hostd started: 2 pools' in start[0]["MESSAGE"]
    assert failed[0]["HOSTD_PROCESS"].startswith("worker b#")


ACTIVATE = r"""
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = "1"
os.execv(sys.executable, [sys.executable, "-m", "hostd.cli", "--config", sys.argv[2]])
"""


def test_socket_activation_restart_loses_no_queued_connection(tmp_path):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    port = lsock.getsockname()[1]
    h = Hostd(tmp_path, {"a": hello()}, port=port)

    def start():
        log = open(h.log_path, "ab")
        p = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(lsock.fileno()), str(h.config)],
                             pass_fds=[lsock.fileno()], stdout=log, stderr=log, cwd=str(REPO))
        h.proc, h._log = p, log

        def up():
            try:
                return h.status()["frontends"]
            except OSError:
                return None
        h.wait_for(up, timeout=20, what="front ends")
        return p

    start()
    try:
        assert h.get("a.test", "/")[0] == 200
        assert "socket_activation" in h.log()
        assert h.stop() == 0
        # hostd is down; the socket lives on: these wait in its backlog
        conns = []
        for i in range(20):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(b"GET /q%d HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" % i)
            conns.append(c)
        start()
        for c in conns:
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200"), data[:100]
            c.close()
    finally:
        h.stop()
        lsock.close()
