"""hostd.tlsconf: certificate info without a key, pair checks (in-process and in a
child), the kernel-side snapshot store. Certificates made with the openssl CLI."""
import json
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from hostd import tlsconf
from hostd.tlsconf import Snapshots, cert_info, check_in_subprocess, check_pair

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_pair(d, name, days=30, san=True, passphrase=None):
    cert, key = d / f"{name}.crt", d / f"{name}.key"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-subj", f"/CN={name}/O=Test Org", "-days", str(days),
            "-keyout", str(key), "-out", str(cert)]
    argv += ["-passout", f"pass:{passphrase}"] if passphrase else ["-nodes"]
    if san:
        argv[argv.index("-days"):argv.index("-days")] = [
            "-addext", f"subjectAltName=DNS:{name},DNS:*.{name}"]
    subprocess.run(argv, check=True, capture_output=True)
    key.chmod(0o600)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tlsconf")
    return {"a": make_pair(d, "a.test"), "b": make_pair(d, "b.test"),
            "cn": make_pair(d, "cn-only.test", san=False),
            "near": make_pair(d, "near.test", days=3),
            "enc": make_pair(d, "enc.test", passphrase="secret"), "dir": d}


# --- cert_info -------------------------------------------------------------------
def test_cert_info_names_subject_expiry(certs):
    info = cert_info(certs["a"][0])
    assert info.names == ("a.test", "*.a.test")
    assert info.subject == "CN=a.test, O=Test Org" == info.issuer
    assert 29 < info.expires_in_days() <= 30.1
    assert abs(info.not_after - (time.time() + 30 * 86400)) < 3600
    near = cert_info(certs["near"][0])
    assert near.expires_in_days() < tlsconf.EXPIRY_WARNING_DAYS


def test_cert_info_without_san_uses_the_common_name(certs):
    assert cert_info(certs["cn"][0]).names == ("cn-only.test",)


def test_cert_info_is_cached_by_fingerprint(certs, tmp_path):
    path = tmp_path / "c.crt"
    shutil.copy(certs["a"][0], path)
    assert cert_info(path).names[0] == "a.test"
    shutil.copy(certs["b"][0], tmp_path / "new.crt")
    os.replace(tmp_path / "new.crt", path)          # a renewal: another inode
    assert cert_info(path).names[0] == "b.test"


def test_cert_info_of_a_non_certificate(tmp_path, certs):
    (tmp_path / "x.crt").write_text("hello\n")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        cert_info(tmp_path / "x.crt")
    with pytest.raises(OSError):
        cert_info(tmp_path / "missing.crt")


# --- check_pair --------------------------------------------------------------------
def test_check_pair_good_and_each_way_it_fails(certs, tmp_path):
    (ca, ka), (cb, kb) = certs["a"], certs["b"]
    assert check_pair(ca, ka) is None and check_pair(ca, ka, "1.3") is None
    wrong = check_pair(ca, kb)
    assert "does not match" in wrong and str(kb) in wrong and "KEY_VALUES_MISMATCH" in wrong
    (tmp_path / "junk").write_text("junk\n")
    assert "not a PEM certificate" in check_pair(tmp_path / "junk", ka)
    assert check_pair(ca, tmp_path / "junk").startswith(f"key {tmp_path / 'junk'}")
    assert "No such file" in check_pair(ca, tmp_path / "none.key")
    assert "No such file" in check_pair(tmp_path / "none.crt", ka)
    assert "not a regular file" in check_pair(ca, tmp_path)
    enc = check_pair(*certs["enc"])
    assert "passphrase" in enc
    assert "min_version" in check_pair(ca, ka, "1.1")


