"""hostd.config: the main file, pool files, and --check-config."""
import json
import sys
from pathlib import Path

import pytest

from hostd.config import (BrokenPool, ConfigError, ConfigErrors, Isolation, MainConfig,
                          PoolConfig, check_config, load_main, load_pool_files, load_pools)
from hostd.router import Binding, Router

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def site(tmp_path):
    """A config tree: tmp/hostd.toml, tmp/pools.d/, tmp/srv/ (an app directory)."""
    (tmp_path / "pools.d").mkdir()
    (tmp_path / "srv").mkdir()
    (tmp_path / "hostd.toml").write_text("")
    return tmp_path


def write_main(site, text):
    (site / "hostd.toml").write_text(text)
    (site / "hostd.toml").chmod(0o600)   # it may hold env values (secrets)
    return site / "hostd.toml"


def write_pool(site, name, text=None, bindings=None):
    if text is None:
        text = (f'app = "app.wsgi:application"\ndirectory = "{site / "srv"}"\n'
                f'bindings = {json.dumps(bindings or [name + ".localhost"])}\n')
    path = site / "pools.d" / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)   # pool files may hold env values (secrets)
    return path


def main_errors(site, text):
    write_main(site, text)
    with pytest.raises(ConfigErrors) as info:
        load_main(site / "hostd.toml")
    return {e.key: e for e in info.value.errors}


def pool_errors(site, text, name="p"):
    write_pool(site, name, text)
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert name not in good
    return {e.key: e for e in broken[name]}


def load_one(site, text, name="p"):
    write_pool(site, name, text)
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert broken == {}, broken
    return good[name]


BASE = 'app = "app.wsgi:application"\ndirectory = "../srv"\nbindings = ["p.localhost"]\n'


# --- errors -----------------------------------------------------------------------
def test_config_error_str_and_attributes():
    e = ConfigError(Path("/etc/hostd/hostd.toml"), "hostd.listen", "bad")
    assert (e.file, e.key, e.problem) == ("/etc/hostd/hostd.toml", "hostd.listen", "bad")
    assert str(e) == "/etc/hostd/hostd.toml: hostd.listen: bad"
    assert str(ConfigError("f.toml", None, "broken")) == "f.toml: broken"
    errors = ConfigErrors([e, ConfigError("f.toml", None, "broken")])
    assert str(errors) == "/etc/hostd/hostd.toml: hostd.listen: bad\nf.toml: broken"


# --- main file --------------------------------------------------------------------
def test_main_defaults(site):
    main = load_main(write_main(site, ""))
    assert main == MainConfig(
        path=site / "hostd.toml", listen=(("127.0.0.1", 8080),), frontends=0,
        pools_dir=site / "pools.d", state_dir=Path("/var/lib/hostd"),
        run_dir=Path("/run/hostd"), max_header_bytes=16384, defaults={})
    assert main.frontend_count() >= 1


def test_main_all_keys(site):
    main = load_main(write_main(site, """
[hostd]
listen = ["0.0.0.0:80", "[::1]:8080", "[::]:443"]
frontends = 3
pools_dir = "/etc/elsewhere"
state_dir = "state"
run_dir = "../run"
max_header_bytes = "32K"
[defaults]
idle_timeout = "1h"
processes = 4
"""))
    assert main.listen == (("0.0.0.0", 80), ("::1", 8080), ("::", 443))
    assert main.frontends == 3 and main.frontend_count() == 3
    assert main.pools_dir == Path("/etc/elsewhere")
    assert main.state_dir == site / "state"
    assert main.run_dir == site.parent / "run"
    assert main.max_header_bytes == 32 * 1024
    assert dict(main.defaults) == {"idle_timeout": 3600.0, "processes": 4}


def test_main_relative_path_argument(site, monkeypatch):
    monkeypatch.chdir(site)
    main = load_main("hostd.toml")
    assert main.path == site / "hostd.toml" and main.pools_dir == site / "pools.d"


@pytest.mark.parametrize("line, key", [
    ('listen = "127.0.0.1:8080"', "hostd.listen"),
    ("listen = []", "hostd.listen"),
    ('listen = ["127.0.0.1"]', "hostd.listen[0]"),
    ('listen = ["127.0.0.1:0"]', "hostd.listen[0]"),
    ('listen = ["127.0.0.1:65536"]', "hostd.listen[0]"),
    ('listen = ["::1:8080"]', "hostd.listen[0]"),
    ('listen = ["[::1]8080"]', "hostd.listen[0]"),
    ('listen = ["localhost:8080"]', "hostd.listen[0]"),
    ('listen = ["300.1.1.1:80"]', "hostd.listen[0]"),
    ('listen = [8080]', "hostd.listen[0]"),
    ('listen = ["1.2.3.4:80", "1.2.3.4:80"]', "hostd.listen[1]"),
    ("frontends = -1", "hostd.frontends"),
    ("frontends = true", "hostd.frontends"),
    ('frontends = "2"', "hostd.frontends"),
    ("frontends = 1.0", "hostd.frontends"),
    ("pools_dir = 3", "hostd.pools_dir"),
    ('pools_dir = ""', "hostd.pools_dir"),
    ("state_dir = false", "hostd.state_dir"),
    ("run_dir = []", "hostd.run_dir"),
    ("max_header_bytes = 100", "hostd.max_header_bytes"),
    ('max_header_bytes = "1G"', "hostd.max_header_bytes"),
    ('max_header_bytes = "16X"', "hostd.max_header_bytes"),
    ("max_header_bytes = true", "hostd.max_header_bytes"),
    ("listn = []", "hostd.listn"),
])
def test_main_bad_hostd_keys(site, line, key):
    errors = main_errors(site, f"[hostd]\n{line}\n")
    assert list(errors) == [key]
    assert errors[key].file == str(site / "hostd.toml")


