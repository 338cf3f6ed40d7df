"""The zygote: a small process with the worker runtime imported (no app), which forks
workers on the supervisor's request.

A fresh interpreter importing the runtime took ~57 ms to become ready here; a fork of a
preloaded process takes a few ms. The zygote forks twice (zygote -> intermediate ->
worker) and the intermediate exits at once, so the worker is re-parented to the
supervisor, which is a child subreaper: the supervisor reaps its workers and sees their
exit status, while the zygote stays single-threaded and small.

Request  (supervisor -> zygote): {"t": "spawn", "id": N, "spec": {...}} + descriptors
         [control, queue out, queue semaphore, reroute in, scoreboard memfd].
Answer   (zygote -> supervisor): {"t": "spawned", "id": N, "pid": P} or
         {"t": "spawn_failed", "id": N, "error": "..."}.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback

from hostd import log, protocol
from kernel import fdpass, proc

SPAWN = "spawn"
SPAWNED = "spawned"
SPAWN_FAILED = "spawn_failed"

#: how long a new worker waits to be re-parented to the supervisor
_REPARENT_WAIT = 2.0


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
    import workers.runtime  # noqa: F401  the preload: what every worker needs, paid once
    while True:
        try:
            data, fds = fdpass.recv_with_fds(chan, protocol.MAX_CONTROL_BYTES, 0, maxfds=8)
        except InterruptedError:
            continue
        except (ConnectionResetError, RuntimeError):
            return protocol.EXIT_SUPERVISOR_GONE
        if not data:
            return protocol.EXIT_OK
        try:
            msg = protocol.decode(data)
            if msg["t"] != SPAWN or len(fds) < 5:
                raise ValueError(f"unexpected request {msg.get('t')!r} with {len(fds)} fds")
            pid = _spawn(msg["spec"], fds, supervisor_pid, chan.fileno())
            reply = {"t": SPAWNED, "id": msg["id"], "pid": pid}
        except Exception as exc:  # report, never die: the zygote serves every pool
            reply = {"t": SPAWN_FAILED, "id": msg.get("id") if isinstance(msg, dict) else None,
                     "error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        chan.sendall(protocol.encode(reply))


def _spawn(spec: dict, fds: list[int], supervisor_pid: int, chan_fd: int) -> int:
    """Double-forks a worker; returns its pid. Raises OSError when fork fails."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become_worker(spec, fds, supervisor_pid, chan_fd)  # never returns
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = b""
        while True:
            chunk = os.read(r, 32)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    if not data:
        raise OSError("worker fork failed in the intermediate process")
    return int(data)


def _become_worker(spec: dict, fds: list[int], supervisor_pid: int, chan_fd: int) -> None:
    code = protocol.EXIT_WORKER_BOOT
    try:
        # join the worker's cgroup before anything else runs, so nothing it will ever
        # start can be outside it
        for path in spec.get("cgroup_procs") or ():
            with open(path, "w") as f:
                f.write("0")
        proc.close_fds_except(set(fds))
        # wait to be re-parented, then die with the supervisor (SIGTERM: drain first);
        # setting PDEATHSIG before that would fire when the intermediate exits
        deadline = time.monotonic() + _REPARENT_WAIT
        while os.getppid() != supervisor_pid and time.monotonic() < deadline:
            time.sleep(0.0002)
        try:
            proc.set_pdeathsig(signal.SIGTERM)
        except OSError:
            pass
        if os.getppid() != supervisor_pid:
            os._exit(protocol.EXIT_SUPERVISOR_GONE)
        # its own session and process group: killing the group takes whatever the
        # app started with it (the cgroup does that fully where hostd has cgroups)
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        proc.set_title(f"hostd: worker {spec['pool']} #{spec['worker_id']}")
        ctl = socket.socket(fileno=fds[0])
        queue = socket.socket(fileno=fds[1])
        reroute = socket.socket(fileno=fds[3])
        board = protocol.Scoreboard(fds[4])
        from workers.runtime import run_worker
        spec["conn_sems"] = fds[5:]   # max_connections semaphores (global, pool's)
        code = run_worker(spec, ctl, queue, fds[2], reroute, board)
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