def test_cli_prints_one_json_line(certs):
    (ca, ka), (cb, kb) = certs["a"], certs["b"]
    done = subprocess.run([sys.executable, "-m", "hostd.tlsconf", "check", str(ca), str(ka),
                           str(ca), str(kb)], capture_output=True, text=True)
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    results = json.loads(line)["results"]
    assert results[0] is None and "does not match" in results[1]
    ok = subprocess.run([sys.executable, "-m", "hostd.tlsconf", "check", "--min-version", "1.3",
                         str(ca), str(ka)], capture_output=True, text=True)
    assert (ok.returncode, json.loads(ok.stdout)) == (0, {"results": [None]})
    bad = subprocess.run([sys.executable, "-m", "hostd.tlsconf", "check", str(ca)],
                         capture_output=True, text=True)
    assert bad.returncode == 2


def test_check_in_subprocess(certs):
    (ca, ka), (cb, kb) = certs["a"], certs["b"]
    assert check_in_subprocess([]) == []
    results = check_in_subprocess([(ca, ka), (cb, ka), (cb, kb)])
    assert results[0] is None and results[2] is None and "does not match" in results[1]


def test_check_in_subprocess_never_reads_the_key_here(certs, monkeypatch):
    """The supervisor's side only runs a child: nothing here opens the key."""
    import builtins
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    assert check_in_subprocess([certs["a"]]) == [None]
    assert str(certs["a"][1]) not in opened


def test_check_in_subprocess_timeout(certs, monkeypatch):
    def slow(*a, **k):
        raise subprocess.TimeoutExpired("x", 1)
    monkeypatch.setattr(subprocess, "run", slow)
    (r,) = check_in_subprocess([certs["a"]], timeout=1)
    assert "did not finish" in r


# --- the kernel-side copy and the snapshots -----------------------------------------
def test_copy_kernel_side(certs, tmp_path, monkeypatch):
    src = certs["a"][1]
    fp = tlsconf.copy_kernel_side(src, tmp_path / "k")
    assert (tmp_path / "k").read_bytes() == src.read_bytes()
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert fp == tlsconf.fingerprint(src)
    with pytest.raises(FileExistsError):
        tlsconf.copy_kernel_side(src, tmp_path / "k")
    monkeypatch.delattr(os, "copy_file_range")   # the sendfile way
    tlsconf.copy_kernel_side(src, tmp_path / "k2")
    assert (tmp_path / "k2").read_bytes() == src.read_bytes()


def test_copy_never_reads_into_user_space(certs, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "read", lambda *a: pytest.fail("os.read of a key"))
    import builtins
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: pytest.fail(f"open({f})")
                        if str(f).endswith(".key") else real_open(f, *a, **k))
    tlsconf.copy_kernel_side(certs["a"][1], tmp_path / "k")


class Checks:
    """A stand-in for check_in_subprocess: check_pair in-process, calls recorded."""

    def __init__(self):
        self.calls = []

    def __call__(self, pairs, min_version="1.2"):
        self.calls.append([tuple(map(str, p)) for p in pairs])
        return [check_pair(c, k, min_version) for c, k in pairs]


@pytest.fixture
def live(tmp_path, certs):
    """Live files of a pool: live/site.crt, live/site.key (pair a)."""
    d = tmp_path / "live"
    d.mkdir()
    shutil.copy(certs["a"][0], d / "site.crt")
    shutil.copy(certs["a"][1], d / "site.key")
    return [(str(d / "site.crt"), str(d / "site.key"))]


def replace(path, src):
    """What certbot does: a new file, then a rename over the old name."""
    shutil.copy(src, str(path) + ".new")
    os.replace(str(path) + ".new", path)


