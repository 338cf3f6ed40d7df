"""hostd.router: binding syntax, routing precedence, request-target helpers."""
import json

import pytest

from hostd.router import (Binding, Route, Router, decode_path, normalise_host,
                          split_target)


# --- Binding.parse ----------------------------------------------------------------
@pytest.mark.parametrize("text, host, port, prefix", [
    ("shop.example.com", "shop.example.com", None, ""),
    ("Shop.Example.COM", "shop.example.com", None, ""),
    ("example.com.", "example.com", None, ""),
    ("*.shop.example.com", "*.shop.example.com", None, ""),
    ("example.com/shop/", "example.com", None, "/shop"),
    ("example.com/shop", "example.com", None, "/shop"),
    ("example.com/a/b//", "example.com", None, "/a/b"),
    ("example.com/", "example.com", None, ""),
    ("*:8081", "*", 8081, ""),
    (":8081", "*", 8081, ""),
    ("*", "*", None, ""),
    ("/api", "*", None, "/api"),
    ("[::1]:8080/x", "::1", 8080, "/x"),
    ("[::1]", "::1", None, ""),
    ("[0:0::0001]/x", "::1", None, "/x"),
    ("127.0.0.1:80", "127.0.0.1", 80, ""),
    ("localhost:65535/a", "localhost", 65535, "/a"),
    ("my_host.internal", "my_host.internal", None, ""),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", None, ""),
    ("example.com/caf%C3%A9", "example.com", None, "/caf\xc3\xa9"),
    ("example.com/café", "example.com", None, "/caf\xc3\xa9"),
    ("example.com/a%20b", "example.com", None, "/a b"),
])
def test_binding_parse_good(text, host, port, prefix):
    b = Binding.parse(text)
    assert (b.host, b.port, b.prefix, b.text) == (host, port, prefix, text)


@pytest.mark.parametrize("text", [
    "", "a*.b", "*.*.b", "x.*.b", "*b", "**", "*.", "exa mple.com", "example.com:0",
    "example.com:65536", "example.com:", "example.com:abc", "example.com:-1", ":",
    "::1", "::1:8080", "[::1", "[::1]x", "[nothost]:80", "[fe80::1%eth0]", "exa$mple.com",
    "-example.com", "example-.com", "a..b", ".example.com", "bücher.de",
    "a" * 64 + ".com", "example.com/a?b", "example.com/a#b", "example.com/a//b",
    "example.com/../x", "example.com/./x", "example.com/%00", "example.com:8²",
    "\texample.com", None, 42,
])
def test_binding_parse_bad(text):
    with pytest.raises(ValueError):
        Binding.parse(text)


def test_binding_parse_message_names_binding_and_problem():
    with pytest.raises(ValueError, match=r"'example\.com:70000'.*out of range"):
        Binding.parse("example.com:70000")
    with pytest.raises(ValueError, match="brackets"):
        Binding.parse("::1:8080")


# --- Router: precedence -----------------------------------------------------------
def make(*pairs):
    return Router((pool, Binding.parse(text)) for pool, text in pairs)


def pool_of(router, host, port, path):
    r = router.route(host, port, path)
    return None if r is None else r.pool


def test_exact_beats_wildcard_beats_star():
    r = make(("star", "*"), ("wild", "*.example.com"), ("exact", "www.example.com"))
    assert pool_of(r, "www.example.com", 80, "/") == "exact"
    assert pool_of(r, "api.example.com", 80, "/") == "wild"
    assert pool_of(r, "other.org", 80, "/") == "star"


def test_wildcard_does_not_match_bare_suffix():
    r = make(("wild", "*.example.com"))
    assert pool_of(r, "a.example.com", 80, "/") == "wild"
    assert pool_of(r, "a.b.example.com", 80, "/") == "wild"
    assert pool_of(r, "example.com", 80, "/") is None
    assert pool_of(r, "badexample.com", 80, "/") is None


def test_longest_wildcard_suffix_wins():
    r = make(("short", "*.example.com"), ("long", "*.shop.example.com"))
    assert pool_of(r, "x.shop.example.com", 80, "/") == "long"
    assert pool_of(r, "a.b.shop.example.com", 80, "/") == "long"
    assert pool_of(r, "shop.example.com", 80, "/") == "short"
    assert pool_of(r, "x.blog.example.com", 80, "/") == "short"


def test_port_specific_binding_before_portless():
    r = make(("any", "example.com"), ("p81", "example.com:81"))
    assert pool_of(r, "example.com", 81, "/") == "p81"
    assert pool_of(r, "example.com", 80, "/") == "any"


def test_port_specific_beats_longer_prefix_of_portless():
    r = make(("portless", "example.com/shop"), ("p81", "example.com:81"))
    assert pool_of(r, "example.com", 81, "/shop/x") == "p81"
    assert pool_of(r, "example.com", 80, "/shop/x") == "portless"


def test_port_binding_matches_only_its_port():
    r = make(("p8081", "*:8081"))
    assert pool_of(r, "anything", 8081, "/") == "p8081"
    assert pool_of(r, None, 8081, "/") == "p8081"
    assert pool_of(r, "anything", 8080, "/") is None


