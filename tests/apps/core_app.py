"""Test app: says who served the request; /sleep, /echo, /stream, /env endpoints."""
import json
import os
import time
from urllib.parse import parse_qs


def application(environ, start_response):
    path = environ["PATH_INFO"]
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    if path.endswith("/sleep"):
        time.sleep(float(qs.get("t", ["0.2"])[0]))
    if path.endswith("/echo"):
        chunks = []
        while True:
            chunk = environ["wsgi.input"].read(65536)
            if not chunk:
                break
            chunks.append(chunk)
        body = b"".join(chunks)
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path.endswith("/stream"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"part {i}\n".encode() for i in range(5))
    doc = {"pool": environ.get("hostd.pool"), "pid": os.getpid(), "host": environ.get("HTTP_HOST"),
           "script_name": environ["SCRIPT_NAME"], "path_info": path,
           "marker": os.environ.get("MARKER", ""), "n": qs.get("n", [""])[0]}
    body = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
