"""hostd/tlshello.py: real ClientHellos (Python's ssl module, the openssl CLI), every
prefix, re-fragmented and padded hellos, the size cap, the refusals, the alerts, and a
bounded fuzz loop. No network beyond a loopback listener, no root, no timing."""
from __future__ import annotations

import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading

import pytest

from hostd import tlshello
from hostd.tlshello import (MALFORMED, MAX_HELLO_BYTES, NOT_TLS, SSL2, SSL3, TOO_BIG,
                            Hello, NeedMore, Refused, parse)

ALPN = ["h2", "http/1.1"]


def python_hello(server_hostname: str | None = "shop.example.com", alpn=ALPN,
                 maximum_version: ssl.TLSVersion | None = None) -> bytes:
    """The first flight of a client made by Python's ssl module: its ClientHello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None or server_hostname[0].isdigit():
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


HELLO = python_hello()


def refused(data) -> str:
    with pytest.raises(Refused) as info:
        parse(data)
    assert info.value.reason in tlshello.REASONS
    assert info.value.args == (info.value.reason,)
    return info.value.reason


# -- building hellos by hand ---------------------------------------------------------

def handshake_message(hello: bytes) -> bytes:
    """The handshake message of a hello, its records' payloads joined."""
    out, pos = b"", 0
    while pos < len(hello):
        length = struct.unpack_from(">H", hello, pos + 3)[0]
        out += hello[pos + 5:pos + 5 + length]
        pos += 5 + length
    return out


def records(message: bytes, size: int = 16384, version: int = 0x0301,
            content_type: int = 22) -> bytes:
    """A handshake message cut into records of at most `size` payload bytes."""
    return b"".join(struct.pack(">BHH", content_type, version, len(chunk)) + chunk
                    for chunk in (message[i:i + size] for i in range(0, len(message), size)))


