"""An application wrapped in wsgiref.validate.validator, with warnings as errors: any
deviation of the worker from PEP 3333 becomes an exception (so a 500)."""
import warnings
from wsgiref.validate import validator

warnings.simplefilter("error")


def _inner(environ, start_response):
    method = environ["REQUEST_METHOD"]
    path = environ["PATH_INFO"]
    if method == "POST":
        inp = environ["wsgi.input"]
        size = int(environ.get("CONTENT_LENGTH") or 0)
        first = inp.readline(5)
        rest = inp.read(size - len(first))
        lines = inp.readlines()
        body = first + rest + b"".join(lines)
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one ", b"two ", b"three"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    environ["wsgi.errors"].write("validated\n")
    environ["wsgi.errors"].flush()
    return [b"valid: " + environ["PATH_INFO"].encode("latin-1")]


app = validator(_inner)
