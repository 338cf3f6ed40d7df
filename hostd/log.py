"""Events and messages, one record each.

Every record is an event name plus key=value fields and a syslog priority. Two backends,
chosen once per process tree at the first record (`backend()`):

* stderr (no journal, or stderr is a terminal): `<PRIO>EVENT key=value ...` one line
  each (the prefix is what systemd's stderr capture and `logger --prio-prefix`
  understand). Values with spaces, quotes or newlines are written as JSON strings, so a
  line can always be split back into its fields. Tests parse this format: keep it.
* journald's native protocol (the journal socket exists and stderr is not a tty, or
  $JOURNAL_STREAM names our stderr): one datagram per record to
  /run/systemd/journal/socket with MESSAGE=, PRIORITY=, SYSLOG_IDENTIFIER=hostd,
  EVENT=, MESSAGE_ID= (fixed per event: `MESSAGE_IDS`, explained for `journalctl -x`
  by systemd/hostd.catalog), HOSTD_PROCESS= and the record's own fields (POOL=,
  WORKER_PID=, REASON=, ...). Multi-line values use the length-prefixed binary form.
  $HOSTD_LOG=stderr|journal forces a backend; $HOSTD_JOURNAL_SOCKET another socket.

Every process (supervisor, front ends, zygote, workers) uses it: the journal socket is
made again in a forked child (the parent's descriptor is closed by close_fds_except).
"""
from __future__ import annotations

import json
import os
import socket
import stat
import struct
import sys
import uuid

EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "hostd"

_proc = "hostd"

