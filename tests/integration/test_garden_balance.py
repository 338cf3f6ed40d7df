"""Web garden under a kept-alive load: connections that never wait in the pool queue
still make the garden grow (saturation), and the saturated worker gives idle ones back
(rebalance) so that both workers serve. Real hostd, real sockets on loopback."""
from __future__ import annotations

import collections
import http.client
import json
import re
import threading
import time

import pytest

from hostd_harness import APPS, Hostd

CLIENTS = 8


def _events(h: Hostd, event: str) -> list[str]:
    return [l for l in h.log().splitlines() if re.match(rf"<\d>{event} ", l)]


@pytest.mark.parametrize("threads", [1, 2])
def test_keepalive_load_grows_the_garden_and_is_rebalanced(tmp_path, threads):
    # root workers ([isolation] enabled = false): the app's os.getpid() tells the workers apart
    h = Hostd(tmp_path, root_workers=True, pools={"g": {"app": "core_app:application", "directory": str(APPS),
                               "bindings": ["g.test"], "start_mode": "always_running",
                               "processes": 2, "threads": threads}})
    h.start()
    try:
        h.wait_for(lambda: [w for w in h.pool("g")["workers"] if w["state"] == "ready"],
                   what="first worker")
        conns = []
        for _ in range(CLIENTS):     # one by one: every connection lands on worker 1
            c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
            c.request("GET", "/", headers={"Host": "g.test"})
            c.getresponse().read()
            conns.append(c)
        [first] = h.pool("g")["workers"]
        assert first["connections"] == CLIENTS, first
        served: list[tuple[float, int]] = []
        failures = []
        stop = threading.Event()
        lock = threading.Lock()

        def client(c):
            while not stop.is_set():
                try:
                    # each request keeps the worker busy ~10 ms: 8 clients saturate one
                    c.request("GET", "/sleep?t=0.01", headers={"Host": "g.test"})
                    r = c.getresponse()
                    pid = json.loads(r.read())["pid"]
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    failures.append(repr(exc))
                    return
                with lock:
                    served.append((time.monotonic(), pid))

        ts = [threading.Thread(target=client, args=(c,), daemon=True) for c in conns]
        for t in ts:
            t.start()
        try:
            h.wait_for(lambda: len([w for w in h.pool("g")["workers"]
                                    if w["state"] == "ready"]) == 2 and _events(h, "rebalance"),
                       timeout=15, interval=0.2, what="a second worker and a rebalance")
            time.sleep(0.5)           # the handed-back connections' next requests land
            t0 = time.monotonic()
            time.sleep(2.0)
        finally:
            stop.set()
            for t in ts:
                t.join(timeout=30)
        assert failures == []
        window = collections.Counter(pid for t, pid in served if t >= t0)
        assert len(window) == 2 and min(window.values()) >= 0.25 * sum(window.values()), window
        spawns = [l for l in _events(h, "spawn") if "REASON=saturated" in l]
        assert len(spawns) == 1, spawns
        busy = [w["busy"] for w in h.pool("g")["workers"]]
        assert all(0.0 <= b <= 1.0 for b in busy), busy
        print(f"\nthreads={threads}: last 2 s served by {dict(window)}; "
              f"{_events(h, 'rebalance')[0].split('msg=')[1]}")
        for c in conns:
            c.close()
    finally:
        h.stop()
