"""Test app for the hostile-client tests: /big?n=BYTES streams n bytes, /echo echoes."""
from urllib.parse import parse_qs

_CHUNK = b"x" * 65536


def application(environ, start_response):
    path = environ["PATH_INFO"]
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/big":
        n = int(qs.get("n", ["0"])[0])
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(n))])
        return _big(n)
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _big(n):
    while n > 0:
        part = _CHUNK if n >= len(_CHUNK) else _CHUNK[:n]
        n -= len(part)
        yield part
