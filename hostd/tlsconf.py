"""Certificates and keys as the supervisor handles them, without ever reading a key.

hostd's rule: a private key's bytes live only in its own pool's worker (or that pool's
preload zygote), which loads it as root before it drops privileges. The supervisor,
the main zygote and the front ends (forked from the supervisor) never read a key into
their memory. So this module:

* reads certificates only (`cert_info`: public data, cached by the file's stat);
* checks that a pair loads and matches in a short-lived child process
  (`check_in_subprocess`, which runs `python -m hostd.tlsconf check CERT KEY ...`);
  `check_pair` is what that child (and `hostd --check-config`, a process of its own)
  runs in-process;
* keeps, per pool, a snapshot of its current good pairs under RUN_DIR/tls/POOL/
  (`Snapshots`), copied kernel-side (copy_file_range, else sendfile: no user-space
  buffer), so a later broken edit of the live files never reaches new workers: a
  reload checks the changed files' copies before they become current.

The CLI: `python -m hostd.tlsconf check [--min-version 1.2|1.3] CERT KEY [CERT KEY ...]`
prints one JSON line {"results": [null | "reason", ...]} (one per pair, in order) and
exits 0 when every pair is good, 1 otherwise, 2 on a usage error.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: seconds check_in_subprocess waits for its child by default
CHECK_TIMEOUT = 10.0
#: days before expiry from which a certificate is reported (tls_expiring, check-config)
EXPIRY_WARNING_DAYS = 14
#: TLS versions of [tls] min_version
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


# --- certificates (public: the supervisor may read them) ---------------------------
@dataclass(frozen=True)
class CertInfo:
    """A certificate's leaf, as hostctl status and a worker's SNI choice need it.

    subject, issuer: "CN=shop.example, O=Shop" (RFC 4514 order as OpenSSL gives it);
    names: the subjectAltName dNSNames, else the subject's commonName (wildcards as
    "*.example.com"), lowercased; not_after: its expiry, seconds since the epoch."""

    subject: str
    names: tuple[str, ...]
    not_after: float
    issuer: str

    def expires_in_days(self, now: float | None = None) -> float:
        """Days until not_after (negative once expired), one decimal."""
        return round((self.not_after - (time.time() if now is None else now)) / 86400, 1)


_ATTR = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
         "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
         "emailAddress": "emailAddress", "domainComponent": "DC"}
_info_cache: dict[tuple, CertInfo] = {}


def _dn(rdns) -> str:
    return ", ".join("+".join(f"{_ATTR.get(k, k)}={v}" for k, v in rdn) for rdn in rdns)


def fingerprint(path) -> tuple[int, int, int, int]:
    """(st_dev, st_ino, st_size, st_mtime_ns) of `path` (symlinks followed: certbot's
    live/ links change target on renewal). Raises OSError."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def cert_info(path) -> CertInfo:
    """Takes: a PEM certificate file (its first certificate is the leaf). Returns: its
    CertInfo, cached by the file's fingerprint (a thousand status calls read nothing
    again). Raises OSError when the file cannot be stat'ed, ValueError when it is not
    a PEM certificate. Reads the certificate only, never a key (the file must not
    hold one: config refuses a key in the certificate's own file)."""
    fp = fingerprint(path)
    key = (str(path), *fp)
    hit = _info_cache.get(key)
    if hit is not None:
        return hit
    try:
        doc = ssl._ssl._test_decode_cert(str(path))
    except ssl.SSLError as e:
        raise ValueError(f"{path}: not a PEM certificate ({_reason(e)})") from None
    subject = doc.get("subject", ())
    names = tuple(v.lower() for k, v in doc.get("subjectAltName", ()) if k == "DNS")
    if not names:
        names = tuple(v.lower() for rdn in subject for k, v in rdn if k == "commonName")
    info = CertInfo(subject=_dn(subject), names=names,
                    not_after=float(ssl.cert_time_to_seconds(doc["notAfter"])),
                    issuer=_dn(doc.get("issuer", ())))
    if len(_info_cache) > 4096:
        _info_cache.clear()
    _info_cache[key] = info
    return info


# --- checking a pair (loads the key: never in the supervisor) ----------------------
def _reason(exc: BaseException) -> str:
    """OpenSSL's words for an SSLError ("[X509: KEY_VALUES_MISMATCH] key values
    mismatch"), without Python's "(_ssl.c:NNNN)"."""
    args = exc.args
    text = str(args[1]) if isinstance(exc, ssl.SSLError) and len(args) > 1 else \
        str(args[0]) if len(args) == 1 else str(exc)
    cut = text.rfind(" (_ssl.c:")
    return text[:cut] if cut > 0 else text


