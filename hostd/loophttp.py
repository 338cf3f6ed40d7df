"""A tiny HTTP/1.0 server driven by the supervisor's epoll loop: the control socket and the
metrics endpoint share it. Requests are small and answered at once; each connection
carries one request and is closed after the answer.

Subclasses set `self.sock` (a listening, non-blocking socket) and implement
`respond(method, path, body) -> (status, content type, body bytes)`.
"""
from __future__ import annotations

import socket

MAX_REQUEST = 65536
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error"}


def parse_request(buf: bytearray):
    """Returns (method, path, body) once a whole request is in buf, else None; a
    malformed request line gives ("BAD", "/", b"")."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1").split("\r\n")
    try:
        method, path, _version = head[0].split(" ", 2)
    except ValueError:
        return ("BAD", "/", b"")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return ("BAD", "/", b"")
    if len(buf) < end + 4 + length:
        return None
    return method, path, bytes(buf[end + 4:end + 4 + length])


class LoopHTTPServer:
    sock: socket.socket

    def __init__(self):
        self.clients: dict[int, tuple[socket.socket, bytearray]] = {}

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
        if request is not None:
            status, ctype, body = self.respond(*request)
        else:
            status, ctype, body = 413, "text/plain", b"request too large\n"
        head = (f"HTTP/1.0 {status} {REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
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