#: MESSAGE_ID= of each event: uuid5 of "hostd.<event>" in this namespace, so an id never
#: changes (events not listed get one the same way). systemd/hostd.catalog explains them
#: (`python3 -m hostd.log --catalog` writes it).
_NS = uuid.UUID("6b1d3c4e-2f0a-4c55-9a57-3f1e0d6a9b11")
EVENTS: dict[str, str] = {
    "start": "hostd started: sockets bound, zygote and front ends running.",
    "ready": "hostd told systemd READY=1: listening, every always_running pool has a ready worker.",
    "stop": "hostd is stopping: no new connections, in-flight requests finish within the largest shutdown_limit.",
    "exit": "hostd stopped.",
    "reload": "Configuration reload requested (SIGHUP, systemctl reload, hostctl reload).",
    "reloaded": "Configuration reloaded: new pools started, removed pools draining, changed pools replaced.",
    "reload_failed": "The main file is broken; hostd keeps running on the previous configuration.",
    "config_error": "An error in the main file or a pool file. A broken pool file marks that pool failed (503); a broken main file stops hostd at start.",
    "spawn": "A worker process of a pool is being started (demand, always_running, web garden growth or a recycle).",
    "spawn_failed": "A worker could not be started (zygote unreachable, cgroup failure).",
    "worker_boot_failed": "A forked worker failed before loading its application.",
    "rebalance": "A saturated worker of a web garden gives idle keep-alive connections (COUNT=) back to the front ends, so that their next requests reach a worker with room.",
    "recycle_ready": "The replacement of a recycled worker is ready; the old worker drains.",
    "zygote": "The zygote (forks workers with the runtime preloaded) started.",
    "zygote_crash": "The zygote died, or a preload pool's own zygote (POOL=) died after it was ready; it is started again.",
    "zygote_ready": "A preload pool's own zygote imported the app and froze its heap: that pool's workers are forked from it (the warm tier).",
    "zygote_failed": "A preload pool's own zygote could not start (REASON=: the app's import error, or how it exited); its workers import the app themselves until the pool's next generation.",
    "zygote_retired": "A preload pool's own zygote was retired (REASON=: replaced by a new generation, hostctl pool recycle, pools added, the pool stopped); the workers it forked go on.",
    "frontend_start": "A front-end process (accepts, reads heads, routes) started.",
    "frontend_crash": "A front end died; it is replaced and takes the same listening sockets.",
    "orphan_action": "Output of the command run for an orphaned worker ([health] orphan_action).",
    "start_failed": "hostd could not start (a listening or control socket could not be made).",
    "recycle": "A worker is being replaced (REASON=: config, time, requests, schedule, memory ...). Replacement starts first unless memory forced it.",
    "crash": "A worker exited unexpectedly. It counts toward rapid-fail protection.",
    "oom": "A worker was killed by the kernel's OOM killer (its pool's memory limit).",
    "unhealthy": "A worker missed pings, was stuck, or exceeded request_timeout; unhealthy_action applies.",
    "rapid_fail": "A pool crashed too often within rapid_fail_interval and was stopped (state failed, 503). `hostctl pool start NAME` brings it back.",
    "orphan": "A failed worker is kept alive for debugging ([health] orphan). `hostctl orphan kill PID` ends it.",
    "startup_failed": "A worker could not import its application; the traceback is in MESSAGE.",
    "lifespan_unsupported": "An ASGI app raised on the lifespan scope before answering startup (lifespan = \"auto\"): it runs without lifespan events.",
    "lifespan_shutdown_timeout": "An ASGI app's lifespan shutdown did not complete before the worker had to exit.",
    "lifespan_shutdown_failed": "An ASGI app's lifespan shutdown failed or raised; the reason is in MESSAGE.",
    "startup_timeout": "A worker did not report ready within startup_limit and was killed.",
    "shutdown_timeout": "A draining worker did not exit within shutdown_limit and was killed.",
    "idle": "A worker was idle and is stopped: for idle_timeout (REASON=idle_timeout), or under memory pressure above [hostd] idle_pressure (REASON=memory_pressure, PRESSURE=).",
    "pressure": "[hostd] idle_pressure is watched: the pressure file hostd reads (FILE=).",
    "memory_pressure": "Memory pressure crossed [hostd] idle_pressure (PRESSURE=, THRESHOLD=): above it idle workers are stopped, oldest-idle first.",
    "access": "One served request: NCSA combined log format + pool, worker pid, duration in microseconds.",
    "reopen_logs": "SIGUSR1: access log files are reopened (after logrotate moved them).",
    "app_error": "The application raised an exception; the client got 500 and the traceback is in MESSAGE.",
    "limit": "A client limit was hit (connections, header size/time, body rate, send timeout ...).",
    "no_isolation": "hostd runs without root: pools are not isolated.",
    "unisolated": "A pool opted out of isolation ([isolation] enabled = false): its workers run as hostd's user (root), in hostd's namespaces; logged at every start and reload.",
    "identity": "The uid/gid a pool's workers (or the front ends) run as (UID=, GID=); `hostctl pool identity NAME`.",
    "isolation_failed": "A changed [isolation] could not be applied on reload (e.g. the identity cannot read the pool's directory); the pool failed.",
    "frontend_identity": "The front ends' identity ([hostd] frontend_identity) could not be resolved; they stay root.",
    "reroute_refused": "An isolated worker handed back a descriptor that is not a client connection of hostd; it was closed.",
    "network": "A pool's private network link (INTERFACE=) was made, or its network could not be removed.",
    "watchdog": "Watchdog keep-alives to systemd are enabled (WatchdogSec=).",
    "cgroups": "Where hostd's cgroup subtree is (CGROUP=) and which cgroup version it uses (VERSION=).",
    "no_cgroups": "No usable cgroup subtree: workers run uncontained and [limits] are not applied.",
    "cgroup_failed": "A worker's cgroup could not be made or set up (the worker is not started), or its memory.high could not be lifted.",
    "cgroup_kill_failed": "cgroup.kill (or the v1 fallback) could not kill a worker's cgroup.",
    "cgroup_leftovers": "A worker exited and left processes in its cgroup; they are killed.",
    "cgroup_remove": "A worker's cgroup could not be removed after its exit.",
    "cgroup_stale": "At start, hostd removed the cgroups an earlier hostd left when it was killed (v1).",
    "cgroup_teardown": "hostd's cgroup subtree could not be removed at exit.",
    "orphan_cgroup": "An orphaned worker could not be moved to its pool's orphans cgroup.",
    "cpu_limit": "A pool's CPU use over cpu_interval passed cpu_max; ACTION= is its cpu_action (recycle or kill).",
    "no_subreaper": "hostd could not become a child subreaper: processes its workers leave behind are not reaped by it.",
    "socket_activation": "A socket passed by systemd was ignored, or a listen address was not passed and is bound by hostd.",
    "tmp": "A pool's private /tmp could not be removed.",
    "control_error": "The control API failed on a request (500); the traceback is in MESSAGE.",
    "access_log": "The access log file could not be opened or written.",
    "accept_overload": "A front end's accept() failed for lack of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM); the connections wait in the backlog.",
    "queue_error": "A worker lost its pool queue; it stops taking connections.",
    "queue_truncated": "A connection in the pool queue arrived without its descriptor; its slot is returned.",
    "reroute_full": "A worker could not hand a connection back to the front ends in time; the connection is closed.",
    "reroute_failed": "A worker could not hand a connection back to the front ends; the connection is closed.",
    "memory_fence": "A worker could not be given its memory notification; the supervisor's own watch still recycles it, a few requests later.",
    "bad_response": "The application returned an invalid status line or header; the client got 500 (or was cut off if the response had begun).",
    "app_stderr": "A line the application wrote to stderr.",
    "worker_thread_error": "An error in a worker's request thread outside the application; the connection is closed.",
    "bad_control_message": "A worker received a control message it could not decode.",
    "unknown_control_message": "A worker received a control message of an unknown type.",
    "tls_load_failed": "A pool's certificate/key pair did not load (POOL=, FILE=, REASON=: OpenSSL's words: a missing file, not PEM, a key that does not match): on reload the pool keeps its previous pair (new connections too); in a worker or pool zygote, it cannot start.",
    "tls_reloaded": "A pool's certificate or key changed on reload and the new pair loads: its workers are replaced (overlapping), so new TLS connections get the new certificate while open ones finish on the old workers.",
    "tls_expiring": "A pool's certificate expires within 14 days, or has expired (POOL=, FILE=, NOT_AFTER=, DAYS=); checked at start, reload and once a day. Renew it, then reload hostd.",
    "tls_no_listener": "Pools have a [tls] table but hostd has no TLS listener ([hostd] listen_tls, bound at start: a restart applies it); they are served on plain HTTP only.",
    "tls_default_pool": "[hostd] tls_default_pool names no pool with a [tls] table: ClientHellos without SNI or with an unbound name are refused (alert unrecognized_name).",
    "bad_routes": "A worker received a routing table it could not use; it keeps the previous one.",
}
MESSAGE_IDS: dict[str, str] = {e: uuid.uuid5(_NS, "hostd." + e).hex for e in EVENTS}

