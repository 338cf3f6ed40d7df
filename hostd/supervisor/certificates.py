"""The pools' certificates as the supervisor handles them (HTTPS): what a worker's
WorkerSpec gets (`spec`), the per-pool snapshots of the good pairs
(hostd.tlsconf.Snapshots under run_dir/tls), what a reload finds (`refresh`), expiry
warnings (`check_expiry`, a duty once a day) and the status document's `tls`.

The supervisor never reads a private key: it stats key files, copies them kernel-side
into the snapshots and has a child process check a changed pair
(tlsconf.check_in_subprocess). It reads certificates (public) for their names and
expiry. A bottom room beside placement: it decides nothing about workers; pools.py
recycles a pool whose certificate changed.

Owns: the snapshot directory run_dir/tls (made at the first TLS worker, removed per
pool when its [tls] goes or the pool is retired).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hostd import log, tlsconf

if TYPE_CHECKING:
    from hostd.supervisor.records import Pool, Registry

#: seconds between two expiry checks of every TLS pool (besides start and reload)
EXPIRY_CHECK_INTERVAL = 86400.0


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class Certificates:
    """Takes the Registry (its main config at construction: the TLS listeners bound at
    start, which a reload does not change) and optionally a tlsconf.Snapshots (tests
    pass one with another check)."""

    def __init__(self, registry: "Registry", snapshots: tlsconf.Snapshots | None = None):
        self.registry = registry
        main = registry.main
        #: the TLS listeners as bound at start ((host, port), ...): a reload warns
        self.listen_tls = tuple(getattr(main, "listen_tls", ()))
        self.ports = sorted({port for _, port in self.listen_tls})
        self.snapshots = snapshots if snapshots is not None else \
            tlsconf.Snapshots(main.run_dir)
        #: pool name -> the last problem with its pairs (a refused reload, a failed copy)
        self.errors: dict[str, str] = {}
        self.next_expiry_check = 0.0

    # ------------------------------------------------------------------ workers
    def spec(self, pool: "Pool") -> dict | None:
        """WorkerSpec.tls of a new worker (or pool zygote) of `pool`: {"pairs":
        [[cert, key], ...] (the snapshot's copies; made now, unchecked, the first
        time), "names": [[name, ...] per pair], "min_version"}; None for a pool without
        [tls]. When the first copy fails (logged, tls_load_failed) the live paths are
        given: the worker reports what keeps it from loading them."""
        cfg = pool.cfg
        if cfg is None or cfg.tls is None:
            return None
        try:
            pairs = self.snapshots.current(pool.name, cfg.tls.pairs)
        except OSError as exc:
            problem = f"cannot copy {exc.filename}: {exc.strerror or exc}"
            self._failed(pool.name, exc.filename or cfg.tls.pairs[0][0], problem,
                         "its worker loads the live files")
            pairs = [list(p) for p in cfg.tls.pairs]
        return {"pairs": pairs, "names": [list(self._names(c)) for c, _ in pairs],
                "min_version": cfg.tls.min_version}

    @staticmethod
    def _names(cert: str) -> tuple[str, ...]:
        try:
            return tlsconf.cert_info(cert).names
        except (OSError, ValueError):
            return ()        # the worker reports the certificate it cannot load

    # ------------------------------------------------------------------ reload
    def refresh(self, name: str, cfg) -> bool:
        """Reload, for a pool that stays (its new config `cfg`): its live pairs are
        compared with its snapshot; changed ones are checked in a child process and
        become current only when good. A bad pair is logged (tls_load_failed, with
        the file and OpenSSL's reason) and the pool keeps its previous pairs. A pool
        whose [tls] is gone loses its snapshot. Returns: whether new pairs are current
        (its workers must be replaced for new connections to get them)."""
        if cfg is None or cfg.tls is None:
            self.forget(name)
            return False
        changed, problem = self.snapshots.refresh(name, cfg.tls.pairs, cfg.tls.min_version)
        if problem is not None:
            self._failed(name, _file_in(problem, cfg.tls.pairs), problem,
                         "the pool keeps its previous certificate")
            return False
        self.errors.pop(name, None)
        if changed:
            log.notice("tls_reloaded", f"pool {name}: new certificate loads; replacing its "
                       "workers", POOL=name, FILE=cfg.tls.pairs[0][0])
        return changed

    def forget(self, name: str) -> None:
        """The pool is retired, broken, or has no [tls] any more: its copies go."""
        self.errors.pop(name, None)
        if self.snapshots.has(name):
            self.snapshots.remove(name)

    def _failed(self, name: str, file: str, problem: str, outcome: str) -> None:
        self.errors[name] = problem
        log.error("tls_load_failed", f"pool {name}: {problem}; {outcome}", POOL=name,
                  FILE=str(file), REASON=problem[:500])

    # ------------------------------------------------------------------ expiry
    def in_use(self, pool: "Pool") -> list[tuple[str, str]]:
        """(the configured certificate file, the file its info is read from: the
        snapshot's copy when there is one, else the live file) per pair."""
        cfg = pool.cfg
        if cfg is None or cfg.tls is None:
            return []
        copies = self.snapshots.get(pool.name)
        live = [c for c, _ in cfg.tls.pairs]
        if copies is None or len(copies) != len(live):
            return [(c, c) for c in live]
        return [(c, copy[0]) for c, copy in zip(live, copies)]

    def check_expiry(self, pools, now: float | None = None) -> int:
        """Logs tls_expiring (a warning) for each certificate of `pools` that expires
        within tlsconf.EXPIRY_WARNING_DAYS or has expired. Reads certificates only
        (cached by stat). Returns how many were logged."""
        now = time.time() if now is None else now
        n = 0
        for pool in pools:
            for file, source in self.in_use(pool):
                try:
                    info = tlsconf.cert_info(source)
                except (OSError, ValueError):
                    continue          # not loadable: tls_load_failed says so
                days = info.expires_in_days(now)
                if days >= tlsconf.EXPIRY_WARNING_DAYS:
                    continue
                what = f"EXPIRED {-days:g} days ago" if days < 0 else f"expires in {days:g} days"
                log.warning("tls_expiring", f"pool {pool.name}: certificate {file} "
                            f"({info.subject}) {what} ({_iso(info.not_after)})",
                            POOL=pool.name, FILE=file, NOT_AFTER=_iso(info.not_after),
                            DAYS=days)
                n += 1
        return n

    def tick(self, now: float, pools) -> None:
        """Duty, once a second: every EXPIRY_CHECK_INTERVAL, check_expiry of `pools`
        (the first is the start's: the first tick only schedules the next)."""
        if not self.next_expiry_check:
            self.next_expiry_check = now + EXPIRY_CHECK_INTERVAL
        elif now >= self.next_expiry_check:
            self.next_expiry_check = now + EXPIRY_CHECK_INTERVAL
            self.check_expiry([p for p in pools if p.cfg is not None and p.cfg.tls])

    # ------------------------------------------------------------------ status
    def status(self, pool: "Pool", counters: dict) -> dict | None:
        """The status document's per-pool "tls": None without [tls], else
        {"certificates": [{"file", "subject", "names", "not_after" (ISO 8601 UTC),
        "expires_in_days"}], "min_version", "redirect_http", "counters" (`counters`:
        the TLS_FIELDS sums), "last_error": str or None}. A certificate that cannot be
        read has subject/names/not_after None and its "error"."""
        cfg = pool.cfg
        if cfg is None or cfg.tls is None:
            return None
        certs = []
        now = time.time()
        for file, source in self.in_use(pool):
            try:
                info = tlsconf.cert_info(source)
            except (OSError, ValueError) as exc:
                certs.append({"file": file, "subject": None, "names": [], "not_after": None,
                              "expires_in_days": None, "error": str(exc)})
                continue
            certs.append({"file": file, "subject": info.subject, "names": list(info.names),
                          "not_after": _iso(info.not_after),
                          "expires_in_days": info.expires_in_days(now)})
        return {"certificates": certs, "min_version": cfg.tls.min_version,
                "redirect_http": cfg.tls.redirect_http, "counters": counters,
                "last_error": self.errors.get(pool.name)}

    def not_after(self, pool: "Pool") -> list[tuple[str, float]]:
        """(certificate file, expiry as seconds since the epoch) per readable pair of
        `pool` (for /metrics); [] without [tls]."""
        out = []
        for file, source in self.in_use(pool):
            try:
                out.append((file, tlsconf.cert_info(source).not_after))
            except (OSError, ValueError):
                pass
        return out


def _file_in(problem: str, pairs) -> str:
    """The pool's file a problem names first (check_pair begins with the file at
    fault), else its first certificate."""
    named = [(problem.find(path), path) for pair in pairs for path in pair if path in problem]
    return min(named)[1] if named else (pairs[0][0] if pairs else "")
