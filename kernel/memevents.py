"""Kernel notifications about a cgroup's memory: "it passed a threshold", "it hit its
limit", "the OOM killer ran". Memory-triggered recycling is an event, not a poll.

* cgroup v2: the threshold is `memory.high` (the caller writes it); the kernel bumps the
  `high`, `max` and `oom_kill` counters in `memory.events` and signals the file as
  modified, which inotify delivers (IN_MODIFY).
* cgroup v1: an eventfd registered through `cgroup.event_control` fires when
  `memory.usage_in_bytes` crosses a threshold (in either direction: the usage is read
  back to tell which); a second eventfd on `memory.oom_control` fires on OOM.

On v1, `MemoryWatch.fileno()` goes into the caller's epoll; on v2 every watch shares one
`Inotify` (the caller's): an inotify instance per cgroup would run into
fs.inotify.max_user_instances (128 by default) with a few dozen workers. `read()` returns
what happened.

`MemoryWatch.fence()` (v1) makes one more descriptor for the same cgroup, readable at the
crossing, for the process that is growing: it can stop taking work at once instead of
after a round trip through whoever watches it. v2 needs none: past memory.high the
kernel itself throttles the process until the watcher acts.
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


class Inotify:
    """One inotify instance for many files' IN_MODIFY. The caller owns it (close())."""

    _EVENT = struct.Struct("iIII")   # wd, mask, cookie, len (then len bytes of name)

    def __init__(self):
        fd = _inotify().inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def watch(self, path: str) -> int:
        """Watches path for IN_MODIFY. Returns the watch descriptor.
        Raises: OSError naming the path."""
        wd = _inotify().inotify_add_watch(self._fd, path.encode(), _IN_MODIFY)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify on {path}: {os.strerror(err)}")
        return wd

    def unwatch(self, wd: int) -> None:
        """Stops watching (no error if the file, e.g. a removed cgroup's, is gone)."""
        _inotify().inotify_rm_watch(self._fd, wd)

    def read(self) -> set[int]:
        """Drains pending events. Returns the watch descriptors whose file was modified."""
        wds: set[int] = set()
        while True:
            try:
                buf = os.read(self._fd, 65536)
            except BlockingIOError:
                return wds
            if not buf:
                return wds
            off = 0
            while off + self._EVENT.size <= len(buf):
                wd, mask, _cookie, n = self._EVENT.unpack_from(buf, off)
                if mask & _IN_MODIFY:     # not IN_IGNORED (unwatched, or file gone)
                    wds.add(wd)
                off += self._EVENT.size + n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class MemoryWatch:
    """Watches one cgroup's memory.

    Takes: the cgroup's memory directory (v1: in the memory hierarchy; v2: the unified
    directory), the cgroup version, the threshold in bytes for HIGH (0 = none; v2: the
    caller has written it to memory.high), and on v1 the hard limit (for MAX: a second
    threshold just below it, since v1 has no event for hitting the limit).
    Raises: OSError (naming the file) when the kernel interface is missing.
    """

    def __init__(self, directory: str, version: int, high: int = 0, limit: int = 0,
                 inotify: Inotify | None = None):
        self.directory = directory
        self.version = version
        self.high = high
        self.limit = limit
        self._fds: list[int] = []
        self._inotify = inotify
        self.wd = -1
        if version == 2:
            if inotify is None:
                raise ValueError("cgroup v2 memory watches share the caller's Inotify")
            self._events_path = os.path.join(directory, "memory.events")
            self._last = _read_counters(self._events_path)
            self.wd = inotify.watch(self._events_path)
            self._fd = -1
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

    @property
    def shared_inotify(self) -> bool:
        """True when this watch reports through the caller's shared Inotify (v2: poll
        the Inotify, whose read() names this watch by `wd`; fileno() is -1); False
        when fileno() is this watch's own eventfd to poll (v1)."""
        return self.version == 2

    def fileno(self) -> int:
        """v1: the eventfd to poll. v2: -1 (the shared Inotify's fileno() is polled, and
        `wd` says which watch fired)."""
        return self._fd

    def fence(self) -> int | None:
        """v1: a new eventfd (the caller owns it) that becomes readable when the cgroup
        first passes the lower of the two thresholds, meant to be handed to the process
        in the cgroup. v2: None (memory.high throttles the process itself).
        Raises: OSError (naming the file)."""
        if self.version == 2:
            return None
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
        """Drains the notification (v1; on v2 the caller drained the shared Inotify) and
        returns what is true now: a list of HIGH, MAX, OOM (possibly empty: v1
        thresholds also fire on the way down)."""
        if self.version == 2:
            try:
                now = _read_counters(self._events_path)
            except OSError:
                return []
            out = [k for k in (OOM, MAX, HIGH) if now.get(k, 0) > self._last.get(k, 0)]
            self._last = now
            return out
        try:
            os.read(self._fd, 4096)
        except BlockingIOError:
            pass
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
        if self._inotify is not None and self.wd >= 0:
            self._inotify.unwatch(self.wd)
            self.wd = -1
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []
