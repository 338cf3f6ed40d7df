"""File-descriptor passing over AF_UNIX sockets (SCM_RIGHTS).

Python 3.11's socket.send_fds/recv_fds ignore their flags argument, so these call
sendmsg/recvmsg directly: MSG_DONTWAIT matters on the hot path, where a full queue
must answer EAGAIN instead of blocking the front end.
"""
from __future__ import annotations

import array
import socket

_FD_SIZE = array.array("i").itemsize

#: ancillary buffer size for up to 8 descriptors in one message
_ANC_8 = socket.CMSG_SPACE(8 * _FD_SIZE)
#: plain ints: socket.MSG_* are enum.IntFlag members, and one `&` of those costs ~1 µs
#: (enum machinery), on the path of every connection a worker dequeues
_TRUNCATED = int(socket.MSG_CTRUNC | socket.MSG_TRUNC)
_SOL_SOCKET, _SCM_RIGHTS = int(socket.SOL_SOCKET), int(socket.SCM_RIGHTS)


def send_with_fds(sock: socket.socket, data: bytes, fds: list[int] | tuple[int, ...],
                  flags: int = 0) -> int:
    """Send one message carrying `data` and the descriptors `fds`.

    Takes: a connected AF_UNIX socket, the payload, descriptors to duplicate into the
    receiver, send flags (e.g. socket.MSG_DONTWAIT).
    Returns: the number of payload bytes sent.
    Raises: BlockingIOError (EAGAIN) when the receiver's queue is full and
    MSG_DONTWAIT was given; OSError (EPIPE, ECONNREFUSED, ...) otherwise.
    """
    if not fds:
        return sock.sendmsg([data], [], flags)
    return sock.sendmsg([data], [(_SOL_SOCKET, _SCM_RIGHTS,
                                  array.array("i", fds).tobytes())], flags)


def recv_with_fds(sock: socket.socket, bufsize: int, flags: int = 0,
                  maxfds: int = 8) -> tuple[bytes, list[int]]:
    """Receive one message and the descriptors it carries.

    Takes: an AF_UNIX socket, the largest payload expected, recv flags, the largest
    number of descriptors expected.
    Returns: (payload, descriptors); (b"", []) means the peer closed (SEQPACKET EOF).
    Every returned descriptor is owned by the caller, who must close it.
    Raises: BlockingIOError when nothing is waiting and MSG_DONTWAIT was given;
    OSError from recvmsg. Descriptors that arrive truncated (MSG_CTRUNC) are closed
    and RuntimeError is raised, since losing a descriptor silently would leak a
    client connection.
    """
    data, ancdata, msg_flags, _addr = sock.recvmsg(bufsize, _anc_size(maxfds), flags)
    return data, _take_fds(ancdata, msg_flags)


def recv_into_with_fds(sock: socket.socket, buf, flags: int = 0,
                       maxfds: int = 8) -> tuple[int, list[int]]:
    """Like recv_with_fds, into a caller-owned buffer (a bytearray or memoryview).

    The hot path (a worker dequeuing a connection) reuses one buffer: recvmsg() with a
    large bufsize allocates that much per call, and above malloc's mmap threshold
    (128 KiB) that is an mmap + munmap per message.
    Returns: (payload length, descriptors); (0, []) means the peer closed.
    Raises: as recv_with_fds.
    """
    nbytes, ancdata, msg_flags, _addr = sock.recvmsg_into([buf], _anc_size(maxfds), flags)
    return nbytes, _take_fds(ancdata, msg_flags)


def _anc_size(maxfds: int) -> int:
    return _ANC_8 if maxfds <= 8 else socket.CMSG_SPACE(maxfds * _FD_SIZE)


def _take_fds(ancdata, msg_flags: int) -> list[int]:
    """The descriptors of one message; all closed and RuntimeError when it was truncated."""
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD_SIZE
            fds.extend(array.array("i", payload[:usable]))
    if msg_flags & _TRUNCATED:
        for fd in fds:
            _close_quietly(fd)
        raise RuntimeError(f"message truncated (flags={msg_flags:#x}); descriptors dropped")
    return fds


def _close_quietly(fd: int) -> None:
    import os
    try:
        os.close(fd)
    except OSError:
        pass
