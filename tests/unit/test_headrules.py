"""The request-head rules (hostd/limits.py) as functions, and as the two sides apply them:
the front end's _Pending on a connection's first head, the worker's Connection on every
head (first, kept-alive after an answer, pipelined behind another), with one verdict
for every case (issue 13, "Exactness"). No root, no processes: parsers fed in-process."""
from __future__ import annotations

import socket

import httptools
import pytest

from hostd import frontend, limits
from hostd.limits import Reject
from hostd.router import Router
from workers.http import Connection


# --- the rule functions -----------------------------------------------------------------
@pytest.mark.parametrize("value, ok", [
    (b"h.test", True), (b"H.Test", True), (b"h.test:8080", True), (b"h.test:", True),
    (b"", True), (b"127.0.0.1", True), (b"127.0.0.1:80", True), (b"[::1]", True),
    (b"[::1]:8080", True), (b"[fe80::a:b]", True), (b"[v1.x:y]", True), (b"h_x.test", True),
    (b"h%41.test", True), (b"a!$&'()*+,;=b", True),
    (b"u@h.test", False), (b"u:p@h.test", False), (b"h test", False), (b"h.test\t", False),
    (b"h/x", False), (b"h?x", False), (b"h#x", False), (b"h.test:8x", False),
    (b"h.test:80:80", False), (b"::1", False), (b"[::g]", False), (b"[::1", False),
    (b"::1]", False), (b"[::1]x", False), (b"[::1%25eth0]", False), (b"h\xe9.test", False),
    (b"h%zz", False), (b"h%4", False), (b'h"x', False), (b"h\\x", False),
])
def test_host_ok(value, ok):
    assert limits.host_ok(value) is ok


@pytest.mark.parametrize("value, status", [
    (b"chunked", None), (b"Chunked", None), (b"CHUNKED", None), (b", chunked", None),
    (b"chunked, ", None), (b" ,chunked", None),
    (b"gzip, chunked", 501), (b"gzip,chunked", 501), (b"x-foo, chunked", 501),
    (b"gzip,chunked", 501), (b"deflate, gzip, chunked", 501),
    (b"gzip", 400), (b"identity", 400), (b"xchunked", 400), (b"chunked, gzip", 400),
    (b"chunked, chunked", 400), (b"chunked,identity", 400), (b"chunked;x=1", 400),
    (b"", 400), (b",", 400), (b"gzip, chunked, chunked", 400),
])
def test_check_te(value, status):
    if status is None:
        limits.check_te(value)
    else:
        with pytest.raises(Reject) as exc:
            limits.check_te(value)
        assert exc.value.status == status


@pytest.mark.parametrize("method, url, result", [
    (b"GET", b"/", None), (b"GET", b"//x", None), (b"GET", b"/a?b#c", 400),
    (b"GET", b"/a#", 400), (b"OPTIONS", b"*", None), (b"GET", b"*", 400), (b"PUT", b"*", 400),
    (b"GET", b"http://h.test/x", b"h.test"), (b"GET", b"HTTPS://H.test:8443", b"H.test:8443"),
    (b"GET", b"http://h.test?q", b"h.test"), (b"GET", b"http://[::1]:80/", b"[::1]:80"),
    (b"GET", b"http://u@h.test/", 400), (b"GET", b"http://u:p@h.test/", 400),
    (b"GET", b"http:///x", 400), (b"GET", b"http://:80/", 400), (b"GET", b"http://h test/", 400),
    (b"GET", b"http://h.test/x#f", 400), (b"GET", b"ftp://h.test/", 400),
    (b"PUT", b"s://]ufd/:", 400), (b"GET", b"h.test:80", 400), (b"OPTIONS", b"*x", 400),
    (b"CONNECT", b"h.test:443", 501), (b"CONNECT", b"[::1]:443", 501),
    (b"CONNECT", b"/", 400), (b"CONNECT", b"h.test", 400), (b"CONNECT", b"http://h.test/", 400),
    (b"CONNECT", b"*", 400), (b"CONNECT", b"u@h.test:443", 400),
])
def test_check_target(method, url, result):
    if isinstance(result, int):
        with pytest.raises(Reject) as exc:
            limits.check_target(method, url)
        assert exc.value.status == result
    else:
        assert limits.check_target(method, url) == result


