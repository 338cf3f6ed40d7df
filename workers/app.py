"""Loading a pool's WSGI or ASGI application into a worker process.

The worker is forked from the zygote with no application imported; `load_app` makes the
process look like the application's own interpreter (working directory, sys.path,
virtualenv, environment variables) and returns the callable; `check_interface` says
whether that callable looks like the pool's `interface`.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import site
import sys


def _site_packages(venv: str) -> list[str]:
    """The site-packages directories of a virtualenv built for this Python version."""
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    dirs = []
    for lib in ("lib", "lib64"):
        d = os.path.join(venv, lib, ver, "site-packages")
        if os.path.isdir(d) and os.path.realpath(d) not in map(os.path.realpath, dirs):
            dirs.append(d)
    return dirs


def prepare_environment(config: dict) -> None:
    """Applies the pool's directory, virtualenv and environment variables to this process.

    Takes: the pool config ({"directory", "virtualenv", "env", ...}).
    Raises: OSError when the directory does not exist; ValueError for a virtualenv
    without a site-packages directory for this Python.
    """
    directory = config.get("directory")
    if directory:
        os.chdir(directory)
        directory = os.path.abspath(directory)
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)
    venv = config.get("virtualenv")
    if venv:
        dirs = _site_packages(venv)
        if not dirs:
            raise ValueError(f"virtualenv {venv!r} has no lib/python"
                             f"{sys.version_info[0]}.{sys.version_info[1]}/site-packages")
        for d in dirs:
            site.addsitedir(d)
        # addsitedir appends; the app's own packages must win over the runtime's
        for d in reversed(dirs):
            sys.path.remove(d)
            sys.path.insert(1 if directory else 0, d)
        os.environ["VIRTUAL_ENV"] = venv
    for key, value in (config.get("env") or {}).items():
        os.environ[str(key)] = str(value)


def resolve(spec: str):
    """Imports "module:callable" and returns the callable.

    "module" alone means "module:application". The callable part may be dotted
    ("module:obj.attr"); a trailing "()" calls it with no arguments (an app factory).
    Raises: ImportError, AttributeError, TypeError (not callable).
    """
    modname, _, attr = spec.partition(":")
    attr = attr.strip() or "application"
    factory = attr.endswith("()")
    if factory:
        attr = attr[:-2]
    module = importlib.import_module(modname.strip())
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"{spec!r}: module {modname!r} has no attribute "
                                 f"{attr!r}") from None
    if factory:
        obj = obj()
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable ({type(obj).__name__})")
    return obj


def load_app(config: dict):
    """Prepares the process for the pool and returns its WSGI (or ASGI) callable.
    Raises whatever the import raises."""
    prepare_environment(config)
    app = config.get("app")
    if not app or not isinstance(app, str):
        raise ValueError("pool config has no \"app\" (\"module:callable\")")
    return resolve(app)


# --- interface ---------------------------------------------------------------------
def _is_coroutine_function(func) -> bool:
    """inspect's verdict, or asgiref's marker (asgiref.sync.markcoroutinefunction sets
    asyncio's `_is_coroutine` on Pythons before 3.12: Django's async views and
    middleware). asyncio is not imported for this: a function can carry the marker
    only once something imported it."""
    if inspect.iscoroutinefunction(func):
        return True
    aio = sys.modules.get("asyncio")
    mark = getattr(getattr(aio, "coroutines", None), "_is_coroutine", None)
    return mark is not None and getattr(func, "_is_coroutine", None) is mark


def _positional(obj) -> tuple[int, float] | None:
    """(required, most) positional arguments a call of obj takes (most: inf with
    *args), or None when its signature cannot be read (a builtin, a C extension type:
    inspect.signature raises ValueError or TypeError)."""
    try:
        sig = inspect.signature(obj)
    except (ValueError, TypeError):
        return None
    required, most = 0, 0.0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            most += 1
            if p.default is p.empty:
                required += 1
        elif p.kind is p.VAR_POSITIONAL:
            most = float("inf")
    return required, most


def _describe(app) -> str:
    """A name for messages: "module.function", "module.Class instance", ..."""
    target = app.func if isinstance(app, functools.partial) else app
    if inspect.isfunction(target) or inspect.ismethod(target) or inspect.isclass(target):
        name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
    else:
        cls = type(target)
        name = f"{cls.__module__}.{cls.__qualname__} instance"
    return f"functools.partial of {name}" if target is not app else name


def interface_of(app) -> tuple[str | None, str]:
    """What app looks like: ("asgi" | "wsgi" | None, why in words).

    "asgi": a coroutine function, or an object whose __call__ is one (a bound method
    or a functools.partial of one counts as what it wraps), or a callable that takes
    3 positional arguments (scope, receive, send) and not 2. "wsgi": not a coroutine
    function, and takes 2 positional arguments (environ, start_response) and not 3. A
    class counts by its constructor (calling it is what the server does). None: it
    cannot be told (a signature that cannot be read, *args, 1 argument as an ASGI 2
    double callable has): the caller lets it through.
    """
    target = app
    while isinstance(target, functools.partial):
        target = target.func
    if not inspect.isclass(target):
        if _is_coroutine_function(target):
            return "asgi", "it is a coroutine function"
        call = getattr(target, "__call__", None)
        if not (inspect.isfunction(target) or inspect.ismethod(target)) and \
                call is not None and _is_coroutine_function(call):
            return "asgi", "its __call__ is a coroutine function"
    counts = _positional(app)
    if counts is None:
        return None, "its signature cannot be read"
    required, most = counts
    takes = lambda n: required <= n <= most
    if takes(3) and not takes(2):
        return "asgi", "it takes 3 positional arguments (scope, receive, send)"
    if takes(2) and not takes(3):
        return "wsgi", ("it takes 2 positional arguments (environ, start_response) and is "
                        "not a coroutine function")
    return None, "its arguments fit neither"


def check_interface(app, interface: str) -> None:
    """Refuses an app that looks like the other interface than its pool's.

    Takes: the loaded app callable, and the pool's `interface` ("wsgi" | "asgi").
    Raises: TypeError saying which `interface = ...` to set in the pool file, when a
    WSGI pool's app looks like an ASGI app or an ASGI pool's like a WSGI app (see
    interface_of); nothing when the app cannot be told (lenient: a signature that
    cannot be read is let through). ValueError for an unknown interface.
    """
    if interface not in ("wsgi", "asgi"):
        raise ValueError(f"interface must be \"wsgi\" or \"asgi\", not {interface!r}")
    looks, why = interface_of(app)
    if looks is None or looks == interface:
        return
    article = "an" if looks == "asgi" else "a"
    raise TypeError(f"{_describe(app)} looks like {article} {looks.upper()} app ({why}), but the "
                    f"pool's interface is \"{interface}\": set interface = \"{looks}\" in "
                    "the pool file")
