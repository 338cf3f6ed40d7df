"""[isolation] against the real kernel (the isolation issue's acceptance): an intruder
app in pool "a" tries to reach pool "b", hostd and the host, and every attempt must
fail. Pools "a" and "b" have no [isolation] table at all: what they get is the default
(isolated-default issue); "n" adds network = "none"; each failure is checked next to a positive control (the same attempt from a
place where it must work), so a broken probe cannot pass for isolation.

Root only: uids, user/mount/pid/network namespaces are real, nothing is mocked."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hostd_harness import APPS, Hostd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="isolation needs root "
                                "(uids, user/mount/pid/network namespaces)")


def site_dir(root: Path, name: str) -> Path:
    """A pool directory with the intruder app, readable by any uid (0755/0644): which
    pool may see it is the view's business, not the mode's."""
    d = root / name
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    shutil.copy(APPS / "intruder_app.py", d / "intruder_app.py")
    (d / "intruder_app.py").chmod(0o644)
    return d


def pool(d: Path, binding: str, **isolation) -> dict:
    """A pool file; without keyword arguments it has no [isolation] table at all."""
    doc = {"app": "intruder_app:application", "directory": str(d), "bindings": [binding],
           "start_mode": "always_running"}
    if isolation:
        doc["isolation"] = isolation
    return doc


def ask(h: Hostd, host: str, path: str) -> dict:
    status, _, body = h.get(host, path)
    assert status == 200, (status, body)
    return json.loads(body)


def ready_pid(h: Hostd, name: str) -> int:
    h.wait_for(lambda: any(w["state"] == "ready" for w in h.pool(name)["workers"]),
               timeout=20, what=f"pool {name} ready")
    return next(w["pid"] for w in h.pool(name)["workers"] if w["state"] == "ready")


@pytest.fixture(scope="module")
def listener():
    """A TCP listener on the host's loopback: pool "n" (network = "none") must not
    reach it, pool "b" (network = "host", the default) must."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture(scope="module")
