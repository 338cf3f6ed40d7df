"""The configuration files: the main file and one file per application pool.

Both are TOML. What may appear in them is described as data (`HOSTD_KEYS`,
`POOL_KEYS`): each key has a converter (raw TOML value -> checked value, raising
ValueError with the problem), a default, and a one-line meaning. Adding a key is adding
an entry; adding a table (e.g. a future [limits]) is adding a `Table` entry to
`POOL_KEYS` and a field of the same name to `PoolConfig`.

Validation never stops at the first problem: every problem of every file is collected
as a ConfigError (file, dotted key, problem), so `hostd --check-config` can list them
all. A broken pool file never keeps the other pools from loading.
"""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import stat
import sys
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from hostd.protocol import MAX_HANDOFF_BYTES
from hostd.router import Binding
from hostd.units import parse_duration, parse_size

DEFAULT_MAIN_PATH = Path("/etc/hostd/hostd.toml")

POOL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


# --- errors --------------------------------------------------------------------------
class ConfigError(Exception):
    """One problem in one file. .file: the file's path (str); .key: the dotted key
    ("hostd.listen", "bindings[2]", "env.HOME") or None for the file as a whole;
    .problem: what is wrong, in words."""

    def __init__(self, file, key: str | None, problem: str):
        super().__init__(str(file), key, problem)  # args make it picklable
        self.file = str(file)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        if self.key is None:
            return f"{self.file}: {self.problem}"
        return f"{self.file}: {self.key}: {self.problem}"


class ConfigErrors(Exception):
    """Several ConfigError at once (.errors); str() lists them one per line."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class _Problems(ValueError):
    """Raised by a converter for problems in parts of one value: [(key suffix, problem)],
    e.g. [("[2]", "bad binding ...")], so each part is reported under its own key."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__(problems)
        self.problems = problems


# --- schema --------------------------------------------------------------------------
REQUIRED = object()  # default of a key that must be written


@dataclass(frozen=True)
class Key:
    """One configuration key.

    convert: (raw TOML value, directory of the file it is in) -> checked value; raises
    ValueError (or _Problems) with the problem. default: the checked value used when
    the key is absent, or REQUIRED. doc: its meaning (the README's configuration reference has the long
    form). in_defaults: whether the main file's [defaults] may set it. merge: how a pool
    value combines with the [defaults] value (None: the pool value replaces it).
    """

    convert: Callable[[Any, Path], Any]
    default: Any = REQUIRED
    doc: str = ""
    in_defaults: bool = True
    merge: Callable[[Any, Any], Any] | None = None


@dataclass(frozen=True)
class Table:
    """A TOML table of keys. build: turns the checked {key: value} into the value stored
    in the config object (a frozen dataclass for future pool tables)."""

    keys: Mapping[str, "Key | Table"]
    doc: str = ""
    build: Callable[[dict], Any] = dict


# converters: each takes (value, base directory) and returns the checked value

def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _int(minimum: int | None = None, maximum: int | None = None):
    def convert(value, base):
        # bool is a subclass of int: `processes = true` is a mistake, not 1
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, not {value}")
        return value
    return convert


def _choice(*choices: str):
    def convert(value, base):
        if value not in choices or not isinstance(value, str):
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, "
                             f"not {value!r}")
        return value
    return convert


def _size(minimum: int, maximum: int):
    def convert(value, base):
        size = parse_size(value)
        if not minimum <= size <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum} bytes, not {size}")
        return size
    return convert


def _duration(value, base) -> float:
    return parse_duration(value)


def _string(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    if not value:
        raise ValueError("must not be empty")
    return value


def _absolute(value, base: Path) -> Path:
    # normpath, not resolve(): a symlinked release directory is the operator's business
    return Path(os.path.normpath(base / _string(value)))


def _path(value, base) -> Path:
    return _absolute(value, base)


def _existing_dir(value, base) -> Path:
    path = _absolute(value, base)
    if not path.exists():
        raise ValueError(f"{str(path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a directory")
    return path


def _app(value, base) -> str:
    app = _string(value)
    module, colon, attr = app.partition(":")
    if not colon or not all(p.isidentifier() for p in module.split(".")) or \
            not all(p.isidentifier() for p in attr.split(".")):
        raise ValueError(f"must be \"module:callable\" (e.g. \"shop.wsgi:application\"), "
                         f"not {app!r}")
    return app


def _virtualenv(value, base) -> Path:
    path = _existing_dir(value, base)
    want = f"{sys.version_info.major}.{sys.version_info.minor}"
    have = _venv_version(path)
    if have is not None:
        if have != want:
            raise ValueError(f"{str(path)!r} is a Python {have} virtualenv; hostd runs "
                             f"Python {want}")
    elif not (path / "lib" / f"python{want}" / "site-packages").is_dir():
        raise ValueError(f"{str(path)!r} is not a Python {want} virtualenv (no version in "
                         f"pyvenv.cfg, no lib/python{want}/site-packages)")
    return path


def _venv_version(path: Path) -> str | None:
    """major.minor from pyvenv.cfg ("version = 3.11.7" by venv, "version_info =
    3.11.7.final.0" by virtualenv and uv), or None when it says nothing."""
    try:
        text = (path / "pyvenv.cfg").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, eq, val = line.partition("=")
        if eq and key.strip() in ("version", "version_info"):
            return ".".join(val.strip().split(".")[:2])
    return None


def _bindings(value, base) -> tuple[Binding, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of strings, not {_type_name(value)}")
    if not value:
        raise ValueError("must list at least one binding")
    problems, bindings, seen = [], [], {}
    for i, text in enumerate(value):
        try:
            binding = Binding.parse(text)
        except ValueError as e:
            problems.append((f"[{i}]", str(e)))
            continue
        key = (binding.host, binding.port, binding.prefix)
        if key in seen:
            problems.append((f"[{i}]", f"binding {text!r} is the same as "
                                       f"bindings[{seen[key]}]"))
            continue
        seen[key] = i
        bindings.append(binding)
    if problems:
        raise _Problems(problems)
    return tuple(bindings)


def _env(value, base) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of strings, not {_type_name(value)}")
    problems = []
    for name, val in value.items():
        if not name or "=" in name or "\0" in name:
            problems.append((f".{name}", "an environment variable name must be non-empty "
                                         "and contain no '=' or NUL"))
        elif not isinstance(val, str):
            problems.append((f".{name}", f"must be a string, not {_type_name(val)}"))
        elif "\0" in val:
            problems.append((f".{name}", "must not contain NUL"))
    if problems:
        raise _Problems(problems)
    # sorted: the order in the file changes nothing, so it must not change equality
    return tuple(sorted(value.items()))


def _merge_env(inherited, own):
    return tuple(sorted({**dict(inherited), **dict(own)}.items()))


def _listen(value, base) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of \"host:port\" strings, not {_type_name(value)}")
    if not value:
        raise ValueError("must list at least one address")
    problems, out = [], []
    for i, text in enumerate(value):
        try:
            addr = _listen_address(text)
        except ValueError as e:
            problems.append((f"[{i}]", str(e)))
            continue
        if addr in out:
            problems.append((f"[{i}]", f"{text!r} is listed twice"))
            continue
        out.append(addr)
    if problems:
        raise _Problems(problems)
    return tuple(out)


def _listen_address(text) -> tuple[str, int]:
    if not isinstance(text, str):
        raise ValueError(f"must be a string, not {_type_name(text)}")
    bad = f"bad listen address {text!r}: expected \"IPv4:port\" or \"[IPv6]:port\""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(bad)
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError:
            raise ValueError(f"{bad} ({host!r} is not an IPv6 address)") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(bad)
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            hint = " (IPv6 needs brackets)" if ":" in host else ""
            raise ValueError(f"{bad}{hint}") from None
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{bad} (port must be 1-65535)")
    return host, int(port)


def _listen_tls(value, base) -> tuple[tuple[str, int], ...]:
    """[hostd] listen_tls: as listen, but it may be empty (no TLS listener)."""
    if isinstance(value, list) and not value:
        return ()
    return _listen(value, base)


#: the keys of a pool file (and of the main file's [defaults])
POOL_KEYS: dict[str, Key | Table] = {
    "app": Key(_app, doc="the WSGI (or, with interface = \"asgi\", ASGI) callable, \"module:callable\""),
    "directory": Key(_existing_dir, doc="working directory, first on sys.path"),
    "virtualenv": Key(_virtualenv, None, "virtualenv the workers run in"),
    "bindings": Key(_bindings, doc="what the pool answers to", in_defaults=False),
    "start_mode": Key(_choice("on_demand", "always_running"), "on_demand",
                      "start workers at the first request or at once"),
    "processes": Key(_int(1), 1, "most worker processes (web garden)"),
    "threads": Key(_int(1), 1, "application threads per worker"),
    "queue_length": Key(_int(1), 1000, "connections that may wait for a worker"),
    "idle_timeout": Key(_duration, 1200.0, "stop a worker idle this long; \"0\" = never"),
    "load_balancer_capabilities": Key(_choice("http_503", "tcp_reset"), "http_503",
                                      "how a refused connection is answered"),
    "env": Key(_env, (), "environment variables for the app", merge=_merge_env),
    "max_connections": Key(_int(0), 0, "open client connections of this pool; beyond → 503 (0 = only the [hostd] limit)"),
    "max_body_size": Key(lambda v, b: parse_size(v), None, "largest request body (→ 413); default: [hostd] max_body_size"),
    "max_bandwidth": Key(lambda v, b: parse_size(v), 0, "response bytes/s per binding, per worker (IIS MaxBandwidth); 0 = unlimited"),
    "preload": Key(lambda v, b: _bool(v, b), False, "warm tier: a zygote of the pool's own imports the app once (gc.freeze) and forks its workers"),
    # ASGI (issue 15): the worker runs one event loop instead of threads
    "interface": Key(_choice("wsgi", "asgi"), "wsgi", "the app's interface: \"wsgi\" (threads) or \"asgi\" (one event loop per worker; WebSockets)"),
    "max_concurrency": Key(_int(1), 10000, "ASGI only: requests and WebSockets in flight per worker; at the limit the worker pulls no more connections"),
    "event_loop": Key(_choice("auto", "uvloop", "asyncio"), "auto", "ASGI: \"auto\" = uvloop when importable (the pool's virtualenv or hostd's), else asyncio's own"),
    "lifespan": Key(_choice("auto", "on", "off"), "auto", "ASGI lifespan: auto = an app that fails before startup.complete has none; on = that is a startup failure; off = never sent"),
    "websocket_max_size": Key(_size(1 << 10, 1 << 40), 16 << 20, "ASGI: largest WebSocket message or frame; bigger → close 1009"),
    # a future table plugs in here, e.g.
    # "limits": Table({"memory": Key(_size(...), None, "...")}, build=Limits),
}

@dataclass(frozen=True)
class Health:
    """A pool's [health] table (IIS: ping, startup/shutdown limits, rapid-fail protection,
    orphaning). Durations in seconds; 0 switches a timer off where the doc says so."""

    ping_interval: float = 30.0
    ping_timeout: float = 90.0
    request_timeout: float = 0.0
    startup_limit: float = 90.0
    shutdown_limit: float = 90.0
    rapid_fail_max_crashes: int = 5
    rapid_fail_interval: float = 300.0
    unhealthy_action: str = "recycle"
    orphan: bool = False
    orphan_action: str = ""
    websocket_ping_interval: float = 20.0
    websocket_ping_timeout: float = 20.0


def _bool(value, base) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_type_name(value)}")
    return value


