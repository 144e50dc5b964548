"""A deadline for receiving each request: ``mtl serve`` closes connections that send slowly.

uvicorn has no timeout that covers a request in transit: ``timeout_keep_alive`` only covers the
idle time between two requests and is cancelled by the first byte received, and the ASGI
application is called only once the headers are complete. So a client that sends half a header,
or a ``Content-Length`` and then half the body, holds a connection (and, for ``POST /predict``,
a place in the upload queue) forever; uvicorn's issue 157 lists "timeout-request-start" and
"timeout-request-complete" as not implemented.

:func:`deadline_protocol` wraps uvicorn's HTTP protocol class (httptools when installed, else
h11, as uvicorn's ``auto``): from a connection's first byte, and again after each answer, the
whole next request (headers and body) must arrive within ``timeout`` seconds. Past it, a client
still sending gets ``408 Request Timeout`` and the connection is closed. The deadline stops as
soon as the request is complete, so a long analysis is never cut short.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

#: seconds a whole request (headers and body) may take to arrive, by default
DEFAULT_REQUEST_TIMEOUT = 60.0


def base_protocol(http: str = "auto") -> type:
    """uvicorn's HTTP protocol class for ``http`` ("auto", "h11" or "httptools")."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    return import_from_string(HTTP_PROTOCOLS[http])


def timeout_response(timeout: float) -> bytes:
    body = json.dumps({"detail": f"the request did not arrive within {timeout:g} s "
                                 "(mtl serve --request-timeout)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
            + body)


def deadline_protocol(base: type, timeout: float) -> type:
    """``base`` (a uvicorn HTTP protocol class) with a per-request receive deadline."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")

    class RequestDeadline(base):  # type: ignore[valid-type, misc]
        request_timeout = float(timeout)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._deadline: asyncio.TimerHandle | None = None
            self._answered: Any = None  # the last cycle whose response is complete
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(self.request_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _request_complete(self) -> bool:
            cycle = self.cycle
            return cycle is not None and cycle is not self._answered and not cycle.more_body

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._deadline is not None and self._request_complete():
                self._disarm()

        def on_response_complete(self) -> None:
            self._answered = self.cycle
            super().on_response_complete()  # may start a pipelined request
            if self.transport.is_closing() or self._request_complete():
                self._disarm()
            else:
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or cycle is self._answered or not cycle.response_started:
                self.transport.write(timeout_response(self.request_timeout))
            self.transport.close()

    RequestDeadline.__name__ = RequestDeadline.__qualname__ = f"RequestDeadline{base.__name__}"
    return RequestDeadline


__all__ = ["DEFAULT_REQUEST_TIMEOUT", "base_protocol", "deadline_protocol", "timeout_response"]
