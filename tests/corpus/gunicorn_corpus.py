"""gunicorn's HTTP request-parser corpus, read as data.

Where it comes from: the sdist of gunicorn GUNICORN_VERSION on PyPI (MIT license, (c)
Benoit Chesneau, Paul J. Davis), which ships tests/requests/valid/ and
tests/requests/invalid/: for each case NAME, NAME.http (the request bytes) and NAME.py
(what gunicorn's parser must make of them). Nothing of it is committed here: `fetch()`
runs `pip download --no-deps --no-binary :all: gunicorn==VERSION`, checks the archive's
sha256 against SDIST_SHA256, and extracts only tests/requests/ and LICENSE into a cache
directory keyed by the version (see `cache_root()`), so a second run reads the cache and
downloads nothing.

How the files are read (as gunicorn's tests/treq.py reads them; checked against 23.0.0):

* NAME.http: the file's real line ends are NOT part of the request (they only wrap long
  lines); the two-character escapes `\\r\\n` become CRLF, then `\\0` NUL, `\\n` LF and
  `\\t` HTAB; any other backslash is an error of the file.
* NAME.py is never executed. `ast` reads it: literals, tuples/lists/dicts of them, names
  bound earlier in the file (req1, req2, certificate), `uri("...")` (gunicorn's helper:
  split here into path, query and fragment), and the str/bytes methods decode, encode and
  replace on such values. `from gunicorn.http.errors import X` + `request = X` gives an
  invalid case's expected error name; `cfg = Config()` + `cfg.set("key", literal)` gives
  the gunicorn settings the case needs. Anything else makes the case unreadable (its
  `problem` says why) instead of being guessed.
"""
from __future__ import annotations

import ast
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

GUNICORN_VERSION = "23.0.0"
SDIST = f"gunicorn-{GUNICORN_VERSION}.tar.gz"
SDIST_SHA256 = "f014447a0101dc57e294f6c18ca6b40227a4c90e9bdb586042628030cba004ec"
LICENSE = "MIT"
SOURCE = f"https://pypi.org/project/gunicorn/{GUNICORN_VERSION}/ (sdist {SDIST})"

REPO = Path(__file__).resolve().parents[2]
_MARKER = ".complete"


class CorpusUnavailable(Exception):
    """The corpus could not be fetched or read; the message says why."""


def cache_root() -> Path:
    """$HOSTD_CORPUS_CACHE if set, else the checkout's .venv (ignored by git), else
    /var/tmp/hostd-corpus."""
    env = os.environ.get("HOSTD_CORPUS_CACHE")
    if env:
        return Path(env)
    venv = REPO / ".venv"
    if venv.is_dir():
        return venv / "hostd-corpus"
    return Path("/var/tmp/hostd-corpus")


def cache_dir() -> Path:
    return cache_root() / f"gunicorn-{GUNICORN_VERSION}"


def fetch(timeout: float = 180.0) -> Path:
    """The directory holding valid/, invalid/ and LICENSE; downloads once per version.
    Raises CorpusUnavailable with the reason."""
    target = cache_dir()
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--timeout", "30", "--retries", "2", "--no-deps", "--no-binary", ":all:",
               f"gunicorn=={GUNICORN_VERSION}", "-d", tmp]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CorpusUnavailable(f"`pip download gunicorn=={GUNICORN_VERSION}` failed: "
                                    f"{exc}") from None
        archive = Path(tmp) / SDIST
        if run.returncode != 0 or not archive.is_file():
            err = (run.stderr or run.stdout).strip().splitlines()
            raise CorpusUnavailable(f"`pip download gunicorn=={GUNICORN_VERSION}` failed "
                                    f"(exit {run.returncode}): {' / '.join(err[-3:])[:400]}")
        data = archive.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != SDIST_SHA256:
            raise CorpusUnavailable(f"{SDIST}: sha256 {digest}, expected {SDIST_SHA256}")
        out = Path(tmp) / "corpus"
        _extract(data, out)
        (out / _MARKER).write_text(f"{SOURCE}\nsha256 {digest}\n")
        try:
            os.rename(out, target)
        except OSError:
            if not (target / _MARKER).is_file():  # not a concurrent run that won the race
                shutil.rmtree(target, ignore_errors=True)
                os.rename(out, target)
    return target


def _extract(data: bytes, out: Path) -> None:
    """Writes tests/requests/{valid,invalid}/* and LICENSE of the sdist under `out`
    (regular files only, plain names only)."""
    top = f"gunicorn-{GUNICORN_VERSION}/"
    n = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if not m.isfile() or not m.name.startswith(top):
                continue
            rel = m.name[len(top):]
            if rel == "LICENSE":
                dest = out / "LICENSE"
            else:
                parts = rel.split("/")
                if len(parts) != 4 or parts[:2] != ["tests", "requests"] \
                        or parts[2] not in ("valid", "invalid") \
                        or not parts[3] or parts[3].startswith(".") \
                        or not parts[3].endswith((".http", ".py")):
                    continue
                dest = out / parts[2] / parts[3]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
            n += 1
    if n < 100:
        raise CorpusUnavailable(f"{SDIST}: only {n} corpus files found under tests/requests/")


