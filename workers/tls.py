"""TLS in a worker: the pool's server context, and a TLS session over a client socket
with the interface the worker's connection code uses (recv, send, sendmsg, close).

The front end peeked at the ClientHello and handed over the socket with nothing
consumed (hostd/frontend.py), so the handshake happens here, in the worker's epoll loop:
`TLSSocket.handshake()` is called each time the socket is readable and never blocks on
reading. The session is an ssl.SSLObject over two MemoryBIOs, so every byte on the wire
goes through this module's own non-blocking recv/send on the raw socket.

Who holds what: the pool's certificate and private key are loaded by `make_context`,
called in the worker (or in its pool's preload zygote) while it is still root and before
it is confined (hostd/zygote.py). The files it reads are the supervisor's snapshot copies
(hostd/tlsconf.py); no other process of hostd ever reads them.

Semantics the worker relies on (workers/h1read.py, workers/h1write.py):
- recv(n) returns the plaintext that whole TLS records brought (possibly more than n, at
  most what RECV_RAW bytes of ciphertext decrypt to, plus what was already buffered),
  b"" at the peer's close_notify or TCP EOF, and raises BlockingIOError when no whole
  record is there yet. After it returns, no decrypted plaintext is left buffered inside
  the session, so epoll's readiness of the raw socket stays the truth.
- send(data) / sendmsg(buffers) encrypt all of it and write it all, waiting with poll()
  while the socket is full (as the plain sends do), up to the worker's send_timeout
  between progress; they return the plaintext length and never raise BlockingIOError.
"""
from __future__ import annotations

import os
import select
import socket
import ssl
import time

from .wsgi import ClientDisconnected

#: ciphertext read from the socket per recv
RECV_RAW = 65536
#: plaintext encrypted per step of a large send (bounds the memory a send holds)
SEND_STEP = 262144

_WantRead = ssl.SSLWantReadError
_ZeroReturn = ssl.SSLZeroReturnError
_POLLOUT = select.POLLOUT

#: Scoreboard.TLS_FIELDS indexes (hostd/protocol.py)
HANDSHAKES, TLS1_2, TLS1_3, F_TIMEOUT, F_CLOSED, F_VERSION, F_CERTIFICATE, F_PROTOCOL, \
    MISDIRECTED = range(9)
NFIELDS = 9

#: OpenSSL reasons (SSLError.reason) that say "no protocol version in common"
_VERSION_REASONS = frozenset({
    "UNSUPPORTED_PROTOCOL", "WRONG_VERSION_NUMBER", "TLSV1_ALERT_PROTOCOL_VERSION",
    "VERSION_TOO_LOW", "UNKNOWN_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"})


class TLSLoadError(Exception):
    """A certificate/key pair of the pool did not load: the message names the file and
    gives OpenSSL's reason."""


def _no_passphrase():
    # asked only for an encrypted key (else OpenSSL would prompt on the terminal)
    raise ValueError("the key is encrypted; hostd needs it without a passphrase")


