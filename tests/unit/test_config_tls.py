"""hostd.config's HTTPS keys: [hostd] listen_tls and tls_default_pool, a pool's [tls]
table (pairs, paths, errors by dotted key), to_spec/from_spec, and --check-config's
TLS lines (pairs loaded and matched, expiry warnings). Certificates are made here with
the openssl CLI (ECDSA P-256)."""
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hostd import config as hconfig
from hostd.config import (ConfigErrors, PoolConfig, TLSConfig, check_config, load_main,
                          load_pools)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_pair(directory: Path, name: str, days: int = 30, cn: str | None = None):
    """An ECDSA P-256 self-signed pair for name and *.name: (cert, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={cn or name}",
                    "-addext", f"subjectAltName=DNS:{name},DNS:*.{name}", "-days", str(days),
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {"a": make_pair(d, "a.test"), "b": make_pair(d, "b.test"),
            "near": make_pair(d, "near.test", days=3), "dir": d}


@pytest.fixture
def site(tmp_path, certs):
    (tmp_path / "pools.d").mkdir()
    (tmp_path / "srv").mkdir()
    (tmp_path / "tls").mkdir()
    for name in ("a", "b", "near"):
        for src in certs[name]:
            shutil.copy(src, tmp_path / "tls" / src.name)
    (tmp_path / "hostd.toml").write_text("")
    return tmp_path


BASE = 'app = "app:app"\ndirectory = "../srv"\nbindings = ["p.test"]\n'


def write_pool(site, text, name="p"):
    path = site / "pools.d" / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def load(site, text, name="p"):
    write_pool(site, text, name)
    return load_pools(load_main(site / "hostd.toml"))


def errors_of(site, text, name="p"):
    good, broken = load(site, text, name)
    assert name not in good
    return {e.key: e for e in broken[name]}


# --- [hostd] ---------------------------------------------------------------------
def test_listen_tls_parsed_like_listen(site):
    (site / "hostd.toml").write_text('[hostd]\nlisten = ["127.0.0.1:8080"]\n'
                                     'listen_tls = ["0.0.0.0:443", "[::]:8443"]\n'
                                     'tls_default_pool = "shop"\n')
    main = load_main(site / "hostd.toml")
    assert main.listen_tls == (("0.0.0.0", 443), ("::", 8443))
    assert main.tls_default_pool == "shop"


def test_listen_tls_defaults_and_empty(site):
    main = load_main(site / "hostd.toml")
    assert (main.listen_tls, main.tls_default_pool) == ((), "")
    (site / "hostd.toml").write_text("[hostd]\nlisten_tls = []\n")
    assert load_main(site / "hostd.toml").listen_tls == ()


@pytest.mark.parametrize("line,key", [
    ('listen_tls = "0.0.0.0:443"', "hostd.listen_tls"),
    ('listen_tls = ["localhost:443"]', "hostd.listen_tls[0]"),
    ('listen_tls = ["1.2.3.4:443", "1.2.3.4:443"]', "hostd.listen_tls[1]"),
    ('tls_default_pool = "Not A Pool"', "hostd.tls_default_pool"),
    ("tls_default_pool = 3", "hostd.tls_default_pool"),
])
def test_bad_listen_tls_and_default_pool(site, line, key):
    (site / "hostd.toml").write_text(f"[hostd]\n{line}\n")
    with pytest.raises(ConfigErrors) as info:
        load_main(site / "hostd.toml")
    assert [e.key for e in info.value.errors] == [key]


def test_a_port_in_listen_and_listen_tls_is_an_error(site):
    (site / "hostd.toml").write_text('[hostd]\nlisten = ["127.0.0.1:8080"]\n'
                                     'listen_tls = ["127.0.0.1:8443", "0.0.0.0:8080"]\n')
    with pytest.raises(ConfigErrors) as info:
        load_main(site / "hostd.toml")
    (e,) = info.value.errors
    assert e.key == "hostd.listen_tls" and "8080" in e.problem and "listen" in e.problem


def test_defaults_may_not_hold_tls(site):
    (site / "hostd.toml").write_text('[defaults.tls]\ncertificate = "x.crt"\n')
    with pytest.raises(ConfigErrors) as info:
        load_main(site / "hostd.toml")
    (e,) = info.value.errors
    assert e.key == "defaults.tls" and "certificate belongs to one site" in e.problem


# --- a pool's [tls] --------------------------------------------------------------
def test_no_tls_table_is_none(site):
    good, _ = load(site, BASE)
    assert good["p"].tls is None and good["p"].to_spec()["tls"] is None


def test_single_pair_relative_to_the_pool_file(site):
    good, broken = load(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\n'
                                     'key = "../tls/a.test.key"\n')
    assert broken == {}
    tls = good["p"].tls
    assert tls == TLSConfig(pairs=((str(site / "tls/a.test.crt"), str(site / "tls/a.test.key")),))
    assert (tls.redirect_http, tls.min_version, tls.redirect_port) == (False, "1.2", 443)


def test_single_pair_then_the_list_and_every_key(site):
    good, broken = load(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\n'
                        'key = "../tls/a.test.key"\nredirect_http = true\nmin_version = "1.3"\n'
                        'redirect_port = 8443\ncertificates = [\n'
                        '  {certificate = "../tls/b.test.crt", key = "../tls/b.test.key"},\n'
                        f'  {{certificate = "{site}/tls/near.test.crt", key = "../tls/near.test.key"}},\n]\n')
    assert broken == {}
    tls = good["p"].tls
    assert [Path(c).name for c, _ in tls.pairs] == ["a.test.crt", "b.test.crt", "near.test.crt"]
    assert [Path(k).name for _, k in tls.pairs] == ["a.test.key", "b.test.key", "near.test.key"]
    assert (tls.redirect_http, tls.min_version, tls.redirect_port) == (True, "1.3", 8443)


def test_only_the_list(site):
    good, broken = load(site, BASE + '[tls]\ncertificates = [{certificate = "../tls/b.test.crt",'
                        ' key = "../tls/b.test.key"}]\n')
    assert broken == {} and len(good["p"].tls.pairs) == 1


def test_to_spec_round_trips_tls(site):
    good, _ = load(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\n'
                   'key = "../tls/a.test.key"\nredirect_http = true\ncertificates = [\n'
                   '  {certificate = "../tls/b.test.crt", key = "../tls/b.test.key"}]\n')
    pool = good["p"]
    spec = json.loads(json.dumps(pool.to_spec()))
    assert spec["tls"] == {"pairs": [[str(site / "tls/a.test.crt"), str(site / "tls/a.test.key")],
                                     [str(site / "tls/b.test.crt"), str(site / "tls/b.test.key")]],
                           "redirect_http": True, "min_version": "1.2", "redirect_port": 443}
    assert PoolConfig.from_spec(spec) == pool


@pytest.mark.parametrize("table,key,words", [
    ('certificate = "../tls/nope.crt"\nkey = "../tls/a.test.key"', "tls.certificate", "does not exist"),
    ('certificate = "../tls/a.test.crt"\nkey = "../tls/nope.key"', "tls.key", "does not exist"),
    ('certificate = "../tls/a.test.crt"', "tls.key", "certificate without key"),
    ('key = "../tls/a.test.key"', "tls.certificate", "key without certificate"),
    ('certificate = "../tls"\nkey = "../tls/a.test.key"', "tls.certificate", "not a regular file"),
    ('certificate = "../tls/a.test.crt"\nkey = "../tls/a.test.crt"', "tls.key", "own file"),
    ('redirect_http = true', "tls", "no certificate"),
    ('certificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\nmin_version = "1.1"',
     "tls.min_version", "'1.2', '1.3'"),
    ('certificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\nmin_version = 1.3',
     "tls.min_version", "'1.2', '1.3'"),
    ('certificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\nredirect_http = "yes"',
     "tls.redirect_http", "true or false"),
    ('certificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\nredirect_port = 0',
     "tls.redirect_port", "at least 1"),
    ('certificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\ncertificat = "x"',
     "tls.certificat", "did you mean 'certificate'"),
    ('certificates = "x"', "tls.certificates", "array"),
    ('certificates = ["x"]', "tls.certificates[0]", "must be a table"),
    ('certificates = [{}]', "tls.certificates[0]", "needs certificate and key"),
    ('certificates = [{certificate = "../tls/a.test.crt", key = "../tls/a.test.key"},'
     ' {certificate = "../tls/b.test.crt", key = "../tls/nope.key"}]',
     "tls.certificates[1].key", "does not exist"),
    ('certificates = [{certificate = "../tls/a.test.crt", key = "../tls/a.test.key", x = 1}]',
     "tls.certificates[0].x", "unknown key"),
    ('certificates = [{certificate = "../tls/a.test.crt", key = "../tls/a.test.key"},'
     ' {certificate = "../tls/a.test.crt", key = "../tls/a.test.key"}]',
     "tls.certificates[1]", "twice"),
])
def test_tls_errors_name_the_file_and_the_dotted_key(site, table, key, words):
    errors = errors_of(site, BASE + "[tls]\n" + table + "\n")
    assert key in errors, errors
    e = errors[key]
    assert e.file == str(site / "pools.d" / "p.toml") and words in e.problem
    assert words in str(e) and str(site / "pools.d" / "p.toml") in str(e)


def test_tls_not_a_table(site):
    errors = errors_of(site, BASE + 'tls = "a.crt"\n')
    assert "must be a table" in errors["tls"].problem


def test_every_problem_of_a_tls_table_at_once(site):
    errors = errors_of(site, BASE + '[tls]\ncertificate = "../tls/nope.crt"\nkey = "../tls/a.test.key"\n'
                       'min_version = "2"\ncertificates = [{key = "../tls/b.test.key"}]\n')
    assert set(errors) == {"tls.certificate", "tls.min_version", "tls.certificates[0].certificate"}


def test_a_broken_tls_table_keeps_other_pools(site):
    write_pool(site, BASE.replace("p.test", "q.test"), "q")
    good, broken = load(site, BASE + '[tls]\ncertificate = "../tls/nope.crt"\nkey = "x"\n')
    assert "q" in good and "p" in broken


def test_load_stats_and_does_not_read_certificates(site, monkeypatch):
    """Loading never opens a certificate or key (1,000 pools load fast)."""
    import builtins
    opened = []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    monkeypatch.setattr(os, "open", lambda f, *a, **k: (opened.append(str(f)), real_os_open(f, *a, **k))[1])
    good, broken = load(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\n')
    assert broken == {} and good["p"].tls is not None
    assert not [f for f in opened if "/tls/" in f]


def test_thousand_tls_pools_load_fast(site):
    for i in range(1000):
        write_pool(site, f'app = "app:app"\ndirectory = "../srv"\nbindings = ["p{i}.test"]\n'
                   '[tls]\ncertificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\n', f"p{i}")
    t = time.perf_counter()
    good, broken = load_pools(load_main(site / "hostd.toml"))
    elapsed = time.perf_counter() - t
    assert len(good) == 1000 and broken == {}
    assert elapsed < 5.0, elapsed      # ~0.3 s on a quiet box; the TLS part is stats


# --- tls_default_pool against the pools ------------------------------------------
def test_tls_default_problem(site):
    (site / "hostd.toml").write_text('[hostd]\ntls_default_pool = "p"\n')
    write_pool(site, BASE.replace("p.test", "q.test") + '[tls]\ncertificate = "../tls/a.test.crt"\n'
               'key = "../tls/a.test.key"\n', "q")
    main = load_main(site / "hostd.toml")
    good, _ = load(site, BASE)
    assert "has no [tls]" in hconfig.tls_default_problem(main, good)
    assert "is not a (working) pool" in hconfig.tls_default_problem(main, {})
    main_q = load_main(site / "hostd.toml").__class__(**{**main.__dict__, "tls_default_pool": "q"})
    assert hconfig.tls_default_problem(main_q, good) is None
    assert hconfig.tls_default_problem(main.__class__(**{**main.__dict__, "tls_default_pool": ""}),
                                       good) is None


# --- hostd --check-config ---------------------------------------------------------
def test_check_config_loads_each_pair_and_warns_of_expiry(site):
    (site / "hostd.toml").write_text('[hostd]\nlisten_tls = ["127.0.0.1:8443"]\n'
                                     'tls_default_pool = "nothere"\n')
    write_pool(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\n'
               'certificates = [{certificate = "../tls/near.test.crt", key = "../tls/near.test.key"}]\n')
    summary, errors = check_config(site / "hostd.toml")
    assert errors == [], errors
    assert "listen_tls: 127.0.0.1:8443" in summary
    assert "CN=a.test; names a.test, *.a.test; expires" in summary
    warn = [line.strip() for line in summary.splitlines() if line.strip().startswith("warning:")]
    assert any("tls.certificates[0].certificate" in w and "expires in" in w for w in warn), warn
    assert any("tls_default_pool" in w and "nothere" in w for w in warn), warn
    assert not any("a.test.crt" in w for w in warn)


def test_check_config_errors_for_a_pair_that_does_not_match(site):
    write_pool(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\n'
               'certificates = [{certificate = "../tls/b.test.crt", key = "../tls/a.test.key"}]\n')
    (site / "tls" / "garbage.crt").write_text("not a certificate\n")
    write_pool(site, BASE.replace("p.test", "g.test") + '[tls]\ncertificate = "../tls/garbage.crt"\n'
               'key = "../tls/a.test.key"\n', "g")
    summary, errors = check_config(site / "hostd.toml")
    by_key = {(Path(e.file).name, e.key): e.problem for e in errors}
    assert set(by_key) == {("p.toml", "tls.certificates[0].key"), ("g.toml", "tls.certificate")}
    assert "does not match" in by_key[("p.toml", "tls.certificates[0].key")]
    assert "KEY_VALUES_MISMATCH" in by_key[("p.toml", "tls.certificates[0].key")]
    assert "not a PEM certificate" in by_key[("g.toml", "tls.certificate")]


def test_cli_check_config_exit_codes(site):
    from hostd import cli
    write_pool(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\nkey = "../tls/b.test.key"\n')
    assert cli.main(["--check-config", "--config", str(site / "hostd.toml")]) == 2
    write_pool(site, BASE + '[tls]\ncertificate = "../tls/a.test.crt"\nkey = "../tls/a.test.key"\n')
    assert cli.main(["--check-config", "--config", str(site / "hostd.toml")]) == 0


def test_the_https_example_pool_file_loads(site):
    """examples/pools.d/shop-https.toml.example, its paths pointed at test files."""
    root = Path(__file__).resolve().parents[2] / "examples"
    text = (root / "pools.d" / "shop-https.toml.example").read_text()
    text = text.replace("/etc/letsencrypt/live/shop.example.com/fullchain.pem",
                        str(site / "tls" / "a.test.crt"))
    text = text.replace("/etc/letsencrypt/live/shop.example.com/privkey.pem",
                        str(site / "tls" / "a.test.key"))
    shutil.copytree(root / "apps", site / "apps")
    good, broken = load(site, text, "shop")
    assert broken == {} and good["shop"].tls.redirect_http
    assert good["shop"].tls.pairs == ((str(site / "tls/a.test.crt"), str(site / "tls/a.test.key")),)
