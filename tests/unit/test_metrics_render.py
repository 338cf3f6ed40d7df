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
