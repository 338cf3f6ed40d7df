"""Pure pieces of the worker runtime: message boundary recovery, response header
checks, request header names, app loading."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from workers.http import _hkey, message_offset
from workers.wsgi import (K_CONNECTION, K_DATE, K_HOP, K_LENGTH, K_PLAIN, K_SERVER,
                          HeaderError, header_kind, status_line)

GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
POST_CL = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
POST_CHUNKED = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n")


@pytest.mark.parametrize("msgs", [
    [GET, GET, GET],
    [POST_CL, GET, POST_CHUNKED, GET],
    [POST_CHUNKED, POST_CHUNKED, POST_CL],
])
def test_message_offset_finds_every_start(msgs):
    buf = b"".join(msgs)
    for k in range(len(msgs)):
        assert message_offset(buf, k) == sum(map(len, msgs[:k]))


def test_message_offset_with_a_partial_tail():
    buf = POST_CL + GET[:10]
    assert message_offset(buf, 1) == len(POST_CL)
    assert message_offset(buf, 2) == -1


def test_header_kinds():
    assert header_kind("Content-Type") == K_PLAIN
    assert header_kind("content-length") == K_LENGTH
    assert header_kind("Connection") == K_CONNECTION
    assert header_kind("Transfer-Encoding") == K_HOP
    assert header_kind("Keep-Alive") == K_HOP
    assert header_kind("Date") == K_DATE
    assert header_kind("Server") == K_SERVER
    for bad in ("Bad Name", "X:Y", "", "X\r\nY", "Ünicode", b"X-Bytes", None):
        with pytest.raises(HeaderError):
            header_kind(bad)


def test_status_lines():
    assert status_line("200 OK") == ("HTTP/1.1 200 OK\r\n", 200)
    assert status_line("404 Not Found") == ("HTTP/1.1 404 Not Found\r\n", 404)
    assert status_line("599") == ("HTTP/1.1 599\r\n", 599)
    for bad in ("OK", "20 OK", "200OK", "200 OK\r\nX: y", "099 x", b"200 OK", 200,
                "200 caf\u20ac"):
        with pytest.raises(HeaderError):
            status_line(bad)


def test_request_header_names_to_environ_keys():
    assert _hkey(b"Host") == "HTTP_HOST"
    assert _hkey(b"x-forwarded-for") == "HTTP_X_FORWARDED_FOR"
    assert _hkey(b"Content-Type") == "CONTENT_TYPE"
    assert _hkey(b"content-length") == "CONTENT_LENGTH"
    assert _hkey(b"X_Forwarded_For") == ""  # underscores: dropped (spoofing defence)


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    """App loading changes the process (cwd, sys.path, environ): test it in a child."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_load_app_directory_virtualenv_env_and_factory(tmp_path):
    appdir = tmp_path / "site"
    appdir.mkdir()
    (appdir / "myapp.py").write_text(textwrap.dedent("""
        import os, venvonly
        class Holder:
            def make():
                def app(environ, start_response):
                    return [venvonly.VALUE, os.environ["GREETING"].encode()]
                return app
            make = staticmethod(make)
        app = Holder.make()
    """))
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    sp = tmp_path / "venv" / "lib" / ver / "site-packages"
    sp.mkdir(parents=True)
    (sp / "venvonly.py").write_text("VALUE = b'from-venv'\n")
    result = _run(f"""
        import os
        from workers.app import load_app
        for spec in ("myapp:app", "myapp:Holder.make()", "myapp"):
            cfg = {{"app": spec, "directory": {str(appdir)!r},
                   "virtualenv": {str(tmp_path / 'venv')!r}, "env": {{"GREETING": "hi"}}}}
            if spec == "myapp":
                import myapp; myapp.application = myapp.app
            app = load_app(cfg)
            assert app({{}}, None) == [b"from-venv", b"hi"], spec
        assert os.getcwd() == {str(appdir)!r}
        print("ok")
    """, cwd=os.getcwd())
    assert result.stdout.strip() == "ok", result.stderr


def test_load_app_errors(tmp_path):
    (tmp_path / "notcallable.py").write_text("app = 3\n")
    result = _run(f"""
        from workers.app import load_app
        for spec, exc in (("notcallable:app", TypeError), ("notcallable:nope", AttributeError),
                          ("missing_mod_xyz:app", ImportError), ("", ValueError)):
            try:
                load_app({{"app": spec, "directory": {str(tmp_path)!r}}})
            except exc:
                pass
            else:
                raise SystemExit(f"{{spec}} loaded")
        print("ok")
    """, cwd=os.getcwd())
    assert result.stdout.strip() == "ok", result.stderr