def _context(cert: str, key: str, min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    # client-initiated renegotiation (TLS 1.2) costs the server a handshake per request
    # of an attacker's; compression is CRIME
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    for path in (cert, key):
        try:
            os.stat(path)
        except OSError as exc:
            raise TLSLoadError(f"{path}: {exc.strerror}") from None
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except OSError as exc:
        if not isinstance(exc, ssl.SSLError):
            raise TLSLoadError(f"certificate {cert}, key {key}: {exc.strerror or exc}") from None
        reason = exc.reason or str(exc)
        what = ("the key does not match the certificate" if reason == "KEY_VALUES_MISMATCH"
                else f"OpenSSL: {reason}")
        raise TLSLoadError(f"certificate {cert}, key {key}: {what}") from None
    except ValueError as exc:       # (a key with a passphrase: none can be given)
        raise TLSLoadError(f"certificate {cert}, key {key}: {exc}") from None
    return ctx


def _matches(name: str, pattern: str) -> bool:
    """RFC 6125 host name matching: exact (case-insensitive), or a leftmost "*" label
    standing for exactly one label."""
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return name == pattern


def make_context(spec: dict) -> ssl.SSLContext:
    """Takes the worker spec's "tls" dict ({"pairs": [[cert, key], ...], "names":
    [[name, ...] per pair], "min_version": "1.2" | "1.3"}). Returns the server context:
    the first pair's, with an SNI callback choosing another pair's context when the
    client's server name is one of that pair's names (and not the first's). ALPN offers
    http/1.1 only. Raises TLSLoadError naming the file and OpenSSL's reason."""
    pairs = spec.get("pairs") or []
    if not pairs:
        raise TLSLoadError("the pool's [tls] table has no certificate")
    min_version = spec.get("min_version") or "1.2"
    contexts = [_context(c, k, min_version) for c, k in pairs]
    first = contexts[0]
    if len(contexts) > 1:
        names = [[n.lower() for n in ns] for ns in (spec.get("names") or [[]] * len(pairs))]
        chosen: dict[str, ssl.SSLContext] = {}

        def pick(name: str) -> ssl.SSLContext:
            ctx = chosen.get(name)
            if ctx is None:
                ctx = first
                for i, patterns in enumerate(names):
                    if any(_matches(name, p) for p in patterns):
                        ctx = contexts[i]
                        break
                if len(chosen) < 4096:
                    chosen[name] = ctx
            return ctx

        def on_sni(obj, server_name, _ctx):
            if server_name:
                ctx = pick(server_name.lower())
                if ctx is not first:
                    obj.context = ctx
            return None

        first.sni_callback = on_sni
    return first


def failure_field(exc: BaseException) -> int:
    """Which TLS_FIELDS failure a handshake's exception counts as."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _VERSION_REASONS:
            return F_VERSION
        if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason):
            return F_CERTIFICATE
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return F_CLOSED
        return F_PROTOCOL
    return F_CLOSED


class TLSSocket:
    """A TLS server session over `raw` (a non-blocking TCP socket; this object owns it
    and closes it). See the module docstring for what recv/send promise."""

    __slots__ = ("raw", "obj", "ssl", "inc", "out", "fd", "send_timeout", "done", "eof")

    def __init__(self, raw, ctx: ssl.SSLContext, send_timeout: float):
        self.raw = raw
        self.fd = raw.fileno()
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)
        #: the C session under the SSLObject: its read/write/pending without the Python
        #: wrapper's frame (same semantics), on the per-request path
        self.ssl = self.obj._sslobj
        self.send_timeout = send_timeout
        self.done = False           # handshake complete
        self.eof = False            # the client's close_notify came

    # --- what a socket offers ------------------------------------------------------
    def fileno(self) -> int:
        return self.fd

    def getsockname(self):
        return self.raw.getsockname()

    def getpeername(self):
        return self.raw.getpeername()

    def version(self) -> str | None:
        """The negotiated protocol ("TLSv1.3", ...) once the handshake is done."""
        return self.obj.version()

    # --- handshake -------------------------------------------------------------------
    def handshake(self) -> bool:
        """Loop thread, when the raw socket is readable: reads what is there and takes
        the handshake as far as it goes. Returns True once it is complete (plaintext
        may already follow: call recv), False while it needs more from the client.
        Raises ssl.SSLError for a TLS failure (an alert was queued and sent),
        ConnectionError when the client closed or reset, ClientDisconnected when our
        flight could not be written within send_timeout."""
        try:
            data = self.raw.recv(RECV_RAW)
        except BlockingIOError:
            return False
        if not data:
            raise ConnectionResetError("client closed the connection during the handshake")
        self.inc.write(data)
        try:
            self.obj.do_handshake()
        except _WantRead:
            self._flush()
            return False
        except ssl.SSLError:
            try:
                self._flush()       # the alert, so the client learns why
            except OSError:
                pass
            raise
        self._flush()
        self.done = True
        return True

    # --- reading ------------------------------------------------------------------------
    def _drain(self) -> bytes | None:
        """All plaintext the buffered records decrypt to (b"" at close_notify); None
        when there is none yet."""
        obj = self.ssl
        inc = self.inc
        chunks = []
        # read only while something is buffered (a WantRead costs an exception): the
        # usual request is one record, read by one call
        while inc.pending or obj.pending():
            try:
                chunk = obj.read(RECV_RAW)
            except _WantRead:
                break               # the rest is a record not whole yet
            except _ZeroReturn:
                chunk = b""
            if not chunk:           # close_notify (the ssl module reads it as b"")
                self.eof = True
                if not chunks:
                    return b""
                break
            chunks.append(chunk)
        if self.out.pending:        # post-handshake messages (key update, tickets)
            self._flush()
        if not chunks:
            return None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def recv(self, _n: int = RECV_RAW) -> bytes:
        """See the module docstring. Raises BlockingIOError (no whole record yet),
        ssl.SSLError (a broken record: the connection is done), OSError."""
        if self.eof:
            return b""
        inc = self.inc
        obj = self.ssl
        if inc.pending or obj.pending():
            data = self._drain()
            if data is not None:
                return data
        raw = self.raw.recv(RECV_RAW)      # BlockingIOError passes up
        if not raw:
            return b""
        inc.write(raw)
        data = self._drain()
        if data is None:
            raise BlockingIOError("a TLS record is incomplete")
        return data

    # --- writing ------------------------------------------------------------------------
    def send(self, data) -> int:
        """Encrypts and writes all of data (bytes-like). Returns len(data). Raises
        ClientDisconnected after send_timeout without progress, OSError."""
        n = len(data)
        obj = self.ssl
        if n <= SEND_STEP:
            obj.write(data)
            self._flush()
            return n
        view = memoryview(data)
        for at in range(0, n, SEND_STEP):
            obj.write(view[at:at + SEND_STEP])
            self._flush()
        return n

    def sendmsg(self, buffers) -> int:
        """send() of the buffers in order (one flush when they are small)."""
        total = 0
        obj = self.ssl
        for b in buffers:
            if len(b) > SEND_STEP:
                self._flush()
                total += self.send(b)
            else:
                obj.write(b)
                total += len(b)
        self._flush()
        return total

    def _flush(self) -> None:
        """Writes every byte the session has queued for the wire."""
        out = self.out
        if not out.pending:
            return
        data = out.read()
        try:
            sent = self.raw.send(data)
        except BlockingIOError:
            sent = 0
        if sent != len(data):
            self._flush_rest(data, sent)

    def _flush_rest(self, data: bytes, sent: int) -> None:
        """Writes the rest of `data` (ciphertext taken from the session) after the
        `sent` bytes a first send wrote, waiting with poll() while the socket is full."""
        raw = self.raw
        view = memoryview(data)[sent:]
        deadline = None
        while view:
            try:
                n = raw.send(view)
            except BlockingIOError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.send_timeout
                p = select.poll()
                p.register(self.fd, _POLLOUT)
                if now >= deadline or not p.poll((deadline - now) * 1000.0):
                    raise ClientDisconnected("timed out sending the response") from None
                continue
            view = view[n:]
            deadline = None

    def sendfile_from(self, fd: int, offset: int, count: int) -> int:
        """A file's bytes encrypted and sent (sendfile(2)'s equivalent: the kernel cannot
        encrypt them for us without kTLS). Returns how many were sent (fewer when the
        file is shorter)."""
        sent = 0
        while sent < count:
            chunk = os.pread(fd, min(SEND_STEP, count - sent), offset + sent)
            if not chunk:
                break
            self.send(chunk)
            sent += len(chunk)
        return sent

    def close(self) -> None:
        """Sends close_notify when the session is up (without waiting for the socket:
        a full socket just loses it), then closes the socket."""
        if self.done:
            try:
                self.obj.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
            try:
                if self.out.pending:
                    self.raw.send(self.out.read(), socket.MSG_DONTWAIT)
            except OSError:
                pass
        self.raw.close()
