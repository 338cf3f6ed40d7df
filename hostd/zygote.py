"""The zygote: a small process with the worker runtime imported (no app), which forks
workers on the supervisor's request.

A fresh interpreter importing the runtime took ~57 ms to become ready here; a fork of a
preloaded process takes a few ms. The zygote forks twice (zygote -> intermediate ->
worker) and the intermediate exits at once, so the worker is re-parented to the
supervisor, which is a child subreaper: the supervisor reaps its workers and sees their
exit status, while the zygote stays single-threaded and small.

Request  (supervisor -> zygote): protocol.SPAWN, {"id": N, "spec": WorkerSpec as a dict}
         + descriptors [control, queue out, queue semaphore, reroute in, scoreboard
         memfd, max_connections semaphores...].
Answer   (zygote -> supervisor): protocol.SPAWNED {"id": N, "pid": P} or
         protocol.SPAWN_FAILED {"id": N, "error": "..."}.
The zygote adds keys to the spec dict the worker gets: "trace", "host_pid",
"access_log_fd", "conn_sems" (workers.runtime reads them beside the WorkerSpec).

A pool with `preload = true` has a zygote of its own (the warm tier): the zygote forks
it like a worker (protocol.SPAWN_ZYGOTE: same cgroup join, namespaces and identity),
but it runs `pool_zygote_main` instead of a worker: it imports the pool's app once,
freezes its heap (gc.freeze: the collector never writes to those objects again, so
the pages stay shared copy-on-write) and forks that pool's workers on the
supervisor's SPAWN, double-forked as here, so they too are the supervisor's children;
it keeps one of them forked ahead of time, waiting for its SPAWN (_Spare).
It stays in the host's pid namespace (a pid namespace's init would inherit its
workers); its view's /proc shows only its own uid's processes (hidepid=invisible).
Its workers cannot join a cgroup themselves (no privilege left): they are in the
pool zygote's own cgroup, or, when the pool has per-worker memory limits, wait until
the supervisor has moved them into theirs (SPAWNED "placing", then PLACED).
"""
from __future__ import annotations

import collections
import gc
import os
import signal
import socket
import sys
import time
import traceback

from hostd import accesslog, log, protocol
from kernel import fdpass, fsview, privileges, proc
from kernel import ns as namespaces


