"""An ASGI worker's WebSocket (workers/asgi.py): the `websocket` scope on a connection
whose request asked to upgrade. The opening handshake (RFC 6455 §4.2) is answered
here; the framing after it -- masking, fragmentation, control frames, the close
handshake, protocol errors -- is the websockets library's sans-I/O Protocol (with its C
unmasking), not ours. (wsproto, tried first, cost 60 us per echoed message here against
15 us for websockets' Protocol: bench/asgi.py's WebSocket figures.)

Limits: a message bigger than websocket_max_size -> close 1009 (checked from the frame
header, so a huge frame is refused before it is whole); a frame the protocol refuses
(e.g. an unmasked client frame) -> close 1002; text that is not UTF-8 -> 1007. The server pings every
[health] websocket_ping_interval; no pong within websocket_ping_timeout -> close 1011.
A client that reads nothing of what we send for send_timeout is cut.
"""
from __future__ import annotations

import base64
import hashlib
import os
import time
import traceback
from collections import deque

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from hostd import log

from .asgi_http import _SERVER, _status_line, start_app
from .h1 import _date

_TEXT, _BINARY, _CONT, _PONG = Opcode.TEXT, Opcode.BINARY, Opcode.CONT, Opcode.PONG
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_monotonic = time.monotonic
#: received messages queued for the app beyond this pause reading
INBOX_HIGH_WATER = 64

# states
CONNECTING, OPEN, CLOSING, CLOSED = "connecting", "open", "closing", "closed"