def test_snapshot_made_lazily_with_safe_modes(tmp_path, live):
    snaps = Snapshots(tmp_path / "run", check=Checks())
    assert not (tmp_path / "run").exists()             # nothing until a worker spawns
    (pair,) = snaps.current("shop", live)
    assert pair[0].startswith(str(tmp_path / "run" / "tls" / "shop" / "v1"))
    assert open(pair[1], "rb").read() == open(live[0][1], "rb").read()
    for d in (tmp_path / "run" / "tls", tmp_path / "run" / "tls" / "shop"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in pair:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
        assert os.stat(f).st_uid == os.geteuid()
    assert snaps.current("shop", live) == [pair]      # the same copy again
    assert snaps.check.calls == []                      # the first copy is not checked


def test_snapshot_survives_a_broken_edit(tmp_path, live, certs):
    checks = Checks()
    snaps = Snapshots(tmp_path / "run", check=checks)
    (pair,) = snaps.current("shop", live)
    assert snaps.refresh("shop", live) == (False, None) and checks.calls == []
    replace(live[0][1], certs["b"][1])                  # the key of another certificate
    changed, problem = snaps.refresh("shop", live)
    assert not changed and "does not match" in problem
    assert live[0][1] in problem and "/run/" not in problem   # the operator's file names
    assert snaps.current("shop", live) == [pair]        # new workers keep the old pair
    assert open(pair[1], "rb").read() == certs["a"][1].read_bytes()
    assert sorted(os.listdir(tmp_path / "run" / "tls" / "shop")) == ["v1"]


def test_snapshot_takes_a_good_renewal(tmp_path, live, certs):
    snaps = Snapshots(tmp_path / "run", check=Checks())
    (old,) = snaps.current("shop", live)
    replace(live[0][0], certs["b"][0])
    replace(live[0][1], certs["b"][1])
    assert snaps.refresh("shop", live) == (True, None)
    (new,) = snaps.current("shop", live)
    assert new != old and cert_info(new[0]).names[0] == "b.test"
    assert os.path.exists(old[0])                       # the previous version is kept
    assert snaps.refresh("shop", live) == (False, None)
    replace(live[0][0], certs["a"][0])
    replace(live[0][1], certs["a"][1])
    assert snaps.refresh("shop", live) == (True, None)
    assert not os.path.exists(old[0])                   # ... but not two back


def test_snapshot_new_paths_are_a_change(tmp_path, live, certs):
    snaps = Snapshots(tmp_path / "run", check=Checks())
    snaps.current("shop", live)
    assert snaps.refresh("shop", [tuple(map(str, certs["b"]))]) == (True, None)
    changed, problem = snaps.refresh("shop", [(str(certs["b"][0]), str(tmp_path / "gone.key"))])
    assert not changed and "gone.key" in problem


def test_snapshot_without_one_yet_and_removal(tmp_path, live):
    snaps = Snapshots(tmp_path / "run", check=Checks())
    assert snaps.refresh("shop", live) == (False, None) and not snaps.has("shop")
    snaps.current("shop", live)
    assert snaps.has("shop")
    snaps.remove("shop")
    assert not snaps.has("shop") and not (tmp_path / "run" / "tls" / "shop").exists()


def test_snapshots_clear_what_an_earlier_hostd_left(tmp_path, live):
    (tmp_path / "run" / "tls" / "old" / "v3").mkdir(parents=True)
    snaps = Snapshots(tmp_path / "run", check=Checks())
    snaps.current("shop", live)
    assert sorted(os.listdir(tmp_path / "run" / "tls")) == ["shop"]


def test_snapshot_first_copy_of_a_missing_file_raises(tmp_path):
    snaps = Snapshots(tmp_path / "run", check=Checks())
    with pytest.raises(OSError):
        snaps.current("shop", [(str(tmp_path / "x.crt"), str(tmp_path / "x.key"))])
    assert not snaps.has("shop") and os.listdir(tmp_path / "run" / "tls" / "shop") == []


def test_snapshots_clear_at_start(tmp_path, live):
    snaps = Snapshots(tmp_path / "run", check=Checks())
    snaps.current("shop", live)
    (tmp_path / "run" / "tls" / "left").mkdir()
    snaps.clear()
    assert not (tmp_path / "run" / "tls").exists() and not snaps.has("shop")
    snaps.current("shop", live)
    assert sorted(os.listdir(tmp_path / "run" / "tls")) == ["shop"]
