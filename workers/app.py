"""Loading a pool's WSGI application into a worker process.

The worker is forked from the zygote with no application imported; `load_app` makes the
process look like the application's own interpreter (working directory, sys.path,
virtualenv, environment variables) and returns the callable.
"""
from __future__ import annotations

import importlib
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
    """Prepares the process for the pool and returns its WSGI callable.
    Raises whatever the import raises."""
    prepare_environment(config)
    app = config.get("app")
    if not app or not isinstance(app, str):
        raise ValueError("pool config has no \"app\" (\"module:callable\")")
    return resolve(app)
