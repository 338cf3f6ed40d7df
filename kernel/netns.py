"""Network namespaces: one per pool, pinned at a path we choose, joined to the host by a veth pair.

The kernel is the interface:

* a namespace is created by unshare(CLONE_NEWNET) and outlives its creator only while
  something references it; like `ip netns add`, we pin it by bind-mounting the
  creator's /proc/<pid>/ns/net onto a file (hostd uses `<run_dir>/netns/<pool>`);
* a process joins it with setns(open(path), CLONE_NEWNET);
* it is freed when the pin is unmounted and the last process and socket in it are gone.

Python 3.11 has no os.unshare/os.setns, so those (and mount/umount2) are called through
kernel/ns.py's system calls; a failure raises OSError(errno, "<call>: <strerror>", path).

Links are made with pyroute2 (rtnetlink), imported lazily: it costs ~0.1 s to import and
only `private_link`/`remove_link` need it. `loopback_up` uses two ioctls instead, since it
runs in every fresh namespace.

No policy here: which addresses a pool gets and when namespaces come and go is the
caller's business (`subnet` and `ifname` are pure helpers for that).
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct

# --------------------------------------------------------------------------- constants

# the system calls themselves are kernel/ns.py's (one ctypes wrapper per call)
from kernel.ns import CLONE_NEWNET, CLONE_NEWNS, MNT_DETACH, MS_BIND, setns, unshare  # noqa: F401
from kernel.ns import mount as _mount, umount as _umount

#: ioctl on a namespace file: which kind of namespace it is (linux/nsfs.h: _IO(0xb7, 0x3))
NS_GET_NSTYPE = 0xB703

#: netdevice(7) ioctls and flag
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

#: IFNAMSIZ - 1: the longest interface name the kernel accepts, in bytes
IFNAME_MAX = 15

#: the name the namespace side of a private link gets
NS_IFNAME = "eth0"

# struct ifreq: char ifr_name[16]; union { short ifr_flags; ... } padded to 40 bytes (LP64)
_IFREQ = struct.Struct("16sH22x")

def _mount_bind(source: bytes, target: bytes) -> None:
    try:
        _mount(os.fsdecode(source), os.fsdecode(target), "none", MS_BIND)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fsdecode(target)) from None


def _umount_detach(target: bytes) -> None:
    try:
        _umount(os.fsdecode(target), MNT_DETACH)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fsdecode(target)) from None


def _nstype(path: str) -> int | None:
    """The CLONE_NEW* type of the namespace file at `path`; None when it is not one.

    nsfs files all live on one internal superblock, so "same st_dev as our own
    /proc/self/ns/net" identifies a namespace file without parsing mountinfo.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:
            return None
        return fcntl.ioctl(fd, NS_GET_NSTYPE)
    finally:
        os.close(fd)


def is_netns(path: str | os.PathLike) -> bool:
    """Whether `path` is a pinned network namespace (a mounted nsfs net file).

    Takes: a path. Returns: bool. Raises: OSError other than "does not exist" from open.
    """
    return _nstype(os.fspath(path)) == CLONE_NEWNET


# --------------------------------------------------------------------------- namespaces

