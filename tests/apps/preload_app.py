"""Preload tests (tests/integration/test_preload.py): what a worker can tell about where
its app was imported. At import it builds ~16 MiB of Python objects (a framework's
worth), so a worker that shares them copy-on-write shows in its private memory.
GET / answers JSON: the worker's pid, the pid that imported this module, the number of
objects gc.freeze() froze in the importing process, the pids this process sees in /proc,
whether the collector runs in the worker, and IMPORT_MARK (the env var of that name at import: a recycle after a code or config
change must show the new one)."""
import gc
import json
import os

IMPORT_PID = os.getpid()
IMPORT_MARK = os.environ.get("IMPORT_MARK", "")
BALLAST = [f"object number {i} of the app's import-time state" for i in range(200_000)]
if os.environ.get("IMPORT_FAIL"):
    raise RuntimeError("IMPORT_FAIL is set: this app refuses to import")


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/procs":
        seen = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
        body = json.dumps({"pid": os.getpid(), "procs": seen}).encode()
    else:
        body = json.dumps({"pid": os.getpid(), "import_pid": IMPORT_PID,
                           "frozen": gc.get_freeze_count(), "mark": IMPORT_MARK,
                           "ballast": len(BALLAST), "gc_enabled": gc.isenabled()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
