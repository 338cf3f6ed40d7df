#!/usr/bin/env python3
"""A thousand sites on one machine: what hostd costs for sites it is not serving.

    sudo .venv/bin/python bench/density.py [--pools 1000] [--active 50] [--json out.json]
                                           [--isolation default|off|none-net]
                                           [--app hello|flask] [--no-preload] [--no-emperor]
                                           [--reback MIB]

Writes N pool files (pool pNNNN answers pNNNN.density, the hello app of bench/app.py in
a directory of its own, start_mode on_demand, idle_timeout 0), starts hostd (from this checkout, with the test
harness) and measures, in one run:

- ready: hostd's start to its `ready` event (and to the control socket answering);
- the resident memory of the supervisor, the front ends and the zygote (PSS, from
  /proc/PID/smaps_rollup), with nothing running;
- `hostctl status --json` (median of 5) and its size, and `/metrics` size and time;
- the idle supervisor's CPU over 10 s (% of one core), with every pool cold;
- a reload after one pool file changed: SIGHUP to the `reloaded` event, while a client
  keeps requesting other (active) pools, counting failed requests;
- demand start of cold pools: the first request to 30 pools that have no worker
  (median and p90 to the last byte), and to 30 warm ones (`preload = true`, their own
  zygote ready: the worker is forked from it), with the private memory of the workers
  of each kind and of the pool zygotes; once while little else runs (quiet_*: 60
  workers and 30 pool zygotes up at most) and once with the --many pools' 230 zygotes
  and spares up; each set with what a page of new memory cost before and after it
  (bench/freshpages.py: on this VM, 1.5 or 12 µs, which changes every boot step);
- throughput with 50 connections spread over --active pools (wrk with a Lua script that
  rotates the Host header) against the same 50 connections on one pool, with hostd's CPU
  per request; in the same run (unless --no-emperor) the same for uWSGI's Emperor running
  the same --active sites as vassals behind its HTTP router (bench/emperor.py).

Isolation: `default` (no [isolation] table: isolated when root), `off` ([isolation]
enabled = false) or `none-net` (isolated with network = "none": a network namespace per
pool). The figures print as a table; --json writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

import freshpages  # noqa: E402
from hostd_harness import Hostd  # noqa: E402  (a real hostd, as the tests run it)


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def kernel_kib() -> int:
    """The kernel's own memory now (/proc/meminfo Slab + Percpu + KernelStack +
    PageTables, KiB): what namespaces, cgroups and processes cost it."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return sum(int(fields.get(k, "0 kB").split()[0])
               for k in ("Slab", "Percpu", "KernelStack", "PageTables"))


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def timed(fn, n=5):
    times = []
    out = None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def pool_doc(site: Path, name: str, isolation: str, preload: bool = False,
             venv: Path | None = None) -> dict:
    doc = {"app": "app:application", "directory": str(site), "bindings": [f"{name}.density"],
           "start_mode": "on_demand", "idle_timeout": "0"}
    if preload:
        doc["preload"] = True
    if venv is not None:
        doc["virtualenv"] = str(venv)
    if isolation == "off":
        doc["isolation"] = {"enabled": False}
    elif isolation == "none-net":
        doc["isolation"] = {"network": "none"}
    return doc


def wait_log(h: Hostd, pattern: str, after: int, timeout: float) -> float:
    """Monotonic time at which `pattern` appeared in the log after offset `after`."""
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        if rx.search(h.log()[after:]):
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError(pattern)


def hostd_cgroups(pid: int) -> list[str]:
    """The base cgroup directories named hostd.<pid> of the supervisor `pid`, in every
    hierarchy (a walk three levels deep under /sys/fs/cgroup and each v1 hierarchy)."""
    name, out = f"hostd.{pid}", []
    for top in ["/sys/fs/cgroup", *sorted(str(p) for p in Path("/sys/fs/cgroup").iterdir()
                                          if p.is_dir())]:
        for d, subdirs, _ in os.walk(top):
            depth = d[len(top):].count("/")
            if os.path.basename(d) == name:
                out.append(d)
                subdirs[:] = []
            elif depth >= 3:
                subdirs[:] = []
    return sorted(set(out))


