"""The request-head rules exact on every request, against a real hostd (issue 13,
"Exactness"): each case as a connection's first request (the front end judges it), as a
kept-alive second request read after the first one's answer (the worker judges it) and
pipelined behind the first one in the same send (the worker, at an offset). The rules
and their unit tests: hostd/limits.py, tests/unit/test_headrules.py."""
from __future__ import annotations

import json
import re
import socket
import textwrap
import time

import pytest

from hostd_harness import Hostd

APP = textwrap.dedent('''
    import json

    KEYS = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "SERVER_NAME",
            "HTTP_HOST", "HTTP_X_V", "CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING")


    def application(environ, start_response):
        doc = {k: environ.get(k) for k in KEYS}
        doc["body"] = environ["wsgi.input"].read().decode("latin-1")
        body = json.dumps(doc).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
''')


@pytest.fixture(scope="module")
def hostd(tmp_path_factory):
    root = tmp_path_factory.mktemp("exactness")
    site = root / "site"
    site.mkdir()
    (site / "exact_app.py").write_text(APP)
    h = Hostd(root, {"e": {"app": "exact_app:application", "directory": str(site),
                           "bindings": ["h.test", "*"], "start_mode": "always_running"}},
              hostd={"header_timeout": "3s", "keepalive_timeout": "5s"})
    h.start()
    h.wait_for(lambda: h.get("h.test")[0] == 200, what="pool up")
    yield h
    h.stop()


# --- a client that reads responses one by one ----------------------------------------------
class Client:
    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.closed = False

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def response(self):
        """(status, body) of the next response, or None when the server closed first."""
        while b"\r\n\r\n" not in self.buf:
            if self.closed or not self._fill():
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        n = int(m.group(1)) if m else 0
        while len(self.buf) < n:
            if not self._fill():
                break
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, body

    def close(self):
        self.sock.close()


def exchange(h, mode: str, data: bytes) -> list:
    """[(status, body), ...] of what hostd answered, for data sent as `mode`."""
    c = Client(h.port)
    out = []
    try:
        if mode == "first":
            c.sock.sendall(data)
            want = 1
        elif mode == "kept":
            c.sock.sendall(FIRST)
            out.append(c.response())
            c.sock.sendall(data)
            want = 1
        else:   # pipelined
            c.sock.sendall(FIRST + data)
            want = 2
        for _ in range(want):
            r = c.response()
            if r is None:
                break
            out.append(r)
    finally:
        c.close()
    return out


FIRST = b"GET /first HTTP/1.1\r\nHost: h.test\r\n\r\n"
H = b"Host: h.test"


def _req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join((line,) + fields) + b"\r\n\r\n" + body


MAX_HEAD = 16384    # max_header_bytes, the default


def sized(n: int, many: int = 0) -> bytes:
    """A GET head of exactly n bytes: `many` short `X:y` fields, then a padding field."""
    head = b"GET /s HTTP/1.1\r\nHost: h.test\r\n" + b"X:y\r\n" * many + b"X-Pad: "
    return head + b"p" * (n - len(head) - 4) + b"\r\n\r\n"


#: name -> (bytes, expected): hostd's own answer's status, or what the app must see
CASES = {
    # issue 13, case 2 (and 1, per request): Host in HTTP/1.1
    "http11_without_host": (_req(b"GET / HTTP/1.1"), 400),
    "http10_without_host": (_req(b"GET / HTTP/1.0", b"Connection: keep-alive"),
                            {"SERVER_PROTOCOL": "HTTP/1.0", "HTTP_HOST": None}),
    # case 3: OWS around values
    "host_trailing_ows": (_req(b"GET / HTTP/1.1", b"Host: h.test \t"), {"HTTP_HOST": "h.test"}),
    "value_trailing_tab": (_req(b"GET / HTTP/1.1", H, b"X-V: abc\t"), {"HTTP_X_V": "abc"}),
    "value_leading_ows": (_req(b"GET / HTTP/1.1", H, b"X-V: \t abc \t"), {"HTTP_X_V": "abc"}),
    "value_inner_ws_kept": (_req(b"GET / HTTP/1.1", H, b"X-V: a \t b "), {"HTTP_X_V": "a \t b"}),
    "cl_trailing_ows": (_req(b"POST / HTTP/1.1", H, b"Content-Length: 3 \t", body=b"abc"),
                        {"CONTENT_LENGTH": "3", "body": "abc"}),
    # case 4: versions
    "http20": (_req(b"GET / HTTP/2.0", H), 505),
    "http20_te_gzip": (_req(b"POST / HTTP/2.0", b"Transfer-Encoding: gzip"), 505),
    "http12": (_req(b"GET / HTTP/1.2", H), 505),
    "http09": (_req(b"GET / HTTP/0.9"), 505),
    # case 5: target forms
    "target_neither_form": (_req(b"PUT s://]ufd/: HTTP/1.1", H), 400),
    "target_ftp": (_req(b"GET ftp://h.test/ HTTP/1.1", H), 400),
    "target_fragment": (_req(b"GET /a#b HTTP/1.1", H), 400),
    "asterisk_get": (_req(b"GET * HTTP/1.1", H), 400),
    "asterisk_options": (_req(b"OPTIONS * HTTP/1.1", H),
                         {"REQUEST_METHOD": "OPTIONS", "PATH_INFO": "*"}),
    "connect": (_req(b"CONNECT h.test:443 HTTP/1.1", H), 501),
    "connect_origin_form": (_req(b"CONNECT / HTTP/1.1", H), 400),
    # case 6: 501
    "unknown_method": (_req(b"FOO / HTTP/1.1", H), 501),
    "lowercase_method": (_req(b"get / HTTP/1.1", H), 501),
    "not_a_method": (_req(b"G\x00T / HTTP/1.1", H), 400),
    "te_gzip_chunked": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip, chunked",
                             body=b"0\r\n\r\n"), 501),
    "te_gzip": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip", body=b"0\r\n\r\n"), 400),
    "te_empty_element": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: , chunked",
                              body=b"3\r\nabc\r\n0\r\n\r\n"), {"body": "abc"}),
    # found on the way: the request line, Host and authority syntax
    "double_sp": (_req(b"GET  / HTTP/1.1", H), 400),
    "rtsp_version": (_req(b"GET / RTSP/1.0", H), 400),
    "leading_empty_lines": (b"\r\n\r\n" + _req(b"GET /x HTTP/1.1", H), {"PATH_INFO": "/x"}),
    "host_userinfo": (_req(b"GET / HTTP/1.1", b"Host: u@h.test"), 400),
    "host_space": (_req(b"GET / HTTP/1.1", b"Host: h test"), 400),
    "absolute_userinfo": (_req(b"GET http://u@h.test/ HTTP/1.1", H), 400),
    "absolute_authority_wins": (_req(b"GET http://h.test:81/x?q HTTP/1.1", b"Host: other.test"),
                                {"HTTP_HOST": "h.test:81", "SERVER_NAME": "h.test",
                                 "PATH_INFO": "/x", "QUERY_STRING": "q"}),
    "cl_leading_zeros": (_req(b"POST / HTTP/1.1", H, b"Content-Length: 003", body=b"abc"),
                         {"body": "abc"}),
    "cl_list": (_req(b"POST / HTTP/1.1", H, b"Content-Length: 3, 3", body=b"abc"), 400),
    "value_obs_text": (_req(b"GET / HTTP/1.1", H, b"X-V: caf\xe9"), {"HTTP_X_V": "caf\xe9"}),
    # the head's exact size against max_header_bytes, the same on both sides
    "head_at_max": (sized(MAX_HEAD), {"PATH_INFO": "/s"}),
    "head_over_max": (sized(MAX_HEAD + 1), 431),
    "head_at_max_short_fields": (sized(MAX_HEAD, many=1500), {"PATH_INFO": "/s"}),
    "head_over_max_after_empty_lines": (b"\r\n\r\n" + sized(MAX_HEAD - 3), 431),
}


