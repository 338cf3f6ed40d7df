"""The documents hostctl, the control socket and /metrics read: status, counters,
live requests, orphans. The JSON shapes are contracts (extend, never change);
tests/unit/test_supervisor_views.py pins their key sets.

Counters are monotonic: every `_total` adds the pool's exited workers (PoolTotals,
filled at each exit by processes.py) to its live ones. Live requests are asked of every
worker's control thread and answered when the replies are in or the deadline passes,
without ever blocking the loop (a pending query per `seq`).
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

import dataclasses
import os
import time

from hostd import protocol
from hostd.lifecycle import WorkerState
from hostd.loophttp import Deferred
from hostd.supervisor.records import show_addr
from kernel import procfs

if TYPE_CHECKING:
    from hostd.supervisor.frontends import FrontEnds
    from hostd.supervisor.placement import Placement
    from hostd.supervisor.processes import Processes
    from hostd.supervisor.records import Registry

W = WorkerState
#: how long `hostctl requests` waits for the workers' replies
REQUESTS_TIMEOUT = 1.0
#: how old a process's PSS and private figures in status may be (procfs.PssCache)
PSS_MAX_AGE = 2.0


class _Query:
    def __init__(self, asked: list, deadline: float, answer: Deferred):
        self.asked, self.deadline, self.answer = asked, deadline, answer
        self.replies: dict[int, list] = {}    # id(worker) -> its requests


@dataclass(eq=False)
class Views:
    registry: Registry
    _: KW_ONLY
    processes: Processes
    frontends: FrontEnds
    placement: Placement

    def __post_init__(self):
        self.started_at = time.time()
        self.query_seq = 0
        self.queries: dict[int, _Query] = {}
        self.pss = procfs.PssCache(PSS_MAX_AGE)

    # ------------------------------------------------------------------ status
    def status(self, name: str | None = None, state: str | None = None) -> dict:
        """The `hostctl status` document; name: only that pool (`hostctl status POOL`),
        state: only pools in that state (`--state started`). The work is the pools it
        shows: a pool filter does not walk the other pools."""
        if name is not None:
            one = self.registry.pools.get(name)
            chosen = [one] if one is not None else []
        else:
            chosen = sorted(self.registry.pools.values(), key=lambda p: p.name)
        if state is not None:
            chosen = [p for p in chosen if p.state.value == state]
        pools = []
        certs = self.processes.certificates
        for pool in chosen:
            workers = []
            for w in sorted(pool.workers.values(), key=lambda w: w.id):
                if w.state == W.EXITED:
                    continue
                s = w.stats()
                ws = w.board.read_ws() if w.board is not None else {}
                workers.append({"pid": w.pid, "id": w.id, "state": w.state.value,
                                "requests": s["requests"], "active": s["active"],
                                "connections": s["connections"],
                                "busy": round(w.busy_frac, 3), "rss": procfs.rss(w.pid),
                                **dict(zip(("pss", "private"), self._pss(w))),
                                "cpu_seconds": round(procfs.cpu_seconds(w.pid), 3),
                                "generation": w.generation,
                                "started": round(w.started_wall, 3),
                                "start_reason": w.spawn_reason,
                                "last_recycle_reason": w.spawn_reason[len("recycle: "):]
                                if w.spawn_reason.startswith("recycle: ") else None,
                                "recycling": w.recycle.reason or None,
                                "boot_ms": w.boot or None,
                                "preloaded": w.via is not None,
                                # an ASGI worker's WebSockets (0 for WSGI)
                                "websockets": {"open": ws.get("open", 0),
                                               "messages": ws.get("messages", 0)}})
            cfg = pool.cfg
            decision = self.placement.decide(pool) if cfg else None
            pools.append({"name": pool.name, "state": pool.state.value,
                          "bindings": pool.binding_texts,
                          "workers": workers, "queued": pool.queued(),
                          "processes": cfg.processes if cfg else 0,
                          "start_mode": cfg.start_mode if cfg else None,
                          "error": pool.error,
                          "recycles": dict(pool.recycles),
                          "limits": dataclasses.asdict(cfg.limits) if cfg else None,
                          # the table in force, null when not isolated (why: reason)
                          "isolation": dataclasses.asdict(cfg.isolation)
                          if decision and decision.isolated else None,
                          "isolated": decision.isolated if decision else None,
                          "isolation_reason": decision.why if decision else None,
                          "identity": pool.identity.to_dict() if pool.identity else None,
                          "preload": cfg.preload if cfg else False,
                          "zygote": self._zygote(pool),
                          "tls": certs.status(pool, pool.tls_counters())
                          if cfg is not None and cfg.tls is not None else None,
                          "interface": cfg.interface if cfg else None,
                          "websockets_open": sum(w["websockets"]["open"] for w in workers),
                          "file": str(cfg.file) if cfg else None})
        ids = self.placement.frontend_ids
        return {"pid": self.registry.pid, "started": round(self.started_at, 3),
                "listen": [show_addr(h, p) for h, p in self.registry.main.listen],
                # the TLS listeners bound at start (a reload does not change them)
                "listen_tls": [show_addr(h, p) for h, p in certs.listen_tls],
                "frontends": [{"slot": fe.slot, "pid": fe.pid} for fe in
                              sorted(self.frontends.by_slot.values(), key=lambda f: f.slot)],
                "zygote": self.processes.zygote_pid, "pools": pools,
                "frontend_uid": ids[0] if ids else os.geteuid()}

    def _pss(self, w) -> tuple[int, int]:
        """(PSS, private) of worker `w`, read again once it is another process or in
        another state (PssCache)."""
        return self.pss.get(w.pid, (w.started_wall, w.state))

    def _zygote(self, pool) -> dict | None:
        """A preload pool's own zygote (the warm tier), with its memory."""
        doc = self.processes.zygote_doc(pool)
        if doc is not None and doc.get("pid"):
            doc["rss"] = procfs.rss(doc["pid"])
            doc["pss"], doc["private"] = self.pss.get(doc["pid"], (doc.get("started"),
                                                                  doc.get("state")))
        return doc

    # ------------------------------------------------------------------ counters
    def tick_second(self, now: float) -> None:
        """Duty, once a second: a requests sample per pool that has workers, or had
        them within its window (requests_per_second); a pool without is dropped once its
        window is flat, and its rate is 0."""
        sampled = self.registry.sampled
        for key, pool in list(sampled.items()):
            samples = pool.rate_samples
            samples.append((now, pool.requests()))
            if not pool.workers and samples[0][1] == samples[-1][1]:
                samples.clear()
                del sampled[key]

    def counters(self, name: str | None = None) -> dict:
        """The counters document (`hostctl counters`, /metrics). Per pool: requests
        total, requests/s over the last 10 s, active, queued, responses by class, bytes
        in/out, workers, memory, CPU seconds, recycles by reason, crashes, rapid-fail
        stops, queue-full rejections; per binding: requests, responses by class, bytes
        out; "tls": null, or for a pool with [tls] the Scoreboard.TLS_FIELDS counts
        (handshakes, tls1_2, tls1_3, failed_* by reason, misdirected) and
        "certificates": [{"file", "not_after" (seconds since the epoch)}]; "websockets":
        null, or for an ASGI pool {"open" (now), "messages", "upgraded"} (Scoreboard.
        WS_FIELDS sums). Every total counts the pool's exited workers too."""
        out = []
        certs = self.processes.certificates
        for pool in sorted(self.registry.pools.values(), key=lambda p: p.name):
            if name is not None and pool.name != name:
                continue
            totals = pool.totals
            texts = pool.binding_texts
            per = {t: list(totals.counts.get(t, [0] * protocol.Scoreboard.COUNT_FIELDS))
                   for t in texts}
            bytes_in, cpu = totals.bytes_in, totals.cpu
            # the pool's memory: its cgroup's own charge when it has one (page cache
            # and its /tmp included), else its workers' PSS (shared pages once)
            cg = pool.limits.cg if pool.limits is not None else None
            memory = None
            if cg is not None:
                try:
                    memory = cg.memory_usage()
                except (OSError, ValueError):
                    pass
            active = pss = 0
            for w in pool.workers.values():
                if w.board is None:
                    continue
                b_in, counts = w.board.read_counts(len(texts) or 1)
                bytes_in += b_in
                for t, values in zip(texts, counts):
                    acc = per[t]
                    for i, v in enumerate(values):
                        acc[i] += v
                active += w.stats()["active"]
                if memory is None:
                    pss += self._pss(w)[0]
                cpu += procfs.cpu_seconds(w.pid)
            out.append({
                "name": pool.name, "state": pool.state.value,
                "requests": pool.requests(), "requests_per_second": round(_rate(pool), 2),
                "active": active, "queued": pool.queued(),
                "responses": {f"{c}xx": sum(v[c] for v in per.values()) for c in range(1, 6)},
                "bytes_in": bytes_in,
                "bytes_out": sum(v[6] for v in per.values()),
                "workers": len(pool.alive()),
                "memory": pss if memory is None else memory, "cpu_seconds": round(cpu, 3),
                "recycles": dict(pool.recycles), "crashes": totals.crashes,
                "rapid_fail_stops": totals.rapid_fail_stops, "queue_full": totals.queue_full,
                "bindings": [{"binding": t, "requests": v[0],
                              "responses": {f"{c}xx": v[c] for c in range(1, 6)},
                              "bytes_out": v[6]} for t, v in per.items()],
                # HTTPS (null without [tls]): Scoreboard.TLS_FIELDS sums, and each
                # certificate's expiry
                "tls": dict(pool.tls_counters(), certificates=[
                    {"file": f, "not_after": round(t)} for f, t in certs.not_after(pool)])
                if pool.cfg is not None and pool.cfg.tls is not None else None,
                # ASGI (null for WSGI): WebSockets open now, messages and upgrades so far
                "websockets": pool.ws_counters()
                if pool.cfg is not None and pool.cfg.interface == "asgi" else None,
            })
        # the front ends' own refusals, before any pool is known (hostd/frontend.py's
        # limits.Counters names: reject_400, header_timeout, tls_not_tls, ...)
        return {"pools": out, "front_ends": {"refused": dict(sorted(self.frontends.refused.items()))}}

    # ------------------------------------------------------------------ live requests
    def live_requests(self, name: str | None = None,
                      timeout: float = REQUESTS_TIMEOUT) -> Deferred:
        """`hostctl requests`: asks every worker's control thread (it answers even when
        the app hangs) for the requests it runs now. Returns a Deferred resolved with
        (200, {"requests": [...]}, longest first) once every worker answered or
        `timeout` passed; the loop goes on meanwhile."""
        self.query_seq += 1
        seq = self.query_seq
        ask = protocol.requests(seq)
        asked = [w for pool in self.registry.pools.values()
                 if name is None or pool.name == name
                 for w in pool.workers.values()
                 if w.state in (W.READY, W.DRAINING, W.ORPHANED) and self.processes.send(w, ask)]
        query = _Query(asked, time.monotonic() + timeout, Deferred())
        self.queries[seq] = query
        self._maybe_answer(seq, time.monotonic())
        return query.answer

    def on_requests_reply(self, worker, seq, requests: list) -> None:
        query = self.queries.get(seq)
        if query is None or worker not in query.asked:
            return
        query.replies[id(worker)] = [dict(r, pool=worker.pool.name, worker_pid=worker.pid)
                                     for r in requests if isinstance(r, dict)]
        self._maybe_answer(seq, time.monotonic())

    def tick(self, now: float) -> None:
        """Duty: answers the queries whose deadline passed."""
        for seq in list(self.queries):
            self._maybe_answer(seq, now)

    def _maybe_answer(self, seq: int, now: float) -> None:
        query = self.queries[seq]
        waiting = [w for w in query.asked if id(w) not in query.replies and w.ctl is not None]
        if waiting and now < query.deadline:
            return
        del self.queries[seq]
        out = [r for w in query.asked for r in query.replies.get(id(w), [])]
        out.sort(key=lambda r: -r.get("elapsed", 0))
        query.answer.resolve(200, {"requests": out})

    # ------------------------------------------------------------------ orphans
    def orphans(self) -> list[dict]:
        """`hostctl orphans`."""
        now = time.monotonic()
        return [{"pool": w.pool.name, "pid": w.pid, "id": w.id, "reason": w.reason,
                 "orphaned_for": round(now - w.orphaned_at, 1), "rss": procfs.rss(w.pid)}
                for w in self.registry.every_worker() if w.state == W.ORPHANED]

    def pool_identity(self, name: str) -> tuple[bool, dict]:
        """`hostctl pool identity NAME`: the uid/gid the pool's workers run as."""
        pool = self.registry.pools.get(name)
        if pool is None:
            return False, {"ok": False, "message": f"no pool named {name}"}
        if pool.cfg is None:
            return False, {"ok": False,
                           "message": f"pool {name} has a broken configuration: {pool.error}"}
        return self.placement.identity_doc(pool)


def _rate(pool) -> float:
    samples = pool.rate_samples
    if len(samples) < 2:
        return 0.0
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
