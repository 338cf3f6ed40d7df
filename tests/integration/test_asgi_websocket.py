"""Issue 15 acceptance, WebSocket side: Starlette's WebSockets under a real hostd.

The app (tests/apps/asgi_starlette.py) runs from the tests' own framework venv
(tests/frameworks.py); the client is the `websockets` library's asyncio client (hostd's
own dependency), plus raw sockets with hand-built frames: where a client must misbehave,
and for an echo that does not go through that library's frame parser at all (the worker
frames with the same library's sans-I/O Protocol).
One hostd (plain and TLS listener, /metrics) serves the module:

* st: the echo app, websocket_max_size = 64K, a [tls] certificate of the test CA (wss://);
* rc: the same app, one worker, shutdown_limit = 6 s, for the recycle with 50 open sockets;
* idle: one worker, max_concurrency 1500, for 1,000 idle WebSockets beside HTTP requests;
* pg: websocket_ping_interval = ping_timeout = 1 s, for a peer that never answers pings.

All pools run unisolated (root_workers) so the app's pid is the host's pid and its marker
files (close codes as the app saw them, lifespan) land in the test's directory.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import resource
import socket
import ssl
import struct
import time
import urllib.request

import pytest

from frameworks import frameworks, wslib  # noqa: F401  (session fixtures)
from hostd_harness import APPS, Hostd, free_port
from tlscerts import CA

pytestmark = pytest.mark.root

SHUTDOWN_LIMIT = 6.0
MAX_SIZE = 64 << 10
IDLE_SOCKETS = 1000


def ws_pool(bindings, venv, markers, **kw):
    doc = {"app": "asgi_starlette:app", "directory": str(APPS), "bindings": bindings,
           "interface": "asgi", "virtualenv": str(venv), "env": {"ASGI_MARKERS": str(markers)}}
    doc.update(kw)
    return doc


@pytest.fixture(scope="module")
def h(frameworks, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("asgiws")
    markers = root / "markers"
    markers.mkdir()
    # 1,000 sockets here and as many in hostd's worker: hostd inherits this limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if want < 2 * IDLE_SOCKETS + 500:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for {IDLE_SOCKETS} sockets")
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    ca = CA(root)
    leaf = ca.issue("st.test")
    tls_port, metrics_port = free_port(), free_port()
    venv = frameworks.venv
    pools = {
        "st": ws_pool(["st.test"], venv, markers, websocket_max_size="64K",
                      tls={"certificate": str(leaf.cert), "key": str(leaf.key)}),
        "rc": ws_pool(["rc.test"], venv, markers, processes=1,
                      health={"shutdown_limit": f"{SHUTDOWN_LIMIT:g}s"}),
        "idle": ws_pool(["idle.test"], venv, markers, processes=1, max_concurrency=1500),
        "pg": ws_pool(["pg.test"], venv, markers,
                      health={"websocket_ping_interval": "1s", "websocket_ping_timeout": "1s"}),
    }
    hd = Hostd(root, pools, root_workers=True,
               hostd={"listen_tls": [f"127.0.0.1:{tls_port}"],
                      "metrics_listen": f"127.0.0.1:{metrics_port}", "header_timeout": 5})
    hd.markers, hd.ca, hd.tls_port, hd.metrics_port = markers, ca, tls_port, metrics_port
    hd.start()
    yield hd
    hd.stop()


# --- helpers -------------------------------------------------------------------------------------
def connect(wslib, h: Hostd, host: str, path: str = "/ws/echo", **kw):
    """A websockets client connection to hostd's plain port with this Host."""
    opts = dict(host="127.0.0.1", port=h.port, proxy=None, open_timeout=10, close_timeout=5,
                ping_interval=None, compression=None, max_size=None)
    opts.update(kw)
    if opts.get("ssl"):     # wss://NAME:PORT: the name for Host and SNI, 127.0.0.1 dialled
        return wslib.asyncio.client.connect(f"wss://{host}:{opts['port']}{path}", **opts)
    return wslib.asyncio.client.connect(f"ws://{host}{path}", **opts)