def census(h: Hostd) -> dict:
    """What hostd holds now: descriptors of the supervisor, front ends and zygote,
    processes in its process group of descendants, cgroup directories under its base,
    network namespaces pinned in run_dir, live workers."""
    st = h.status()
    fds = 0
    for pid in [st["pid"], st["zygote"], *[f["pid"] for f in st["frontends"]]]:
        try:
            fds += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    kids = subprocess.run(["pgrep", "-f", "hostd: "], capture_output=True, text=True).stdout
    cgroups = sum(sum(1 for _ in os.walk(base)) for base in hostd_cgroups(st["pid"]))
    netns = len(list((h.root / "run" / "netns").glob("*"))) \
        if (h.root / "run" / "netns").exists() else 0
    workers = sum(len(p["workers"]) for p in st["pools"])
    return {"fds": fds, "processes": len(kids.split()), "cgroups": cgroups,
            "netns": netns, "workers": workers}


def boot_medians(workers: list) -> dict:
    """{step: median ms} of the workers' boot_ms (hostctl status)."""
    steps: dict = {}
    for w in workers:
        for k, v in (w.get("boot_ms") or {}).items():
            steps.setdefault(k, []).append(v)
    return {k: round(statistics.median(v), 2) for k, v in steps.items()}


def first_request_ms(h: Hostd, host: str) -> float:
    t0 = time.perf_counter()
    data = h.raw(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
                 timeout=30)
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{host}: {data[:200]!r}")
    return (time.perf_counter() - t0) * 1000


def demand_starts(h: Hostd, names: list[str], res: dict, prefix: str, steps: str) -> list:
    """The first request to each pool in `names` (none has a worker yet): its median
    and p90 (ms, to the last byte) as res[prefix + "_ms_median" | "_ms_p90"], the boot
    steps of the workers started as res[steps + "_boot_steps_ms_median"], and what a
    page of new memory cost before and after them (µs, bench/freshpages.py's probe) as
    res[prefix + "_fresh_page_us"]. Returns those workers (hostctl status entries, read
    once)."""
    before = freshpages.probe()
    times = [first_request_ms(h, f"{n}.density") for n in names]
    res[f"{prefix}_fresh_page_us"] = [before, freshpages.probe()]
    res[f"{prefix}_ms_median"] = round(statistics.median(times), 1)
    res[f"{prefix}_ms_p90"] = round(sorted(times)[int(0.9 * (len(times) - 1))], 1)
    wanted = set(names)
    ws = [w for p in h.status()["pools"] if p["name"] in wanted for w in p["workers"]
          if w["state"] == "ready"]
    res[f"{steps}_boot_steps_ms_median"] = boot_medians(ws)
    return ws


def preload_on(h: Hostd, pools: dict, names: set, doc_of, timeout: float,
               while_starting=None) -> tuple:
    """Turns preload on for `names` (their pool files rewritten by doc_of(name), one
    SIGHUP) and waits until each one's zygote is ready or failed; while_starting(), if
    given, runs once right after the reload. Returns (the reload's ms, the zygotes'
    status entries, monotonic time of the SIGHUP)."""
    for n in sorted(names):
        pools[n] = doc_of(n)
        h.write_pool(n, pools[n])
    mark = len(h.log())
    t_z = time.monotonic()
    h.signal(signal.SIGHUP)
    wait_log(h, r"configuration reloaded", mark, 120)
    reload_ms = round((time.monotonic() - t_z) * 1000, 1)
    if while_starting is not None:
        while_starting()
    zs: list = []
    while time.monotonic() - t_z < timeout:
        doc = json.loads(h.ctl("status", "--json").stdout)
        zs = [p.get("zygote") or {} for p in doc["pools"] if p["name"] in names]
        if all(z.get("state") in ("ready", "failed") for z in zs):
            break
        time.sleep(0.5)
    return reload_ms, zs, t_z


#: one wrk thread per connection, each bound to one host (setup runs per thread): a
#: client keeps to its site, as browsers do; rotating hosts on one connection would
#: measure reroutes instead
WRK_LUA = """
local hosts = {%s}
local n = 0
function setup(thread)
  n = n + 1
  thread:set("host", hosts[((n - 1) %% #hosts) + 1])
end
function init(args)
  req = wrk.format("GET", "/", {Host = host})
end
function request()
  return req
end
"""


def wrk_rps(port: int, hosts: list[str], seconds: int, tmp: Path) -> float:
    return wrk_run(port, hosts, seconds, tmp)[0]


def cpu_of(pids) -> int:
    """utime + stime ticks of these processes, summed (the gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            total += cpu_ticks(pid)
        except (OSError, IndexError, ValueError):
            pass
    return total


def wrk_cpu(port: int, hosts: list[str], seconds: int, tmp: Path, pids_fn) -> tuple:
    """(rps, server CPU µs per request): wrk_run, with the CPU of pids_fn()'s processes
    over it."""
    pids = pids_fn()
    c0 = cpu_of(pids)
    rps, n = wrk_run(port, hosts, seconds, tmp)
    used = (cpu_of(pids) - c0) / os.sysconf("SC_CLK_TCK")
    return rps, round(used * 1e6 / n, 1) if n else 0.0


def wrk_run(port: int, hosts: list[str], seconds: int, tmp: Path) -> tuple[float, int]:
    """(requests/s, requests) of one wrk run, 50 connections, one host per connection."""
    script = tmp / f"hosts{len(hosts)}.lua"
    script.write_text(WRK_LUA % ", ".join(f'"{h}"' for h in hosts))
    out = subprocess.run(["wrk", "-t50", "-c50", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"wrk saw {bad.group(1)} non-2xx responses:\n{out}")
    return (float(m.group(1)) if m else 0.0), (int(n.group(1)) if n else 0)


FLASK_APP = """from flask import Flask

application = Flask(__name__)


@application.route("/")
def hello():
    return "Hello, world!"
