"""A tiny HTTP/1.0 server driven by the supervisor's epoll loop: the control socket and the
metrics endpoint share it. Requests are small and answered at once; each connection
carries one request and is closed after the answer.

Subclasses set `self.sock` (a listening, non-blocking socket) and implement
`respond(method, path, body) -> (status, content type, body bytes)`, or return a
`Deferred` resolved with those three later: the connection waits, the loop does not.
One that needs the request's headers implements `respond_headers(method, path, body,
headers)` instead (headers: lower-case name -> value), and may answer with a fourth
element, the extra response headers ({name: value}).
"""
from __future__ import annotations

import socket

MAX_REQUEST = 65536
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error"}


def parse_request(buf: bytearray):
    """Returns (method, path, body, headers) once a whole request is in buf, else
    None; a malformed request line gives ("BAD", "/", b"", {}). headers: lower-case
    name -> value (the last of a repeated name)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    try:
        method, path, _version = head[0].split(" ", 2)
    except ValueError:
        return ("BAD", "/", b"", {})
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return ("BAD", "/", b"", {})
    if len(buf) < end + 4 + length:
        return None
    return method, path, bytes(buf[end + 4:end + 4 + length]), headers


class Deferred:
    """An answer that comes later. `resolve(*value)` once; `then(callback)` calls
    callback(*value) when it is resolved (at once if it already is)."""

    def __init__(self):
        self._value: tuple | None = None
        self._callbacks: list = []

    def resolve(self, *value) -> None:
        if self._value is not None:
            return
        self._value = value
        for cb in self._callbacks:
            cb(*value)
        self._callbacks.clear()

    def then(self, callback) -> None:
        if self._value is not None:
            callback(*self._value)
        else:
            self._callbacks.append(callback)

    def map(self, fn) -> "Deferred":
        """A Deferred resolved with fn(*value) once this one is."""
        out = Deferred()
        self.then(lambda *value: out.resolve(*fn(*value)))
        return out


class LoopHTTPServer:
    sock: socket.socket

    def __init__(self):
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}
        self.waiting: dict[int, socket.socket] = {}   # fd -> connection with a Deferred answer

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def accept(self, watch, unwatch) -> None:
        """Accepts waiting clients; `watch(fd, handler)`/`unwatch(fd)` are the loop's."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self.clients[conn.fileno()] = (conn, bytearray())
            watch(conn.fileno(), lambda ev, fd=conn.fileno(): self._readable(fd, unwatch))

    def _readable(self, fd: int, unwatch) -> None:
        conn, buf = self.clients[fd]
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            buf += data
        request = parse_request(buf) if data else None
        if data and request is None and len(buf) < MAX_REQUEST:
            return   # incomplete
        unwatch(fd)
        del self.clients[fd]
        if request is None and not data:
            conn.close()
            return
        if request is None:
            self._answer(conn, 413, "text/plain", b"request too large\n")
            return
        result = self.respond_headers(*request)
        if isinstance(result, Deferred):
            self.waiting[fd] = conn
            result.then(lambda status, ctype, body, fd=fd: self._answer(
                self.waiting.pop(fd, conn), status, ctype, body))
        else:
            self._answer(conn, *result)

    def respond_headers(self, method: str, path: str, body: bytes, headers: dict):
        """respond, for a subclass that reads the request's headers."""
        return self.respond(method, path, body)

    def _answer(self, conn: socket.socket, status: int, ctype: str, body: bytes,
                extra: dict | None = None) -> None:
        if conn.fileno() < 0:
            return   # closed meanwhile (the server was closed)
        more = "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
        head = (f"HTTP/1.0 {status} {REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{more}"
                f"Connection: close\r\n\r\n").encode()
        try:
            conn.settimeout(2.0)
            conn.sendall(head + body)
        except OSError:
            pass
        conn.close()

    def close_clients(self) -> None:
        for conn, _ in self.clients.values():
            conn.close()
        self.clients.clear()
        for conn in self.waiting.values():
            conn.close()
        self.waiting.clear()