def check_pair(cert, key, min_version: str = "1.2") -> str | None:
    """Loads a pair into an ssl.SSLContext(PROTOCOL_TLS_SERVER) with min_version, as a
    worker will. Takes: the certificate and key files, "1.2" | "1.3". Returns: None
    when the pair is good, else why, naming the file and OpenSSL's reason (missing or
    unreadable file, not PEM, an encrypted key, a key that does not match). Loads the
    key into this process: for a child process or `hostd --check-config` only."""
    for what, path in (("certificate", cert), ("key", key)):
        try:
            st = os.stat(path)
        except OSError as e:
            return f"{what} {path}: {e.strerror or e}"
        if not stat.S_ISREG(st.st_mode):
            return f"{what} {path}: not a regular file"
    try:
        ssl._ssl._test_decode_cert(str(cert))
    except ssl.SSLError as e:
        return f"certificate {cert}: not a PEM certificate (OpenSSL: {_reason(e)})"
    except OSError as e:
        return f"certificate {cert}: {e.strerror or e}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = VERSIONS[min_version]
    except KeyError:
        return f"min_version {min_version!r} is not one of {', '.join(VERSIONS)}"
    asked = []

    def no_passphrase():
        asked.append(True)
        return b""

    try:
        ctx.load_cert_chain(str(cert), str(key), password=no_passphrase)
    except ssl.SSLError as e:
        reason = _reason(e)
        if asked:
            return (f"key {key}: encrypted with a passphrase; hostd needs an unencrypted "
                    f"key (0600 root) (OpenSSL: {reason})")
        if "KEY_VALUES_MISMATCH" in reason:
            return f"key {key} does not match certificate {cert} (OpenSSL: {reason})"
        return f"key {key}: cannot load it, or the chain in {cert} (OpenSSL: {reason})"
    except OSError as e:
        return f"key {key}: {e.strerror or e}"
    return None