def zygote_main(chan: socket.socket, supervisor_pid: int) -> int:
    """Entry point in the forked zygote process. Returns its exit code."""
    log.set_process("zygote")
    proc.set_title("hostd: zygote")
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        proc.set_pdeathsig(signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != supervisor_pid:
        return protocol.EXIT_SUPERVISOR_GONE   # it died before PDEATHSIG was armed
    import workers.runtime  # noqa: F401  the preload: what every worker needs, paid once
    # protocol.WorkerSpec's defaults import hostd.config lazily; an isolated worker
    # may no longer be able to read it
    import hostd.config  # noqa: F401
    # what is imported now is shared by every worker: the collector must not write to
    # it (a collection touches every tracked object's header, unsharing its page)
    gc.collect()
    gc.freeze()
    while True:
        try:
            data, fds = fdpass.recv_with_fds(chan, protocol.MAX_CONTROL_BYTES, 0, maxfds=8)
        except InterruptedError:
            continue
        except (ConnectionResetError, RuntimeError):
            return protocol.EXIT_SUPERVISOR_GONE
        if not data:
            return protocol.EXIT_OK
        msg = None   # an answer to a request that did not decode says id None
        try:
            msg = protocol.decode(data)
            wanted = 1 if msg["t"] == protocol.SPAWN_ZYGOTE else 5
            if msg["t"] not in (protocol.SPAWN, protocol.SPAWN_ZYGOTE) or len(fds) < wanted:
                raise ValueError(f"unexpected request {msg.get('t')!r} with {len(fds)} fds")
            msg["spec"]["trace"] = [("zygote", time.monotonic())]
            if msg["t"] == protocol.SPAWN_ZYGOTE:
                msg["spec"]["role"] = "zygote"
            elif msg["spec"].get("role") == "zygote":
                raise ValueError("a SPAWN for a zygote: that is SPAWN_ZYGOTE")
            pid = _spawn(msg["spec"], fds, supervisor_pid, chan.fileno())
            reply = protocol.spawned(msg["id"], pid)
        except Exception as exc:  # report, never die: the zygote serves every pool
            reply = protocol.spawn_failed(msg.get("id") if isinstance(msg, dict) else None,
                                          f"{type(exc).__name__}: {exc}")
        finally:
            for fd in fds:
                os.close(fd)
        chan.sendall(reply)


def _spawn(spec: dict, fds: list[int], supervisor_pid: int, chan_fd: int,
           before_go=None, become=None) -> int:
    """Double-forks a worker; returns its pid (in the host's pid namespace).

    zygote -> intermediate -> worker. With isolation the intermediate first unshares
    a pid namespace (so the worker is its pid 1) and stays until it has written the
    worker's user-namespace id maps: only a process outside that namespace, holding
    CAP_SETUID there, may map a uid other than its own. The worker waits for the
    zygote's "go", sent once the intermediate is reaped, i.e. once the worker has been
    re-parented to the supervisor; only then does it arm PDEATHSIG (set earlier, it
    would fire at the re-parenting). `before_go(pid)`, when given, runs between the
    two (a pool zygote: the supervisor places the worker in its cgroup); when it
    raises, the worker is killed and the error goes on. `become(sync)`, when given,
    is what the new process runs instead of _become_worker (a pool zygote's spare).
    Raises: OSError when a fork fails."""
    iso = spec.get("isolation") or {}
    pid_r, pid_w = os.pipe()      # intermediate -> zygote: the worker's pid
    go_r, go_w = os.pipe()        # zygote -> worker: re-parented; your host pid
    up_r, up_w = os.pipe()        # worker -> intermediate: map my user namespace
    ack_r, ack_w = os.pipe()      # intermediate -> worker: mapped
    pipes = (pid_r, pid_w, go_r, go_w, up_r, up_w, ack_r, ack_w)
    try:
        middle = os.fork()
    except OSError:
        for fd in pipes:
            os.close(fd)
        raise
    if middle == 0:
        try:
            os.close(pid_r)
            os.close(go_w)
            if iso.get("pidns"):
                namespaces.unshare(namespaces.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                os.close(pid_w)
                os.close(up_r)
                os.close(ack_w)
                if become is not None:
                    become((go_r, up_w, ack_r))                               # never returns
                _become_worker(spec, fds, supervisor_pid, (go_r, up_w, ack_r))  # never returns
            os.close(up_w)
            os.close(ack_r)
            if iso.get("userns") and os.read(up_r, 1) == b"u":
                try:
                    privileges.write_id_maps(pid, iso["uid"], iso["gid"])
                    os.write(ack_w, b"k")
                except OSError:
                    pass   # no ack: the worker reports that it could not be mapped
            os.write(pid_w, str(pid).encode())
        finally:
            os._exit(0)
    for fd in (pid_w, go_r, up_r, up_w, ack_r, ack_w):
        os.close(fd)
    try:
        data = b""
        while True:
            chunk = os.read(pid_r, 32)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(pid_r)
        os.waitpid(middle, 0)
    try:
        if data and before_go is not None:
            try:
                before_go(int(data))
            except BaseException:
                try:
                    os.kill(int(data), signal.SIGKILL)   # never runs unplaced
                except OSError:
                    pass
                raise
        if data:
            os.write(go_w, data)
    except OSError:
        if before_go is not None and data:
            raise
        # the worker died already; the supervisor reaps it
    finally:
        os.close(go_w)
    if not data:
        raise OSError("worker fork failed in the intermediate process")
    return int(data)


def _become_worker(spec: dict, fds: list[int], supervisor_pid: int, sync: tuple) -> None:
    code = protocol.EXIT_WORKER_BOOT
    go_r, up_w, ack_r = sync
    trace = spec["trace"]   # (step, CLOCK_MONOTONIC) for the supervisor's boot_ms
    trace.append(("fork", time.monotonic()))
    try:
        # join the worker's cgroup before anything else runs, so nothing it will ever
        # start can be outside it
        for path in spec.get("cgroup_procs") or ():
            with open(path, "w") as f:
                f.write("0")
        trace.append(("cgroup_join", time.monotonic()))
        if spec.get("tls"):
            _load_tls(spec)     # while root and before the view: the key is ours alone
        iso = spec.get("isolation")
        keep = set(fds) | {go_r, up_w, ack_r}
        if spec.get("access_log_fd") is not None:
            keep.add(spec["access_log_fd"])      # a pool zygote's worker: opened by it
        elif iso and spec.get("access_log") not in (None, "", "journal"):
            # opened while root: the isolated worker cannot see or open the file
            spec["access_log_fd"] = accesslog.open_file(spec["access_log"])
            keep.add(spec["access_log_fd"])
        proc.close_fds_except(keep)
        if iso:
            confine(iso, up_w, ack_r, trace)
        else:
            harden()
            trace.append(("harden", time.monotonic()))
        os.close(up_w)
        os.close(ack_r)
        # the zygote's go: we are the supervisor's child now (and learn our host pid,
        # since in our own pid namespace getpid() says 1)
        go = os.read(go_r, 32)
        os.close(go_r)
        if not go:
            os._exit(protocol.EXIT_SUPERVISOR_GONE)
        spec["host_pid"] = int(go)
        trace.append(("reparent", time.monotonic()))
        try:
            # SIGKILL while booting: nothing to drain yet, and the app's import may hang
            # forever (a pid namespace's init would even ignore a default SIGTERM).
            # workers.runtime makes it SIGTERM (a drain) once its control thread runs,
            # which bounds that drain (Worker._supervisor_gone).
            proc.set_pdeathsig(signal.SIGKILL)   # after the uid switch: that clears it
        except OSError:
            pass
        # the supervisor may have died before that: getppid() says so (not in a pid
        # namespace, where it is 0), the control channel's hang-up everywhere
        if not (iso and iso.get("pidns")) and os.getppid() != supervisor_pid \
                or proc.hung_up(fds[0]):
            os._exit(protocol.EXIT_SUPERVISOR_GONE)
        # its own session and process group: killing the group takes whatever the
        # app started with it (the cgroup does that fully where hostd has cgroups)
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if spec.get("role") == "zygote":
            proc.set_title(f"hostd: zygote {spec['pool']}")
            code = pool_zygote_main(spec, socket.socket(fileno=fds[0]), supervisor_pid)
            return
        code = _serve(spec, fds)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else protocol.EXIT_WORKER_BOOT
    except BaseException:
        try:
            log.error("worker_boot_failed", traceback.format_exc(), POOL=spec.get("pool"))
        except Exception:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


#: a pool zygote's app (pool_zygote_main): what its workers serve without importing it
_preloaded_app = None
#: the pool's TLS server context (workers/tls.make_context), made by _load_tls in this
#: process (a worker, or a preload pool's zygote, whose workers inherit it); or why it
#: could not be made (reported as a startup failure, which counts for rapid-fail)
_tls_context = None
_tls_error: str | None = None


def _load_tls(spec: dict) -> None:
    """Loads the pool's certificates and keys (spec["tls"]: WorkerSpec.tls), as root,
    before the worker is confined: an isolated pool need not see its key files, and only
    this process (and what it forks for the same pool) ever holds the key."""
    global _tls_context, _tls_error
    from workers import tls
    try:
        _tls_context = tls.make_context(spec["tls"])
    except tls.TLSLoadError as exc:
        _tls_error = str(exc)
    spec["trace"].append(("tls_load", time.monotonic()))


def _tls_failed(pool: str, chan: socket.socket) -> int:
    """The pool's TLS did not load: logs tls_load_failed, tells the supervisor
    (STARTUP_FAILED: it counts for rapid-fail). Returns EXIT_APP_LOAD."""
    msg = f"pool {pool}: TLS certificate not loaded: {_tls_error}"
    log.error("tls_load_failed", msg, POOL=pool)
    try:
        chan.send(protocol.startup_failed(msg))
    except OSError:
        pass
    return protocol.EXIT_APP_LOAD


def pool_zygote_main(spec: dict, chan: socket.socket, supervisor_pid: int) -> int:
    """A preload pool's zygote, already in the pool's cgroup, namespaces and identity
    (_become_worker did that): imports the app, freezes the heap, says ZYGOTE_READY
    (or STARTUP_FAILED, exit EXIT_APP_LOAD), then forks a worker for each SPAWN until
    its channel closes (EXIT_OK) or the supervisor is gone. Returns its exit code."""
    global _preloaded_app
    log.set_process(f"zygote {spec.get('pool', '?')}")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    trace = spec.get("trace") or []
    if _tls_error is not None:
        return _tls_failed(spec.get("pool", "?"), chan)
    gc.disable()        # no collection while the app imports: it would leave freed holes
    try:                # in pages the workers share, which their allocations then unshare
        from workers.app import check_interface, load_app
        config = spec.get("config") or {}
        _preloaded_app = load_app(config)
        # once, here: in each worker the signature's objects would be private memory
        check_interface(_preloaded_app, config.get("interface") or "wsgi")
    except BaseException:
        tb = traceback.format_exc()
        log.error("startup_failed", f"pool zygote: {tb}", POOL=spec.get("pool"))
        try:
            chan.send(protocol.startup_failed(tb))
        except OSError:
            pass
        return protocol.EXIT_APP_LOAD
    trace.append(("app_import", time.monotonic()))
    gc.freeze()         # (the workers enable the collector again: workers/runtime.py)
    trace.append(("freeze", time.monotonic()))
    try:
        chan.send(protocol.zygote_ready(trace))
    except OSError:
        return protocol.EXIT_SUPERVISOR_GONE
    log_fd = spec.get("access_log_fd")
    waiting: collections.deque = collections.deque()   # what came while a worker was placed
    pool = spec.get("pool", "?")
    spare = _Spare(pool, supervisor_pid, chan, log_fd)
    spare.fork()

    def receive():
        if waiting:
            return waiting.popleft()
        return fdpass.recv_with_fds(chan, protocol.MAX_CONTROL_BYTES, 0, maxfds=8)

    while True:
        try:
            data, fds = receive()
        except InterruptedError:
            continue
        except (ConnectionResetError, RuntimeError, OSError):
            return protocol.EXIT_SUPERVISOR_GONE
        if not data:
            return protocol.EXIT_OK
        msg = None
        try:
            msg = protocol.decode(data)
            if msg["t"] != protocol.SPAWN or len(fds) < 5:
                raise ValueError(f"unexpected request {msg.get('t')!r} with {len(fds)} fds")
            wspec = msg["spec"]
            wspec["trace"] = [("zygote", time.monotonic())]
            wspec["isolation"] = None        # this process is the pool's confinement
            wspec["cgroup_procs"] = []       # this one's cgroup, or placed (below)
            wspec["access_log_fd"] = log_fd
            before_go = None
            if msg.get("placing"):
                def before_go(pid, sid=msg["id"]):
                    chan.sendall(protocol.spawned(sid, pid, placing=True))
                    while True:   # the supervisor's PLACED; anything else waits its turn
                        got, more = fdpass.recv_with_fds(chan, protocol.MAX_CONTROL_BYTES, 0,
                                                         maxfds=8)
                        if not got:
                            raise OSError("supervisor gone while placing a worker")
                        answer = protocol.decode(got)
                        if answer.get("t") == protocol.PLACED and answer.get("id") == sid:
                            if answer.get("error"):
                                raise OSError(str(answer["error"]))
                            return
                        waiting.append((got, more))
            pid = spare.take(data, fds, before_go)
            if pid is None:     # no spare (it died): fork one for this spawn
                pid = _spawn(wspec, fds, supervisor_pid, chan.fileno(), before_go)
            reply = None if before_go is not None else protocol.spawned(msg["id"], pid)
        except Exception as exc:
            reply = protocol.spawn_failed(msg.get("id") if isinstance(msg, dict) else None,
                                          f"{type(exc).__name__}: {exc}")
        finally:
            for fd in fds:
                os.close(fd)
        if reply is not None:
            try:
                chan.sendall(reply)
            except OSError:
                return protocol.EXIT_SUPERVISOR_GONE
        if spare.pid is None:
            spare.fork()       # the next worker's, off the spawn's path


class _Spare:
    """A pool zygote's spare: a worker process forked ahead of time, already
    re-parented to the supervisor, hardened and in its session, waiting on a socket for
    its SPAWN (spec and descriptors). A spawn then costs no fork: the zygote forwards
    the SPAWN, names the spare's pid, and forks the next spare after answering.
    The supervisor is told each spare's pid (protocol.SPARE), so that it reaps one that
    never served (the zygote retired: the spare's socket closes and it exits)."""

    def __init__(self, pool: str, supervisor_pid: int, chan: socket.socket, log_fd):
        self.pool, self.supervisor_pid, self.chan, self.log_fd = pool, supervisor_pid, chan, log_fd
        self.pid: int | None = None
        self.sock: socket.socket | None = None

    def fork(self) -> None:
        """Forks a new spare (double fork, as _spawn); on failure there is none (the
        next spawn forks its worker itself)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = _spawn({"isolation": None}, [], self.supervisor_pid, self.chan.fileno(),
                         become=lambda sync: _become_spare(self, theirs.fileno(), sync))
        except OSError:
            mine.close()
            return
        finally:
            theirs.close()
        self.pid, self.sock = pid, mine
        try:
            self.chan.sendall(protocol.spare(pid))
        except OSError:
            pass

    def take(self, data: bytes, fds: list[int], before_go) -> int | None:
        """Hands the SPAWN (its bytes as they came) to the spare, after `before_go(pid)`,
        which may place it in its cgroup first. Returns its pid, or None when there is
        no live spare."""
        pid, sock = self.pid, self.sock
        self.pid, self.sock = None, None
        if pid is None:
            return None
        try:
            if before_go is not None:
                before_go(pid)
            fdpass.send_with_fds(sock, data, fds)
            return pid
        except OSError:
            if before_go is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
                raise
            return None      # it died waiting: the caller forks a worker instead
        finally:
            sock.close()


def _become_spare(spare: _Spare, sock_fd: int, sync: tuple) -> None:
    """The spare's life: everything of _become_worker that needs no spec (descriptors
    closed, hardened, re-parented, its own session), then the SPAWN forwarded by its
    zygote, then the worker (run_worker with the zygote's app)."""
    code = protocol.EXIT_WORKER_BOOT
    go_r, up_w, ack_r = sync
    try:
        keep = {sock_fd, go_r, up_w, ack_r}
        if spare.log_fd is not None:
            keep.add(spare.log_fd)
        proc.close_fds_except(keep)
        harden()
        os.close(up_w)
        os.close(ack_r)
        go = os.read(go_r, 32)
        os.close(go_r)
        if not go:
            os._exit(protocol.EXIT_SUPERVISOR_GONE)
        host_pid = int(go)
        try:
            proc.set_pdeathsig(signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() != spare.supervisor_pid:
            os._exit(protocol.EXIT_SUPERVISOR_GONE)
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        proc.set_title(f"hostd: spare {spare.pool}")
        sock = socket.socket(fileno=sock_fd)
        while True:
            try:
                data, fds = fdpass.recv_with_fds(sock, protocol.MAX_CONTROL_BYTES, 0, maxfds=8)
                t_got = time.monotonic()
                break
            except InterruptedError:
                continue
        sock.close()
        if not data or len(fds) < 5:
            os._exit(protocol.EXIT_OK)     # its zygote retired before it was needed
        spec = protocol.decode(data)["spec"]
        del data     # (the bytes stay alive in this frame for the worker's whole life)
        spec["trace"] = [("spare", t_got)]
        spec["host_pid"] = host_pid
        spec["access_log_fd"] = spare.log_fd
        code = _serve(spec, fds)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else protocol.EXIT_WORKER_BOOT
    except BaseException:
        try:
            log.error("worker_boot_failed", traceback.format_exc(), POOL=spare.pool)
        except Exception:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(code)


def _serve(spec: dict, fds: list[int]) -> int:
    """The worker's life once it is confined and re-parented (_become_worker, or a
    pool zygote's spare that got its SPAWN): the SPAWN's descriptors as sockets, then
    run_worker (with the pool zygote's app, if any). Returns the exit code."""
    proc.set_title(f"hostd: worker {spec['pool']} #{spec['worker_id']}")
    ctl = socket.socket(fileno=fds[0])
    queue = socket.socket(fileno=fds[1])
    reroute = socket.socket(fileno=fds[3])
    board = protocol.Scoreboard(fds[4])
    from workers.runtime import run_worker
    spec["conn_sems"] = fds[5:]   # max_connections semaphores (global, pool's)
    if _tls_error is not None:
        return _tls_failed(spec["pool"], ctl)
    return run_worker(spec, ctl, queue, fds[2], reroute, board, _preloaded_app,
                      _tls_context)


def harden() -> None:
    """Every worker, isolated or not: an empty capability bounding set and
    no_new_privs, so nothing it execs can gain privileges. (A worker of an unisolated
    pool keeps hostd's uid; hostd warns about that at start.)"""
    if os.geteuid() == 0:
        privileges.drop_bounding_set()
    privileges.set_no_new_privs()


def confine(iso: dict, up_w: int, ack_r: int, trace: list) -> None:
    """Puts this (root) process into the pool's namespaces and identity, in the one
    order that works: the network namespace and the mount view need root of the
    host; the user namespace comes last, so the namespaces made before it belong to
    the host's user namespace and the worker can never undo them.
    Raises: OSError naming the step that failed."""
    if iso.get("netns"):
        fd = os.open(iso["netns"], os.O_RDONLY | os.O_CLOEXEC)
        try:
            namespaces.setns(fd, namespaces.CLONE_NEWNET)
        finally:
            os.close(fd)
        trace.append(("netns", time.monotonic()))
    if iso.get("view"):
        namespaces.unshare(namespaces.CLONE_NEWNS | namespaces.CLONE_NEWIPC)
        fsview.apply(fsview.View.from_spec(iso["view"]))
        trace.append(("mount_view", time.monotonic()))
    if iso.get("userns"):
        namespaces.unshare(namespaces.CLONE_NEWUSER)
        os.write(up_w, b"u")
        if os.read(ack_r, 1) != b"k":
            raise OSError("the intermediate process could not write the uid/gid maps")
        trace.append(("userns", time.monotonic()))
    privileges.drop_to(iso["uid"], iso["gid"])
    trace.append(("identity", time.monotonic()))
