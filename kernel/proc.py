"""Process attributes through prctl(2): names, parent-death signal, child subreaper.

python-prctl is the binding; these wrappers say which call does what and tolerate its
absence only where a feature is cosmetic (the process title).
"""
from __future__ import annotations

import os
import signal

try:
    import prctl as _prctl
except ImportError:  # pragma: no cover - a dependency; kept soft for the process title only
    _prctl = None


def set_title(title: str) -> None:
    """Sets the process title seen in ps/top (argv area) and the 15-char comm name."""
    if _prctl is None:
        return
    try:
        _prctl.set_proctitle(title)
    except Exception:
        pass
    try:
        _prctl.set_name(title[:15])
    except Exception:
        pass


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """Asks the kernel to send `sig` when our parent thread dies (PR_SET_PDEATHSIG).

    Raises OSError if the call fails; callers that fork must also check getppid()
    afterwards, since the parent may have died before the call.
    """
    if _prctl is None:
        raise OSError("python-prctl is not installed")
    _prctl.set_pdeathsig(sig)


def set_child_subreaper() -> None:
    """Makes orphaned descendants reparent to us (PR_SET_CHILD_SUBREAPER), so the
    supervisor reaps workers that its zygote double-forked."""
    if _prctl is None:
        raise OSError("python-prctl is not installed")
    _prctl.set_child_subreaper(True)


def close_fds_except(keep: set[int]) -> None:
    """Closes every descriptor of this process except `keep` and 0, 1, 2.

    Used right after fork so a child holds no descriptor it does not own (no other
    pool's queue, no control socket of another process).
    """
    keep = set(keep) | {0, 1, 2}
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