def test_main_unknown_key_suggests_the_right_one(site):
    errors = main_errors(site, "[hostd]\nlistn = []\n")
    assert "listen" in errors["hostd.listn"].problem


@pytest.mark.parametrize("text, key", [
    ("[server]\n", "server"),
    ('listen = ["1.2.3.4:80"]\n', "listen"),
    ("hostd = 1\n", "hostd"),
    ("defaults = 1\n", "defaults"),
    ("[defaults]\nidle_timeout = \"5x\"\n", "defaults.idle_timeout"),
    ("[defaults]\nprocesses = 0\n", "defaults.processes"),
    ("[defaults]\nbindings = [\"a\"]\n", "defaults.bindings"),
    ("[defaults]\nfoo = 1\n", "defaults.foo"),
    ("[defaults]\ndirectory = \"missing\"\n", "defaults.directory"),
])
def test_main_bad_tables(site, text, key):
    assert list(main_errors(site, text)) == [key]


def test_main_reports_all_problems_at_once(site):
    errors = main_errors(site, '[hostd]\nfrontends = -1\nlisten = ["x"]\n'
                               '[defaults]\nthreads = "2"\n[extra]\n')
    assert set(errors) == {"hostd.frontends", "hostd.listen[0]", "defaults.threads", "extra"}


def test_main_toml_syntax_error_is_one_error_with_line(site):
    errors = main_errors(site, "[hostd]\nfrontends = 1\nlisten = [\n[defaults]\n")
    (error,) = errors.values()
    assert error.key is None and error.file == str(site / "hostd.toml")
    assert "line" in error.problem


def test_main_missing_file(tmp_path):
    with pytest.raises(ConfigErrors) as info:
        load_main(tmp_path / "nope.toml")
    assert info.value.errors[0].file == str(tmp_path / "nope.toml")


# --- pool files -------------------------------------------------------------------
def test_pool_minimal_gets_defaults(site):
    pool = load_one(site, BASE)
    assert pool == PoolConfig(
        name="p", file=site / "pools.d" / "p.toml", app="app.wsgi:application",
        directory=site / "srv", virtualenv=None, bindings=(Binding.parse("p.localhost"),),
        start_mode="on_demand", processes=1, threads=1, queue_length=1000,
        idle_timeout=1200.0, load_balancer_capabilities="http_503", env=())


def test_pool_all_keys(site):
    venv = site / "venv"
    (venv / "lib" / f"python{PY}" / "site-packages").mkdir(parents=True)
    pool = load_one(site, f"""
app = "shop.wsgi:make_app.application"
directory = "{site / 'srv'}"
virtualenv = "../venv"
bindings = ["shop.example.com", "*.shop.example.com", "example.com/shop/", "*:8081"]
start_mode = "always_running"
processes = 4
threads = 8
queue_length = 10
idle_timeout = "0"
load_balancer_capabilities = "tcp_reset"
env = {{ DJANGO_SETTINGS_MODULE = "shop.settings", B = "" }}
""")
    assert pool.app == "shop.wsgi:make_app.application"
    assert pool.virtualenv == venv
    assert [b.text for b in pool.bindings] == ["shop.example.com", "*.shop.example.com",
                                               "example.com/shop/", "*:8081"]
    assert (pool.start_mode, pool.processes, pool.threads, pool.queue_length) == \
        ("always_running", 4, 8, 10)
    assert pool.idle_timeout == 0.0
    assert pool.load_balancer_capabilities == "tcp_reset"
    assert pool.env == (("B", ""), ("DJANGO_SETTINGS_MODULE", "shop.settings"))


