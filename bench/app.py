"""Hello-world WSGI app used by bench/run for every server.

Explicit Content-Type and Content-Length, nothing else: the benchmark measures
the server, not the app.  The body is chosen by the path:

- ``/``     13 bytes, ``Hello, world!``
- ``/4k``   4096 bytes
- ``/64k``  65536 bytes

Any other path gets a 404.  Every response is built once, at import time.
"""

BODY = b"Hello, world!"


def _filler(size: int) -> bytes:
    line = b"hostd bench filler: 0123456789abcdefghijklmnopqrstuvwxyzABCDEF\n"  # 64 bytes
    return (line * (size // len(line) + 1))[:size]


BODIES = {
    "/": BODY,
    "/4k": _filler(4096),
    "/64k": _filler(65536),
}


def _headers(body: bytes) -> list:
    return [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]


HEADERS = _headers(BODY)
_RESPONSES = {path: ("200 OK", _headers(body), [body]) for path, body in BODIES.items()}
_NOT_FOUND = ("404 Not Found", _headers(b"not found\n"), [b"not found\n"])


def application(environ, start_response):
    status, headers, body = _RESPONSES.get(environ.get("PATH_INFO") or "/", _NOT_FOUND)
    start_response(status, headers)
    return body


# uWSGI's --wsgi-file looks for "application" by default; gunicorn/hostd use
# "app:application".
app = application
