"""Listening sockets, queue socketpairs and the eventfd semaphore.

The supervisor creates every listening socket once and keeps it for its whole life, so a
front end that dies and is replaced gets the same socket back: connections waiting in
its backlog are never reset (closing a SO_REUSEPORT socket drops its backlog).
"""
from __future__ import annotations

import os
import select
import socket

#: TCP_DEFER_ACCEPT: accept() returns only once the client has sent data, so the front
#: end can usually read the whole head in the same wake-up.
_DEFER_ACCEPT_SECONDS = 5


def listen_tcp(host: str, port: int, backlog: int = 4096, reuseport: bool = True) -> socket.socket:
    """Bind and listen on (host, port).

    Takes: an IPv4/IPv6 literal or name, a port, the backlog, whether to join a
    SO_REUSEPORT group (one socket per front-end slot, so the kernel spreads
    connections across front ends without a thundering herd).
    Returns: a non-blocking listening socket (inheritable=False; pass it explicitly).
    Raises: OSError (EADDRINUSE, EACCES, ...) with the address in the message.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, _DEFER_ACCEPT_SECONDS)
        # accepted sockets inherit it: responses go out without Nagle delays, and no
        # process on the request path pays a setsockopt per connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise OSError(exc.errno, f"cannot listen on {shown}: {exc.strerror}") from None
    return sock


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    """Returns a connected AF_UNIX SOCK_SEQPACKET pair (CLOEXEC, blocking).

    Note: the receiving end holds at most net.unix.max_dgram_qlen (+1) messages; a sender
    with MSG_DONTWAIT then gets EAGAIN. Callers must plan for that (see protocol.py).
    """
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def enlarge_buffers(sock: socket.socket, size: int = 1 << 20) -> None:
    """Raise SO_SNDBUF/SO_RCVBUF (bytes-in-flight room; the message count limit stays)."""
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass


def semaphore(count: int) -> int:
    """Returns a non-blocking eventfd in semaphore mode holding `count` slots (CLOEXEC).

    read() takes one slot (BlockingIOError when none is left), write(1) gives one back.
    """
    return os.eventfd(count, os.EFD_SEMAPHORE | os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def semaphore_value(fd: int) -> int:
    """Returns the free slots of an eventfd without taking any (reads /proc fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"eventfd-count:"):
                return int(line.split()[1], 16)
    raise OSError(f"fd {fd} is not an eventfd")


SLOT = (1).to_bytes(8, "little")


def take_slot(fd: int) -> bool:
    """Takes one slot; returns False when none is free."""
    try:
        os.read(fd, 8)
        return True
    except BlockingIOError:
        return False


def give_slot(fd: int, n: int = 1) -> None:
    """Gives n slots back."""
    os.write(fd, n.to_bytes(8, "little"))


def reset_connection(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0): the tcp_reset load-balancer answer."""
    import struct
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def wait_fd(fd, events: int, timeout: float | None) -> bool:
    """Waits until `fd` (an int or anything with fileno()) is ready for `events`
    (select.POLLIN / POLLOUT), at most `timeout` seconds (None: forever).
    Returns: whether it is ready (an error or hang-up counts as ready: the next call
    on it says which). poll(2), not select(2): select refuses descriptors from 1024 up,
    and a supervisor of a thousand pools holds several thousand.
    Raises: OSError from poll (EINTR is retried by Python)."""
    p = select.poll()
    p.register(fd, events)
    ms = -1 if timeout is None else max(0, int(timeout * 1000))
    return bool(p.poll(ms))
