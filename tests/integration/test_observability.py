"""Issue 8 (this machine's part): hostctl commands, live requests, counters, /metrics."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from hostd_harness import APPS, Hostd, free_port

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def pool(bindings, **kw):
    doc = {"app": "core_app:application", "directory": str(APPS), "bindings": bindings}
    doc.update(kw)
    return doc


@pytest.fixture
def served(tmp_path):
    metrics = free_port()
    h = Hostd(tmp_path, {"a": pool(["a.test", "a.test/api/"], processes=2),
                         "b": pool(["b.test"], start_mode="always_running")},
              hostd={"metrics_listen": f"127.0.0.1:{metrics}"})
    h.metrics_port = metrics
    h.start()
    yield h
    h.stop()


def test_every_hostctl_command_json_and_table(served):
    h = served
    assert h.get("a.test")[0] == 200
    h.wait_for(lambda: [w for w in h.pool("b")["workers"] if w["state"] == "ready"])
    for args in (["status"], ["counters"], ["counters", "a"], ["requests"], ["requests", "a"],
                 ["orphans"]):
        table = h.ctl(*args)
        assert table.returncode == 0, (args, table)
        assert table.stdout.splitlines()[0].split()[0] == "POOL", (args, table.stdout)
        doc = h.ctl(*args, "--json")
        assert doc.returncode == 0, (args, doc)
        json.loads(doc.stdout)
    (wpid,) = [w["pid"] for w in h.pool("b")["workers"]]
    for args, check in ((["pool", "recycle", "b"], lambda: wpid not in
                         [w["pid"] for w in h.pool("b")["workers"]]),
                        (["pool", "stop", "a"], lambda: h.pool("a")["state"] == "stopped"),
                        (["pool", "start", "a"], lambda: h.pool("a")["state"] == "started"),
                        (["reload"], lambda: True)):
        r = h.ctl(*args, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["ok"], (args, r)
        h.wait_for(check, what=" ".join(args))
    (wpid,) = [w["pid"] for w in h.pool("b")["workers"] if w["state"] == "ready"]
    assert h.ctl("worker", "recycle", str(wpid)).returncode == 0
    h.wait_for(lambda: [w for w in h.pool("b")["workers"]
                        if w["state"] == "ready" and w["pid"] != wpid], what="recycled")
    (wpid,) = [w["pid"] for w in h.pool("b")["workers"] if w["state"] == "ready"]
    r = h.ctl("worker", "kill", str(wpid))
    assert r.returncode == 0, r
    assert h.ctl("worker", "kill", "1").returncode == 1          # not ours
    assert h.ctl("pool", "start", "nope").returncode == 1


def test_requests_shows_a_running_request(served):
    h = served
    t = threading.Thread(target=lambda: h.get("a.test", "/api/sleep?t=5", timeout=20))
    t.start()
    try:
        def find():
            doc = json.loads(h.ctl("requests", "a", "--json").stdout)
            return [r for r in doc["requests"] if r["path"].startswith("/api/sleep")]
        first = h.wait_for(find, what="request listed")[0]
        time.sleep(1.0)
        second = find()[0]
        assert first["pool"] == "a" and first["path"] == "/api/sleep?t=5"
        assert first["method"] == "GET" and first["client"] == "127.0.0.1"
        assert second["elapsed"] >= first["elapsed"] + 0.8
        table = h.ctl("requests").stdout
        assert "/api/sleep?t=5" in table and "ELAPSED" in table
        assert json.loads(h.ctl("requests", "b", "--json").stdout)["requests"] == []
    finally:
        t.join(20)


def scrape(h) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{h.metrics_port}/metrics",
                                  timeout=5).read().decode()
    out = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_match_requests(served):
    h = served
    for _ in range(30):
        assert h.get("a.test")[0] == 200
    for _ in range(12):
        assert h.get("a.test", "/api/x")[0] == 200
    for _ in range(5):
        assert h.get("b.test")[0] == 200
    time.sleep(1.5)         # workers flush their counters every second
    m = scrape(h)
    assert m[("hostd_requests_total", (("pool", "a"),))] == 42
    assert m[("hostd_requests_total", (("pool", "b"),))] == 5
    assert m[("hostd_binding_requests_total", (("binding", "a.test"), ("pool", "a")))] == 30
    assert m[("hostd_binding_requests_total", (("binding", "a.test/api/"), ("pool", "a")))] == 12
    assert m[("hostd_responses_total", (("class", "2xx"), ("pool", "a")))] == 42
    assert m[("hostd_responses_total", (("class", "5xx"), ("pool", "a")))] == 0
    assert m[("hostd_sent_bytes_total", (("pool", "a"),))] > 42 * 50
    assert m[("hostd_workers", (("pool", "b"),))] == 1
    # counters survive a worker's exit
    (wpid,) = [w["pid"] for w in h.pool("b")["workers"]]
    assert h.ctl("worker", "recycle", str(wpid)).returncode == 0
    h.wait_for(lambda: wpid not in [w["pid"] for w in h.pool("b")["workers"]])
    assert scrape(h)[("hostd_requests_total", (("pool", "b"),))] == 5
    assert scrape(h)[("hostd_recycles_total", (("pool", "b"), ("reason", "on_demand")))] == 1
    counters = json.loads(h.ctl("counters", "a", "--json").stdout)["pools"][0]
    assert counters["requests"] == 42 and counters["responses"]["2xx"] == 42
    # a scraper that accepts gzip (Prometheus does) gets the same page compressed
    import gzip
    req = urllib.request.Request(f"http://127.0.0.1:{h.metrics_port}/metrics",
                                 headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(r.read()).decode()
    plain = urllib.request.urlopen(f"http://127.0.0.1:{h.metrics_port}/metrics",
                                   timeout=5).read().decode()
    def series(page):       # (values such as requests/s move between two scrapes)
        return {line.rsplit(" ", 1)[0] for line in page.splitlines()}
    assert series(text) == series(plain) and len(series(plain)) > 20
    req = urllib.request.Request(f"http://127.0.0.1:{h.metrics_port}/metrics",
                                 headers={"Accept-Encoding": "gzip;q=0, identity"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.headers["Content-Encoding"] is None and series(r.read().decode()) == series(plain)
