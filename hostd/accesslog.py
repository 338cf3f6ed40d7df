"""The access log: one line per request, off the request path.

Format: NCSA combined, then pool, worker pid and duration in microseconds, and for a
request that came over TLS the word https:

    127.0.0.1 - - [25/Nov/2026:09:19:43 +0000] "GET /x HTTP/1.1" 200 12 "-" "curl/8" alpha 1234 187
    127.0.0.1 - - [25/Nov/2026:09:19:44 +0000] "GET /x HTTP/1.1" 200 12 "-" "curl/8" alpha 1234 203 https

Target (`[hostd] access_log`): "" = off, "journal" = journald (EVENT=access, one entry
per line, MESSAGE= the line, plus POOL=, WORKER_PID=, STATUS=, DURATION_US=, SCHEME=), or a file
path: every worker opens it with O_APPEND and writes batches of whole lines.

The request path only formats the line and appends it to a buffer (no syscall); the
worker's loop calls `tick()` (flush once a second), `log()` flushes when the buffer
passes 64 KiB, `close()` at exit. SIGUSR1 (forwarded by the supervisor to every
worker) sets `reopen` and the next flush reopens the file (logrotate).
"""
from __future__ import annotations

import os
import time
from collections import deque

from hostd import log

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 1.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _escape(s: str) -> str:
    """Quoted fields: `"` and `\\` escaped, control and non-ASCII bytes as \\xHH (nginx)."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return s
    out = []
    for c in s:
        o = ord(c)
        if c == '"' or c == "\\":
            out.append("\\" + c)
        elif o < 0x20 or o >= 0x7f:
            out.append(f"\\x{o:02X}" if o <= 0xff else
                       "".join(f"\\x{b:02X}" for b in c.encode("utf-8", "replace")))
        else:
            out.append(c)
    return "".join(out)


def open_file(target: str) -> int:
    """Opens (creating it and its directory) an access log file for appending.
    Returns the descriptor. Raises: OSError."""
    try:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    except OSError:
        pass
    return os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


class AccessLog:
    """Takes the target, the pool, the worker's pid and, for an isolated worker (which
    can neither see nor open the file once it gave up root), the descriptor opened for
    it before; that one is replaced on logrotate by the supervisor (`replace_fd`)."""

    def __init__(self, target: str, pool: str, pid: int, fd: int = -1):
        self.target = target
        self.journal = target == "journal"
        self.tail = f" {pool} {pid} "
        self.pool, self.pid = pool, pid
        self.lines: deque = deque()
        self.size = 0
        self.fd = -1
        self.reopen = False
        self.next_flush = time.monotonic() + FLUSH_INTERVAL
        self._sec = -1
        self._stamp = ""
        self.given_fd = fd >= 0
        if self.given_fd:
            self.fd = fd
        elif not self.journal:
            self._open()

    def replace_fd(self, fd: int) -> None:
        """The supervisor's freshly opened file (logrotate): dup2 over ours, so a write
        in flight on another thread goes to the old file or the new, never nowhere."""
        if self.fd >= 0:
            os.dup2(fd, self.fd)
            os.close(fd)
        else:
            self.fd = fd

    def _open(self) -> None:
        if self.given_fd:
            return   # an isolated worker cannot reopen by path: replace_fd does it
        try:
            fd = open_file(self.target)
        except OSError as exc:
            log.error("access_log", f"cannot open {self.target}: {exc}", POOL=self.pool)
            return
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)

    def stamp(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            t = time.localtime(sec)
            off = t.tm_gmtoff or 0
            sign = "+" if off >= 0 else "-"
            off = abs(off) // 60
            self._stamp = (f"[{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                           f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                           f"{sign}{off // 60:02d}{off % 60:02d}]")
            self._sec = sec
        return self._stamp

    def log(self, env: dict, url: bytes, status, nbytes, duration_us: int) -> None:
        """One request (called on the request path: format + append, no syscall)."""
        try:
            line = (f'{env.get("REMOTE_ADDR") or "-"} - - {self.stamp(time.time())} '
                    f'"{env["REQUEST_METHOD"]} {_escape(url.decode("latin-1"))} '
                    f'{env.get("SERVER_PROTOCOL", "HTTP/1.0")}" '
                    f'{status[:3] if status else "-"} {nbytes if nbytes else "-"} '
                    f'"{_escape(env.get("HTTP_REFERER", "-"))}" '
                    f'"{_escape(env.get("HTTP_USER_AGENT", "-"))}"'
                    f'{self.tail}{duration_us}'
                    f'{" https" if "HTTPS" in env else ""}\n')
        except Exception:
            return
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()

    def tick(self, now: float) -> None:
        """From the worker loop: flush at most once per FLUSH_INTERVAL (and reopen)."""
        if now >= self.next_flush or self.reopen:
            self.next_flush = now + FLUSH_INTERVAL
            self.flush()

    def flush(self) -> None:
        if self.reopen and not self.journal:
            self.reopen = False
            self._open()
        lines = self.lines
        n = len(lines)
        if not n:
            return
        batch = [lines.popleft() for _ in range(n)]
        self.size = 0
        if self.journal:
            for line in batch:
                self._journal(line)
            return
        if self.fd < 0:
            return
        data = "".join(batch).encode("utf-8", "replace")
        view = memoryview(data)
        try:
            while view:
                w = os.write(self.fd, view)
                view = view[w:]
        except OSError as exc:
            log.error("access_log", f"cannot write {self.target}: {exc}", POOL=self.pool)

    def _journal(self, line: str) -> None:
        parts = line.rstrip("\n").rsplit(" ", 4)
        https = parts[-1] == "https"
        fields = {"POOL": self.pool, "WORKER_PID": self.pid,
                  "DURATION_US": parts[-2] if https else parts[-1],
                  "SCHEME": "https" if https else "http"}
        q = line.split('"', 2)
        if len(q) == 3:
            fields["STATUS"] = q[2].split(" ", 2)[1]
        data = log.journal_entry(log.INFO, "access", "", fields, text=line.rstrip("\n"))
        if not log.journal_send(data):
            log.info("access", line.rstrip("\n"), POOL=self.pool)

    def close(self) -> None:
        self.flush()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
