"""Namespaces and mounts: the libc calls Python 3.11 does not wrap.

os.unshare and os.setns arrived in 3.12; mount(2), umount2(2) and mount_setattr(2) are
not in the standard library at all. Each wrapper is one system call through ctypes,
and raises OSError(errno, "<call> <argument>: <strerror>") when it fails, so an error
says which path or flag the kernel refused.
"""
from __future__ import annotations

import ctypes
import os
import platform

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19

MNT_DETACH = 2

AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1

#: mount_setattr(2) is 442 in the generic syscall table (x86_64 and arm64 alike)
_NR_MOUNT_SETATTR = {"x86_64": 442, "aarch64": 442}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def unshare(flags: int) -> None:
    """Takes: CLONE_NEW* flags. Moves this process into new namespaces of those kinds
    (CLONE_NEWPID: its next child only). Raises: OSError."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """Takes: an open namespace file (/proc/PID/ns/* or a bind mount of one) and its
    CLONE_NEW* kind (0: any). Joins it. Raises: OSError."""
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2). Takes: source, target, filesystem type, MS_* flags, options string.
    Raises: OSError naming the target."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           f"mount {source or fstype or ''} on {target}")


def umount(target: str, flags: int = 0) -> None:
    """umount2(2). Raises: OSError naming the target."""
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def make_readonly_tree(path: str = "/") -> None:
    """Makes every mount at and below `path` read-only in this mount namespace (and
    nothing outside it: call it after unshare(CLONE_NEWNS) and make_slave()).

    One mount_setattr(AT_RECURSIVE) where the kernel has it (5.12+); else one bind
    remount per mount listed in /proc/self/mountinfo, keeping each one's nosuid/
    nodev/noexec. Raises: OSError.
    """
    if _NR_MOUNT_SETATTR is not None:
        attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        res = _libc.syscall(_NR_MOUNT_SETATTR, AT_FDCWD, _b(path), AT_RECURSIVE,
                            ctypes.byref(attr), ctypes.sizeof(attr))
        if res == 0:
            return
        if ctypes.get_errno() != 38:   # ENOSYS: an older kernel, fall back
            _check(res, f"mount_setattr {path} read-only")
    for target, opts in _mounts_under(path):
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY
        for name, bit in (("nosuid", MS_NOSUID), ("nodev", MS_NODEV), ("noexec", MS_NOEXEC)):
            if name in opts:
                flags |= bit
        try:
            mount(None, target, None, flags)
        except OSError:
            if target == path:
                raise
            # a mount hidden under another one cannot be reached by path: it is
            # invisible anyway


def _mounts_under(path: str) -> list[tuple[str, set[str]]]:
    prefix = path.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")
            if target == path or target.startswith(prefix) or path == "/":
                out.append((target, set(fields[5].split(","))))
    return out


def make_slave(path: str = "/") -> None:
    """Stops mounts made in this namespace from propagating back to the host (and
    still lets the host's unmounts reach us). Raises: OSError."""
    mount(None, path, None, MS_REC | MS_SLAVE)