@pytest.mark.parametrize("mode", ["first", "kept", "pipelined"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_head_rules_on_every_request(hostd, name, mode):
    data, expected = CASES[name]
    out = exchange(hostd, mode, data)
    statuses = [s for s, _b in out]
    lead = [] if mode == "first" else [200]
    if isinstance(expected, int):
        assert statuses == lead + [expected], (name, mode, out)
        return
    assert statuses == lead + [200], (name, mode, out)
    seen = json.loads(out[-1][1])
    for key, value in expected.items():
        assert seen[key] == value, (name, mode, key, seen)


# --- issue 13, case 1: the Host rule reads *this* request's version --------------------------
def test_http10_keepalive_with_a_pipelined_http11_request_is_served(hostd):
    c = Client(hostd.port)
    try:
        c.sock.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                       b"GET /b HTTP/1.1\r\nHost: h.test\r\n\r\n")
        a, b = c.response(), c.response()
    finally:
        c.close()
    assert a is not None and b is not None, (a, b)
    assert (a[0], json.loads(a[1])["SERVER_PROTOCOL"]) == (200, "HTTP/1.0")
    assert (b[0], json.loads(b[1])["PATH_INFO"]) == (200, "/b")


def test_http11_without_host_with_a_pipelined_http10_request_is_refused(hostd):
    for prefix in (b"", FIRST):
        c = Client(hostd.port)
        try:
            c.sock.sendall(prefix + b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
            out = [c.response() for _ in range(3)]
        finally:
            c.close()
        statuses = [r[0] for r in out if r is not None]
        assert statuses == ([200] if prefix else []) + [400], (prefix, out)


def test_no_host_answer_says_why(hostd):
    c = Client(hostd.port)
    try:
        c.sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        status, body = c.response()
    finally:
        c.close()
    assert status == 400 and b"without Host" in body


def test_505_and_501_answers_close_the_connection(hostd):
    for data in (_req(b"GET / HTTP/2.0", H), _req(b"FOO / HTTP/1.1", H)):
        for prefix in (b"", FIRST):
            out = hostd.raw(prefix + data + FIRST, timeout=5)
            heads = re.findall(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n((?:[^\r]+\r\n)*)", out)
            assert [int(s) for s, _h in heads][-1] in (501, 505), out
            assert b"Connection: close" in heads[-1][1], out
            # nothing served after it: the request behind the refused one is not answered
            assert len(heads) == (2 if prefix else 1), out


# --- found on the way: Expect: 100-continue in HTTP/1.0 (RFC 9110 §10.1.1: ignore it) ------
@pytest.mark.parametrize("version, statuses", [(b"1.0", [200]), (b"1.1", [100, 200])])
@pytest.mark.parametrize("mode", ["first", "kept"])
def test_expect_100_continue_only_for_http11(hostd, mode, version, statuses):
    c = Client(hostd.port)
    try:
        if mode == "kept":
            c.sock.sendall(FIRST)
            assert c.response()[0] == 200
        c.sock.sendall(b"POST /e HTTP/%s\r\nHost: h.test\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 3\r\n\r\n" % version)
        time.sleep(0.3)     # the app waits for the body meanwhile
        c.sock.sendall(b"abc")
        out = [c.response() for _ in statuses]
    finally:
        c.close()
    assert [r[0] for r in out if r] == statuses, out
    assert json.loads(out[-1][1])["body"] == "abc"