def loopback_up() -> None:
    """Bring "lo" up in the calling thread's network namespace (no-op when it is up).

    A new namespace has lo down, so even 127.0.0.1 is unreachable; bringing it up makes
    the kernel add 127.0.0.1/8 and ::1 itself.
    Returns: None. Raises: OSError from socket()/ioctl() (EPERM without CAP_NET_ADMIN).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        reply = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
        flags = _IFREQ.unpack(reply)[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))


def create(path: str | os.PathLike) -> None:
    """Create a network namespace with only loopback (up) in it, pinned at `path`.

    Takes: the pin's path; its parent directory is created (mode 0700) when missing.
    Returns: None. Idempotent: when `path` already is a pinned network namespace, it is
    reused as is.
    Raises: OSError naming `path` when the namespace cannot be made or pinned (with the
    errno of the failing call), or when `path` holds a namespace of another kind.

    How: a forked child unshares CLONE_NEWNET, ups lo and bind-mounts its
    /proc/self/ns/net onto `path` (an empty file, as `ip netns add` does), then exits;
    the mount keeps the namespace alive. The child shares our mount namespace, so the
    mount is visible here. Forking keeps the caller (possibly multi-threaded) in the host
    namespace. Unlike `ip netns add` the parent directory is not turned into a shared
    mount (that would leave a mount on `<run_dir>/netns` to clean up): a mount namespace
    made after create() keeps its own copy of the pin unless propagation carries our
    unmount to it, so the namespace lives until that mount namespace's processes exit.
    """
    path = os.path.abspath(os.fspath(path))
    kind = _nstype(path)
    if kind == CLONE_NEWNET:
        return
    if kind is not None:
        raise OSError(errno.EEXIST, f"{path} holds a namespace of type {kind:#x}, not a network one",
                      path)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    # the mount point; an empty file left by an earlier failed attempt is reused
    made = not os.path.lexists(path)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444))
    target = os.fsencode(path)
    r, w = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # child: no return from here
        code = 0
        try:
            os.close(r)
            unshare(CLONE_NEWNET)
            loopback_up()
            _mount_bind(b"/proc/self/ns/net", target)
        except OSError as e:
            code = 1
            _write_error(w, e.errno or 0, e.strerror or str(e))
        except BaseException as e:  # noqa: BLE001 - the child must reach _exit
            code = 1
            _write_error(w, 0, repr(e))
        finally:
            os._exit(code)
    os.close(w)
    with open(r, "rb") as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if report or code != 0:
        if made and _nstype(path) is None:
            try:
                os.unlink(path)
            except OSError:
                pass
        if len(report) >= 4:
            err = struct.unpack("i", report[:4])[0]
            msg = report[4:].decode("utf-8", "replace")
        else:
            err, msg = 0, f"namespace child exited with status {code}"
        raise OSError(err or errno.EIO, f"creating network namespace at {path}: {msg}", path)


def _write_error(fd: int, err: int, msg: str) -> None:
    try:
        os.write(fd, struct.pack("i", err) + msg.encode("utf-8", "replace")[:1000])
    except OSError:
        pass


def destroy(path: str | os.PathLike) -> None:
    """Unpin the network namespace at `path` and remove the file.

    The namespace itself goes when its last process and socket are gone too.
    Takes: the pin's path. Returns: None; nothing to do when `path` does not exist.
    Raises: OSError from umount2/unlink (e.g. EBUSY when something other than a
    namespace is mounted there: that is never unmounted here).
    """
    path = os.path.abspath(os.fspath(path))
    target = os.fsencode(path)
    # MNT_DETACH: like `ip netns del`, do not fail because a process has it open.
    # Loop: two racing creates could have stacked two pins; each needs an unmount.
    for _ in range(8):
        if _nstype(path) is None:
            break
        _umount_detach(target)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def enter(path: str | os.PathLike) -> None:
    """Move the calling thread into the network namespace pinned at `path`.

    Takes: the pin's path. Returns: None.
    Raises: OSError (FileNotFoundError when there is no pin, EINVAL when `path` is not a
    network namespace, EPERM without CAP_SYS_ADMIN).
    Sockets opened before keep their namespace; call this in a fresh child (before
    exec or before opening sockets), not in a multi-threaded supervisor.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(fd, CLONE_NEWNET)
        except OSError as e:
            e.filename = path
            raise
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- links

def private_link(path: str | os.PathLike, host_ifname: str,
                 host_addr: str | ipaddress.IPv4Address,
                 ns_addr: str | ipaddress.IPv4Address, prefixlen: int) -> None:
    """Join the namespace at `path` to the host with a veth pair.

    Takes: the pin's path; the host side's name (<= 15 bytes, see `ifname`); the host
    and namespace addresses and their prefix length (see `subnet`).
    Result: `host_ifname` in the calling (host) namespace with host_addr/prefixlen, up;
    its peer "eth0" inside the namespace with ns_addr/prefixlen, up, and a default route
    via host_addr. Returns: None.
    Idempotent: an existing `host_ifname`, and an existing "eth0" in the namespace (with
    whatever is on its other end), are deleted first.
    Raises: FileNotFoundError when `path` is not a pinned network namespace; OSError
    naming the step and the link when a netlink request fails (the half-made pair is
    removed).

    How (pyroute2 >= 0.9.1): the namespace side is configured through
    IPRoute(netns=path), which forks a child that setns()es into `path`, opens the
    rtnetlink socket there and hands it back; every request then runs here. flags=0
    stops pyroute2 from creating a namespace at `path` when there is none.
    """
    from pyroute2 import IPRoute  # lazy: ~0.1 s
    from pyroute2.netlink.exceptions import NetlinkError

    path = os.path.abspath(os.fspath(path))
    _check_ifname(host_ifname)
    host_addr, ns_addr = str(host_addr), str(ns_addr)
    if not is_netns(path):
        raise FileNotFoundError(errno.ENOENT, "no network namespace pinned there", path)
    where = f"veth {host_ifname} <-> {NS_IFNAME} in {path}"
    step = "opening rtnetlink in the namespace"
    made = False
    try:
        with IPRoute(netns=path, flags=0) as ns, IPRoute() as host:
            step = f"deleting an old {NS_IFNAME} in the namespace"
            for idx in ns.link_lookup(ifname=NS_IFNAME):
                ns.link("del", index=idx)
            step = f"deleting an old {host_ifname}"
            for idx in host.link_lookup(ifname=host_ifname):
                host.link("del", index=idx)

            step = "creating the pair"
            nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                # the peer is created directly in the namespace: its name cannot clash
                # with a host interface, and it never appears on the host
                host.link("add", ifname=host_ifname, kind="veth",
                          peer={"ifname": NS_IFNAME, "net_ns_fd": nsfd})
            finally:
                os.close(nsfd)
            made = True

            step = f"configuring {host_ifname}"
            (hidx,) = host.link_lookup(ifname=host_ifname)
            host.addr("add", index=hidx, address=host_addr, prefixlen=prefixlen)
            host.link("set", index=hidx, state="up")

            step = f"configuring {NS_IFNAME} in the namespace"
            found = ns.link_lookup(ifname=NS_IFNAME)
            if not found:
                raise RuntimeError(f"{NS_IFNAME} did not appear in the namespace")
            nidx = found[0]
            ns.addr("add", index=nidx, address=ns_addr, prefixlen=prefixlen)
            ns.link("set", index=nidx, state="up")
            step = f"adding the default route via {host_addr} in the namespace"
            ns.route("add", dst="0.0.0.0/0", gateway=host_addr, oif=nidx)
    except NetlinkError as e:
        if made:
            _remove_quietly(host_ifname)
        raise OSError(e.code, f"{where}: {step}: {os.strerror(e.code)}") from e
    except OSError as e:
        if made:
            _remove_quietly(host_ifname)
        raise OSError(e.errno or errno.EIO, f"{where}: {step}: {e.strerror or e}",
                      e.filename) from e
    except Exception as e:  # pyroute2's own (RuntimeError from its child, TypeError, ...)
        if made:
            _remove_quietly(host_ifname)
        raise RuntimeError(f"{where}: {step}: {e!r}") from e


