"""Giving up privileges: identity, capabilities, no_new_privs, user-namespace id maps.

The order matters and the caller keeps it: drop the bounding set while the process
still has CAP_SETPCAP, switch uid/gid, then clear the remaining capability sets and
set no_new_privs. A process that unshared a user namespace holds every capability
*inside* it even after setresuid() to a non-zero uid (the kernel's "root -> non-root
clears capabilities" rule looks for uid 0 of that namespace, which is unmapped), so
the explicit capset() below is not belt and braces: it is what removes them.
"""
from __future__ import annotations

import ctypes
import os

try:
    import prctl as _prctl
except ImportError:  # pragma: no cover - a declared dependency
    _prctl = None

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _prctl_call(option: int, arg: int = 0, what: str = "prctl") -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def last_cap() -> int:
    """The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def drop_bounding_set() -> None:
    """Empties the capability bounding set, so nothing this process or its children
    exec can ever gain a capability. Needs CAP_SETPCAP (call before switching uid).
    Raises: OSError."""
    for cap in range(last_cap() + 1):
        _prctl_call(PR_CAPBSET_DROP, cap, f"PR_CAPBSET_DROP {cap}")


def clear_capabilities() -> None:
    """Clears the ambient, effective, permitted and inheritable sets. Raises: OSError."""
    try:
        _prctl_call(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "PR_CAP_AMBIENT_CLEAR_ALL")
    except OSError:
        pass   # kernels before 4.3 have no ambient set: nothing to clear
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: execve() can no longer grant privileges (setuid bits, file
    capabilities). Irreversible and inherited. Raises: OSError."""
    if _prctl is not None:
        _prctl.set_no_new_privs(1)
    else:
        _prctl_call(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")


def switch_identity(uid: int, gid: int) -> None:
    """No supplementary groups, then gid, then uid (real, effective and saved), so there
    is no way back. Raises: OSError (EPERM without CAP_SETUID/CAP_SETGID, EINVAL for
    an id the current user namespace does not map)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def drop_to(uid: int, gid: int) -> None:
    """The whole sequence, in its one working order: empty bounding set (needs
    CAP_SETPCAP, so first), uid/gid, no capability left, no_new_privs. Called after
    any unshare(CLONE_NEWUSER), which gives a full bounding set back.
    Raises: OSError."""
    drop_bounding_set()
    switch_identity(uid, gid)
    clear_capabilities()
    set_no_new_privs()


def write_id_maps(pid: int, uid: int, gid: int, inside_uid: int | None = None,
                  inside_gid: int | None = None) -> None:
    """Maps one host uid/gid into the user namespace of process `pid` (the same number
    inside unless told otherwise), from a process of the parent namespace that holds
    CAP_SETUID/CAP_SETGID there. Nothing else is mapped: every other owner shows as
    the overflow id (nobody) inside. Raises: OSError."""
    inside_uid = uid if inside_uid is None else inside_uid
    inside_gid = gid if inside_gid is None else inside_gid
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"{inside_uid} {uid} 1\n")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"{inside_gid} {gid} 1\n")


def status_caps(pid: int | str = "self") -> dict[str, int]:
    """Capability masks of a process from /proc/PID/status: {"CapInh", "CapPrm",
    "CapEff", "CapBnd", "CapAmb"} -> int, plus "NoNewPrivs" (0/1)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                out[key] = int(value.strip(), 16)
            elif key == "NoNewPrivs":
                out[key] = int(value.strip())
    return out