def hostd(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    a, b = site_dir(root, "a"), site_dir(root, "b")
    b.chmod(0o700)            # root's until the admin gives it to b's identity (below)
    h = Hostd(root, pools={
        "a": pool(a, "a.localhost"),
        "b": {**pool(b, "b.localhost"), "env": {"SECRET": "b's database password"}},
        "n": pool(site_dir(root, "n"), "n.localhost", network="none"),
    })
    # no user namespace, read-only site; and an existing account
    h.write_pool("c", pool(site_dir(root, "c"), "c.localhost", user_namespace=False,
                           read_only=True))
    h.write_pool("d", pool(site_dir(root, "d"), "d.localhost", identity="user:nobody"))
    # the host's view: only the uid protects (this host's Python is under /root). Its
    # directory must be reachable on the host: pytest's base (/tmp/pytest-of-root) is 0700
    host_root = Path(tempfile.mkdtemp(prefix="hostd-hostview-"))
    host_root.chmod(0o755)
    h.write_pool("h", pool(site_dir(host_root, "h"), "h.localhost", filesystem="host"))
    leaky = h.write_pool("leaky", {**pool(a, "leaky.localhost"), "env": {"SECRET": "x"}})
    leaky.chmod(0o644)        # env values readable by everybody: hostd must refuse it
    h.start()
    try:
        # the admin's way: b fails with an error that names its uid; chown, start
        h.wait_for(lambda: h.pool("b")["state"] == "failed", timeout=10)
        assert "cannot read" in h.pool("b")["error"]
        h.ids = {n: json.loads(h.ctl("pool", "identity", n, "--json").stdout)
                 for n in ("a", "b")}
        assert f"chown -R {h.ids['b']['uid']}:{h.ids['b']['gid']}" in h.pool("b")["error"]
        secret = b / "secret.txt"
        secret.write_text("b's secret")
        secret.chmod(0o600)
        for path in (b, b / "intruder_app.py", secret):
            os.chown(path, h.ids["b"]["uid"], h.ids["b"]["gid"])
        assert h.ctl("pool", "start", "b").returncode == 0
        h.a_pid, h.b_pid, h.n_pid = ready_pid(h, "a"), ready_pid(h, "b"), ready_pid(h, "n")
        h.secret, h.a_dir, h.b_dir = secret, a, b
        yield h
    finally:
        h.stop()
        shutil.rmtree(host_root, ignore_errors=True)


def test_each_pool_has_its_own_uid_and_the_host_sees_it(hostd):
    a, b = hostd.ids["a"], hostd.ids["b"]
    assert a["identity"] == b["identity"] == "dynamic"
    assert a["uid"] != b["uid"] and a["uid"] >= 1000 and b["uid"] >= 1000
    for name, pid in (("a", hostd.a_pid), ("b", hostd.b_pid)):
        uid = hostd.ids[name]["uid"]
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, status
        # a user namespace that maps exactly the pool's uid, nothing else
        assert Path(f"/proc/{pid}/uid_map").read_text().split() == [str(uid), str(uid), "1"]
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert os.readlink(f"/proc/{pid}/ns/pid_for_children") != os.readlink("/proc/self/ns/pid")
    # the default keeps the host's network; network = "none" is a namespace of its own
    assert os.readlink(f"/proc/{hostd.a_pid}/ns/net") == os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{hostd.n_pid}/ns/net") != os.readlink("/proc/self/ns/net")
    status = hostd.pool("a")
    assert status["identity"]["uid"] == a["uid"] and status["isolation"]["network"] == "host"
    assert status["isolated"] is True and status["isolation_reason"] == "isolated"
    assert status["isolation"]["declared"] is False           # no table: the defaults
    assert hostd.pool("n")["isolation"]["network"] == "none"
    text = hostd.ctl("pool", "identity", "a").stdout
    assert str(a["uid"]) in text, text
    table = hostd.ctl("status").stdout            # the UID column of the pool table
    row = next(l for l in table.splitlines() if l.startswith("a "))
    assert str(a["uid"]) in row.split(), table


def test_worker_is_not_root_and_has_no_capabilities(hostd):
    me = ask(hostd, "a.localhost", "/whoami")
    assert me["uid"] == hostd.ids["a"]["uid"] and me["gid"] == hostd.ids["a"]["gid"]
    assert me["groups"] == []
    assert int(me["CapEff"], 16) == int(me["CapPrm"], 16) == int(me["CapBnd"], 16) == 0
    assert me["NoNewPrivs"] == "1"
    assert me["getpid"] == 1                       # pid 1 of its own pid namespace
    assert me["pids"] == [1], me["pids"]           # sees no pid outside its pool
    assert me["cwd"] == str(hostd.a_dir)
    assert me["interfaces"] == [n for _, n in socket.if_nameindex()]   # the host's network
    assert ask(hostd, "n.localhost", "/whoami")["interfaces"] == ["lo"]   # network = "none"


def test_worker_reaps_the_daemons_it_inherits_as_pid_1(hostd):
    assert ask(hostd, "a.localhost", "/daemon")["ok"]
    # the daemon exits after 0.2 s; the worker's sweep (at most 1 s later) reaps it
    hostd.wait_for(lambda: ask(hostd, "a.localhost", "/whoami")["pids"] == [1], timeout=5,
                   what="the orphaned daemon reaped")


def test_a_forged_handback_is_refused(hostd):
    """The intruder sends a socket of its own (with a request for b) down every channel
    it holds; the supervisor's relay lets only hostd's own client connections through."""
    before = hostd.log().count("reroute_refused")
    r = ask(hostd, "a.localhost", "/forge")
    assert r["ok"], r
    hostd.wait_for(lambda: hostd.log().count("reroute_refused") > before, timeout=5,
                   what="the forged descriptor refused")
    assert hostd.get("a.localhost", "/")[0] == 200 and hostd.get("b.localhost", "/")[0] == 200


def test_recycle_hands_kept_alive_connections_back_through_the_relay(hostd):
    """An isolated worker draining on recycle gives its idle keep-alive connection back
    (through its pool's channel and the supervisor's relay); the next request on the
    same connection is served by the replacement."""
    conn = hostd.connect()
    try:
        conn.request("GET", "/", headers={"Host": "b.localhost"})
        old = json.loads(conn.getresponse().read())["worker"]
        assert old == ready_pid(hostd, "b")
        assert hostd.ctl("pool", "recycle", "b").returncode == 0
        hostd.wait_for(lambda: old not in [w["pid"] for w in hostd.pool("b")["workers"]],
                       timeout=20, what="the old worker gone")
        conn.request("GET", "/", headers={"Host": "b.localhost"})
        resp = conn.getresponse()
        assert resp.status == 200
        new = json.loads(resp.read())["worker"]
        assert new != old and new == ready_pid(hostd, "b")
        assert "reroute_refused" not in hostd.log().split("recycle")[-1]
    finally:
        conn.close()
    hostd.b_pid = ready_pid(hostd, "b")


def test_tmp_is_private_to_the_pool(hostd):
    """/tmp is the pool's: not the host's, not another pool's; its workers share it, and
    it outlives a recycle (a tmpfs of the pool's own in run_dir)."""
    name = f"hostd-isolation-{os.getpid()}"
    assert ask(hostd, "a.localhost", f"/write?path=/tmp/{name}")["ok"]
    try:
        assert not os.path.exists(f"/tmp/{name}")           # not the host's /tmp
        assert (hostd.root / "run" / "tmp" / "a" / "tmp" / name).exists()
        assert name not in ask(hostd, "b.localhost", "/whoami")["tmp"]
        old = ready_pid(hostd, "a")
        assert hostd.ctl("pool", "recycle", "a").returncode == 0
        hostd.wait_for(lambda: old not in [w["pid"] for w in hostd.pool("a")["workers"]],
                       timeout=20, what="a recycled")
        assert name in ask(hostd, "a.localhost", "/whoami")["tmp"]   # the new worker's too
        assert ask(hostd, "a.localhost", f"/read?path=/tmp/{name}")["ok"]
    finally:
        if os.path.exists(f"/tmp/{name}"):
            os.unlink(f"/tmp/{name}")
        hostd.a_pid = ready_pid(hostd, "a")


def test_intruder_cannot_read_another_pools_file(hostd):
    # positive control: b reads its own 0600 file
    assert ask(hostd, "b.localhost", f"/read?path={hostd.secret}")["ok"]
    r = ask(hostd, "a.localhost", f"/read?path={hostd.secret}")
    assert not r["ok"] and r["errno"] in ("EACCES", "ENOENT"), r


def test_intruder_cannot_list_another_pools_directory(hostd):
    assert ask(hostd, "b.localhost", f"/list?path={hostd.b_dir}")["ok"]
    r = ask(hostd, "a.localhost", f"/list?path={hostd.b_dir}")
    assert not r["ok"] and r["errno"] in ("EACCES", "ENOENT"), r


def test_intruder_cannot_read_shadow_or_write_usr(hostd):
    r = ask(hostd, "a.localhost", "/read?path=/etc/shadow")
    assert not r["ok"] and r["errno"] == "EACCES", r
    assert ask(hostd, "a.localhost", "/read?path=/etc/hostname")["ok"] or \
        ask(hostd, "a.localhost", "/read?path=/etc/passwd")["ok"]
    r = ask(hostd, "a.localhost", "/write?path=/usr/intruder")
    assert not r["ok"] and r["errno"] in ("EROFS", "EACCES"), r
    assert not os.path.exists("/usr/intruder")
    # b's own directory is writable in its view (read_only = false); a's is root's
    assert ask(hostd, "b.localhost", f"/write?path={hostd.b_dir}/scratch")["ok"]
    r = ask(hostd, "a.localhost", f"/write?path={hostd.a_dir}/scratch")
    assert not r["ok"] and r["errno"] == "EACCES", r


def test_intruder_cannot_read_any_pool_file(hostd):
    for f in ("a.toml", "b.toml"):
        path = hostd.pools_dir / f
        r = ask(hostd, "a.localhost", f"/read?path={path}")
        assert not r["ok"] and r["errno"] in ("EACCES", "ENOENT"), (f, r)
    r = ask(hostd, "a.localhost", f"/read?path={hostd.config}")
    assert not r["ok"], r
    # b's env reached b's app without b reading its file
    assert "SECRET" not in json.dumps(ask(hostd, "a.localhost", "/whoami"))


def test_intruder_cannot_signal_or_ptrace_another_pool(hostd):
    for pid in (hostd.b_pid, hostd.proc.pid):
        for probe in ("kill", "ptrace"):
            r = ask(hostd, "a.localhost", f"/{probe}?pid={pid}")
            assert not r["ok"] and r["errno"] in ("ESRCH", "EPERM"), (probe, pid, r)


def test_intruder_cannot_connect_to_the_control_socket(hostd):
    r = ask(hostd, "a.localhost", f"/unix?path={hostd.socket_path}")
    assert not r["ok"] and r["errno"] in ("EACCES", "ENOENT"), r
    r = ask(hostd, "b.localhost", f"/unix?path={hostd.socket_path}")
    assert not r["ok"], r


def test_network_none_cannot_reach_the_host(hostd, listener):
    # positive control: b (network = "host") connects to the host's loopback listener
    assert ask(hostd, "b.localhost", f"/connect?host=127.0.0.1&port={listener}")["ok"]
    r = ask(hostd, "n.localhost", f"/connect?host=127.0.0.1&port={listener}")
    assert not r["ok"] and r["errno"] in ("ECONNREFUSED", "ENETUNREACH"), r
    r = ask(hostd, "n.localhost", f"/connect?host=127.0.0.1&port={hostd.port}")
    assert not r["ok"], r


def test_intruder_cannot_leave_its_cgroup(hostd):
    r = ask(hostd, "a.localhost", "/escape")
    assert not r["ok"], r
    cg = Path(f"/proc/{hostd.a_pid}/cgroup").read_text()
    assert "pool-a" in cg or "hostd" in cg, cg


def test_env_file_readable_by_others_is_refused_and_others_run(hostd):
    leaky = hostd.pool("leaky")
    assert leaky["state"] == "failed"
    assert "leaky.toml" in leaky["error"] and "env" in leaky["error"], leaky["error"]
    assert "chmod 600" in leaky["error"]
    assert hostd.get("a.localhost", "/")[0] == 200


def test_identity_stable_across_restart_and_unreadable_dir_is_an_error(hostd, tmp_path):
    before = hostd.ids
    store = json.loads((hostd.root / "state" / "identities.json").read_text())
    assert store["uids"]["a"] == before["a"]["uid"]
    hostd.stop()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o700)          # root only: no pool identity can read it
    shutil.copy(APPS / "intruder_app.py", locked / "intruder_app.py")
    hostd.write_pool("locked", pool(locked, "locked.localhost"))
    hostd.start()
    try:
        after = {n: json.loads(hostd.ctl("pool", "identity", n, "--json").stdout)
                 for n in ("a", "b", "locked")}
        assert after["a"]["uid"] == before["a"]["uid"]
        assert after["b"]["uid"] == before["b"]["uid"]
        assert len({d["uid"] for d in after.values()}) == 3
        hostd.wait_for(lambda: hostd.pool("locked")["state"] == "failed", timeout=10)
        error = hostd.pool("locked")["error"]
        assert "locked.toml" in error and "cannot read" in error and str(locked) in error, error
        assert hostd.get("a.localhost", "/")[0] == 200
    finally:
        hostd.remove_pool("locked")


