"""Pressure stall information (PSI): how much of the time tasks stalled for lack of a
resource, as the kernel reports it in /proc/pressure/<resource> (the whole host) and,
on cgroup v2, in <cgroup>/<resource>.pressure (that cgroup and below).

    some avg10=1.23 avg60=0.50 avg300=0.10 total=123456
    full avg10=0.00 avg60=0.00 avg300=0.00 total=7890

`parse` is pure; `source` finds the file hostd should watch; `read` reads one.
"""
from __future__ import annotations

import os

#: the lines ("some": at least one task stalled; "full": all non-idle tasks did) and
#: the windows (running averages over 10, 60, 300 s, in percent of wall time)
KINDS = ("some", "full")
WINDOWS = ("avg10", "avg60", "avg300")


def parse(text: str) -> dict[str, dict[str, float]]:
    """Takes the text of a pressure file. Returns {"some": {"avg10": 1.23, ...,
    "total": 123456.0}, "full": {...}} (a kind the file lacks is absent: the host-wide
    cpu file had no "full" line before 5.13).
    Raises ValueError when a line is not "<kind> key=value ..."."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        kind, *fields = line.split()
        values = {}
        for f in fields:
            key, sep, value = f.partition("=")
            if not sep:
                raise ValueError(f"not a pressure line: {line!r}")
            values[key] = float(value)
        out[kind] = values
    return out


def read(path: str) -> dict[str, dict[str, float]]:
    """parse() of the file at path. Raises OSError, ValueError."""
    with open(path) as f:
        return parse(f.read())


def _own_v2_dirs(proc_cgroup: str, root: str) -> list[str]:
    """The directories of the v2 cgroup this process is in, under the places a unified
    hierarchy is mounted (root itself on a v2 host, root/unified on a hybrid one)."""
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            path = path.strip() or "/"
            return [os.path.join(root, path.lstrip("/")),
                    os.path.join(root, "unified", path.lstrip("/"))]
    return []


def source(resource: str = "memory", *, root: str = "/sys/fs/cgroup",
           proc: str = "/proc", first: str | None = None) -> str | None:
    """The pressure file to watch for `resource`: `first` if given and readable (hostd's
    v2 cgroup base, which holds its pools), else the v2 cgroup this process runs in
    (under systemd, its unit), else the host's /proc/pressure/<resource>. Returns its
    path, or None when none can be read (a kernel without CONFIG_PSI, or psi=0)."""
    candidates = [first] if first else []
    try:
        with open(os.path.join(proc, "self", "cgroup")) as f:
            candidates += [os.path.join(d, f"{resource}.pressure")
                           for d in _own_v2_dirs(f.read(), root)]
    except OSError:
        pass
    candidates.append(os.path.join(proc, "pressure", resource))
    for path in candidates:
        try:
            read(path)
        except (OSError, ValueError):
            continue
        return path
    return None
