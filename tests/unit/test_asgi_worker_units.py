"""Unit tests of the ASGI worker's pieces without processes or sockets: starting an app's call
(workers/asgi_http.start_app), response heads (Cycle), the WebSocket handshake key,
and WebSocket limits and protocol errors (workers/asgi_ws.WebSocket over websockets' Protocol).
The connection and worker are stand-ins (the real ones need a pool queue and a loop's
transport): they record what would be written."""
from __future__ import annotations

import asyncio
import contextvars
import struct

import pytest

from workers.asgi_http import Cycle, start_app
from workers.asgi_ws import CLOSED, CLOSING, OPEN, WebSocket, accept_key


class FakeWorker:
    def __init__(self, loop=None):
        self.loop = loop
        self.tls_closing = False
        self.draining = False
        self.ws_max_size = 1000
        self.ws_counts = [0, 0, 0]
        self.counts = [0] * 7
        self.bytes_in = 0
        self.now = 0.0
        self.ws_ping_interval = 0
        self.ws_ping_timeout = 20.0
        self.send_timeout = 60.0
        self.access = None
        self.pool = "t"
        self.running = 0
        self.ended = []

    def request_begun(self, item):
        self.running += 1

    def request_ended(self, item):
        self.running -= 1
        self.ended.append(item)


class FakeConn:
    tls = False
    paused_writing = False
    closed = False
    host_header = "a.test"
    client_addr = "127.0.0.1"

    def __init__(self, worker):
        self.worker = worker
        self.out = []
        self.done = []
        self.last = 0.0

    def write(self, data):
        self.out.append(bytes(data))

    def response_done(self, cycle):
        self.done.append(cycle)

    def close(self):
        self.closed = True

    #: write_eof was called: our side is done, the peer's bytes are still read
    eof = False

    def write_eof(self):
        self.eof = True

    def abort(self):
        self.closed = True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def resume_body(self):
        pass


def scope(version="1.1", method="GET"):
    return {"type": "http", "http_version": version, "method": method, "path": "/",
            "query_string": b"", "headers": []}


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


# --- starting an app's call -------------------------------------------------------------
def test_a_coroutine_that_never_waits_ends_in_its_tasks_first_step():
    loop = asyncio.new_event_loop()
    seen = []

    async def app():
        seen.append("ran")

    start_app(loop, app(), seen.append)
    assert seen == []                     # a Task: it runs on the loop, not in the call
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ["ran", None]          # done inside that same step
    assert not asyncio.all_tasks(loop)
    loop.close()


def test_a_coroutine_that_waits_goes_on_and_done_comes_once_at_its_end():
    loop = asyncio.new_event_loop()
    seen = []

    async def app():
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 42)
        seen.append(await fut)
        await asyncio.sleep(0)
        seen.append("after")

    start_app(loop, app(), seen.append)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert seen == [42, "after", None]
    loop.close()


def test_an_exception_reaches_done_early_or_late():
    loop = asyncio.new_event_loop()
    seen = []

    async def early():
        raise ValueError("early")

    async def late():
        await asyncio.sleep(0.01)
        raise KeyError("late")

    async def main():     # (the worker starts apps from inside its running loop)
        start_app(loop, early(), seen.append)
        start_app(loop, late(), seen.append)
        await asyncio.sleep(0.05)
    loop.run_until_complete(main())
    assert [type(e) for e in seen] == [ValueError, KeyError]
    loop.close()


def test_the_app_runs_inside_its_own_task_from_its_first_line():
    # anyio's task groups (Starlette's StreamingResponse) and asyncio.timeout() need
    # current_task() from the first line; one started from inside another Task (a
    # pipelined request after the previous app's end) gets a Task of its own too
    loop = asyncio.new_event_loop()
    seen = []

    async def app(tag):
        first = asyncio.current_task()
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        seen.append((tag, first is not None and first is asyncio.current_task()
                     and first is not outer[0]))

    outer = [None]

    async def main():
        outer[0] = asyncio.current_task()
        start_app(loop, app("nested"), seen.append)
        await asyncio.sleep(0.02)

    loop.call_soon(start_app, loop, app("top"), seen.append)   # (from a callback, as
    loop.run_until_complete(main())                            # data_received does)
    assert ("top", True) in seen and ("nested", True) in seen
    assert seen.count(None) == 2
    loop.close()


def test_a_timeout_in_the_app_cancels_the_app_not_the_worker():
    loop = asyncio.new_event_loop()
    seen = []

    async def app():
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        except TimeoutError:
            seen.append("timed out")

    loop.call_soon(start_app, loop, app(), seen.append)
    loop.run_until_complete(asyncio.sleep(0.1))
    assert seen == ["timed out", None]
    loop.close()


def test_a_cancelled_app_reports_done_without_an_exception():
    loop = asyncio.new_event_loop()
    seen = []

    async def app():
        loop.call_soon(asyncio.current_task().cancel)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    loop.call_soon(start_app, loop, app(), seen.append)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert seen == ["cancelled", None]
    loop.close()