def test_longest_prefix_wins_regardless_of_order():
    for order in (1, -1):
        pairs = [("root", "example.com"), ("shop", "example.com/shop"),
                 ("cart", "example.com/shop/cart")][::order]
        r = make(*pairs)
        assert pool_of(r, "example.com", 80, "/shop/cart/1") == "cart"
        assert pool_of(r, "example.com", 80, "/shop/cart") == "cart"
        assert pool_of(r, "example.com", 80, "/shop/cartoon") == "shop"
        assert pool_of(r, "example.com", 80, "/shop") == "shop"
        assert pool_of(r, "example.com", 80, "/") == "root"


def test_prefix_matches_on_segment_boundary_only():
    r = make(("shop", "example.com/shop/"))
    assert pool_of(r, "example.com", 80, "/shop") == "shop"
    assert pool_of(r, "example.com", 80, "/shop/") == "shop"
    assert pool_of(r, "example.com", 80, "/shop/x") == "shop"
    assert pool_of(r, "example.com", 80, "/shopping") is None
    assert pool_of(r, "example.com", 80, "/") is None
    assert pool_of(r, "example.com", 80, "/Shop") is None  # paths are case-sensitive


def test_fall_through_to_less_specific_host():
    r = make(("shop", "example.com/shop/"), ("default", "*"))
    assert pool_of(r, "example.com", 80, "/shop/x") == "shop"
    assert pool_of(r, "example.com", 80, "/other") == "default"
    assert pool_of(r, "example.com", 80, "/shopping") == "default"


def test_fall_through_exact_to_wildcard_to_shorter_wildcard_to_star():
    r = make(("exact", "a.shop.example.com/x"), ("long", "*.shop.example.com/y"),
             ("short", "*.example.com/z"), ("star", "*:8080"))
    host = "a.shop.example.com"
    assert pool_of(r, host, 80, "/x") == "exact"
    assert pool_of(r, host, 80, "/y") == "long"
    assert pool_of(r, host, 80, "/z") == "short"
    assert pool_of(r, host, 8080, "/w") == "star"
    assert pool_of(r, host, 80, "/w") is None


def test_fall_through_when_port_does_not_match():
    r = make(("exact81", "example.com:81"), ("wild", "*.com"))
    assert pool_of(r, "example.com", 81, "/") == "exact81"
    assert pool_of(r, "example.com", 80, "/") == "wild"


def test_empty_router_and_unknown_host():
    assert Router([]).route("example.com", 80, "/") is None
    r = make(("a", "a.example.com"))
    assert pool_of(r, "b.example.com", 80, "/") is None
    assert pool_of(r, None, 80, "/") is None


def test_host_header_is_normalised_before_matching():
    r = make(("a", "a.example.com"), ("v6", "[::1]/v6"))
    assert pool_of(r, "A.Example.COM:8080", 80, "/") == "a"
    assert pool_of(r, "a.example.com.", 80, "/") == "a"
    assert pool_of(r, "[::1]:8080", 80, "/v6") == "v6"


def test_route_returns_binding_for_script_name():
    r = make(("shop", "example.com/shop/"))
    route = r.route("example.com", 80, "/shop/cart")
    assert route == Route("shop", Binding.parse("example.com/shop/"))
    assert route.binding.prefix == "/shop"


def test_prefix_compares_against_decoded_path():
    r = make(("cafe", "example.com/caf%C3%A9"))
    assert pool_of(r, "example.com", 80, decode_path(b"/caf%C3%A9/menu")) == "cafe"
    assert pool_of(r, "example.com", 80, decode_path(b"/cafe")) is None


def test_asterisk_path_goes_to_empty_prefix_only():
    r = make(("api", "example.com/api"), ("root", "*"))
    assert pool_of(r, "example.com", 80, "*") == "root"


# --- Router: table, duplicates, bindings_of ----------------------------------------
def test_duplicate_binding_names_both_pools():
    with pytest.raises(ValueError, match=r"'beta'.*'alpha'"):
        make(("alpha", "example.com/shop"), ("beta", "EXAMPLE.com/shop/"))


def test_same_host_different_port_or_prefix_is_not_duplicate():
    r = make(("a", "example.com"), ("b", "example.com:81"), ("c", "example.com/x"))
    assert len(r) == 3


def test_table_round_trip_through_json():
    pairs = [("alpha", "alpha.localhost"), ("beta", "*.beta.localhost"),
             ("beta", "example.com/b/"), ("gamma", "[::1]:8080/x")]
    r = make(*pairs)
    table = json.loads(json.dumps(r.to_table()))
    assert table == [list(p) for p in pairs]
    r2 = Router.from_table(table)
    assert r2.to_table() == table
    for host, port, path in [("alpha.localhost", 80, "/"), ("x.beta.localhost", 1, "/"),
                             ("example.com", 80, "/b/c"), ("[::1]", 8080, "/x")]:
        assert r2.route(host, port, path) == r.route(host, port, path) is not None


def test_from_table_rejects_bad_binding():
    with pytest.raises(ValueError):
        Router.from_table([["a", "a*.b"]])


def test_bindings_of():
    r = make(("a", "a.example.com"), ("b", "b.example.com"), ("a", "/a"))
    assert [b.text for b in r.bindings_of("a")] == ["a.example.com", "/a"]
    assert r.bindings_of("nope") == []


# --- helpers ------------------------------------------------------------------------
@pytest.mark.parametrize("header, expected", [
    (None, ""), ("", ""), ("Example.COM", "example.com"), ("example.com:8080", "example.com"),
    ("example.com.", "example.com"), ("example.com.:80", "example.com"),
    ("[::1]:8080", "::1"), ("[::1]", "::1"), ("[0::0001]", "::1"), ("[FE80::A]", "fe80::a"),
    ("127.0.0.1:80", "127.0.0.1"),
])
def test_normalise_host(header, expected):
    assert normalise_host(header) == expected


@pytest.mark.parametrize("target, expected", [
    (b"/a/b?x=1", (None, b"/a/b", b"x=1")),
    (b"/a/b", (None, b"/a/b", b"")),
    (b"/a?", (None, b"/a", b"")),
    (b"/a?x=1#frag", (None, b"/a", b"x=1")),
    (b"/a#frag?no", (None, b"/a", b"")),
    (b"/a?b?c", (None, b"/a", b"b?c")),
    (b"http://Host:81/a?q", ("host", b"/a", b"q")),
    (b"HTTPS://Example.com/x/y", ("example.com", b"/x/y", b"")),
    (b"http://example.com", ("example.com", b"/", b"")),
    (b"http://example.com?q=1", ("example.com", b"/", b"q=1")),
    (b"http://user:pw@example.com:8080/p", ("example.com", b"/p", b"")),
    (b"http://[::1]:8080/p", ("::1", b"/p", b"")),
    (b"*", (None, b"*", b"")),
])
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize("raw, expected", [
    (b"/a/b", "/a/b"),
    (b"/a%20b", "/a b"),
    (b"/caf%C3%A9", "/caf\xc3\xa9"),       # UTF-8 bytes as latin-1 (PEP 3333)
    (b"/a%2Fb", "/a/b"),
    (b"/100%", "/100%"),                   # invalid escapes stay literal
    (b"/%zz", "/%zz"),
    (b"/\xff", "/\xff"),
])
def test_decode_path(raw, expected):
    assert decode_path(raw) == expected


# --- a pool's workers' share of the table (density) -----------------------------------
def _table(entries):
    return Router((p, Binding.parse(t)) for p, t in entries).to_table()


def test_worker_table_keeps_what_can_outrank():
    from hostd.router import worker_table
    t = _table([("a", "a.test"), ("a", "*.a.test"), ("b", "b.test"), ("c", "a.test/api"),
                ("d", "x.a.test"), ("e", "*.x.a.test"), ("f", "*"), ("g", "*.test"),
                ("h", "a.test:8080")])
    got = {tuple(e) for e in worker_table(t, "a")}
    assert got == {("a", "a.test"), ("a", "*.a.test"), ("c", "a.test/api"),
                   ("d", "x.a.test"), ("e", "*.x.a.test"), ("h", "a.test:8080")}
    assert worker_table(t, "b") == [["b", "b.test"]]
    assert worker_table(t, "f") == t                  # "*" is outranked by everything
    assert worker_table(t, "nope") == []


def test_worker_table_routes_exactly_as_the_whole_table():
    """Property: for random tables and requests, a pool's share routes a request to
    one of its routes exactly when the whole table does, to the same binding."""
    import random
    from hostd.router import worker_table
    rnd = random.Random(20261202)
    hosts = ["a.t", "b.a.t", "c.b.a.t", "x.t", "t", "a.u"]
    patterns = hosts + ["*.t", "*.a.t", "*.b.a.t", "*"]
    for _ in range(300):
        entries, seen = [], set()
        for _ in range(rnd.randint(1, 9)):
            text = rnd.choice(patterns) + rnd.choice(["", ":81"]) + rnd.choice(["", "/p", "/p/q"])
            key = Binding.parse(text)
            if (key.host, key.port, key.prefix) in seen:
                continue
            seen.add((key.host, key.port, key.prefix))
            entries.append((rnd.choice("ABC"), text))
        whole = Router((p, Binding.parse(t)) for p, t in entries)
        for pool in "ABC":
            part = Router.from_table(worker_table(whole.to_table(), pool))
            for _ in range(25):
                host = rnd.choice(hosts + ["zz.t", "q.x.t"])
                port, path = rnd.choice([80, 81]), rnd.choice(["/", "/p", "/p/q/r", "/z"])
                full = whole.route(host, port, path)
                mine = part.route(host, port, path)
                if full is not None and full.pool == pool:
                    assert mine is not None and mine.binding == full.binding, (entries, host, port, path)
                else:
                    assert mine is None or mine.pool != pool, (entries, pool, host, port, path)