def test_private_network_and_access_log_of_isolated_workers(tmp_path):
    """network = "private": a veth pair from private_network (a benchmarking range
    here, 198.18.0.0/15, so it collides with nothing); the host side answers, the
    host's loopback does not. The access log, which an isolated worker cannot open,
    is written through the descriptor it got, and logrotate (rename + SIGUSR1) moves
    it to the new file."""
    d = site_dir(tmp_path, "p")
    log_file = tmp_path / "logs" / "access.log"
    h = Hostd(tmp_path, pools={"p": pool(d, "p.localhost", network="private")},
              hostd={"private_network": "198.18.128.0/24", "access_log": str(log_file)})
    h.start()
    try:
        ready_pid(h, "p")
        me = ask(h, "p.localhost", "/whoami")
        assert me["interfaces"] == ["lo", "eth0"], me["interfaces"]
        ifname = next(n for _, n in socket.if_nameindex() if n.endswith("-p") and n.startswith("hd"))
        with socket.socket() as s:
            s.bind(("198.18.128.1", 0))
            s.listen(8)
            r = ask(h, "p.localhost", f"/connect?host=198.18.128.1&port={s.getsockname()[1]}")
            assert r["ok"], r
        with socket.socket() as lo:
            lo.bind(("127.0.0.1", 0))
            lo.listen(8)
            r = ask(h, "p.localhost", f"/connect?host=127.0.0.1&port={lo.getsockname()[1]}")
            assert not r["ok"], r
        h.wait_for(lambda: log_file.exists() and "/whoami" in log_file.read_text(), timeout=5,
                   what="access log line")
        log_file.rename(log_file.with_suffix(".log.1"))
        h.signal(__import__("signal").SIGUSR1)
        h.wait_for(lambda: log_file.exists(), timeout=5, what="a new access log")
        time.sleep(0.2)
        assert h.get("p.localhost", "/after-rotate")[0] == 200
        h.wait_for(lambda: "/after-rotate" in log_file.read_text(), timeout=5,
                   what="the request in the new file")
        assert "/after-rotate" not in log_file.with_suffix(".log.1").read_text()
    finally:
        h.stop()
    assert ifname not in [n for _, n in socket.if_nameindex()]
    assert not (tmp_path / "run" / "netns" / "p").exists()


