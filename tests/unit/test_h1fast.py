"""The C path (workers/_h1fast.c via workers/h1fast.py) against the pure-Python one.

parse: whatever the C parser takes, the full reader (httptools + hostd/limits.py, the C
path turned off) takes too, as exactly one whole request with the same environ, target,
keep-alive, version and body; the C parser never refuses (it declines: None). Checked on
the head rules' cases, the gunicorn corpus when it is cached, and generated heads built
from the characters and fields that decide the rules.

head: whatever head the C builder makes, the Python builder (_head_py) makes byte for
byte, with the same framing decisions.

Skipped when the extension is not built (install.sh builds it; the pure-Python path is
then the only one and the rest of the suite tests it).
"""
from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers import h1fast, h1read, h1write
from workers.http import Connection

pytestmark = pytest.mark.skipif(not h1fast.ENABLED, reason=f"C path off: {h1fast.OFF_REASON}")

MAX_HEAD = 8192
MAX_BODY = 1 << 16
BASE = {"wsgi.version": (1, 0), "SERVER_NAME": "127.0.0.1", "REMOTE_ADDR": "127.0.0.1"}


class _Worker:
    max_header_bytes = MAX_HEAD
    max_body = MAX_BODY
    bytes_in = 0
    fast = False
    base_env = BASE


def full_reader(data: bytes):
    """The pure-Python reader's view of data read in one go: (requests, broken), with
    each pending request as the C parser would describe it."""
    saved = h1read._fast_parse
    h1read._fast_parse = None
    a, b = socket.socketpair()
    try:
        c = Connection(_Worker(), a)
        c.base_env = dict(BASE)
        c.feed(data)
        reqs = [(r.env, r.url, r.clen, bytes(r.buf) if r.buf else None, r.keep_alive,
                 r.http11, r.complete) for r in c.pending]
        return reqs, c.broken is not None or c.cur is not None
    finally:
        h1read._fast_parse = saved
        a.close()
        b.close()


def check(data: bytes) -> bool:
    """Asserts the C parser's verdict on data agrees with the full reader; True when the
    C parser took it."""
    hit = h1fast.parse(data, dict(BASE), MAX_HEAD, 8192, MAX_BODY)
    if hit is None:
        return False
    env, url, clen, body, keep_alive, http11, host = hit
    reqs, broken = full_reader(data)
    assert not broken, (data, "the C parser took what the full reader refuses")
    assert len(reqs) == 1, (data, "the C parser took one request of", len(reqs))
    fenv, furl, fclen, fbody, fka, fh11, complete = reqs[0]
    assert complete, data
    assert env == fenv, (data, env, fenv)
    assert (url, clen, body or None, keep_alive, http11) == (furl, fclen, fbody, fka, fh11), data
    if host is not None:
        assert host.decode("latin-1") == env["HTTP_HOST"]
    return True


COMMON = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"GET /a/b?c=d&e HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2 \t\r\nX_B: dropped\r\n\r\n",
    b"OPTIONS /x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",       # declined: IPv6 literal
    b"DELETE /%41 HTTP/1.1\r\nhost: A.TEST:\r\n\r\n",
]


def test_common_requests_are_taken_and_agree():
    taken = [check(d) for d in COMMON]
    assert taken == [True] * 8 + [False, True]


def test_what_it_declines():
    declined = [
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",                 # empty line first
        b"GET / HTTP/1.1\r\n\r\n",                                # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",             # absolute-form
        b"GET /#f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",    # body not all here
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # pipelined
        b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, te\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n",          # obs-text
        b"GET / HTTP/1.1\r\nHost: a\r\nX : y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",       # obs-fold
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n",  # > max_body
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",  # > max_url
        b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * MAX_HEAD + b"\r\n\r\n",  # > max_head
        b"GET / HTTP/1.1\r\nHost: a\r\n",                         # incomplete
    ]
    for data in declined:
        assert h1fast.parse(data, dict(BASE), MAX_HEAD, 8192, MAX_BODY) is None, data


def test_head_rule_cases_agree():
    from test_headrules import CASES
    taken = sum(check(data) for data, _expected in CASES.values())
    assert taken > 0


def test_gunicorn_corpus_agrees():
    from corpus import gunicorn_corpus as gc
    try:
        root = gc.fetch()           # from PyPI once, then the cache (test_corpus.py's too)
    except gc.CorpusUnavailable as exc:
        pytest.skip(f"gunicorn {gc.GUNICORN_VERSION} corpus unavailable: {exc}")
    cases = [c for c in gc.load_cases(root) if c.problem is None]
    taken = sum(check(c.data) for c in cases)
    assert taken > 10, (taken, len(cases))


# --- generated heads -----------------------------------------------------------------------
METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                           b"get", b"FOO", b"CONNECT", b"TRACE"])
TARGET = st.text(alphabet="/abAZ09-._~%?&=:@!$'()*+,;#[]\" \t\x7f\x80\\^`{|}<>", max_size=12) \
    .map(lambda s: ("/" + s).encode("latin-1"))
VERSION = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9",
                           b"http/1.1", b"RTSP/1.0"])
NAMES = st.sampled_from([b"Host", b"host", b"HOST", b"Content-Length", b"content-length",
                         b"Connection", b"Transfer-Encoding", b"Expect", b"Upgrade",
                         b"Proxy-Connection", b"Content-Type", b"X-Y", b"X_Y", b"Accept",
                         b"Keep-Alive", b"A", b"Cookie", b"X Y", b"X\tY", b""])
VALUE = st.one_of(
    st.sampled_from([b"", b"a", b"a.test", b"a.test:80", b"a:", b"[::1]", b"a@b", b"0", b"5",
                     b"05", b"+5", b"-1", b"close", b"Close", b"keep-alive", b"upgrade",
                     b"chunked", b"100-continue", b"1,2", b"a b"]),
    st.binary(max_size=6).filter(lambda v: b"\r" not in v and b"\n" not in v),
    st.text(alphabet=" \t!~\x7f\x80\xffaZ09:/;,", max_size=6).map(lambda s: s.encode("latin-1")),
)
OWS = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
EOL = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b""])


@st.composite
def requests(draw):
    line = draw(METHODS) + draw(st.sampled_from([b" ", b"  "])) + draw(TARGET) + b" " + \
        draw(VERSION) + draw(EOL)
    fields = b""
    for _ in range(draw(st.integers(0, 5))):
        fields += draw(NAMES) + b":" + draw(OWS) + draw(VALUE) + draw(OWS) + draw(EOL)
    body = draw(st.sampled_from([b"", b"hello", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]))
    lead = draw(st.sampled_from([b"", b"", b"", b"\r\n"]))
    return lead + line + fields + draw(EOL) + body


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_generated_heads_agree(data):
    check(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(COMMON), st.integers(0, 60))
def test_truncated_and_extended_agree(data, cut):
    check(data[:len(data) - cut])
    check(data + data[:cut])


# --- the response head -------------------------------------------------------------------
class _Writer(h1write.ResponseWriter):
    """The state _head_py reads and writes."""

    class req:
        complete = True
        expect = False
        env: dict = {}

    stopped = False

    def __init__(self, status, headers, http11, close_after, nobody):
        self.status, self.headers = status, headers
        self.http11, self.close_after, self.nobody = http11, close_after, nobody
        self.chunked = False
        self.clen = None


STATUS = st.sampled_from(["200 OK", "204 No Content", "304 Not Modified", "101 Switching",
                          "404", "500 Internal Server Error", "200 caf\xe9", "20 OK", "200OK",
                          "099 x", "200 a\r\nb", "999 Whatever"])
HNAME = st.sampled_from(["Content-Type", "Content-Length", "content-length", "Connection",
                         "Date", "Server", "Transfer-Encoding", "Keep-Alive", "Upgrade",
                         "Proxy-Connection", "X-A", "Set-Cookie", "Bad Name", "", "X\xe9"])
HVALUE = st.sampled_from(["text/plain", "13", "0", " 13", "+13", "1_3", "-1", "close",
                          "Keep-Alive, Close", "x", "", "a\r\nb", "caf\xe9", "a\x00b"])


@settings(max_examples=3000, deadline=None)
@given(STATUS, st.lists(st.tuples(HNAME, HVALUE), max_size=5), st.sampled_from([None, 0, 13]),
       st.booleans(), st.booleans(), st.booleans())
def test_head_agrees(status, headers, known_len, http11, close_after, nobody):
    date = h1fast.date()
    hit = h1fast.head(status, headers, -1 if known_len is None else known_len, http11,
                      close_after, nobody)
    if hit is None:
        return
    w = _Writer(status, headers, http11, close_after, nobody)
    saved = h1write._date
    h1write._date = lambda: date
    try:
        expected = w._head_py(known_len)
    finally:
        h1write._date = saved
    head, clen, c_close, c_chunked, c_nobody = hit
    assert head == expected
    assert (None if clen < 0 else clen, c_close, c_chunked, c_nobody) == \
        (w.clen, w.close_after, w.chunked, w.nobody)


def test_date_is_imf_fixdate():
    from email.utils import formatdate, parsedate_to_datetime
    line = h1fast.date()
    assert line.startswith("Date: ") and line.endswith(" GMT\r\n")
    stamp = parsedate_to_datetime(line[6:-2]).timestamp()
    assert abs(stamp - __import__("time").time()) < 2
    assert line[6:-2] == formatdate(stamp, usegmt=True)


# --- mutations of common requests ---------------------------------------------------------
#: bytes a mutation inserts or puts in place of another: the ones the rules turn on
EDGE = b" \t\r\n:/#?%@[]\x00\x7f\x80\xff_-,;\"\\aZ09"


def _mutate(rng, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 2)):
        op = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if op == 0 and i < len(b):
            b[i] = rng.choice(EDGE)
        elif op == 1:
            b[i:i] = bytes([rng.choice(EDGE)])
        elif op == 2 and i < len(b):
            del b[i]
        else:                       # a field more, or one doubled
            at = b.find(b"\r\n") + 2
            extra = rng.choice([b"Host: b\r\n", b"Content-Length: 0\r\n", b"X-Z: 1\r\n",
                                b"Connection: close\r\n", b"Transfer-Encoding: chunked\r\n"])
            b[at:at] = extra
    return bytes(b)


def test_mutated_requests_agree():
    """6,000 seeded mutations of the common requests: every one the C parser takes agrees
    with the full reader, and enough are taken for that to mean something."""
    import random
    rng = random.Random(13)
    taken = total = 0
    for _ in range(6000):
        data = _mutate(rng, rng.choice(COMMON[:8]))
        total += 1
        taken += check(data)
    assert taken > total // 5, (taken, total)
