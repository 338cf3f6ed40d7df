"""[hostd] idle_pressure against a real squeeze, under systemd and cgroup v2: a pool whose
memory.high is far below what its app allocates is throttled by the kernel, which the
unit's memory.pressure shows; hostd then stops idle workers of other pools, oldest-idle
first, never the one running a request, and the journal says why. VM only: on the
host's v1 memory hierarchy no cgroup has a pressure file (and its global PSI does not
move for a v1 memcg squeeze)."""
from __future__ import annotations

import json
import re
import threading

from vmtest import CONFIG, UNIT, Http, pools, systemctl, wait_for

SLOW_APP = """
import time
def application(environ, start_response):
    time.sleep(float(environ.get("QUERY_STRING") or 0))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done\\n"]
"""

#: allocates and touches 160 MiB in 1 MiB pieces, keeping them: with memory.high at
#: 24M and no swap, every piece past it is throttled by the kernel (a memory stall)
SQUEEZE_APP = """
import time
def application(environ, start_response):
    keep, t = [], time.monotonic()
    while len(keep) < 160 and time.monotonic() - t < 60:
        keep.append(bytearray(1 << 20))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{len(keep)} MiB in {time.monotonic() - t:.1f}s\\n".encode()]
"""


def _set_pressure(rule: str | None) -> None:
    text = CONFIG.read_text()
    text = re.sub(r"^idle_pressure = .*\n", "", text, flags=re.M)
    if rule is not None:
        text = text.replace("[hostd]\n", f'[hostd]\nidle_pressure = "{rule}"\n', 1)
    CONFIG.write_text(text)


def test_memory_pressure_stops_idle_workers_not_busy_ones(pool_files, journal):
    _set_pressure("memory some avg10 > 2")
    since = journal.cursor()
    systemctl("restart", UNIT)
    try:
        journal.wait_for_line("idle_pressure", since=since, timeout=90)
        for name in ("idle1", "idle2"):
            pool_files.write(name, bindings=[f"{name}.localhost"], start_mode="on_demand",
                             idle_timeout="0")
        pool_files.write("busy", bindings=["busy.localhost"], app_source=SLOW_APP,
                         start_mode="on_demand", idle_timeout="0",
                         health={"shutdown_limit": "5s"})   # (the restart at the end)
        pool_files.write("squeeze", bindings=["squeeze.localhost"], app_source=SQUEEZE_APP,
                         start_mode="on_demand", idle_timeout="0",
                         limits={"memory_high": "24M"})
        pool_files.reload(expect=["idle1", "idle2", "busy", "squeeze"], timeout=120)
        http = Http()
        for name in ("idle1", "idle2"):
            http.wait_status(f"{name}.localhost", 200, timeout=120)
        def long_request():     # cut short by the restart at the end: that is expected
            try:
                http.get("busy.localhost", "/?400", timeout=600)
            except OSError:
                pass
        busy = threading.Thread(target=long_request, daemon=True)
        busy.start()                              # one request running the whole time
        wait_for(lambda: any(w["active"] for w in pools()["busy"]["workers"]), timeout=120,
                 what="the busy pool's request running")
        busy_pid = pools()["busy"]["workers"][0]["pid"]
        mark = journal.cursor()
        def squeezing():
            try:
                for _ in range(3):
                    http.get("squeeze.localhost", "/", timeout=300)
            except OSError:
                pass
        squeeze = threading.Thread(target=squeezing, daemon=True)
        squeeze.start()
        # both idle pools' workers go (on pressure, not idle_timeout: that is 0 = never)
        wait_for(lambda: not pools()["idle1"]["workers"] and not pools()["idle2"]["workers"],
                 timeout=240, what="the idle workers stopped on memory pressure")
        entries = [json.loads(line) for line in journal.lines(since=mark, output="json")]
        stopped = [e for e in entries if e.get("EVENT") == "idle"
                   and e.get("REASON") == "memory_pressure"]
        assert {e["POOL"] for e in stopped} >= {"idle1", "idle2"}, stopped
        assert all("idle_pressure" in e["MESSAGE"] for e in stopped)
        assert any(e.get("EVENT") == "memory_pressure" for e in entries)
        # the busy pool's worker, running its request throughout, was not touched
        assert "busy" not in {e["POOL"] for e in stopped}
        assert [w["pid"] for w in pools()["busy"]["workers"]] == [busy_pid]
    finally:
        _set_pressure(None)
        systemctl("restart", UNIT)