def test_without_user_namespace_and_read_only(hostd):
    pid = ready_pid(hostd, "c")
    uid = json.loads(hostd.ctl("pool", "identity", "c", "--json").stdout)["uid"]
    assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user")
    me = ask(hostd, "c.localhost", "/whoami")
    assert me["uid"] == uid and int(me["CapEff"], 16) == 0 and int(me["CapBnd"], 16) == 0
    assert me["pids"] == [1]
    d = Path(me["cwd"])
    os.chown(d, uid, uid)          # even its owner cannot write: the view is read-only
    try:
        r = ask(hostd, "c.localhost", f"/write?path={d}/x")
        assert not r["ok"] and r["errno"] == "EROFS", r
    finally:
        os.chown(d, 0, 0)


def test_identity_of_an_existing_account(hostd):
    import pwd
    nobody = pwd.getpwnam("nobody")
    doc = json.loads(hostd.ctl("pool", "identity", "d", "--json").stdout)
    assert (doc["uid"], doc["gid"], doc["identity"], doc["user"]) == \
        (nobody.pw_uid, nobody.pw_gid, "user", "nobody")
    ready_pid(hostd, "d")
    assert ask(hostd, "d.localhost", "/whoami")["uid"] == nobody.pw_uid


def _sockets(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_worker_holds_no_descriptor_but_its_own(hostd):
    a_pid, b_pid = ready_pid(hostd, "a"), ready_pid(hostd, "b")   # (after any restart)
    a, b = _sockets(a_pid), _sockets(b_pid)
    # what two pools' workers share: the reroute channel back to the front ends, no more
    # (each has its own control channel and its own pool's queue)
    assert len(a & b) <= 1, a & b
    # the control socket (listening, in the supervisor) is in no worker
    inode = os.stat(hostd.socket_path).st_ino
    with open("/proc/net/unix") as f:
        listening = {line.split()[6] for line in f if line.rstrip().endswith(hostd.socket_path)}
    assert listening, inode
    for pid in (a_pid, b_pid):
        assert not any(s == f"socket:[{i}]" for s in _sockets(pid) for i in listening)


def test_front_ends_run_without_root(hostd):
    """They parse what any client sends: a uid of their own, no capabilities."""
    doc = hostd.status()
    uid = doc["frontend_uid"]
    store = json.loads((hostd.root / "state" / "identities.json").read_text())
    assert uid == store["uids"]["@frontends"] and uid not in (0, hostd.ids["a"]["uid"],
                                                               hostd.ids["b"]["uid"])
    for fe in doc["frontends"]:
        status = Path(f"/proc/{fe['pid']}/status").read_text()
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status, status
        caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith(("Cap", "NoNew")))
        assert int(caps["CapEff"], 16) == int(caps["CapBnd"], 16) == 0 and caps["NoNewPrivs"] == "1"
    # and they still route, refuse and hand off
    assert hostd.get("a.localhost", "/")[0] == 200
    assert hostd.get("nobody.example", "/")[0] == 404


