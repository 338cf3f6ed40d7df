"""Throughput check by hand (not a test): one worker behind the harness, hello world.

    python tests/integration/worker_bench.py [seconds] [connections] [threads]

Runs `wrk -t2 -cN -dS` against it and prints wrk's output.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_harness import WorkerHarness  # noqa: E402


def main():
    secs = sys.argv[1] if len(sys.argv) > 1 else "5"
    conns = sys.argv[2] if len(sys.argv) > 2 else "50"
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    with WorkerHarness("worker_hello:app", threads=threads, queue_len=1024) as h:
        out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{secs}s",
                              f"http://127.0.0.1:{h.port}/"],
                             capture_output=True, text=True)
        print(out.stdout, out.stderr)
        print("scoreboard:", h.scoreboard())


if __name__ == "__main__":
    main()
