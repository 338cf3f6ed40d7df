"""The worker integration tests' application: one behaviour per path."""
import hashlib
import json
import os
import sys
import tempfile
import time


def _text(start_response, body: bytes, status="200 OK", extra=()):
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body))), *extra])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path in ("/", ""):
        return _text(start_response, b"Hello, world!")
    if path == "/env":
        keys = {k: v for k, v in environ.items() if isinstance(v, (str, int, bool, tuple))}
        keys["count"] = environ.get("hostd.count")
        return _text(start_response, json.dumps(keys).encode(),
                     extra=[("X-Pid", str(os.getpid()))])
    if path == "/sha":  # stream-read the body in pieces, answer its sha256 and length
        h = hashlib.sha256()
        n = 0
        inp = environ["wsgi.input"]
        while True:
            block = inp.read(100_000)
            if not block:
                break
            h.update(block)
            n += len(block)
        return _text(start_response, f"{h.hexdigest()} {n}".encode())
    if path == "/echo":  # the whole body back, chunked (no Content-Length)
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (body[i:i + 1_000_000] for i in range(0, len(body), 1_000_000))
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        return _text(start_response, json.dumps([ln.decode() for ln in lines]).encode())
    if path == "/chunked":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"part {i}\n".encode() for i in range(5))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and ", b"returned"]
    if path == "/list":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a", b"bc", b"def"]
    if path == "/file":
        size = int(environ.get("QUERY_STRING") or 100_000)
        f = tempfile.TemporaryFile()
        f.write(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        f.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/badheader":
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("X-Evil", "a\r\nInjected: yes")])
        return [b"never sent"]
    if path == "/badname":
        start_response("200 OK", [("Bad Name", "x")])
        return [b"never sent"]
    if path == "/raise":
        raise RuntimeError("boom from the test app")
    if path == "/raise-late":
        def gen():
            yield b"first part "
            raise RuntimeError("boom after the headers")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/slow":
        t = float(environ.get("QUERY_STRING") or 0.5)
        t0 = time.monotonic()
        time.sleep(t)
        return _text(start_response, f"{t0:.6f} {time.monotonic():.6f}".encode())
    if path == "/ignore-body":
        return _text(start_response, b"ignored")
    if path == "/stderr":
        environ["wsgi.errors"].write("a line from the app\n")
        return _text(start_response, b"logged")
    if path == "/status204":
        start_response("204 No Content", [])
        return []
    if path == "/close":
        return _text(start_response, b"closing", extra=[("Connection", "close")])
    return _text(start_response, b"not found\n", status="404 Not Found")