def test_host_view_is_protected_by_the_uid_alone(hostd):
    """filesystem = "host": no view, but its own uid, user namespace and no capabilities.
    The Python of this host lives under /root (0700): hostd shows just the runtime's
    directories to the pool, so modules import after the uid switch."""
    pid = ready_pid(hostd, "h")
    assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    assert os.readlink(f"/proc/{pid}/ns/pid_for_children") == os.readlink("/proc/self/ns/pid")
    for name in ("decimal", "email.mime.text", "sqlite3"):
        r = ask(hostd, "h.localhost", f"/import?name={name}")
        assert r["ok"], (name, r)
    me = ask(hostd, "h.localhost", "/whoami")
    assert len(me["pids"]) > 3 and int(me["CapEff"], 16) == 0     # the host's /proc
    b_pid = ready_pid(hostd, "b")
    for probe, errnos in ((f"/read?path={hostd.secret}", ("EACCES",)),
                          (f"/list?path={hostd.b_dir}", ("EACCES",)),
                          ("/read?path=/etc/shadow", ("EACCES",)),
                          ("/list?path=/root", ("EACCES",)),
                          (f"/read?path={hostd.pools_dir / 'b.toml'}", ("EACCES",)),
                          (f"/kill?pid={b_pid}", ("EPERM",)),
                          (f"/ptrace?pid={b_pid}", ("EPERM",)),
                          (f"/unix?path={hostd.socket_path}", ("EACCES",)),
                          ("/write?path=/usr/intruder", ("EACCES",)),
                          ("/escape", ("EACCES",))):
        r = ask(hostd, "h.localhost", probe)
        assert not r["ok"] and r["errno"] in errnos, (probe, r)


