"""The front ends (the HTTP.sys role): start, restart, and feed them the pool table.

Owns: the listening sockets (made once in `bind`, kept until exit, lent to every front
end of a slot: `listen`'s, then `listen_tls`'s, whose ports each front end is told,
FrontEndSettings.tls_ports) and each front end's control channel (closed when it is
reaped). Front ends are reaped by processes.py (`track`), which reports their exit as
ChildExited.
Reports: ConnectionParked (a pool queue was full) and QueueFull (their rejection
counts); connections.py and pools.py act on them. Keeps: the front ends' own refusals
(`refused`: malformed heads, timeouts, refused TLS hellos), which views.py shows.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING

import os
import socket
import traceback

from hostd import log, protocol, sdnotify
from hostd.supervisor.events import ConnectionParked, QueueFull
from hostd.supervisor.records import FrontEndProc, exit_text
from kernel import fdpass, proc, sockets

if TYPE_CHECKING:
    from hostd.supervisor.connections import Connections
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.processes import Processes
    from hostd.supervisor.reactor import Reactor
    from hostd.supervisor.records import Registry

#: pools whose descriptors travel in one POOL_FDS message (SCM_RIGHTS takes at most 253)
POOL_FDS_BATCH = 64
OWNER = "frontend"


def _entry(p) -> dict:
    """A pool's entry in the front ends' table (protocol.POOLS): tls, whether it has a
    [tls] table; redirect, its redirect_http, with redirect_port (the port the 308's
    Location names, 443: none) when true."""
    cfg = p.cfg
    tls = cfg.tls if cfg else None
    entry = {"state": p.state.value,
             "lb": cfg.load_balancer_capabilities if cfg else "http_503",
             "max_body": cfg.max_body_size if cfg and cfg.max_body_size is not None
             else -1,
             "tls": tls is not None, "redirect": bool(tls is not None and tls.redirect_http)}
    if entry["redirect"]:
        entry["redirect_port"] = tls.redirect_port
    return entry


def _pools_message(table: dict, routes: list, tls_default: str) -> bytes:
    """protocol.POOLS with its top-level "tls_default" (protocol.pools() predates it)."""
    return protocol.encode({"t": protocol.POOLS, "pools": table, "routes": routes,
                            "tls_default": tls_default})


@dataclass(eq=False)
class FrontEnds:
    registry: Registry
    reactor: Reactor
    processes: Processes
    connections: Connections
    placement: Placement

    def __post_init__(self):
        self.slots: list[list[socket.socket]] = []
        #: the ports of the TLS listeners (listen_tls), as bound
        self.tls_ports: frozenset[int] = frozenset()
        self.by_slot: dict[int, FrontEndProc] = {}
        self.pids: dict[int, int] = {}          # pid -> slot
        #: every front end's own refusals since hostd started, by limits.Counters name
        #: (protocol.COUNTERS' "refused"): `hostctl counters`, /metrics
        self.refused: collections.Counter = collections.Counter()

    # ------------------------------------------------------------------ sockets
    def bind(self) -> None:
        """Makes the listening sockets, `listen`'s then `listen_tls`'s (same options):
        one set per front end (SO_REUSEPORT), or the ones systemd passed (socket
        activation: every front end shares them; a passed socket is a TLS listener when
        its address is one of listen_tls). Sets tls_ports and the connections' listen
        ports (both kinds: a worker may hand either back).
        Raises: OSError."""
        main = self.registry.main
        n = main.frontends or os.cpu_count() or 1
        addresses = list(main.listen) + list(main.listen_tls)
        passed = sdnotify.listen_fds()
        if passed:
            shared = sdnotify.match_listen(passed, addresses)
            self.slots = [shared for _slot in range(n)]
        else:
            for _slot in range(n):
                self.slots.append([sockets.listen_tcp(h, p) for h, p in addresses])
        self.tls_ports = frozenset(s.getsockname()[1] for s in self.slots[0][len(main.listen):])
        self.connections.listen_ports = {s.getsockname()[1] for slot in self.slots for s in slot}

    def close_sockets(self) -> None:
        for slot in self.slots:
            for s in slot:
                s.close()

    # ------------------------------------------------------------------ processes
    def start_all(self) -> None:
        for slot in range(len(self.slots)):
            self.start(slot)

    def start(self, slot: int) -> None:
        """Forks the front end of `slot` (hostd/frontend.py) and sends it the pools."""
        mine, theirs = sockets.seqpacket_pair()
        sockets.enlarge_buffers(mine)
        listeners = self.slots[slot]
        reroute_out = self.connections.reroute_out
        settings = protocol.FrontEndSettings(**self.connections.limit_settings(),
                                             identity=self.placement.frontend_ids,
                                             supervisor_pid=self.registry.pid,
                                             tls_ports=self.tls_ports)
        keep = {theirs.fileno(), reroute_out.fileno(), 1, 2, settings.conn_sem} | \
            {s.fileno() for s in listeners}
        pid = os.fork()
        if pid == 0:
            code = protocol.EXIT_WORKER_BOOT
            try:
                proc.close_fds_except(keep)
                from hostd.frontend import frontend_main
                code = frontend_main(slot, listeners, theirs, reroute_out, settings)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        fe = FrontEndProc(slot, pid, mine)
        self.by_slot[slot] = fe
        self.pids[pid] = slot
        self.processes.track(pid, OWNER)
        self.reactor.watch(mine.fileno(), lambda ev, fe=fe: self.read(fe))
        self.send_pools(fe)
        log.info("frontend_start", f"front end #{slot} started", SLOT=slot, CHILD_PID=pid)

    def on_exited(self, pid: int, status: int) -> None:
        """A front end was reaped: restarted, unless hostd is stopping."""
        slot = self.pids.pop(pid, None)
        if slot is None:
            return
        fe = self.by_slot.pop(slot, None)
        if fe is not None and fe.ctl is not None:
            self.reactor.unwatch(fe.ctl.fileno())
            fe.ctl.close()
        if self.registry.stopping:
            return
        log.error("frontend_crash", f"front end #{slot} exited "
                  f"({exit_text(os.waitstatus_to_exitcode(status))}); restarting", SLOT=slot)
        self.start(slot)

    # ------------------------------------------------------------------ the pool table
    def send_pools(self, fe: FrontEndProc) -> None:
        """Sends the front end the descriptors it lacks, then the pool table."""
        pools = self.registry.pools.values()
        missing = [p for p in pools if (p.name, id(p.queue_in)) not in fe.known_fds]
        for i in range(0, len(missing), POOL_FDS_BATCH):
            batch = missing[i:i + POOL_FDS_BATCH]
            fds = [fd for p in batch for fd in (p.queue_in.fileno(), p.sem, p.csem) if fd != -1]
            try:
                fdpass.send_with_fds(fe.ctl, protocol.pool_fds(
                    [p.name for p in batch], [p.csem >= 0 for p in batch]), fds)
            except OSError:
                return   # it died; reaping restarts it and sends everything again
            fe.known_fds.update((p.name, id(p.queue_in)) for p in batch)
        table = {p.name: _entry(p) for p in pools}
        try:
            fe.ctl.sendall(_pools_message(table, self.registry.router_table(),
                                          self.registry.main.tls_default_pool))
        except OSError:
            pass
        fe.known_fds &= {(p.name, id(p.queue_in)) for p in pools}

    def broadcast(self, changed=None) -> None:
        """Every front end gets the current pool table. changed: the pools whose state
        alone changed (no pool added or removed, no binding changed): a front end that
        knows their queues gets just their entries (protocol.POOL_STATES), so stopping
        500 of 1,000 pools does not send the whole table 500 times."""
        for fe in self.by_slot.values():
            if changed is not None and all((p.name, id(p.queue_in)) in fe.known_fds
                                           for p in changed):
                try:
                    fe.ctl.sendall(protocol.pool_states({p.name: _entry(p) for p in changed}))
                except OSError:
                    pass    # it died; reaping restarts it and sends everything again
            else:
                self.send_pools(fe)

    def read(self, fe: FrontEndProc) -> None:
        """A front end's channel is readable: parked connections and counters."""
        for _ in range(64):
            try:
                data, fds = fdpass.recv_with_fds(fe.ctl, protocol.MAX_HANDOFF_BYTES + 256,
                                                 socket.MSG_DONTWAIT, maxfds=1)
            except (OSError, RuntimeError):
                return
            if not data:
                return
            park = protocol.decode_park(data) if fds else None
            if park is not None:
                self.reactor.post(ConnectionParked(park[0], fds[0], park[1]))
                continue
            for fd in fds:
                os.close(fd)    # a descriptor with no PARK frame: not ours to keep
            if data[:1] == b"{":
                try:
                    msg = protocol.decode(data)
                except ValueError:
                    continue
                if msg["t"] == protocol.COUNTERS:
                    for k, n in (msg.get("refused") or {}).items():
                        if isinstance(n, int) and n > 0:
                            self.refused[str(k)] += n
                    self.reactor.post(QueueFull(dict(msg.get("queue_full") or {})))

    # ------------------------------------------------------------------ stop
    def stop_all(self) -> None:
        """Phase one of a stop: every front end stops accepting, finishes, exits."""
        for fe in self.by_slot.values():
            try:
                fe.ctl.sendall(protocol.stop())
            except OSError:
                pass

    def close_channels(self) -> None:
        for fe in self.by_slot.values():
            if fe.ctl is not None:
                self.reactor.unwatch(fe.ctl.fileno())
                fe.ctl.close()
                fe.ctl = None
