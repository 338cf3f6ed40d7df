"""Real ASGI frameworks for the issue 15 tests, in a virtualenv of the tests' own.

The APPS' virtualenv, FRAMEWORKS below (FastAPI, pydantic, Starlette, Django, uvloop and
what they need, every version pinned for Python 3.11), is built once and cached (nothing of
it is committed): the test pools name it as their `virtualenv`, so hostd's workers import
the frameworks from it, as a site would. The test process never imports from it (its
pydantic, typing_extensions, ... must not shadow hostd's packages there).

The tests' WebSocket client is the `websockets` library's asyncio client, from hostd's own
environment (a hostd dependency: the worker frames WebSockets with its sans-I/O Protocol).
Client and server thus share that library's frame parser, so the WebSocket tests also speak
hand-built frames over raw sockets (masking, fragments, ping/pong, close codes): a bug
common to both sides of the library cannot hide there.

Cache: $HOSTD_FRAMEWORKS_CACHE if set, else the checkout's .venv/hostd-frameworks/ (ignored
by git, as tests/corpus' cache), else /var/tmp/hostd-frameworks; one directory per hash of
(Python version, FRAMEWORKS), so a changed pin builds a new one and a second run installs
nothing. A `.complete` marker says a build finished; an flock serialises two
runs building at once. pip reaches PyPI (`--only-binary :all:`: wheels only, no compiler,
bounded by timeouts); when it cannot (no network), `ensure()` raises
FrameworksUnavailable with pip's last lines, and the `frameworks` fixture SKIPS every test
that needs it with that reason (pyproject's `-ra` makes `pytest -q` print it).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: the apps' virtualenv: pip freeze of `fastapi starlette pydantic 'django<6' uvloop` on
#: Python 3.11 (Django 6 needs 3.12), all pinned so the cache key says what is in it
FRAMEWORKS = (
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "anyio==4.16.0",
    "idna==3.20",
    "opentelemetry-api==1.45.2",
    "Django==5.2.19",
    "asgiref==3.13.0",
    "sqlparse==0.6.1",
    "uvloop==0.23.0",
)

_MARKER = ".complete"
BUILD_TIMEOUT = 600.0


class FrameworksUnavailable(Exception):
    """The virtualenv could not be built; the message says why."""


@dataclass(frozen=True)
class Frameworks:
    root: Path           # the cache directory of this requirement set
    venv: Path           # the apps' virtualenv (a pool's `virtualenv`)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def cache_root() -> Path:
    env = os.environ.get("HOSTD_FRAMEWORKS_CACHE")
    if env:
        return Path(env)
    venv = REPO / ".venv"
    if venv.is_dir():
        return venv / "hostd-frameworks"
    return Path("/var/tmp/hostd-frameworks")


def key() -> str:
    text = "\n".join([sys.implementation.name, "%d.%d" % sys.version_info[:2],
                      *FRAMEWORKS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _layout() -> Frameworks:
    root = cache_root() / key()
    return Frameworks(root=root, venv=root / "venv")


def _run(cmd: list[str], what: str, timeout: float) -> None:
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise FrameworksUnavailable(f"{what}: no result within {timeout:.0f}s") from None
    except OSError as exc:
        raise FrameworksUnavailable(f"{what}: {exc}") from None
    if run.returncode != 0:
        lines = [ln for ln in (run.stderr or run.stdout).strip().splitlines()
                 if not ln.startswith("WARNING: Location")]
        lines = [ln for ln in lines if ln.startswith("ERROR")] or lines
        raise FrameworksUnavailable(f"{what} failed (exit {run.returncode}): "
                                    f"{' / '.join(lines[-3:])[:500]}")


def _pip_flags() -> list[str]:
    return ["--quiet", "--disable-pip-version-check", "--no-input", "--timeout", "30",
            "--retries", "2", "--only-binary", ":all:"]


def _build(fw: Frameworks) -> None:
    shutil.rmtree(fw.root, ignore_errors=True)
    fw.root.mkdir(parents=True)
    _run([sys.executable, "-m", "venv", str(fw.venv)], "python -m venv", 120)
    _run([str(fw.python), "-m", "pip", "install", *_pip_flags(), *FRAMEWORKS],
         f"pip install {' '.join(FRAMEWORKS[:1])} ... (the apps' frameworks)", BUILD_TIMEOUT)
    probe = ("import fastapi, starlette, pydantic, django, uvloop; "
             "from django.core.asgi import get_asgi_application")
    _run([str(fw.python), "-c", probe], "importing the frameworks from the new venv", 60)
    # readable by any pool's uid: isolated workers import from it as their own user
    for dirpath, dirnames, filenames in os.walk(fw.root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
    (fw.root / _MARKER).write_text("\n".join(FRAMEWORKS) + "\n")


def ensure() -> Frameworks:
    """The built (or cached) frameworks; raises FrameworksUnavailable with the reason."""
    fw = _layout()
    if (fw.root / _MARKER).is_file():
        return fw
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f".lock-{key()}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (fw.root / _MARKER).is_file():       # not built meanwhile by another run
            try:
                _build(fw)
            except BaseException:
                shutil.rmtree(fw.root, ignore_errors=True)
                raise
    return fw


_failure: str | None = None


def _ensure_or_skip() -> Frameworks:
    global _failure
    if _failure is None:
        try:
            return ensure()
        except FrameworksUnavailable as exc:
            _failure = f"ASGI frameworks venv unavailable (FastAPI/Starlette/Django from PyPI): {exc}"
    pytest.skip(_failure)


def client():
    """The `websockets` package (>= 13: websockets.asyncio.client) of the test process."""
    try:
        import websockets
        import websockets.asyncio.client  # noqa: F401
        import websockets.exceptions  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the websockets client library (a hostd dependency, >= 13) is missing "
                    f"from the test environment: {exc}; run ./install.sh")
    return websockets


@pytest.fixture(scope="session")
def frameworks() -> Frameworks:
    """The apps' venv; every test using it is skipped (with pip's reason) without it."""
    return _ensure_or_skip()


@pytest.fixture(scope="session")
def wslib():
    """The `websockets` client package (see the module doc)."""
    return client()