def test_each_request_gets_its_own_context():
    loop = asyncio.new_event_loop()
    var = contextvars.ContextVar("v", default="unset")
    seen = []

    async def app(n):
        seen.append(var.get())
        var.set(n)
        await asyncio.sleep(0)
        seen.append(var.get())

    async def main():
        start_app(loop, app(1), lambda e: None)
        start_app(loop, app(2), lambda e: None)
        await asyncio.sleep(0.02)
        assert var.get() == "unset"
    loop.run_until_complete(main())
    assert sorted(map(str, seen)) == ["1", "2", "unset", "unset"]
    loop.close()


# --- response heads -------------------------------------------------------------------
def respond(messages, version="1.1", method="GET"):
    w = FakeWorker()
    conn = FakeConn(w)
    cycle = Cycle(conn, scope(version, method), 0, b"/", True, False)
    cycle.complete = True

    async def go():
        for m in messages:
            await cycle.send(m)
    run(go())
    return b"".join(conn.out), cycle


START = {"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]}


def test_a_whole_body_gets_a_content_length():
    out, cycle = respond([START, {"type": "http.response.body", "body": b"hello"}])
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 5" in head and b"x-a: 1" in head
    assert body == b"hello" and cycle.finished and not cycle.close


def test_a_streamed_body_is_chunked_on_1_1_and_close_delimited_on_1_0():
    parts = [START, {"type": "http.response.body", "body": b"ab", "more_body": True},
             {"type": "http.response.body", "body": b"c", "more_body": True},
             {"type": "http.response.body", "body": b""}]
    out, cycle = respond(parts)
    assert b"Transfer-Encoding: chunked" in out
    assert out.endswith(b"\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
    out, cycle = respond(parts, version="1.0")
    assert b"chunked" not in out and b"Connection: close" in out and out.endswith(b"abc")
    assert cycle.close


def test_head_and_204_send_no_body():
    out, _ = respond([START, {"type": "http.response.body", "body": b"hello"}],
                     method="HEAD")
    assert out.endswith(b"\r\n\r\n") and b"Content-Length: 5" in out
    out, _ = respond([{"type": "http.response.start", "status": 204, "headers": []},
                      {"type": "http.response.body", "body": b""}])
    assert b"Content-Length" not in out and out.endswith(b"\r\n\r\n")


def test_a_body_longer_than_its_content_length_is_clipped_and_closes():
    out, cycle = respond([{"type": "http.response.start", "status": 200,
                           "headers": [(b"content-length", b"3")]},
                          {"type": "http.response.body", "body": b"abcdef"}])
    assert out.endswith(b"\r\n\r\nabc") and cycle.close


def test_a_header_with_cr_or_lf_is_refused():
    with pytest.raises(RuntimeError, match="CR or LF"):
        respond([{"type": "http.response.start", "status": 200,
                  "headers": [(b"x", b"a\r\nSet-Cookie: evil")]},
                 {"type": "http.response.body", "body": b""}])


def test_body_before_start_is_an_error():
    with pytest.raises(RuntimeError):
        respond([{"type": "http.response.body", "body": b"x"}])


def test_connection_close_from_the_app_is_kept():
    out, cycle = respond([{"type": "http.response.start", "status": 200,
                           "headers": [(b"connection", b"close")]},
                          {"type": "http.response.body", "body": b"x"}])
    assert out.count(b"Connection: close") == 1 and cycle.close


# --- WebSocket ------------------------------------------------------------------------
def test_accept_key_is_rfc_6455s_example():
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def frame(opcode: int, payload: bytes, masked: bool = True, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_code(data: bytes) -> int:
    """The code of the close frame in data (server frames are unmasked)."""
    i = data.rfind(b"\x88")
    return struct.unpack("!H", data[i + 2:i + 4])[0]


def open_ws(max_size=1000):
    loop = asyncio.new_event_loop()
    w = FakeWorker(loop)
    w.ws_max_size = max_size
    conn = FakeConn(w)
    sc = {"type": "websocket", "path": "/ws", "query_string": b"",
          "headers": [(b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                      (b"sec-websocket-version", b"13"),
                      (b"sec-websocket-protocol", b"chat, superchat")]}
    got = []

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][1]})
        while True:
            m = await receive()
            got.append(m)
            if m["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": m.get("text"),
                        "bytes": m.get("bytes")})
    w.app = app
    ws = WebSocket(conn, sc, 0, b"/ws")
    ws.begin(b"")
    loop.run_until_complete(asyncio.sleep(0.01))     # the app's Task accepts
    return loop, w, conn, ws, got


def test_accept_echo_and_subprotocol():
    loop, w, conn, ws, got = open_ws()
    assert conn.out[0].startswith(b"HTTP/1.1 101 ")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in conn.out[0]
    assert b"Sec-WebSocket-Protocol: superchat" in conn.out[0]
    ws.feed(frame(1, b"hi") + frame(2, b"\x00\x01"))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert got == [{"type": "websocket.receive", "text": "hi"},
                   {"type": "websocket.receive", "bytes": b"\x00\x01"}]
    assert conn.out[1] == b"\x81\x02hi" and conn.out[2] == b"\x82\x02\x00\x01"
    assert w.ws_counts == [1, 4, 1]


