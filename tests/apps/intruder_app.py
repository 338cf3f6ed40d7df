"""Test app for [isolation] (tests/integration/test_isolation.py): a hostile site that
tries to reach outside its pool. Each attempt answers JSON
{"ok": true|false, "errno": "EACCES"|..., "detail": "..."}: ok = the attempt WORKED.

/whoami                     uid, gid, capabilities, the pids it can see, its cgroups
/read?path=P                read a file
/list?path=P                list a directory
/write?path=P               create a file
/kill?pid=N                 signal 0 (existence/permission probe) to pid N
/ptrace?pid=N               PTRACE_ATTACH pid N (detached at once if it worked)
/connect?host=H&port=N      TCP connect
/unix?path=P                connect to an AF_UNIX stream socket
/daemon                     double-fork a daemon (setsid) that exits after 0.2 s: as pid 1
                            of the pool's pid namespace the worker must reap it
/import?name=M              import a module (the runtime must be readable to the pool's uid)
/forge                      send a socket of its own making, with a request for b.localhost,
                            down every SOCK_SEQPACKET descriptor it holds (the reroute
                            channel among them): hostd must refuse it
/escape                     write "0" (itself) to the cgroup.procs of its cgroups' parents
                            and of the hierarchy roots
"""
import ctypes
import errno
import json
import os
import socket


def _args(environ):
    out = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        k, _, v = part.partition("=")
        out[k] = v.replace("%2F", "/")
    return out


def _attempt(fn):
    try:
        detail = fn()
        return {"ok": True, "errno": None, "detail": str(detail)[:200]}
    except OSError as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno)),
                "detail": str(e)}


def _read(path):
    with open(path, "rb") as f:
        return f.read(64)


def _write(path):
    with open(path, "w") as f:
        f.write("intruder was here")
    return path


def _ptrace(pid):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    if libc.ptrace(16, pid, None, None) != 0:       # PTRACE_ATTACH
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    libc.ptrace(17, pid, None, None)                # PTRACE_DETACH
    return "attached"


def _connect(host, port):
    with socket.create_connection((host, int(port)), timeout=2):
        return "connected"


def _unix(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(path)
        return "connected"


def _escape():
    """Every way out of its cgroups it can name: all must fail."""
    results = []
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        name = controllers.replace("name=", "") if controllers else ""
        base = "/sys/fs/cgroup/unified" if not controllers and os.path.isdir(
            "/sys/fs/cgroup/unified") else "/sys/fs/cgroup" + (f"/{name}" if name else "")
        if not os.path.isdir(base):
            continue
        for target in {os.path.dirname(path.rstrip("/")) or "/", "/"}:
            procs = os.path.join(base + target, "cgroup.procs")
            results.append((procs, _attempt(lambda p=procs: _write_procs(p))))
    worked = [p for p, r in results if r["ok"]]
    if worked:
        return f"escaped via {worked}"
    raise OSError(errno.EACCES, f"all {len(results)} attempts failed: "
                  + "; ".join(f"{p}: {r['errno']}" for p, r in results[:6]))


def _write_procs(path):
    with open(path, "w") as f:
        f.write("0")
    return path


def _whoami():
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            status[k] = v.strip()
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    with open("/proc/self/cgroup") as f:
        cgroup = f.read()
    try:
        with open("/proc/self/uid_map") as f:
            uid_map = f.read().split()
    except OSError:
        uid_map = []
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "CapEff": status.get("CapEff"), "CapPrm": status.get("CapPrm"),
            "CapBnd": status.get("CapBnd"), "NoNewPrivs": status.get("NoNewPrivs"),
            "pids": pids, "getpid": os.getpid(), "cgroup": cgroup, "uid_map": uid_map,
            "tmp": sorted(os.listdir("/tmp")), "cwd": os.getcwd(),
            "interfaces": [n for _, n in socket.if_nameindex()]}


def application(environ, start_response):
    path = environ["PATH_INFO"]
    a = _args(environ)
    if path == "/whoami":
        doc = _whoami()
    elif path == "/read":
        doc = _attempt(lambda: _read(a["path"]))
    elif path == "/list":
        doc = _attempt(lambda: os.listdir(a["path"]))
    elif path == "/write":
        doc = _attempt(lambda: _write(a["path"]))
    elif path == "/kill":
        doc = _attempt(lambda: os.kill(int(a["pid"]), 0))
    elif path == "/ptrace":
        doc = _attempt(lambda: _ptrace(int(a["pid"])))
    elif path == "/connect":
        doc = _attempt(lambda: _connect(a["host"], a["port"]))
    elif path == "/unix":
        doc = _attempt(lambda: _unix(a["path"]))
    elif path == "/import":
        import importlib
        doc = _attempt(lambda: importlib.import_module(a["name"]).__name__)
    elif path == "/forge":
        import array
        sent = 0
        mine, theirs = socket.socketpair()
        request = b"GET /forged HTTP/1.1\r\nHost: b.localhost\r\n\r\n"
        for fd in range(3, 256):
            try:
                s = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            try:
                if s.type == socket.SOCK_SEQPACKET:
                    s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                           array.array("i", [theirs.fileno()]).tobytes())],
                              socket.MSG_DONTWAIT)
                    sent += 1
            except OSError:
                pass
            finally:
                s.close()
        mine.close()
        theirs.close()
        doc = {"ok": sent > 0, "sent": sent}
    elif path == "/daemon":
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                import time
                time.sleep(0.2)
            os._exit(0)
        os.waitpid(pid, 0)
        doc = {"ok": True}
    elif path == "/escape":
        doc = _attempt(_escape)
    else:
        doc = {"pool": environ.get("hostd.pool"), "pid": os.getpid(),
               "worker": environ.get("hostd.worker_pid")}
    body = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