def split_message(message: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A ClientHello message -> (its body up to the extensions, [(type, data)])."""
    body = message[4:]
    p = 2 + 32
    p += 1 + body[p]
    p += 2 + struct.unpack_from(">H", body, p)[0]
    p += 1 + body[p]
    head, p = body[:p], p + 2
    extensions = []
    while p < len(body):
        ext, length = struct.unpack_from(">HH", body, p)
        extensions.append((ext, body[p + 4:p + 4 + length]))
        p += 4 + length
    return head, extensions


def join_message(head: bytes, extensions: list[tuple[int, bytes]] | None,
                 handshake_type: int = 1) -> bytes:
    body = head
    if extensions is not None:
        blob = b"".join(struct.pack(">HH", e, len(d)) + d for e, d in extensions)
        body += struct.pack(">H", len(blob)) + blob
    return bytes([handshake_type]) + len(body).to_bytes(3, "big") + body


def vec8(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def vec16(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def sni_data(*entries: tuple[int, bytes]) -> bytes:
    return vec16(b"".join(bytes([t]) + vec16(name) for t, name in entries))


def alpn_data(*names: bytes) -> bytes:
    return vec16(b"".join(vec8(n) for n in names))


def versions_data(*versions: int) -> bytes:
    return vec8(b"".join(struct.pack(">H", v) for v in versions))


HEAD = (b"\x03\x03" + bytes(range(32)) + vec8(bytes(32))
        + vec16(b"\x13\x01\x13\x02\xc0\x2f") + vec8(b"\x00"))


def hello(extensions=None, head: bytes = HEAD, legacy_version: int | None = None,
          record_version: int = 0x0301, **kw) -> bytes:
    """A synthetic hello: SNI shop.example.com, ALPN h2 and TLS 1.3 by default."""
    if extensions is None:
        extensions = [(0, sni_data((0, b"shop.example.com"))),
                      (16, alpn_data(b"h2", b"http/1.1")),
                      (43, versions_data(0x0304, 0x0303))]
    if legacy_version is not None:
        head = struct.pack(">H", legacy_version) + head[2:]
    return records(join_message(head, extensions, **kw), version=record_version)


def with_sni(name: bytes) -> bytes:
    return hello([(0, sni_data((0, name)))])


# -- real hellos -----------------------------------------------------------------------

def test_python_ssl_hello():
    result = parse(HELLO)
    assert result == Hello(sni="shop.example.com", alpn=("h2", "http/1.1"),
                           legacy_version=0x0303, supported_versions=result.supported_versions,
                           record_bytes=len(HELLO))
    if ssl.HAS_TLSv1_3:
        assert 0x0304 in result.supported_versions
    assert parse(bytearray(HELLO)) == result
    assert parse(memoryview(HELLO)) == result


def test_python_ssl_hello_without_sni():
    result = parse(python_hello(None))
    assert result.sni is None
    assert result.alpn == ("h2", "http/1.1")


def test_python_ssl_sends_no_sni_for_an_ip_address():
    assert parse(python_hello("127.0.0.1")).sni is None


def test_python_ssl_tls12_only_and_no_alpn():
    result = parse(python_hello(alpn=None, maximum_version=ssl.TLSVersion.TLSv1_2))
    assert result.sni == "shop.example.com"
    assert result.alpn == ()
    assert result.supported_versions == ()
    assert result.legacy_version == 0x0303


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")
def test_openssl_s_client_hello():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    received = bytearray()

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            while True:
                try:
                    parse(received)
                except NeedMore:
                    pass
                except Refused:
                    return
                else:
                    return
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                received.extend(chunk)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", "x.test", "-alpn", "h2,http/1.1"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=20)
        thread.join(10)
    finally:
        listener.close()
    result = parse(received)
    assert result.sni == "x.test"
    assert result.alpn == ("h2", "http/1.1")
    assert result.record_bytes == len(received)


# -- prefixes, fragments, sizes ----------------------------------------------------------

def test_every_prefix_needs_more_then_the_same_hello():
    whole = parse(HELLO)
    for i in range(len(HELLO)):
        with pytest.raises(NeedMore):
            parse(HELLO[:i])
    assert parse(HELLO) == whole


@pytest.mark.parametrize("size", [None, 1, 3, 97, 300])
def test_need_more_says_how_long_the_hello_is_at_least(size):
    """at_least: 0 until the handshake header is in; then always past what is at hand
    and never past the hello's length, never shrinking, and the whole length once the
    last record's header has arrived."""
    message = handshake_message(HELLO)
    size = size or len(message)               # None: one record, as sent
    data = records(message, size)
    last_header = len(data) - 5 - (len(message) % size or size)
    k = -(-4 // size)                         # records holding the handshake header
    header_known = (k - 1) * (5 + size) + 5 + 4 - (k - 1) * size
    known = []
    for i in range(len(data)):
        with pytest.raises(NeedMore) as info:
            parse(data[:i])
        at_least = info.value.at_least
        assert info.value.args == (at_least,)
        if i < header_known:
            assert at_least == 0, (i, at_least)
            continue
        assert i < at_least <= len(data), (i, at_least)
        if i >= last_header + 5:
            assert at_least == len(data), (i, at_least)
        known.append(at_least)
    assert known and known == sorted(known)   # a waiting front end only raises its mark


def test_bytes_after_the_hello_are_not_read():
    ccs = b"\x14\x03\x03\x00\x01\x01"
    assert parse(HELLO + ccs + b"\x17\x03\x03\x40\x00garbage") == parse(HELLO)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100, 511])
