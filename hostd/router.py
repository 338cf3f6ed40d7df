"""Which pool serves a request: bindings, and the table that routes by Host, port and path.

Used on the hot path by both the front end (first request of a connection) and the
worker (every kept-alive request, to notice one that belongs to another pool), so
`Router.route` does dict lookups and short list scans only: no regex, and it returns
`Route` objects built once in the constructor.

Precedence (a contract, see the README's "Bindings"):

1. host pattern: the exact host, then `*.suffix` wildcards longest suffix first (a
   wildcard never matches the bare suffix), then `*`;
2. within one host pattern: bindings with a port (matching the local port the
   connection was accepted on) before portless ones, then the longest path prefix;
3. when no binding of a host pattern matches the port and path, the next less
   specific host pattern is tried.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class Binding:
    """One "[host][:port][/path-prefix]" a pool answers to.

    host: "shop.example.com", "*.shop.example.com" or "*" (lower-case, no trailing dot;
    an IPv6 literal in compressed form without brackets). port: None = any local port.
    prefix: "" or a decoded path like "/shop" (leading "/", no trailing "/"); it becomes
    the request's SCRIPT_NAME. text: the binding as written in the configuration.
    """

    host: str
    port: int | None
    prefix: str
    text: str

    @classmethod
    def parse(cls, text: str) -> "Binding":
        """Parse a binding as written in a pool file.

        Takes: "[host][:port][/path-prefix]", e.g. "shop.example.com",
        "*.shop.example.com", "example.com/shop/", "*:8081", ":8081" (any host on port
        8081), "/api" (any host), "[::1]:8080/x". The prefix may be percent-encoded or
        raw UTF-8; it is stored decoded the way PATH_INFO is (see decode_path).
        Returns: the Binding.
        Raises: ValueError with a message naming the binding and what is wrong.
        """
        if not isinstance(text, str):
            raise ValueError(f"binding must be a string, not {type(text).__name__}")
        if not text:
            raise ValueError("empty binding")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValueError(f"binding {text!r} contains whitespace or control characters")
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError(f"binding {text!r}: '[' without ']'")
            host = _ipv6(text[1:end], text)
            rest = text[end + 1:]
            slash = rest.find("/")
            if slash < 0:
                hostport_rest, path = rest, ""
            else:
                hostport_rest, path = rest[:slash], rest[slash:]
            if hostport_rest and not hostport_rest.startswith(":"):
                raise ValueError(f"binding {text!r}: expected ':port' or '/prefix' after ']'")
            port = _port(hostport_rest[1:], text) if hostport_rest else None
        else:
            slash = text.find("/")
            hostport, path = (text, "") if slash < 0 else (text[:slash], text[slash:])
            if hostport.count(":") > 1:
                raise ValueError(f"binding {text!r}: an IPv6 address must be written in "
                                 f"brackets, e.g. \"[::1]:8080\"")
            host, colon, port_text = hostport.partition(":")
            port = _port(port_text, text) if colon else None
            host = _host_pattern(host, text)
        return cls(host, port, _prefix(path, text), text)


def _ipv6(inner: str, text: str) -> str:
    if "%" in inner:
        raise ValueError(f"binding {text!r}: IPv6 zone ids are not supported")
    try:
        return ipaddress.IPv6Address(inner).compressed
    except ValueError:
        raise ValueError(f"binding {text!r}: {inner!r} is not an IPv6 address") from None


def _port(port_text: str, text: str) -> int:
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"binding {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"binding {text!r}: port {port} is out of range 1-65535")
    return port


def _host_pattern(host: str, text: str) -> str:
    """Validated lower-case host pattern; "" (no host written) means any host."""
    if host in ("", "*"):
        return "*"
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]  # "example.com." is the same name as "example.com"
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        raise ValueError(f"binding {text!r}: '*' may only stand alone or as the whole "
                         f"first label (\"*.example.com\")")
    if not name.isascii():
        raise ValueError(f"binding {text!r}: host names must be ASCII; write an "
                         f"internationalised name in its punycode (xn--) form")
    if len(name) > 253:
        raise ValueError(f"binding {text!r}: host name longer than 253 characters")
    for label in name.split("."):
        if not label:
            raise ValueError(f"binding {text!r}: empty label in host name")
        if len(label) > 63:
            raise ValueError(f"binding {text!r}: host label {label[:20]!r}... is longer "
                             f"than 63 characters")
        if not _HOST_CHARS.issuperset(label) or label[0] == "-" or label[-1] == "-":
            raise ValueError(f"binding {text!r}: bad host label {label!r} (letters, "
                             f"digits, '-' and '_' only; no '-' at either end)")
    return "*." + name if wildcard else name


def _prefix(path: str, text: str) -> str:
    if not path:
        return ""
    if "?" in path or "#" in path:
        raise ValueError(f"binding {text!r}: a path prefix cannot contain '?' or '#'")
    # Compared with the decoded PATH_INFO, so decode the same way (UTF-8 bytes, then
    # latin-1): "/caf%C3%A9" and "/café" both match a request for /caf%C3%A9.
    prefix = decode_path(path.encode("utf-8")).rstrip("/")
    if any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        raise ValueError(f"binding {text!r}: path prefix decodes to control characters")
    for segment in prefix.split("/")[1:]:
        if segment in ("", ".", ".."):
            raise ValueError(f"binding {text!r}: path prefix has an empty, '.' or '..' "
                             f"segment")
    return prefix


@dataclass(frozen=True)
class Route:
    """Where a request goes: the pool's name and the binding that matched it.
    The request's SCRIPT_NAME is binding.prefix."""

    pool: str
    binding: Binding


