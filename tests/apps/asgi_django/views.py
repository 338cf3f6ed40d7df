"""Async views that say what Django made of the ASGI scope (path, prefix, reverse())."""
import asyncio
import os

from django.http import JsonResponse
from django.urls import get_script_prefix, reverse


def _doc(request, **extra):
    return {"path": request.path, "path_info": request.path_info,
            "script_name": request.META.get("SCRIPT_NAME", ""),
            "script_prefix": get_script_prefix(),
            "root_path": request.scope.get("root_path", ""),
            "scope_path": request.scope.get("path"),
            "hello_url": reverse("hello"), "item_url": reverse("item", args=[7]),
            "absolute": request.build_absolute_uri(reverse("item", args=[7])),
            "query": request.GET.get("q"), "pid": os.getpid(),
            "async": asyncio.iscoroutinefunction(hello), **extra}


async def hello(request):
    await asyncio.sleep(0.01)            # a real await in the view
    return JsonResponse(_doc(request, loop=type(asyncio.get_running_loop()).__module__))


async def item(request, n):
    await asyncio.sleep(0)
    return JsonResponse(_doc(request, n=n))
