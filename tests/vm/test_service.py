"""hostd as a systemd service: the unit from systemd/hostd.service, started with
`systemctl start` by vagrant/provision.sh, serving the example pools (alpha, beta),
reloading, logging to the journal, stopping without leftovers. VM only (conftest.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from vmtest import REPO, UNIT_FILE, pools, unit_property, wait_for


def test_the_unit_is_the_shipped_one_and_active(unit_cgroup):
    assert UNIT_FILE.read_text() == (REPO / "systemd" / "hostd.service").read_text()
    assert unit_property("FragmentPath") == str(UNIT_FILE)
    assert unit_property("ActiveState") == "active"
    assert unit_property("SubState") == "running"
    assert unit_property("Type") == "notify"       # active = hostd sent READY=1
    main = unit_cgroup.main_pid()
    assert "/opt/hostd/bin/hostd" in Path(f"/proc/{main}/cmdline").read_bytes().decode()
    # every process of hostd (supervisor, front ends, zygote) is in the unit's cgroup
    assert main in unit_cgroup.pids()
    assert str(unit_cgroup.path).endswith("/system.slice/hostd.service")


def test_serves_two_pools(http):
    status, _, body = http.get("alpha.localhost", "/x")
    assert status == 200 and body.startswith("Hello from alpha: pool=alpha"), body
    status, _, body = http.get("beta.localhost", "/")
    assert status == 200 and body.startswith("Hello from beta: pool=beta"), body
    ps = pools()
    assert {"alpha", "beta"} <= set(ps)
    assert ps["alpha"]["state"] == ps["beta"]["state"] == "started"
    assert ps["beta"]["workers"] and ps["alpha"]["workers"]


def test_port_forward_from_host():
    """The host (vagrant/run-vm-suite) requests http://127.0.0.1:<port>/ through qemu's
    forward to the guest's :8080 and hands the answer back over the ctl share."""
    ctl = os.environ.get("HOSTD_VM_CTL")
    if not ctl:
        pytest.skip("host-side request needs vagrant/run-vm-suite (Vagrant: curl the forwarded port)")
    ctl = Path(ctl)
    (ctl / "hostcheck.resp").unlink(missing_ok=True)
    (ctl / "hostcheck.req.tmp").write_text("alpha.localhost")
    (ctl / "hostcheck.req.tmp").rename(ctl / "hostcheck.req")
    answer = wait_for(lambda: (ctl / "hostcheck.resp").exists() and (ctl / "hostcheck.resp").read_text(),
                      timeout=90, what="the host's answer (hostcheck.resp)")
    assert answer.startswith("200 Hello from alpha: pool=alpha"), answer


def test_reload_adds_a_pool(http, pool_files, journal):
    status, _, body = http.get("gamma.localhost")
    assert status == 404, (status, body)
    pool_files.write("gamma", bindings=["gamma.localhost"], env={"GREETING": "Hi from gamma"})
    main_before = unit_property("MainPID")
    ps = pool_files.reload(expect=["gamma"])               # systemctl reload hostd
    assert {"alpha", "beta", "gamma"} <= set(ps)
    status, _, body = http.wait_status("gamma.localhost", 200)[0:3]
    assert body.startswith("Hi from gamma: pool=gamma"), body
    # a reload is not a restart, and the other pools keep serving
    assert unit_property("MainPID") == main_before
    assert http.get("alpha.localhost")[0] == 200
    journal.wait_for_line("POOL=gamma", since=journal.start_cursor)


def test_journal_shows_start_and_pools(journal):
    text = journal.text()
    assert re.search(r"msg=\"hostd started: \d+ pools", text), text[-2000:]
    for pool in ("alpha", "beta"):
        assert re.search(rf"^pool_state .*POOL={pool}\b", text, re.M), f"no pool_state for {pool}"
    # the <N> prefix on stderr became the journal's PRIORITY (5 = notice for `start`)
    entries = [json.loads(l) for l in journal.lines(output="json")]
    start = [e for e in entries if str(e.get("MESSAGE", "")).startswith("start ")]
    assert start and start[-1]["PRIORITY"] == "5", start[-1:]


def test_stop_leaves_no_process_in_the_unit_cgroup(http, unit_cgroup, systemctl):
    assert http.get("alpha.localhost")[0] == 200       # on_demand pool: now has a worker
    worker_pids = {w["pid"] for p in pools().values() for w in p["workers"]}
    cgroup = unit_cgroup.path
    before = unit_cgroup.pids()
    assert worker_pids and worker_pids <= before, (worker_pids, before)  # workers stay in the unit
    t0 = time.monotonic()
    systemctl("stop", "hostd")
    took = time.monotonic() - t0
    assert unit_property("ActiveState") == "inactive"
    # "success": hostd drained and exited by itself, systemd had to kill nothing
    assert unit_property("Result") == "success", unit_property("Result")
    assert not unit_cgroup.pids_under(cgroup), f"left in {cgroup}: {unit_cgroup.pids_under(cgroup)}"
    alive = {p for p in before if Path(f"/proc/{p}").exists()
             and "hostd" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")}
    assert not alive, f"still running after stop: {alive}"
    assert took < 60, f"stop took {took:.1f}s"
    # and `systemctl start` brings it back (the autouse fixture would do it anyway)
    systemctl("start", "hostd")
    assert http.wait_status("beta.localhost", 200)[0] == 200
