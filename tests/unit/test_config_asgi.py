"""hostd.config's ASGI keys (issue 15): interface, max_concurrency, event_loop, lifespan,
websocket_max_size, [health] websocket_ping_*; the cross-key checks (max_concurrency in
a WSGI pool, threads in an ASGI pool's own file; the same keys from [defaults] are
ignored), to_spec/from_spec, --check-config, and examples/pools.d/fastapi.toml.example."""
import json
import re
import sys
from pathlib import Path

import pytest

from hostd.config import (HEALTH_KEYS, POOL_KEYS, Health, PoolConfig, check_config,
                          load_main, load_pools)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "pools.d"
BASE = 'app = "main:app"\ndirectory = "../srv"\nbindings = ["p.localhost"]\n'
ASGI = BASE + 'interface = "asgi"\n'


@pytest.fixture
def site(tmp_path):
    """tmp/hostd.toml, tmp/pools.d/, tmp/srv/ (an app directory)."""
    (tmp_path / "pools.d").mkdir()
    (tmp_path / "srv").mkdir()
    (tmp_path / "hostd.toml").write_text("")
    return tmp_path


def write_main(site, text):
    (site / "hostd.toml").write_text(text)
    return site / "hostd.toml"


def write_pool(site, text, name="p"):
    path = site / "pools.d" / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def load(site, text, name="p"):
    write_pool(site, text, name)
    return load_pools(load_main(site / "hostd.toml"))


def load_one(site, text, name="p"):
    good, broken = load(site, text, name)
    assert broken == {}, broken
    return good[name]


def errors_of(site, text, name="p"):
    good, broken = load(site, text, name)
    assert name not in good
    return {e.key: e for e in broken[name]}


# --- the keys ---------------------------------------------------------------------
def test_defaults_of_a_pool_that_says_nothing(site):
    pool = load_one(site, BASE)
    assert (pool.interface, pool.max_concurrency, pool.event_loop, pool.lifespan,
            pool.websocket_max_size) == ("wsgi", 10000, "auto", "auto", 16 << 20)
    assert (pool.health.websocket_ping_interval, pool.health.websocket_ping_timeout) == \
        (20.0, 20.0)
    # a PoolConfig built by hand (older code, tests) gets the same
    assert PoolConfig.__dataclass_fields__["interface"].default == POOL_KEYS["interface"].default
    assert Health().websocket_ping_interval == HEALTH_KEYS["websocket_ping_interval"].default


def test_an_asgi_pool_with_every_key(site):
    pool = load_one(site, ASGI + 'max_concurrency = 50\nevent_loop = "asyncio"\n'
                    'lifespan = "on"\nwebsocket_max_size = "1M"\nprocesses = 2\n'
                    '[health]\nwebsocket_ping_interval = "0"\nwebsocket_ping_timeout = "5s"\n')
    assert (pool.interface, pool.max_concurrency, pool.event_loop, pool.lifespan,
            pool.websocket_max_size, pool.processes) == ("asgi", 50, "asyncio", "on", 1 << 20, 2)
    assert (pool.health.websocket_ping_interval, pool.health.websocket_ping_timeout) == (0.0, 5.0)
    assert pool.threads == 1
    spec = json.loads(json.dumps(pool.to_spec()))
    assert (spec["interface"], spec["max_concurrency"], spec["event_loop"], spec["lifespan"],
            spec["websocket_max_size"]) == ("asgi", 50, "asyncio", "on", 1 << 20)
    assert spec["health"]["websocket_ping_timeout"] == 5.0
    assert PoolConfig.from_spec(spec) == pool


@pytest.mark.parametrize("line, key, words", [
    ('interface = "rsgi"', "interface", "must be one of 'wsgi', 'asgi'"),
    ("interface = 1", "interface", "must be one of"),
    ("max_concurrency = 0", "max_concurrency", "at least 1"),
    ('max_concurrency = "10"', "max_concurrency", "must be an integer"),
    ('event_loop = "trio"', "event_loop", "'auto', 'uvloop', 'asyncio'"),
    ("lifespan = true", "lifespan", "'auto', 'on', 'off'"),
    ('websocket_max_size = "1.5M"', "websocket_max_size", "bad size"),
    ("websocket_max_size = 10", "websocket_max_size", "between 1024"),
    ('[health]\nwebsocket_ping_timeout = "0"', "health.websocket_ping_timeout", "longer than 0"),
    ('[health]\nwebsocket_ping_interval = "soon"', "health.websocket_ping_interval", "duration"),
])
def test_bad_values_name_their_key(site, line, key, words):
    errors = errors_of(site, (BASE if line.startswith("interface") else ASGI) + line + "\n")
    assert key in errors, errors
    assert words in errors[key].problem


# --- cross-key checks ---------------------------------------------------------------
def test_max_concurrency_in_a_wsgi_pool_is_an_error_naming_file_and_key(site):
    for text in (BASE + "max_concurrency = 10\n",
                 BASE + 'interface = "wsgi"\nmax_concurrency = 10\n'):
        errors = errors_of(site, text)
        assert list(errors) == ["max_concurrency"]
        e = errors["max_concurrency"]
        assert e.file == str(site / "pools.d" / "p.toml")
        assert 'only for interface = "asgi"' in e.problem
        assert str(e).startswith(f"{site / 'pools.d' / 'p.toml'}: max_concurrency: only for")


def test_threads_in_an_asgi_pool_file_is_an_error(site):
    errors = errors_of(site, ASGI + "threads = 4\n")
    assert list(errors) == ["threads"]
    assert errors["threads"].problem == ('means nothing for interface = "asgi" (one event '
                                         'loop per worker); use max_concurrency')
    assert errors["threads"].file == str(site / "pools.d" / "p.toml")
    # threads = 1 (its default) is still threads written: it means nothing either
    assert "threads" in errors_of(site, ASGI + "threads = 1\n")


def test_the_same_keys_from_defaults_are_ignored(site):
    write_main(site, "[defaults]\nthreads = 8\nmax_concurrency = 20\n")
    wsgi = load_one(site, BASE.replace("p.localhost", "w.localhost"), "w")
    assert (wsgi.threads, wsgi.max_concurrency) == (8, 10000)   # max_concurrency ignored
    asgi = load_one(site, ASGI.replace("p.localhost", "a.localhost"), "a")
    assert (asgi.threads, asgi.max_concurrency) == (1, 20)     # threads ignored


def test_interface_from_defaults_makes_the_checks_apply(site):
    write_main(site, '[defaults]\ninterface = "asgi"\n')
    assert load_one(site, BASE + "max_concurrency = 5\n").max_concurrency == 5
    assert list(errors_of(site, BASE + "threads = 2\n")) == ["threads"]
    # a pool may still say wsgi for itself
    assert load_one(site, BASE + 'interface = "wsgi"\nthreads = 2\n').threads == 2


def test_a_bad_interface_brings_no_second_error(site):
    errors = errors_of(site, BASE + 'interface = "asgii"\nmax_concurrency = 5\nthreads = 2\n')
    assert list(errors) == ["interface"]


def test_health_websocket_keys_inherit_from_defaults(site):
    write_main(site, '[defaults.health]\nwebsocket_ping_interval = "5s"\n')
    pool = load_one(site, ASGI + '[health]\nwebsocket_ping_timeout = "3s"\n')
    assert (pool.health.websocket_ping_interval, pool.health.websocket_ping_timeout) == (5.0, 3.0)


def test_check_config_reports_them(site):
    write_pool(site, BASE.replace("p.localhost", "w.localhost") + "max_concurrency = 3\n", "w")
    write_pool(site, ASGI.replace("p.localhost", "a.localhost") + "threads = 3\n", "a")
    write_pool(site, ASGI.replace("p.localhost", "ok.localhost") + "max_concurrency = 7\n", "ok")
    summary, errors = check_config(site / "hostd.toml")
    assert sorted((Path(e.file).name, e.key) for e in errors) == [
        ("a.toml", "threads"), ("w.toml", "max_concurrency")]
    assert "asgi: max_concurrency 7, event_loop auto, lifespan auto" in summary
    assert "2 broken" in summary


# --- the example ------------------------------------------------------------------
def test_the_fastapi_example_is_a_valid_asgi_pool_file(site):
    text = (EXAMPLES / "fastapi.toml.example").read_text()
    venv = site / "venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text(f"version = {sys.version_info.major}."
                                     f"{sys.version_info.minor}.0\n")
    text = re.sub(r'(?m)^directory = "[^"]*"', f'directory = "{site / "srv"}"', text)
    text = re.sub(r'(?m)^virtualenv = "[^"]*"', f'virtualenv = "{venv}"', text)
    pool = load_one(site, text, "api")
    assert (pool.interface, pool.max_concurrency, pool.event_loop, pool.lifespan,
            pool.websocket_max_size) == ("asgi", 10000, "auto", "auto", 16 << 20)
    assert pool.health.websocket_ping_interval == 20.0
    for key in ("interface", "max_concurrency", "event_loop", "lifespan", "websocket_max_size",
                "websocket_ping_interval", "websocket_ping_timeout"):
        assert f"\n{key} = " in text, key
