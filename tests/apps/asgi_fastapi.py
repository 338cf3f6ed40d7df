"""A FastAPI app for the ASGI tests (tests/integration/test_asgi.py).

Lifespan: startup waits STARTUP_DELAY seconds, then writes ASGI_MARKERS/startup-<pid>
({"pid", "began", "done"}: wall-clock times); shutdown writes ASGI_MARKERS/shutdown-<pid>.
Routes: GET /info (pid, event loop class's module, whether startup had completed when the
request ran), POST /items (a pydantic model: 422 on a bad body), GET /stream (a
StreamingResponse of n chunks, `delay` s apart), POST /upload (the body read as a stream:
sha256, size, number of chunks), GET /block (time.sleep in the event loop).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

MARKERS = os.environ.get("ASGI_MARKERS", "")
STARTUP_DELAY = float(os.environ.get("STARTUP_DELAY", "0"))
state = {"started": False, "startup_done": None}


def _mark(kind: str, doc: dict) -> None:
    if not MARKERS:
        return
    path = os.path.join(MARKERS, f"{kind}-{os.getpid()}")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.rename(path + ".tmp", path)


@contextlib.asynccontextmanager
async def lifespan(app):
    began = time.time()
    await asyncio.sleep(STARTUP_DELAY)
    state["started"], state["startup_done"] = True, time.time()
    _mark("startup", {"pid": os.getpid(), "began": began, "done": state["startup_done"]})
    yield
    _mark("shutdown", {"pid": os.getpid(), "at": time.time()})


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    quantity: int = 1
    tags: list[str] = []


@app.get("/info")
async def info(request: Request):
    return {"pid": os.getpid(), "loop": type(asyncio.get_running_loop()).__module__,
            "started": state["started"], "startup_done": state["startup_done"],
            "now": time.time(), "root_path": request.scope.get("root_path", ""),
            "http_version": request.scope.get("http_version"),
            "scheme": request.url.scheme}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name, "total": round(item.price * item.quantity, 2),
            "tags": sorted(item.tags), "pid": os.getpid()}


@app.get("/stream")
async def stream(n: int = 5, delay: float = 0.3):
    async def chunks():
        for i in range(n):
            yield f"chunk {i} at {time.time():.3f}\n".encode()
            if i < n - 1:
                await asyncio.sleep(delay)
    return StreamingResponse(chunks(), media_type="text/plain")


@app.post("/upload")
async def upload(request: Request):
    digest, size, chunks = hashlib.sha256(), 0, 0
    async for chunk in request.stream():
        if chunk:
            digest.update(chunk)
            size += len(chunk)
            chunks += 1
    return {"sha256": digest.hexdigest(), "size": size, "chunks": chunks}


@app.get("/block")
async def block(seconds: float = 60):
    time.sleep(seconds)          # blocks the event loop: the point of the test
    return {"slept": seconds}
