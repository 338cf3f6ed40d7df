"""Hello-world WSGI app used by bench/run for every server.

13-byte body, explicit Content-Type and Content-Length, nothing else: the
benchmark measures the server, not the app.
"""

BODY = b"Hello, world!"
HEADERS = [
    ("Content-Type", "text/plain"),
    ("Content-Length", str(len(BODY))),
]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]


# uWSGI's --wsgi-file looks for "application" by default; gunicorn/hostd use
# "app:application".
app = application