def check_in_subprocess(pairs, timeout: float = CHECK_TIMEOUT,
                        min_version: str = "1.2") -> list[str | None]:
    """check_pair for each (cert, key) of `pairs`, in a child process (`python -m
    hostd.tlsconf check`) so that no key is read into this process. Takes: the pairs,
    the child's time limit, min_version. Returns: one result per pair, in order (None:
    good). A child that fails, times out or answers nonsense gives every pair that
    reason. Blocks for the child's life (~50 ms)."""
    pairs = [(os.path.abspath(c), os.path.abspath(k)) for c, k in pairs]
    if not pairs:
        return []
    root = str(Path(__file__).resolve().parents[1])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": root,
           "LC_ALL": "C.UTF-8"}
    argv = [sys.executable, "-m", "hostd.tlsconf", "check", "--min-version", min_version]
    for c, k in pairs:
        argv += [c, k]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, env=env, cwd="/")
    except subprocess.TimeoutExpired:
        return [f"the check did not finish within {timeout:g} s"] * len(pairs)
    except OSError as e:
        return [f"cannot run the check: {e}"] * len(pairs)
    try:
        results = json.loads(done.stdout.decode().strip().splitlines()[-1])["results"]
        if len(results) != len(pairs) or done.returncode not in (0, 1):
            raise ValueError("wrong answer")
    except (ValueError, KeyError, IndexError, TypeError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        why = tail[-1] if tail else f"exit {done.returncode}"
        return [f"the check failed: {why}"] * len(pairs)
    return [None if r is None else str(r) for r in results]


# --- snapshots ----------------------------------------------------------------------
def copy_kernel_side(src, dst) -> tuple[int, int, int, int]:
    """Copies file `src` to a new file `dst` (mode 0600, O_EXCL) without the bytes
    passing through this process's memory: copy_file_range, else sendfile. Returns
    src's fingerprint as of the copy (fstat of the descriptor copied from). Raises
    OSError (dst removed)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd_in)
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            left, use_range = st.st_size, hasattr(os, "copy_file_range")
            while left > 0:
                try:
                    n = os.copy_file_range(fd_in, fd_out, left) if use_range else \
                        os.sendfile(fd_out, fd_in, None, left)
                except OSError as e:
                    if use_range and e.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS,
                                                  errno.EOPNOTSUPP):
                        use_range = False
                        continue
                    raise
                if n == 0:
                    break
                left -= n
            os.fchmod(fd_out, 0o600)
        except BaseException:
            os.close(fd_out)
            os.unlink(dst)
            raise
        os.close(fd_out)
    finally:
        os.close(fd_in)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class _Snapshot:
    version: int
    source: tuple            # ((cert, key), ...) the live paths it was copied from
    prints: tuple            # (fingerprint, fingerprint) per pair, as copied
    paths: list              # [[cert copy, key copy], ...]


class Snapshots:
    """Per pool, a copy of its current good pairs: RUN_DIR/tls/POOL/vN/{i}.crt, {i}.key
    (directories 0700, files 0600, owned by hostd's user: root). What workers load.

    Takes: hostd's run_dir. Nothing is made until a pool's first `current` (a thousand
    TLS pools cost nothing until they spawn). The previous version of a pool is kept
    until the next change (a worker spawned just before a change may still be loading
    it); older ones are removed. `check` (default check_in_subprocess) is how a
    candidate is checked."""

    def __init__(self, run_dir, check=check_in_subprocess):
        self.root = Path(run_dir) / "tls"
        self.check = check
        self.pools: dict[str, _Snapshot] = {}
        self._versions: dict[str, int] = {}
        self._cleaned = False

    def clear(self) -> None:
        """Removes run_dir/tls, what an earlier hostd left (its copies are not ours to
        trust; keys should not linger). Done at hostd's start, and before the first copy."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.pools.clear()
        self._cleaned = True

    def _dir(self, pool: str) -> Path:
        if not self._cleaned:
            self.clear()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        d = self.root / pool
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        return d

    def _copy(self, pool: str, pairs) -> _Snapshot:
        """A new version of `pool` copied from `pairs`. Raises OSError (nothing left)."""
        n = self._versions.get(pool, 0) + 1
        self._versions[pool] = n
        vdir = self._dir(pool) / f"v{n}"
        shutil.rmtree(vdir, ignore_errors=True)
        vdir.mkdir(mode=0o700)
        try:
            paths, prints = [], []
            for i, (cert, key) in enumerate(pairs):
                c, k = vdir / f"{i}.crt", vdir / f"{i}.key"
                prints.append((copy_kernel_side(cert, c), copy_kernel_side(key, k)))
                paths.append([str(c), str(k)])
        except OSError:
            shutil.rmtree(vdir, ignore_errors=True)
            raise
        return _Snapshot(n, tuple((str(c), str(k)) for c, k in pairs), tuple(prints), paths)

    def _make_current(self, pool: str, snap: _Snapshot) -> None:
        self.pools[pool] = snap
        d = self.root / pool
        for entry in os.listdir(d):       # keep this version and the one before it
            if entry.startswith("v") and entry[1:].isdigit() and \
                    int(entry[1:]) < snap.version - 1:
                shutil.rmtree(d / entry, ignore_errors=True)

    def get(self, pool: str) -> list[list[str]] | None:
        """The pool's current copies [[cert, key], ...], or None (none made yet)."""
        snap = self.pools.get(pool)
        return [list(p) for p in snap.paths] if snap is not None else None

    def has(self, pool: str) -> bool:
        """Whether `pool` has a snapshot (it spawned a worker since it got [tls])."""
        return pool in self.pools

    def current(self, pool: str, pairs) -> list[list[str]]:
        """The pairs a new worker of `pool` loads: [[cert copy, key copy], ...]. Made
        from the live `pairs` the first time, unchecked (the worker reports a pair
        that does not load). Raises OSError when that first copy fails."""
        snap = self.pools.get(pool)
        if snap is None:
            snap = self._copy(pool, pairs)
            self._make_current(pool, snap)
        return [list(p) for p in snap.paths]

    def refresh(self, pool: str, pairs, min_version: str = "1.2") -> tuple[bool, str | None]:
        """Reload: whether the live `pairs` differ from the snapshot (other paths, or a
        file whose fingerprint changed); if so they are copied to a candidate, checked
        (self.check), and made current only when good. Takes: the pool, its pairs now,
        min_version. Returns (changed: a new snapshot is current, problem: why the
        changed pairs were refused, or None). A pool without a snapshot: (False, None),
        nothing to compare (its first worker copies the live files)."""
        snap = self.pools.get(pool)
        if snap is None:
            return False, None
        source = tuple((str(c), str(k)) for c, k in pairs)
        try:
            prints = tuple((fingerprint(c), fingerprint(k)) for c, k in source)
        except OSError as e:
            return False, f"{e.filename}: {e.strerror or e}"
        if source == snap.source and prints == snap.prints:
            return False, None
        try:
            candidate = self._copy(pool, source)
        except OSError as e:
            return False, f"cannot copy {e.filename}: {e.strerror or e}"
        results = self.check([tuple(p) for p in candidate.paths], min_version=min_version)
        problems = []
        for (cert, key), result in zip(source, results):
            if result is not None:
                # the copies' names mean nothing to the operator: the live ones
                for (c, k), (live_c, live_k) in zip(candidate.paths, source):
                    result = result.replace(c, live_c).replace(k, live_k)
                problems.append(result)
        if problems:
            shutil.rmtree(self.root / pool / f"v{candidate.version}", ignore_errors=True)
            return False, "; ".join(problems)
        self._make_current(pool, candidate)
        return True, None

    def remove(self, pool: str) -> None:
        """The pool is gone or has no [tls] any more: its copies are deleted."""
        self.pools.pop(pool, None)
        shutil.rmtree(self.root / pool, ignore_errors=True)


# --- the CLI --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """`python -m hostd.tlsconf check [--min-version V] CERT KEY [CERT KEY ...]`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "check":
        print("usage: python -m hostd.tlsconf check [--min-version 1.2|1.3] "
              "CERT KEY [CERT KEY ...]", file=sys.stderr)
        return 2
    args = args[1:]
    min_version = "1.2"
    if args[:1] == ["--min-version"] and len(args) >= 2:
        min_version, args = args[1], args[2:]
    if not args or len(args) % 2:
        print("hostd.tlsconf check: give CERT KEY pairs", file=sys.stderr)
        return 2
    results = [check_pair(args[i], args[i + 1], min_version) for i in range(0, len(args), 2)]
    print(json.dumps({"results": results}))
    return 0 if all(r is None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
