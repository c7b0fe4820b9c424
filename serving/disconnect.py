"""Stop a request's work when its client goes away: HTTP disconnects and closed WebSockets."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

from .codecs import BadRequest

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict]]


class ClientGone(BadRequest):
    """The client disconnected before its answer was ready; nothing is sent back."""

    def __init__(self) -> None:
        super().__init__("client_closed_request", "the client disconnected before the answer was ready", status=499)


async def _disconnected(receive: Receive) -> None:
    """Returns when the ASGI server reports the client gone (the body has been read already)."""
    while (await receive())["type"] not in ("http.disconnect", "websocket.disconnect"):
        pass


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; should the client disconnect first, cancel it (its queued slices are dropped,
    nothing more of it decodes or runs) and raise ``ClientGone``."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientGone()
