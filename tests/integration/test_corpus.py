"""A public third-party request corpus against a real hostd (issue 13).

Corpus: gunicorn's HTTP parser fixtures, tests/requests/valid/ and tests/requests/invalid/
of the gunicorn 23.0.0 sdist on PyPI (https://pypi.org/project/gunicorn/23.0.0/), MIT
license (c) Benoit Chesneau and Paul J. Davis: 42 valid and 56 invalid requests, each a
NAME.http (the bytes) and a NAME.py (gunicorn's expectation). None of it is in this
repository: tests/corpus/gunicorn_corpus.py fetches it at collection time with
`pip download --no-deps --no-binary :all: gunicorn==23.0.0`, checks the sdist's sha256,
and caches tests/requests/ + LICENSE under .venv/hostd-corpus/gunicorn-23.0.0/ (or
$HOSTD_CORPUS_CACHE, or /var/tmp/hostd-corpus without a .venv), so later runs download
nothing. If it cannot be fetched, every test here is SKIPPED with the reason (pytest -ra
prints it). The .py files are read with `ast`, never executed (see gunicorn_corpus).

One hostd for the module, one pool bound to `*` (any Host routes) running
tests/apps/echo_app.py, which answers 200 + `X-Echo: corpus` with the method, path,
query, protocol, header fields and body it was given. Each case runs as:

* `first-request`: the bytes as the first data of a new connection (the front end reads
  the head, the worker reads on);
* `kept-alive`: the same bytes sent after `GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n` was
  answered on that connection (the worker alone parses them);
* `+Host` twins of both where the corpus request is HTTP/1.1 without Host (most of it:
  gunicorn does not require Host): `Host: corpus.test` is inserted after each such
  request line (after the first line of an invalid case), so the case's own rule is
  tested and not just RFC 9112 §3.2's.

Verdicts:

* invalid case: nothing may reach the app. A 4xx/5xx answer, a close, or no answer at
  all within the 3 s bound (an incomplete head waits for its header/keep-alive timeout)
  passes; any answer of the app (or any 1xx/2xx/3xx) is an accepted-but-wrong FAIL.
* valid case: every expected request is answered 200 by the app, which saw gunicorn's
  method, path (percent-decoded, PEP 3333) and query, HTTP version, header fields (names
  case-insensitively, as environ keys; repeated fields joined by ","), and body; and
  nothing else is answered after them. Chunked trailers are not compared: WSGI hands
  none to an app. Exceptions are explicit and asserted:
  REFUSED_NO_HOST and REFUSED_ON_PURPOSE list the requests hostd refuses on purpose
  (the refusal must happen, with REFUSAL_STATUS's code where one is pinned). INCOMPLETE
  cases are incomplete on a connection: like invalid ones, the app must not answer.
* cases whose gunicorn expectation depends on a gunicorn setting (`cfg.set(...)`) or on
  gunicorn's own size limits are each listed in CFG_SKIP, SERVED_UNDER_HOSTD,
  REFUSED_ON_PURPOSE or SAME_UNDER_HOSTD (test_every_case_with_gunicorn_settings_is_
  treated_explicitly checks it).

XFAIL would list failures this suite knows of and expects fixed: it is empty now (the
issue 13 exactness rules it listed landed in 034575d).
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

import pytest

from corpus import gunicorn_corpus as gc
from hostd_harness import APPS, Hostd

DEADLINE = 3.0          # seconds per exchange
GRACE = 0.3             # after the expected answers: wait this long for unexpected ones
PREFIX = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
ADDED_HOST = "corpus.test"

NO_HOST = "RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400"

#: HTTP/1.1 requests of the corpus without a Host field ("case#k": the k-th request of
#: a pipelined case). Refused in the plain variants, served in the +Host ones.
REFUSED_NO_HOST = {k: NO_HOST for k in [
    "valid/004", "valid/005", "valid/006", "valid/007", "valid/009", "valid/010",
    "valid/011", "valid/012", "valid/013", "valid/014", "valid/018", "valid/018#2",
    "valid/021", "valid/022#2", "valid/023", "valid/023#2", "valid/025", "valid/025_line",
    "valid/028", "valid/029", "valid/030", "valid/031", "valid/031compat",
    "valid/031compat2", "valid/100",
    "valid/compat_obs_fold_huge", "valid/pp_02", "valid/pp_02#2",
    "invalid/010", "invalid/017", "invalid/chunked_07",   # SERVED_UNDER_HOSTD ones
]}

#: valid requests hostd refuses on purpose, with or without Host ("case" = its first
#: request, "case#k" the k-th)
REFUSED_ON_PURPOSE = {
    "valid/005": "a fragment in the request target (`#posts-17408`): origin-form is "
                 "absolute-path [\"?\" query] (RFC 9112 §3.2.1): 400",
    "valid/009": "a fragment in the target, and Transfer-Encoding: identity with "
                 "Content-Length: hostd decodes no coding but chunked (RFC 9112 §6.1) and "
                 "refuses TE + CL together (RFC 9112 §6.3 lets a server reject it)",
    "valid/013": "whitespace around `;` in chunk extensions (`5; some; parameters=stuff`): "
                 "RFC 9112 §7.1.1 allows BWS there, but llhttp in strict mode refuses it and "
                 "both of hostd's parsers use it: 400, the safe side (chunk extensions are "
                 "where parsers that smuggle disagree)",
    "valid/024": "a 16,395-byte head (gunicorn cfg limit_request_line=0 and "
                 "limit_request_field_size=0: unlimited): over hostd's max_header_bytes "
                 "(16 KiB) -> 431 (RFC 6585 §5)",
    "valid/025": "Transfer-Encoding: gzip, then chunked: hostd decodes no coding but chunked "
                 "(RFC 9112 §6.1: 501)",
    "valid/025_line": "Transfer-Encoding: gzip,chunked: hostd decodes no coding but chunked "
                      "(RFC 9112 §6.1: 501)",
    "valid/027": "raw non-ASCII bytes (UTF-8 `\\xc3\\xa0`) in the request target: not URI "
                 "syntax (RFC 9112 §3.2, RFC 3986 §2: they must be percent-encoded): 400",
    "valid/028": "`Content-Length : 3` (gunicorn cfg strip_header_spaces=True): whitespace "
                 "before the colon MUST be answered 400 (RFC 9112 §5.1)",
    "valid/029": "Transfer-Encoding: identity, then chunked (one list over two lines, RFC "
                 "9110 §5.3): `identity` is no coding hostd decodes (RFC 9112 §6.1: 501)",
    "valid/030": "Transfer-Encoding: identity, then chunked (one list over two lines, RFC "
                 "9110 §5.3): `identity` is no coding hostd decodes (RFC 9112 §6.1: 501)",
    "valid/031": "method -BLARGH: hostd implements only the methods llhttp knows; an "
                 "unknown method is 501 (RFC 9110 §9.1, §15.6.2)",
    "valid/031compat": "method -blargh (gunicorn cfg permit_unconventional_http_method, "
                       "casefold_http_method): methods are case-sensitive and this one is "
                       "unknown to hostd: 501 (RFC 9110 §9.1, §15.6.2)",
    "valid/031compat2": "method -blargh (gunicorn cfg permit_unconventional_http_method): "
                        "unknown to hostd: 501 (RFC 9110 §9.1, §15.6.2)",
    "valid/compat_obs_fold": "obs-fold (gunicorn cfg permit_obsolete_folding=True): hostd "
                             "rejects it with 400, one of RFC 9112 §5.2's two choices",
    "valid/compat_obs_fold_huge": "obs-fold (gunicorn cfg permit_obsolete_folding=True): "
                                  "hostd rejects it with 400 (RFC 9112 §5.2)",
    "valid/pp_01": "a PROXY protocol v1 line (gunicorn cfg proxy_protocol=True): hostd does "
                   "not speak the PROXY protocol: no request line it can serve (400, or 501 "
                   "for `PROXY` read as an unknown method)",
    "valid/pp_02": "a PROXY protocol v1 line (gunicorn cfg proxy_protocol=True): hostd does "
                   "not speak the PROXY protocol: no request line it can serve (400, or 501 "
                   "for `PROXY` read as an unknown method)",
}

#: refusals whose status is pinned (when the refused request has a Host; without one the
#: Host rule's 400 is as right). A refusal by the Host rule alone must be a 400; other
#: refusals may be any 4xx/5xx answer or a close.
REFUSAL_STATUS = {
    "valid/024": {431}, "valid/013": {400},
    "valid/025": {501}, "valid/025_line": {501}, "valid/029": {501}, "valid/030": {501},
    "valid/028": {400}, "valid/027": {400}, "valid/005": {400},
    "valid/031": {501}, "valid/031compat": {501}, "valid/031compat2": {501},
    "valid/compat_obs_fold": {400}, "valid/compat_obs_fold_huge": {400},
    "valid/pp_01": {400, 501}, "valid/pp_02": {400, 501},
    "invalid/version_02": {505},          # HTTP/2.0 in an HTTP/1.1 request line (issue 13)
}

#: valid for gunicorn's parser, which is fed the bytes and then end-of-data, but
#: incomplete over a socket: the app can never have the whole request, so it must not
#: answer (hostd waits for the rest, then cuts the body by its timeouts)
INCOMPLETE = {
    "valid/099": "Content-Length: 17914 with 8599 body bytes: gunicorn's LengthReader stops "
                 "at the end of the data; on a connection the rest is still to come",
}

#: cases not run: gunicorn-specific switches with no counterpart in hostd
CFG_SKIP = {
    "invalid/019": "gunicorn cfg forwarded_allow_ips='*': InvalidSchemeHeaders is gunicorn's "
                   "check of X-Forwarded-Proto against X-Forwarded-Ssl; hostd trusts no "
                   "forwarding field and hands both to the app like any other (no HTTP rule)",
    "invalid/040": "gunicorn cfg header_map='refuse'; hostd's fixed behaviour is gunicorn's "
                   "default, 'drop' (names with '_' never reach environ): the same bytes run "
                   "as valid/040",
    "valid/040_compat": "gunicorn cfg header_map='dangerous' (names with '_' put in environ); "
                        "hostd always drops them, as valid/040 checks",
}

#: invalid for gunicorn only because of gunicorn's size limits or a gunicorn switch: valid
#: under hostd's fixed rules, so they must be served; the expectation is read off the
#: bytes (request line, fields without '_', Content-Length or chunked body)
SERVED_UNDER_HOSTD = {
    "invalid/006": "gunicorn's limit_request_line (4094 by default): a 4112-byte request "
                   "line is within hostd's 8 KiB target limit",
    "invalid/007": "gunicorn's limit_request_field_size (8190 by default): an 8.2 KB field "
                   "is within hostd's max_header_bytes (16 KiB for the whole head)",
    "invalid/008": "gunicorn's limit_request_field_size (8190 by default): a 12 KB head is "
                   "within hostd's max_header_bytes (16 KiB)",
    "invalid/009": "gunicorn's limit_request_fields (100 by default): hostd limits the "
                   "head's size, not its number of fields (103 here)",
    "invalid/010": "gunicorn cfg limit_request_field_size=10",
    "invalid/011": "gunicorn cfg limit_request_fields=2",
    "invalid/012": "gunicorn cfg limit_request_field_size=98",
    "invalid/017": "gunicorn's limit_request_field_size (8190 by default): an 8.2 KB field "
                   "is within hostd's max_header_bytes (16 KiB)",
    "invalid/chunked_07": "gunicorn cfg header_map='refuse' for `Transfer_Encoding: gzip`; "
                          "hostd drops names with '_' and frames by `Transfer-Encoding: "
                          "chunked` alone",
}

#: gunicorn settings that change nothing about what hostd must do
SAME_UNDER_HOSTD = {
    "valid/026": "gunicorn cfg limit_request_line=0, limit_request_field_size=8210: the "
                 "8.2 KB field is within hostd's fixed limits: served as gunicorn expects",
    "invalid/013": "gunicorn cfg limit_request_field_size=14 + permit_obsolete_folding: "
                   "hostd refuses the obs-fold itself (RFC 9112 §5.2): still invalid",
    "invalid/pp_01": "gunicorn cfg proxy_protocol=True: hostd has no PROXY protocol, a "
                     "PROXY line is a malformed request line: still invalid",
    "invalid/pp_02": "gunicorn cfg proxy_protocol=True: hostd has no PROXY protocol, a "
                     "PROXY line is a malformed request line: still invalid",
}

#: failures of the exactness rules issue 13 lists, fixed in parallel: "case" (all its
#: variants) or "case variant" -> reason
XFAIL: dict[str, str] = {}


# --- the corpus, as test plans ------------------------------------------------------------
try:
    CASES = gc.load_cases(gc.fetch())
    UNAVAILABLE = None
except gc.CorpusUnavailable as exc:
    CASES, UNAVAILABLE = [], f"gunicorn {gc.GUNICORN_VERSION} corpus unavailable: {exc}"
BY_NAME = {c.name: c for c in CASES}


def _env_key(name: str) -> str | None:
    """A field name as its environ key (PEP 3333); None for a name hostd drops ('_')."""
    n = name.upper()
    if "_" in n:
        return None
    if n in ("CONTENT-TYPE", "CONTENT-LENGTH"):
        return n.replace("-", "_")
    return "HTTP_" + n.replace("-", "_")


def _has_host(req: dict) -> bool:
    return any(n.upper() == "HOST" for n, _v in req["headers"])


def _plain_expectation(data: bytes) -> dict:
    """For SERVED_UNDER_HOSTD: one request read off simple bytes (no folding)."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.upper(), value.strip(" \t")))
    names = {n for n, _v in headers}
    if "TRANSFER-ENCODING" in names:
        body, pos = b"", 0
        while True:
            eol = rest.index(b"\r\n", pos)
            size = int(rest[pos:eol].split(b";")[0], 16)
            if size == 0:
                break
            body += rest[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    else:
        cl = [v for n, v in headers if n == "CONTENT-LENGTH"]
        body = rest[:int(cl[0])] if cl else b""
    major, minor = version.removeprefix("HTTP/").split(".")
    return {"method": method, "uri": gc.uri(target), "version": (int(major), int(minor)),
            "headers": headers, "body": body}


@dataclass
class Plan:
    case: str
    variant: str
    data: bytes
    prefix: bytes | None
    invalid: bool
    expect: list = field(default_factory=list)   # expected request dicts (valid)
    refuse_at: int | None = None                 # 1-based: the request hostd must refuse
    reasons: list = field(default_factory=list)
    statuses: set | None = None                  # pinned refusal statuses, or None

    @property
    def id(self) -> str:
        return f"{self.case}-{self.variant}"


def _with_host(data: bytes, reqs: list) -> tuple[bytes, list] | None:
    """Inserts `Host: corpus.test` after the request line of each HTTP/1.1 request
    without Host; None if a request line is not found verbatim (after the first line of
    a one-request case: valid/031compat's expectation has the method casefolded)."""
    if len(reqs) == 1 and b"\r\n" in data:
        i = data.index(b"\r\n") + 2
        r = reqs[0]
        return (data[:i] + f"Host: {ADDED_HOST}\r\n".encode() + data[i:],
                [dict(r, headers=[*r["headers"], ("HOST", ADDED_HOST)])])
    out, pos, new = b"", 0, []
    for r in reqs:
        line = f"{r['method']} {r['uri']['raw']} HTTP/{r['version'][0]}.{r['version'][1]}" \
               f"\r\n".encode("latin-1")
        at = data.find(line, pos)
        if at < 0:
            return None
        end = at + len(line)
        out += data[pos:end]
        pos = end
        if tuple(r["version"]) == (1, 1) and not _has_host(r):
            out += f"Host: {ADDED_HOST}\r\n".encode()
            r = dict(r, headers=[*r["headers"], ("HOST", ADDED_HOST)])
        new.append(r)
    return out + data[pos:], new


def _refusal(name: str, reqs: list, host_rule: bool) -> tuple[int | None, list, set | None]:
    """(1-based index of the first request hostd must refuse, reasons, pinned statuses)."""
    best, reasons, statuses = None, [], None
    for k, r in enumerate(reqs, 1):
        key = name if k == 1 else f"{name}#{k}"
        why = []
        if host_rule and key in REFUSED_NO_HOST:
            why.append(("host", REFUSED_NO_HOST[key]))
        if key in REFUSED_ON_PURPOSE:
            why.append(("purpose", REFUSED_ON_PURPOSE[key]))
        if why:
            best, reasons = k, [w for _kind, w in why]
            kinds = {kind for kind, _w in why}
            if "purpose" not in kinds:
                statuses = {400}                        # the Host rule alone
            elif key in REFUSAL_STATUS:
                statuses = set(REFUSAL_STATUS[key]) | ({400} if "host" in kinds else set())
            break
    return best, reasons, statuses


def _plans() -> list[Plan]:
    plans = []
    for c in CASES:
        if c.problem or c.name in CFG_SKIP:
            continue
        if c.name in INCOMPLETE:
            for v, prefix in (("first-request", None), ("kept-alive", PREFIX)):
                plans.append(Plan(c.name, v, c.data, prefix, True))
        elif c.kind == "valid" or c.name in SERVED_UNDER_HOSTD:
            reqs = c.requests if c.kind == "valid" else [_plain_expectation(c.data)]
            variants = [("", c.data, reqs, True)]
            if any(tuple(r["version"]) == (1, 1) and not _has_host(r) for r in reqs):
                added = _with_host(c.data, reqs)
                if added is not None:
                    variants.append(("+Host", added[0], added[1], False))
            for suffix, data, exp, host_rule in variants:
                at, reasons, statuses = _refusal(c.name, exp, host_rule)
                for v, prefix in (("first-request", None), ("kept-alive", PREFIX)):
                    plans.append(Plan(c.name, v + suffix, data, prefix, False, exp, at,
                                      reasons, statuses))
        else:
            variants = [("", c.data)]
            head = c.data.split(b"\r\n\r\n")[0].split(b"\r\n")
            if b"\r\n" in c.data and not head[0].endswith(b" HTTP/1.0") and \
                    not any(h.lower().startswith(b"host:") for h in head[1:]):
                i = c.data.index(b"\r\n") + 2
                variants.append(("+Host", c.data[:i] + f"Host: {ADDED_HOST}\r\n".encode()
                                 + c.data[i:]))
            for suffix, data in variants:
                for v, prefix in (("first-request", None), ("kept-alive", PREFIX)):
                    plans.append(Plan(c.name, v + suffix, data, prefix, True,
                                      statuses=REFUSAL_STATUS.get(c.name)))
    return plans


PLANS = _plans()


def _params():
    if UNAVAILABLE:
        return [pytest.param(None, id="gunicorn-corpus",
                             marks=pytest.mark.skip(reason=UNAVAILABLE))]
    out = []
    for p in PLANS:
        why = XFAIL.get(f"{p.case} {p.variant}") or XFAIL.get(p.case)
        marks = [pytest.mark.xfail(strict=False, reason=why)] if why else []
        out.append(pytest.param(p, id=p.id, marks=marks))
    return out


# --- talking to hostd ------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    @property
    def from_app(self) -> bool:
        return self.headers.get("x-echo") == "corpus"

    def short(self) -> str:
        return f"{self.status}{' (app)' if self.from_app else ''} {self.body[:160]!r}"


def _parse_one(buf: bytes, closed: bool) -> tuple[Response, bytes] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    rest = buf[end + 4:]
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(rest) < n:
            return None
        return Response(status, headers, rest[:n]), rest[n:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(rest[pos:eol].split(b";")[0], 16)
            if size == 0:
                fin = rest.find(b"\r\n\r\n", eol)
                if fin < 0:
                    return None
                return Response(status, headers, body), rest[fin + 4:]
            if len(rest) < eol + 2 + size + 2:
                return None
            body += rest[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2
    if status in (204, 304) or 100 <= status < 200:
        return Response(status, headers, b""), rest
    if not closed:
        return None
    return Response(status, headers, rest), b""


@dataclass
class Outcome:
    responses: list
    closed: bool        # the server closed (or reset) the connection
    leftover: bytes     # bytes that did not parse as a response
    notes: list


def _exchange(port: int, data: bytes, prefix: bytes | None, want: int | None) -> Outcome:
    """Sends `data` (after `prefix` was answered, if any) and reads answers: until the
    server closes, DEADLINE passes, or `want` answers came and GRACE passed after them."""
    notes = []
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        if prefix is not None:
            s.sendall(prefix)
            buf = b""
            t_end = time.monotonic() + DEADLINE
            while True:
                got = _parse_one(buf, False)
                if got is not None:
                    first, buf = got
                    break
                s.settimeout(max(0.01, t_end - time.monotonic()))
                chunk = s.recv(65536)
                assert chunk, f"hostd closed before answering the kept-alive prefix: {buf!r}"
                buf += chunk
            assert first.status == 200 and first.from_app and not buf, \
                f"the kept-alive prefix got {first.short()}"
        try:
            s.sendall(data)
        except OSError as exc:  # hostd answered and closed before taking everything
            notes.append(f"send: {exc}")
        buf, responses, closed = b"", [], False
        t_end = time.monotonic() + DEADLINE
        grace_end = None
        while True:
            while True:
                got = _parse_one(buf, closed)
                if got is None:
                    break
                r, buf = got
                responses.append(r)
            if closed:
                break
            if want is not None and len(responses) >= want and grace_end is None:
                grace_end = time.monotonic() + GRACE
            stop = min(t_end, grace_end) if grace_end is not None else t_end
            left = stop - time.monotonic()
            if left <= 0:
                if grace_end is None or stop == t_end:
                    notes.append(f"no close within {DEADLINE:g}s")
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                notes.append("reset")
                closed = True
                continue
            if not chunk:
                closed = True
            buf += chunk
    return Outcome(responses, closed, buf, notes)


def _mismatch(doc: dict, exp: dict) -> list[str]:
    """What the app saw that differs from gunicorn's expectation."""
    bad = []
    if doc["method"] != exp["method"]:
        bad.append(f"method {doc['method']!r} != {exp['method']!r}")
    proto = f"HTTP/{exp['version'][0]}.{exp['version'][1]}"
    if doc["protocol"] != proto:
        bad.append(f"protocol {doc['protocol']!r} != {proto!r}")
    path = unquote_to_bytes(exp["uri"]["path"].encode("latin-1")).decode("latin-1")
    if doc["script_name"] + doc["path"] != path:
        bad.append(f"path {doc['script_name'] + doc['path']!r} != {path!r}")
    if doc["query"] != exp["uri"]["query"]:
        bad.append(f"query {doc['query']!r} != {exp['uri']['query']!r}")
    want: dict[str, list] = {}
    for name, value in exp["headers"]:
        key = _env_key(name)
        if key is not None:
            want.setdefault(key, []).append(value)
    got = doc["headers"]
    for key in sorted(set(want) | set(got)):
        if key not in got:
            bad.append(f"field {key} missing (want {want[key]!r})")
        elif key not in want:
            bad.append(f"field {key}={got[key]!r} not in the request")
        elif got[key] not in (",".join(want[key]), ", ".join(want[key])):
            bad.append(f"field {key}={got[key]!r} != {want[key]!r}")
    body = exp["body"] if isinstance(exp["body"], bytes) else exp["body"].encode("latin-1")
    if doc["body"].encode("latin-1") != body:
        bad.append(f"body {doc['body'].encode('latin-1')[:120]!r} (len {len(doc['body'])}) "
                   f"!= {body[:120]!r} (len {len(body)})")
    return bad


def verdict(plan: Plan, out: Outcome) -> list[str]:
    """The problems of one exchange; [] when hostd did right."""
    rs = out.responses
    problems = []
    if plan.invalid:
        for r in rs:
            if r.from_app or r.status < 400:
                problems.append(f"ACCEPTED-BUT-WRONG: answered {r.short()}")
        if plan.statuses is not None and (not rs or rs[0].status not in plan.statuses):
            problems.append(f"refusal status {[r.status for r in rs]} not in "
                            f"{sorted(plan.statuses)}")
        return problems
    served = len(plan.expect) if plan.refuse_at is None else plan.refuse_at - 1
    for i, exp in enumerate(plan.expect[:served]):
        if i >= len(rs):
            problems.append(f"request {i + 1} ({exp['method']} {exp['uri']['raw'][:60]}) "
                            f"got no answer")
            return problems
        r = rs[i]
        if r.status != 200 or not r.from_app:
            problems.append(f"request {i + 1} ({exp['method']} {exp['uri']['raw'][:60]}) "
                            f"refused: {r.short()}")
            return problems
        bad = _mismatch(json.loads(r.body), exp)
        if bad:
            problems.append(f"request {i + 1}: the app saw " + "; ".join(bad))
    extra = rs[served:]
    if plan.refuse_at is not None:
        if extra and (extra[0].from_app or extra[0].status < 400):
            problems.append(f"request {plan.refuse_at} should be refused "
                            f"({' / '.join(plan.reasons)}) but got {extra[0].short()}")
        elif plan.statuses is not None and (not extra or extra[0].status not in plan.statuses):
            problems.append(f"request {plan.refuse_at} refused with "
                            f"{extra[0].status if extra else 'no answer'}, want "
                            f"{sorted(plan.statuses)} ({' / '.join(plan.reasons)})")
        extra = extra[1:]
    for r in extra:
        problems.append(f"unexpected further answer {r.short()}")
    return problems


@pytest.fixture(scope="module")
def hostd(tmp_path_factory):
    h = Hostd(tmp_path_factory.mktemp("corpus"),
              {"corpus": {"app": "echo_app:application", "directory": str(APPS),
                          "bindings": ["*"], "start_mode": "always_running"}},
              hostd={"frontends": 1, "header_timeout": "1s", "keepalive_timeout": "2s"})
    h.start()
    h.wait_for(lambda: h.get("x")[0] == 200, what="pool up")
    yield h
    h.stop()


@pytest.mark.parametrize("plan", _params())
def test_corpus_case(hostd, plan):
    want = None if plan.invalid or plan.refuse_at is not None else len(plan.expect)
    out = _exchange(hostd.port, plan.data, plan.prefix, want)
    problems = verdict(plan, out)
    assert not problems, (
        f"{plan.id}: " + " | ".join(problems)
        + f"\n  sent{' (after the kept-alive prefix)' if plan.prefix else ''}: "
          f"{plan.data[:300]!r}{'...' if len(plan.data) > 300 else ''}"
        + f"\n  answers: {[r.short() for r in out.responses]}"
          f"{' closed' if out.closed else ''} {out.notes} leftover {out.leftover[:100]!r}")


# --- the explicit lists are complete and exact -----------------------------------------------
def _need_corpus():
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)


def test_corpus_is_read_completely():
    _need_corpus()
    assert [c.name for c in CASES if c.problem] == []
    assert sum(c.kind == "valid" for c in CASES) >= 40 and sum(c.kind == "invalid"
                                                                for c in CASES) >= 50


def test_every_case_with_gunicorn_settings_is_treated_explicitly():
    _need_corpus()
    treated = set(CFG_SKIP) | set(SERVED_UNDER_HOSTD) | set(REFUSED_ON_PURPOSE) | \
        set(SAME_UNDER_HOSTD)
    assert [c.name for c in CASES if c.cfg and c.name not in treated] == []
    lists = (CFG_SKIP, SERVED_UNDER_HOSTD, SAME_UNDER_HOSTD, REFUSED_ON_PURPOSE,
             REFUSED_NO_HOST, REFUSAL_STATUS, INCOMPLETE, XFAIL)
    unknown = [k for d in lists for k in d if k.split("#")[0].split(" ")[0] not in BY_NAME]
    assert unknown == []
    ids = {f"{p.case} {p.variant}" for p in PLANS}
    assert [k for k in XFAIL if " " in k and k not in ids] == []


def test_refused_no_host_is_exactly_the_hostless_http11_requests():
    _need_corpus()
    found = set()
    for c in CASES:
        if c.name in CFG_SKIP or c.name in INCOMPLETE:
            continue
        reqs = c.requests if c.kind == "valid" else (
            [_plain_expectation(c.data)] if c.name in SERVED_UNDER_HOSTD else [])
        for k, r in enumerate(reqs, 1):
            if tuple(r["version"]) == (1, 1) and not _has_host(r):
                found.add(c.name if k == 1 else f"{c.name}#{k}")
    assert found == set(REFUSED_NO_HOST)