def test_refragmented_hello(size):
    message = handshake_message(HELLO)
    data = records(message, size)
    assert data != HELLO
    result = parse(data)
    expected = parse(HELLO)
    assert (result.sni, result.alpn, result.supported_versions) == \
        (expected.sni, expected.alpn, expected.supported_versions)
    assert result.record_bytes == len(data) == len(message) + 5 * -(-len(message) // size)
    if size == 5:
        for i in range(len(data)):
            with pytest.raises(NeedMore):
                parse(data[:i])


def test_padded_hello_of_3_kib():
    head, extensions = split_message(handshake_message(HELLO))
    extensions = [(e, d) for e, d in extensions if e != 21] + [(21, bytes(3000))]
    big = records(join_message(head, extensions))
    assert len(big) > 3000
    result = parse(big)
    assert (result.sni, result.alpn) == ("shop.example.com", ("h2", "http/1.1"))
    assert parse(records(join_message(head, extensions), 1000)).record_bytes == len(big) + 15


def test_big_key_share_over_two_records():
    # an ML-KEM-1024-sized key share (1568 bytes) and an X25519 one
    shares = vec16(struct.pack(">H", 0x11ec) + vec16(bytes(1568))
                   + struct.pack(">H", 0x001d) + vec16(bytes(32)))
    data = hello([(0, sni_data((0, b"pq.example"))), (51, shares),
                  (43, versions_data(0x0304))])
    assert parse(data).sni == "pq.example"
    split = records(handshake_message(data), 1200)
    assert parse(split).sni == "pq.example"


def test_cap_exactly():
    # one record whose header + payload is exactly MAX_HELLO_BYTES
    base = handshake_message(hello())
    pad = MAX_HELLO_BYTES - 5 - len(base) - 4
    head, extensions = split_message(base)
    fits = records(join_message(head, extensions + [(21, bytes(pad))]))
    assert len(fits) == MAX_HELLO_BYTES
    assert parse(fits).record_bytes == MAX_HELLO_BYTES
    over = records(join_message(head, extensions + [(21, bytes(pad + 1))]))
    assert refused(over[:5]) == TOO_BIG          # from the record header alone


def test_too_big_from_the_handshake_header():
    head, extensions = split_message(handshake_message(HELLO))
    message = join_message(head, extensions + [(21, bytes(20000))])
    data = records(message, 1000)
    with pytest.raises(NeedMore):
        parse(data[:8])
    assert refused(data[:9]) == TOO_BIG          # record header + handshake header
    assert refused(data) == TOO_BIG
    # the announced total just fits with one record, not with the headers of two
    pad = MAX_HELLO_BYTES - 5 - len(join_message(head, extensions)) - 4
    message = join_message(head, extensions + [(21, bytes(pad))])
    assert len(records(message)) == MAX_HELLO_BYTES
    assert refused(records(message, 100)[:9]) == TOO_BIG


def test_handshake_header_split_over_records():
    message = handshake_message(HELLO)
    data = records(message[:1]) + records(message[1:3]) + records(message[3:])
    assert parse(data) == Hello(*[getattr(parse(HELLO), f) for f in
                                  ("sni", "alpn", "legacy_version", "supported_versions")],
                                record_bytes=len(data))


# -- refusals --------------------------------------------------------------------------

def test_plain_http_after_one_byte():
    assert refused(b"G") == NOT_TLS
    assert refused(b"GET / HTTP/1.1\r\n") == NOT_TLS
    assert refused(b"\x00") == NOT_TLS


def test_first_record_of_another_type():
    assert refused(b"\x14") == NOT_TLS           # change_cipher_spec
    assert refused(b"\x14\x03\x03\x00\x01\x01") == NOT_TLS
    assert refused(b"\x15\x03\x01\x00\x02\x02\x28") == NOT_TLS


def test_sslv2_hello():
    assert refused(b"\x80") == SSL2
    assert refused(b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10") == SSL2


def test_ssl3():
    # a real SSL 3.0 hello: legacy_version 0x0300 (whatever its record says)
    assert refused(hello(extensions=None, legacy_version=0x0300,
                         record_version=0x0300)) == SSL3
    assert refused(hello(extensions=[(0, sni_data((0, b"a.test")))],
                         legacy_version=0x0300)) == SSL3
    assert refused(hello(extensions=None, legacy_version=0x0300)[:11]) == SSL3
    assert refused(hello([(43, versions_data(0x0300))])) == SSL3
    assert refused(hello([(43, versions_data(0x0a0a, 0x0300))])) == SSL3  # GREASE
    assert parse(hello([(43, versions_data(0x0a0a, 0x0304))])).supported_versions == \
        (0x0a0a, 0x0304)


def test_the_record_version_is_ignored_beyond_its_major():
    """RFC 8446 5.1: legacy_record_version is ignored; clients send 0x0300 on their
    first record (OpenSSL did for TLS 1.0 compatibility), and OpenSSL checks only its
    major 3. A TLS 1.2/1.3 hello in a 0x0300 record is routed."""
    assert parse(hello(record_version=0x0300)).sni == "shop.example.com"
    assert parse(hello(record_version=0x0303)).legacy_version == 0x0303
    with pytest.raises(NeedMore):
        parse(b"\x16\x03\x00")                 # no verdict from the record version
    assert refused(b"\x16\x02") == MALFORMED    # not major 3: not TLS's record layer
    assert refused(hello(record_version=0x0203)) == MALFORMED
    message = handshake_message(HELLO)
    # the records of one hello may differ in their minor version, not their major
    assert parse(records(message[:100], version=0x0300)
                 + records(message[100:], version=0x0303)).sni == "shop.example.com"
    assert refused(records(message[:100]) + records(message[100:], version=0x0403)) == \
        MALFORMED
    assert refused(records(message[:100]) + b"\x16\x04") == MALFORMED  # from a prefix


def test_tls10_hello_without_extensions():
    result = parse(records(join_message(struct.pack(">H", 0x0301) + HEAD[2:], None)))
    assert result == Hello(None, (), 0x0301, (), len(HEAD) + 9)


def test_not_a_client_hello():
    assert refused(hello(handshake_type=2)) == MALFORMED
    assert refused(hello(handshake_type=2)[:6]) == MALFORMED   # from its first byte
    assert refused(b"\x16\x04\x01") == MALFORMED


def test_extension_running_past_the_message():
    head, extensions = split_message(handshake_message(hello()))
    message = bytearray(join_message(head, extensions))
    # the last extension (supported_versions) says it is 1 byte longer than it is
    p = len(message) - len(extensions[-1][1]) - 2
    struct.pack_into(">H", message, p, len(extensions[-1][1]) + 1)
    assert refused(records(bytes(message))) == MALFORMED
    # and the extensions block longer than the message: known from a prefix already
    message = bytearray(join_message(head, extensions))
    struct.pack_into(">H", message, 4 + len(head), 0x7000)
    assert refused(records(bytes(message))[:9 + len(head) + 2]) == MALFORMED


def test_inconsistent_lengths():
    assert refused(hello(head=HEAD[:34] + b"\x21" + bytes(33) + HEAD[67:])) == MALFORMED
    assert refused(hello(head=HEAD[:67] + b"\x00\x03\x13\x01\x13" + HEAD[73:])) == MALFORMED
    assert refused(hello(head=HEAD[:-2] + b"\x00")) == MALFORMED  # no compression
    data = bytearray(hello())
    data[6:9] = (len(data) - 9 + 1).to_bytes(3, "big")   # handshake 1 byte too long
    assert refused(bytes(data)) == MALFORMED
    data[6:9] = (len(data) - 9 - 1).to_bytes(3, "big")   # record 1 byte too long
    assert refused(bytes(data)) == MALFORMED


def test_truncated_vector_inside_a_complete_message():
    # the handshake header says the message ends inside the cipher suites
    message = join_message(HEAD, None)
    body = message[4:4 + 40]
    assert refused(records(b"\x01" + len(body).to_bytes(3, "big") + body)) == MALFORMED


def test_records_interleaving_other_content():
    message = handshake_message(HELLO)
    data = records(message[:100]) + b"\x17\x03\x01\x00\x01\x00" + records(message[100:])
    assert refused(data) == MALFORMED
    assert refused(data[:106]) == MALFORMED      # the other record's first byte is enough
    # the right bytes, but the middle part in an application_data record
    data = (records(message[:100]) + records(message[100:200], content_type=23)
            + records(message[200:]))
    assert refused(data) == MALFORMED


def test_zero_length_record():
    assert refused(b"\x16\x03\x01\x00\x00") == MALFORMED
    message = handshake_message(HELLO)
    assert refused(records(message[:100]) + b"\x16\x03\x01\x00\x00") == MALFORMED


def test_trailing_bytes_in_the_hellos_record():
    message = handshake_message(HELLO) + b"\x0b\x00\x00\x00"
    assert refused(records(message)) == MALFORMED
    assert refused(records(message)[:9]) == MALFORMED   # known from the headers


def test_duplicate_extension():
    assert refused(hello([(16, alpn_data(b"h2")), (16, alpn_data(b"h2"))])) == MALFORMED
    assert refused(hello([(21, b""), (21, b"")])) == MALFORMED


def test_pre_shared_key_must_be_last():
    assert parse(hello([(0, sni_data((0, b"a.test"))), (41, b"\x00" * 10)])).sni == "a.test"
    assert refused(hello([(41, b"\x00" * 10), (0, sni_data((0, b"a.test")))])) == MALFORMED


def test_server_name_extension():
    assert refused(hello([(0, sni_data((1, b"whatever")))])) == MALFORMED
    assert parse(hello([(0, sni_data((1, b"whatever"), (0, b"a.test")))])).sni == "a.test"
    assert refused(hello([(0, sni_data((0, b"a.test"), (0, b"b.test")))])) == MALFORMED
    assert refused(hello([(0, b"")])) == MALFORMED
    assert refused(hello([(0, vec16(b""))])) == MALFORMED
    assert refused(hello([(0, sni_data((0, b"a.test")) + b"\x00")])) == MALFORMED
    assert refused(hello([(0, vec16(b"\x00\x00\x05a.te"))])) == MALFORMED


@pytest.mark.parametrize("name", [
    b"bad_host!", b"1.2.3.4", b"1.2.3.4.", b"::1", b"[::1]",
    b"", b".", b"a..b", b".a.test", b"-a.test", b"a-.test", b"a.test..",
    b"\xc3\xa9.test", b"a b.test", b"a\x00.test", b"a" * 64 + b".test",
    (b"a" * 63 + b".") * 4,  # 256
])
def test_invalid_host_names(name):
    assert refused(with_sni(name)) == MALFORMED


@pytest.mark.parametrize("name, expected", [
    (b"Shop.Example.COM.", "shop.example.com"),
    (b"localhost", "localhost"),
    (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
    (b"1.2.3.example", "1.2.3.example"),
    (b"a-b.c0", "a-b.c0"),
    # '_' is not host name syntax, but clients send it (and bindings take it)
    (b"bad_host.example", "bad_host.example"),
    (b"_dmarc.Example.com", "_dmarc.example.com"),
    (b"my_pc", "my_pc"),
    (b"a" * 63 + b".test", "a" * 63 + ".test"),
    ((b"a" * 63 + b".") * 3 + b"a" * 61, ("a" * 63 + ".") * 3 + "a" * 61),  # 253
    ((b"a" * 63 + b".") * 3 + b"a" * 61 + b".", ("a" * 63 + ".") * 3 + "a" * 61),
])
def test_valid_host_names(name, expected):
    assert parse(with_sni(name)).sni == expected


def test_too_long_host_name():
    assert refused(with_sni((b"a" * 63 + b".") * 3 + b"a" * 62)) == MALFORMED  # 254


def test_alpn_extension():
    assert parse(hello([(16, alpn_data(b"http/1.1", b"h2", b"\x0a\x0a"))])).alpn == \
        ("http/1.1", "h2", "\n\n")
    assert refused(hello([(16, vec16(b""))])) == MALFORMED
    assert refused(hello([(16, alpn_data(b"h2", b""))])) == MALFORMED
    assert refused(hello([(16, vec16(b"\x03h2"))])) == MALFORMED
    assert refused(hello([(16, alpn_data(b"h2") + b"\x00")])) == MALFORMED


def test_supported_versions_extension():
    assert refused(hello([(43, b"")])) == MALFORMED
    assert refused(hello([(43, b"\x00")])) == MALFORMED
    assert refused(hello([(43, b"\x03\x03\x04\x03")])) == MALFORMED
    assert refused(hello([(43, b"\x04\x03\x04")])) == MALFORMED


def test_malformed_prefix_refused_before_the_end():
    # session id length 33, seen long before the message is complete
    data = hello(head=HEAD[:34] + b"\x21" + bytes(33) + HEAD[67:])
    assert refused(data[:9 + 35]) == MALFORMED


# -- alerts ----------------------------------------------------------------------------

def test_alerts():
    assert tlshello.alert_unrecognized_name() == b"\x15\x03\x03\x00\x02\x02\x70"
    assert tlshello.alert_handshake_failure() == b"\x15\x03\x03\x00\x02\x02\x28"
    assert tlshello.alert_protocol_version() == b"\x15\x03\x03\x00\x02\x02\x46"
    assert tlshello.alert_decode_error() == b"\x15\x03\x03\x00\x02\x02\x32"
    assert tlshello.alert_internal_error() == b"\x15\x03\x03\x00\x02\x02\x50"
    assert tlshello.alert(0) == b"\x15\x03\x03\x00\x02\x02\x00"
    # a client's ssl module reads it as that alert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="shop.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    incoming.write(tlshello.alert_unrecognized_name())
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        tls.do_handshake()


# -- fuzz ------------------------------------------------------------------------------

def test_fuzz_only_hello_needmore_or_refused():
    rng = random.Random(8446)
    seeds = [HELLO, records(handshake_message(HELLO), 97), hello(), python_hello(None)]
    outcomes = {Hello: 0, NeedMore: 0, Refused: 0}
    for _ in range(2000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(5)
            i = rng.randrange(len(data) + 1)
            if op == 0 and i < len(data):
                data[i] = rng.randrange(256)
            elif op == 1 and i < len(data):
                data[i] ^= 1 << rng.randrange(8)
            elif op == 2:
                del data[i:i + rng.randint(1, 8)]
            elif op == 3:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                data = data[:i]
        try:
            result = parse(bytes(data))
        except NeedMore:
            outcomes[NeedMore] += 1
        except Refused as e:
            assert e.reason in tlshello.REASONS
            outcomes[Refused] += 1
        else:
            assert isinstance(result, Hello)
            assert result.record_bytes <= len(data)
            outcomes[Hello] += 1
    assert all(outcomes.values()), outcomes   # every outcome was exercised