_backend = None          # "stderr" | "journal", decided at the first record
_jsock = None            # the journal socket of this process
_jpid = 0                # ... and the process it was made in


def set_process(name: str) -> None:
    """Names the process in every record (e.g. "supervisor", "frontend-0", "worker alpha#3")."""
    global _proc
    _proc = name


def message_id(event: str) -> str:
    mid = MESSAGE_IDS.get(event)
    if mid is None:
        mid = MESSAGE_IDS[event] = uuid.uuid5(_NS, "hostd." + event).hex
    return mid


def _journal_address() -> str:
    return os.environ.get("HOSTD_JOURNAL_SOCKET") or JOURNAL_SOCKET


def backend() -> str:
    """"journal" or "stderr" (decided once; forked children inherit the choice)."""
    global _backend
    if _backend is None:
        _backend = _choose()
    return _backend


def _choose() -> str:
    forced = os.environ.get("HOSTD_LOG", "")
    if forced in ("stderr", "journal"):
        return forced
    try:
        if not stat.S_ISSOCK(os.stat(_journal_address()).st_mode):
            return "stderr"
    except OSError:
        return "stderr"
    stream = os.environ.get("JOURNAL_STREAM", "")
    if stream:
        try:
            st = os.fstat(2)
            dev, ino = stream.split(":")
            if int(dev) == st.st_dev and int(ino) == st.st_ino:
                return "journal"
        except (OSError, ValueError):
            pass
    try:
        return "stderr" if os.isatty(2) else "journal"
    except OSError:
        return "journal"


def reset_backend(name: str | None = None) -> None:
    """Tests: choose again (or force `name`)."""
    global _backend
    _backend = name


def _fmt(value) -> str:
    s = value if isinstance(value, str) else str(value)
    if not s or any(c in s for c in ' "=\n\r\t\\'):
        return json.dumps(s)
    return s


def _field_name(k: str) -> str:
    k = k.upper()
    if k.isidentifier() and k.isascii() and not k.startswith("_"):
        return k
    k = "".join(c if c.isalnum() and c.isascii() else "_" for c in k).lstrip("_")
    return k or "FIELD"