def _remove_quietly(host_ifname: str) -> None:
    try:
        remove_link(host_ifname)
    except Exception:  # noqa: BLE001 - cleanup after the error being raised
        pass


def remove_link(host_ifname: str) -> None:
    """Delete the host side of a private link; the kernel deletes its peer with it.

    Takes: the host interface name. Returns: None; nothing to do when it does not exist.
    Raises: OSError when the netlink request fails for another reason.
    """
    from pyroute2 import IPRoute  # lazy: ~0.1 s
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as host:
            for idx in host.link_lookup(ifname=host_ifname):
                host.link("del", index=idx)
    except NetlinkError as e:
        if e.code == errno.ENODEV:  # gone between lookup and delete
            return
        raise OSError(e.code, f"deleting {host_ifname}: {os.strerror(e.code)}") from e


# --------------------------------------------------------------------------- naming

def subnet(network: ipaddress.IPv4Network,
           index: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address, int]:
    """The `index`-th /30 of `network`, for one private link.

    Takes: an IPv4Network (e.g. 10.213.0.0/16) and k >= 0.
    Returns: (host_addr, ns_addr, 30): host is .1 and the namespace .2 of the k-th /30
    (k=0 in 10.213.0.0/16 -> 10.213.0.1, 10.213.0.2; k=1 -> 10.213.0.5, 10.213.0.6).
    Raises: ValueError naming the network when k is not in range (or the network is
    smaller than a /30); TypeError when it is not an IPv4Network.
    """
    if not isinstance(network, ipaddress.IPv4Network):
        raise TypeError(f"subnet() needs an ipaddress.IPv4Network, not {network!r}")
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"subnet() needs an int index, not {index!r}")
    count = 1 << (30 - network.prefixlen) if network.prefixlen <= 30 else 0
    if not 0 <= index < count:
        raise ValueError(f"index {index} out of range for network {network}: "
                         f"it holds {count} /30 subnet(s) (indexes 0..{count - 1})")
    base = int(network.network_address) + 4 * index
    return ipaddress.IPv4Address(base + 1), ipaddress.IPv4Address(base + 2), 30


def ifname(pool: str, index: int) -> str:
    """A host interface name for the pool's link: f"hd{index}-{pool}" cut to 15 bytes.

    The index comes first so that names stay unique when long pool names are cut.
    Takes: the pool name, a non-negative index. Returns: the name.
    Raises: ValueError when the pool name has characters the kernel refuses in an
    interface name ('/', ':', whitespace) or the index alone does not fit.
    """
    if index < 0:
        raise ValueError(f"interface index must be >= 0, not {index}")
    if any(c in "/:" or c.isspace() for c in pool):
        raise ValueError(f"pool name {pool!r} cannot be part of an interface name")
    prefix = f"hd{index}-"
    if len(prefix) > IFNAME_MAX:
        raise ValueError(f"interface index {index} is too long for a {IFNAME_MAX}-byte name")
    name = (prefix + pool).encode("utf-8")[:IFNAME_MAX].decode("utf-8", "ignore")
    return name


def _check_ifname(name: str) -> None:
    size = len(name.encode("utf-8"))
    if not 0 < size <= IFNAME_MAX or name in (".", "..") or any(
            c in "/:" or c.isspace() for c in name):
        raise ValueError(f"invalid interface name {name!r} (1..{IFNAME_MAX} bytes, "
                         "no '/', ':' or whitespace)")