def _positive_duration(value, base) -> float:
    seconds = _duration(value, base)
    if seconds <= 0:
        raise ValueError("must be longer than 0")
    return seconds


HEALTH_KEYS: dict[str, Key] = {
    "ping_interval": Key(_duration, 30.0, "how often the supervisor pings each worker; \"0\" = no pinging"),
    "ping_timeout": Key(_positive_duration, 90.0, "no answer in time, or every app thread busy on "
                        "the same request this long → the worker is unhealthy"),
    "request_timeout": Key(_duration, 0.0, "a request running longer marks the worker unhealthy; \"0\" = off"),
    "startup_limit": Key(_positive_duration, 90.0, "a worker must report ready within this, else it is killed and counted as a failure"),
    "shutdown_limit": Key(_positive_duration, 90.0, "a draining worker must exit within this, else its cgroup is killed"),
    "rapid_fail_max_crashes": Key(_int(0), 5, "failures within rapid_fail_interval that stop the pool (0 = never)"),
    "rapid_fail_interval": Key(_positive_duration, 300.0, "the rapid-fail window"),
    "unhealthy_action": Key(_choice("recycle", "kill"), "recycle",
                            "recycle: start a replacement, then drain; kill: kill at once"),
    "orphan": Key(_bool, False, "keep a failed (hung) worker alive, out of the queue, for debugging"),
    "orphan_action": Key(lambda v, b: "" if v == "" else _string(v), "", "command run when a worker is orphaned; {pid} and {pool} substituted"),
    "websocket_ping_interval": Key(_duration, 20.0, "ASGI: the worker pings each open WebSocket this often; \"0\" = off"),
    "websocket_ping_timeout": Key(_positive_duration, 20.0, "ASGI: a WebSocket that sends no pong within this after a ping is closed (1011)"),
}

POOL_KEYS["health"] = Table(HEALTH_KEYS, "health monitoring and rapid-fail protection",
                            build=lambda values: Health(**values))

@dataclass(frozen=True)
class Recycling:
    """A pool's [recycling] table: when workers are replaced before they rot."""

    overlapping: bool = True
    time: float = 0.0
    requests: int = 0
    schedule: tuple[str, ...] = ()
    private_memory: int = 0
    virtual_memory: int = 0


def _schedule(value, base) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of \"HH:MM\" times, not {_type_name(value)}")
    out = []
    for i, item in enumerate(value):
        m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", item) if isinstance(item, str) else None
        if m is None:
            raise ValueError(f"[{i}]: {item!r} is not a local time \"HH:MM\" (00:00 to 23:59)")
        out.append(f"{int(m.group(1)):02d}:{m.group(2)}")
    return tuple(out)


def _size_or_zero(value, base) -> int:
    if value == "0" or value == 0:
        return 0
    return _size(1 << 20, 1 << 50)(value, base)


RECYCLING_KEYS: dict[str, Key] = {
    "overlapping": Key(_bool, True, "start the replacement first (no request waits); false: stop, then start"),
    "time": Key(_duration, 0.0, "recycle a worker after this long (\"0\" = off); staggered across a web garden"),
    "requests": Key(_int(0), 0, "recycle a worker after this many requests (0 = off); staggered"),
    "schedule": Key(_schedule, (), "local times of day (\"HH:MM\") at which every worker is recycled, one at a time"),
    "private_memory": Key(_size_or_zero, 0, "recycle a worker whose cgroup memory passes this (\"0\" = off); a kernel event, not a poll"),
    "virtual_memory": Key(_size_or_zero, 0, "recycle a worker whose VmSize passes this (\"0\" = off); checked every second"),
}

POOL_KEYS["recycling"] = Table(RECYCLING_KEYS, "when workers are recycled",
                               build=lambda values: Recycling(**values))


