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
                    "file", "isolated", "isolation_reason", "preload", "zygote", "tls"}
STATUS_WORKER_KEYS = {"pid", "id", "state", "requests", "active", "connections", "busy",
                      "rss", "pss", "private", "cpu_seconds", "generation", "started", "start_reason",
                      "last_recycle_reason", "recycling", "boot_ms", "preloaded"}
COUNTERS_POOL_KEYS = {"name", "state", "requests", "requests_per_second", "active", "queued",
                      "responses", "bytes_in", "bytes_out", "workers", "memory",
                      "cpu_seconds", "recycles", "crashes", "rapid_fail_stops", "queue_full",
                      "bindings", "tls"}
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
