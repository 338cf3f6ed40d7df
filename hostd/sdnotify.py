"""The sd_notify protocol: one datagram to $NOTIFY_SOCKET (a few lines, no dependency).

systemd's Type=notify waits for READY=1; RELOADING=1 (+ MONOTONIC_USEC) and STOPPING=1
tell it what hostd is doing; STATUS= shows in `systemctl status`. Without
$NOTIFY_SOCKET (not under systemd) every call does nothing.
"""
from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None):
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self.address = None
        self.sock = None
        if addr:
            # "@name" is an abstract socket: the leading NUL is the kernel's spelling
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, **fields) -> bool:
        """Sends KEY=value lines (keys upper-cased); returns False when not under
        systemd or when the send failed (never raises: notification is advisory)."""
        if self.sock is None:
            return False
        msg = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self.sock.sendto(msg, self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.send(ready=1, status=status) if status else self.send(ready=1)

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(reloading=1, monotonic_usec=usec)

    def stopping(self) -> bool:
        return self.send(stopping=1)

    def status(self, text: str) -> bool:
        return self.send(status=text)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
