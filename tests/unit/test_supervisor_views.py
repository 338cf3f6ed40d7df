"""The status and counters documents are contracts (extend, never change): their key
sets pinned at every level, built by the real Views over real records and the fakes of
tests/unit/supervisor_fakes.py."""
import dataclasses

from hostd import config as hconfig
from supervisor_fakes import as_broken, make_house, pool_config  # noqa: F401

STATUS_KEYS = {"pid", "started", "listen", "listen_tls", "frontends", "zygote", "pools",
               "frontend_uid"}
STATUS_POOL_KEYS = {"name", "state", "bindings", "workers", "queued", "processes",
                    "start_mode", "error", "recycles", "limits", "isolation", "identity",
                    "file", "isolated", "isolation_reason", "preload", "zygote", "tls",
                    "interface", "websockets_open"}
STATUS_WORKER_KEYS = {"pid", "id", "state", "requests", "active", "connections", "busy",
                      "rss", "pss", "private", "cpu_seconds", "generation", "started", "start_reason",
                      "last_recycle_reason", "recycling", "boot_ms", "preloaded", "websockets"}
COUNTERS_POOL_KEYS = {"name", "state", "requests", "requests_per_second", "active", "queued",
                      "responses", "bytes_in", "bytes_out", "workers", "memory",
                      "cpu_seconds", "recycles", "crashes", "rapid_fail_stops", "queue_full",
                      "bindings", "tls", "websockets"}
COUNTERS_BINDING_KEYS = {"binding", "requests", "responses", "bytes_out"}
RESPONSE_KEYS = {"1xx", "2xx", "3xx", "4xx", "5xx"}


def house(make_house):
    """Pool a: a ready worker and one starting, opted out of isolation; pool b:
    isolated (no table: the defaults), on demand, none; pool c: its file is broken.
    One front end; hostd "is root" for the isolation decision."""
    h = make_house(pool_config("a", bindings=["a.test", "a.test/api"],
                               isolation=hconfig.Isolation(enabled=False)),
                   pool_config("b", start_mode="on_demand"))
    h.placement.root = True
    h.pools.add_broken(as_broken("c", [hconfig.ConfigError("/x/c.toml", "app", "missing")]))
    (w1,) = h.workers("a")
    h.up(w1)
    h.processes.spawn(h.pool("a"), "queue waiting")
    h.frontends.add(0, 4242)
    return h


def test_status_key_sets(make_house):
    h = house(make_house)
    doc = h.views.status()
    assert set(doc) == STATUS_KEYS
    assert [p["name"] for p in doc["pools"]] == ["a", "b", "c"]
    for p in doc["pools"]:
        assert set(p) == STATUS_POOL_KEYS, p["name"]
        for w in p["workers"]:
            assert set(w) == STATUS_WORKER_KEYS
    a, b, c = doc["pools"]
    assert [w["state"] for w in a["workers"]] == ["ready", "spawning"]
    assert (a["bindings"], a["processes"], a["start_mode"]) == \
        (["a.test", "a.test/api"], 1, "always_running")
    assert set(a["limits"]) == {f.name for f in dataclasses.fields(hconfig.Limits)}
    assert a["isolation"] is None and b["isolation"]["identity"] == "dynamic"
    assert (a["isolated"], a["isolation_reason"]) == (False, "[isolation] enabled = false")
    assert (b["isolated"], b["isolation_reason"]) == (True, "isolated")
    assert b["isolation"]["declared"] is False and c["isolated"] is None
    assert (c["state"], c["limits"], c["file"], c["processes"]) == ("failed", None, None, 0)
    assert c["error"] == "/x/c.toml: app: missing"
    assert doc["frontends"] == [{"slot": 0, "pid": 4242}]
    assert doc["zygote"] == h.processes.zygote_pid and doc["listen"] == ["127.0.0.1:8080"]


def test_counters_key_sets(make_house):
    h = house(make_house)
    doc = h.views.counters()
    assert set(doc) == {"pools", "front_ends"}
    assert doc["front_ends"] == {"refused": {}}
    h.frontends.refused["tls_not_tls"] += 2         # what COUNTERS' "refused" adds up
    assert h.views.counters()["front_ends"] == {"refused": {"tls_not_tls": 2}}
    assert [p["name"] for p in doc["pools"]] == ["a", "b", "c"]
    for p in doc["pools"]:
        assert set(p) == COUNTERS_POOL_KEYS, p["name"]
        assert set(p["responses"]) == RESPONSE_KEYS
        for b in p["bindings"]:
            assert set(b) == COUNTERS_BINDING_KEYS
            assert set(b["responses"]) == RESPONSE_KEYS
    a = doc["pools"][0]
    assert [b["binding"] for b in a["bindings"]] == ["a.test", "a.test/api"]
    assert a["workers"] == 2 and doc["pools"][2]["state"] == "failed"
    assert h.views.counters("b")["pools"][0]["name"] == "b"


