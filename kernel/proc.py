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


def hung_up(fd: int) -> bool:
    """True when the peer of the connected socket `fd` has closed its end (POLLHUP or
    POLLRDHUP), without reading anything. A worker's control channel hangs up only
    when the supervisor is gone: unlike getppid(), this works in a pid namespace too."""
    import select
    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)   # POLLHUP/POLLERR are always reported
    try:
        return any(ev & (select.POLLHUP | select.POLLRDHUP | select.POLLERR | select.POLLNVAL)
                   for _fd, ev in poller.poll(0))
    except OSError:
        return False


def kill_own_group(sig: int = signal.SIGKILL) -> int:
    """Sends `sig` to every other process of our process group (what this process
    started and did not move elsewhere), read from /proc; never to ourselves. For a
    session leader that must go and take its children along when nobody else will
    (a worker whose supervisor died). Only when we lead a group of our own (pgid ==
    pid > 1: never the group of a pid namespace's init). Returns how many were sent."""
    me = os.getpid()
    pgid = os.getpgrp()
    if pgid != me or me <= 1:
        return 0
    sent = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            # after "(comm)": state, ppid, pgrp
            if int(stat[stat.rfind(b")") + 2:].split()[2]) != pgid:
                continue
            os.kill(int(entry), sig)
            sent += 1
        except (OSError, IndexError, ValueError):
            continue
    return sent


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