def accept_key(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class WebSocket:
    """One WebSocket: the ASGI receive/send pair over websockets' sans-I/O Protocol."""

    websocket_kind = True

    def __init__(self, conn, scope, at, url):
        self.conn = conn
        self.worker = conn.worker
        self.scope = scope
        self.at = at
        self.url = url
        self.start = _monotonic()
        self.method = "GET"
        self.host = conn.host_header
        self.client = conn.client_addr
        self.state = CONNECTING
        self.ws = None                 # websockets Protocol, after accept
        self.inbox: deque = deque()
        self.waiter = None
        self.connect_sent = False
        self.trailing = b""
        self.parts: list = []          # a message being received
        self.part_len = 0
        self.part_text = False
        self.messages = 0
        self.close_code = None         # the code of the close we know of
        self.close_reason = ""         # ... and the peer's reason, when it gave one
        self.status = 101
        self.sent = 0
        self.ping_sent_at = 0.0
        self.last_ping = _monotonic()
        self.accepted = False
        self.app_over = False
        self.ended = False

    # for hostctl requests
    @property
    def path(self):
        return self.scope["path"]

    def full_path(self) -> str:
        q = self.scope["query_string"]
        return self.scope["path"] + ("?" + q.decode("latin-1") if q else "")

    # --- start ----------------------------------------------------------------------
    def begin(self, trailing: bytes) -> None:
        """The upgrade request was read (trailing: what came after its head)."""
        headers = self.scope["headers"]
        key = version = None
        subprotocols = []
        for name, value in headers:
            if name == b"sec-websocket-key":
                key = value.strip()
            elif name == b"sec-websocket-version":
                version = value.strip()
            elif name == b"sec-websocket-protocol":
                subprotocols += [p.strip().decode("latin-1") for p in value.split(b",")
                                 if p.strip()]
        if key is None or version != b"13":
            self.conn.write(b"HTTP/1.1 400 Bad Request\r\n" + _date().encode() + _SERVER +
                            b"Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n"
                            b"Connection: close\r\n\r\n")
            self.conn.close()
            return
        self.key = key
        self.scope["subprotocols"] = subprotocols
        self.trailing = trailing
        self.conn.pause_reading()       # nothing is read until the app accepts
        w = self.worker
        w.request_begun(self)
        try:
            coro = w.app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self._app_done(exc)
            return
        start_app(w.loop, coro, self._app_done)

    # --- ASGI -----------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def receive(self) -> dict:
        if not self.connect_sent:
            self.connect_sent = True
            return {"type": "websocket.connect"}
        while True:
            inbox = self.inbox
            if inbox:
                msg = inbox.popleft()
                if len(inbox) < INBOX_HIGH_WATER // 2 and self.state == OPEN:
                    self.conn.resume_reading()
                return msg
            if self.state == CLOSED or self.ended:
                return {"type": "websocket.disconnect", "code": self.close_code or 1006,
                        "reason": self.close_reason}
            self.waiter = self.worker.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: dict) -> None:
        t = message["type"]
        if t == "websocket.send":
            if self.state != OPEN:
                if self.state == CONNECTING:
                    raise RuntimeError("websocket.send before websocket.accept")
                return              # closing or closed: dropped (the app hears disconnect)
            text = message.get("text")
            data = text if text is not None else message.get("bytes") or b""
            self.messages += 1
            self.worker.ws_counts[1] += 1
            # a whole message, serialized by websockets' Frame directly: the Protocol's
            # send_text adds only checks that hold here (OPEN, never a fragmented send
            # of ours in progress, no extension negotiated) and a list to collect
            if text is not None:
                frame = Frame(_TEXT, text.encode("utf-8"))
            else:
                frame = Frame(_BINARY, data)
            self.conn.write(frame.serialize(mask=False))
            if self.conn.paused_writing:
                await self.conn.drained()
        elif t == "websocket.accept":
            if self.state != CONNECTING:
                raise RuntimeError("websocket.accept twice")
            self._accept(message)
        elif t == "websocket.close":
            code = int(message.get("code") or 1000)
            reason = message.get("reason") or ""
            if self.state == CONNECTING:
                self._deny(403, [], b"")
            elif self.state == OPEN:
                self._close(code, reason)
        elif t == "websocket.http.response.start":
            if self.state != CONNECTING:
                raise RuntimeError("websocket.http.response.start after accept")
            self.deny_status = int(message["status"])
            self.deny_headers = list(message.get("headers") or ())
            self.deny_body = []
        elif t == "websocket.http.response.body":
            self.deny_body.append(message.get("body", b""))
            if not message.get("more_body", False):
                self._deny(self.deny_status, self.deny_headers, b"".join(self.deny_body))
        else:
            raise RuntimeError(f"unexpected ASGI message {t!r} for a websocket scope")

    # --- handshake ------------------------------------------------------------------
    def _accept(self, message: dict) -> None:
        w = self.worker
        parts = [b"HTTP/1.1 101 Switching Protocols\r\n", _date().encode(), _SERVER,
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
                 accept_key(self.key), b"\r\n"]
        sub = message.get("subprotocol")
        if sub:
            parts.append(b"Sec-WebSocket-Protocol: " + sub.encode("latin-1") + b"\r\n")
        for name, value in message.get("headers") or ():
            lname = name.lower()
            if lname in (b"sec-websocket-protocol", b"upgrade", b"connection",
                         b"sec-websocket-accept", b"server", b"date"):
                continue
            if b"\n" in value or b"\r" in value:
                raise RuntimeError(f"response header {name!r} holds CR or LF")
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"\r\n")
        self.conn.write(b"".join(parts))
        self.state = OPEN
        self.accepted = True
        self.ws = Protocol(Side.SERVER, max_size=w.ws_max_size)
        w.ws_counts[0] += 1           # open
        w.ws_counts[2] += 1           # upgraded
        self.last_ping = _monotonic()
        self.conn.resume_reading()
        trailing, self.trailing = self.trailing, b""
        if trailing:
            self.feed(trailing)

    def _deny(self, status: int, headers, body: bytes) -> None:
        """Refused before accept: an HTTP response (403 for a plain websocket.close)."""
        parts = [_status_line(status), _date().encode(), _SERVER]
        for name, value in headers:
            if name.lower() in (b"content-length", b"connection"):
                continue
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        parts.append(body)
        self.conn.write(b"".join(parts))
        self.status = status
        self.sent = len(body)
        self.state = CLOSED
        self.close_code = 1000
        self.conn.close()
        self._wake()

    # --- frames in ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Bytes from the client (after accept)."""
        if self.ws is None:
            self.trailing += data
            return
        w = self.worker
        w.bytes_in += len(data)
        ws = self.ws
        ws.receive_data(data)
        for frame in ws.events_received():
            op = frame.opcode
            if op is _TEXT or op is _BINARY:
                if frame.fin:
                    self._message(op is _TEXT, frame.data)
                else:
                    self.part_text = op is _TEXT
                    self.parts = [frame.data]
            elif op is _CONT:
                self.parts.append(frame.data)
                if frame.fin:
                    payload, self.parts = b"".join(self.parts), []
                    self._message(self.part_text, payload)
            elif op is _PONG:
                self.ping_sent_at = 0.0
            # PING: the protocol queued the pong; CLOSE: it answered (below)
        self._flush()
        if ws.close_rcvd is not None or ws.close_sent is not None:
            self._closing()
        self.conn.last = w.now

    def _message(self, text: bool, payload: bytes) -> None:
        """A whole message from the client: into the app's inbox."""
        if self.state != OPEN:
            return
        w = self.worker
        if text:
            try:
                msg = {"type": "websocket.receive", "text": payload.decode("utf-8")}
            except UnicodeDecodeError:
                self.ws.fail(1007, "invalid UTF-8")
                return
        else:
            msg = {"type": "websocket.receive", "bytes": bytes(payload)}
        self.messages += 1
        w.ws_counts[1] += 1
        inbox = self.inbox
        inbox.append(msg)
        if len(inbox) >= INBOX_HIGH_WATER:
            self.conn.pause_reading()
        self._wake()

    def _closing(self) -> None:
        """A close frame went or came (the peer's, or ours for a protocol error: 1002,
        1009, 1007): the app hears websocket.disconnect with the code we know."""
        ws = self.ws
        if self.close_code is None:
            close = ws.close_rcvd if ws.close_rcvd is not None else ws.close_sent
            self.close_code = close.code if close is not None else 1006
            if close is not None and close is ws.close_rcvd:
                self.close_reason = close.reason
        if self.state == OPEN:
            self.state = CLOSING
            self.closing_at = _monotonic()
        self._end()

    # --- frames out -----------------------------------------------------------------
    def _flush(self) -> None:
        """What the protocol has to send; an empty chunk means the end of our side of
        the TCP connection (the close handshake is done, or we failed it: 1002, 1007,
        1009). That is a half-close: what the peer still sends is read and dropped
        until its own end (or the closing timeout of sweep), because closing with its
        bytes unread would reset the connection, and a reset can destroy our close
        frame before the peer reads it (it then sees 1006, not 1009)."""
        conn = self.conn
        for chunk in self.ws.data_to_send():
            if chunk:
                conn.write(chunk)
            else:
                if self.state == OPEN:
                    self.state = CLOSING
                    self.closing_at = _monotonic()
                conn.write_eof()
                conn.resume_reading()

    def _write(self, data: bytes) -> None:
        if data:
            self.conn.write(data)

    def _close(self, code: int, reason: str = "") -> None:
        """Our close frame; the connection ends when the peer answers (or soon)."""
        if self.state != OPEN:
            return
        self.close_code = code
        try:
            self.ws.send_close(code, reason)
        except Exception:
            pass
        self._flush()
        self.state = CLOSING
        self.closing_at = _monotonic()
        self.conn.resume_reading()
        self._end()

    def going_away(self) -> None:
        """The worker drains and time is up: close 1001, the app hears disconnect."""
        if self.state == OPEN:
            self._close(1001, "going away")
        elif self.state == CONNECTING:
            self.state = CLOSED
            self.close_code = 1001
            self._end()
            self.conn.abort()

    def _end(self) -> None:
        """The WebSocket is over for the app: it hears websocket.disconnect."""
        if self.ended:
            return
        self.ended = True
        if self.accepted:
            self.worker.ws_counts[0] -= 1
        self._wake()

    def connection_lost(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            if self.close_code is None:
                self.close_code = 1006
        self._end()

    def sweep(self, now: float) -> None:
        """From the worker's tick: pings, ping timeouts, send timeouts, close waits."""
        w = self.worker
        conn = self.conn
        if conn.paused_writing and now - conn.write_paused_at > w.send_timeout:
            self.close_code = self.close_code or 1006
            conn.abort()
            return
        if self.state == CLOSING:
            if now - self.closing_at > 2.0:
                conn.abort()
            return
        if self.state != OPEN or not w.ws_ping_interval:
            return
        if self.ping_sent_at:
            if now - self.ping_sent_at > w.ws_ping_timeout:
                self._close(1011, "ping timeout")
                conn.abort()
        elif now - self.last_ping >= w.ws_ping_interval:
            self.last_ping = self.ping_sent_at = now
            self.ws.send_ping(os.urandom(4))
            self._flush()

    # --- the app's end --------------------------------------------------------------
    def _app_done(self, exc) -> None:
        w = self.worker
        self.app_over = True
        if exc is not None and not isinstance(exc, (ConnectionError, OSError)):
            log.error("app_error", "".join(traceback.format_exception(exc)), POOL=w.pool)
        if self.state == CONNECTING:
            if exc is not None or not self.conn.closed:
                # returned or failed without accepting: 500 or 403 (as uvicorn)
                self._deny(500 if exc is not None else 403, [], b"")
        elif self.state == OPEN:
            self._close(1011 if exc is not None else 1000)
        self._end()
        w.request_ended(self)
        c = w.counts
        k = self.status // 100
        c[self.at] += 1
        c[self.at + k] += 1
        c[self.at + 6] += self.sent
        if w.access is not None:
            from .asgi_http import _LogEnv
            env = _LogEnv.__new__(_LogEnv)
            dict.__init__(env, REMOTE_ADDR=self.client or "-", REQUEST_METHOD="GET",
                          SERVER_PROTOCOL="HTTP/1.1")
            if self.conn.tls:
                env["HTTPS"] = "on"
            w.access.log(env, self.url, str(self.status), self.sent,
                         int((_monotonic() - self.start) * 1e6))
