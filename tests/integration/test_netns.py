"""kernel/netns.py against the real kernel: real namespaces, veth pairs and sockets, no mocks.

Every test pins its namespaces under its own pytest tmp dir and uses a host interface
name with a random index (4000+) and addresses from 198.18.0.0/15 (RFC 2544, benchmark
testing: never routed), and removes everything in finally blocks, even on failure.
Traffic stays on 127.0.0.0/8 or on the links these tests create.

Code that must run inside a namespace runs in a forked child (setns moves only the
calling thread; the pytest process must stay in the host namespace), bounded by a timeout.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import time
import traceback

import pytest

from kernel import netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0,
                       reason="needs root: creating network namespaces and veth pairs "
                              "needs CAP_SYS_ADMIN and CAP_NET_ADMIN"),
]

TEST_NET = ipaddress.IPv4Network("198.18.0.0/15")
CHILD_TIMEOUT = 10.0


# --------------------------------------------------------------------------- helpers

def run_in(path, fn, timeout: float = CHILD_TIMEOUT):
    """Run fn() in a forked child that entered the namespace at `path`; its JSON result.

    The child reports {"ok": value} or {"error": traceback}; a child that does not answer
    within `timeout` is killed and the test fails.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            netns.enter(path)
            out = {"ok": fn()}
        except BaseException:  # noqa: BLE001 - report anything, then _exit
            out = {"error": traceback.format_exc()}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"child in {path} gave no answer within {timeout}s")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    out = json.loads(data or b'{"error": "child died without a report"}')
    if "error" in out:
        pytest.fail(f"child in {path} failed:\n{out['error']}")
    return out["ok"]


def connect_result(addr: str, port: int) -> str:
    """'ok' when a TCP connect succeeds, else the exception's class name."""
    try:
        with socket.create_connection((addr, port), timeout=3):
            return "ok"
    except OSError as e:
        return type(e).__name__


def lo_is_up() -> bool:
    ifreq = struct.Struct("16sH22x")  # struct ifreq with ifr_flags
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        reply = fcntl.ioctl(s.fileno(), netns.SIOCGIFFLAGS, ifreq.pack(b"lo", 0))
        return bool(ifreq.unpack(reply)[1] & netns.IFF_UP)


def host_ifnames() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def listener(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 0))
    s.listen(8)
    return s


@pytest.fixture
def pin(tmp_path):
    """A namespace pin path under tmp; destroyed afterwards whatever happened."""
    path = tmp_path / "run" / "netns" / "pool"
    try:
        netns.create(path)
    except PermissionError as e:
        pytest.skip(f"network namespaces not permitted here: {e}")
    try:
        yield path
    finally:
        netns.destroy(path)


@pytest.fixture
def link():
    """(host_ifname, host_addr, ns_addr, prefixlen) unlikely to collide; removed afterwards."""
    index = 4000 + random.randrange(4000)
    host_addr, ns_addr, prefixlen = netns.subnet(TEST_NET, index)
    name = netns.ifname("nstest", index)
    if name in host_ifnames():
        pytest.skip(f"{name} already exists on this host")
    with socket.socket() as probe:  # the /30 must not already be ours
        with pytest.raises(OSError) as ei:
            probe.bind((str(host_addr), 0))
        assert ei.value.errno == errno.EADDRNOTAVAIL
    try:
        yield name, str(host_addr), str(ns_addr), prefixlen
    finally:
        netns.remove_link(name)


# --------------------------------------------------------------------------- tests

def test_new_namespace_has_only_loopback_up_and_no_route_to_the_host(pin):
    assert netns.is_netns(pin)
    assert oct(os.stat(pin.parent).st_mode & 0o777) == oct(0o700)
    with listener("127.0.0.1") as srv:
        port = srv.getsockname()[1]
        assert connect_result("127.0.0.1", port) == "ok"

        inside = run_in(pin, lambda: {
            "ifnames": sorted(name for _, name in socket.if_nameindex()),
            "lo_up": lo_is_up(),
            "connect": connect_result("127.0.0.1", port),
            "ino": os.stat("/proc/self/ns/net").st_ino,
        })
    assert inside["ifnames"] == ["lo"]
    assert inside["lo_up"] is True
    # lo is up (127.0.0.1 exists) but it is a different lo: nothing listens there
    assert inside["connect"] == "ConnectionRefusedError"
    assert inside["ino"] == os.stat(pin).st_ino
    assert inside["ino"] != os.stat("/proc/self/ns/net").st_ino


def test_private_link_reaches_the_host_side_only(pin, link):
    name, host_addr, ns_addr, prefixlen = link
    netns.private_link(pin, name, host_addr, ns_addr, prefixlen)
    netns.private_link(pin, name, host_addr, ns_addr, prefixlen)  # idempotent
    assert name in host_ifnames()

    with listener(host_addr) as srv, listener("127.0.0.1") as lo_srv:
        port = srv.getsockname()[1]
        lo_port = lo_srv.getsockname()[1]

        def probe():
            return {
                "ifnames": sorted(n for _, n in socket.if_nameindex()),
                "to_host": connect_result(host_addr, port),
                "host_loopback": connect_result("127.0.0.1", lo_port),
                "source": _source_addr(host_addr, port),
            }

        srv.settimeout(CHILD_TIMEOUT)
        inside = run_in(pin, probe)
        assert inside["ifnames"] == ["eth0", "lo"]
        assert inside["to_host"] == "ok"
        assert inside["source"] == ns_addr
        assert inside["host_loopback"] == "ConnectionRefusedError"
        conn, peer = srv.accept()  # the connect was queued on the host listener
        conn.close()
        assert peer[0] == ns_addr

    netns.remove_link(name)
    assert name not in host_ifnames()
    netns.remove_link(name)  # absent: no error
    inside = run_in(pin, lambda: sorted(n for _, n in socket.if_nameindex()))
    assert inside == ["lo"]  # deleting the host end took the peer with it

    netns.destroy(pin)
    assert not os.path.lexists(pin)
    assert name not in host_ifnames()


def _source_addr(addr: str, port: int) -> str:
    with socket.create_connection((addr, port), timeout=3) as s:
        return s.getsockname()[0]


def test_create_and_destroy_are_idempotent(tmp_path):
    path = tmp_path / "netns" / "again"
    netns.destroy(path)  # never existed: no error
    try:
        netns.create(path)
        ino = os.stat(path).st_ino
        netns.create(path)  # reused, not re-made or stacked
        assert os.stat(path).st_ino == ino
        netns.destroy(path)
        assert not os.path.lexists(path)
        # a plain file left by a crash between "touch" and mount is reused
        path.write_bytes(b"")
        netns.create(path)
        assert netns.is_netns(path)
    finally:
        netns.destroy(path)
        netns.destroy(path)
    assert not os.path.lexists(path)
    assert os.listdir(path.parent) == []


def test_errors_name_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        netns.create(blocker / "ns")  # parent is a file

    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    with pytest.raises(OSError) as ei:
        netns.enter(plain)  # setns() refuses a file that is no namespace: we stay put
    assert ei.value.errno == errno.EINVAL
    assert ei.value.filename == str(plain)
    with pytest.raises(FileNotFoundError):
        netns.enter(tmp_path / "missing")

    with pytest.raises(FileNotFoundError) as ei:
        netns.private_link(plain, "hd4000-x", "198.18.0.1", "198.18.0.2", 30)
    assert str(plain) in str(ei.value)
