"""Hello world for the worker throughput check (13-byte body, Content-Length set)."""
BODY = b"Hello, world!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "13")]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
