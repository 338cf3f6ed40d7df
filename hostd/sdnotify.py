"""The sd_notify protocol: one datagram to $NOTIFY_SOCKET (a few lines, no dependency).

systemd's Type=notify waits for READY=1; RELOADING=1 (+ MONOTONIC_USEC) and STOPPING=1
tell it what hostd is doing; STATUS= shows in `systemctl status`; WATCHDOG=1 every
WATCHDOG_USEC/2 (sent from the supervisor's loop tick, so a hung loop gets hostd
restarted). Without $NOTIFY_SOCKET (not under systemd) every call does nothing.

`listen_fds()`: socket activation (systemd/hostd.socket), the LISTEN_FDS protocol;
`match_listen` orders what was passed like the configured addresses (the supervisor
gives it `listen` then `listen_tls`: a passed socket is a TLS listener by its address).
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
        #: seconds between WATCHDOG=1 (half of WatchdogSec), 0 = no watchdog
        self.watchdog_interval = 0.0
        usec = os.environ.get("WATCHDOG_USEC", "")
        wpid = os.environ.get("WATCHDOG_PID", "")
        if self.sock is not None and usec.isdigit() and int(usec) > 0 and \
                (not wpid or wpid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self.next_watchdog = 0.0
        self.last_status = None
        self.next_status = 0.0

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

    def watchdog(self, now: float) -> bool:
        """Call from the loop's tick: WATCHDOG=1 when half of WatchdogSec has passed."""
        if not self.watchdog_interval or now < self.next_watchdog:
            return False
        self.next_watchdog = now + self.watchdog_interval
        return self.send(watchdog=1)

    def status_changed(self, text: str) -> bool:
        """STATUS= only when it differs from the last one sent (cheap to call often)."""
        if self.sock is None or text == self.last_status:
            return False
        self.last_status = text
        return self.send(status=text)

    def tick(self, now: float, status_line) -> None:
        """The supervisor loop's tick: WATCHDOG=1 when due; STATUS= (status_line())
        at most once a second, and only when it changed."""
        if self.sock is None:
            return
        self.watchdog(now)
        if now >= self.next_status:
            self.next_status = now + 1.0
            self.status_changed(status_line())

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


SD_LISTEN_FDS_START = 3


def listen_fds(unset: bool = True) -> list[socket.socket]:
    """The sockets systemd passed (socket activation): fds 3..3+LISTEN_FDS-1, only when
    LISTEN_PID is this process. The variables are removed (children must not take them).
    Returns: socket objects (non-blocking, CLOEXEC), [] when none were passed."""
    pid = os.environ.get("LISTEN_PID", "")
    n = os.environ.get("LISTEN_FDS", "")
    if unset:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(k, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not n.isdigit():
        return []
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(n)):
        os.set_inheritable(fd, False)
        s = socket.socket(fileno=fd)
        s.setblocking(False)
        socks.append(s)
    return socks


def match_listen(socks: list[socket.socket], listen) -> list[socket.socket]:
    """Orders passed sockets like the configured addresses (by getsockname).
    Takes: the passed sockets, the addresses ((host, port), ...; [hostd] listen then
    listen_tls). Returns: one socket per address, in their order. A configured address
    systemd did not pass is bound here (one socket, shared); a passed socket no address
    asks for is logged and closed.
    Raises OSError when an address cannot be bound."""
    import ipaddress

    from hostd import log
    from kernel import sockets as ksockets

    def key(host, port):
        return (ipaddress.ip_address(host), port)

    by_addr = {}
    for s in socks:
        try:
            name = s.getsockname()
            if s.type != socket.SOCK_STREAM or not isinstance(name, tuple):
                raise ValueError("not a TCP socket")
            by_addr[key(name[0], name[1])] = s
        except (OSError, ValueError) as exc:
            log.warning("socket_activation", f"passed fd {s.fileno()} ignored: {exc}")
            s.close()
    out = []
    for host, port in listen:
        s = by_addr.pop(key(host, port), None)
        if s is None:
            log.warning("socket_activation", f"{host}:{port} was not passed by systemd; "
                        "binding it here (a restart resets its backlog)")
            s = ksockets.listen_tcp(host, port, reuseport=False)
        else:
            for level, opt, val in ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                                    (socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)):
                try:
                    s.setsockopt(level, opt, val)
                except OSError:
                    pass
        out.append(s)
    for (ip, port), s in by_addr.items():
        log.warning("socket_activation", f"passed socket {ip}:{port} is not in listen "
                    "or listen_tls; closed")
        s.close()
    log.info("socket_activation", f"{len(out)} listening socket(s) from systemd, shared by "
             "every front end", SOCKETS=len(out))
    return out
