"""hostd.metrics.render: the exposition text, parsed by prometheus_client's own parser."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from hostd import metrics


def _pool(name, responses=None, binding_responses=None):
    zero = {f"{c}xx": 0 for c in range(1, 6)}
    return {"name": name, "state": "started", "requests": 0, "requests_per_second": 0.0,
            "active": 0, "queued": 0, "responses": {**zero, **(responses or {})},
            "bytes_in": 0, "bytes_out": 0, "workers": 0, "memory": 0, "cpu_seconds": 0.0,
            "recycles": {}, "crashes": 0, "rapid_fail_stops": 0, "queue_full": 0,
            "bindings": [{"binding": f"{name}.density", "requests": 0,
                          "responses": {**zero, **(binding_responses or {})}, "bytes_out": 0}]}


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_classes_2xx_and_5xx_always_the_others_once_nonzero():
    m = samples(metrics.render({"pools": [_pool("a"), _pool("b", {"4xx": 3, "2xx": 5},
                                                           {"4xx": 3, "2xx": 5})]}))
    classes = lambda pool, name="hostd_responses_total": sorted(
        dict(k[1])["class"] for k in m if k[0] == name and dict(k[1])["pool"] == pool)
    assert classes("a") == ["2xx", "5xx"]
    assert classes("b") == ["2xx", "4xx", "5xx"]
    assert m[("hostd_responses_total", (("class", "4xx"), ("pool", "b")))] == 3
    assert classes("b", "hostd_binding_responses_total") == ["2xx", "4xx", "5xx"]
    assert m[("hostd_binding_responses_total",
              (("binding", "b.density"), ("class", "4xx"), ("pool", "b")))] == 3


def test_a_thousand_idle_pools_fit_in_a_mebibyte():
    text = metrics.render({"pools": [_pool(f"p{i:04d}") for i in range(1000)]})
    assert len(text.encode()) <= 1 << 20, len(text)
    m = samples(text)
    assert len({dict(k[1])["pool"] for k in m}) == 1000


def test_websocket_families_only_for_asgi_pools():
    asgi = dict(_pool("a"), websockets={"open": 4, "messages": 1200, "upgraded": 9})
    wsgi = dict(_pool("b"), websockets=None)
    m = samples(metrics.render({"pools": [asgi, wsgi]}))
    assert m[("hostd_websockets_open", (("pool", "a"),))] == 4
    assert m[("hostd_websocket_messages_total", (("pool", "a"),))] == 1200
    assert m[("hostd_websocket_upgrades_total", (("pool", "a"),))] == 9
    assert not [k for k in m if "websocket" in k[0] and dict(k[1])["pool"] == "b"]
    # an ASGI pool with nothing open yet still has its series (a gauge at 0)
    idle = dict(_pool("c"), websockets={"open": 0, "messages": 0, "upgraded": 0})
    assert samples(metrics.render({"pools": [idle]}))[("hostd_websockets_open", (("pool", "c"),))] == 0
    text = metrics.render({"pools": [wsgi, _pool("d")]})
    assert "websocket" not in text               # no HELP or TYPE lines either
    families = {f.name: f.type for f in text_string_to_metric_families(
        metrics.render({"pools": [asgi]}))}
    assert families["hostd_websockets_open"] == "gauge"
    assert families["hostd_websocket_messages"] == "counter"   # the parser drops _total
    assert families["hostd_websocket_upgrades"] == "counter"
