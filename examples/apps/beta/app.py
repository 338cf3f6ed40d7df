"""Demo app of pool beta: says who served the request."""
import os


def application(environ, start_response):
    body = (f"{os.environ.get('GREETING') or 'Hello from ' + environ.get('hostd.pool', '?')}: pool={environ.get('hostd.pool')} "
            f"pid={os.getpid()} path={environ['SCRIPT_NAME']}{environ['PATH_INFO']}\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