@dataclass(frozen=True)
class Limits:
    """A pool's [limits] table: the pool cgroup's limits (hostd/poollimits.py applies
    them) and the per-worker memory cap. 0 / "" = off."""

    worker_memory_max: int = 0
    memory_max: int = 0
    memory_high: int = 0
    cpus: str = ""
    cpu_max: int = 0              # percent of one CPU
    cpu_action: str = "throttle"
    cpu_interval: float = 300.0
    pids_max: int = 0


def host_cpus() -> set[int]:
    """The CPUs this host has online (/sys/devices/system/cpu/online), else 0..cpu_count-1."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return parse_cpu_list(f.read().strip())
    except (OSError, ValueError):
        return set(range(os.cpu_count() or 1))


def parse_cpu_list(text: str) -> set[int]:
    """"0-2,5" -> {0, 1, 2, 5}. Raises ValueError on anything else."""
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ValueError(f"{text!r} is not a CPU list like \"0-1\" or \"0,2-3\"")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise ValueError(f"{part!r}: range goes backwards")
        out.update(range(lo, hi + 1))
    return out


def _cpus(value, base) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string CPU list like \"0-1\", not {_type_name(value)}")
    if value == "":
        return ""
    cpus = parse_cpu_list(value)
    have = host_cpus()
    missing = sorted(cpus - have)
    if missing:
        raise ValueError(f"CPU(s) {','.join(map(str, missing))} do not exist on this host "
                         f"(it has {_cpu_text(have)})")
    return _cpu_text(cpus)


def _cpu_text(cpus: set[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5" (the kernel's own notation)."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _percent(value, base) -> int:
    if value == 0 or value == "0":
        return 0
    m = re.fullmatch(r"(\d+)%", value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"must be a percentage of one CPU like \"50%\" or \"150%\" "
                         f"(\"0\" = off), not {value!r}")
    pct = int(m.group(1))
    if not 1 <= pct <= 100 * 1024:
        raise ValueError(f"must be between 1% and {100 * 1024}%, not {pct}%")
    return pct


LIMITS_KEYS: dict[str, Key] = {
    "worker_memory_max": Key(_size_or_zero, 0, "hard memory cap of each worker's cgroup (\"0\" = none); a worker reaching it is recycled at once"),
    "memory_max": Key(_size_or_zero, 0, "hard memory cap of the pool's cgroup (all its workers); an OOM kill stays in the pool (\"0\" = none)"),
    "memory_high": Key(_size_or_zero, 0, "memory throttle point of the pool's cgroup (v2 memory.high; v1 soft limit) (\"0\" = none)"),
    "cpus": Key(_cpus, "", "CPUs the pool's workers may run on, e.g. \"0-1\" (cpuset; IIS smpProcessorAffinityMask); \"\" = all"),
    "cpu_max": Key(_percent, 0, "CPU limit of the pool in percent of one CPU (\"150%\" = 1.5 CPUs); \"0\" = none"),
    "cpu_action": Key(_choice("throttle", "kill", "recycle"), "throttle", "at cpu_max: throttle (a quota), or kill / recycle the workers when cpu_interval's usage passes it"),
    "cpu_interval": Key(_positive_duration, 300.0, "the window over which cpu_action kill/recycle measures CPU usage"),
    "pids_max": Key(_int(0), 0, "most processes/threads in the pool's cgroup (0 = no limit)"),
}

POOL_KEYS["limits"] = Table(LIMITS_KEYS, "resource limits", build=lambda values: Limits(**values))

@dataclass(frozen=True)
class Isolation:
    """A pool's [isolation] table (hostd/isolation.py turns it into what the zygote
    applies, and `isolation.decide` says whether it applies). A pool with no
    [isolation] table, here or in [defaults], gets these defaults with declared=False:
    isolated when hostd runs as root, served as hostd's user (with hostd's loud
    `no_isolation` warning) when it does not. `enabled = false` is the explicit
    opt-out: workers run as hostd's user, and hostd warns at every start and reload."""

    enabled: bool = True             # false: the logged opt-out, root workers
    identity: str = "dynamic"        # "dynamic" | "user:NAME"
    user_namespace: bool = True
    filesystem: str = "site"         # "site" | "host"
    read_only: bool = False
    network: str = "host"            # "host" | "none" | "private"
    show: tuple[str, ...] = ()       # more host directories visible (read-only) in "site"
    #: False: no [isolation] table anywhere (not a key: set by the loader). Without
    #: root such a pool is served unisolated; a declared table then fails the pool.
    declared: bool = True


def _identity(value, base) -> str:
    text = _string(value)
    if text == "dynamic":
        return text
    if text.startswith("user:") and text[5:]:
        import pwd
        try:
            pwd.getpwnam(text[5:])
        except KeyError:
            raise ValueError(f"no user account named {text[5:]!r} on this host") from None
        return text
    raise ValueError(f"must be \"dynamic\" or \"user:NAME\", not {value!r}")


def _dir_list(value, base) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be an array of directories, not {_type_name(value)}")
    problems, out = [], []
    for i, item in enumerate(value):
        try:
            out.append(str(_existing_dir(item, base)))
        except ValueError as e:
            problems.append((f"[{i}]", str(e)))
    if problems:
        raise _Problems(problems)
    return tuple(out)


ISOLATION_KEYS: dict[str, Key] = {
    "enabled": Key(_bool, True, "false: the pool is not isolated (root workers in hostd's namespaces), logged as a warning at every start and reload; every other [isolation] key is then an error"),
    "identity": Key(_identity, "dynamic", "\"dynamic\": a uid/gid of the pool's own, kept in state_dir; \"user:NAME\": an existing account"),
    "user_namespace": Key(_bool, True, "workers run in a user namespace that maps only the pool's uid/gid"),
    "filesystem": Key(_choice("site", "host"), "site", "site: own mount namespace (read-only system, private /tmp, own /proc, other sites and hostd's files hidden); host: the host's view"),
    "read_only": Key(_bool, False, "the pool's directory is read-only in its view (filesystem = \"site\")"),
    "network": Key(_choice("host", "none", "private"), "host", "host; none: own network namespace with only loopback; private: plus a veth pair from [hostd] private_network"),
    "show": Key(_dir_list, (), "more host directories the pool sees, read-only (filesystem = \"site\")"),
}

POOL_KEYS["isolation"] = Table(ISOLATION_KEYS, "identity, namespaces and the pool's view of the host",
                               build=lambda values: Isolation(**values))


@dataclass(frozen=True)
class TLSConfig:
    """A pool's [tls] table: its certificates and what its TLS connections accept.

    pairs: ((certificate, key), ...) absolute paths, the single `certificate`/`key`
    first, then `certificates` in file order; each certificate file is PEM, leaf first
    then its chain, and holds no key (the supervisor reads certificates, never keys).
    redirect_http: a plain-HTTP request to the pool gets 308 to https://.
    min_version: "1.2" | "1.3". redirect_port: the port a redirect's Location names
    (443: none written)."""

    pairs: tuple[tuple[str, str], ...]
    redirect_http: bool = False
    min_version: str = "1.2"
    redirect_port: int = 443

    def to_spec(self) -> dict:
        """Returns: {"pairs": [[cert, key], ...], "redirect_http", "min_version",
        "redirect_port"} (JSON-able)."""
        return {"pairs": [list(p) for p in self.pairs], "redirect_http": self.redirect_http,
                "min_version": self.min_version, "redirect_port": self.redirect_port}

    @classmethod
    def from_spec(cls, spec: Mapping) -> "TLSConfig":
        """Takes: a dict made by to_spec. Returns: the equal TLSConfig."""
        values = dict(spec)
        values["pairs"] = tuple((str(c), str(k)) for c, k in values["pairs"])
        return cls(**values)


#: the keys of a pool file's [tls] table (converted together by _tls: a pair's two
#: halves are checked as one)
TLS_KEYS: dict[str, Key] = {
    "certificate": Key(_path, None, "PEM certificate file, leaf first then its chain (relative to the pool file's directory); no key in it"),
    "key": Key(_path, None, "PEM private key of `certificate`, unencrypted; may be 0600 root: only the pool's worker reads it, as root, before it drops privileges"),
    "certificates": Key(lambda v, b: v, (), "more pairs: an array of {certificate, key} tables, chosen by SNI against each certificate's names"),
    "redirect_http": Key(_bool, False, "true: a plain-HTTP request to this pool gets 308 to https://"),
    "min_version": Key(_choice("1.2", "1.3"), "1.2", "oldest TLS version accepted: \"1.2\" | \"1.3\""),
    "redirect_port": Key(_int(1, 65535), 443, "the port redirect_http's Location names (443: none written)"),
}


def _file_problem(path: Path, what: str) -> str | None:
    """Why `path` cannot be a certificate or key file (missing, not a regular file),
    by a stat only (no read: 1,000 pools load without opening a certificate), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{what} file {str(path)!r} does not exist"
    except OSError as e:
        return f"cannot stat {what} file {str(path)!r}: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return f"{what} file {str(path)!r} is not a regular file"
    return None


def _tls_pair(table, base: Path, where: str, problems: list) -> tuple[str, str] | None:
    """One {certificate, key} (a pool's [tls] itself, or an entry of certificates):
    the pair of absolute paths, or None (problems appended as (key suffix, problem))."""
    halves = {}
    for name in ("certificate", "key"):
        if name not in table:
            continue
        try:
            path = _path(table[name], base)
        except ValueError as e:
            problems.append((f"{where}{name}", str(e)))
            continue
        problem = _file_problem(path, name)
        if problem:
            problems.append((f"{where}{name}", problem))
            continue
        halves[name] = path
    present = [n for n in ("certificate", "key") if n in table]
    if len(present) == 1:
        other = "key" if present[0] == "certificate" else "certificate"
        problems.append((f"{where}{other}", f"{present[0]} without {other}: a pair needs both"))
        return None
    if len(halves) != 2:
        return None
    cert, key = halves["certificate"], halves["key"]
    if os.path.samefile(cert, key):
        problems.append((f"{where}key", "is the certificate's own file: keep the key in a "
                         "file of its own (the supervisor reads certificates, never keys)"))
        return None
    return str(cert), str(key)


def _tls(value, base) -> "TLSConfig":
    """A pool's [tls] table -> TLSConfig. Problems are reported per dotted key
    (tls.certificate, tls.certificates[1].key, ...)."""
    if not isinstance(value, dict):
        raise ValueError(f"must be a table, not {_type_name(value)}")
    problems: list[tuple[str, str]] = []
    values: dict[str, Any] = {}
    for name, raw in value.items():
        spec = TLS_KEYS.get(name)
        if spec is None:
            problems.append((f".{name}", _unknown(name, TLS_KEYS, "key")))
        elif name not in ("certificate", "key", "certificates"):
            try:
                values[name] = spec.convert(raw, base)
            except ValueError as e:
                problems.append((f".{name}", str(e)))
    pairs = []
    pair = _tls_pair(value, base, ".", problems)
    if pair is not None:
        pairs.append(pair)
    more = value.get("certificates", [])
    if not isinstance(more, list):
        problems.append((".certificates", "must be an array of {certificate, key} tables, "
                         f"not {_type_name(more)}"))
        more = []
    for i, entry in enumerate(more):
        where = f".certificates[{i}]"
        if not isinstance(entry, dict):
            problems.append((where, "must be a table {certificate = \"...\", key = \"...\"}, "
                             f"not {_type_name(entry)}"))
            continue
        for name in entry:
            if name not in ("certificate", "key"):
                problems.append((f"{where}.{name}", _unknown(name, ("certificate", "key"), "key")))
        if "certificate" not in entry and "key" not in entry:
            problems.append((where, "needs certificate and key"))
            continue
        pair = _tls_pair(entry, base, where + ".", problems)
        if pair is None:
            continue
        if pair in pairs:
            problems.append((where, "the same pair is listed twice"))
            continue
        pairs.append(pair)
    if not problems and not pairs:
        problems.append(("", "lists no certificate: give certificate and key, or "
                         "certificates = [{certificate = \"...\", key = \"...\"}]"))
    if problems:
        raise _Problems(problems)
    return TLSConfig(pairs=tuple(pairs), **values)


POOL_KEYS["tls"] = Key(_tls, None, "HTTPS: the pool's certificates (see TLS_KEYS); absent: the "
                       "pool takes no TLS connection", in_defaults=False)


def _identity_range(value, base) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)-(\d+)", value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"must be \"FIRST-LAST\" uids, not {value!r}")
    first, last = int(m.group(1)), int(m.group(2))
    if not 1000 <= first <= last < 2**32 - 1:
        raise ValueError("must be a non-empty range within 1000-4294967294")
    return first, last


def _frontend_identity(value, base) -> str:
    if value == "root":
        return value
    return _identity(value, base)


def _private_network(value, base) -> str:
    try:
        net = ipaddress.IPv4Network(_string(value))
    except ValueError as e:
        raise ValueError(f"not an IPv4 network like \"10.213.0.0/16\": {e}") from None
    if net.prefixlen > 30:
        raise ValueError("must be /30 or larger (each pool takes a /30)")
    return str(net)


@dataclass(frozen=True)
class PressureRule:
    """[hostd] idle_pressure: "memory some avg10 > 10" (the text is kept for messages)."""

    resource: str      # "memory"
    kind: str          # "some" | "full"
    window: str        # "avg10" | "avg60" | "avg300"
    threshold: float   # percent of wall time, 0-100
    text: str


def _pressure(value, base) -> PressureRule | None:
    if isinstance(value, str) and value.strip() == "":
        return None                     # "" = off
    text = _string(value).strip()
    from kernel.psi import KINDS, WINDOWS
    parts = text.split()
    form = '"memory some|full avg10|avg60|avg300 > PERCENT", e.g. "memory some avg10 > 10"'
    if len(parts) != 5 or parts[3] != ">":
        raise ValueError(f"must be {form}, not {value!r}")
    resource, kind, window, _, number = parts
    if resource != "memory":
        raise ValueError(f"only memory pressure stops idle workers, not {resource!r} "
                         f"(must be {form})")
    if kind not in KINDS:
        raise ValueError(f"{kind!r} must be one of {', '.join(KINDS)} (must be {form})")
    if window not in WINDOWS:
        raise ValueError(f"{window!r} must be one of {', '.join(WINDOWS)} (must be {form})")
    try:
        threshold = float(number)
    except ValueError:
        raise ValueError(f"{number!r} is not a number (must be {form})") from None
    if not 0 <= threshold < 100:
        raise ValueError(f"the threshold is a percentage of time, 0 to below 100, not {number}")
    return PressureRule(resource, kind, window, threshold, " ".join(parts))


def _pool_name(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_type_name(value)}")
    if value and not POOL_NAME_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a pool name (a pool file's name without .toml, "
                         f"matching {POOL_NAME_RE.pattern})")
    return value


#: the keys of the main file's [hostd] table
HOSTD_KEYS: dict[str, Key] = {
    "listen": Key(_listen, (("127.0.0.1", 8080),), "addresses the front ends bind"),
    "listen_tls": Key(_listen_tls, (), "TLS addresses the front ends bind (SNI picks the pool, as Host does); a port may not also be in listen"),
    "tls_default_pool": Key(lambda v, b: _pool_name(v), "", "pool for a ClientHello without SNI or with an unbound name (it must have [tls]); \"\" = refuse (TLS alert unrecognized_name)"),
    "frontends": Key(_int(0), 0, "front-end processes; 0 = one per CPU"),
    "pools_dir": Key(_path, Path("pools.d"), "directory of the pool files"),
    "state_dir": Key(_path, Path("/var/lib/hostd"), "persistent state"),
    "run_dir": Key(_path, Path("/run/hostd"), "runtime files; the control socket"),
    "metrics_listen": Key(lambda v, b: _listen_address(v) if v != "" else None, None,
                          "address of the Prometheus /metrics endpoint; \"\" = off"),
    "max_header_bytes": Key(_size(1024, MAX_HANDOFF_BYTES), 16384,
                            "largest request head (request line + headers)"),
    "header_timeout": Key(_positive_duration, 10.0, "a complete request head must arrive within this (slowloris) → 408"),
    "keepalive_timeout": Key(_positive_duration, 75.0, "close a keep-alive connection idle this long"),
    "max_connections": Key(_int(1), 10000, "open client connections, all pools together → 503 beyond"),
    "min_request_bytes_per_second": Key(_int(0), 240, "request bodies slower than this are cut (IIS MinBytesPerSec); 0 = off"),
    "send_timeout": Key(_positive_duration, 60.0, "a client that reads nothing of its response this long is cut"),
    "max_body_size": Key(lambda v, b: parse_size(v), 100 << 20, "largest request body → 413 (per pool overridable)"),
    "access_log": Key(lambda v, b: v if v in ("", "journal") else str(_absolute(v, b)), "",
                      'access log: "" = off, "journal" = journald (EVENT=access), or a file (reopened on SIGUSR1)'),
    "identity_range": Key(_identity_range, (2100000000, 2100065535), "uids/gids hostd gives to pools with identity = \"dynamic\" (\"FIRST-LAST\")"),
    "frontend_identity": Key(_frontend_identity, "dynamic", "who the front ends run as once their sockets are set up: \"dynamic\" (a uid of their own from identity_range), \"user:NAME\", or \"root\""),
    "private_network": Key(_private_network, "10.213.0.0/16", "addresses of network = \"private\" pools, a /30 each"),
    "idle_pressure": Key(_pressure, None, "above this memory pressure (PSI, e.g. \"memory some avg10 > 10\") idle workers are stopped, oldest-idle first, ahead of their idle_timeout; \"\" = off"),
}

MAIN_KEYS: dict[str, Table] = {
    "hostd": Table(HOSTD_KEYS, "the server"),
    "defaults": Table({k: v for k, v in POOL_KEYS.items()
                       if not isinstance(v, Key) or v.in_defaults},
                      "values for every pool's keys; a pool file's own values win"),
}


# --- validation ----------------------------------------------------------------------
def _unknown(name: str, known, what: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"unknown {what}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _check(raw: dict, schema: Mapping, base: Path, where: str,
           errors: list[tuple[str, str]], inherited: Mapping | None = None,
           partial: bool = False) -> dict:
    """Check one table against its schema.

    Takes: the raw table, its schema, the directory relative paths start from, the
    dotted prefix of its keys ("" or "hostd."), the list problems are appended to as
    (key, problem), values inherited from [defaults] (already checked), and partial
    (True: absent keys stay absent, as in [defaults]).
    Returns: {key: checked value}; an invalid key falls back to its default, so the
    result is usable for reporting even when problems were found.
    """
    inherited = inherited or {}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        spec = schema.get(name)
        key = where + name
        if spec is None:
            errors.append((key, _unknown(name, schema, "table" if isinstance(value, dict)
                                         and not where else "key")))
            continue
        if isinstance(spec, Table):
            if not isinstance(value, dict):
                errors.append((key, f"must be a table, not {_type_name(value)}"))
                continue
            sub = _check(value, spec.keys, base, key + ".", errors, inherited.get(name),
                         partial)
            out[name] = sub if partial else _build(spec, sub)
            continue
        try:
            checked = spec.convert(value, base)
        except _Problems as e:
            errors.extend((key + suffix, problem) for suffix, problem in e.problems)
            continue
        except ValueError as e:
            errors.append((key, str(e)))
            continue
        if name in inherited and spec.merge is not None:
            checked = spec.merge(inherited[name], checked)
        out[name] = checked
    if partial:
        return out
    for name, spec in schema.items():
        if name in out:
            continue
        if isinstance(spec, Table):
            out[name] = _build(spec, _check({}, spec.keys, base, where + name + ".",
                                            errors, inherited.get(name)))
        elif name in inherited:
            out[name] = inherited[name]
        elif spec.default is not REQUIRED:
            out[name] = spec.default
        elif name not in raw:  # present but invalid: already reported
            errors.append((where + name, "required key is missing"))
    return out


def _build(table: Table, values: dict):
    """table.build(values), or values as they are when problems left keys out (the
    caller has problems to report and will not use them)."""
    try:
        return table.build(values)
    except (TypeError, ValueError):
        return values


def _read_toml(path: Path) -> tuple[dict | None, ConfigError | None]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f), None
    except OSError as e:
        return None, ConfigError(path, None, f"cannot read: {e.strerror or e}")
    except tomllib.TOMLDecodeError as e:
        # tomllib's message ends with "(at line L, column C)"
        return None, ConfigError(path, None, f"TOML syntax error: {e}")
    except UnicodeDecodeError as e:
        return None, ConfigError(path, None, f"not UTF-8: {e}")


# --- main file -----------------------------------------------------------------------
@dataclass(frozen=True)
class MainConfig:
    """The main file, checked. Paths are absolute; listen is ((host, port), ...) with
    IPv6 hosts without brackets; defaults holds the checked pool keys of [defaults]."""

    path: Path
    listen: tuple[tuple[str, int], ...]
    frontends: int
    pools_dir: Path
    state_dir: Path
    run_dir: Path
    max_header_bytes: int
    defaults: Mapping[str, Any]
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10000
    idle_pressure: "PressureRule | None" = None
    min_request_bytes_per_second: int = 240
    send_timeout: float = 60.0
    max_body_size: int = 100 << 20
    access_log: str = ""
    metrics_listen: tuple[str, int] | None = None
    identity_range: tuple[int, int] = (2100000000, 2100065535)
    frontend_identity: str = "dynamic"
    private_network: str = "10.213.0.0/16"
    listen_tls: tuple[tuple[str, int], ...] = ()
    tls_default_pool: str = ""

    def frontend_count(self) -> int:
        """Returns: how many front-end processes to run (frontends, or the CPU count
        when frontends is 0)."""
        return self.frontends or os.cpu_count() or 1


def _read_main(path) -> tuple[MainConfig | None, list[ConfigError]]:
    """The main file as far as it can be read, and all its problems. Invalid keys fall
    back to their defaults; None when the file cannot be parsed at all."""
    path = Path(os.path.abspath(path))
    raw, err = _read_toml(path)
    if err is not None:
        return None, [err]
    problems: list[tuple[str, str]] = []
    base = path.parent
    for name, value in raw.items():
        if name not in MAIN_KEYS:
            hint = ""
            if name in HOSTD_KEYS:
                hint = " (it belongs in the [hostd] table)"
            elif name in POOL_KEYS:
                hint = " (it belongs in a pool file, or in [defaults])"
            problems.append((name, _unknown(name, MAIN_KEYS, "table" if isinstance(
                value, dict) else "key") + hint))
    checked_raw = {k: v for k, v in raw.items() if k in MAIN_KEYS}
    hostd_raw = checked_raw.get("hostd", {})
    defaults_raw = checked_raw.get("defaults", {})
    for name, value in (("hostd", hostd_raw), ("defaults", defaults_raw)):
        if not isinstance(value, dict):
            problems.append((name, f"must be a table, not {_type_name(value)}"))
    hostd = _check(hostd_raw if isinstance(hostd_raw, dict) else {}, HOSTD_KEYS, base,
                   "hostd.", problems)
    defaults = _check(defaults_raw if isinstance(defaults_raw, dict) else {},
                      MAIN_KEYS["defaults"].keys, base, "defaults.", problems, partial=True)
    # known to pool files but refused here: say why, not just "unknown key"
    if isinstance(defaults_raw, dict):
        problems.extend(("defaults." + k, p) for k, p in
                        _opt_out_conflicts(defaults_raw.get("isolation")))
    if isinstance(defaults_raw, dict) and defaults_raw.get("env"):
        problem = secret_file_problem(path)
        if problem:
            problems.append(("defaults.env", problem))
    problems = [(k, "not allowed in [defaults]: bindings belong to one pool")
                if k == "defaults.bindings" else
                (k, "not allowed in [defaults]: a certificate belongs to one site; give each "
                 "pool file its own [tls]") if k == "defaults.tls" else (k, p)
                for k, p in problems]
    plain = {port for _, port in hostd["listen"]}
    for i, (host, port) in enumerate(hostd["listen_tls"]):
        if port in plain:
            problems.append(("hostd.listen_tls",
                             f"[{i}] {_format_listen(host, port)}: port {port} is also in "
                             "hostd.listen; a port is either plain or TLS (a worker tells a "
                             "TLS connection by its port)"))
    hostd["pools_dir"] = Path(os.path.normpath(base / hostd["pools_dir"]))
    hostd["state_dir"] = Path(os.path.normpath(base / hostd["state_dir"]))
    hostd["run_dir"] = Path(os.path.normpath(base / hostd["run_dir"]))
    main = MainConfig(path=path, defaults=types.MappingProxyType(defaults), **hostd)
    return main, [ConfigError(path, k, p) for k, p in problems]


def load_main(path=DEFAULT_MAIN_PATH) -> MainConfig:
    """Load the main file.

    Takes: its path (relative paths inside it are relative to its directory).
    Returns: the MainConfig.
    Raises: ConfigErrors with every problem of the file (syntax, unknown table or key,
    wrong type, bad value), never just the first.
    """
    main, errors = _read_main(path)
    if errors:
        raise ConfigErrors(errors)
    return main


# --- pool files ----------------------------------------------------------------------
@dataclass(frozen=True)
class PoolConfig:
    """One pool file, checked and merged with [defaults]. Two PoolConfig are equal
    exactly when nothing about the pool changed."""

    name: str
    file: Path
    app: str
    directory: Path
    virtualenv: Path | None
    bindings: tuple[Binding, ...]
    start_mode: str
    processes: int
    threads: int
    queue_length: int
    idle_timeout: float
    load_balancer_capabilities: str
    env: tuple[tuple[str, str], ...]
    health: Health = Health()
    max_connections: int = 0
    max_body_size: int | None = None
    max_bandwidth: int = 0
    preload: bool = False
    recycling: Recycling = Recycling()
    limits: Limits = Limits()
    isolation: Isolation = Isolation(declared=False)   # no table: the defaults
    tls: TLSConfig | None = None                       # no [tls]: no TLS connections
    interface: str = "wsgi"                            # "wsgi" | "asgi"
    max_concurrency: int = 10000                       # ASGI: in flight per worker
    event_loop: str = "auto"                           # ASGI: "auto" | "uvloop" | "asyncio"
    lifespan: str = "auto"                             # ASGI: "auto" | "on" | "off"
    websocket_max_size: int = 16 << 20                 # ASGI: bigger message → 1009

    def to_spec(self) -> dict:
        """Returns: a JSON-able dict of every field (paths as str, bindings as their
        text, env as a dict), e.g. for sending to a worker."""
        spec = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, Path):
                value = str(value)
            elif field.name == "bindings":
                value = [b.text for b in value]
            elif field.name == "env":
                value = dict(value)
            elif field.name == "tls":
                value = value.to_spec() if value is not None else None
            elif dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            spec[field.name] = value
        return spec

    @classmethod
    def from_spec(cls, spec: Mapping) -> "PoolConfig":
        """Takes: a dict made by to_spec (trusted: it was checked when loaded).
        Returns: the equal PoolConfig. Raises: KeyError/TypeError/ValueError on a
        malformed spec. The proof that to_spec loses nothing (tests/unit/test_config.py);
        a worker reads the dict itself (protocol.WorkerSpec.pool_value), since a
        hand-built spec may hold only part of a pool's keys."""
        values = dict(spec)
        values["file"] = Path(values["file"])
        values["directory"] = Path(values["directory"])
        if values["virtualenv"] is not None:
            values["virtualenv"] = Path(values["virtualenv"])
        values["bindings"] = tuple(Binding.parse(t) for t in values["bindings"])
        values["env"] = tuple(sorted(values["env"].items()))
        if "health" in values:
            values["health"] = Health(**values["health"])
        if "recycling" in values:
            rec = dict(values["recycling"])
            rec["schedule"] = tuple(rec.get("schedule", ()))
            values["recycling"] = Recycling(**rec)
        if "limits" in values:
            values["limits"] = Limits(**values["limits"])
        if values.get("tls") is not None:
            values["tls"] = TLSConfig.from_spec(values["tls"])
        if values.get("isolation") is None:
            values.pop("isolation", None)       # the class default: no table
        else:
            iso = dict(values["isolation"])
            iso["show"] = tuple(iso.get("show", ()))
            values["isolation"] = Isolation(**iso)
        return cls(**values)


def _pool_files(main: MainConfig) -> list[Path]:
    pools_dir = main.pools_dir
    try:
        names = sorted(os.listdir(pools_dir))
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(main.path, "hostd.pools_dir",
                                        f"{str(pools_dir)!r} does not exist")]) from None
    except NotADirectoryError:
        raise ConfigErrors([ConfigError(main.path, "hostd.pools_dir",
                                        f"{str(pools_dir)!r} is not a directory")]) from None
    except OSError as e:
        raise ConfigErrors([ConfigError(main.path, "hostd.pools_dir",
                                        f"cannot list {str(pools_dir)!r}: "
                                        f"{e.strerror or e}")]) from None
    # only *.toml; "x.toml~" and "x.toml.swp" end otherwise, and dotfiles (".#x.toml"
    # is an Emacs lock file) are hidden on purpose
    return [pools_dir / n for n in names if n.endswith(".toml") and not n.startswith(".")]