@pytest.mark.parametrize("line, key", [
    ('app = "shop.wsgi"', "app"),
    ('app = ":application"', "app"),
    ('app = "shop.wsgi:"', "app"),
    ('app = "shop..wsgi:app"', "app"),
    ('app = "shop-app:app"', "app"),
    ("app = 1", "app"),
    ('directory = "missing"', "directory"),
    ('directory = "p.toml"', "directory"),        # a file, not a directory
    ("directory = 5", "directory"),
    ('virtualenv = "missing"', "virtualenv"),
    ('virtualenv = "../srv"', "virtualenv"),       # exists, but no Python in it
    ("virtualenv = true", "virtualenv"),
    ("bindings = []", "bindings"),
    ('bindings = "p.localhost"', "bindings"),
    ('bindings = ["ok.localhost", "a*.b"]', "bindings[1]"),
    ('bindings = ["ok.localhost", 5]', "bindings[1]"),
    ('bindings = ["a.localhost", "A.localhost."]', "bindings[1]"),
    ('start_mode = "lazy"', "start_mode"),
    ("start_mode = 1", "start_mode"),
    ("processes = 0", "processes"),
    ("processes = true", "processes"),
    ('processes = "2"', "processes"),
    ("processes = 2.0", "processes"),
    ("threads = 0", "threads"),
    ("threads = false", "threads"),
    ("queue_length = 0", "queue_length"),
    ("queue_length = -5", "queue_length"),
    ('idle_timeout = "20"', "idle_timeout"),
    ('idle_timeout = "forever"', "idle_timeout"),
    ("idle_timeout = -1", "idle_timeout"),
    ("idle_timeout = 1.5", "idle_timeout"),
    ('load_balancer_capabilities = "http_502"', "load_balancer_capabilities"),
    ('env = "A=1"', "env"),
    ("env = { A = 1 }", "env.A"),
    ('env = { "A=B" = "1" }', "env.A=B"),
    ('env = { "" = "1" }', "env."),
    ('env = { A = "a\\u0000b" }', "env.A"),
    ("workers = 2", "workers"),
    ('[isolation]\nidentity = "root"', "isolation.identity"),
    ('[isolation]\nidentity = "user:no-such-user-here"', "isolation.identity"),
    ('[isolation]\nnetwork = "bridge"', "isolation.network"),
    ('[isolation]\nfilesystem = "chroot"', "isolation.filesystem"),
    ('[isolation]\nuser_namespace = "yes"', "isolation.user_namespace"),
    ('[isolation]\nshow = ["/no/such/dir"]', "isolation.show[0]"),
    ('[isolation]\nenabled = "no"', "isolation.enabled"),
    ("[sandbox]", "sandbox"),
    ('[recycling]\nschedule = ["25:00"]', "recycling.schedule"),
    ('[recycling]\nschedule = "03:00"', "recycling.schedule"),
    ('[recycling]\nrequests = -1', "recycling.requests"),
    ('[recycling]\nprivate_memory = "lots"', "recycling.private_memory"),
    ('[recycling]\novertime = 1', "recycling.overtime"),
    ('[limits]\nworker_memory_max = "12Q"', "limits.worker_memory_max"),
    ('[limits]\nmemory_max = "256M"\nmemory_high = "256M"', "limits.memory_high"),
    ('[limits]\nworker_memory_max = "200M"\n[recycling]\nprivate_memory = "300M"',
     "recycling.private_memory"),
    ("[health]\ninterval = 1", "health.interval"),
    ('[health]\nping_timeout = "0"', "health.ping_timeout"),
    ('[health]\nunhealthy_action = "restart"', "health.unhealthy_action"),
    ("[health]\norphan = 1", "health.orphan"),
    ("[health]\nrapid_fail_max_crashes = -1", "health.rapid_fail_max_crashes"),
    ("health = 5", "health"),
])
def test_pool_bad_keys(site, line, key):
    # the bad line comes last, so it overrides BASE's value where it repeats a key
    text = "\n".join(l for l in BASE.splitlines() if not l.startswith(line.split()[0] + " "))
    errors = pool_errors(site, text + "\n" + line + "\n")
    assert list(errors) == [key], errors
    assert errors[key].file == str(site / "pools.d" / "p.toml")
    assert errors[key].problem


@pytest.mark.parametrize("missing", ["app", "directory", "bindings"])
def test_pool_required_keys(site, missing):
    text = "\n".join(l for l in BASE.splitlines() if not l.startswith(missing))
    errors = pool_errors(site, text)
    assert list(errors) == [missing]
    assert "missing" in errors[missing].problem


def test_pool_collects_all_problems_of_a_file(site):
    errors = pool_errors(site, 'app = "x"\ndirectory = "nope"\nbindings = ["a*.b", "ok", ":0"]\n'
                               'threads = 0\n[sandbox]\n')
    assert set(errors) == {"app", "directory", "bindings[0]", "bindings[2]", "threads",
                           "sandbox"}


