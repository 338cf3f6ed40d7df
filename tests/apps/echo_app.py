"""Test app for the request-corpus tests (tests/integration/test_corpus.py): answers 200
with JSON of what it was given: method, script_name, path (PATH_INFO), query, protocol,
headers (every HTTP_* key, CONTENT_TYPE and CONTENT_LENGTH, as environ has them) and the
whole body (latin-1). The response carries `X-Echo: corpus`, so a test can tell the app's
answers from hostd's own."""
import json


def application(environ, start_response):
    inp = environ["wsgi.input"]
    chunks = []
    while True:
        chunk = inp.read(65536)
        if not chunk:
            break
        chunks.append(chunk)
    headers = {k: v for k, v in environ.items()
               if k.startswith("HTTP_") or k in ("CONTENT_TYPE", "CONTENT_LENGTH")}
    doc = {"method": environ["REQUEST_METHOD"], "script_name": environ.get("SCRIPT_NAME", ""),
           "path": environ.get("PATH_INFO", ""), "query": environ.get("QUERY_STRING", ""),
           "protocol": environ.get("SERVER_PROTOCOL", ""), "headers": headers,
           "body": b"".join(chunks).decode("latin-1")}
    body = json.dumps(doc).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("X-Echo", "corpus"),
                              ("Content-Length", str(len(body)))])
    return [body]
