"""Writing responses on a worker's connection: start_response, the response head, the
body (write, file wrappers with sendfile), sends that wait for a slow client and the
bandwidth throttle. Mixed into workers.http.Connection.
"""
from __future__ import annotations

import os
import stat
import time

from . import h1fast
from .h1 import COUNTERS, DISCARD_LIMIT, _POLLOUT, _date, _wait
from .wsgi import (K_CONNECTION, K_DATE, K_HOP, K_LENGTH, K_SERVER, ClientDisconnected,
                   HeaderError, header_kind, status_line)


_fast_head = h1fast.head
#: a body this large goes out beside its head (sendmsg), not copied behind it
SCATTER_AT = 16384


class ResponseWriter:
    """Mixed into workers.http.Connection (its state is the connection's)."""

    def send(self, data) -> None:
        """Sends all of `data`, waiting (poll) while the socket buffer is full."""
        if self.throttle is not None:
            self._send_throttled(memoryview(data))
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n == len(data):
            return
        self._send_rest(memoryview(data)[n:])

    def send2(self, head: bytes, body: bytes) -> None:
        """Sends head then a body of SCATTER_AT bytes or more, unthrottled, with
        sendmsg's two buffers (no copy of the body; a small one is cheaper copied behind
        the head and sent with send)."""
        try:
            n = self.sock.sendmsg((head, body))
        except BlockingIOError:
            n = 0
        if n < len(head):
            self._send_rest(memoryview(head)[n:])
            n = len(head)
        if n - len(head) < len(body):
            self._send_rest(memoryview(body)[n - len(head):])

    def _send_rest(self, view) -> None:
        """send_timeout bounds each wait for the client to make room (a client that
        reads slowly but reads is not cut; one that stops reading is)."""
        sock = self.sock
        timeout = self.worker.send_timeout
        deadline = time.monotonic() + timeout
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait(self.fd, _POLLOUT, remaining):
                COUNTERS.hit("send_timeout")
                raise ClientDisconnected("timed out sending the response")
            try:
                n = sock.send(view)
            except BlockingIOError:
                continue
            view = view[n:]
            deadline = time.monotonic() + timeout

    def _send_throttled(self, view) -> None:
        """max_bandwidth: sends in slices, sleeping as the binding's token bucket says."""
        throttle = self.throttle
        step = max(4096, int(throttle.rate) // 20)
        while view:
            part = view[:step]
            delay = throttle.take(len(part))
            if delay > 0:
                time.sleep(delay)
            try:
                n = self.sock.send(part)
            except BlockingIOError:
                n = 0
            if n < len(part):
                self._send_rest(part[n:])
            view = view[len(part):]

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def _head(self, known_len) -> bytes:
        """The response head for self.status/self.headers; decides the framing.
        known_len: the body length when all of it is known, else None. The C path
        (workers/h1fast.py) builds the plain-ASCII ones of a request read whole."""
        if _fast_head is not None and self.req.complete:
            hit = _fast_head(self.status, self.headers, -1 if known_len is None else known_len,
                             self.http11, self.close_after, self.nobody)
            if hit is not None:
                head, clen, self.close_after, self.chunked, self.nobody = hit
                self.clen = None if clen < 0 else clen
                return head
        return self._head_py(known_len)

    def _head_py(self, known_len) -> bytes:
        """_head in Python: every status and header list, and the errors."""
        status = self.status
        if status is None:
            raise AssertionError("the application did not call start_response()")
        line, code = status_line(status)
        parts = []
        clen = None
        date = server = True
        for name, value in self.headers:
            kind = header_kind(name)
            if kind:
                if kind == K_LENGTH:
                    try:
                        clen = int(value)
                    except (TypeError, ValueError):
                        raise HeaderError(f"bad Content-Length {value!r}") from None
                    if clen < 0:
                        raise HeaderError(f"bad Content-Length {value!r}")
                elif kind == K_CONNECTION:
                    if type(value) is str and "close" in value.lower():
                        self.close_after = True
                    continue
                elif kind == K_HOP:
                    continue
                elif kind == K_DATE:
                    date = False
                elif kind == K_SERVER:
                    server = False
            parts += (name, ": ", value, "\r\n")
        try:
            hb = "".join(parts)
        except TypeError:
            hb = None
        n = len(parts) >> 2
        if hb is None or hb.count("\n") != n or hb.count("\r") != n or "\0" in hb:
            for name, value in self.headers:
                if type(value) is not str or any(c in value for c in "\r\n\0"):
                    raise HeaderError(f"bad value for response header {name!r}: "
                                      f"{value!r}")
        if code < 200 or code == 204 or code == 304:
            self.nobody = True  # no body, whatever the application yields
            clen = None
        elif clen is None:
            if known_len is not None:
                hb += f"Content-Length: {known_len}\r\n"
                clen = known_len
            elif not self.nobody:
                if self.http11:
                    hb += "Transfer-Encoding: chunked\r\n"
                    self.chunked = True
                else:
                    self.close_after = True
        self.clen = clen
        req = self.req
        if not req.complete and not self.close_after:
            # body left unread: will it be drained or the connection closed? (say so now)
            if req.expect or self.stopped:
                self.close_after = True
            else:
                cl = req.env.get("CONTENT_LENGTH")
                if cl is not None and cl.isdigit() and int(cl) > DISCARD_LIMIT:
                    self.close_after = True
        if date:
            hb += _date()
        if server:
            hb += "Server: hostd\r\n"
        if self.close_after:
            hb += "Connection: close\r\n"
        elif not self.http11:
            hb += "Connection: keep-alive\r\n"
        try:
            return (line + hb + "\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise HeaderError("response headers are not latin-1") from None

    def write(self, data) -> None:
        """The write() callable, and the body writer for iterables (non-empty data)."""
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"response body must be bytes, not {type(data).__name__}")
        if not self.sent:
            head = self._head(None)
            self.sent = True
            if self.nobody or not data:
                self.send(head)
                return
            if self.chunked:
                self.send(b"%s%x\r\n%s\r\n" % (head, len(data), data))
                return
            if self.clen is not None:
                data = self._clip(data)
            self.send(head + data)
            return
        if self.nobody or not data:
            return
        if self.chunked:
            self.send(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            if self.clen is not None:
                data = self._clip(data)
            self.send(data)

    def _clip(self, data: bytes) -> bytes:
        left = self.clen - self.body_sent
        if len(data) > left:
            data = data[:left]
            self.close_after = True  # the app said less than it sent; don't trust framing
        self.body_sent += len(data)
        return data

    def _finish(self) -> None:
        """After the iterable is exhausted: headers if none went out, the chunked end."""
        if not self.sent:
            self.send(self._head(0))
            self.sent = True
        elif self.chunked:
            self.send(b"0\r\n\r\n")
        elif self.clen is not None and self.body_sent < self.clen and not self.nobody:
            self.close_after = True  # short body: the client can't find the next response

    def _send_file(self, fw) -> bool:
        """Sends a FileWrapper of a regular file with sendfile(2). Returns False when
        it is not one (the caller iterates it instead)."""
        f = fw.filelike
        try:
            fd = f.fileno()
            st = os.fstat(fd)
        except Exception:
            return False
        if not stat.S_ISREG(st.st_mode) or self.throttle is not None:
            return False
        try:
            offset = f.tell()
        except Exception:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        size = max(0, st.st_size - offset)
        head = self._head(size)
        self.sent = True
        self.send(head)
        if self.nobody:
            return True
        count = size if self.clen is None else min(self.clen, size)
        if self.clen is not None and self.clen > size:
            self.close_after = True
        if self.tls:            # encrypted here: read and send (workers/tls.py)
            if self.sock.sendfile_from(fd, offset, count) < count:
                self.close_after = True  # file shrank
            self.body_sent = self.clen if self.clen is not None else size
            return True
        sockfd = self.fd
        send_timeout = self.worker.send_timeout
        deadline = time.monotonic() + send_timeout
        while count > 0:
            try:
                n = os.sendfile(sockfd, fd, offset, count)
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not _wait(sockfd, _POLLOUT, remaining):
                    COUNTERS.hit("send_timeout")
                    raise ClientDisconnected("timed out sending the response") from None
                continue
            if n == 0:
                self.close_after = True  # file shrank
                break
            offset += n
            count -= n
            deadline = time.monotonic() + send_timeout
        self.body_sent = self.clen if self.clen is not None else size
        return True

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.send(data)
        except OSError:
            pass