# --- reading ---------------------------------------------------------------------------
def decode_http(raw: bytes) -> bytes:
    """A .http file's bytes -> the request bytes (gunicorn's treq.py rules, see above)."""
    data = raw.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\0").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    if b"\\" in data:
        raise ValueError("backslash other than \\r\\n, \\0, \\n, \\t in the test data")
    return data


def uri(raw: str) -> dict:
    """gunicorn's uri() for an origin-form target: raw, path, query, fragment."""
    rest, _, fragment = raw.partition("#")
    path, _, query = rest.partition("?")
    return {"raw": raw, "path": path, "query": query, "fragment": fragment}


class Unreadable(Exception):
    pass


@dataclass(frozen=True)
class ErrorName:
    """An exception class named by an invalid case (`request = InvalidHeader`)."""
    name: str


class _Cfg:
    def __init__(self):
        self.settings: dict = {}


_METHODS = {"decode", "encode", "replace"}


def _eval(node: ast.AST, env: dict):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, env) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise Unreadable("dict unpacking")
        return {_eval(k, env): _eval(v, env) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise Unreadable(f"unknown name {node.id}")
        return env[node.id]
    if isinstance(node, ast.Call) and not node.keywords:
        f = node.func
        if isinstance(f, ast.Name) and f.id == "uri" and len(node.args) == 1:
            raw = _eval(node.args[0], env)
            if not isinstance(raw, str):
                raise Unreadable("uri() of a non-str")
            return uri(raw)
        if isinstance(f, ast.Name) and env.get(f.id) == "<Config>" and not node.args:
            return _Cfg()
        if isinstance(f, ast.Attribute) and f.attr in _METHODS:
            obj = _eval(f.value, env)
            args = [_eval(a, env) for a in node.args]
            if not isinstance(obj, (str, bytes)) or \
                    not all(isinstance(a, (str, bytes)) for a in args):
                raise Unreadable(f".{f.attr}() on a non-literal")
            return getattr(obj, f.attr)(*args)
    raise Unreadable(f"expression {ast.dump(node)[:80]}")


def read_expectation(source: str) -> tuple[object, dict]:
    """A case's .py text -> (request, cfg settings): request is a list of expected
    request dicts (valid cases) or an ErrorName (invalid cases). Raises Unreadable."""
    tree = ast.parse(source)
    env: dict = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                name = alias.asname or alias.name
                if stmt.module == "gunicorn.config" and alias.name == "Config":
                    env[name] = "<Config>"
                elif stmt.module == "gunicorn.http.errors":
                    env[name] = ErrorName(alias.name)
                else:
                    raise Unreadable(f"import from {stmt.module}")
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Name):
            env[stmt.targets[0].id] = _eval(stmt.value, env)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            call = stmt.value
            f = call.func
            if isinstance(f, ast.Attribute) and f.attr == "set" and isinstance(f.value, ast.Name) \
                    and isinstance(env.get(f.value.id), _Cfg) and len(call.args) == 2:
                env[f.value.id].settings[_eval(call.args[0], env)] = _eval(call.args[1], env)
            else:
                raise Unreadable(f"statement at line {stmt.lineno}")
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        else:
            raise Unreadable(f"statement at line {stmt.lineno}")
    if "request" not in env:
        raise Unreadable("no `request`")
    request = env["request"]
    cfg = env["cfg"].settings if isinstance(env.get("cfg"), _Cfg) else {}
    if isinstance(request, dict):
        request = [request]
    if isinstance(request, list):
        for r in request:
            if not isinstance(r, dict) or not {"method", "uri", "version", "headers",
                                                "body"} <= set(r):
                raise Unreadable("a request without method/uri/version/headers/body")
    elif not isinstance(request, ErrorName):
        raise Unreadable(f"request is a {type(request).__name__}")
    return request, cfg


@dataclass
class Case:
    name: str                   # "valid/001", "invalid/chunked_07"
    kind: str                   # "valid" | "invalid"
    data: bytes                 # the request bytes
    requests: list = field(default_factory=list)   # valid: expected request dicts
    error: str | None = None    # invalid: gunicorn's exception class name
    cfg: dict = field(default_factory=dict)        # gunicorn settings the case sets
    problem: str | None = None  # why the case could not be read, or None


def load_cases(root: Path) -> list[Case]:
    cases = []
    for kind in ("valid", "invalid"):
        for http in sorted((root / kind).glob("*.http")):
            name = f"{kind}/{http.stem}"
            case = Case(name, kind, b"")
            try:
                case.data = decode_http(http.read_bytes())
                request, case.cfg = read_expectation(
                    http.with_suffix(".py").read_text(encoding="utf-8"))
            except (OSError, ValueError, SyntaxError, Unreadable) as exc:
                case.problem = f"{type(exc).__name__}: {exc}"
            else:
                if kind == "valid" and isinstance(request, list):
                    case.requests = request
                elif kind == "invalid" and isinstance(request, ErrorName):
                    case.error = request.name
                else:
                    case.problem = f"a {kind} case whose expectation is {request!r:.60}"
            cases.append(case)
    return cases
