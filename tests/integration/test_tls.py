"""Issue 14 acceptance against a real hostd: TLS listeners, SNI routing in the front end,
TLS terminated by each pool's own (isolated, by default) workers with its own key.
Certificates come from a test CA (tests/tlscerts.py, openssl CLI); clients are Python's
ssl and curl, verifying against that CA."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest

from hostd_harness import APPS, Hostd, free_port

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import read_response  # noqa: E402

from tlscerts import CA

pytestmark = pytest.mark.root


def pool(bindings, leaf=None, **kw):
    doc = {"app": "core_app:application", "directory": str(APPS), "bindings": bindings}
    if leaf is not None:
        doc["tls"] = {"certificate": str(leaf.cert), "key": str(leaf.key)}
    doc.update(kw)
    return doc


class TLSHostd(Hostd):
    """A Hostd with one TLS listener (self.tls_port) beside its plain one."""

    def __init__(self, root, pools, ca, hostd=None, **kw):
        self.tls_port = free_port()
        self.ca = ca
        main = {"listen_tls": [f"127.0.0.1:{self.tls_port}"], "header_timeout": 3}
        main.update(hostd or {})
        super().__init__(root, pools, hostd=main, **kw)

    def tls_connect(self, name: str | None, *, verify: bool = True, timeout: float = 10.0,
                    **ctx_kw) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        for k, v in ctx_kw.items():
            setattr(ctx, k, v)
        raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=timeout)
        return ctx.wrap_socket(raw, server_hostname=name)


def request(s, host, path="/", method="GET", body=b"", headers=()):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    for k, v in headers:
        head += f"{k}: {v}\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    s.sendall(head.encode() + b"\r\n" + body)
    return read(s)


read = read_response     # one response from an ssl socket as from a plain one


def subject_cn(s: ssl.SSLSocket) -> str:
    der = s.getpeercert(binary_form=True)
    out = subprocess.run(["openssl", "x509", "-inform", "der", "-noout", "-subject",
                          "-serial"], input=der, capture_output=True, check=True)
    return out.stdout.decode()


def fingerprint(s: ssl.SSLSocket) -> str:
    return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("tlsca"))


@pytest.fixture
def two(tmp_path, ca):
    a = ca.issue("a.test", "www.a.test", "b.test")     # covers b.test too: for 421
    b = ca.issue("b.test")
    h = TLSHostd(tmp_path, {"a": pool(["a.test", "www.a.test"], a),
                            "b": pool(["b.test"], b)}, ca)
    h.start()
    h.leaves = (a, b)
    yield h
    h.stop()


# --- two pools, two certificates, one port -------------------------------------------
def test_each_name_gets_its_own_certificate_and_pool(two):
    a, b = two.leaves
    for name, pool_name, leaf in (("a.test", "a", a), ("www.a.test", "a", a), ("b.test", "b", b)):
        s = two.tls_connect(name)
        want = subprocess.run(["openssl", "x509", "-in", str(leaf.cert), "-noout",
                               "-fingerprint", "-sha256"], capture_output=True, text=True)
        got = fingerprint(s)
        assert got.upper() == want.stdout.split("=", 1)[1].strip().replace(":", "")
        status, _, body = request(s, name)
        assert status == 200 and json.loads(body)["pool"] == pool_name
        s.close()


def test_keep_alive_pipelining_upload_and_streaming_over_https(two):
    s = two.tls_connect("a.test")
    pids = set()
    for i in range(100):
        status, _, body = request(s, "a.test", f"/?n={i}")
        doc = json.loads(body)
        assert status == 200 and doc["n"] == str(i)
        pids.add(doc["pid"])
    assert len(pids) == 1                      # one connection, one worker
    s.sendall(b"".join(f"GET /?n={i} HTTP/1.1\r\nHost: a.test\r\n\r\n".encode()
                       for i in range(10)))
    assert [json.loads(read(s)[2])["n"] for _ in range(10)] == [str(i) for i in range(10)]
    body = os.urandom(10 << 20)
    status, _, _ = request(s, "a.test", "/echo", "POST", body=b"",
                           headers=[("Content-Length", str(len(body))),
                                    ("Expect", "100-continue")])
    assert status == 100
    s.sendall(body)
    status, _, got = read(s)
    assert status == 200 and hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    status, headers, got = request(s, "a.test", "/stream")
    assert headers.get("transfer-encoding") == "chunked"
    assert got == b"".join(f"part {i}\n".encode() for i in range(5))
    s.close()


def test_curl_verifies_both_sites_with_the_test_ca(two):
    for name, pool_name in (("a.test", "a"), ("b.test", "b")):
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(two.ca.cert), "--resolve",
             f"{name}:{two.tls_port}:127.0.0.1", f"https://{name}:{two.tls_port}/",
             "-w", "\n%{http_code} %{scheme}"], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        body, _, tail = out.stdout.rpartition("\n")
        assert tail == "200 HTTPS" and json.loads(body)["pool"] == pool_name


def test_sni_of_one_pool_with_host_of_another_is_421(two):
    s = two.tls_connect("a.test")
    assert request(s, "a.test")[0] == 200
    status, headers, _ = request(s, "b.test")          # a's certificate covers b.test
    assert status == 421
    s.close()
    s = two.tls_connect("b.test")                       # b's own connection: fine
    assert json.loads(request(s, "b.test")[2])["pool"] == "b"
    s.close()


def test_no_sni_is_refused_without_a_default_pool(two):
    with pytest.raises(ssl.SSLError) as err:
        two.tls_connect(None, verify=False)
    assert "UNRECOGNIZED_NAME" in str(err.value).upper() or "ALERT" in str(err.value).upper()
    with pytest.raises(ssl.SSLError):           # a name no pool binds: the same
        two.tls_connect("nobody.test", verify=False)


def test_no_sni_is_served_by_tls_default_pool(tmp_path, ca):
    a = ca.issue("a.test")
    h = TLSHostd(tmp_path, {"a": pool(["a.test"], a)}, ca, hostd={"tls_default_pool": "a"})
    h.start()
    try:
        s = h.tls_connect(None, verify=False)
        status, _, body = request(s, "a.test")
        assert status == 200 and json.loads(body)["pool"] == "a"
        s.close()
    finally:
        h.stop()


def test_plain_listener_still_serves_a_tls_pool(two):
    status, _, body = two.get("a.test")
    assert status == 200 and json.loads(body)["pool"] == "a"


# --- no key in a front end, no key of a's in b's workers ---------------------------------
def _regions(pid):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if "r" not in parts[1] or (len(parts) > 5 and parts[5] in ("[vvar]", "[vsyscall]")):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            yield lo, hi


def memory_holds(pid: int, needles: list[bytes]) -> bool:
    """True when any needle occurs in the process's readable memory (/proc/PID/mem)."""
    longest = max(len(n) for n in needles)
    with open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for lo, hi in _regions(pid):
            at, tail = lo, b""
            while at < hi:
                n = min(16 << 20, hi - at)
                try:
                    mem.seek(at)
                    data = mem.read(n)
                except (OSError, ValueError, OverflowError):
                    break
                buf = tail + data
                if any(x in buf for x in needles):
                    return True
                tail = buf[-longest:]
                at += n
    return False


