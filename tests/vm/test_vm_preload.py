"""preload = true under systemd and cgroup v2 (VM only: the host has v1 memory
hierarchies): a pool's own zygote sits in a leaf of its pool's cgroup (v2 allows no
process in an inner node), the workers it forks stay in that leaf, and a pool with a
per-worker memory trigger has each worker moved into its own leaf before it runs."""
from __future__ import annotations

import re

from vmtest import Http, pools, wait_for

PID_APP = """
import os
IMPORT_PID = os.getpid()
def application(environ, start_response):
    body = f"{os.getpid()} {IMPORT_PID}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""


def v2_cgroup(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line[3:].strip() for line in f if line.startswith("0::"))


def test_preload_zygote_and_workers_in_their_v2_leaves(pool_files, journal):
    since = journal.cursor()
    pool_files.write("warm", bindings=["warm.localhost"], app_source=PID_APP, preload=True,
                     start_mode="on_demand", idle_timeout="0")
    pool_files.write("placed", bindings=["placed.localhost"], app_source=PID_APP,
                     preload=True, start_mode="on_demand", idle_timeout="0",
                     recycling={"private_memory": "200M"})
    pool_files.reload(expect=["warm", "placed"], timeout=120)
    zygotes = wait_for(lambda: (lambda ps: ps if all(
        (ps[n].get("zygote") or {}).get("state") == "ready" for n in ("warm", "placed"))
        else None)(pools()), 180, what="both pool zygotes ready")
    http = Http()
    for name, leaf in (("warm", r"zygote-\d+"), ("placed", r"worker-\d+")):
        status, _, body = http.get(f"{name}.localhost")
        assert status == 200, body
        pid, import_pid = (int(x) for x in body.split())
        zpid = zygotes[name]["zygote"]["pid"]
        assert import_pid == zpid != pid            # forked from the pool's zygote
        assert re.search(rf"/pool-{name}/zygote-\d+$", v2_cgroup(zpid)), v2_cgroup(zpid)
        assert re.search(rf"/pool-{name}/{leaf}$", v2_cgroup(pid)), v2_cgroup(pid)
        [w] = [w for w in pools()[name]["workers"] if w["state"] == "ready"]
        assert w["preloaded"] is True and w["pid"] == pid
    for name in ("warm", "placed"):
        journal.wait_for_line(f"zygote of pool {name} ready", since=since, timeout=30)