@pytest.mark.parametrize("line, start, found", [
    (b"GET / HTTP/1.1\r\n", 0, 0), (b"\r\n\r\nGET / HTTP/1.1\r\n", 0, 4),
    (b"xxGET / HTTP/1.1\r\n", 2, 2), (b"\nGET / HTTP/1.0\r\n", 0, 1),
    (b"GET  / HTTP/1.1\r\n", 0, None), (b"GET /  HTTP/1.1\r\n", 0, None),
    (b"GET / RTSP/1.0\r\n", 0, None), (b"GET / ICE/1.0\r\n", 0, None),
    (b"GET / HTTP/1.1\r\n", 1, None),
])
def test_check_line(line, start, found):
    """A GET of "/" whose bytes begin at `start`: where its line is, or a 400."""
    if found is None:
        with pytest.raises(Reject) as exc:
            limits.check_line(line, start, 3, 1, 64)
        assert exc.value.status == 400
    else:
        assert limits.check_line(line, start, 3, 1, 64) == found


@pytest.mark.parametrize("data, max_head, status", [
    (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 24, None),            # 24 bytes
    (b"GET / HTTP/1.1\r\nX: y\r\n\r\n", 23, 431),
    (b"GET / HTTP/1.1\r\nX: y\r\n\r\nbody" + b"b" * 100, 24, None),   # a body is no head
    (b"\r\nGET / HTTP/1.1\r\nX: y\r\n\r\n", 25, 431),      # empty lines count
    (b"\r\n\r\nGET / HTTP/1.1\r\nX: y\r\n\r\n", 28, None),
])
def test_check_line_head_size(data, max_head, status):
    if status is None:
        limits.check_line(data, 0, 3, 1, max_head)
    else:
        with pytest.raises(Reject) as exc:
            limits.check_line(data, 0, 3, 1, max_head)
        assert exc.value.status == status


def _parse_error(data: bytes) -> Exception:
    p = httptools.HttpRequestParser(object())
    with pytest.raises(httptools.HttpParserError) as exc:
        p.feed_data(data)
    return exc.value


@pytest.mark.parametrize("data, status", [
    (b"FOO / HTTP/1.1\r\n\r\n", 501), (b"get / HTTP/1.1\r\n\r\n", 501),
    (b"DESCRIBE / HTTP/1.1\r\n\r\n", 501), (b"\r\nFOO / HTTP/1.1\r\n\r\n", 501),
    (b"G\x00T / HTTP/1.1\r\n\r\n", 400), (b" GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET\t/ HTTP/1.1\r\n\r\n", 400), (b"\x16\x03\x01\x02\x00", 400),
    (b"GET / HTTP/1.2\r\n\r\n", 505), (b"GET / HTTP/3.0\r\n\r\n", 505),
    (b"GET / HTTP/1.a\r\n\r\n", 400), (b"GET / HTTP/11.1\r\n\r\n", 400),
    (b"GET / http/1.1\r\n\r\n", 400), (b"GET / HTTP/1.1 \r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX : y\r\n\r\n", 400),
])
def test_error_status(data, status):
    exc = _parse_error(data)
    assert limits.error_status(exc, lambda: data) == status


def test_error_status_without_the_bytes_is_400():
    exc = _parse_error(b"FOO / HTTP/1.1\r\n\r\n")
    assert limits.error_status(exc, lambda: None) == 400


class _Head(limits.HeadState):
    __slots__ = ("host", "clen", "te")

    def __init__(self, *fields):
        self.host, self.clen, self.te = None, -1, None
        for name, value in fields:
            self.rule_header(name, value)


