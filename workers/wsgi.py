"""The PEP 3333 objects a worker hands to the application: wsgi.input, wsgi.errors,
wsgi.file_wrapper, and the response header checks.

wsgi.input streams: the body is read from the client socket as the application asks
for it (see `Connection.fill_body`), never past the end of the current message.
"""
from __future__ import annotations

import re
import threading

from hostd import log


class ClientDisconnected(OSError):
    """The client went away (or stopped sending) while the request was in progress."""


class BadRequestBody(OSError):
    """The request body could not be parsed (bad chunked framing, ...)."""


class Input:
    """wsgi.input for a request with a body. Reads never go past the end of the message."""

    __slots__ = ("_conn", "_req")

    def __init__(self, conn, req):
        self._conn = conn
        self._req = req

    def _more(self) -> bool:
        """Pulls more body from the socket into the request's buffer.
        Returns False when the body is complete (nothing more will come)."""
        req = self._req
        if req.complete:
            return False
        self._conn.fill_body(req)
        return True

    def read(self, size=-1) -> bytes:
        req = self._req
        buf = req.buf
        if size is None or size < 0:
            while self._more():
                pass
            if not req.buf:
                return b""
            data = bytes(req.buf)
            req.buf.clear()
            return data
        while (buf is None or len(buf) < size) and self._more():
            buf = req.buf
        if not buf:
            return b""
        data = bytes(buf[:size])
        del buf[:size]
        return data

    def readline(self, size=-1) -> bytes:
        req = self._req
        if size is None:
            size = -1
        scanned = 0
        while True:
            buf = req.buf
            if buf:
                nl = buf.find(b"\n", scanned)
                if nl >= 0:
                    end = nl + 1
                    if 0 <= size < end:
                        end = size
                    break
                if 0 <= size <= len(buf):
                    end = size
                    break
                scanned = len(buf)
            if not self._more():
                end = len(req.buf) if req.buf else 0
                if 0 <= size < end:
                    end = size
                break
        if not end:
            return b""
        buf = req.buf
        data = bytes(buf[:end])
        del buf[:end]
        return data

    def readlines(self, hint=-1) -> list:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class _EmptyInput:
    """wsgi.input of a request without a body (stateless, so one instance serves all)."""

    __slots__ = ()

    def read(self, size=-1) -> bytes:
        return b""

    def readline(self, size=-1) -> bytes:
        return b""

    def readlines(self, hint=-1) -> list:
        return []

    def __iter__(self):
        return iter(())


EMPTY_INPUT = _EmptyInput()


class ErrorStream:
    """wsgi.errors: text written by the application, sent to the log one line at a time.
    Never raises."""

    def __init__(self, pool: str):
        self._pool = pool
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, s) -> int:
        try:
            if not isinstance(s, str):
                s = s.decode("utf-8", "replace") if isinstance(s, (bytes, bytearray)) \
                    else str(s)
            with self._lock:
                self._buf += s
                if "\n" not in self._buf:
                    if len(self._buf) > 65536:
                        lines, self._buf = [self._buf], ""
                    else:
                        return len(s)
                else:
                    *lines, self._buf = self._buf.split("\n")
            for line in lines:
                log.warning("app_stderr", line, POOL=self._pool)
            return len(s)
        except Exception:
            return 0

    def writelines(self, seq) -> None:
        for s in seq:
            self.write(s)

    def flush(self) -> None:
        try:
            with self._lock:
                line, self._buf = self._buf, ""
            if line:
                log.warning("app_stderr", line, POOL=self._pool)
        except Exception:
            pass


class FileWrapper:
    """wsgi.file_wrapper. Returned as the response iterable, a wrapper around a regular
    file with a real fileno() is sent with sendfile(2); anything else is read in
    `blksize` blocks."""

    __slots__ = ("filelike", "blksize", "close")

    def __init__(self, filelike, blksize: int = 65536):
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        self.close = close if close is not None else _noop

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def _noop():
    pass


# --- response header checks ----------------------------------------------------------

class HeaderError(ValueError):
    """The application's status or headers cannot be sent."""


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_STATUS = re.compile(r"([1-9][0-9][0-9]) [^\r\n\0]*\Z|([1-9][0-9][0-9])\Z")

# what the response writer does with a header name (cached per name string)
K_PLAIN, K_LENGTH, K_CONNECTION, K_HOP, K_DATE, K_SERVER = range(6)
_SPECIAL = {"content-length": K_LENGTH, "connection": K_CONNECTION,
            "transfer-encoding": K_HOP, "keep-alive": K_HOP, "upgrade": K_HOP,
            "proxy-connection": K_HOP, "date": K_DATE, "server": K_SERVER}
_kinds: dict = {}
_status_lines: dict = {}


def header_kind(name) -> int:
    """Returns the K_* class of a response header name; raises HeaderError for a name
    that is not a str RFC 7230 token."""
    kind = _kinds.get(name)
    if kind is not None:
        return kind
    if type(name) is not str or not _TOKEN.match(name):
        raise HeaderError(f"bad response header name {name!r}")
    kind = _SPECIAL.get(name.lower(), K_PLAIN)
    if len(_kinds) < 4096:
        _kinds[name] = kind
    return kind


def status_line(status) -> tuple[str, int]:
    """Returns ("HTTP/1.1 <status>\\r\\n", code); raises HeaderError for a bad status."""
    cached = _status_lines.get(status)
    if cached is not None:
        return cached
    if type(status) is not str:
        raise HeaderError(f"status must be a str, not {type(status).__name__}")
    m = _STATUS.match(status)
    if m is None:
        raise HeaderError(f"bad response status {status!r}")
    try:
        status.encode("latin-1")
    except UnicodeEncodeError:
        raise HeaderError(f"response status {status!r} is not latin-1") from None
    result = (f"HTTP/1.1 {status}\r\n", int(m.group(1) or m.group(2)))
    if len(_status_lines) < 1024:
        _status_lines[status] = result
    return result
