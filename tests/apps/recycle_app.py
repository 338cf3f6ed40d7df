"""Test app for recycling: answers its pid; /leak keeps 5 MB per request; /unhealthy asks
hostd to recycle this worker (workers.report_unhealthy)."""
import os

import workers

_kept = []


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/leak":
        chunk = bytearray(5 * 1024 * 1024)
        for i in range(0, len(chunk), 4096):   # touch every page: really resident
            chunk[i] = 1
        _kept.append(chunk)
    elif path == "/unhealthy":
        workers.report_unhealthy("the app says its cache is corrupt")
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