@pytest.mark.parametrize("version, fields, method, url, status", [
    ("2.0", [(b"Transfer-Encoding", b"gzip")], b"GET", b"/", 505),      # version first
    ("2.0", [], b"GET", b"/", 505), ("0.9", [], b"GET", b"/", 505),
    ("1.2", [(b"Host", b"a"), (b"Host", b"b")], b"GET", b"/", 505),
    ("1.1", [], b"GET", b"/", 400), ("1.0", [], b"GET", b"/", None),
    ("1.1", [(b"Host", b"a"), (b"host", b"a")], b"GET", b"/", 400),
    ("1.0", [(b"Host", b"a"), (b"HOST", b"a")], b"GET", b"/", 400),
    ("1.1", [(b"Host", b"u@a")], b"GET", b"/", 400),
    ("1.1", [(b"Host", b"a")], b"GET", b"/", None),
    ("1.0", [(b"Transfer-Encoding", b"chunked")], b"POST", b"/", 400),
    ("1.1", [(b"Host", b"a"), (b"Transfer-Encoding", b"gzip"),
             (b"Transfer-Encoding", b"chunked")], b"POST", b"/", 501),
    ("1.1", [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked"),
             (b"Transfer-Encoding", b"identity")], b"POST", b"/", 400),
    ("1.1", [(b"Host", b"a")], b"CONNECT", b"a:443", 501),
    ("1.1", [(b"Host", b"a")], b"PUT", b"s://]ufd/:", 400),
])
def test_rule_complete(version, fields, method, url, status):
    head = _Head(*fields)
    if status is None:
        assert head.rule_complete(version, method, url) is None
    else:
        with pytest.raises(Reject) as exc:
            head.rule_complete(version, method, url)
        assert exc.value.status == status


# --- both sides, one verdict --------------------------------------------------------------
FIRST = b"GET /first HTTP/1.1\r\nHost: h.test\r\n\r\n"


def _req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join((line,) + fields) + b"\r\n\r\n" + body


H = b"Host: h.test"
MAX_HEAD = 16384    # max_header_bytes, the default


def sized(n: int, many: int = 0) -> bytes:
    """A GET head of exactly n bytes (request line to the final CRLFCRLF): `many` short
    `X:y` fields (no space, the least bytes a field takes), then one padding field."""
    head = b"GET / HTTP/1.1\r\nHost: h.test\r\n" + b"X:y\r\n" * many + b"X-Pad: "
    pad = n - len(head) - 4
    assert pad >= 1
    return head + b"p" * pad + b"\r\n\r\n"


