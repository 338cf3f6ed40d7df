"""[isolation] under systemd and cgroup v2: an isolated pool's worker runs as its own
uid in its own user, mount, pid and network namespaces, inside pool-<name>/worker-<id>
below the unit's cgroup, and cannot leave it; its identity survives a restart of the
service. VM only (the host suite covers the same on the v1 backend)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from vmtest import HOSTCTL, PORT, REPO, UNIT, Http, pools, status, systemctl, wait_for

INTRUDER = (REPO / "tests" / "apps" / "intruder_app.py").read_text()


def identity(name: str) -> dict:
    out = subprocess.run([HOSTCTL, "pool", "identity", name, "--json"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def ready_worker(name: str) -> dict:
    return wait_for(lambda: [w for w in pools()[name]["workers"] if w["state"] == "ready"],
                    timeout=60, what=f"a ready worker of {name}")[0]


def ask(host: str, path: str) -> dict:
    status, _, body = Http().get(host, path)
    assert status == 200, (status, body)
    return json.loads(body)


def test_isolated_pool_under_systemd(pool_files, unit_cgroup):
    pool_files.write("jail", bindings=["jail.localhost"], app_source=INTRUDER,
                     start_mode="always_running", isolation={"network": "none"})
    # filesystem = "host" works here: /opt/hostd's Python is world-readable
    pool_files.write("plain", bindings=["plain.localhost"], app_source=INTRUDER,
                     start_mode="always_running", isolation={"filesystem": "host"})
    pool_files.reload(expect=["jail", "plain"])
    jail, plain = ready_worker("jail"), ready_worker("plain")
    ids = {n: identity(n) for n in ("jail", "plain")}
    assert ids["jail"]["uid"] != ids["plain"]["uid"]
    for name, w in (("jail", jail), ("plain", plain)):
        uid = ids[name]["uid"]
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in Path(f"/proc/{w['pid']}/status").read_text()
        own = Path(f"/proc/{w['pid']}/cgroup").read_text().strip()
        m = re.fullmatch(rf"0::(/.*)/pool-{name}/worker-\d+", own)
        assert m and str(unit_cgroup.path).endswith(m.group(1)), own
    me = ask("jail.localhost", "/whoami")
    assert me["uid"] == ids["jail"]["uid"] and int(me["CapEff"], 16) == 0
    assert int(me["CapBnd"], 16) == 0 and me["NoNewPrivs"] == "1"
    assert me["pids"] == [1] and me["interfaces"] == ["lo"]
    for probe in ("/read?path=/etc/shadow", "/write?path=/usr/intruder", "/escape",
                  f"/connect?host=127.0.0.1&port={PORT}",
                  f"/kill?pid={plain['pid']}", f"/ptrace?pid={plain['pid']}",
                  "/unix?path=/run/hostd/control.sock", "/list?path=/etc/hostd/pools.d",
                  "/read?path=/etc/hostd/pools.d/plain.toml"):
        r = ask("jail.localhost", probe)
        assert not r["ok"], (probe, r)
    # the host-view pool: the uid alone keeps it out of what is root's
    for probe in ("/read?path=/etc/shadow", "/escape", "/unix?path=/run/hostd/control.sock",
                  f"/kill?pid={jail['pid']}", "/read?path=/etc/hostd/pools.d/jail.toml"):
        r = ask("plain.localhost", probe)
        assert not r["ok"], (probe, r)
    assert ask("plain.localhost", f"/connect?host=127.0.0.1&port={PORT}")["ok"]
    # a restart keeps every identity
    systemctl("restart", UNIT)
    wait_for(lambda: all(pools().get(n, {}).get("state") == "started" for n in ("jail", "plain")),
             timeout=90, what="pools back after restart")
    assert {n: identity(n)["uid"] for n in ids} == {n: d["uid"] for n, d in ids.items()}
    assert os.stat("/var/lib/hostd/identities.json").st_mode & 0o077 == 0


def test_front_ends_are_not_root_under_systemd(hostd):
    doc = status()
    uid = doc["frontend_uid"]
    assert uid != 0
    for fe in doc["frontends"]:
        text = Path(f"/proc/{fe['pid']}/status").read_text()
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in text
        assert re.search(r"^CapEff:\s*0+$", text, re.M) and re.search(r"^NoNewPrivs:\s*1$", text, re.M)
    assert Http().get("alpha.localhost")[0] == 200