def key_needles(leaf) -> list[bytes]:
    parts = leaf.key_bytes()
    scalar = parts[-1]
    # OpenSSL keeps the scalar as a BIGNUM: little-endian 64-bit limbs, so reversed
    return parts + [scalar[::-1]]


def test_no_front_end_holds_a_key_and_no_pool_holds_anothers(two):
    a, b = two.leaves
    for name in ("a.test", "b.test"):          # both pools have workers, keys loaded
        s = two.tls_connect(name)
        assert request(s, name)[0] == 200
        s.close()
    doc = two.status()
    fe_pids = [fe["pid"] for fe in doc["frontends"]]
    workers = {p["name"] if "name" in p else n: [w["pid"] for w in p["workers"]]
               for n, p in (doc["pools"].items() if isinstance(doc["pools"], dict)
                            else ((p["name"], p) for p in doc["pools"]))}
    na, nb = key_needles(a), key_needles(b)
    # the scan finds a key where one is: each pool's own worker holds its own
    assert any(memory_holds(pid, na) for pid in workers["a"]), "scan found a's key nowhere"
    assert any(memory_holds(pid, nb) for pid in workers["b"]), "scan found b's key nowhere"
    for pid in fe_pids:
        assert not memory_holds(pid, na + nb), f"front end {pid} holds key bytes"
    for pid in workers["b"]:
        assert not memory_holds(pid, na), f"pool b's worker {pid} holds pool a's key"
    for pid in workers["a"]:
        assert not memory_holds(pid, nb), f"pool a's worker {pid} holds pool b's key"
    others = [doc["pid"]] + ([doc["zygote"]] if doc.get("zygote") else [])
    for pid in others:
        assert not memory_holds(pid, na + nb), f"supervisor/zygote {pid} holds key bytes"