def run(coro, timeout: float = 60.0):
    """Runs a scenario with a hard bound on its time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def marker(h: Hostd, name: str, timeout: float = 10.0) -> dict:
    path = h.markers / name
    h.wait_for(path.is_file, timeout=timeout, what=f"marker {name}")
    return json.loads(path.read_text())


def ready_pids(h: Hostd, name: str) -> set[int]:
    return {w["pid"] for w in h.pool(name)["workers"] if w["state"] == "ready"}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def closed_code(exc) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


def tag() -> str:
    return f"t{os.getpid()}-{time.monotonic_ns()}"


# --- raw frames, for clients that misbehave -------------------------------------------------------
def raw_handshake(h: Hostd, host: str, path: str = "/ws/echo", timeout: float = 10.0):
    s = socket.create_connection(("127.0.0.1", h.port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
              f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return s, rest


def frame(opcode: int, payload: bytes, mask: bool = True, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def read_frames(s: socket.socket, buf: bytes, until_close: bool = True, timeout: float = 10.0,
                count: int = 0):
    """Server frames [(opcode, payload)] until a close frame, `count` frames, EOF or
    timeout."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = struct.unpack("!Q", buf[2:10])[0], 10
            assert not b1 & 0x80, "a server frame must not be masked"
            if len(buf) < off + n:
                break
            out.append((b0 & 0x0F, buf[off:off + n]))
            buf = buf[off + n:]
            if out[-1][0] == 0x8 and until_close or count and len(out) >= count:
                return out
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return out
        if not chunk:
            return out
        buf += chunk


def close_code_of(frames) -> int | None:
    for op, payload in frames:
        if op == 0x8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    return None


