"""An app whose import hangs (e.g. waiting for a database that never answers)."""
import time

time.sleep(60)


def application(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
