"""The supervisor's HTTPS side (hostd/supervisor/certificates.py and where the rooms use
it): a worker's and a pool zygote's WorkerSpec.tls / tls_ports, the snapshots a reload
refreshes (a good renewal replaces the pool's workers, a bad one keeps the old pair and
says why), expiry warnings, the status and counters documents. Real rooms over the
fakes of supervisor_fakes.py; certificates made with the openssl CLI; pair checks in a
real child process (hostd.tlsconf.check_in_subprocess)."""
import dataclasses
import os
import shutil
import subprocess

import pytest

from hostd import config as hconfig
from hostd import metrics, protocol
from hostd.lifecycle import WorkerState
from supervisor_fakes import WALL_BASE, logs, main_config, make_house, pool_config  # noqa: F401

W = WorkerState
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_pair(d, name, days=30):
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name},DNS:*.{name}", "-days", str(days),
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("suptls")
    return {n: make_pair(d, f"{n}.test", days) for n, days in
            (("a", 30), ("b", 30), ("near", 3))}


def replace(path, src):
    shutil.copy(src, str(path) + ".new")
    os.replace(str(path) + ".new", path)


@pytest.fixture
def site(tmp_path, certs):
    """Live files of pool a: live/a.crt, live/a.key (pair a)."""
    live = tmp_path / "live"
    live.mkdir()
    replace(live / "a.crt", certs["a"][0])
    replace(live / "a.key", certs["a"][1])
    return tmp_path


def tls_cfg(site, name="a", **over):
    tls = hconfig.TLSConfig(pairs=((str(site / "live" / f"{name}.crt"),
                                    str(site / "live" / f"{name}.key")),))
    return pool_config(name, tls=dataclasses.replace(tls, **over))


def house(make_house, site, *cfgs, **main_over):
    """A house whose main config has a TLS listener on 8443 and its run_dir in tmp;
    the spec of every worker asked for is kept in h.specs (pool, worker id) -> spec."""
    main = main_config(site, listen_tls=(("127.0.0.1", 8443),), **main_over)
    h = make_house(main=main)
    h.specs = {}
    real_ask, real_zygote = h.processes._ask_zygote, h.processes._ask_for_pool_zygote

    def ask(sid, worker, isolation):
        h.specs[(worker.pool.name, worker.id)] = h.processes.worker_spec(worker, isolation)
        return real_ask(sid, worker, isolation)

    def ask_zygote(sid, spec):
        h.specs[(spec.pool, "zygote", spec.generation)] = spec
        return real_zygote(sid, spec)
    h.processes._ask_zygote = ask
    h.processes._ask_for_pool_zygote = ask_zygote
    for cfg in cfgs:
        h.add(cfg)
    return h


def test_spec_of_a_tls_worker_and_a_plain_one(make_house, site):
    h = house(make_house, site, tls_cfg(site), pool_config("p"))
    spec = h.specs[("a", 1)]
    (pair,) = spec.tls["pairs"]
    assert pair == [str(site / "run" / "tls" / "a" / "v1" / "0.crt"),
                    str(site / "run" / "tls" / "a" / "v1" / "0.key")]
    assert open(pair[1], "rb").read() == (site / "live" / "a.key").read_bytes()
    assert spec.tls["names"] == [["a.test", "*.a.test"]] and spec.tls["min_version"] == "1.2"
    assert spec.tls_ports == [8443]
    assert spec.config["tls"]["pairs"] == [[str(site / "live" / "a.crt"),
                                           str(site / "live" / "a.key")]]
    plain = h.specs[("p", 1)]
    assert plain.tls is None and plain.tls_ports == [8443]
    # the spec travels as JSON (the SPAWN message)
    assert protocol.decode(protocol.spawn(1, spec))["spec"]["tls"] == spec.tls


def test_pool_zygote_spec_has_the_tls_too(make_house, site):
    h = house(make_house, site, dataclasses.replace(tls_cfg(site), preload=True))
    h.processes.start_zygotes()
    spec = h.specs[("a", "zygote", 1)]
    assert spec.role == "zygote" and spec.tls_ports == [8443]
    assert spec.tls["pairs"][0][0].startswith(str(site / "run" / "tls" / "a"))


def test_reload_with_a_renewed_certificate_replaces_the_workers(make_house, site, certs, logs):
    cfg = tls_cfg(site)
    h = house(make_house, site, cfg)
    (w1,) = h.workers()
    h.up(w1)
    h.calls()
    replace(site / "live" / "a.crt", certs["b"][0])
    replace(site / "live" / "a.key", certs["b"][1])
    h.reload({"a": cfg})                      # the pool file did not change
    pool = h.pool()
    assert h.calls() == [("spawn", "a", "certificate changed")]
    assert pool.generation == 2 and dict(pool.recycles) == {"tls": 1}
    (ev,) = logs.events("tls_reloaded")
    assert ev["POOL"] == "a"
    w2 = h.workers()[-1]
    assert h.specs[("a", w2.id)].tls["names"] == [["b.test", "*.b.test"]]
    assert "/v2/" in h.specs[("a", w2.id)].tls["pairs"][0][0]
    assert w1.state == W.READY                # open connections stay on it ...
    h.up(w2)
    assert h.calls() == [("drain", "a#1", "config changed")]   # ... until w2 serves
    h.reload({"a": cfg})                      # nothing changed since
    assert h.calls() == [] and pool.generation == 2