# --- certificates change without a restart ------------------------------------------------
def _replace(dst, src):
    tmp = dst.with_suffix(".new")
    tmp.write_bytes(src.read_bytes())
    os.chmod(tmp, 0o600)
    os.replace(tmp, dst)


def test_reload_gives_new_connections_the_new_certificate_and_keeps_old_ones(two):
    a, _ = two.leaves
    old_conn = two.tls_connect("a.test")
    assert request(old_conn, "a.test")[0] == 200
    old_fp = fingerprint(old_conn)
    new = two.ca.issue("a.test", "www.a.test", "b.test", tag="renewed")
    _replace(a.cert, new.cert)
    _replace(a.key, new.key)
    t0 = time.monotonic()
    two.signal(signal.SIGHUP)
    fp = old_fp
    while time.monotonic() - t0 < 5:
        s = two.tls_connect("a.test")
        fp = fingerprint(s)
        s.close()
        if fp != old_fp:
            break
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert fp != old_fp, "the new certificate never came"
    assert took <= 1.5, f"new certificate after {took:.2f} s"
    for _ in range(3):                          # the old connection keeps working
        assert request(old_conn, "a.test")[0] == 200
    assert fingerprint(old_conn) == old_fp
    old_conn.close()


def test_a_broken_new_pair_keeps_the_old_one_and_says_why(two):
    a, b = two.leaves
    s = two.tls_connect("a.test")
    assert request(s, "a.test")[0] == 200
    good = fingerprint(s)
    s.close()
    _replace(a.key, b.key)                     # a key that does not match a's certificate
    two.signal(signal.SIGHUP)
    two.wait_for(lambda: "tls_load_failed" in two.log() or "does not match" in two.log(),
                 timeout=10, what="the reason in the log")
    log = two.log()
    assert str(a.key) in log or "a.key" in log or a.key.name in log
    time.sleep(0.5)
    s = two.tls_connect("a.test")
    assert fingerprint(s) == good and request(s, "a.test")[0] == 200
    s.close()
    # and a worker started later still gets the old, good pair
    two.ctl("pool", "recycle", "a")
    time.sleep(1.0)
    s = two.tls_connect("a.test")
    assert fingerprint(s) == good and request(s, "a.test")[0] == 200
    s.close()


# --- redirect_http ------------------------------------------------------------------------
def test_redirect_http_sends_308_to_https(tmp_path, ca):
    a = ca.issue("a.test")
    p = pool(["a.test"], a)
    p["tls"]["redirect_http"] = True
    h = TLSHostd(tmp_path, {"a": p}, ca)
    h.start()
    try:
        status, headers, _ = h.get("a.test", "/x?y=1")
        assert status == 308
        assert headers["location"] == "https://a.test/x?y=1"
        s = h.tls_connect("a.test")
        assert request(s, "a.test", "/x?y=1")[0] == 200
        s.close()
    finally:
        h.stop()


# --- observability ---------------------------------------------------------------------------
def test_status_shows_certificate_and_handshake_counters_and_access_log_marks_https(tmp_path, ca):
    a = ca.issue("a.test", "www.a.test")
    log_path = tmp_path / "access.log"
    h = TLSHostd(tmp_path, {"a": pool(["a.test"], a)}, ca, hostd={"access_log": str(log_path)})
    h.start()
    try:
        s = h.tls_connect("a.test")
        assert request(s, "a.test", "/tls-marked")[0] == 200
        s.close()
        assert h.get("a.test", "/plain-line")[0] == 200
        tls = h.pool("a")["tls"]
        cert = tls["certificates"][0]
        assert "a.test" in cert["subject"] and set(cert["names"]) >= {"a.test", "www.a.test"}
        assert 28 <= cert["expires_in_days"] <= 31
        h.wait_for(lambda: h.pool("a")["tls"]["counters"]["handshakes"] >= 1, timeout=5,
                   what="handshakes counted")
        text = h.ctl("status").stdout
        assert "a.test" in text
        h.wait_for(lambda: log_path.exists() and "/plain-line" in log_path.read_text(),
                   timeout=5, what="access log lines")
        lines = log_path.read_text().splitlines()
        tls_line = [ln for ln in lines if "/tls-marked" in ln][0]
        plain_line = [ln for ln in lines if "/plain-line" in ln][0]
        assert tls_line.endswith(" https") and not plain_line.endswith(" https")
        # plain HTTP on the TLS port: not served, and counted by the front ends
        with socket.create_connection(("127.0.0.1", h.tls_port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            got = b""
            while True:
                d = raw.recv(4096)
                if not d:
                    break
                got += d
            assert b"HTTP/1.1" not in got

        def refused():
            doc = json.loads(h.ctl("counters", "--json").stdout)
            return doc["front_ends"]["refused"].get("tls_not_tls", 0)
        h.wait_for(lambda: refused() >= 1, timeout=5, what="tls_not_tls counted")
    finally:
        h.stop()


# --- isolation: a pool sees no key file once its worker runs -------------------------------
def test_an_isolated_pool_cannot_read_any_key_file(tmp_path, ca):
    a, b = ca.issue("a.test"), ca.issue("b.test")
    h = TLSHostd(tmp_path, {"a": pool(["a.test"], a, app="intruder_app:application"),
                            "b": pool(["b.test"], b)}, ca)
    h.start()
    try:
        s = h.tls_connect("a.test")
        assert request(s, "a.test", "/whoami")[0] == 200
        snap = sorted((tmp_path / "run" / "tls").rglob("*.key"))
        assert snap, "no snapshot copies under run_dir/tls"
        for path in [a.key, b.key, *snap]:
            status, _, body = request(s, "a.test", f"/read?path={path}")
            doc = json.loads(body)
            assert doc["ok"] is False, (path, doc)
        s.close()
    finally:
        h.stop()


def test_a_preload_pool_serves_tls_from_its_zygote(tmp_path, ca):
    """The pool's zygote loads the pair before it is confined; its workers inherit it."""
    a = ca.issue("a.test")
    h = TLSHostd(tmp_path, {"a": pool(["a.test"], a, app="preload_app:application",
                                      preload=True)}, ca)
    h.start()
    try:
        h.wait_for(lambda: (h.pool("a").get("zygote") or {}).get("state") == "ready",
                   20, what="pool a's zygote ready")
        zpid = h.pool("a")["zygote"]["pid"]
        s = h.tls_connect("a.test")
        status, _, body = request(s, "a.test")
        doc = json.loads(body)
        assert status == 200 and doc["import_pid"] == zpid != doc["pid"]
        assert doc["frozen"] > 10000
        for _ in range(5):
            assert request(s, "a.test")[0] == 200
        s.close()
    finally:
        h.stop()


def test_a_pool_with_several_pairs_answers_each_name_with_its_own(tmp_path, ca):
    one, two = ca.issue("shop.test"), ca.issue("blog.test", "*.blog.test")
    p = pool(["shop.test", "blog.test", "www.blog.test"])
    p["tls"] = {"certificates": [{"certificate": str(one.cert), "key": str(one.key)},
                                 {"certificate": str(two.cert), "key": str(two.key)}],
                "min_version": "1.3"}
    h = TLSHostd(tmp_path, {"multi": p}, ca)
    h.start()
    try:
        for name in ("shop.test", "blog.test", "www.blog.test"):
            s = h.tls_connect(name)              # verifies the name against the CA
            assert s.version() == "TLSv1.3"
            assert json.loads(request(s, name)[2])["pool"] == "multi"
            s.close()
        with pytest.raises(ssl.SSLError):       # min_version = "1.3"
            h.tls_connect("shop.test", maximum_version=ssl.TLSVersion.TLSv1_2)
        names = {n for c in h.pool("multi")["tls"]["certificates"] for n in c["names"]}
        assert names >= {"shop.test", "blog.test", "*.blog.test"}
    finally:
        h.stop()


def test_check_config_checks_pairs_and_warns_of_expiry(tmp_path, ca):
    soon, good = ca.issue("soon.test", days=5), ca.issue("good.test")
    h = TLSHostd(tmp_path, {"soon": pool(["soon.test"], soon),
                            "good": pool(["good.test"], good)}, ca)
    out = subprocess.run([sys.executable, "-m", "hostd.cli", "--check-config", "--config",
                          str(h.config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "soon.test" in text and re.search(r"expir", text, re.I)
    # a key that does not match: an error naming the file, exit 2
    h.write_pool("good", pool(["good.test"], None) | {"tls": {"certificate": str(good.cert),
                                                              "key": str(soon.key)}})
    out = subprocess.run([sys.executable, "-m", "hostd.cli", "--check-config", "--config",
                          str(h.config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert soon.key.name in out.stdout + out.stderr
