"""The plain ASGI 3.0 app of bench/asgi.py (no framework), the same for every server.

    GET /   -> 200 {"hello":"world"} (application/json, Content-Length 17)
    /ws     -> WebSocket echo: every text (or binary) message is sent back as it came
    lifespan: startup and shutdown are acknowledged (nothing to set up)

Anything else: 404 (HTTP) or a close before accepting (WebSocket).
"""

BODY = b'{"hello":"world"}'
_HEADERS = [(b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode())]
_NOT_FOUND = [(b"content-type", b"text/plain"), (b"content-length", b"9")]


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        if scope["path"] == "/":
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": BODY})
        else:
            await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND})
            await send({"type": "http.response.body", "body": b"not found"})
    elif kind == "websocket":
        msg = await receive()                       # websocket.connect
        if msg["type"] != "websocket.connect":
            return
        if scope["path"] != "/ws":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            t = msg["type"]
            if t == "websocket.receive":
                text = msg.get("text")
                if text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})
            elif t == "websocket.disconnect":
                return
    elif kind == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
