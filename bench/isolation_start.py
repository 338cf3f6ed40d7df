#!/usr/bin/env python3
"""Demand start to first response, with and without isolation, in one run.

    sudo .venv/bin/python bench/isolation_start.py [--rounds 30] [--json out.json]

One hostd (root, from this checkout) serves four on_demand pools with the same hello
app (bench/app.py): "plain" ([isolation] enabled = false: cgroup only, hostd's uid, the
opt-out), "default" (no [isolation] table: what every pool gets, a dynamic uid + user,
mount and pid namespaces, the host's network), "full" (the same with network = "none")
and "private" (network = "private", a veth pair). Each round, for each pool in turn: stop it,
start it (no worker exists: on_demand), then time one request from connect to the last
byte of the response. That is the whole demand-start path: front end routes → the
supervisor sees the queue → cgroup → zygote fork → namespaces → app import → ready →
the worker takes the connection.

The breakdown comes from the worker's own boot stamps (`hostctl status` boot_ms: the
zygote and the worker stamp CLOCK_MONOTONIC at each step). Prints medians and p90,
and ratios against "plain". Targets: full ≤ 50 ms (the isolation issue); default within
1.3× of plain (the isolated-default issue).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from hostd_harness import Hostd  # noqa: E402  (the test harness runs a real hostd)

POOLS = {"plain": {"enabled": False}, "default": None, "full": {"network": "none"},
         "private": {"network": "private"}}


def one_request(h: Hostd, host: str) -> float:
    t0 = time.perf_counter()
    data = h.raw(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
                 timeout=10)
    elapsed = (time.perf_counter() - t0) * 1000
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{host}: {data[:200]!r}")
    return elapsed


def wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise TimeoutError("state not reached")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (uids, namespaces, cgroups)", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="hostd-isobench-"))
    site = root / "site"
    site.mkdir(mode=0o755)
    site.chmod(0o755)
    shutil.copy(REPO / "bench" / "app.py", site / "app.py")
    (site / "app.py").chmod(0o644)
    pools = {}
    for name, iso in POOLS.items():
        doc = {"app": "app:application", "directory": str(site), "bindings": [f"{name}.bench"],
               "start_mode": "on_demand", "idle_timeout": "0"}
        if iso is not None:
            doc["isolation"] = iso
        pools[name] = doc
    h = Hostd(root, pools=pools, hostd={"private_network": "198.18.192.0/24", "frontends": 1})
    h.start()
    results = {n: {"e2e": [], "boot": []} for n in POOLS}
    try:
        for _ in range(args.rounds):
            for name in POOLS:
                h.ctl("pool", "stop", name)
                wait(lambda: h.pool(name)["state"] == "stopped" and not h.pool(name)["workers"])
                h.ctl("pool", "start", name)
                wait(lambda: h.pool(name)["state"] == "started")
                results[name]["e2e"].append(one_request(h, f"{name}.bench"))
                w = h.pool(name)["workers"]
                if w and w[0].get("boot_ms"):
                    results[name]["boot"].append(w[0]["boot_ms"])
    finally:
        h.stop()
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(results["plain"]["e2e"])
    print(f"demand start → first response, {args.rounds} rounds, one run "
          f"(medians; ratio against plain)\n")
    print(f"{'pool':<8} {'median ms':>10} {'p90 ms':>8} {'× plain':>8}")
    for name, r in results.items():
        med = statistics.median(r["e2e"])
        print(f"{name:<8} {med:>10.1f} {pct(r['e2e'], 90):>8.1f} {med / base:>8.2f}")
    print("\nbreakdown of the worker's boot (median ms per step; 'total' = spawn request → READY):")
    steps = []
    for r in results.values():
        for b in r["boot"]:
            steps += [s for s in b if s not in steps]
    print(f"{'step':<12}" + "".join(f"{n:>9}" for n in POOLS))
    for step in steps:
        row = []
        for name in POOLS:
            vals = [b[step] for b in results[name]["boot"] if step in b]
            row.append(f"{statistics.median(vals):>9.2f}" if vals else f"{'-':>9}")
        print(f"{step:<12}" + "".join(row))
    full = statistics.median(results["full"]["e2e"])
    print(f"\ntarget: full isolation ≤ 50 ms: {'PASS' if full <= 50 else 'FAIL'} ({full:.1f} ms)")
    default = statistics.median(results["default"]["e2e"])
    print(f"target: default (no [isolation] table) ≤ 1.3× plain (enabled = false): "
          f"{'PASS' if default <= 1.3 * base else 'FAIL'} ({default / base:.2f}×: "
          f"{default:.1f} ms against {base:.1f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
