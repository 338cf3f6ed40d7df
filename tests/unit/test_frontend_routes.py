"""The front end's route cache (hostd/frontend.py): a cached route never outlives the pool
table it came from, and the C path and httptools route a head the same way."""
from __future__ import annotations

import pytest

from hostd import frontend, limits
from hostd.router import Router


class _Sock:
    def fileno(self):
        return -1


def _front_end():
    fe = frontend.FrontEnd.__new__(frontend.FrontEnd)
    fe.max_header = frontend._Pending.max_head = 8192
    fe.max_body = 1 << 20
    fe.router = Router([])
    fe.route_cache = {}
    fe.pools = {}
    fe.counters = limits.Counters()
    fe.listening = True          # _set_pools: listeners already registered
    fe.stopping = False
    fe.seen = []
    fe._reply = lambda conn, response: fe.seen.append(("reply", response.split(b" ")[1]))
    fe._refuse = lambda conn, pool, name, *a: fe.seen.append(("pool", name))
    fe._wait = lambda conn: fe.seen.append(("wait", None))
    return fe


REQ = b"GET /shop/cart?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n"


def test_a_new_pool_table_empties_the_route_cache():
    fe = _front_end()
    fe._first_bytes(_Sock(), 80, REQ)
    assert fe.seen[-1] == ("reply", b"404") and len(fe.route_cache) == 1
    fe._set_pools({}, [["shop", "a.test/shop/"]])
    assert fe.route_cache == {}
    fe._first_bytes(_Sock(), 80, REQ)
    assert fe.seen[-1] == ("pool", "shop")
    fe._set_pools({}, [["other", "a.test"]])
    fe._first_bytes(_Sock(), 80, REQ)
    assert fe.seen[-1] == ("pool", "other")


@pytest.mark.parametrize("data", [
    REQ,
    b"GET /shop/ HTTP/1.0\r\n\r\n",                                   # no Host: "*" only
    b"GET http://a.test/shop/x HTTP/1.1\r\nHost: b.test\r\n\r\n",     # the authority wins
    b"GET /shop/x HTTP/1.1\r\nHost: A.TEST:80\r\n\r\n",
    b"POST /shop/x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc",
])
def test_c_path_and_httptools_route_alike(data, monkeypatch):
    table = [["shop", "a.test/shop/"], ["any", "*"]]
    fe = _front_end()
    fe._set_pools({}, table)
    fe._first_bytes(_Sock(), 80, data)
    monkeypatch.setattr(frontend, "_fast_parse", None)
    slow = _front_end()
    slow._set_pools({}, table)
    slow._first_bytes(_Sock(), 80, data)
    assert fe.seen == slow.seen and fe.seen[0][0] == "pool"


def test_a_state_change_updates_only_those_pools_and_keeps_the_routes():
    """protocol.POOL_STATES (a pool stopped, started or failed): its entry changes, the
    router and every other pool stay, and the next request sees the new state."""
    fe = _front_end()
    table = [["shop", "a.test/shop/"], ["blog", "b.test"]]
    entry = {"state": "started", "lb": "http_503", "max_body": -1}
    fe._set_pools({"shop": dict(entry), "blog": dict(entry)}, table)
    router = fe.router
    fe._set_states({"shop": {"state": "stopped", "lb": "tcp_reset", "max_body": 5}})
    assert fe.router is router
    assert (fe.pools["shop"].state, fe.pools["shop"].lb, fe.pools["shop"].max_body) == \
        ("stopped", "tcp_reset", 5)
    assert fe.pools["blog"].state == "started"
    fe._first_bytes(_Sock(), 80, REQ)
    assert fe.seen[-1] == ("pool", "shop")      # refused: the pool is stopped
    fe._set_states({"gone": entry})             # an unknown name changes nothing
    assert set(fe.pools) == {"shop", "blog"}