def _load_pool(path: Path, main: MainConfig):
    """(PoolConfig or None, errors, bindings it claims) for one pool file."""
    name = path.name[:-len(".toml")]
    errors: list[ConfigError] = []
    if not POOL_NAME_RE.fullmatch(name):
        errors.append(ConfigError(path, None, f"pool name {name!r} (the file's name "
                                              f"without .toml) must match "
                                              f"{POOL_NAME_RE.pattern}"))
    if not path.is_file():
        errors.append(ConfigError(path, None, "not a regular file"))
        return None, errors, ()
    raw, err = _read_toml(path)
    if err is not None:
        return None, errors + [err], ()
    problems: list[tuple[str, str]] = []
    values = _check(raw, POOL_KEYS, path.parent, "", problems, main.defaults)
    errors.extend(ConfigError(path, k, p) for k, p in problems)
    # claims are made even by a pool with other problems, so which pool owns a binding
    # never depends on unrelated mistakes (see load_pools)
    claims = []
    if isinstance(raw.get("bindings"), list):
        for i, text in enumerate(raw["bindings"]):
            try:
                claims.append((i, Binding.parse(text)))
            except ValueError:
                pass
    problem = secret_file_problem(path) if raw.get("env") else None
    if problem:
        errors.append(ConfigError(path, "env", problem))
    errors.extend(ConfigError(path, k, p) for k, p in _memory_conflicts(values))
    errors.extend(ConfigError(path, k, p) for k, p in _opt_out_conflicts(raw.get("isolation")))
    if not any(k == "interface" for k, _ in problems):
        errors.extend(ConfigError(path, k, p) for k, p in _interface_conflicts(raw, values))
    if errors:
        return None, errors, claims
    if "isolation" not in raw and "isolation" not in main.defaults:
        # no table anywhere: the defaults, isolated as root (see Isolation)
        values["isolation"] = dataclasses.replace(values["isolation"], declared=False)
    return PoolConfig(name=name, file=path, **values), [], claims