"""


def flask_venv(root: Path) -> Path:
    """A virtualenv with Flask, for --app flask (pip from the configured index)."""
    venv = root / "flask-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "flask"], check=True)
    for d, _, files in os.walk(venv):
        os.chmod(d, 0o755)
    return venv


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pools", type=int, default=1000)
    ap.add_argument("--active", type=int, default=50, help="pools the spread load uses")
    ap.add_argument("--isolation", choices=["default", "off", "none-net"], default="default")
    ap.add_argument("--seconds", type=int, default=6, help="each wrk run")
    ap.add_argument("--many", type=int, default=200, help="pools made active at once")
    ap.add_argument("--no-preload", action="store_true",
                    help="no preload pools (by default the --many pools and 30 of the "
                         "cold-start pools have preload = true)")
    ap.add_argument("--app", choices=["hello", "flask"], default="hello",
                    help="each site's app: bench/app.py's hello, or a Flask hello app "
                         "(Flask in a virtualenv made for the run)")
    ap.add_argument("--no-emperor", action="store_true",
                    help="skip uWSGI's Emperor (bench/emperor.py) beside the spread figures")
    ap.add_argument("--reback", type=int, default=0, metavar="MIB",
                    help="before each demand-start set with the zygotes up, touch and free "
                         "MIB MiB (bench/freshpages.py reback): the set then runs on pages "
                         "the host backs, as the quiet ones do (default 0: as the VM left "
                         "them)")
    ap.add_argument("--json")
    ap.add_argument("--log", help="copy hostd's log here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (cgroups; isolation)", file=sys.stderr)
        return 2
    if not shutil.which("wrk"):      # as bench/run does: Debian's package
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                       stdout=subprocess.DEVNULL)
        if not shutil.which("wrk"):
            print("wrk is not installed and could not be installed (apt-get install wrk)",
                  file=sys.stderr)
            return 2
    root = Path(tempfile.mkdtemp(prefix="hostd-density-"))
    root.chmod(0o755)
    names = [f"p{i:04d}" for i in range(args.pools)]
    sites = root / "sites"
    sites.mkdir(mode=0o755)
    venv = flask_venv(root) if args.app == "flask" else None
    for n in names:             # each site its own directory, as on a shared host
        d = sites / n
        d.mkdir(mode=0o755)
        if args.app == "flask":
            (d / "app.py").write_text(FLASK_APP)
        else:
            shutil.copy(REPO / "bench" / "app.py", d / "app.py")
        (d / "app.py").chmod(0o644)
    # preload: the pools made active at once (their private memory) and 30 of the
    # demand-start pools (first request of a warm pool); the last 30 stay cold
    cold, cold_warm = names[-30:], names[-60:-30]
    # the same first requests while little else runs (quiet_*): 30 other cold pools, and
    # 30 other warm ones whose zygotes are the only ones up; measured before the --many
    # pools and their zygotes start, since a box with a few hundred isolated processes
    # up boots a new worker more slowly (every boot step, bench/README.md)
    quiet_cold, quiet_warm = names[-120:-90], names[-90:-60]
    preloaded = set() if args.no_preload else set(names[:args.many]) | set(cold_warm)
    quiet_preloaded = set() if args.no_preload else set(quiet_warm)
    # every pool starts cold (on_demand, no preload): the figures of "nothing running";
    # then a reload turns preload on for those pools (an operator warming 230 sites)
    pools = {n: pool_doc(sites / n, n, args.isolation, False, venv) for n in names}
    res: dict = {"pools": args.pools, "isolation": args.isolation, "app": args.app,
                 "preload_pools": len(preloaded)}
    from hostd_harness import free_port
    mport = free_port()
    h = Hostd(root, pools=pools, hostd={"frontends": 2,
                                        "metrics_listen": f"127.0.0.1:{mport}"})
    kernel_before = kernel_kib()
    t0 = time.monotonic()
    h.start(timeout=120)
    res["control_up_s"] = round(time.monotonic() - t0, 3)
    res["ready_s"] = round(wait_log(h, r"\bready\b.*hostd is ready|hostd is ready", 0, 120) - t0, 3)
    try:
        st = h.status()
        procs = [st["pid"], st["zygote"], *[f["pid"] for f in st["frontends"]]]
        res["pss_mib_supervisor_frontends_zygote"] = round(sum(map(pss_kib, procs)) / 1024, 1)
        ms, out = timed(lambda: h.ctl("status", "--json").stdout)
        res["status_json_ms"] = round(ms, 1)
        res["status_json_kib"] = round(len(out) / 1024, 1)
        ms, _ = timed(lambda: h.ctl("status", names[7], "--json").stdout)
        res["status_one_pool_ms"] = round(ms, 1)
        t_m = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=30) as r:
            metrics = r.read()
        res["metrics_ms"] = round((time.perf_counter() - t_m) * 1000, 1)
        res["metrics_kib"] = round(len(metrics) / 1024, 1)
        req = urllib.request.Request(f"http://127.0.0.1:{mport}/metrics",
                                     headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=30) as r:
            res["metrics_gzip_kib"] = round(len(r.read()) / 1024, 1)
        ms, body = timed(lambda: h.ctl("counters", "--json").stdout)
        res["counters_json_ms"] = round(ms, 1)
        res["counters_json_kib"] = round(len(body) / 1024, 1)
        if args.isolation == "none-net":
            # their network namespaces are made in the background after the start
            netns_dir = h.root / "run" / "netns"
            while time.monotonic() - t0 < 120 and \
                    len(list(netns_dir.glob("*"))) < args.pools:
                time.sleep(0.2)
            res["netns_all_made_s"] = round(time.monotonic() - t0, 1)
        res["kernel_mib_for_hostd_cold"] = round((kernel_kib() - kernel_before) / 1024, 1)
        # the idle supervisor, every pool cold
        sup = st["pid"]
        time.sleep(1)
        c0, w0 = cpu_ticks(sup), time.monotonic()
        time.sleep(10)
        res["idle_supervisor_pct"] = round((cpu_ticks(sup) - c0) / os.sysconf("SC_CLK_TCK")
                                           / (time.monotonic() - w0) * 100, 2)
        # demand start while little else runs: 30 cold pools; then preload on for 30
        # others (one reload), and once their zygotes are ready, their first requests
        warm_doc = lambda n: pool_doc(sites / n, n, args.isolation, True, venv)  # noqa: E731
        demand_starts(h, quiet_cold, res, "quiet_cold_start", "quiet_cold")
        if quiet_preloaded:
            preload_on(h, pools, quiet_preloaded, warm_doc, 300)
            time.sleep(2)     # their spares fork right after
            ws = demand_starts(h, quiet_warm, res, "quiet_preload_start", "quiet_preload")
            res["quiet_preload_workers_forked_from_zygote"] = sum(w["preloaded"] for w in ws)
            if ws:
                res["quiet_worker_private_mib_median"] = round(statistics.median(
                    w["private"] for w in ws) / 1048576, 2)
        if preloaded:
            # preload on for the --many pools and 30 demand-start pools: one reload;
            # their zygotes import their apps in the background, two at a time
            res["reload_preload_on_ms"], zs, t_z = preload_on(
                h, pools, preloaded, warm_doc, 600,
                while_starting=lambda: res.__setitem__(
                    "status_json_ms_while_zygotes_start",
                    round(timed(lambda: h.ctl("status", "--json").stdout, 1)[0], 1)))
            res["preload_zygotes_ready"] = sum(z.get("state") == "ready" for z in zs)
            res["preload_zygotes_all_ready_s"] = round(time.monotonic() - t_z, 1)
            res["zygote_private_mib_median"] = round(statistics.median(
                z.get("private", 0) for z in zs) / 1048576, 2)
            res["zygote_pss_mib_median"] = round(statistics.median(
                z.get("pss", 0) for z in zs) / 1048576, 2)
            res["zygote_boot_ms_median"] = round(statistics.median(
                z.get("boot_ms") or 0 for z in zs), 1)
            time.sleep(3)     # their spares fork right after: let the box settle
            spares = subprocess.run(["pgrep", "-f", "^hostd: spare "], capture_output=True,
                                    text=True).stdout.split()
            res["spares"] = len(spares)
            if spares:
                from kernel import procfs
                res["spare_private_mib_median"] = round(statistics.median(
                    procfs.pss_private(int(p))[1] for p in spares) / 1048576, 2)
                res["spare_pss_mib_median"] = round(statistics.median(
                    procfs.pss_private(int(p))[0] for p in spares) / 1048576, 2)
        # demand start of 30 cold pools
        if args.reback:
            res["reback_mib"] = args.reback
            res["reback_us_per_page"] = [freshpages.reback(args.reback)]
        ws = demand_starts(h, cold, res, "cold_start", "cold")
        res["worker_private_mib_median_no_preload"] = round(
            statistics.median(w["private"] for w in ws) / 1048576, 2)
        if preloaded:
            # warm pools (preload = true): their zygotes are ready (above); the first
            # request forks a worker from one
            if args.reback:
                res["reback_us_per_page"].append(freshpages.reback(args.reback))
            ws = demand_starts(h, cold_warm, res, "preload_start", "preload")
            res["preload_workers_forked_from_zygote"] = sum(w["preloaded"] for w in ws)
        # start the active pools, then the spread against one pool
        active = names[:args.active]
        for n in active:
            first_request_ms(h, f"{n}.density")
        hosts = [f"{n}.density" for n in active]

        def hostd_pids():
            doc = h.status()
            return [doc["pid"], *[f["pid"] for f in doc["frontends"]],
                    *[w["pid"] for p in doc["pools"] if p["name"] in set(active)
                      for w in p["workers"] if w["pid"]]]
        one, one_cpu = wrk_cpu(h.port, hosts[:1], args.seconds, root, hostd_pids)
        spread, spread_cpu = wrk_cpu(h.port, hosts, args.seconds, root, hostd_pids)
        emperor = None
        if not args.no_emperor:
            # uWSGI's Emperor, the same apps as vassals behind its HTTP router, in the
            # same run, interleaved with hostd's (hostd idles meanwhile, and the
            # Emperor is gone before hostd's last run)
            from emperor import Emperor
            t_e = time.monotonic()
            with Emperor({f"{n}.density": sites / n for n in active}) as em:
                res["emperor_start_s"] = round(time.monotonic() - t_e, 2)
                e_one, e_one_cpu = wrk_cpu(em.port, hosts[:1], args.seconds, root, em.pids)
                e_spread, e_spread_cpu = wrk_cpu(em.port, hosts, args.seconds, root, em.pids)
                e_one2, _ = wrk_cpu(em.port, hosts[:1], args.seconds, root, em.pids)
                emperor = (e_one, e_one2, e_spread, e_one_cpu, e_spread_cpu, len(em.pids()))
        one2, _ = wrk_cpu(h.port, hosts[:1], args.seconds, root, hostd_pids)
        res["rps_one_pool"] = round((one + one2) / 2)
        res["rps_spread"] = round(spread)
        res["spread_ratio"] = round(spread / ((one + one2) / 2), 2)
        res["cpu_us_per_request_one_pool"] = one_cpu
        res["cpu_us_per_request_spread"] = spread_cpu
        if emperor is not None:
            e_one, e_one2, e_spread, e_one_cpu, e_spread_cpu, e_procs = emperor
            res["emperor_rps_one"] = round((e_one + e_one2) / 2)
            res["emperor_rps_spread"] = round(e_spread)
            res["emperor_spread_ratio"] = round(e_spread / ((e_one + e_one2) / 2), 2)
            res["emperor_cpu_us_per_request_one"] = e_one_cpu
            res["emperor_cpu_us_per_request_spread"] = e_spread_cpu
            res["emperor_processes"] = e_procs
            res["hostd_vs_emperor_spread"] = round(spread / e_spread, 2) if e_spread else None
        # a reload after one file changed, with a client on the active pools meanwhile
        failures, served = [], [0]
        stop = threading.Event()

        def client():
            i = 0
            while not stop.is_set():
                host = f"{active[i % len(active)]}.density"
                i += 1
                try:
                    if h.get(host, "/", timeout=10)[0] != 200:
                        failures.append(host)
                    else:
                        served[0] += 1
                except OSError as exc:
                    failures.append(f"{host}: {exc}")
        t = threading.Thread(target=client)
        t.start()
        time.sleep(0.5)
        target = names[len(names) // 2]
        doc = dict(pools[target], processes=2)
        h.write_pool(target, doc)
        mark = len(h.log())
        t1 = time.monotonic()
        h.signal(signal.SIGHUP)
        res["reload_one_changed_ms"] = round((wait_log(h, r"configuration reloaded", mark, 60)
                                              - t1) * 1000, 1)
        time.sleep(0.5)
        stop.set()
        t.join()
        res["reload_failed_requests"] = len(failures)
        res["reload_requests_served"] = served[0]
        # 200 pools active at once: every one answers; what a worker costs
        many = names[:args.many]
        answered = sum(h.get(f"{n}.density", "/", timeout=30)[0] == 200 for n in many)
        res["many_active_pools"] = len(many)
        res["many_answered"] = answered
        st = h.status()
        ws = [w for p in st["pools"] if p["name"] in set(many) for w in p["workers"]
              if w["state"] == "ready"]
        res["many_preloaded_workers"] = sum(w["preloaded"] for w in ws)
        # with every worker and zygote up: the first call reads every process's PSS,
        # the next ones within 2 s take it from hostd's PssCache
        ms, _ = timed(lambda: h.ctl("status", "--json").stdout, 1)
        res["status_json_ms_busy_first"] = round(ms, 1)
        ms, _ = timed(lambda: h.ctl("status", "--json").stdout)
        res["status_json_ms_busy"] = round(ms, 1)
        res["worker_private_mib_median"] = round(statistics.median(w["private"] for w in ws)
                                                 / 1048576, 2)
        res["worker_pss_mib_median"] = round(statistics.median(w["pss"] for w in ws) / 1048576, 2)
        res["worker_rss_mib_median"] = round(statistics.median(w["rss"] for w in ws) / 1048576, 2)
        # leaks: a reload storm (10 in 2 s, a file changed each time) and 500 pools
        # stopped at once must leave no descriptor, cgroup, netns or process behind
        before = census(h)
        for i in range(10):
            h.write_pool(names[-1 - i], dict(pools[names[-1 - i]], processes=1 + i % 2))
            h.signal(signal.SIGHUP)
            time.sleep(0.2)
        time.sleep(3)
        from concurrent.futures import ThreadPoolExecutor
        from hostd import hostctl
        stopping = names[:500]
        t_stop = time.monotonic()
        with ThreadPoolExecutor(32) as ex:
            codes = list(ex.map(lambda n: hostctl.call(h.socket_path, "POST",
                                                       f"/pools/{n}/stop")[0], stopping))
        res["stop_500_calls_ok"] = sum(c == 200 for c in codes)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = [p for p in h.status()["pools"] if p["name"] in set(stopping)
                    and (p["state"] != "stopped" or p["workers"])]
            if not left:
                break
            time.sleep(0.2)
        res["stop_500_s"] = round(time.monotonic() - t_stop, 2)
        after = census(h)
        res["census_before"] = before
        res["census_after_stop"] = after
        res["leaked_after_stop"] = {k: after[k] - before[k] for k in before
                                    if k != "workers" and after[k] > before[k]}
    finally:
        if args.log:
            shutil.copy(h.log_path, args.log)
        h.stop(timeout=120)
        if args.log:
            shutil.copy(h.log_path, args.log)
    # after hostd's stop: nothing of it left
    time.sleep(1)
    kids = subprocess.run(["pgrep", "-f", "hostd: "], capture_output=True, text=True).stdout
    res["processes_left_after_exit"] = len(kids.split())
    res["netns_left_after_exit"] = len(list((root / "run" / "netns").glob("*"))) \
        if (root / "run" / "netns").exists() else 0
    shutil.rmtree(root, ignore_errors=True)
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