def _match(candidates, port: int, path: str):
    """First candidate (already in precedence order) whose port and prefix match."""
    for bport, prefix, n, route in candidates:
        if bport is not None and bport != port:
            continue
        # "/shop" matches "/shop" and "/shop/..." but not "/shopping"
        if n == 0 or (path.startswith(prefix) and (len(path) == n or path[n] == "/")):
            return route
    return None


class Router:
    """The binding table of all pools."""

    __slots__ = ("_routes", "_exact", "_wild", "_any")

    def __init__(self, entries):
        """Takes: an iterable of (pool name, Binding).
        Raises: ValueError naming both pools (and the binding) when two entries have
        the same (host, port, prefix)."""
        self._routes: list[Route] = []
        claimed: dict[tuple, Route] = {}
        groups: dict[str, list[Route]] = {}
        for pool, binding in entries:
            key = (binding.host, binding.port, binding.prefix)
            other = claimed.get(key)
            if other is not None:
                raise ValueError(f"binding {binding.text!r} of pool {pool!r} is already "
                                 f"claimed by pool {other.pool!r} "
                                 f"(as {other.binding.text!r})")
            route = Route(pool, binding)
            claimed[key] = route
            self._routes.append(route)
            groups.setdefault(binding.host, []).append(route)
        self._exact: dict[str, tuple] = {}
        self._wild: dict[str, tuple] = {}
        self._any: tuple = ()
        for host, routes in groups.items():
            # port-specific first, then the longest prefix: the first match wins
            routes.sort(key=lambda r: (r.binding.port is None, -len(r.binding.prefix)))
            candidates = tuple((r.binding.port, r.binding.prefix, len(r.binding.prefix), r)
                               for r in routes)
            if host == "*":
                self._any = candidates
            elif host.startswith("*."):
                self._wild[host[2:]] = candidates
            else:
                self._exact[host] = candidates

    def route(self, host: str | None, port: int, path: str) -> Route | None:
        """Takes: the raw Host header (or None), the local port the connection was
        accepted on, and the decoded path (decode_path's output).
        Returns: the Route of the winning binding, or None when nothing matches."""
        host = normalise_host(host)
        candidates = self._exact.get(host)
        if candidates is not None:
            route = _match(candidates, port, path)
            if route is not None:
                return route
        wild = self._wild
        if wild:
            # walk the dot-suffixes longest first: "a.b.c" tries "b.c", then "c"
            dot = host.find(".")
            while dot >= 0:
                candidates = wild.get(host[dot + 1:])
                if candidates is not None:
                    route = _match(candidates, port, path)
                    if route is not None:
                        return route
                dot = host.find(".", dot + 1)
        if self._any:
            return _match(self._any, port, path)
        return None

    def to_table(self) -> list:
        """Returns: a JSON-able table [[pool, binding text], ...] in insertion order."""
        return [[r.pool, r.binding.text] for r in self._routes]

    @classmethod
    def from_table(cls, table) -> "Router":
        """Takes: a table from to_table. Returns: the Router.
        Raises: ValueError for a bad binding text or a duplicate."""
        return cls((pool, Binding.parse(text)) for pool, text in table)

    def bindings_of(self, pool: str) -> list[Binding]:
        """Returns: the bindings of `pool` in insertion order ([] for an unknown pool)."""
        return [r.binding for r in self._routes if r.pool == pool]

    def __len__(self) -> int:
        return len(self._routes)


def _may_outrank(mine: str, other: str) -> bool:
    """Whether a binding with host pattern `other` can win, for some request, over one
    with pattern `mine` that matches it (the precedence above): "*" is outranked by
    every pattern (its own too: by port or a longer prefix); "*.s" by itself, by longer
    wildcards under s and by exact hosts under s; an exact host only by itself (the
    less specific patterns are tried only when no binding of it matches)."""
    if mine == "*":
        return True
    if mine.startswith("*."):
        suffix = mine[2:]
        if other == "*":
            return False
        if other.startswith("*."):
            tail = other[2:]
            return tail == suffix or tail.endswith("." + suffix)
        return other.endswith("." + suffix)    # ("*.s" never matches the bare s)
    return other == mine