def test_pool_virtualenv_version_from_pyvenv_cfg(site):
    good = site / "good"
    good.mkdir()
    (good / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = {PY}.99\n")
    assert load_one(site, BASE + 'virtualenv = "../good"\n').virtualenv == good
    uv = site / "uv"
    uv.mkdir()
    (uv / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion_info = {PY}.1.final.0\n")
    assert load_one(site, BASE + 'virtualenv = "../uv"\n').virtualenv == uv
    old = site / "old"
    (old / "lib" / f"python{PY}" / "site-packages").mkdir(parents=True)
    (old / "pyvenv.cfg").write_text("version = 2.7.18\n")   # pyvenv.cfg wins
    errors = pool_errors(site, BASE + 'virtualenv = "../old"\n')
    assert "2.7" in errors["virtualenv"].problem


@pytest.mark.parametrize("filename", ["Shop.toml", "-shop.toml", "a" * 33 + ".toml",
                                      "sh op.toml", "shop.v2.toml", "_x.toml"])
def test_bad_pool_name_is_an_error_naming_the_file(site, filename):
    path = site / "pools.d" / filename
    path.write_text(BASE)
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert good == {}
    (errors,) = broken.values()
    assert [e.file for e in errors] == [str(path)]
    assert "pool name" in errors[0].problem


def test_good_pool_names(site):
    for name in ["a", "0", "shop_2-x", "a" * 32]:
        write_pool(site, name)
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert sorted(good) == sorted(["a", "0", "shop_2-x", "a" * 32]) and broken == {}


def test_other_files_are_ignored(site):
    write_pool(site, "p")
    for name in ["p.toml~", "p.toml.swp", ".#p.toml", ".hidden.toml", "README", "p.TOML"]:
        (site / "pools.d" / name).write_text("garbage = [")
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert list(good) == ["p"] and broken == {}


def test_pool_toml_syntax_error_is_one_error(site):
    errors = list(pool_errors(site, BASE + "threads = = 2\n").values())
    assert len(errors) == 1 and errors[0].key is None
    assert "line 4" in errors[0].problem


def test_broken_pool_does_not_stop_others(site):
    write_pool(site, "a")
    write_pool(site, "b", "app = 1\n")
    write_pool(site, "c")
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert sorted(good) == ["a", "c"] and list(broken) == ["b"]


def test_missing_pools_dir_is_an_error_of_the_main_file(site):
    main = load_main(write_main(site, '[hostd]\npools_dir = "nowhere"\n'))
    with pytest.raises(ConfigErrors) as info:
        load_pools(main)
    (error,) = info.value.errors
    assert (error.file, error.key) == (str(site / "hostd.toml"), "hostd.pools_dir")


def test_pools_dir_relative_to_main_file(site):
    (site / "conf").mkdir()
    (site / "conf" / "pools").mkdir()
    (site / "conf" / "pools" / "x.toml").write_text(
        f'app = "a:b"\ndirectory = "{site / "srv"}"\nbindings = ["x"]\n')
    main = load_main(write_main(site / "conf", '[hostd]\npools_dir = "pools"\n'))
    good, _ = load_pools(main)
    assert list(good) == ["x"]


# --- duplicates across pools -------------------------------------------------------
def test_duplicate_binding_breaks_the_pool_that_sorts_later(site):
    a = write_pool(site, "alpha", bindings=["alpha.localhost", "example.com/shop/"])
    b = write_pool(site, "beta", bindings=["beta.localhost", "EXAMPLE.com/shop"])
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert list(good) == ["alpha"] and list(broken) == ["beta"]
    (error,) = broken["beta"]
    assert error.file == str(b) and error.key == "bindings[1]"
    assert str(a) in error.problem and "EXAMPLE.com/shop" in error.problem
    # the good pools always make a valid router
    Router((name, bd) for name, p in good.items() for bd in p.bindings)


def test_different_port_or_prefix_is_not_a_duplicate(site):
    write_pool(site, "a", bindings=["example.com"])
    write_pool(site, "b", bindings=["example.com:81"])
    write_pool(site, "c", bindings=["example.com/c"])
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert sorted(good) == ["a", "b", "c"] and broken == {}


def test_duplicate_claims_count_even_for_a_broken_pool(site):
    write_pool(site, "a", 'app = "bad"\ndirectory = "../srv"\nbindings = ["x.localhost"]\n')
    write_pool(site, "b", bindings=["x.localhost"])
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert good == {} and sorted(broken) == ["a", "b"]


# --- the bindings a broken pool keeps (its hosts get 503, not 404 or another site) ----
def texts(broken_pool: BrokenPool) -> list[str]:
    return [b.text for b in broken_pool.bindings]


def test_broken_pool_keeps_its_valid_bindings(site):
    path = write_pool(site, "p", BASE.replace('["p.localhost"]', '["p.localhost", "Example.com/p/"]')
                      + "no_such_key = 1\nthreads = true\n")
    good, broken = load_pool_files(load_main(site / "hostd.toml"))
    assert good == {} and list(broken) == ["p"]
    bp = broken["p"]
    assert (bp.name, bp.file) == ("p", path)
    assert texts(bp) == ["p.localhost", "Example.com/p/"]
    b = bp.bindings[1]
    assert (b.host, b.port, b.prefix) == ("example.com", None, "/p")
    assert sorted(e.key for e in bp.errors) == ["no_such_key", "threads"]
    # load_pools keeps its contract: name -> the list of errors
    _good, errors = load_pools(load_main(site / "hostd.toml"))
    assert isinstance(errors["p"], list)
    assert [str(e) for e in errors["p"]] == [str(e) for e in bp.errors]


def test_broken_pool_keeps_only_the_bindings_it_owns(site):
    write_pool(site, "a", bindings=["x.localhost"])
    write_pool(site, "b", BASE.replace('["p.localhost"]', '["x.localhost", "y.localhost"]')
               + "no_such_key = 1\n")
    # broken only because another pool owns one of its bindings: keeps the rest
    write_pool(site, "c", bindings=["c.localhost", "X.localhost"])
    good, broken = load_pool_files(load_main(site / "hostd.toml"))
    assert list(good) == ["a"] and sorted(broken) == ["b", "c"]
    assert texts(broken["b"]) == ["y.localhost"]
    assert texts(broken["c"]) == ["c.localhost"]
    # good and broken bindings together never conflict: one valid route table
    router = Router([(n, b) for n, p in good.items() for b in p.bindings]
                    + [(n, b) for n, bp in broken.items() for b in bp.bindings])
    assert router.route("y.localhost", 80, "/").pool == "b"
    assert router.route("x.localhost", 80, "/").pool == "a"


def test_a_broken_pool_owns_its_claims_before_a_later_good_one(site):
    write_pool(site, "a", 'app = "bad"\ndirectory = "../srv"\nbindings = ["x.localhost"]\n')
    write_pool(site, "b", bindings=["x.localhost", "b.localhost"])
    good, broken = load_pool_files(load_main(site / "hostd.toml"))
    assert good == {}
    assert texts(broken["a"]) == ["x.localhost"] and texts(broken["b"]) == ["b.localhost"]


def test_broken_pool_keeps_the_entries_of_bindings_that_parse(site):
    write_pool(site, "p", BASE.replace(
        '["p.localhost"]', '["p.localhost", "a*.b", "p.localhost", 7, "q.localhost/x"]'))
    (bp,) = load_pool_files(load_main(site / "hostd.toml"))[1].values()
    assert {e.key for e in bp.errors} == {"bindings[1]", "bindings[2]", "bindings[3]"}
    assert texts(bp) == ["p.localhost", "q.localhost/x"]   # the duplicate once


@pytest.mark.parametrize("text", [
    BASE + "threads = = 2\n",                                    # TOML syntax error
    'app = "app.wsgi:application"\ndirectory = "../srv"\n',      # no bindings
    BASE.replace('["p.localhost"]', '"p.localhost"'),             # not an array
    BASE.replace('["p.localhost"]', '[]'),
])
def test_broken_pool_without_usable_bindings_keeps_none(site, text):
    write_pool(site, "p", text)
    (bp,) = load_pool_files(load_main(site / "hostd.toml"))[1].values()
    assert bp.errors and bp.bindings == ()


def test_good_pools_are_the_same_from_both_loaders(site):
    write_pool(site, "a")
    write_pool(site, "b", "app = 1\n")
    main = load_main(site / "hostd.toml")
    assert load_pool_files(main)[0] == load_pools(main)[0]
    assert list(load_pool_files(main)[1]) == list(load_pools(main)[1]) == ["b"]


# --- defaults merging ---------------------------------------------------------------
def test_defaults_fill_in_and_pool_values_win(site):
    write_main(site, '[defaults]\nidle_timeout = "5m"\nprocesses = 3\nthreads = 2\n'
                     'env = { LANG = "C.UTF-8", TZ = "UTC" }\n')
    pool = load_one(site, BASE + 'threads = 4\nenv = { TZ = "Europe/Paris" }\n')
    assert pool.idle_timeout == 300.0        # from [defaults]
    assert pool.processes == 3               # from [defaults]
    assert pool.threads == 4                 # pool wins
    assert pool.queue_length == 1000         # built-in default
    assert dict(pool.env) == {"LANG": "C.UTF-8", "TZ": "Europe/Paris"}  # merged per name


def test_defaults_paths_are_relative_to_the_main_file(site):
    write_main(site, '[defaults]\ndirectory = "srv"\napp = "a.wsgi:app"\n')
    pool = load_one(site, 'bindings = ["p.localhost"]\n')
    assert pool.directory == site / "srv" and pool.app == "a.wsgi:app"


# --- PoolConfig --------------------------------------------------------------------
def test_pool_equality_means_nothing_changed(site):
    one = load_one(site, BASE + 'env = { A = "1", B = "2" }\n')
    same = load_one(site, 'env = { B = "2", A = "1" }\n' + BASE)
    assert one == same and hash(one) == hash(same)
    assert load_one(site, BASE + "threads = 2\n") != one
    assert load_one(site, BASE + 'env = { A = "1", B = "3" }\n') != one


def test_to_spec_is_json_and_round_trips(site):
    pool = load_one(site, BASE + 'env = { A = "1" }\nidle_timeout = "90s"\n')
    spec = json.loads(json.dumps(pool.to_spec()))
    assert spec == {
        "name": "p", "file": str(site / "pools.d" / "p.toml"), "app": "app.wsgi:application",
        "directory": str(site / "srv"), "virtualenv": None, "bindings": ["p.localhost"],
        "start_mode": "on_demand", "processes": 1, "threads": 1, "queue_length": 1000,
        "idle_timeout": 90.0, "load_balancer_capabilities": "http_503", "env": {"A": "1"},
        "max_connections": 0, "max_body_size": None, "max_bandwidth": 0, "preload": False,
        "health": {"ping_interval": 30.0, "ping_timeout": 90.0, "request_timeout": 0.0,
                   "startup_limit": 90.0, "shutdown_limit": 90.0, "rapid_fail_max_crashes": 5,
                   "rapid_fail_interval": 300.0, "unhealthy_action": "recycle",
                   "orphan": False, "orphan_action": "", "websocket_ping_interval": 20.0,
                   "websocket_ping_timeout": 20.0},
        "recycling": {"overlapping": True, "time": 0.0, "requests": 0, "schedule": [],
                      "private_memory": 0, "virtual_memory": 0},
        "limits": {"worker_memory_max": 0, "memory_max": 0, "memory_high": 0, "cpus": "",
                   "cpu_max": 0, "cpu_action": "throttle", "cpu_interval": 300.0,
                   "pids_max": 0},
        "isolation": {"enabled": True, "identity": "dynamic", "user_namespace": True,
                      "filesystem": "site", "read_only": False, "network": "host",
                      "show": [], "declared": False},
        "tls": None, "interface": "wsgi", "max_concurrency": 10000, "event_loop": "auto",
        "lifespan": "auto", "websocket_max_size": 16 << 20}
    assert PoolConfig.from_spec(spec) == pool


# --- check_config ----------------------------------------------------------------
def test_check_config_three_mistakes_in_two_files(site):
    write_main(site, '[hostd]\nfrontends = -2\n')
    write_pool(site, "good")
    write_pool(site, "shop", 'app = "shop.wsgi:application"\ndirectory = "/nonexistent-xyz"\n'
                             'bindings = ["shop.example.com", "a*.b"]\n')
    summary, errors = check_config(site / "hostd.toml")
    assert sorted((Path(e.file).name, e.key) for e in errors) == [
        ("hostd.toml", "hostd.frontends"), ("shop.toml", "bindings[1]"),
        ("shop.toml", "directory")]
    assert "good" in summary and "good.localhost" in summary
    assert "shop" in summary and "BROKEN" in summary
    assert "127.0.0.1:8080" in summary


def test_check_config_clean(site):
    write_main(site, '[hostd]\nlisten = ["[::1]:8080"]\n')
    write_pool(site, "a", bindings=["a.localhost", "*:8081"])
    summary, errors = check_config(site / "hostd.toml")
    assert errors == []
    assert "[::1]:8080" in summary and "a.localhost, *:8081" in summary


def test_check_config_reports_duplicates_and_missing_pools_dir(site):
    write_pool(site, "a", bindings=["x"])
    write_pool(site, "b", bindings=["x"])
    _, errors = check_config(site / "hostd.toml")
    assert [(Path(e.file).name, e.key) for e in errors] == [("b.toml", "bindings[0]")]
    write_main(site, '[hostd]\npools_dir = "gone"\n')
    _, errors = check_config(site / "hostd.toml")
    assert [e.key for e in errors] == ["hostd.pools_dir"]


def test_check_config_main_syntax_error(site):
    write_main(site, "[hostd\n")
    summary, errors = check_config(site / "hostd.toml")
    assert len(errors) == 1 and errors[0].key is None and "line 1" in errors[0].problem


# --- docs -------------------------------------------------------------------------
def test_every_key_is_documented():
    from hostd.config import HOSTD_KEYS, POOL_KEYS
    docs = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    from hostd.config import HEALTH_KEYS, ISOLATION_KEYS, LIMITS_KEYS, RECYCLING_KEYS, TLS_KEYS
    missing = [k for k in [*HOSTD_KEYS, *POOL_KEYS, *HEALTH_KEYS, *RECYCLING_KEYS, *LIMITS_KEYS,
                           *ISOLATION_KEYS, *TLS_KEYS]
               if f"| `{k}` |" not in docs]
    assert missing == []


def test_health_table_defaults_and_inheritance(site, tmp_path):
    from hostd.config import Health
    main = tmp_path / "hostd.toml"
    site = site / "srv"
    main.write_text('[hostd]\npools_dir = "pools.d"\n[defaults.health]\nping_interval = "5s"\n'
                    'shutdown_limit = "10s"\n')
    (tmp_path / "pools.d" / "a.toml").write_text(
        f'app = "m:app"\ndirectory = "{site}"\nbindings = ["a.test"]\n'
        '[health]\nshutdown_limit = "3s"\norphan = true\norphan_action = "echo {pid}"\n')
    (tmp_path / "pools.d" / "b.toml").write_text(
        f'app = "m:app"\ndirectory = "{site}"\nbindings = ["b.test"]\n')
    pools, broken = load_pools(load_main(main))
    assert broken == {}
    a, b = pools["a"].health, pools["b"].health
    assert (a.ping_interval, a.shutdown_limit, a.orphan, a.orphan_action) == (5.0, 3.0, True, "echo {pid}")
    assert (b.ping_interval, b.shutdown_limit, b.orphan) == (5.0, 10.0, False)
    assert b.ping_timeout == Health().ping_timeout == 90.0
    assert PoolConfig.from_spec(pools["a"].to_spec()) == pools["a"]


def test_recycling_and_limits_tables(site):
    pool = load_one(site, BASE + '[recycling]\noverlapping = false\ntime = "29h"\nrequests = 300\n'
                    'schedule = ["3:00", "23:59"]\nprivate_memory = "300M"\n'
                    '[limits]\nworker_memory_max = "512M"\n')
    r = pool.recycling
    assert (r.overlapping, r.time, r.requests, r.schedule, r.private_memory, r.virtual_memory) == \
        (False, 29 * 3600.0, 300, ("03:00", "23:59"), 300 << 20, 0)
    assert pool.limits.worker_memory_max == 512 << 20
    assert PoolConfig.from_spec(json.loads(json.dumps(pool.to_spec()))) == pool


def test_the_every_key_example_is_a_valid_pool_file(tmp_path):
    """examples/pools.d/every-key.toml.example shows every pool key (the ASGI ones may
    be shown in fastapi.toml.example instead: tests/unit/test_config_asgi.py loads it);
    it must load."""
    import shutil
    from hostd.config import HEALTH_KEYS, LIMITS_KEYS, POOL_KEYS, RECYCLING_KEYS
    example = Path(__file__).resolve().parents[2] / "examples" / "pools.d" / "every-key.toml.example"
    text = example.read_text()
    asgi_text = (example.parent / "fastapi.toml.example").read_text()
    asgi_keys = {"interface", "max_concurrency", "event_loop", "lifespan",
                 "websocket_max_size", "websocket_ping_interval", "websocket_ping_timeout"}
    from hostd.config import ISOLATION_KEYS, TLS_KEYS
    for key in [*POOL_KEYS, *HEALTH_KEYS, *RECYCLING_KEYS, *LIMITS_KEYS, *ISOLATION_KEYS,
                *TLS_KEYS]:
        shown = text + asgi_text if key in asgi_keys else text
        assert f"\n{key} = " in shown or f"\n# {key} = " in shown or f"[{key}]" in shown, key
    (tmp_path / "pools.d").mkdir()
    shutil.copytree(example.parents[1] / "apps", tmp_path / "apps")
    (tmp_path / "pools.d" / "shop.toml").write_text(text)
    (tmp_path / "pools.d" / "shop.toml").chmod(0o600)
    (tmp_path / "hostd.toml").write_text('[hostd]\npools_dir = "pools.d"\n')
    pools, broken = load_pools(load_main(tmp_path / "hostd.toml"))
    assert broken == {} and pools["shop"].recycling.schedule == ("03:00",)


# --- [isolation] and the secrets rule ------------------------------------------------
def test_isolation_absent_means_the_defaults_undeclared(site):
    # no table anywhere: the defaults (isolated as root; isolation.decide), marked as
    # not written, so that without root the pool is served instead of failed
    iso = load_one(site, BASE).isolation
    assert iso == Isolation(declared=False) and iso.enabled and iso.filesystem == "site"
    assert iso.network == "host" and iso.identity == "dynamic" and iso.user_namespace


def test_isolation_opt_out(site):
    iso = load_one(site, BASE + "[isolation]\nenabled = false\n").isolation
    assert iso.enabled is False and iso.declared


@pytest.mark.parametrize("extra", ['network = "none"', "read_only = true", 'identity = "dynamic"'])
def test_isolation_opt_out_with_other_keys_is_an_error(site, extra):
    # enabled = false makes every other [isolation] key do nothing: refused, by name
    errors = pool_errors(site, BASE + f"[isolation]\nenabled = false\n{extra}\n")
    key = "isolation." + extra.split()[0]
    assert key in errors and "enabled = false" in errors[key].problem, errors


def test_defaults_isolation_opt_out_with_other_keys_is_an_error(site):
    errors = main_errors(site, '[defaults.isolation]\nenabled = false\nnetwork = "none"\n')
    assert "defaults.isolation.network" in errors


def test_isolation_opt_out_under_isolating_defaults(site):
    # [defaults.isolation] sets keys; one pool opts out: fine (the pool wrote only enabled)
    write_main(site, '[defaults.isolation]\nnetwork = "none"\n')
    iso = load_one(site, BASE + "[isolation]\nenabled = false\n").isolation
    assert iso.enabled is False


def test_isolation_table_defaults(site):
    from hostd.config import Isolation
    pool = load_one(site, BASE + "[isolation]\n")
    assert pool.isolation == Isolation(True, "dynamic", True, "site", False, "host", ())
    assert PoolConfig.from_spec(pool.to_spec()) == pool


def test_isolation_from_defaults_table(site):
    write_main(site, '[defaults.isolation]\nnetwork = "none"\n')
    pool = load_one(site, BASE)
    assert pool.isolation.network == "none" and pool.isolation.identity == "dynamic"


def test_isolation_existing_user(site):
    pool = load_one(site, BASE + '[isolation]\nidentity = "user:nobody"\nfilesystem = "host"\n')
    assert pool.isolation.identity == "user:nobody" and pool.isolation.filesystem == "host"


def test_pool_file_with_env_readable_by_others_is_refused(site):
    path = write_pool(site, "p", BASE + 'env = { SECRET = "x" }\n')
    path.chmod(0o644)
    good, broken = load_pools(load_main(site / "hostd.toml"))
    assert "p" not in good
    [err] = broken["p"]
    assert err.key == "env" and err.file == str(path) and "chmod 600" in err.problem
    path.chmod(0o640)
    assert "p" in load_pools(load_main(site / "hostd.toml"))[1]
    path.chmod(0o600)
    assert "p" in load_pools(load_main(site / "hostd.toml"))[0]


def test_pool_file_without_env_may_be_world_readable(site):
    path = write_pool(site, "p", BASE)
    path.chmod(0o644)
    assert "p" in load_pools(load_main(site / "hostd.toml"))[0]


def test_main_file_with_default_env_readable_by_others_is_refused(site):
    write_main(site, '[defaults]\nenv = { SECRET = "x" }\n')
    (site / "hostd.toml").chmod(0o644)
    with pytest.raises(ConfigErrors) as info:
        load_main(site / "hostd.toml")
    assert [e.key for e in info.value.errors] == ["defaults.env"]


def test_identity_range_and_private_network(site):
    write_main(site, '[hostd]\nidentity_range = "5000-5009"\nprivate_network = "10.9.0.0/24"\n')
    main = load_main(site / "hostd.toml")
    assert main.identity_range == (5000, 5009) and main.private_network == "10.9.0.0/24"
    errors = main_errors(site, '[hostd]\nidentity_range = "9-1"\nprivate_network = "10.9.0.0/31"\n')
    assert set(errors) == {"hostd.identity_range", "hostd.private_network"}


# --- reload: only the files that changed are read again (density) ---------------------
def test_pool_file_cache_reads_only_changed_files(site):
    from hostd.config import PoolFileCache
    for n in ("a", "b", "c"):
        write_pool(site, n)
    cache = PoolFileCache()
    main = load_main(site / "hostd.toml")
    good, _ = load_pool_files(main, cache=cache)
    assert cache.read == 3 and sorted(good) == ["a", "b", "c"]
    again, _ = load_pool_files(load_main(site / "hostd.toml"), cache=cache)
    assert cache.read == 0 and again == good and again["a"] is good["a"]
    write_pool(site, "b", BASE.replace("p.localhost", "b2.localhost"))   # changed
    again, _ = load_pool_files(load_main(site / "hostd.toml"), cache=cache)
    assert cache.read == 1 and again["b"].bindings[0].text == "b2.localhost"
    (site / "pools.d" / "c.toml").unlink()                                # removed
    again, _ = load_pool_files(load_main(site / "hostd.toml"), cache=cache)
    assert cache.read == 0 and sorted(again) == ["a", "b"]
    write_main(site, "[defaults]\nthreads = 4\n")                         # [defaults]
    again, _ = load_pool_files(load_main(site / "hostd.toml"), cache=cache)
    assert cache.read == 2 and again["a"].threads == 4


def test_pool_file_cache_rereads_broken_files(site):
    # a pool broken by something outside its file (its directory, made afterwards)
    # loads at the next reload without its file changing
    from hostd.config import PoolFileCache
    text = f'app = "app:application"\ndirectory = "{site / "later"}"\nbindings = ["l.localhost"]\n'
    write_pool(site, "l", text)
    cache = PoolFileCache()
    good, broken = load_pool_files(load_main(site / "hostd.toml"), cache=cache)
    assert "l" in broken
    (site / "later").mkdir()
    good, broken = load_pool_files(load_main(site / "hostd.toml"), cache=cache)
    assert cache.read == 1 and "l" in good and not broken


def test_pool_file_cache_keeps_binding_conflicts(site):
    from hostd.config import PoolFileCache
    write_pool(site, "a", bindings=["same.localhost"])
    write_pool(site, "b", bindings=["same.localhost"])
    cache = PoolFileCache()
    for _ in range(2):
        good, broken = load_pool_files(load_main(site / "hostd.toml"), cache=cache)
        assert list(good) == ["a"] and list(broken) == ["b"]
        assert "already claimed" in str(broken["b"].errors[0])


def test_idle_pressure_rule(site):
    write_main(site, '[hostd]\nidle_pressure = "memory  full avg60 > 2.5"\n')
    rule = load_main(site / "hostd.toml").idle_pressure
    assert (rule.resource, rule.kind, rule.window, rule.threshold) == ("memory", "full", "avg60", 2.5)
    assert rule.text == "memory full avg60 > 2.5"
    write_main(site, '[hostd]\nidle_pressure = ""\n')
    assert load_main(site / "hostd.toml").idle_pressure is None
    for bad, words in [("cpu some avg10 > 1", "only memory"), ("memory some avg10 >= 1", "must be"),
                       ("memory half avg10 > 1", "some, full"), ("memory some avg5 > 1", "avg10"),
                       ("memory some avg10 > lots", "not a number"), ("memory some avg10 > 100", "0 to")]:
        errors = main_errors(site, f'[hostd]\nidle_pressure = "{bad}"\n')
        assert words in errors["hostd.idle_pressure"].problem, (bad, errors)
