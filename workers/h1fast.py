"""The worker's HTTP/1.1 hot path in C (workers/_h1fast.c), when it is built and not
turned off; else None, and the pure-Python path serves every request.

`parse(data, base_env, max_head, max_url, max_body)` takes the common request read whole
in one recv() (see the C file's header for exactly which) and returns (env, url, clen,
body, keep_alive, http11, host), or None for anything else: the full reader
(workers/h1read.py: httptools + hostd/limits.py) then reads the same bytes and answers
them as it always does. It never refuses a request; it only takes ones the full reader
takes, with the same environ (tests/unit/test_h1fast.py).

`head(status, headers, known_len, http11, close_after, nobody)` builds the response
head when the status and every header are plain ASCII and Content-Length is plain digits:
(head, clen, close_after, chunked, nobody), or None: workers/h1write.py's `_head_py`
builds it (and raises HeaderError for a bad status or header).

HOSTD_PURE_PYTHON=1 in the environment turns the C path off (the tests run both).
"""
from __future__ import annotations

import os

parse = None
head = None
date = None
#: why the C path is off ("" when it is on)
OFF_REASON = ""

if os.environ.get("HOSTD_PURE_PYTHON", "") not in ("", "0"):
    OFF_REASON = "HOSTD_PURE_PYTHON is set"
else:
    try:
        from workers._h1fast import date, head, parse  # noqa: F811
    except ImportError as exc:
        OFF_REASON = f"workers._h1fast is not built ({exc})"

ENABLED = parse is not None


def describe() -> str:
    """One line for logs and --version: which request path the workers run."""
    return "C (workers/_h1fast.c)" if ENABLED else f"pure Python ({OFF_REASON})"
