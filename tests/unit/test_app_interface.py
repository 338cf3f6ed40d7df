"""workers.app.check_interface: a WSGI pool's app that looks like ASGI (or the other way
round) is refused with a TypeError saying which `interface = ...` to set. The shapes are
those of the real frameworks, written here (no framework is imported): Flask's and
Django's WSGIHandler (an instance whose __call__ takes environ, start_response),
Starlette's/FastAPI's and Django's ASGIHandler (an async __call__(scope, receive, send)),
plain functions, bound methods, functools.partial, classes, decorated apps and callables
whose signature cannot be read."""
import functools

import pytest

from workers.app import check_interface, interface_of


# --- the shapes ----------------------------------------------------------------------
class Flask:                        # flask.Flask: wsgi_app + __call__
    def wsgi_app(self, environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    def __call__(self, environ, start_response):
        return self.wsgi_app(environ, start_response)


class WSGIHandler:                  # django.core.handlers.wsgi.WSGIHandler
    request_class = None

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, environ, start_response):
        return []


class Starlette:                    # starlette.applications.Starlette (FastAPI subclasses it)
    def __init__(self, debug=False, routes=None, middleware=None, lifespan=None):
        self.debug = debug

    async def __call__(self, scope, receive, send):
        scope["app"] = self


class FastAPI(Starlette):
    pass


class ASGIHandler:                  # django.core.handlers.asgi.ASGIHandler
    async def __call__(self, scope, receive, send):
        pass


class ProxyHeadersMiddleware:       # a sync-looking ASGI middleware: returns the awaitable
    def __init__(self, app):
        self.app = app

    def __call__(self, scope, receive, send):
        return self.app(scope, receive, send)


class ASGI3Class:                   # ASGI 3 allows a class: Class(scope, receive, send) awaitable
    def __init__(self, scope, receive, send):
        self.scope = scope

    def __await__(self):
        yield


class WSGIClass:                    # PEP 3333 allows a class: Class(environ, start_response) iterable
    def __init__(self, environ, start_response):
        self.environ = environ

    def __iter__(self):
        yield b"ok"


def wsgi_function(environ, start_response):
    return [b"ok"]


async def asgi_function(scope, receive, send):
    pass


def asgi_sync_function(scope, receive, send):      # returns a coroutine
    return asgi_function(scope, receive, send)


async def asgi_with_extra(config, scope, receive, send):
    pass


def wsgi_with_default(environ, start_response, extra=None):     # 2 or 3: cannot tell
    return []


def anything(*args):
    return None


def wsgi_decorator(app):
    @functools.wraps(app)
    def wrapper(environ, start_response):
        return app(environ, start_response)
    return wrapper


ASGI_APPS = {
    "Starlette instance": Starlette(),
    "FastAPI instance": FastAPI(),
    "Django ASGIHandler": ASGIHandler(),
    "async function": asgi_function,
    "3-argument sync function": asgi_sync_function,
    "sync middleware instance": ProxyHeadersMiddleware(asgi_function),
    "bound async method": Starlette().__call__,
    "partial of an async function": functools.partial(asgi_with_extra, {"debug": True}),
    "partial of an async instance": functools.partial(FastAPI()),
    "ASGI 3 class": ASGI3Class,
    "async lambda-like": (lambda scope, receive, send: asgi_function(scope, receive, send)),
}
WSGI_APPS = {
    "Flask instance": Flask(),
    "Django WSGIHandler": WSGIHandler(),
    "function": wsgi_function,
    "bound method": Flask().wsgi_app,
    "partial": functools.partial(wsgi_with_default, extra=1),
    "decorated function": wsgi_decorator(wsgi_function),
    "WSGI class": WSGIClass,
}
UNKNOWN = {
    "builtin without a signature": getattr,
    "C type": dict,
    "*args": anything,
    "2 or 3 arguments": wsgi_with_default,
    "ASGI 2 double callable": (lambda scope: asgi_function),
}


@pytest.mark.parametrize("name", ASGI_APPS)
def test_asgi_shapes(name):
    app = ASGI_APPS[name]
    assert interface_of(app)[0] == "asgi"
    check_interface(app, "asgi")
    with pytest.raises(TypeError) as info:
        check_interface(app, "wsgi")
    message = str(info.value)
    assert 'set interface = "asgi"' in message and 'interface is "wsgi"' in message
    assert "looks like an ASGI app" in message


@pytest.mark.parametrize("name", WSGI_APPS)
def test_wsgi_shapes(name):
    app = WSGI_APPS[name]
    assert interface_of(app)[0] == "wsgi"
    check_interface(app, "wsgi")
    with pytest.raises(TypeError) as info:
        check_interface(app, "asgi")
    message = str(info.value)
    assert 'set interface = "wsgi"' in message and 'interface is "asgi"' in message
    assert "looks like a WSGI app" in message


@pytest.mark.parametrize("name", UNKNOWN)
def test_what_cannot_be_told_is_let_through(name):
    app = UNKNOWN[name]
    assert interface_of(app)[0] is None
    check_interface(app, "wsgi")
    check_interface(app, "asgi")


def test_messages_name_the_app_and_say_why():
    with pytest.raises(TypeError) as info:
        check_interface(FastAPI(), "wsgi")
    assert str(info.value) == (
        f"{__name__}.FastAPI instance looks like an ASGI app (its __call__ is a coroutine "
        'function), but the pool\'s interface is "wsgi": set interface = "asgi" in the pool '
        "file")
    with pytest.raises(TypeError) as info:
        check_interface(wsgi_function, "asgi")
    assert str(info.value).startswith(f"{__name__}.wsgi_function looks like ")
    assert "(environ, start_response)" in str(info.value)
    with pytest.raises(TypeError) as info:
        check_interface(asgi_sync_function, "wsgi")
    assert "3 positional arguments (scope, receive, send)" in str(info.value)
    with pytest.raises(TypeError) as info:
        check_interface(functools.partial(asgi_with_extra, {}), "wsgi")
    assert str(info.value).startswith(f"functools.partial of {__name__}.asgi_with_extra ")


def test_asgiref_marked_coroutine_functions_count():
    """asgiref.sync.markcoroutinefunction (Django's async middleware on Python < 3.12)
    marks a sync function with asyncio's _is_coroutine; it counts as a coroutine."""
    import asyncio.coroutines
    mark = getattr(asyncio.coroutines, "_is_coroutine", None)
    if mark is None:
        pytest.skip("this Python's asyncio has no _is_coroutine marker")

    def handler(scope):               # 1 argument: only the marker says ASGI
        return None
    assert interface_of(handler)[0] is None
    handler._is_coroutine = mark
    assert interface_of(handler)[0] == "asgi"


def test_an_unknown_interface_is_a_value_error():
    with pytest.raises(ValueError):
        check_interface(wsgi_function, "rsgi")