#: name -> (request bytes, expected): an answer's status, or the environ keys the app gets
CASES = {
    # 1/2: Host per request, with that request's version
    "http11_without_host": (_req(b"GET / HTTP/1.1"), 400),
    "http10_without_host": (_req(b"GET / HTTP/1.0"), {"SERVER_PROTOCOL": "HTTP/1.0"}),
    "two_hosts": (_req(b"GET / HTTP/1.1", H, b"host: h.test"), 400),
    # 3: OWS around field values
    "host_trailing_ows": (_req(b"GET / HTTP/1.1", b"Host: h.test \t"), {"HTTP_HOST": "h.test"}),
    "value_trailing_tab": (_req(b"GET / HTTP/1.1", H, b"X-V: abc\t"), {"HTTP_X_V": "abc"}),
    "value_leading_ows": (_req(b"GET / HTTP/1.1", H, b"X-V: \t abc"), {"HTTP_X_V": "abc"}),
    "value_inner_ws_kept": (_req(b"GET / HTTP/1.1", H, b"X-V: a \t b \t"),
                            {"HTTP_X_V": "a \t b"}),
    "value_only_ows": (_req(b"GET / HTTP/1.1", H, b"X-V: \t "), {"HTTP_X_V": ""}),
    "cl_trailing_ows": (_req(b"POST / HTTP/1.1", H, b"Content-Length: 3 \t", body=b"abc"),
                        {"CONTENT_LENGTH": "3"}),
    "te_trailing_ows": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked  ",
                             body=b"3\r\nabc\r\n0\r\n\r\n"), {"HTTP_TRANSFER_ENCODING": "chunked"}),
    # llhttp frames `chunked<TAB>` as no chunked at all and fails right after the head:
    # the front end hands such a connection on (an error after the head is the worker's)
    # and the worker answers 400 (see FRONT_HANDS_ON)
    "te_trailing_tab": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked\t",
                             body=b"3\r\nabc\r\n0\r\n\r\n"), 400),
    # 4: versions
    "http20": (_req(b"GET / HTTP/2.0", H), 505),
    "http20_no_host_te": (_req(b"GET / HTTP/2.0", b"Transfer-Encoding: gzip"), 505),
    "http12": (_req(b"GET / HTTP/1.2", H), 505),
    "http30": (_req(b"GET / HTTP/3.0", H), 505),
    "http09": (_req(b"GET / HTTP/0.9"), 505),
    "version_lowercase": (_req(b"GET / http/1.1", H), 400),
    # 5: target forms
    "target_neither_form": (_req(b"PUT s://]ufd/: HTTP/1.1", H), 400),
    "target_ftp_scheme": (_req(b"GET ftp://h.test/ HTTP/1.1", H), 400),
    "target_fragment": (_req(b"GET /a#b HTTP/1.1", H), 400),
    "asterisk_get": (_req(b"GET * HTTP/1.1", H), 400),
    "asterisk_options": (_req(b"OPTIONS * HTTP/1.1", H), {"REQUEST_METHOD": "OPTIONS"}),
    "connect_authority": (_req(b"CONNECT h.test:443 HTTP/1.1", H), 501),
    "connect_origin": (_req(b"CONNECT / HTTP/1.1", H), 400),
    "absolute_userinfo": (_req(b"GET http://u@h.test/ HTTP/1.1", H), 400),
    "absolute_empty_host": (_req(b"GET http://:80/ HTTP/1.1", H), 400),
    "absolute_authority_wins": (_req(b"GET http://h.test/x HTTP/1.1", b"Host: other.test"),
                                {"HTTP_HOST": "h.test"}),
    "host_userinfo": (_req(b"GET / HTTP/1.1", b"Host: u@h.test"), 400),
    "host_space": (_req(b"GET / HTTP/1.1", b"Host: h test"), 400),
    "host_unbracketed_ipv6": (_req(b"GET / HTTP/1.1", b"Host: ::1"), 400),
    "host_bad_port": (_req(b"GET / HTTP/1.1", b"Host: h.test:8x"), 400),
    "host_obs_text": (_req(b"GET / HTTP/1.1", b"Host: h\xe9.test"), 400),
    "host_ipv6": (_req(b"GET / HTTP/1.1", b"Host: [::1]:8080"), {"HTTP_HOST": "[::1]:8080"}),
    "host_empty": (_req(b"GET / HTTP/1.1", b"Host:"), {"HTTP_HOST": ""}),
    # 6: methods and transfer-codings hostd does not implement
    "unknown_method": (_req(b"FOO / HTTP/1.1", H), 501),
    "lowercase_method": (_req(b"get / HTTP/1.1", H), 501),
    "rtsp_method": (_req(b"DESCRIBE / HTTP/1.1", H), 501),
    "method_with_nul": (_req(b"G\x00T / HTTP/1.1", H), 400),
    "leading_space": (_req(b" GET / HTTP/1.1", H), 400),
    "tls_hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    "te_gzip_chunked": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip, chunked",
                             body=b"0\r\n\r\n"), 501),
    "te_two_lines_gzip_chunked": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip",
                                       b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 501),
    "te_gzip": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip", body=b"0\r\n\r\n"), 400),
    "te_chunked_gzip": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked, gzip",
                             body=b"0\r\n\r\n"), 400),
    "te_http10": (_req(b"POST / HTTP/1.0", H, b"Transfer-Encoding: chunked",
                       body=b"0\r\n\r\n"), 400),
    "te_empty_element": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: , chunked",
                              body=b"3\r\nabc\r\n0\r\n\r\n"), {"REQUEST_METHOD": "POST"}),
    "te_upper_case": (_req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: Chunked",
                           body=b"0\r\n\r\n"), {"REQUEST_METHOD": "POST"}),
    # the request line (RFC 9112 §3, §2.2)
    "double_sp_before_target": (_req(b"GET  / HTTP/1.1", H), 400),
    "double_sp_before_version": (_req(b"GET /  HTTP/1.1", H), 400),
    "rtsp_version": (_req(b"GET / RTSP/1.0", H), 400),
    "ice_version": (_req(b"SOURCE / ICE/1.0", H), 400),
    "leading_empty_lines": (b"\r\n\r\n" + _req(b"GET /x HTTP/1.1", H), {"PATH_INFO": None}),
    # Content-Length forms
    "cl_leading_zeros": (_req(b"POST / HTTP/1.1", H, b"Content-Length: 003", body=b"abc"),
                         {"CONTENT_LENGTH": "003"}),
    "cl_list": (_req(b"POST / HTTP/1.1", H, b"Content-Length: 3, 3", body=b"abc"), 400),
    "cl_plus": (_req(b"POST / HTTP/1.1", H, b"Content-Length: +3", body=b"abc"), 400),
    # the head's size: its exact bytes against max_header_bytes, on both sides
    "head_at_max": (sized(MAX_HEAD), {"REQUEST_METHOD": "GET"}),
    "head_over_max": (sized(MAX_HEAD + 1), 431),
    "head_at_max_short_fields": (sized(MAX_HEAD, many=1500), {"REQUEST_METHOD": "GET"}),
    "head_over_max_short_fields": (sized(MAX_HEAD + 1, many=1500), 431),
    "head_at_max_after_empty_lines": (b"\r\n" + sized(MAX_HEAD - 2), {"REQUEST_METHOD": "GET"}),
    "head_over_max_after_empty_lines": (b"\r\n\r\n" + sized(MAX_HEAD - 3), 431),
    # obs-text in a value: kept, latin-1 (PEP 3333)
    "value_obs_text": (_req(b"GET / HTTP/1.1", H, b"X-V: caf\xe9"), {"HTTP_X_V": "caf\xe9"}),
}


