"""The API's two paths as plain ASGI in front of Starlette, which serves everything else.

Starlette's middleware, routing and Request cost a call more CPU than the sandbox's own checks
(profiled: bench/sandbox_cost.py). A POST to an API path goes straight to its handler; any
other method or path goes to the Starlette app, so /sandbox/, 404 and 405 are answered as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from consumer.sandbox.checks import query_params

# A handler reads the query and, when it chooses, the body from `receive`; it returns the answer.
Handler = Callable[[Mapping[str, str], Receive], Awaitable[Response]]


class Front:
    """POSTs to `handlers`' paths answered by them; any other request by `rest`."""

    def __init__(self, handlers: Mapping[str, Handler], rest: Starlette) -> None:
        self._handlers = dict(handlers)
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self._handlers.get(scope["path"])
        if handler is None:
            await self.rest(scope, receive, send)
            return
        try:
            response = await handler(query_params(scope["query_string"]), receive)
        except Exception:
            # What Starlette's ServerErrorMiddleware answers before the server logs the error.
            await PlainTextResponse("Internal Server Error", 500)(scope, receive, send)
            raise
        await response(scope, receive, send)


async def read_body(receive: Receive) -> bytes:
    """The whole request body, as Starlette's Request.body() reads it (ClientDisconnect too)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect
