"""A sans-I/O reader of a TLS ClientHello: SNI and ALPN for the front end's routing.

The front end never terminates TLS (it holds no key): it peeks (MSG_PEEK) at the first
bytes of an accepted connection, hands them to `parse` and, once the whole ClientHello
has arrived, routes the untouched socket by `Hello.sni` (and `Hello.alpn`) to the pool's
worker, which does the handshake itself. Nothing here does I/O, logs, or keeps state:
`parse` is a pure function of the bytes peeked so far, called again after every peek
that brought more bytes, until it returns a `Hello` or raises `Refused`.

What is read (RFC 8446 4.1.2 and 5.1, RFC 6066 3, RFC 7301 3.1): TLS records of type
handshake(22), their payloads reassembled into one handshake message (a ClientHello may
be fragmented over several records, and be several KiB with post-quantum key shares),
which must be a client_hello(1) ending at a record boundary; from it the legacy_version,
the server_name (host_name entry), application_layer_protocol_negotiation and
supported_versions extensions. Every length of the message is checked, the other
extensions are skipped (their contents are the worker's TLS library's business).

Decisions are taken as early as the bytes allow, so a front end never waits for bytes
that cannot change the outcome: the first byte tells TLS from plain HTTP (`NOT_TLS`)
and from an SSLv2-format hello (`SSL2`); a record header or the handshake header that
announces more than `MAX_HELLO_BYTES` is `TOO_BIG` at once; a partial message whose
lengths are already inconsistent is `MALFORMED` without waiting for the rest.

The `alert_*` functions give the one record a front end may write before closing a
connection it will not route (no pool bound to the SNI, a refused hello).
"""
from __future__ import annotations

import dataclasses

__all__ = [
    "MAX_HELLO_BYTES", "Hello", "NeedMore", "Refused", "parse",
    "NOT_TLS", "SSL2", "SSL3", "TOO_BIG", "MALFORMED", "REASONS",
    "alert", "alert_unrecognized_name", "alert_handshake_failure",
    "alert_protocol_version", "alert_decode_error", "alert_internal_error",
]

#: Cap of the ClientHello as peeked, its record headers included (so also the size of
#: the front end's peek buffer). One record carries at most 2**14 payload bytes, so a
#: hello near the cap already spans two records.
MAX_HELLO_BYTES = 16384

#: Refused.reason values.
NOT_TLS = "not_tls"        # first byte is not handshake(22): plain HTTP, garbage, ...
SSL2 = "ssl2"              # an SSLv2-format hello (first byte has its high bit set)
SSL3 = "ssl3"              # a ClientHello of SSL 3.0 or older (legacy_version, supported_versions)
TOO_BIG = "too_big"        # the ClientHello would exceed MAX_HELLO_BYTES
MALFORMED = "malformed"    # anything else that is not a well-formed ClientHello
REASONS = frozenset((NOT_TLS, SSL2, SSL3, TOO_BIG, MALFORMED))