class WorkerTables:
    """Each pool's workers' share of one binding table: its own bindings and those of
    other pools that can outrank one of them for some request, so that
    Router(share).route(r) is one of the pool's routes exactly when Router(table).route(r)
    is that route (anything else is handed back to the front ends). With a thousand
    sites of their own hosts, a share is a few entries, not a thousand. Built once per
    table (bindings parsed once, indexed by host pattern); `for_pool` is then cheap.

    Takes: a to_table() table ([[pool, binding text], ...])."""

    def __init__(self, table: list):
        self.table = [list(e) for e in table]
        self.hosts = [Binding.parse(text).host for _, text in self.table]
        self.by_host: dict[str, list[int]] = {}
        self.by_pool: dict[str, list[int]] = {}
        for i, ((pool, _), host) in enumerate(zip(self.table, self.hosts)):
            self.by_host.setdefault(host, []).append(i)
            self.by_pool.setdefault(pool, []).append(i)

    def for_pool(self, pool: str) -> list:
        """Returns the pool's share, in the table's order ([] for a pool without
        bindings)."""
        own = self.by_pool.get(pool)
        if not own:
            return []
        mine = {self.hosts[i] for i in own}
        if "*" in mine:
            return [list(e) for e in self.table]
        keep = set(own)
        wild = [m for m in mine if m.startswith("*.")]
        for m in mine:
            if not m.startswith("*."):
                keep.update(self.by_host.get(m, ()))
        if wild:
            for host, idx in self.by_host.items():
                if any(_may_outrank(m, host) for m in wild):
                    keep.update(idx)
        return [list(self.table[i]) for i in sorted(keep)]


def worker_table(table: list, pool: str) -> list:
    """WorkerTables(table).for_pool(pool), for one pool."""
    return WorkerTables(table).for_pool(pool)


def normalise_host(host_header: str | None) -> str:
    """Takes: a Host header value (or an absolute-form authority), or None.
    Returns: it lower-cased, without port and trailing dot; "[::1]:8080" -> "::1" (in
    compressed form); None or "" -> "". Never raises: a malformed value simply matches
    no exact or wildcard binding."""
    if not host_header:
        return ""
    if host_header[0] == "[":
        end = host_header.find("]")
        inner = host_header[1:end] if end > 0 else host_header[1:]
        try:
            # rare; canonical form so "[::0001]" finds the binding for "[::1]"
            return ipaddress.IPv6Address(inner).compressed
        except ValueError:
            return inner.lower()
    colon = host_header.rfind(":")
    # exactly one colon: "host:port"; more would be an unbracketed IPv6, kept as is
    if colon >= 0 and host_header.find(":") == colon:
        host_header = host_header[:colon]
    host = host_header.lower()
    if host.endswith("."):
        host = host[:-1]
    return host


def split_target(target: bytes) -> tuple[str | None, bytes, bytes]:
    """Split an HTTP request-target.

    Takes: the raw request-target.
    Returns: (authority host or None, raw path, raw query). Origin-form b"/a/b?x=1" ->
    (None, b"/a/b", b"x=1"); absolute-form b"http://Host:81/a?q" -> ("host", b"/a",
    b"q") — per RFC 9112 §3.2.2 that host then wins over the Host header; asterisk-form
    b"*" -> (None, b"*", b""). The fragment is dropped; an absolute-form target without
    a path gets b"/". Never raises.
    """
    host = None
    if target[:1] != b"/":
        head = target[:8].lower()
        if head.startswith(b"http://") or head.startswith(b"https://"):
            start = target.find(b"//") + 2
            end = len(target)
            for sep in (b"/", b"?", b"#"):
                j = target.find(sep, start, end)
                if j >= 0:
                    end = j
            authority = target[start:end]
            authority = authority[authority.rfind(b"@") + 1:]  # drop any userinfo
            host = normalise_host(authority.decode("latin-1"))
            target = target[end:]
            if target[:1] != b"/":
                target = b"/" + target
    hash_ = target.find(b"#")
    if hash_ >= 0:
        target = target[:hash_]
    q = target.find(b"?")
    if q >= 0:
        return host, target[:q], target[q + 1:]
    return host, target, b""


def decode_path(raw_path: bytes) -> str:
    """Takes: a raw path. Returns: it percent-decoded to bytes, then as a latin-1 str
    (PEP 3333's PATH_INFO convention; invalid escapes are kept literally). Never raises."""
    if b"%" not in raw_path:
        return raw_path.decode("latin-1")
    return unquote_to_bytes(raw_path).decode("latin-1")
