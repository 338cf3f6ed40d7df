"""Events and messages, one line each.

Every record is an event name plus key=value fields and a syslog priority. Here they go
to stderr as `<PRIO>EVENT key=value ...` (the prefix is what systemd's stderr capture and
`logger --prio-prefix` understand). The journald native backend of the systemd issue
plugs in behind `emit`.

Values with spaces, quotes or newlines are written as JSON strings, so a line can
always be split back into its fields.
"""
from __future__ import annotations

import json
import os
import sys

EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)

_proc = "hostd"


def set_process(name: str) -> None:
    """Names the process in every line (e.g. "supervisor", "frontend-0", "worker alpha#3")."""
    global _proc
    _proc = name


def _fmt(value) -> str:
    s = value if isinstance(value, str) else str(value)
    if not s or any(c in s for c in ' "=\n\r\t\\'):
        return json.dumps(s)
    return s


def emit(priority: int, event: str, message: str = "", **fields) -> None:
    """Writes one record. Takes a priority (ERR..DEBUG), an event name (start, ready,
    crash, config_error, ...), a human message, and fields (POOL=, WORKER_PID=, REASON=,
    ... by convention upper-case). Never raises: logging must not take a process down."""
    parts = [f"<{priority}>{event}", f"proc={_fmt(_proc)}", f"pid={os.getpid()}"]
    for k, v in fields.items():
        if v is not None:
            parts.append(f"{k}={_fmt(v)}")
    if message:
        parts.append(f"msg={_fmt(message)}")
    try:
        sys.stderr.write(" ".join(parts) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def info(event: str, message: str = "", **fields) -> None:
    emit(INFO, event, message, **fields)


def notice(event: str, message: str = "", **fields) -> None:
    emit(NOTICE, event, message, **fields)


def warning(event: str, message: str = "", **fields) -> None:
    emit(WARNING, event, message, **fields)


def error(event: str, message: str = "", **fields) -> None:
    emit(ERR, event, message, **fields)