def _field(out: list, name: str, value) -> None:
    v = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
    n = name.encode()
    if b"\n" in v:
        out.append(n + b"\n" + struct.pack("<Q", len(v)) + v + b"\n")
    else:
        out.append(n + b"=" + v + b"\n")


def journal_entry(priority: int, event: str, message: str, fields: dict,
                  text: str | None = None) -> bytes:
    """One journal entry in the native protocol (the datagram's bytes). MESSAGE= is the
    stderr line without its <N> prefix (so `journalctl -u hostd` reads as before), or
    `text`; a multi-line message also goes whole into HOSTD_MESSAGE= (binary form)."""
    out: list[bytes] = []
    if text is None:
        text = stderr_line(priority, event, message, fields).partition(">")[2]
    _field(out, "MESSAGE", text)
    if "\n" in message:
        _field(out, "HOSTD_MESSAGE", message)
    _field(out, "PRIORITY", priority)
    _field(out, "SYSLOG_IDENTIFIER", IDENTIFIER)
    _field(out, "EVENT", event)
    _field(out, "MESSAGE_ID", message_id(event))
    _field(out, "HOSTD_PROCESS", _proc)
    for k, v in fields.items():
        if v is not None:
            _field(out, _field_name(k), v)
    return b"".join(out)


def _journal_sock():
    global _jsock, _jpid
    pid = os.getpid()
    if _jsock is None or _jpid != pid:
        if _jsock is not None and _jpid != pid:
            _jsock.detach()   # the fd number was closed/reused in this child: not ours
        _jsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        _jpid = pid
        try:
            _jsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        except OSError:
            pass
    return _jsock


def journal_send(data: bytes) -> bool:
    """Sends one entry; a too-large one goes through a sealed memfd (as sd_journal does).
    Returns False when the journal cannot be reached."""
    try:
        sock = _journal_sock()
        try:
            sock.sendto(data, _journal_address())
            return True
        except OSError as exc:
            if exc.errno not in (90, 105):   # EMSGSIZE, ENOBUFS
                raise
        fd = os.memfd_create("hostd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            import fcntl
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))],
                         0, _journal_address())
        finally:
            os.close(fd)
        return True
    except (OSError, ValueError, AttributeError):
        return False


def stderr_line(priority: int, event: str, message: str, fields: dict) -> str:
    parts = [f"<{priority}>{event}", f"proc={_fmt(_proc)}", f"pid={os.getpid()}"]
    for k, v in fields.items():
        if v is not None:
            parts.append(f"{k}={_fmt(v)}")
    if message:
        parts.append(f"msg={_fmt(message)}")
    return " ".join(parts)


def emit(priority: int, event: str, message: str = "", **fields) -> None:
    """Writes one record. Takes a priority (ERR..DEBUG), an event name (start, ready,
    crash, config_error, ...), a human message, and fields (POOL=, WORKER_PID=, REASON=,
    ... by convention upper-case). Never raises: logging must not take a process down."""
    try:
        if (_backend or backend()) == "journal":
            if journal_send(journal_entry(priority, event, message, fields)):
                return
        line = stderr_line(priority, event, message, fields)
    except Exception:
        return
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def info(event: str, message: str = "", **fields) -> None:
    emit(INFO, event, message, **fields)


def notice(event: str, message: str = "", **fields) -> None:
    emit(NOTICE, event, message, **fields)


def warning(event: str, message: str = "", **fields) -> None:
    emit(WARNING, event, message, **fields)


def error(event: str, message: str = "", **fields) -> None:
    emit(ERR, event, message, **fields)


def catalog() -> str:
    """systemd/hostd.catalog: one entry per MESSAGE_ID (for `journalctl -x`)."""
    out = ["# hostd message catalog (generated by `python3 -m hostd.log --catalog`).",
           "# Install: cp hostd.catalog /usr/lib/systemd/catalog/ && journalctl --update-catalog", ""]
    for event, text in EVENTS.items():
        out += [f"-- {MESSAGE_IDS[event]}", f"Subject: hostd: {event}",
                "Defined-By: hostd", "Documentation: file:///usr/share/doc/hostd/README.md", "",
                f"EVENT={event}. {text}", "Fields: POOL=, WORKER_PID=, REASON= where they apply.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--catalog"]:
        sys.stdout.write(catalog())
    else:
        print("usage: python3 -m hostd.log --catalog", file=sys.stderr)
        sys.exit(2)
