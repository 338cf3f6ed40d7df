"""Kernel notifications about a cgroup's memory: "it passed a threshold", "it hit its
limit", "the OOM killer ran". Memory-triggered recycling is an event, not a poll.

* cgroup v2: the threshold is `memory.high` (the caller writes it); the kernel bumps the
  `high`, `max` and `oom_kill` counters in `memory.events` and signals the file as
  modified, which inotify delivers (IN_MODIFY).
* cgroup v1: an eventfd registered through `cgroup.event_control` fires when
  `memory.usage_in_bytes` crosses a threshold (in either direction: the usage is read
  back to tell which); a second eventfd on `memory.oom_control` fires on OOM.

`MemoryWatch.fileno()` goes into the caller's epoll; `read()` returns what happened.
`MemoryWatch.fence()` makes one more descriptor for the same cgroup, readable at the first
crossing, for the process that is growing: it can stop taking work at once instead of
after a round trip through whoever watches it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

HIGH, MAX, OOM = "high", "max", "oom_kill"

_IN_MODIFY = 0x00000002
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_libc = None


def _inotify():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _read_counters(path: str) -> dict[str, int]:
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(" ")
            if value:
                out[key] = int(value)
    return out


class MemoryWatch:
    """Watches one cgroup's memory.

    Takes: the cgroup's memory directory (v1: in the memory hierarchy; v2: the unified
    directory), the cgroup version, the threshold in bytes for HIGH (0 = none; v2: the
    caller has written it to memory.high), and on v1 the hard limit (for MAX: a second
    threshold just below it, since v1 has no event for hitting the limit).
    Raises: OSError (naming the file) when the kernel interface is missing.
    """

    def __init__(self, directory: str, version: int, high: int = 0, limit: int = 0):
        self.directory = directory
        self.version = version
        self.high = high
        self.limit = limit
        self._fds: list[int] = []
        if version == 2:
            self._events_path = os.path.join(directory, "memory.events")
            self._last = _read_counters(self._events_path)
            libc = _inotify()
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1 failed")
            self._fds.append(fd)
            if libc.inotify_add_watch(fd, self._events_path.encode(), _IN_MODIFY) < 0:
                err = ctypes.get_errno()
                self.close()
                raise OSError(err, f"inotify on {self._events_path}: {os.strerror(err)}")
            self._fd = fd
        else:
            self._control = os.path.join(directory, "cgroup.event_control")
            # one eventfd for every notification: thresholds and OOM all wake the same fd
            self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._fds.append(self._fd)
            control = os.path.join(directory, "cgroup.event_control")
            usage = os.open(os.path.join(directory, "memory.usage_in_bytes"), os.O_RDONLY)
            oom = os.open(os.path.join(directory, "memory.oom_control"), os.O_RDONLY)
            self._fds += [usage, oom]
            try:
                lines = [f"{self._fd} {oom}"]
                if high:
                    lines.append(f"{self._fd} {usage} {high}")
                if limit:
                    # v1 has no "hit the limit" event: a threshold just below it
                    lines.append(f"{self._fd} {usage} {self._near(limit)}")
                for line in lines:
                    with open(control, "w") as f:
                        f.write(line)
            except OSError as exc:
                self.close()
                raise OSError(exc.errno, f"{control}: {exc.strerror}") from None
            self._oom_path = os.path.join(directory, "memory.oom_control")
            self._oom_kills = self._v1_oom_kills()

    def fileno(self) -> int:
        return self._fd

    def fence(self) -> int:
        """A new descriptor (the caller owns it) that becomes readable when the cgroup first
        passes the lower of the two thresholds (v1: an eventfd on that threshold; v2: an
        inotify watch on memory.events, which the kernel first modifies at memory.high
        or memory.max). Meant to be handed to the process in the cgroup.
        Raises: OSError (naming the file)."""
        if self.version == 2:
            libc = _inotify()
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1 failed")
            if libc.inotify_add_watch(fd, self._events_path.encode(), _IN_MODIFY) < 0:
                err = ctypes.get_errno()
                os.close(fd)
                raise OSError(err, f"inotify on {self._events_path}: {os.strerror(err)}")
            return fd
        at = min(t for t in (self.high, self._near(self.limit) if self.limit else 0) if t)
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        usage = os.open(os.path.join(self.directory, "memory.usage_in_bytes"), os.O_RDONLY)
        try:
            with open(self._control, "w") as f:
                f.write(f"{fd} {usage} {at}")
        except OSError as exc:
            os.close(fd)
            raise OSError(exc.errno, f"{self._control}: {exc.strerror}") from None
        finally:
            os.close(usage)
        return fd

    def read(self) -> list[str]:
        """Drains the notification and returns what is true now: a list of HIGH, MAX,
        OOM (possibly empty: v1 thresholds also fire on the way down)."""
        try:
            os.read(self._fd, 4096)
        except BlockingIOError:
            pass
        if self.version == 2:
            try:
                now = _read_counters(self._events_path)
            except OSError:
                return []
            out = [k for k in (OOM, MAX, HIGH) if now.get(k, 0) > self._last.get(k, 0)]
            self._last = now
            return out
        out = []
        kills = self._v1_oom_kills()
        if kills > self._oom_kills:
            out.append(OOM)
        self._oom_kills = kills
        usage = self.usage()
        if self.limit and usage >= self._near(self.limit):
            out.append(MAX)
        if self.high and usage >= self.high:
            out.append(HIGH)
        return out

    def release_high(self) -> None:
        """v2: lifts memory.high (writes "max") once the threshold has been seen. Above
        memory.high the kernel throttles every allocation (up to 2 s each), so a worker
        left there would crawl through its last requests and its own exit; the hard
        limit, if any, still holds. v1 thresholds do not throttle: nothing to do.
        Raises: OSError (naming the file)."""
        if self.version != 2 or not self.high:
            return
        path = os.path.join(self.directory, "memory.high")
        try:
            with open(path, "w") as f:
                f.write("max")
        except OSError as exc:
            raise OSError(exc.errno, f"{path}: {exc.strerror}") from None
        self.high = 0

    def near_limit(self) -> int:
        """The usage read as "at the hard limit" (0 without one)."""
        return self._near(self.limit) if self.limit else 0

    @staticmethod
    def _near(limit: int) -> int:
        """v1's stand-in for "at the limit": 15/16 of it, leaving room for the request
        in flight to finish while the worker drains."""
        return max(limit - (limit >> 4), 1)

    def usage(self) -> int:
        """Current charge in bytes (v2 memory.current, v1 memory.usage_in_bytes)."""
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            with open(os.path.join(self.directory, name)) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def _v1_oom_kills(self) -> int:
        try:
            return _read_counters(self._oom_path).get("oom_kill", 0)
        except OSError:
            return 0

    def close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
