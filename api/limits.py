"""The request body size limit (DSPY_SERVICE_MAX_REQUEST_MB), as a pure ASGI middleware.

It answers 413 from the Content-Length header before reading anything, and also counts
the bytes of bodies sent without one (chunked uploads), which a header check alone
would let through into memory.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_mb: float):
        self.app = app
        self.max_bytes = max_bytes
        self.max_mb = max_mb

    def message(self, size: str) -> bytes:
        detail = (
            f"request body is {size}; the limit is {self.max_bytes} bytes "
            f"({self.max_mb:g} MB, DSPY_SERVICE_MAX_REQUEST_MB)"
        )
        return json.dumps({"detail": detail}).encode()

    async def reject(self, send: Send, size: str) -> None:
        body = self.message(size)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self.reject(send, f"{int(value)} bytes")
                return
        received = 0
        too_large = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # FastAPI turns an error while reading the body into its own 400; answer 413.
            nonlocal replaced
            if too_large:
                if not replaced:
                    replaced = True
                    await self.reject(send, f"more than {self.max_bytes} bytes")
                return
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if not replaced:
                await self.reject(send, f"more than {self.max_bytes} bytes")
