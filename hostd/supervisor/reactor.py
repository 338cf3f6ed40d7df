"""The bottom of the supervisor: one epoll, fd -> handler, and the event queue.

Every room registers its descriptors here (`watch`/`unwatch`) and reports what happened
by posting an event (`post`); none calls a room above it. The loop polls, runs the
handlers of ready descriptors, then routes the posted events (hostd.supervisor.loop).
"""
from __future__ import annotations

import collections
import select
from typing import Callable

from hostd.supervisor.events import Event


class Reactor:
    def __init__(self):
        self.ep = select.epoll()
        self.handlers: dict[int, Callable] = {}
        self.events: collections.deque[Event] = collections.deque()

    def watch(self, fd: int, handler: Callable, events: int = select.EPOLLIN) -> None:
        """Calls handler(epoll_events) whenever fd is ready. Raises OSError (e.g. EEXIST)."""
        self.ep.register(fd, events)
        self.handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        """Stops watching fd (no error when it was not watched)."""
        self.handlers.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def post(self, event: Event) -> None:
        """Reports an event to the loop, which routes it after the current handler."""
        self.events.append(event)

    def poll(self, timeout: float, after: Callable[[], None]) -> None:
        """Waits up to `timeout` s and runs the handler of every ready descriptor, then
        `after()` (the loop routes what the handler posted before the next one runs)."""
        try:
            ready = self.ep.poll(timeout)
        except InterruptedError:
            return
        for fd, ev in ready:
            handler = self.handlers.get(fd)
            if handler is not None:
                handler(ev)
                after()

    def close(self) -> None:
        self.ep.close()
