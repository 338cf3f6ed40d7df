"""A Starlette app for the WebSocket tests (tests/integration/test_asgi_websocket.py).

WS /ws/echo?tag=T: accepts with subprotocol "chat.v2" when the client offers it (else
none) and an `x-app` response header; echoes text and binary messages; the text "pid" is
answered with the worker's pid, "count" with the number of messages received so far, and
"close:CODE" makes the app close with CODE and reason "server-bye". When the connection
ends, the app writes ASGI_MARKERS/close-T.json: {"code", "reason", "by": "client"|"app",
"messages", "pid"}.
WS /ws/deny: closes before accepting (the server answers the handshake 403).
GET /pid: the worker's pid. Lifespan startup/shutdown write startup-<pid>/shutdown-<pid>.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

MARKERS = os.environ.get("ASGI_MARKERS", "")


def _mark(name: str, doc: dict) -> None:
    if not MARKERS:
        return
    path = os.path.join(MARKERS, name)
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.rename(path + ".tmp", path)


@contextlib.asynccontextmanager
async def lifespan(app):
    _mark(f"startup-{os.getpid()}", {"pid": os.getpid(), "at": time.time()})
    yield
    _mark(f"shutdown-{os.getpid()}", {"pid": os.getpid(), "at": time.time()})


async def pid(request):
    return PlainTextResponse(str(os.getpid()))


async def echo(websocket: WebSocket):
    tag = websocket.query_params.get("tag", "")
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="chat.v2" if "chat.v2" in offered else None,
                           headers=[(b"x-app", b"asgi-starlette")])
    count = 0
    while True:
        msg = await websocket.receive()
        if msg["type"] == "websocket.disconnect":
            if tag:
                _mark(f"close-{tag}.json", {"code": msg.get("code"), "reason": msg.get("reason"),
                                            "by": "client", "messages": count,
                                            "pid": os.getpid()})
            return
        count += 1
        text = msg.get("text")
        if text is not None:
            if text == "pid":
                await websocket.send_text(str(os.getpid()))
            elif text == "count":
                await websocket.send_text(str(count))
            elif text.startswith("close:"):
                code = int(text.split(":", 1)[1])
                await websocket.close(code, reason="server-bye")
                if tag:
                    _mark(f"close-{tag}.json", {"code": code, "reason": "server-bye",
                                                "by": "app", "messages": count,
                                                "pid": os.getpid()})
                return
            else:
                await websocket.send_text(text)
        else:
            await websocket.send_bytes(msg.get("bytes") or b"")


async def deny(websocket: WebSocket):
    await websocket.close(code=1008)


app = Starlette(routes=[Route("/pid", pid), WebSocketRoute("/ws/echo", echo),
                        WebSocketRoute("/ws/deny", deny)], lifespan=lifespan)
