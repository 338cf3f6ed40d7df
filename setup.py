"""The one piece of hostd that is not pure Python: workers/_h1fast.c, the worker's
HTTP/1.1 hot path for the common request (see workers/h1fast.py). It is optional: when
it cannot be built (no compiler, no Python headers) hostd runs the pure-Python path,
which passes the same tests. Everything else is in pyproject.toml."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("workers._h1fast", ["workers/_h1fast.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers"])])