class _Sock:
    def fileno(self):
        return -1


def front_answer(data: bytes) -> bytes:
    """What the front end answers to a connection that sent data: its own
    FrontEnd._first_bytes (the C parser, else or when it declines _feed: parse, rules,
    _reject; then _dispatch) on a front end with no binding at all, so a head
    that passes every rule is answered 404 ("incomplete" when it waits for more)."""
    fe = frontend.FrontEnd.__new__(frontend.FrontEnd)
    fe.max_header = frontend._Pending.max_head = MAX_HEAD
    fe.max_body = 1 << 20
    fe.router = Router([])
    fe.route_cache = {}
    fe.pools = {}
    fe.counters = limits.Counters()
    answers = []
    fe._reply = lambda conn, response: answers.append(response)
    fe._wait = lambda conn: answers.append(b"incomplete")
    fe._first_bytes(_Sock(), 80, data)     # the C parser's path when it is built
    assert len(answers) == 1, answers
    return answers[0]


def front_verdict(data: bytes):
    """The front end's verdict on the first request in data: its status, or "ok" when
    the head passed the rules (and routing found no binding)."""
    answer = front_answer(data)
    if answer == b"incomplete":
        return "incomplete"
    status = _status(answer)
    return "ok" if status == 404 else status


class _Worker:
    max_header_bytes = MAX_HEAD
    fast = False        # feed() only: serve_fast needs a whole worker
    base_env: dict = {}
    max_body = 1 << 20
    bytes_in = 0


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


class WorkerConn:
    """A worker Connection over a socketpair, fed in-process."""

    def __init__(self):
        self.a, self.b = socket.socketpair()
        self.c = Connection(_Worker(), self.a)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.c.feed(chunk)
            if self.c.broken is not None:
                return

    def answer(self) -> None:
        """The app answered every complete request (the connection is idle again)."""
        while self.c.pending and self.c.pending[0].complete:
            self.c.pending.popleft()

    def verdict(self):
        """The last request's environ, or the status the connection is broken with."""
        if self.c.broken is not None:
            return _status(self.c.broken)
        return self.c.pending[-1].env if self.c.pending else "incomplete"

    def close(self):
        self.a.close()
        self.b.close()