def test_a_fragmented_message_arrives_whole():
    loop, w, conn, ws, got = open_ws()
    ws.feed(frame(1, b"ab", fin=False) + frame(0, b"cd"))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert got == [{"type": "websocket.receive", "text": "abcd"}]


def test_a_message_over_the_limit_closes_1009_before_it_is_whole():
    loop, w, conn, ws, got = open_ws(max_size=1000)
    whole = frame(2, b"x" * 5000)
    ws.feed(whole[:1500])                   # not yet whole: refused already
    loop.run_until_complete(asyncio.sleep(0.01))
    assert close_code(conn.out[-1]) == 1009 and ws.state in (CLOSING, CLOSED)
    assert got[-1] == {"type": "websocket.disconnect", "code": 1009, "reason": ""}


def test_an_unmasked_client_frame_closes_1002():
    loop, w, conn, ws, got = open_ws()
    ws.feed(frame(1, b"hi", masked=False))
    loop.run_until_complete(asyncio.sleep(0.01))
    # our side ends (a half-close): the peer's bytes are still read, so no reset can
    # destroy the close frame before it is read; its own end closes the connection
    assert close_code(conn.out[-1]) == 1002 and ws.state == CLOSING
    assert conn.eof and not conn.closed
    assert got[-1]["type"] == "websocket.disconnect" and got[-1]["code"] == 1002
    ws.feed(frame(1, b"more, unread", masked=False))     # dropped, no error
    assert close_code(conn.out[-1]) == 1002 and len([o for o in conn.out if o[:1] == b"\x88"]) == 1
    ws.connection_lost()
    assert ws.state == CLOSED


def test_the_clients_close_code_reaches_the_app_and_is_answered():
    loop, w, conn, ws, got = open_ws()
    ws.feed(frame(8, struct.pack("!H", 4321) + b"bye"))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert got[-1]["code"] == 4321 and close_code(conn.out[-1]) == 4321
    assert got[-1]["reason"] == "bye"             # (ASGI 2.4's websocket.disconnect reason)
    assert w.running == 0 and w.ws_counts[0] == 0


def test_going_away_sends_1001():
    loop, w, conn, ws, got = open_ws()
    ws.going_away()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert close_code(conn.out[-1]) == 1001 and got[-1]["code"] == 1001


def test_a_ping_is_answered_with_its_payload():
    loop, w, conn, ws, got = open_ws()
    ws.feed(frame(9, b"pp"))
    assert conn.out[-1] == b"\x8a\x02pp"


def test_a_bad_version_is_refused_with_400():
    loop = asyncio.new_event_loop()
    w = FakeWorker(loop)
    conn = FakeConn(w)
    ws = WebSocket(conn, {"type": "websocket", "path": "/", "query_string": b"",
                          "headers": [(b"sec-websocket-key", b"x"),
                                      (b"sec-websocket-version", b"8")]}, 0, b"/")
    ws.begin(b"")
    assert conn.out[0].startswith(b"HTTP/1.1 400") and conn.closed


def test_text_that_is_not_utf8_closes_1007():
    loop, w, conn, ws, got = open_ws()
    ws.feed(frame(1, b"\xff\xfe"))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert close_code(conn.out[-1]) == 1007 and got[-1]["code"] == 1007


def test_a_message_in_fragments_over_the_limit_closes_1009():
    loop, w, conn, ws, got = open_ws(max_size=1000)
    ws.feed(frame(2, b"x" * 600, fin=False) + frame(0, b"y" * 600))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert close_code(conn.out[-1]) == 1009 and not [m for m in got if "bytes" in m]


# --- loop saturation (the garden's busy time for an event loop) -------------------------
def test_loop_load_counts_run_and_run_queue_wait_over_the_wall_time():
    from workers.asgi import LoopLoad
    ticks = iter([(0, 0), (100_000_000, 150_000_000), (110_000_000, 150_000_000),
                  (110_000_000, 150_000_000)])
    load = LoopLoad(lambda: next(ticks), 10.0)
    share, wall = load.sample(10.25)      # ran 0.10 s, waited for a CPU 0.15 s
    assert wall == 0.25 and abs(share - 1.0) < 1e-9
    share, _ = load.sample(10.5)          # ran 0.01 s of 0.25 s: mostly idle in its poll
    assert abs(share - 0.04) < 1e-9
    assert load.sample(10.5) is None      # an empty interval says nothing


def test_loop_load_of_a_real_thread_tells_spinning_from_sleeping():
    import time as _t
    from workers.asgi import LoopLoad
    load = LoopLoad.of_this_thread()
    try:
        end = _t.monotonic() + 0.2
        while _t.monotonic() < end:
            pass
        spin, _ = load.sample(_t.monotonic())
        _t.sleep(0.2)
        rest, _ = load.sample(_t.monotonic())
    finally:
        load.close()
    assert spin > 0.8 and rest < 0.3, (spin, rest)