# --- echo, close codes, subprotocols --------------------------------------------------------------
def test_echo_1000_text_and_binary_messages_subprotocol_and_client_close_code(h, wslib):
    t = tag()
    rnd = random.Random(15)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 éß✓中🙂"
    text = "".join(rnd.choice(alphabet) for _ in range(30000))

    async def scenario():
        # as a browser would: offers permessage-deflate too (the server may decline it)
        async with connect(wslib, h, "st.test", f"/ws/echo?tag={t}",
                           subprotocols=["chat.v1", "chat.v2"], compression="deflate") as ws:
            assert ws.subprotocol == "chat.v2"
            assert ws.response.headers.get("x-app") == "asgi-starlette"
            for i in range(1000):
                n = rnd.choice([0, 1, 125, 126, 127, 1000, 65535 // 4, 40000])
                if i % 2:
                    msg = rnd.randbytes(n)
                else:
                    off = rnd.randrange(15000)   # <= 12,000 chars: < 64 KiB of UTF-8
                    msg = text[off:off + min(n, 12000)]
                await ws.send(msg)
                got = await asyncio.wait_for(ws.recv(), 10)
                assert type(got) is type(msg) and got == msg, (i, len(msg))
            await ws.send("count")
            assert await asyncio.wait_for(ws.recv(), 10) == "1001"
            await ws.close(code=4000, reason="client-bye")
            assert ws.close_code == 4000        # the server echoed the close code
    run(scenario())
    doc = marker(h, f"close-{t}.json")
    assert doc["code"] == 4000 and doc["by"] == "client" and doc["messages"] == 1001, doc
    # the disconnect event's "reason" is optional in the ASGI spec: right when given
    assert doc["reason"] in (None, "", "client-bye"), doc
    assert doc["pid"] in ready_pids(h, "st")


def test_app_close_code_reaches_the_client(h, wslib):
    t = tag()

    async def scenario():
        async with connect(wslib, h, "st.test", f"/ws/echo?tag={t}") as ws:
            assert ws.subprotocol is None             # none offered: none chosen
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send("close:4321")
            with pytest.raises(wslib.exceptions.ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
            return info.value
    exc = run(scenario())
    assert closed_code(exc) == 4321 and exc.rcvd.reason == "server-bye", exc
    assert marker(h, f"close-{t}.json")["by"] == "app"


def test_app_that_closes_before_accept_denies_the_handshake(h, wslib):
    async def scenario():
        with pytest.raises(wslib.exceptions.InvalidStatus) as info:
            async with connect(wslib, h, "st.test", "/ws/deny"):
                pass
        return info.value.response.status_code
    assert run(scenario()) == 403


def test_wss_through_the_tls_listener(h, wslib):
    ctx = ssl.create_default_context(cafile=str(h.ca.cert))

    async def scenario():
        async with connect(wslib, h, "st.test", port=h.tls_port, ssl=ctx,
                           subprotocols=["chat.v2"]) as ws:
            assert ws.request.headers["Host"] == f"st.test:{h.tls_port}"
            assert ws.subprotocol == "chat.v2"
            for i in range(100):
                msg = os.urandom(i * 97) if i % 2 else f"secure {i}" * (i + 1)
                await ws.send(msg)
                assert await asyncio.wait_for(ws.recv(), 10) == msg
            await ws.send("pid")
            pid = int(await ws.recv())
            cipher = ws.transport.get_extra_info("ssl_object").version()
            await ws.close(code=1000)
            return pid, cipher
    pid, version = run(scenario())
    assert pid in ready_pids(h, "st") and version in ("TLSv1.2", "TLSv1.3")
    h.wait_for(lambda: h.pool("st")["tls"]["counters"]["handshakes"] >= 1, timeout=5,
               what="the TLS handshake counted")     # workers flush counters each second


def scrape(h: Hostd) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{h.metrics_port}/metrics",
                                  timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_requests_and_metrics_show_an_open_websocket(h, wslib):
    def ws_entries():
        doc = json.loads(h.ctl("requests", "st", "--json").stdout)
        return [r for r in doc["requests"] if r.get("websocket")]

    async def scenario():
        async with connect(wslib, h, "st.test", "/ws/echo?tag=observed") as ws:
            for i in range(5):
                await ws.send(f"m{i}")
                await ws.recv()
            entries = await asyncio.to_thread(
                h.wait_for, ws_entries, timeout=10, what="a websocket in hostctl requests")
            gauge = await asyncio.to_thread(
                h.wait_for, lambda: scrape(h).get('hostd_websockets_open{pool="st"}') == 1,
                timeout=10, what="hostd_websockets_open{pool=st} == 1")
            table = (await asyncio.to_thread(h.ctl, "requests", "st")).stdout
            await ws.close()
            return entries, gauge, table
    entries, _, table = run(scenario())
    assert len(entries) == 1, entries
    (e,) = entries
    assert e["path"].startswith("/ws/echo") and e["pool"] == "st" and e["messages"] >= 5, e
    assert "/ws/echo" in table
    h.wait_for(lambda: not ws_entries(), timeout=10, what="websocket gone from requests")
    h.wait_for(lambda: scrape(h).get('hostd_websockets_open{pool="st"}') == 0, timeout=10,
               what="hostd_websockets_open back to 0")
    m = scrape(h)
    assert m.get('hostd_websocket_upgrades_total{pool="st"}', 0) >= 1
    assert m.get('hostd_websocket_messages_total{pool="st"}', 0) >= 5


# --- recycle with 50 open WebSockets ---------------------------------------------------------------
def test_recycle_with_50_open_websockets(h, wslib):
    h.get("rc.test", "/pid")
    (old,) = h.wait_for(lambda: ready_pids(h, "rc"), timeout=20, what="rc ready")

    async def scenario():
        tags = [f"rc{i}-{tag()}" for i in range(50)]
        socks = []
        for t in tags:
            ws = await connect(wslib, h, "rc.test", f"/ws/echo?tag={t}")
            await ws.send("pid")
            assert int(await asyncio.wait_for(ws.recv(), 10)) == old
            socks.append(ws)
        t_cmd = time.monotonic()
        r = await asyncio.to_thread(h.ctl, "pool", "recycle", "rc")
        assert r.returncode == 0, r

        def draining():
            return any(w["pid"] == old and w["state"] == "draining" for w in h.pool("rc")["workers"])
        await asyncio.to_thread(h.wait_for, draining, 20, 0.02, "old worker draining")
        t_drain = time.monotonic()
        (new,) = await asyncio.to_thread(h.wait_for, lambda: ready_pids(h, "rc") - {old}, 20,
                                         0.05, "replacement ready")
        # new connections reach the new worker
        fresh = []
        for i in range(5):
            ws = await connect(wslib, h, "rc.test", "/ws/echo")
            await ws.send("pid")
            assert int(await asyncio.wait_for(ws.recv(), 10)) == new
            fresh.append(ws)
        results: dict[int, tuple] = {}

        async def keep_talking(i, ws, close_at=None):
            while True:
                if close_at is not None and time.monotonic() >= close_at:
                    await ws.close(code=1000, reason="done")
                    results[i] = ("client-closed", time.monotonic() - t_drain, ws.close_code)
                    return
                try:
                    await ws.send("pid")
                    got = int(await asyncio.wait_for(ws.recv(), 5))
                except wslib.exceptions.ConnectionClosed as exc:
                    results[i] = ("server-closed", time.monotonic() - t_drain, closed_code(exc))
                    return
                except asyncio.TimeoutError:
                    results[i] = ("no answer", time.monotonic() - t_drain, None)
                    return
                if got != old:
                    results[i] = ("wrong worker", got, None)
                    return
                await asyncio.sleep(0.2)
        tasks = [asyncio.create_task(keep_talking(i, ws, t_drain + 2.0 if i < 10 else None))
                 for i, ws in enumerate(socks)]
        await asyncio.wait_for(asyncio.gather(*tasks), SHUTDOWN_LIMIT + 10)
        for ws in fresh:                       # the replacement's sockets: untouched
            await ws.send("pid")
            assert int(await asyncio.wait_for(ws.recv(), 10)) == new
            await ws.close()
        return tags, results, t_drain - t_cmd, new
    tags, results, drain_after, new = run(scenario(), timeout=90)
    if os.environ.get("ASGI_TEST_DEBUG"):
        print("drain began", drain_after, "s after the command;", sorted(results.items()))
    client_closed = [results[i] for i in range(10)]
    rest = [results[i] for i in range(10, 50)]
    assert all(r[0] == "client-closed" and r[2] == 1000 for r in client_closed), client_closed
    for i in range(10):                        # the app saw each client's close, in the old worker
        doc = marker(h, f"close-{tags[i]}.json")
        assert doc["code"] == 1000 and doc["pid"] == old, doc
    kinds = {r[0] for r in rest}
    assert kinds == {"server-closed"}, rest
    codes = {r[2] for r in rest}
    assert codes == {1001}, rest
    first_cut = min(r[1] for r in rest)
    last_cut = max(r[1] for r in rest)
    # none cut before shutdown_limit: the worker closes them a little before it, so that
    # the close handshake, lifespan shutdown and its exit fit (workers/asgi.py
    # WS_CLOSE_BEFORE, 0.6 s), and t_drain is when status showed the drain (seen here
    # 5.1 s before the cut); a worker cutting them at the drain, or TLS-style at
    # shutdown_limit - 5 s, is far below this bound
    assert first_cut >= SHUTDOWN_LIMIT - 1.5, (first_cut, rest)
    assert last_cut <= SHUTDOWN_LIMIT + 1.0, (last_cut, rest)
    h.wait_for(lambda: not alive(old), timeout=5, what="old worker exited")
    down = marker(h, f"shutdown-{old}")            # lifespan shutdown ran after the drain
    assert down["pid"] == old
    log = [ln for ln in h.log().splitlines() if re.search(r"\bPOOL=rc\b", ln)]
    assert not [ln for ln in log if "did not exit within shutdown_limit" in ln], log
    assert [ln for ln in log if "STATE=exited" in ln and "exit 0" in ln], log   # drained, not killed


def test_hand_built_frames_fragments_ping_and_close_handshake(h):
    """Framing checked without the websockets library on the client side."""
    s, rest = raw_handshake(h, "st.test")
    try:
        text = "fragmented é✓ " * 300
        data = text.encode()
        s.sendall(frame(0x1, data[:1000], fin=False) + frame(0x0, data[1000:2000], fin=False)
                  + frame(0x9, b"are you there")          # a ping between the fragments
                  + frame(0x0, data[2000:]))
        blob = os.urandom(60000)                           # a 16-bit extended length
        s.sendall(frame(0x2, blob) + frame(0x2, b"") + frame(0x1, b"pid"))
        frames = read_frames(s, rest, until_close=False, timeout=10, count=5)
        assert [op for op, _ in frames] == [0xA, 0x1, 0x2, 0x2, 0x1], [op for op, _ in frames]
        assert frames[0][1] == b"are you there"           # the pong carries the ping's data
        assert frames[1][1].decode() == text and frames[2][1] == blob and frames[3][1] == b""
        assert int(frames[4][1]) in ready_pids(h, "st")
        s.sendall(frame(0x8, struct.pack("!H", 4011) + b"raw-bye"))
        frames = read_frames(s, b"", timeout=10)
        assert close_code_of(frames) == 4011, frames      # the close handshake echoes it
        s.settimeout(5)
        assert s.recv(100) == b""
    finally:
        s.close()


# --- hostile clients ---------------------------------------------------------------------------------
def test_message_over_websocket_max_size_is_closed_1009(h, wslib):
    async def one(payload):
        async with connect(wslib, h, "st.test") as ws:
            await ws.send(payload)
            try:
                got = await asyncio.wait_for(ws.recv(), 10)
            except wslib.exceptions.ConnectionClosed as exc:
                return "closed", closed_code(exc)
            return "echoed", len(got)

    async def fragmented(sizes):
        async with connect(wslib, h, "st.test") as ws:
            await ws.send([os.urandom(n) for n in sizes])     # one message, many frames
            try:
                got = await asyncio.wait_for(ws.recv(), 10)
            except wslib.exceptions.ConnectionClosed as exc:
                return "closed", closed_code(exc)
            return "echoed", len(got)

    assert run(one(os.urandom(MAX_SIZE))) == ("echoed", MAX_SIZE)
    assert run(one(os.urandom(MAX_SIZE + 1))) == ("closed", 1009)
    assert run(one("x" * (4 * MAX_SIZE))) == ("closed", 1009)
    assert run(fragmented([16 << 10] * 3)) == ("echoed", 48 << 10)
    assert run(fragmented([16 << 10] * 6)) == ("closed", 1009)


def test_unmasked_client_frame_is_closed_1002(h):
    s, rest = raw_handshake(h, "st.test")
    try:
        s.sendall(frame(0x1, b"masked ok"))
        frames = read_frames(s, rest, until_close=False, timeout=5, count=1)
        assert (0x1, b"masked ok") in frames, frames
        s.sendall(frame(0x1, b"not masked", mask=False))
        frames = read_frames(s, b"", timeout=10)
        assert close_code_of(frames) == 1002, frames
        s.settimeout(5)
        try:
            tail = s.recv(100)
        except ConnectionResetError:
            tail = b""
        assert tail == b""                            # and the connection is closed
    finally:
        s.close()


def test_unanswered_server_pings_close_the_websocket(h, wslib):
    s, rest = raw_handshake(h, "pg.test")
    try:
        t0 = time.monotonic()
        frames = read_frames(s, rest, timeout=10)     # never answers a ping
        took = time.monotonic() - t0
        assert any(op == 0x9 for op, _ in frames), frames
        assert close_code_of(frames) == 1011, frames
        assert took <= 1.0 + 1.0 + 1.5, took
    finally:
        s.close()

    async def answering():                            # the library answers pings: kept
        async with connect(wslib, h, "pg.test") as ws:
            await asyncio.sleep(3.5)
            await ws.send("still here")
            return await asyncio.wait_for(ws.recv(), 5)
    assert run(answering()) == "still here"


def test_1000_idle_websockets_do_not_starve_http_on_the_same_worker(h, wslib):
    async def scenario():
        sem = asyncio.Semaphore(50)

        async def open_one():
            async with sem:
                ws = await connect(wslib, h, "idle.test", open_timeout=30)
                await ws.send("pid")
                return ws, int(await asyncio.wait_for(ws.recv(), 20))
        opened = await asyncio.gather(*(open_one() for _ in range(IDLE_SOCKETS)))
        pids = {p for _, p in opened}
        assert len(pids) == 1, pids                    # one worker holds them all

        def http_checks():
            lat, statuses = [], []
            for i in range(60):
                t = time.monotonic()
                status, _, body = h.get("idle.test", "/pid", timeout=10)
                lat.append(time.monotonic() - t)
                statuses.append((status, body))
            return lat, statuses
        lat, statuses = await asyncio.to_thread(http_checks)
        # all still open and answering afterwards
        sample = [ws for ws, _ in opened[::50]]
        for ws in sample:
            await ws.send("ping?")
            assert await asyncio.wait_for(ws.recv(), 10) == "ping?"
        pool = await asyncio.to_thread(
            h.wait_for, lambda: (lambda p: p if p.get("websockets_open", 0) >= IDLE_SOCKETS
                                 else None)(h.pool("idle")), 10, 0.2, "websockets_open >= 1000")
        await asyncio.gather(*(ws.close() for ws, _ in opened))
        return pids.pop(), lat, statuses, pool
    pid, lat, statuses, pool = run(scenario(), timeout=180)
    assert {s for s, _ in statuses} == {200}, statuses[:5]
    assert {int(b) for _, b in statuses} == {pid}         # the same worker answered
    lat.sort()
    assert lat[len(lat) // 2] < 0.1 and lat[-1] < 1.0, lat
    (w,) = [w for w in pool["workers"] if w["pid"] == pid]
    assert w["websockets"]["open"] >= IDLE_SOCKETS, w
    assert pool["interface"] == "asgi"