def _eventfd_counts(pid: int) -> list[int]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventfd]":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("eventfd-count:"):
                out.append(int(line.split()[1], 16))
    return out


def test_max_connections_holds_for_isolated_workers(tmp_path):
    """An isolated worker holds no descriptor of the global connection semaphore (it
    could read it dry and starve every pool): the supervisor gives back the slots of
    the connections it closes. The limit still holds, and slots come back."""
    d = site_dir(tmp_path, "p")
    h = Hostd(tmp_path, pools={"p": {**pool(d, "p.localhost"), "threads": 4}},
              hostd={"max_connections": 20})
    h.start()
    try:
        pid = ready_pid(h, "p")
        # the global semaphore (20 free slots now) is the supervisor's, not the worker's
        assert 20 in _eventfd_counts(h.proc.pid)
        assert 20 not in _eventfd_counts(pid)
        for _ in range(3):
            conns = []
            for _ in range(20):
                c = h.connect()
                c.request("GET", "/", headers={"Host": "p.localhost"})
                r = c.getresponse()
                r.read()
                assert r.status == 200
                conns.append(c)
            assert h.get("p.localhost", "/")[0] == 503          # the 21st
            for c in conns:
                c.close()
            # the worker sees the closes, the supervisor's tick returns the slots
            h.wait_for(lambda: h.get("p.localhost", "/")[0] == 200, timeout=5,
                       what="slots back")
            time.sleep(0.3)
    finally:
        h.stop()