_HANDSHAKE = 22            # ContentType handshake
_CLIENT_HELLO = 1          # HandshakeType client_hello
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_PRE_SHARED_KEY = 41   # must be the last extension (RFC 8446 4.2.11)
_EXT_SUPPORTED_VERSIONS = 43
_HOST_NAME = 0             # NameType host_name
#: LDH and "_": not a valid host name, but clients send it (and bindings allow it)
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789-._"
_DIGITS = b"0123456789"


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """What the front end needs from a complete ClientHello.

    sni: the host_name of the server_name extension, lower-cased ASCII without a
    trailing dot (a valid DNS host name, never an IP literal); None when absent.
    alpn: the ALPN protocol names in the client's order (decoded as latin-1, so any
    byte string maps to one str); () when the extension is absent.
    legacy_version: ClientHello.legacy_version, e.g. 0x0303 (TLS 1.3 clients send
    0x0303 and put their versions in supported_versions).
    supported_versions: the supported_versions extension as sent, GREASE values
    included; () when absent.
    record_bytes: how many bytes of the peeked data the ClientHello occupies, record
    headers included (bytes after it, e.g. early data, belong to the worker too).
    """

    sni: str | None
    alpn: tuple[str, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    record_bytes: int


class NeedMore(Exception):
    """Not an error: the bytes so far are a valid prefix of a ClientHello; peek again
    once more bytes have arrived (the caller's timeout bounds the wait).

    at_least: once the handshake header has arrived, how many bytes from the start of
    the connection the hello takes at the least (the records announced so far, and
    one more record header when they do not hold the whole message): no verdict can
    be given before, except an earlier Refused. The front end sets SO_RCVLOWAT to it,
    so a hello dribbled a byte at a time wakes it once, not once a byte (a peek and a
    parse of up to 16 KiB each). 0 when not known yet (also the only argument).
    """

    def __init__(self, at_least: int = 0) -> None:
        super().__init__(at_least)
        self.at_least = at_least


class Refused(Exception):
    """The bytes are not (the start of) a ClientHello the front end can route.

    reason: one of NOT_TLS, SSL2, SSL3, TOO_BIG, MALFORMED (also the exception's
    only argument).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(data: bytes | bytearray | memoryview) -> Hello:
    """Read the ClientHello at the start of a connection.

    Takes the bytes peeked so far from the start of the connection (any length,
    including 0; bytes past the ClientHello are ignored). Returns a `Hello` once the
    whole ClientHello handshake message has arrived, reassembled from one or more
    handshake records. Raises `NeedMore` while the bytes are a valid prefix of one
    (0 bytes, a partial record header, a partial message; with its at_least once the
    handshake header is known), `Refused` (with its
    reason) as soon as they cannot be: NOT_TLS and SSL2 from the first byte alone,
    SSL3 from the hello's legacy_version or supported_versions (never from a record
    version, whose major 3 is all that is checked), TOO_BIG from a record header or
    the handshake header, MALFORMED otherwise (an underscore in the SNI is accepted:
    clients send such names).
    """
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = memoryview(mv.tobytes())   # an exotic view: not the hot path
    n = len(mv)
    if n == 0:
        raise NeedMore()
    b0 = mv[0]
    if b0 != _HANDSHAKE:
        raise Refused(SSL2 if b0 & 0x80 else NOT_TLS)
    # The record version is not checked beyond its major 3 (RFC 8446 5.1: "MUST be
    # ignored"; clients send 0x0300 or 0x0301 on their first record, OpenSSL checks no
    # more): an SSL 3.0 hello is told by the hello's own versions.
    if n < 2:
        raise NeedMore()
    if mv[1] != 3:
        raise Refused(MALFORMED)

    # The records: the payload ranges in mv (only a list when there are several).
    pos = 0             # offset of the next record header
    announced = 0       # payload bytes announced by the record headers read so far
    need = 0            # length of the handshake message (header included), 0: unknown
    first_start = first_stop = 0
    ranges = None
    while True:
        if n - pos < 5:
            # A partial header of a further record: what there is of it must fit.
            if n > pos:
                if mv[pos] != _HANDSHAKE or (n > pos + 1 and mv[pos + 1] != 3):
                    raise Refused(MALFORMED)
            break
        if pos:
            if mv[pos] != _HANDSHAKE or mv[pos + 1] != 3:
                raise Refused(MALFORMED)
        length = mv[pos + 3] << 8 | mv[pos + 4]
        if length == 0:
            raise Refused(MALFORMED)
        start = pos + 5
        pos = start + length
        if pos > MAX_HELLO_BYTES:
            raise Refused(TOO_BIG)
        stop = pos if pos < n else n
        if ranges is None and not announced:
            first_start, first_stop = start, stop
        else:
            if ranges is None:
                ranges = [(first_start, first_stop)]
            ranges.append((start, stop))
        got = announced + stop - start   # payload bytes at hand
        announced += length
        if not need:
            if got and (mv[first_start] if ranges is None else _payload_byte(mv, ranges, 0)) != _CLIENT_HELLO:
                raise Refused(MALFORMED)
            if got >= 4:
                if ranges is None:
                    need = 4 + (mv[first_start + 1] << 16 | mv[first_start + 2] << 8
                                | mv[first_start + 3])
                else:
                    need = 4 + (_payload_byte(mv, ranges, 1) << 16
                                | _payload_byte(mv, ranges, 2) << 8
                                | _payload_byte(mv, ranges, 3))
        if need:
            if announced > need:
                # The hello must end at a record boundary (RFC 8446 5.1), and a client
                # sends no other handshake message before the server's answer.
                raise Refused(MALFORMED)
            if announced < need and pos + 5 + need - announced > MAX_HELLO_BYTES:
                raise Refused(TOO_BIG)
            if announced == need:
                break
        if pos > n:
            break   # this record is still arriving

    if not need:
        raise NeedMore()
    if ranges is None:
        msg = mv[first_start + 4:first_stop]
    else:
        msg = memoryview(b"".join([mv[a:b] for a, b in ranges]))[4:]
    try:
        hello = _body(msg, need - 4, pos)
    except NeedMore:
        raise NeedMore(pos if announced >= need else pos + 5 + need - announced) from None
    if pos > n or announced < need:
        raise NeedMore()   # not reached: _body runs out of bytes first
    return hello


def _payload_byte(mv: memoryview, ranges: list, i: int) -> int:
    """Takes the record payload ranges and an index into their concatenation (which
    must be at hand); returns that byte. Raises nothing."""
    for a, b in ranges:
        if i < b - a:
            return mv[a + i]
        i -= b - a
    raise AssertionError("payload byte not at hand")


def _take(p: int, k: int, end: int, avail: int) -> int:
    """Takes an offset into the message body, a length to read there, the body's
    announced length and how much of it is at hand; returns p + k. Raises Refused
    (MALFORMED) when that runs past the announced body, NeedMore when past the bytes
    at hand."""
    q = p + k
    if q > end:
        raise Refused(MALFORMED)
    if q > avail:
        raise NeedMore()
    return q


def _body(b: memoryview, end: int, record_bytes: int) -> Hello:
    """Takes the ClientHello body at hand (possibly a prefix), its announced length
    and the bytes the records of the hello occupy; returns the Hello. Raises Refused
    on anything inconsistent within the bytes at hand, NeedMore when they run out."""
    avail = len(b)
    _take(0, 2, end, avail)
    legacy_version = b[0] << 8 | b[1]
    if legacy_version < 0x0301:
        # RFC 8446 D.5: a legacy_version of 0x0300 or less is refused, whatever the
        # supported_versions extension says.
        raise Refused(SSL3)
    p = _take(2, 33, end, avail)                    # random, legacy_session_id length
    k = b[34]
    if k > 32:
        raise Refused(MALFORMED)
    p = _take(p, k, end, avail)
    q = _take(p, 2, end, avail)                     # cipher_suites
    k = b[p] << 8 | b[p + 1]
    if k < 2 or k & 1:
        raise Refused(MALFORMED)
    p = _take(q, k, end, avail)
    q = _take(p, 1, end, avail)                     # legacy_compression_methods
    k = b[p]
    if not k:
        raise Refused(MALFORMED)
    p = _take(q, k, end, avail)
    sni = None
    alpn = ()
    versions = ()
    if p < end:                                     # extensions (optional before 1.3)
        q = _take(p, 2, end, avail)
        if q + (b[p] << 8 | b[p + 1]) != end:
            raise Refused(MALFORMED)
        p = q
        seen = set()
        while p < end:
            if _EXT_PRE_SHARED_KEY in seen:
                raise Refused(MALFORMED)
            q = _take(p, 4, end, avail)
            ext = b[p] << 8 | b[p + 1]
            r = _take(q, b[p + 2] << 8 | b[p + 3], end, avail)
            if ext in seen:
                raise Refused(MALFORMED)
            seen.add(ext)
            if ext == _EXT_SERVER_NAME:
                sni = _server_name(b, q, r)
            elif ext == _EXT_ALPN:
                alpn = _alpn(b, q, r)
            elif ext == _EXT_SUPPORTED_VERSIONS:
                versions = _versions(b, q, r)
            p = r
    if versions:
        for v in versions:
            if v >> 8 == 3 and v & 0xFF:
                break
        else:
            raise Refused(SSL3)   # nothing newer than SSL 3.0 (GREASE aside)
    return Hello(sni, alpn, legacy_version, versions, record_bytes)


def _server_name(b: memoryview, p: int, r: int) -> str:
    """Takes the body and the bounds of a server_name extension's data; returns its
    host_name, normalised. Raises Refused (MALFORMED) on a bad list, a missing or
    repeated host_name, or a name that is not a DNS host name."""
    if r - p < 2 or p + 2 + (b[p] << 8 | b[p + 1]) != r or r - p == 2:
        raise Refused(MALFORMED)
    p += 2
    host = None
    while p < r:
        if r - p < 3:
            raise Refused(MALFORMED)
        q = p + 3 + (b[p + 1] << 8 | b[p + 2])
        if q > r or q == p + 3:
            raise Refused(MALFORMED)
        if b[p] == _HOST_NAME:
            if host is not None:
                raise Refused(MALFORMED)   # one name per type (RFC 6066 3)
            host = _host_name(b[p + 3:q])
        p = q
    if host is None:
        raise Refused(MALFORMED)
    return host


def _host_name(raw: memoryview) -> str:
    """Takes the bytes of a host_name; returns it lower-cased, without a trailing
    dot. Raises Refused (MALFORMED) unless it is labels of 1-63 letters, digits, '-'
    and '_' (no leading or trailing hyphen; '_' is not DNS host name syntax but
    clients send it, e.g. for Windows host names, and router.Binding accepts it),
    253 characters at most, with a top label that is not all digits (which rules out
    IPv4 literals; IPv6 ones have ':')."""
    name = bytes(raw).lower()
    if name.endswith(b"."):
        name = name[:-1]
    if not name or len(name) > 253 or name.translate(None, _HOST_CHARS):
        raise Refused(MALFORMED)
    for label in name.split(b"."):
        if not label or len(label) > 63 or label[0] == 45 or label[-1] == 45:
            raise Refused(MALFORMED)
    if not label.translate(None, _DIGITS):
        raise Refused(MALFORMED)
    return name.decode("ascii")


def _alpn(b: memoryview, p: int, r: int) -> tuple[str, ...]:
    """Takes the body and the bounds of an ALPN extension's data; returns the protocol
    names. Raises Refused (MALFORMED) on an empty list or name, or bad lengths."""
    if r - p < 4 or p + 2 + (b[p] << 8 | b[p + 1]) != r:
        raise Refused(MALFORMED)
    p += 2
    names = []
    while p < r:
        q = p + 1 + b[p]
        if q > r or q == p + 1:
            raise Refused(MALFORMED)
        names.append(str(b[p + 1:q], "latin-1"))
        p = q
    return tuple(names)


def _versions(b: memoryview, p: int, r: int) -> tuple[int, ...]:
    """Takes the body and the bounds of a supported_versions extension's data;
    returns the versions. Raises Refused (MALFORMED) on bad lengths."""
    if r - p < 3 or p + 1 + b[p] != r or b[p] & 1:
        raise Refused(MALFORMED)
    return tuple([b[i] << 8 | b[i + 1] for i in range(p + 1, r, 2)])


def alert(description: int) -> bytes:
    """Takes an AlertDescription (0-255); returns the 7-byte plaintext record of that
    fatal alert (record version 0x0303). Raises ValueError outside 0-255."""
    return bytes((21, 3, 3, 0, 2, 2, description))


_UNRECOGNIZED_NAME = alert(112)
_HANDSHAKE_FAILURE = alert(40)
_PROTOCOL_VERSION = alert(70)
_DECODE_ERROR = alert(50)
_INTERNAL_ERROR = alert(80)


def alert_unrecognized_name() -> bytes:
    """Takes nothing; returns the fatal unrecognized_name(112) alert record, for a
    hello whose SNI no pool is bound to (RFC 6066 3). Raises nothing."""
    return _UNRECOGNIZED_NAME


def alert_handshake_failure() -> bytes:
    """Takes nothing; returns the fatal handshake_failure(40) alert record. Raises
    nothing."""
    return _HANDSHAKE_FAILURE


def alert_protocol_version() -> bytes:
    """Takes nothing; returns the fatal protocol_version(70) alert record, for a
    Refused(SSL3) hello. Raises nothing."""
    return _PROTOCOL_VERSION


def alert_decode_error() -> bytes:
    """Takes nothing; returns the fatal decode_error(50) alert record, for a
    Refused(MALFORMED) hello that began like TLS. Raises nothing."""
    return _DECODE_ERROR


def alert_internal_error() -> bytes:
    """Takes nothing; returns the fatal internal_error(80) alert record, for a hello
    routed to a pool that cannot take it now (stopped, failed, its queue or its
    connection limit full: what is a 503 in plain HTTP). Raises nothing."""
    return _INTERNAL_ERROR
