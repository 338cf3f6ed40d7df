"""The request path's overflow: client connections the supervisor holds for a moment.

* **parked** — a front end found a pool's kernel queue full (EAGAIN): the connection
  waits here, still holding its queue slot, until the queue has room (EPOLLOUT);
* **answered** — a pool that cannot serve (failed, stopped, retired with nobody left):
  503, or a reset for tcp_reset pools;
* **rerouted** — a removed pool's waiting connections, and what isolated workers hand
  back through their pool's own channel (checked: a TCP connection to one of hostd's
  ports), go to the front ends through the shared reroute channel. That channel is never
  written blocking: what it cannot take waits in the outbox, and while the outbox is long
  the pools' channels are not read, so only the flooding pool's workers wait.

Owns: the shared reroute socketpair, the outbox, the global max_connections semaphore
(made once: a new value needs a restart), and each pool's reroute channel watch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import collections
import os
import select
import socket

from hostd import log, protocol
from kernel import fdpass, sockets

if TYPE_CHECKING:
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry

#: connections relayed from one pool's reroute channel per turn of the loop
RELAY_BATCH = 64
#: connections waiting for room in the shared reroute channel before pools wait too
OUTBOX_MAX = 1024


@dataclass(eq=False)
class Connections:
    registry: Registry
    reactor: Reactor

    def __post_init__(self):
        main = self.registry.main
        self.reroute_in, self.reroute_out = sockets.seqpacket_pair()
        sockets.enlarge_buffers(self.reroute_in)
        self.outbox: collections.deque = collections.deque()   # (fd, bytes)
        self.conn_sem = sockets.semaphore(main.max_connections)
        self.conn_sem_max = main.max_connections
        #: the ports of hostd's listening sockets: a handed-back connection must be to one
        self.listen_ports: set[int] = set()

    def limit_settings(self) -> dict:
        """The client limits of [hostd] for front ends and workers, and the global
        max_connections semaphore (protocol.ClientLimits' fields)."""
        m = self.registry.main
        return {"conn_sem": self.conn_sem, "max_header_bytes": m.max_header_bytes,
                "header_timeout": m.header_timeout,
                "keepalive_timeout": m.keepalive_timeout, "send_timeout": m.send_timeout,
                "min_request_bytes_per_second": m.min_request_bytes_per_second,
                "max_body_size": m.max_body_size}

    # ------------------------------------------------------------------ parking
    def park(self, name: str, fd: int, buf: bytes) -> None:
        """A front end found the pool's kernel queue full; hold the connection until
        there is room (it keeps the queue slot the front end took). Takes fd."""
        pool = self.registry.pools.get(name)
        from hostd.lifecycle import PoolState as P
        if pool is None or pool.state not in (P.STARTED, P.STARTING):
            self.answer(fd, pool)
            if pool is not None:
                sockets.give_slot(pool.sem)
            return
        pool.parked.append((fd, buf))
        self.flush_parked(pool)

    def flush_parked(self, pool) -> None:
        send_queued(pool.queue_in, pool.parked)
        want = bool(pool.parked)
        if want != pool.watch_parked:
            pool.watch_parked = want
            if want:
                self.reactor.watch(pool.queue_in.fileno(),
                                   lambda ev, p=pool: self.flush_parked(p), select.EPOLLOUT)
            else:
                self.reactor.unwatch(pool.queue_in.fileno())

    def waiting(self, pool) -> bool:
        """Whether a connection waits for the pool (parked, or in its kernel queue)."""
        return bool(pool.parked) or _readable(pool.queue_out)

    def answer(self, fd: int, pool) -> None:
        """Answers a connection the supervisor holds: 503 (or RST for tcp_reset pools),
        giving back its connection slots. Takes fd."""
        from hostd.frontend import unavailable
        sockets.give_slot(self.conn_sem)
        if pool is not None and pool.csem >= 0:
            sockets.give_slot(pool.csem)
        sock = socket.socket(fileno=fd)
        if pool is not None and pool.cfg is not None and \
                pool.cfg.load_balancer_capabilities == "tcp_reset":
            sockets.reset_connection(sock)
            return
        try:
            sock.setblocking(False)
            sock.send(unavailable(pool.name if pool else "?"))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()

    def fail_queue(self, pool) -> None:
        """Answers every connection waiting for a pool that cannot serve them."""
        while pool.parked:
            fd, _ = pool.parked.popleft()
            self.answer(fd, pool)
            sockets.give_slot(pool.sem)
        for _data, fd in _drain_queue(pool):
            self.answer(fd, pool)
            sockets.give_slot(pool.sem)
        self.forget_parked(pool)

    def reroute_queue(self, pool) -> None:
        """Gives every connection waiting for a removed pool back to the front ends,
        which route it again (to the pool that took the binding over, or 404)."""
        while pool.parked:
            fd, buf = pool.parked.popleft()
            self._leave_pool(fd, buf, pool)
        for data, fd in _drain_queue(pool):
            self._leave_pool(fd, data, pool)

    def forget_parked(self, pool) -> None:
        if pool.watch_parked:
            pool.watch_parked = False
            self.reactor.unwatch(pool.queue_in.fileno())

    def _leave_pool(self, fd: int, buf: bytes, pool) -> None:
        if pool.csem >= 0:
            sockets.give_slot(pool.csem)   # it leaves the pool (keeps its global slot)
        self.reroute(fd, buf)

    # ------------------------------------------------------------------ slots
    def give_back(self, pool, n: int) -> None:
        """A worker died holding n connections: their global and pool slots."""
        if n:
            sockets.give_slot(self.conn_sem, n)
            if pool.csem >= 0:
                sockets.give_slot(pool.csem, n)

    def released_slots(self, worker) -> None:
        """An isolated worker holds no descriptor of the global connection semaphore:
        the slots of the connections it closed are given back here, from its scoreboard
        (within one tick). It cannot inflate the limit past max_connections: at most the
        slots taken now are given back."""
        if worker.board is None:
            return
        released = worker.board.read_released()
        delta = released - worker.released_seen
        if delta <= 0:
            return
        worker.released_seen = released
        taken = self.conn_sem_max - sockets.semaphore_value(self.conn_sem)
        if taken > 0:
            sockets.give_slot(self.conn_sem, min(delta, taken))

    def tick(self) -> None:
        """Duty: the slots isolated workers released since the last turn."""
        for pool in self.registry.staffed_pools():
            for w in pool.workers.values():
                if w.isolated:
                    self.released_slots(w)

    # ------------------------------------------------------------------ the reroute relay
    def reroute(self, fd: int, buf: bytes) -> None:
        """Hands a connection (fd + the bytes already read) to the front ends through
        the shared reroute channel, never blocking the loop: when the channel is full
        it waits in the outbox, flushed on EPOLLOUT. Takes ownership of fd."""
        was_empty = not self.outbox
        self.outbox.append((fd, buf))
        if was_empty and not send_queued(self.reroute_in, self.outbox):
            self.reactor.watch(self.reroute_in.fileno(), self._flush_outbox, select.EPOLLOUT)

    def _flush_outbox(self, _ev=None) -> None:
        if not send_queued(self.reroute_in, self.outbox):
            return
        self.reactor.unwatch(self.reroute_in.fileno())
        for pool in self.registry.every_pool():
            if pool.relay_paused:
                pool.relay_paused = False
                self.reactor.watch(pool.reroute_out.fileno(), lambda ev, p=pool: self.relay(p))

    def pool_reroute(self, pool) -> socket.socket:
        """The pool's own reroute channel for its isolated workers (made once). A
        worker that floods it fills only its pool's channel; the shared one is
        written by the supervisor alone, which takes turns between pools."""
        if pool.reroute_in is None:
            pool.reroute_in, pool.reroute_out = sockets.seqpacket_pair()
            pool.reroute_out.setblocking(False)
            self.reactor.watch(pool.reroute_out.fileno(), lambda ev, p=pool: self.relay(p))
        return pool.reroute_in

    def relay(self, pool) -> None:
        """Connections an isolated worker hands back: checked (a TCP connection to one
        of hostd's own ports, not whatever descriptor the app chose to send) and passed
        on, at most RELAY_BATCH per turn so pools take turns. While the outbox is long
        the pool's channel is not read: only its own workers wait."""
        for _ in range(RELAY_BATCH):
            if len(self.outbox) >= OUTBOX_MAX:
                pool.relay_paused = True
                self.reactor.unwatch(pool.reroute_out.fileno())
                return
            try:
                data, fds = fdpass.recv_with_fds(pool.reroute_out, protocol.MAX_HANDOFF_BYTES,
                                                 socket.MSG_DONTWAIT, maxfds=1)
            except BlockingIOError:
                return
            except (RuntimeError, OSError):
                continue
            for fd in fds[1:]:
                os.close(fd)
            if not fds:
                if not data:
                    return
                continue
            if self._client_connection(fds[0]):
                self.reroute(fds[0], data)
            else:
                os.close(fds[0])
                log.warning("reroute_refused", f"pool {pool.name} handed back a descriptor "
                            "that is not a client connection of hostd; closed", POOL=pool.name)

    def _client_connection(self, fd: int) -> bool:
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            return False
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6):
                return False
            s.getpeername()
            return s.getsockname()[1] in self.listen_ports
        except OSError:
            return False
        finally:
            s.close()

    def close_relay(self, pool) -> None:
        """A pool going away: what its workers handed back is passed on first."""
        if pool.reroute_out is None:
            return
        self.relay(pool)
        if not pool.relay_paused:
            self.reactor.unwatch(pool.reroute_out.fileno())
        pool.relay_paused = False

    def close(self) -> None:
        """At exit: closes every connection still held and the reroute channel."""
        for pool in self.registry.every_pool():
            for fd, _ in pool.parked:
                os.close(fd)
            pool.parked.clear()
        for fd, _ in self.outbox:
            os.close(fd)
        self.outbox.clear()
        self.reroute_in.close()
        self.reroute_out.close()


def send_queued(sock: socket.socket, box: collections.deque) -> bool:
    """Sends the (fd, bytes) connections waiting in `box` down `sock` without blocking,
    closing our copy of each one sent (or refused). Returns True when box is empty."""
    while box:
        fd, buf = box[0]
        try:
            fdpass.send_with_fds(sock, buf, (fd,), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            pass
        box.popleft()
        os.close(fd)
    return True


def _drain_queue(pool):
    """Yields (bytes, fd) of every connection in the pool's kernel queue, without
    blocking (each fd is the caller's)."""
    while True:
        try:
            data, fds = fdpass.recv_with_fds(pool.queue_out, protocol.MAX_HANDOFF_BYTES,
                                             socket.MSG_DONTWAIT, maxfds=1)
        except (BlockingIOError, RuntimeError):
            return
        for fd in fds:
            yield data, fd
        if not fds:
            # a message without a descriptor takes no slot of its own; keep reading
            continue


def _readable(sock: socket.socket) -> bool:
    return sockets.wait_fd(sock, select.POLLIN, 0)