def test_opt_out_runs_root_and_says_so_at_start_reload_and_in_status(tmp_path):
    """[isolation] enabled = false: the explicit opt-out. Its worker is root in hostd's
    namespaces; hostd logs an `unisolated` warning naming the pool at start and at every
    reload, and status says isolated: false. A pool beside it without a table is
    isolated (positive control)."""
    d = site_dir(tmp_path, "site")
    h = Hostd(tmp_path, pools={"r": pool(d, "r.localhost", enabled=False),
                               "i": pool(d, "i.localhost")})
    h.start()
    try:
        r_pid, i_pid = ready_pid(h, "r"), ready_pid(h, "i")
        assert "Uid:\t0\t0\t0\t0" in Path(f"/proc/{r_pid}/status").read_text()
        assert os.readlink(f"/proc/{r_pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        assert ask(h, "r.localhost", "/whoami")["uid"] == 0
        assert "Uid:\t0" not in Path(f"/proc/{i_pid}/status").read_text()

        def warnings():
            return [l for l in h.log().splitlines() if "unisolated" in l and "pool r" in l]
        assert len(warnings()) == 1, h.log()
        assert not any("unisolated" in l and "pool i" in l for l in h.log().splitlines())
        for n in (2, 3):                          # every reload, changed or not
            h.signal(__import__("signal").SIGHUP)
            h.wait_for(lambda: len(warnings()) == n, timeout=10, what=f"warning #{n}")
        r, i = h.pool("r"), h.pool("i")
        assert (r["isolated"], r["isolation"], r["identity"]) == (False, None, None)
        assert r["isolation_reason"] == "[isolation] enabled = false"
        assert i["isolated"] is True and i["identity"]["uid"] != 0
        text = h.ctl("status").stdout
        assert "isolated: false" in text and "r" in text.split("isolated: false")[1], text
        doc = json.loads(h.ctl("pool", "identity", "r", "--json").stdout)
        assert (doc["uid"], doc["identity"], doc["isolated"]) == (0, "hostd", False)
        check = subprocess.run([sys.executable, "-m", "hostd.cli", "--check-config",
                                "--config", str(h.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        lines = check.stdout.splitlines()
        r_at = next(k for k, l in enumerate(lines) if l.strip().startswith("r "))
        i_at = next(k for k, l in enumerate(lines) if l.strip().startswith("i "))
        assert "NOT ISOLATED" in lines[r_at + 1], check.stdout
        assert "isolated: uid/gid " + str(i["identity"]["uid"]) in lines[i_at + 1], check.stdout
        assert "view: site" in lines[i_at + 2], check.stdout
    finally:
        h.stop()


def test_a_parent_of_many_sites_is_hidden_once_and_its_other_entries_stay_visible(tmp_path):
    """Ten sites in one directory beside a README and a shared directory (outside /tmp
    and hostd's own directory): the worker's view hides the parent with one mount, shows
    its own site, the README and the shared directory again, and no other site (a
    thousand sites there made a thousand mounts per worker). Positive controls: the
    host reads the other site's file, the site reads its own."""
    os.makedirs("/srv", exist_ok=True)
    www = Path(tempfile.mkdtemp(prefix="hostd-www-", dir="/srv"))
    try:
        www.chmod(0o755)
        names = [f"s{i}" for i in range(10)]
        pools = {n: {**pool(site_dir(www, n), f"{n}.localhost"), "start_mode": "on_demand"}
                 for n in names}
        (www / "README").write_text("shared notes")
        (www / "README").chmod(0o644)
        (www / "shared").mkdir(mode=0o755)
        (www / "shared" / "logo.txt").write_text("logo")
        (www / "shared" / "logo.txt").chmod(0o644)
        h = Hostd(tmp_path, pools=pools)
        h.start()
        try:
            other = www / "s1" / "intruder_app.py"
            assert other.read_bytes()                                   # the host reads it
            assert ask(h, "s0.localhost", f"/read?path={www / 's0' / 'intruder_app.py'}")["ok"]
            r = ask(h, "s0.localhost", f"/read?path={other}")
            assert not r["ok"] and r["errno"] in ("EACCES", "ENOENT"), r
            assert ask(h, "s0.localhost", f"/read?path={www / 'README'}")["detail"] \
                == repr(b"shared notes")
            assert ask(h, "s0.localhost", f"/list?path={www / 'shared'}")["detail"] \
                == repr(["logo.txt"])
            r = ask(h, "s0.localhost", f"/list?path={www}")      # crossable, not listable
            assert not r["ok"] and r["errno"] == "EACCES", r
            pid = ready_pid(h, "s0")
            points = [line.split()[4] for line in
                      Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
            assert str(www) in points and str(www / "README") in points, points
            assert not any(p == f"{www}/{n}" for n in names[1:] for p in points), points
        finally:
            h.stop()
    finally:
        shutil.rmtree(www, ignore_errors=True)