def _interface_conflicts(raw: dict, values: dict) -> list[tuple[str, str]]:
    """Keys of one interface written in a pool file of the other, as (key, problem):
    max_concurrency in a WSGI pool, threads in an ASGI pool. Only the pool file's own
    keys count (`raw`); the same key inherited from [defaults] is ignored, and is set
    back to its built-in default in `values` so that it means nothing."""
    interface = values.get("interface", "wsgi")
    out = []
    if interface == "asgi":
        if "threads" in raw:
            out.append(("threads", "means nothing for interface = \"asgi\" (one event "
                        "loop per worker); use max_concurrency"))
        values["threads"] = POOL_KEYS["threads"].default
    else:
        if "max_concurrency" in raw:
            out.append(("max_concurrency", "only for interface = \"asgi\" (a WSGI "
                        "worker's concurrency is threads); remove it, or set "
                        "interface = \"asgi\""))
        values["max_concurrency"] = POOL_KEYS["max_concurrency"].default
    return out


def _opt_out_conflicts(table) -> list[tuple[str, str]]:
    """[isolation] enabled = false beside keys that would then do nothing, as (key,
    problem). Takes the raw table as written (a pool's, or [defaults.isolation]): a
    pool that opts out under an isolating [defaults.isolation] is fine."""
    if not isinstance(table, dict) or table.get("enabled") is not False:
        return []
    return [(f"isolation.{k}", "does nothing with isolation.enabled = false (the pool is "
             "not isolated): remove it, or the opt-out")
            for k in table if k != "enabled" and k in ISOLATION_KEYS]


