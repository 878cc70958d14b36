"""What keeps `bitfit-serve` up under hostile clients: a deadline on reading each request and a cap on open
connections, added to uvicorn's h11 protocol (`serve` runs an app with them).

- **Request deadline** (`--request-timeout`): a request, headers and body, must have arrived `request_timeout`
  seconds after its first byte (the first request of a connection: after the connection opened). Otherwise the
  connection is closed, after a 408 when part of the request came and nothing was answered yet. A client that
  trickles or stops (slow loris) thus holds a file descriptor for a bounded time. An idle keep-alive connection is
  closed after `min(5 s, request_timeout)` (uvicorn's own timer).
- **Connection cap** (`--max-connections`): a connection beyond `max_connections` open ones gets a 503 at once and
  is closed instead of waiting; uvicorn's `limit_concurrency` bounds the requests in progress the same way.

uvicorn has no deadline for reading a request, so this subclasses its h11 protocol class, which `uvicorn.Config`
accepts as `http=`. h11 because whether a request is still arriving is h11's public state (`their_state`,
`trailing_data`), and h11 is always installed with uvicorn. The uvicorn internals relied on, all of its h11 protocol
since before the oldest uvicorn supported: `handle_events()` (every received byte is parsed there, both from
`data_received` and after a response, for a pipelined request), `conn` (the connection's h11.Connection),
`connections` (the server's set of open connections, which `limit_concurrency` counts too) and `transport`.
"""

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

KEEP_ALIVE_S = 5.0  # uvicorn's default for an idle keep-alive connection
REFUSED_GRACE_S = 1.0  # how long a refused connection may stay open for its client to read the 503


def raw_response(status: int, reason: str, error: str) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with the server's one-line `{"error": ...}` body.

    >>> raw_response(408, "Request Timeout", "too slow").splitlines()[0]
    b'HTTP/1.1 408 Request Timeout'
    """
    body = json.dumps({"error": error}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n")
    return head.encode() + body


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request and a cap on open connections (the class
    attributes, set by `protocol`)."""

    request_timeout: float = 30.0
    max_connections: int = 256

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.deadline: asyncio.TimerHandle | None = None
        self.refused = False
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.refuse()
        else:
            self.arm()  # the first request must arrive within the deadline too

    def refuse(self) -> None:
        """Answer 503 at once and close: after at most `REFUSED_GRACE_S`, during which what the client sends is read
        and dropped, since closing a socket with unread bytes resets it and the client may never see the 503."""
        self.connections.discard(self)  # on its way out: it takes no place of a served connection
        self.refused = True
        self.transport.write(raw_response(503, "Service Unavailable", f"the server has {self.max_connections} "
                                          f"connections open (--max-connections); retry later"))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.deadline = self.loop.call_later(min(REFUSED_GRACE_S, self.request_timeout), self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.transport.is_closing():
            self.disarm()
        elif self.reading():
            self.arm()
        else:  # the request is complete (the app's time is not the client's) or the connection idles
            self.disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def reading(self) -> bool:
        """Whether part of a request has arrived but not all of it: its body, or its headers (bytes wait)."""
        state = self.conn.their_state
        return state is h11.SEND_BODY or (state is h11.IDLE and bool(self.conn.trailing_data[0]))

    def arm(self) -> None:
        """Start the deadline of the request being read, unless it runs already (it runs from the first byte)."""
        if self.deadline is None:
            self.deadline = self.loop.call_later(self.request_timeout, self.expire)

    def disarm(self) -> None:
        """Stop the deadline: the request came whole, or the connection is gone."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def expire(self) -> None:
        """The deadline passed with the request incomplete: a 408 if part of it came and nothing was answered,
        then close (the app, if it waits for the body, sees the client gone)."""
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.reading() and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(raw_response(408, "Request Timeout", f"the request did not arrive within "
                                              f"{self.request_timeout:g} s (--request-timeout)"))
        self.transport.close()


def protocol(request_timeout: float, max_connections: int) -> type[LimitedH11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these limits (uvicorn instantiates it itself)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,),
                {"request_timeout": request_timeout, "max_connections": max_connections})


def serve(app, host: str, port: int, log_level: str, request_timeout: float, max_connections: int) -> None:
    """Run `app` under uvicorn on host:port until stopped, with the limits above."""
    import uvicorn

    # limit_concurrency answers 503 once it counts that many connections *including the asking one*, or that many
    # requests in progress: one more than the cap, so the cap's last connection is served. No WebSocket routes:
    # ws="none" keeps every connection on this protocol (an upgraded one would leave its deadline running).
    uvicorn.run(app, host=host, port=port, log_level=log_level, http=protocol(request_timeout, max_connections),
                ws="none", limit_concurrency=max_connections + 1,
                timeout_keep_alive=min(KEEP_ALIVE_S, request_timeout))