def worker_verdict(mode: str, data: bytes):
    w = WorkerConn()
    try:
        if mode == "first":
            w.feed(data)
        elif mode == "kept":          # a second request, read on its own after an answer
            w.feed(FIRST)
            assert w.verdict()["REQUEST_METHOD"] == "GET"
            w.answer()
            w.feed(data)
        elif mode == "pipelined":     # behind the first one, in the same read
            w.feed(FIRST + data)
        elif mode == "fragmented":    # a byte per read, behind an answered request
            w.feed(FIRST)
            w.answer()
            w.feed(*(data[i:i + 1] for i in range(len(data))))
        return w.verdict()
    finally:
        w.close()


def _expect(verdict, expected, what):
    if isinstance(expected, int):
        assert verdict == expected, what
    else:
        assert isinstance(verdict, dict), (what, verdict)
        for key, value in expected.items():
            if value is not None:
                assert verdict.get(key) == value, (what, key, verdict.get(key))


#: cases llhttp refuses only after the first head is complete: the front end hands them
#: to a worker, which answers (test_worker_every_request[...-first])
FRONT_HANDS_ON = {"te_trailing_tab"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_front_end_first_request(name):
    data, expected = CASES[name]
    verdict = front_verdict(data)
    if name in FRONT_HANDS_ON or not isinstance(expected, int):
        expected = "ok"
    assert verdict == expected, (name, verdict)


@pytest.mark.parametrize("mode", ["first", "kept", "pipelined", "fragmented"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_worker_every_request(name, mode):
    data, expected = CASES[name]
    _expect(worker_verdict(mode, data), expected, (name, mode))


# --- issue 13's case 1: the Host rule and *this* request's version ---------------------------
HTTP10_KEEP = b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
HTTP11 = b"GET /b HTTP/1.1\r\nHost: h.test\r\n\r\n"
HTTP11_NO_HOST = b"GET /b HTTP/1.1\r\n\r\n"
HTTP10 = b"GET /c HTTP/1.0\r\n\r\n"


def test_http10_keepalive_then_pipelined_http11_is_served():
    assert front_verdict(HTTP10_KEEP) == front_verdict(HTTP10_KEEP + HTTP11) == "ok"
    w = WorkerConn()
    try:
        w.feed(HTTP10_KEEP + HTTP11)
        assert w.c.broken is None
        assert [r.env["SERVER_PROTOCOL"] for r in w.c.pending] == ["HTTP/1.0", "HTTP/1.1"]
    finally:
        w.close()


def test_http11_without_host_then_http10_is_refused():
    assert front_answer(HTTP11_NO_HOST + HTTP10) == front_answer(HTTP11_NO_HOST) == \
        frontend.NO_HOST
    for mode in ("first", "kept", "pipelined"):
        assert worker_verdict(mode, HTTP11_NO_HOST + HTTP10) == 400, mode


# --- where pipelined messages start (the request-line rule reads their bytes) -----------------
def _pipeline(*msgs: bytes, chunk: int | None = None):
    w = WorkerConn()
    data = b"".join(msgs)
    try:
        if chunk:
            w.feed(*(data[i:i + chunk] for i in range(0, len(data), chunk)))
        else:
            w.feed(data)
        return [r.url for r in w.c.pending], (None if w.c.broken is None
                                              else _status(w.c.broken))
    finally:
        w.close()


POST_CL = b"POST /p HTTP/1.1\r\nHost: h.test\r\nContent-Length: 5\r\n\r\nab\r\n\r"
POST_TE = b"POST /t HTTP/1.1\r\nHost: h.test\r\nTransfer-Encoding: chunked\r\n\r\n" \
          b"4\r\n\r\n\r\n\r\n0\r\nX-T: y\r\n\r\n"
GET = b"GET /g HTTP/1.1\r\nHost: h.test\r\n\r\n"
BAD_LINE = b"GET  /bad HTTP/1.1\r\nHost: h.test\r\n\r\n"


@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_pipelined_starts_after_bodies_and_empty_lines(chunk):
    msgs = (GET, POST_CL, GET, b"\r\n", POST_TE, b"\r\n\r\n", GET, POST_TE, POST_CL, GET)
    urls, broken = _pipeline(*msgs, chunk=chunk)
    assert broken is None
    assert urls == [b"/g", b"/p", b"/g", b"/t", b"/g", b"/t", b"/p", b"/g"]
    # and a bad request line in any of those places is found
    for i in range(1, len(msgs) + 1):
        urls, broken = _pipeline(*msgs[:i], BAD_LINE, chunk=chunk)
        assert broken == 400, (i, chunk)
        assert b"/bad" not in urls


def test_unknown_method_behind_bodies_is_501():
    for prefix in (GET, POST_CL, POST_TE, GET + POST_TE + b"\r\n"):
        urls, broken = _pipeline(prefix, b"FOO / HTTP/1.1\r\nHost: h.test\r\n\r\n")
        assert broken == 501, prefix
        urls, broken = _pipeline(prefix, b" FOO / HTTP/1.1\r\nHost: h.test\r\n\r\n")
        assert broken == 400, prefix


# --- the differential (h11) on what its generator does not make ---------------------------------
h11 = pytest.importorskip("h11")


def _h11_accepts(data: bytes) -> bool:
    c = h11.Connection(h11.SERVER)
    c.receive_data(data)
    try:
        return isinstance(c.next_event(), h11.Request)
    except h11.RemoteProtocolError:
        return False


@pytest.mark.parametrize("data", [
    _req(b"GET  / HTTP/1.1", H), _req(b"GET /  HTTP/1.1", H), _req(b"GET / RTSP/1.0", H),
    _req(b"GET / HTTP/1.1", b"Host: h test"), _req(b"GET / HTTP/1.1", H, b"X-V: a\t"),
    _req(b"GET / HTTP/1.1", b"Host: h.test\t"), _req(b"GET / HTTP/1.2", H),
])
def test_no_accepted_case_that_h11_refuses(data):
    """Where hostd accepts, h11 (a strict implementation) accepts too."""
    if front_verdict(data) == "ok":
        assert _h11_accepts(data), data


@pytest.mark.parametrize("version, value, expect", [
    (b"1.0", b"100-continue", False), (b"1.1", b"100-continue", True),
    (b"1.1", b"100-Continue \t", True),
])
def test_expect_100_continue_only_in_http11(version, value, expect):
    """RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored."""
    w = WorkerConn()
    try:
        w.feed(b"POST / HTTP/%s\r\nHost: h.test\r\nExpect: %s\r\n"
               b"Content-Length: 3\r\n\r\n" % (version, value))
        assert w.c.pending[-1].expect is expect
    finally:
        w.close()


def test_empty_lines_alone_count_toward_the_head_on_both_sides():
    """CR/LF before a request line, read on their own, count toward max_header_bytes as
    the front end counts them: a flood of them is a 431, not an idle connection."""
    flood = b"\r\n" * (MAX_HEAD // 2 + 1)
    assert front_verdict(flood) == 431
    w = WorkerConn()
    try:
        w.feed(FIRST)
        w.answer()
        w.feed(*(flood[i:i + 2] for i in range(0, len(flood), 2)))
        assert w.verdict() == 431
    finally:
        w.close()
    w = WorkerConn()
    try:
        w.feed(FIRST)
        w.answer()
        w.feed(b"\r\n", b"\r\n", GET)       # a few, then the request: served
        assert w.verdict()["REQUEST_METHOD"] == "GET"
    finally:
        w.close()


def test_empty_lines_then_a_large_read_is_no_431():
    """Empty lines read alone, then a request whose read is larger than max_header_bytes
    (its body): only the head counts."""
    w = WorkerConn()
    try:
        w.feed(FIRST)
        w.answer()
        body = b"b" * (MAX_HEAD + 10)
        w.feed(b"\r\n", b"POST /big HTTP/1.1\r\nHost: h.test\r\nContent-Length: %d\r\n\r\n%s"
               % (len(body), body))
        assert w.verdict()["CONTENT_LENGTH"] == str(len(body))
    finally:
        w.close()
