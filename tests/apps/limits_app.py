"""Test app for [limits] (tests/integration/test_limits.py), bounded in every path:
/           its pid
/alloc?mb=N     keeps N MiB, every page touched (an OOM kill ends it at memory_max)
/forkbomb?seconds=S  forks as fast as it can for S seconds; every child sleeps until the
                 deadline and exits, so the bomb stops itself; answers "forks eagain"
/burn?seconds=S  spins S seconds; answers "cpu_seconds wall_seconds" of this thread
/cpus           the worker's Cpus_allowed_list (/proc/self/status)
"""
import os
import time

_kept = []


def _arg(environ, name, default):
    for part in environ.get("QUERY_STRING", "").split("&"):
        k, _, v = part.partition("=")
        if k == name:
            return float(v)
    return default


def application(environ, start_response):
    path = environ["PATH_INFO"]
    body = str(os.getpid())
    if path == "/alloc":
        for _ in range(int(_arg(environ, "mb", 10))):
            chunk = bytearray(1 << 20)
            for i in range(0, len(chunk), 4096):
                chunk[i] = 1
            _kept.append(chunk)
        body = f"kept {len(_kept)} MiB"
    elif path == "/forkbomb":
        deadline = time.monotonic() + _arg(environ, "seconds", 3)
        forks = eagain = 0
        children = []
        while time.monotonic() < deadline:
            try:
                pid = os.fork()
            except BlockingIOError:       # EAGAIN: pids.max reached
                eagain += 1
                time.sleep(0.005)
                continue
            if pid == 0:
                try:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                finally:
                    os._exit(0)
            forks += 1
            children.append(pid)
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        body = f"{forks} {eagain}"
    elif path == "/burn":
        seconds = _arg(environ, "seconds", 5)
        t0, c0 = time.monotonic(), time.thread_time()
        while time.monotonic() - t0 < seconds:
            pass
        body = f"{time.thread_time() - c0:.3f} {time.monotonic() - t0:.3f}"
    elif path == "/cpus":
        with open("/proc/self/status") as f:
            body = next(l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list"))
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