def _memory_conflicts(values: dict) -> list[tuple[str, str]]:
    """Memory settings that could never take effect beside another one, as (key,
    problem): a throttle or a recycle point at or above the hard limit it sits under is
    configured but does nothing (the values may come from [defaults])."""
    lim, rec = values.get("limits"), values.get("recycling")
    out = []
    if isinstance(lim, Limits) and lim.memory_max and lim.memory_high >= lim.memory_max:
        out.append(("limits.memory_high",
                    f"{lim.memory_high} bytes is not below limits.memory_max "
                    f"({lim.memory_max} bytes): the pool would reach its hard limit before "
                    "any throttling; lower memory_high or remove it"))
    if isinstance(lim, Limits) and isinstance(rec, Recycling) and lim.worker_memory_max \
            and rec.private_memory >= lim.worker_memory_max:
        out.append(("recycling.private_memory",
                    f"{rec.private_memory} bytes is not below limits.worker_memory_max "
                    f"({lim.worker_memory_max} bytes): a worker would reach its hard limit "
                    "before this recycle could fire; lower private_memory or remove it"))
    return out


def secret_file_problem(path: Path) -> str | None:
    """Why a file that holds secrets (a pool's `env`) is unsafe, or None.

    Workers never read pool files (the supervisor sends them what they need), so a
    pool file needs no reader but hostd: one that others can read, or that somebody
    else owns, is refused (IIS keeps each pool's generated config readable only by
    its identity)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot check its permissions: {e.strerror}"
    me = os.geteuid()
    who = "root" if me == 0 else f"uid {me}"
    if st.st_uid != me:
        return (f"holds env values but belongs to uid {st.st_uid}, not {who}: "
                f"chown {who if me else 'root'} and chmod 600 it")
    if st.st_mode & 0o077:
        return (f"holds env values but is readable or writable by others than {who} "
                f"(mode {st.st_mode & 0o777:03o}): chmod 600 it")
    return None


@dataclass(frozen=True)
class BrokenPool:
    """A pool file that failed validation, as `load_pool_files` returns it.

    name: the file's name without .toml (as a PoolConfig's; it may be the invalid name
    that broke it). file: its path. errors: every error of the file, as `load_pools`
    returns them. bindings: the bindings the file claims that parse and that it owns
    (no pool sorting before it claims them), in file order, even when other keys or
    other entries of its `bindings` are wrong. The supervisor routes them to the
    failed pool, so its hosts are answered 503 rather than 404 or by a catch-all pool.
    () when the file cannot be read or parsed, has no `bindings` array, or owns none
    of what it claims."""

    name: str
    file: Path
    errors: tuple[ConfigError, ...]
    bindings: tuple[Binding, ...] = ()


class PoolFileCache:
    """What load_pool_files read of each good pool file, so that a reload re-reads only
    the files that changed: a file whose (mtime, size, inode, mode) and the main file's
    [defaults] are as they were is not read again. A broken file is always read again
    (what broke it may lie outside the file: a directory made since, an account)."""

    def __init__(self):
        self.defaults = None
        self.entries: dict[Path, tuple] = {}    # path -> (stamp, pool, claims)
        self.read = 0                           # files parsed by the last load

    @staticmethod
    def stamp(path: Path):
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid)


def load_pool_files(main: MainConfig, cache: PoolFileCache | None = None
                    ) -> tuple[dict[str, PoolConfig], dict[str, BrokenPool]]:
    """Load every pool file of main.pools_dir.

    Takes: the MainConfig (its [defaults] fill in what pool files leave out), and a
    PoolFileCache to reuse what an earlier load read of unchanged files (None: read
    every file).
    Returns: (good pools by name, broken pools by name -> BrokenPool: its errors and the
    bindings it keeps). A broken file never keeps the others from loading. When two
    pools claim the same binding (same host, port and prefix), the pool whose name
    sorts first owns it and the other is broken, with an error naming both files and
    the binding; a pool's claims count even when it is broken for another reason. So
    every binding is owned by one pool at most, good or broken: the good pools'
    bindings and the broken pools' `bindings` together always make a valid Router.
    Raises: ConfigErrors (an error of the main file) when pools_dir is missing or is
    not a readable directory.
    """
    good: dict[str, PoolConfig] = {}
    broken: dict[str, BrokenPool] = {}
    owners: dict[tuple, tuple[str, Path, Binding]] = {}
    entries: dict[Path, tuple] = {}
    if cache is not None and cache.defaults != main.defaults:
        cache.entries.clear()           # [defaults] changed: every pool may have
    read = 0
    for path in _pool_files(main):  # sorted by name, so the first claimant owns
        name = path.name[:-len(".toml")]
        stamp = PoolFileCache.stamp(path) if cache is not None else None
        hit = cache.entries.get(path) if cache is not None else None
        if hit is not None and stamp is not None and hit[0] == stamp:
            pool, errors, claims = hit[1], [], hit[2]
        else:
            read += 1
            pool, errors, claims = _load_pool(path, main)
        if cache is not None and not errors and stamp is not None:
            entries[path] = (stamp, pool, claims)
        own: list[Binding] = []
        for i, binding in claims:
            key = (binding.host, binding.port, binding.prefix)
            owner = owners.get(key)
            if owner is None:
                owners[key] = (name, path, binding)
                own.append(binding)
            elif owner[0] != name:  # the same pool twice is _bindings' business
                errors.append(ConfigError(
                    path, f"bindings[{i}]",
                    f"binding {binding.text!r} is already claimed by pool {owner[0]!r} "
                    f"({owner[1]}, as {owner[2].text!r})"))
        if errors:
            broken[name] = BrokenPool(name, path, tuple(errors), tuple(own))
            entries.pop(path, None)     # (a conflict found only now: read it again)
        else:
            good[name] = pool
    if cache is not None:
        cache.defaults, cache.entries, cache.read = main.defaults, entries, read
    return good, broken


def load_pools(main: MainConfig) -> tuple[dict[str, PoolConfig], dict[str, list[ConfigError]]]:
    """Load every pool file of main.pools_dir (`load_pool_files`, which also says which
    bindings each broken pool keeps).

    Takes: the MainConfig (its [defaults] fill in what pool files leave out).
    Returns: (good pools by name, broken pools by name -> their errors). A broken file
    never keeps the others from loading. When two pools claim the same binding (same
    host, port and prefix), the pool whose name sorts first owns it and the other is
    broken, with an error naming both files and the binding; a pool's claims count
    even when it is broken for another reason.
    Raises: ConfigErrors (an error of the main file) when pools_dir is missing or is
    not a readable directory.
    """
    good, broken = load_pool_files(main)
    return good, {name: list(b.errors) for name, b in broken.items()}


def tls_default_problem(main: MainConfig, pools: Mapping[str, "PoolConfig"]) -> str | None:
    """Why [hostd] tls_default_pool cannot be used with these pools, or None (unset, or
    a good pool with a [tls] table). A warning, not an error (at start, reload and
    `--check-config`): the pool set is known only once the pool files are loaded, and
    one broken pool file must not stop hostd or a reload. hostd then refuses
    ClientHellos without SNI or with an unbound name, as with "". Takes: the main
    config and the good pools by name."""
    name = main.tls_default_pool
    if not name:
        return None
    pool = pools.get(name)
    if pool is None:
        return (f"{main.path}: hostd.tls_default_pool: {name!r} is not a (working) pool; "
                "hellos without SNI or with an unbound name are refused")
    if pool.tls is None:
        return (f"{main.path}: hostd.tls_default_pool: pool {name!r} has no [tls] table "
                f"({pool.file}); hellos without SNI or with an unbound name are refused")
    return None


# --- hostd --check-config ------------------------------------------------------------
def _format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_config(path=DEFAULT_MAIN_PATH) -> tuple[str, list[ConfigError]]:
    """Check the main file and every pool file, for `hostd --check-config`.

    Takes: the main file's path.
    Returns: (a human summary: listen addresses, each pool with its state and
    bindings; every error found in the main file and all pool files). Never raises
    ConfigErrors: problems are returned.
    """
    main, errors = _read_main(path)
    if main is None:
        return f"{path}: unusable, pools not checked", errors
    lines = [f"main file: {main.path}",
             "listen: " + ", ".join(_format_listen(h, p) for h, p in main.listen),
             f"front ends: {main.frontend_count()}"
             + (" (one per CPU)" if main.frontends == 0 else ""),
             f"pools: {main.pools_dir}"]
    if any(e.key == "hostd.pools_dir" for e in errors):
        lines.append("  (not checked: pools_dir is invalid)")
        return "\n".join(lines), errors
    try:
        good, broken = load_pools(main)
    except ConfigErrors as e:
        errors.extend(e.errors)
        lines.append("  (not checked)")
        return "\n".join(lines), errors
    from hostd import isolation
    root = os.geteuid() == 0
    try:
        known = isolation.IdentityStore(main.state_dir / "identities.json", 0, 0).uids
    except OSError as e:
        known = {}
        lines.append(f"  ({e})")
    for name in sorted({*good, *broken}):
        if name in good:
            pool = good[name]
            lines.append(f"  {name:<16} ok      {pool.start_mode:<14} "
                         + ", ".join(b.text for b in pool.bindings))
            lines.extend(f"  {'':<16} {line}" for line in
                         isolation.describe(pool, root, known).splitlines())
            if pool.interface == "asgi":
                lines.append(f"  {'':<16} asgi: max_concurrency {pool.max_concurrency}, "
                             f"event_loop {pool.event_loop}, lifespan {pool.lifespan}")
            if pool.tls is not None:
                tls_lines, tls_errors = _check_tls(pool)
                lines.extend(f"  {'':<16} {line}" for line in tls_lines)
                errors.extend(tls_errors)
        else:
            n = len(broken[name])
            lines.append(f"  {name:<16} BROKEN  {n} error{'s' if n != 1 else ''}")
            errors.extend(broken[name])
    if main.listen_tls:
        lines.insert(2, "listen_tls: " + ", ".join(_format_listen(h, p)
                                                   for h, p in main.listen_tls))
    problem = tls_default_problem(main, good)
    if problem:
        lines.append(f"warning: {problem}")
    elif main.tls_default_pool:
        lines.append(f"tls_default_pool: {main.tls_default_pool}")
    tls_pools = [p for p in good.values() if p.tls is not None]
    if tls_pools and not main.listen_tls:
        lines.append(f"warning: {len(tls_pools)} pool(s) have [tls] but hostd.listen_tls is "
                     "empty: no TLS connection reaches them")
    lines.append(f"{len(good)} pool(s) ok, {len(broken)} broken, {len(errors)} error(s)")
    if not root:
        lines.append("(checked without root: as root, pools without [isolation] are isolated)")
    return "\n".join(lines), errors


def _check_tls(pool: PoolConfig) -> tuple[list[str], list[ConfigError]]:
    """--check-config of a pool's [tls]: each pair loaded and matched
    (tlsconf.check_pair: this is a process of its own, so loading keys is fine), its
    subject, names and expiry. Returns (summary lines, errors); a certificate that
    expires within tlsconf.EXPIRY_WARNING_DAYS (or has expired) is a "warning:" line,
    not an error."""
    import time
    from hostd import tlsconf
    raw, _ = _read_toml(pool.file)
    table = (raw or {}).get("tls") or {}
    single = isinstance(table, dict) and "certificate" in table
    lines, errors = [f"tls: min_version {pool.tls.min_version}"
                     + (", redirect_http" if pool.tls.redirect_http else "")], []
    for i, (cert, key) in enumerate(pool.tls.pairs):
        where = "tls" if single and i == 0 else f"tls.certificates[{i - int(single)}]"
        problem = tlsconf.check_pair(cert, key, pool.tls.min_version)
        if problem is not None:
            half = "certificate" if problem.startswith("certificate") else "key"
            errors.append(ConfigError(pool.file, f"{where}.{half}", problem))
            lines.append(f"{cert}: DOES NOT LOAD")
            continue
        try:
            info = tlsconf.cert_info(cert)
        except (OSError, ValueError) as e:
            errors.append(ConfigError(pool.file, f"{where}.certificate", str(e)))
            continue
        days = info.expires_in_days()
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(info.not_after))
        lines.append(f"{cert}: {info.subject}; names {', '.join(info.names) or '-'}; "
                     f"expires {until} (in {days:g} days)")
        if days < 0:
            lines.append(f"warning: {pool.file}: {where}.certificate: {cert} EXPIRED on {until}")
        elif days < tlsconf.EXPIRY_WARNING_DAYS:
            lines.append(f"warning: {pool.file}: {where}.certificate: {cert} expires in "
                         f"{days:g} days ({until})")
    return lines, errors
