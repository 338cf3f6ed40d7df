"""Runs bench/app.py under bjoern in N processes (bench/run's "bjoern" server).

    python bench/bjoern_serve.py HOST PORT [PROCESSES]

bjoern is single-process and single-threaded.  This parent forks PROCESSES
children (default 2); each one binds its own listening socket with
SO_REUSEPORT (``bjoern.run(..., reuse_port=True)``) and runs bjoern's event
loop, so the kernel spreads new connections over the children.  The parent
only waits: SIGTERM/SIGINT to it is passed on to the children.
"""

import os
import signal
import sys
from pathlib import Path

import bjoern

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import application  # noqa: E402


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    children = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                bjoern.run(application, host, port, reuse_port=True)
            finally:
                os._exit(0)
        children.append(pid)

    def stop(signum, _frame):
        for c in children:
            try:
                os.kill(c, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    for c in children:
        while True:
            try:
                _, st = os.waitpid(c, 0)
                break
            except InterruptedError:
                continue
        if os.waitstatus_to_exitcode(st) not in (0, -signal.SIGTERM):
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
