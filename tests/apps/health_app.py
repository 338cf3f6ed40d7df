"""A deliberately bad app for health tests: /hang, /crash (segfault), /work (60 s, with a
child that ignores SIGTERM), anything else answers with its pid."""
import ctypes
import os
import signal
import subprocess
import time


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hang":
        while True:
            time.sleep(3600)
    if path == "/crash":
        ctypes.string_at(0)            # SIGSEGV
    if path == "/work":
        # a child the app started, which would survive its parent on its own
        child = subprocess.Popen(["sleep", "600"], preexec_fn=lambda: signal.signal(
            signal.SIGTERM, signal.SIG_IGN))
        with open(environ["QUERY_STRING"], "w") as f:   # the test reads the child's pid
            f.write(str(child.pid))
        time.sleep(60)
    if path == "/daemon":
        # the classic double fork: a session of its own, re-parented away from us
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open(environ["QUERY_STRING"], "w") as f:
                    f.write(str(os.getpid()))
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(600)
            os._exit(0)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
