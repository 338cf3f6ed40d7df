"""The pure-Python request path passes the same tests as the C one (issue 13).

The suite runs with workers/_h1fast.c when it is built (install.sh builds it). This test
runs the request-path suites again in a child pytest with HOSTD_PURE_PYTHON=1, which turns
the C path off in every process hostd starts (front end, zygote, workers inherit the
environment), and checks that the child's hostd did run without it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hostd_harness import APPS, REPO, Hostd

#: every test of the worker's and the front end's HTTP/1.1 handling
SUITES = [
    "tests/unit/test_headrules.py",
    "tests/integration/test_worker_http.py",
    "tests/integration/test_exactness.py",
    "tests/integration/test_hostile.py",
    "tests/integration/test_corpus.py",
    "tests/integration/test_core.py",
    "tests/integration/test_limits.py",
    "tests/integration/test_worker_tls_http.py",
    "tests/integration/test_tls.py",
]
PURE = os.environ.get("HOSTD_PURE_PYTHON", "") not in ("", "0")


@pytest.mark.skipif(PURE, reason="this is the pure-Python run")
def test_request_path_suites_pass_without_the_c_path():
    env = dict(os.environ, HOSTD_PURE_PYTHON="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           *SUITES, __file__], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "PASSED tests/integration/test_pure_python.py::test_this_run_is_pure_python" \
        in proc.stdout, tail


@pytest.mark.skipif(not PURE, reason="only in the pure-Python run (the test above starts it)")
def test_this_run_is_pure_python(tmp_path):
    h = Hostd(tmp_path, {"alpha": {"app": "core_app:application", "directory": str(APPS),
                                   "bindings": ["*"]}})
    h.start()
    try:
        status, _headers, _body = h.get("alpha.test")
        assert status == 200
        assert "workers' request path: pure Python (HOSTD_PURE_PYTHON is set)" in h.log()
    finally:
        h.stop()
