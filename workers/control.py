"""A worker's control channel (mixed into workers.runtime.Worker): the control thread,
which answers the supervisor even while every app thread hangs (PING -> PONG, REQUESTS
-> REQUESTS_REPLY, ORPHAN, the access log and memory fence descriptors), passes the rest
to the loop thread (DRAIN, SHED, ROUTES), reports slow requests, and ends the process
when the supervisor is gone. The memory fence (v1) is armed here and fires in the loop.
"""
from __future__ import annotations

import os
import select
import time

from hostd import log, protocol
from hostd.router import Router
from kernel import proc
from kernel.fdpass import recv_with_fds
from kernel.sockets import wait_fd

_IN = select.EPOLLIN
#: the supervisor is gone (control channel EOF): requests in flight get this long to
#: finish, then the worker exits whatever its app does (Worker._supervisor_gone)
SUPERVISOR_GONE_GRACE = 2.0
#: control thread -> loop thread: the control channel closed (internal, never sent)
CTL_EOF = "eof"


class ControlChannel:
    """The control-channel half of a Worker (its state is the worker's)."""

    # --- control ----------------------------------------------------------------------
    # The control channel is read by its own thread, never by the loop: a ping must be
    # answered even while the app hangs the loop (threads = 1) or every pool thread.
    # The thread answers pings itself and hands everything else to the loop thread.
    def _control_thread(self) -> None:
        ctl = self.ctl
        tick = 0.5
        if self.request_timeout > 0:
            tick = min(tick, self.request_timeout / 4)
        while True:
            r = wait_fd(ctl, select.POLLIN, tick)
            if self.request_timeout > 0:
                self._check_request_timeout()
            if not r:
                continue
            try:
                data, fds = recv_with_fds(ctl, protocol.MAX_CONTROL_BYTES, 0, maxfds=1)
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, RuntimeError):
                data, fds = b"", []
            if fds:
                # ACCESS_LOG carries the reopened access log; MEMORY_FENCE the
                # kernel's notification that our cgroup passed its memory threshold
                try:
                    kind = protocol.decode(data).get("t") if data else None
                except ValueError:
                    kind = None
                if kind == protocol.ACCESS_LOG and self.access is not None:
                    self.access.replace_fd(fds.pop(0))
                elif kind == protocol.MEMORY_FENCE and self.fence_fd < 0:
                    self._arm_fence(fds.pop(0))
                for fd in fds:
                    os.close(fd)
                continue
            if not data:
                self._to_loop({"t": CTL_EOF})
                self._supervisor_gone()   # never returns
            try:
                msg = protocol.decode(data)
            except ValueError as exc:
                log.warning("bad_control_message", str(exc), POOL=self.pool)
                continue
            if msg["t"] == protocol.PING:
                self._ctl_send(protocol.pong(msg.get("seq"), self.stuck(time.monotonic()),
                                             len(self.busy)))
            elif msg["t"] == protocol.REQUESTS:
                self._ctl_send(protocol.requests_reply(
                    msg.get("seq"), self.live_requests(time.monotonic())))
            elif msg["t"] == protocol.ORPHAN:
                # out of the queue at once, even if the loop never runs again
                self.orphaned = True
                try:
                    self.ep.unregister(self.queue.fileno())
                except (OSError, ValueError, AttributeError):
                    pass
                self.queue_registered = False
            else:
                self._to_loop(msg)

    def _supervisor_gone(self) -> None:
        """Control thread, at the control channel's EOF: the supervisor is gone (its end
        closes only when it exits), and nobody is left to kill us at a shutdown_limit.
        The loop was told to drain (EXIT_SUPERVISOR_GONE); requests in flight get
        SUPERVISOR_GONE_GRACE to finish. A drain that ends in time exits the process
        from the main thread, and this thread with it; one that does not (a hung app
        never finishes a drain) ends here: what the app started in our process group
        is killed, and we exit. Never returns."""
        time.sleep(SUPERVISOR_GONE_GRACE)
        try:
            if self.access is not None:
                self.access.flush()
            self.base_env["wsgi.errors"].flush()
        except Exception:
            pass
        if not self.ns_init:   # a pid namespace's init takes its namespace along
            proc.kill_own_group()
        os._exit(protocol.EXIT_SUPERVISOR_GONE)

    def _arm_fence(self, fd: int) -> None:
        """Control thread: watch the memory fence in the loop's epoll."""
        self.fence_fd = fd
        try:
            self.ep.register(fd, _IN)
        except (OSError, ValueError):
            self.fence_fd = -1
            os.close(fd)

    def _fence(self) -> None:
        """Loop thread: the cgroup passed its memory threshold (the supervisor hears it
        from the kernel too). Take no more requests at once, before the round trip:
        a leaking app grows with every one. Idle connections go back to the front ends;
        the exit waits for the supervisor's drain order, and our message makes sure
        it comes."""
        fd, self.fence_fd = self.fence_fd, -1
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass
        os.close(fd)
        if self.draining:
            return
        self.begin_drain(protocol.EXIT_OK)
        self.fenced = True
        self._ctl_send(protocol.memory_fence())

    def stuck(self, now: float) -> bool:
        """Every app thread has been busy on the same request for > ping_timeout."""
        busy = list(self.busy.values())
        return (len(busy) >= self.threads
                and all(now - start > self.ping_timeout for start, _env in busy))

    def _check_request_timeout(self) -> None:
        now = time.monotonic()
        for tid, (start, env) in list(self.busy.items()):
            if now - start > self.request_timeout and (tid, start) not in self.reported_slow:
                self.reported_slow.add((tid, start))
                self._ctl_send(protocol.unhealthy(
                    f"request_timeout: {env.get('REQUEST_METHOD')} "
                    f"{env.get('PATH_INFO')} running {now - start:.1f}s"))

    def _to_loop(self, msg: dict) -> None:
        self.ctl_events.append(msg)
        try:
            os.eventfd_write(self.wake_fd, 1)
        except OSError:
            pass

    def _on_ctl_events(self) -> None:
        """Loop thread: control messages the control thread passed on."""
        while self.ctl_events:
            msg = self.ctl_events.popleft()
            t = msg["t"]
            if t == CTL_EOF:
                self.ctl_open = False
                self.drain_reason = protocol.DrainReason.HOSTD_STOPPING
                self.begin_drain(protocol.EXIT_SUPERVISOR_GONE)
            elif t == protocol.DRAIN:
                if not self.draining:
                    self.drain_reason = msg.get("reason") or ""
                self.begin_drain(protocol.EXIT_OK)
            elif t == protocol.SHED:
                self.shed(int(msg.get("n") or 0))
            elif t == protocol.ROUTES:
                try:
                    self.router = Router.from_table(msg.get("routes") or [])
                except (ValueError, TypeError) as exc:
                    log.error("bad_routes", str(exc), POOL=self.pool)
                    continue
                self.route_cache.clear()
            else:
                log.warning("unknown_control_message", t, POOL=self.pool)

    def _ctl_send(self, msg: bytes) -> None:
        """Sends an encoded control message (a protocol constructor's) to the supervisor."""
        if not self.ctl_open:
            return
        try:
            self.ctl.sendall(msg)
        except OSError:
            pass

    def live_requests(self, now: float) -> list[dict]:
        """The requests running now (for `hostctl requests`), read by the control thread."""
        out = []
        for start, env in list(self.busy.values()):
            path = env.get("SCRIPT_NAME", "") + env.get("PATH_INFO", "")
            if env.get("QUERY_STRING"):
                path += "?" + env["QUERY_STRING"]
            out.append({"method": env.get("REQUEST_METHOD"), "path": path,
                        "host": env.get("HTTP_HOST"), "client": env.get("REMOTE_ADDR"),
                        "elapsed": round(now - start, 3)})
        return out