def test_orphans_and_identity_documents(make_house):
    h = house(make_house)
    assert h.views.orphans() == []
    assert h.views.pool_identity("zz") == (False, {"ok": False, "message": "no pool named zz"})
    assert h.views.pool_identity("c") == (False, {
        "ok": False, "message": "pool c has a broken configuration: /x/c.toml: app: missing"})
    assert h.views.pool_identity("a") == (True, {"ok": True, "pool": "a"})


def test_websockets_in_status_counters_metrics_and_hostctl(make_house):
    """An ASGI pool's Scoreboard.WS_FIELDS: per worker in status, summed per pool in status
    and counters (an exited worker's messages and upgrades kept, its open ones gone), in
    /metrics only for ASGI pools; hostctl's text shows them."""
    from hostd import hostctl, metrics, protocol
    assert protocol.Scoreboard.WS_FIELDS == ("open", "messages", "upgraded")
    h = make_house(pool_config("a", interface="asgi", threads=1), pool_config("w"))
    (w1,) = h.workers("a")
    h.up(w1)
    w1.board.write_ws([3, 100, 7])
    h.exit(w1, 0)                                  # counted into the pool's totals
    h.processes.spawn(h.pool("a"), "queue waiting")
    w2 = h.workers("a")[-1]
    h.up(w2)
    w2.board.write_ws([2, 10, 4])
    status = {p["name"]: p for p in h.views.status()["pools"]}
    a, w = status["a"], status["w"]
    assert (a["interface"], a["websockets_open"]) == ("asgi", 2)
    # w2 and the replacement of w1 (still spawning: a zeroed board)
    assert sorted(x["websockets"]["open"] for x in a["workers"]) == [0, 2]
    assert {"open": 2, "messages": 10} in [x["websockets"] for x in a["workers"]]
    assert (w["interface"], w["websockets_open"]) == ("wsgi", 0)
    assert all(x["websockets"] == {"open": 0, "messages": 0} for x in w["workers"])
    counters = {p["name"]: p for p in h.views.counters()["pools"]}
    assert counters["a"]["websockets"] == {"open": 2, "messages": 110, "upgraded": 11}
    assert counters["w"]["websockets"] is None
    text = metrics.render(h.views.counters())
    assert 'hostd_websockets_open{pool="a"} 2' in text
    assert 'hostd_websocket_messages_total{pool="a"} 110' in text
    assert 'hostd_websocket_upgrades_total{pool="a"} 11' in text
    assert 'pool="w"' not in "".join(line for line in text.splitlines() if "websocket" in line)
    shown = hostctl.show_status(h.views.status())
    (row,) = [line for line in shown.splitlines() if line.split()[:2] == ["a", "asgi"]]
    assert row.split() == ["a", "asgi", "2"] and "WEBSOCKETS" in shown
    (row,) = [line for line in hostctl.show_counters(h.views.counters()).splitlines()
              if line.split()[:2] == ["a", "2"]]
    assert row.split() == ["a", "2", "110", "11"]
    plain = make_house(pool_config("q"))
    assert "WEBSOCKETS" not in hostctl.show_status(plain.views.status())
    assert "WS_MESSAGES" not in hostctl.show_counters(plain.views.counters())
    assert "websocket" not in metrics.render(plain.views.counters())  # WSGI pools add nothing


def test_hostctl_requests_shows_a_websocket_with_its_messages():
    from hostd import hostctl
    doc = {"requests": [
        {"pool": "a", "worker_pid": 7, "method": "GET", "path": "/chat", "host": "a.test",
         "client": "10.0.0.1", "elapsed": 75.25, "websocket": True, "messages": 42},
        {"pool": "a", "worker_pid": 7, "method": "POST", "path": "/api", "host": "a.test",
         "client": "10.0.0.2", "elapsed": 0.5}]}
    lines = hostctl.show_requests(doc).splitlines()
    assert lines[0].split() == ["POOL", "PID", "METHOD", "PATH", "CLIENT", "ELAPSED"]
    assert "websocket (42 messages)" in lines[1] and "/chat" in lines[1] and "75.2s" in lines[1]
    assert lines[2].split() == ["a", "7", "POST", "/api", "10.0.0.2", "0.5s"]


def test_counters_memory_is_the_cgroups_charge_else_the_workers_pss(make_house):
    """A pool with a cgroup reports its charge and reads no worker's smaps_rollup; one
    without sums its workers' PSS (views.pss, PssCache, its read replaced here)."""
    import types
    from kernel import procfs
    h = make_house(pool_config("a"), pool_config("b"))
    for name in ("a", "b"):
        (w,) = h.workers(name)
        h.up(w)
    read = []
    h.views.pss = procfs.PssCache(2.0, read=lambda pid: read.append(pid) or (5000, 1000))
    cg = types.SimpleNamespace(memory_usage=lambda: 123456)
    h.pool("a").limits = types.SimpleNamespace(cg=cg)
    h.pool("b").limits = None
    doc = {p["name"]: p for p in h.views.counters()["pools"]}
    assert doc["a"]["memory"] == 123456
    assert doc["b"]["memory"] == 5000
    assert read == [h.workers("b")[0].pid]
    # status reads each process once per PSS_MAX_AGE, counters included
    h.views.status()
    assert read.count(h.workers("b")[0].pid) == 1