def test_reload_with_a_broken_key_keeps_the_old_pair(make_house, site, certs, logs):
    cfg = tls_cfg(site)
    h = house(make_house, site, cfg)
    (w1,) = h.workers()
    h.up(w1)
    h.calls()
    replace(site / "live" / "a.key", certs["b"][1])     # a key of another certificate
    h.reload({"a": cfg})
    assert h.calls() == [] and h.pool().generation == 1
    (ev,) = logs.events("tls_load_failed")
    assert ev["POOL"] == "a" and ev["FILE"] == str(site / "live" / "a.key")
    assert "does not match" in ev["REASON"] and "KEY_VALUES_MISMATCH" in ev["REASON"]
    assert "keeps its previous certificate" in ev["MESSAGE"]
    doc = h.views.status()["pools"][0]["tls"]
    assert "does not match" in doc["last_error"]
    assert doc["certificates"][0]["names"] == ["a.test", "*.a.test"]   # still in use
    # a later worker still gets the old copy
    h.processes.spawn(h.pool(), "queue waiting")
    w2 = h.workers()[-1]
    pair = h.specs[("a", w2.id)].tls["pairs"][0]
    assert open(pair[1], "rb").read() == certs["a"][1].read_bytes()
    # fixed: the next reload takes it and clears the error
    replace(site / "live" / "a.crt", certs["b"][0])
    h.reload({"a": cfg})
    assert h.views.status()["pools"][0]["tls"]["last_error"] is None
    assert h.pool().generation == 2


def test_changed_tls_paths_that_are_bad_keep_the_old_pair(make_house, site, certs, logs):
    cfg = tls_cfg(site)
    h = house(make_house, site, cfg)
    (w1,) = h.workers()
    h.up(w1)
    h.calls()
    new = dataclasses.replace(cfg, tls=hconfig.TLSConfig(
        pairs=((str(certs["b"][0]), str(certs["a"][1])),)))
    h.reload({"a": new})
    assert h.calls() == [("spawn", "a", "config changed")]    # a config change anyway
    (ev,) = logs.events("tls_load_failed")
    assert "does not match" in ev["REASON"] and "keeps its previous" in ev["MESSAGE"]
    w2 = h.workers()[-1]
    assert h.specs[("a", w2.id)].tls["names"] == [["a.test", "*.a.test"]]


def test_tls_removed_or_pool_retired_drops_the_snapshot(make_house, site):
    cfg = tls_cfg(site)
    h = house(make_house, site, cfg)
    assert (site / "run" / "tls" / "a").is_dir()
    h.reload({"a": dataclasses.replace(cfg, tls=None)})
    assert not (site / "run" / "tls" / "a").exists()
    h.reload({"a": cfg})
    h.processes.spawn(h.pool(), "queue waiting")
    assert (site / "run" / "tls" / "a").is_dir()
    h.reload({})
    assert not (site / "run" / "tls" / "a").exists()


def test_listen_tls_change_on_reload_warns(make_house, site, logs):
    h = house(make_house, site, tls_cfg(site))
    h.reload({"a": tls_cfg(site)}, main=main_config(site, listen_tls=(("127.0.0.1", 9443),)))
    assert any("listen_tls changed: restart hostd" in e["MESSAGE"] for e in logs.events("reload"))
    assert h.views.status()["listen_tls"] == ["127.0.0.1:8443"]   # what is bound
    assert h.specs[("a", 1)].tls_ports == [8443]


def test_tls_default_pool_warnings(make_house, site, logs):
    h = house(make_house, site, tls_cfg(site), pool_config("p"), tls_default_pool="p")
    h.reload({"a": tls_cfg(site), "p": pool_config("p")})
    (ev,) = logs.events("tls_default_pool")
    assert "'p' has no [tls]" in ev["MESSAGE"]
    h.reload({"a": tls_cfg(site), "p": pool_config("p")},
             main=main_config(site, listen_tls=(("127.0.0.1", 8443),), tls_default_pool="a"))
    assert len(logs.events("tls_default_pool")) == 1


