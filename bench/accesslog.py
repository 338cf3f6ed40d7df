#!/usr/bin/env python3
"""Access log cost: keep-alive rps of hostd with `access_log` off and on (a file),
interleaved rounds, same machine and run. Usage: bench/accesslog.py [rounds] [seconds]"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from hostd_harness import Hostd  # noqa: E402


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t2", "-c50", f"-d{seconds}s", "-H", "Host: bench.test",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors", out)
    assert m and not errs, out
    return float(m.group(1))


def run(access_log: bool, seconds: int) -> tuple[float, int]:
    tmp = Path(tempfile.mkdtemp(prefix="hostd-albench-"))
    log = tmp / "access.log"
    pool = {"app": "app:application", "directory": str(REPO / "bench"), "bindings": ["bench.test"],
            "processes": 2, "threads": 1, "start_mode": "always_running"}
    h = Hostd(tmp, {"bench": pool}, hostd={"frontends": 2, "access_log": str(log) if access_log else ""})
    h.start()
    try:
        h.wait_for(lambda: any(w["state"] == "ready" for w in h.pool("bench")["workers"]), 20)
        wrk(h.port, 2)  # warm-up (grows the garden to 2)
        rps = wrk(h.port, seconds)
    finally:
        h.stop()
    lines = len(log.read_text().splitlines()) if access_log else 0
    shutil.rmtree(tmp, ignore_errors=True)
    return rps, lines


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    off, on = [], []
    for r in range(rounds):
        a, _ = run(False, seconds)
        b, lines = run(True, seconds)
        off.append(a)
        on.append(b)
        print(f"round {r + 1}: off {a:.0f} rps, on {b:.0f} rps ({lines} lines logged)", flush=True)
    mo, mn = sorted(off)[len(off) // 2], sorted(on)[len(on) // 2]
    print(f"median: off {mo:.0f} rps, on {mn:.0f} rps, ratio {mn / mo:.3f}")


if __name__ == "__main__":
    main()