def test_expiring_certificates_are_logged_at_reload_and_daily(make_house, site, certs, logs):
    replace(site / "live" / "a.crt", certs["near"][0])
    replace(site / "live" / "a.key", certs["near"][1])
    h = house(make_house, site, tls_cfg(site), pool_config("p"))
    h.reload({"a": tls_cfg(site), "p": pool_config("p")})
    (ev,) = logs.events("tls_expiring")
    assert ev["POOL"] == "a" and ev["FILE"] == str(site / "live" / "a.crt")
    assert 2 < ev["DAYS"] <= 3 and ev["NOT_AFTER"].endswith("Z")
    h.tick(1.0)
    h.tick(1.0)                               # the first tick only schedules
    assert len(logs.events("tls_expiring")) == 1
    h.tick(86400.0)
    assert len(logs.events("tls_expiring")) == 2


def test_status_and_counters_documents(make_house, site):
    h = house(make_house, site, tls_cfg(site, redirect_http=True), pool_config("p"))
    (w1,) = h.workers()
    h.up(w1)
    fields = protocol.Scoreboard.TLS_FIELDS
    w1.board.write_tls([10, 4, 6, 1, 1, 1, 0, 0, 2])
    h.exit(w1, 0)                              # counted into the pool's totals
    h.processes.spawn(h.pool(), "queue waiting")
    w2 = h.workers()[-1]
    h.up(w2)
    w2.board.write_tls([5, 0, 5, 0, 0, 0, 1, 0, 0])
    status = h.views.status()
    assert status["listen_tls"] == ["127.0.0.1:8443"]
    a, p = status["pools"]
    assert p["tls"] is None
    tls = a["tls"]
    assert set(tls) == {"certificates", "min_version", "redirect_http", "counters", "last_error"}
    assert (tls["min_version"], tls["redirect_http"], tls["last_error"]) == ("1.2", True, None)
    (cert,) = tls["certificates"]
    assert set(cert) == {"file", "subject", "names", "not_after", "expires_in_days"}
    assert cert["file"] == str(site / "live" / "a.crt") and cert["subject"] == "CN=a.test"
    assert cert["names"] == ["a.test", "*.a.test"] and 29 < cert["expires_in_days"] <= 30.1
    assert cert["not_after"].endswith("Z") and "T" in cert["not_after"]
    want = dict(zip(fields, [15, 4, 11, 1, 1, 1, 1, 0, 2]))
    assert tls["counters"] == want
    counters = {c["name"]: c for c in h.views.counters()["pools"]}
    assert counters["p"]["tls"] is None
    ctls = counters["a"]["tls"]
    assert {k: ctls[k] for k in fields} == want
    assert ctls["certificates"][0]["file"] == str(site / "live" / "a.crt")
    text = metrics.render(h.views.counters())
    assert 'hostd_tls_handshakes_total{pool="a",version="1.3"} 11' in text
    assert 'hostd_tls_handshake_failures_total{pool="a",reason="timeout"} 1' in text
    assert 'hostd_tls_misdirected_requests_total{pool="a"} 2' in text
    assert 'hostd_tls_certificate_expiry_seconds{pool="a",certificate="' in text
    assert 'pool="p"' not in "".join(line for line in text.splitlines() if "_tls_" in line)


def test_hostctl_text_shows_certificates_and_tls_counters(make_house, site, certs):
    from hostd import hostctl
    h = house(make_house, site, tls_cfg(site), pool_config("p"))
    (w1,) = h.workers()
    h.up(w1)
    w1.board.write_tls([7, 3, 4, 1, 0, 0, 0, 0, 1])
    text = hostctl.show_status(h.views.status())
    assert "listen_tls: 127.0.0.1:8443" in text
    (row,) = [line for line in text.splitlines() if line.startswith("a ") and "CN=a.test" in line]
    assert "a.test *.a.test" in row and "days)" in row
    replace(site / "live" / "a.key", certs["b"][1])
    h.reload({"a": tls_cfg(site), "p": pool_config("p")})
    text = hostctl.show_status(h.views.status())
    assert "certificate errors" in text and "does not match" in text
    counters = hostctl.show_counters(h.views.counters())
    (row,) = [line for line in counters.splitlines() if line.split()[:2] == ["a", "7"]]
    assert row.split() == ["a", "7", "3", "4", "1", "0", "0", "0", "0", "1"]
    plain = make_house(pool_config("q"))
    assert "SUBJECT" not in hostctl.show_status(plain.views.status())
    assert "HANDSHAKES" not in hostctl.show_counters(plain.views.counters())
    assert "hostd_tls" not in metrics.render(plain.views.counters())   # 1,000 plain pools: no growth


def test_tls_pools_without_a_tls_listener_warn(make_house, site, logs):
    h = make_house(main=main_config(site))
    h.add(tls_cfg(site))
    h.reload({"a": tls_cfg(site)})
    (ev,) = logs.events("tls_no_listener")
    assert "1 pool(s) have [tls]" in ev["MESSAGE"]
    assert h.processes.worker_spec(h.workers()[0], None).tls_ports == []
