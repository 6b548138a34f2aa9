"""The console's HTTP/1.1 server: h11 (the protocol state machine behind httpcore and uvicorn)
on asyncio streams, so the console runs on the daemon's own loop with no framework.

Everything a browser sends is bounded before it is read: 16 KiB of request line and headers,
64 KiB of body, 10 s to send a request, 60 s idle on a kept-alive connection. Handlers get a
`Request` and return a `Response`; a response with a `stream` (server-sent events) keeps the
connection until the client goes or the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

import h11

log = logging.getLogger("roomd.console")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
REQUEST_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    client: str = ""
    cookies: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_h11(cls, event: h11.Request, body: bytes, client: str) -> Request:
        target = urlsplit(event.target.decode("latin-1"))
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        cookies: dict[str, str] = {}
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(headers["cookie"])
            cookies = {k: m.value for k, m in jar.items()}
        return cls(
            method=event.method.decode("ascii", "replace"),
            path=target.path or "/",
            query=_first(parse_qs(target.query, max_num_fields=50)),
            headers=headers,
            body=body,
            client=client,
            cookies=cookies,
        )

    def form(self) -> dict[str, str]:
        if "application/x-www-form-urlencoded" not in self.headers.get("content-type", ""):
            return {}
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "form is not UTF-8") from None
        try:
            return _first(parse_qs(text, keep_blank_values=True, max_num_fields=100))
        except ValueError:
            raise HttpError(400, "too many form fields") from None


def _first(values: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in values.items()}


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        return cls(status, b"", "text/plain", [("location", location)])

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode() + b"\n", "text/plain; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(
        self, host: str, port: int, handler: Handler, tls: ssl.SSLContext | None = None
    ) -> None:
        self.host, self.port, self.handler, self.tls = host, port, handler, tls
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._connection, self.host, self.port, ssl=self.tls, limit=MAX_HEAD
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        for task in list(self._connections):
            task.cancel()  # server-sent event streams never end by themselves
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self.server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                try:
                    request = await self._read_request(conn, reader, client)
                except HttpError as exc:
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        await self._send(conn, writer, Response.text(exc.status, str(exc)), False)
                    return
                if request is None:
                    return
                try:
                    response = await self.handler(request)
                except HttpError as exc:
                    response = Response.text(exc.status, str(exc))
                except Exception:
                    log.exception("console: %s %s", request.method, request.path)
                    response = Response.text(500, "internal error; see the daemon log")
                head_only = request.method == "HEAD"
                await self._send(conn, writer, response, head_only)
                if conn.our_state is h11.MUST_CLOSE or response.stream is not None:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, TimeoutError, h11.ProtocolError, ssl.SSLError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, client: str
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        timeout = IDLE_TIMEOUT
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(exc.error_status_hint, f"bad request: {exc}") from None
            if event is h11.NEED_DATA:
                try:
                    async with asyncio.timeout(timeout):
                        # Small reads while the head comes: h11 bounds only what it buffers
                        # unparsed, so a big read could carry a whole oversized head past it.
                        data = await reader.read(4096 if head is None else 16384)
                except TimeoutError:
                    if head is None and not conn.they_are_waiting_for_100_continue:
                        return None  # an idle kept-alive connection: just close it
                    raise HttpError(408, "request timeout") from None
                conn.receive_data(data)
                timeout = REQUEST_TIMEOUT
                continue
            if isinstance(event, h11.Request):
                head = event
                length = dict(event.headers).get(b"content-length")
                if length is not None and int(length) > MAX_BODY:
                    raise HttpError(413, f"request body over {MAX_BODY} bytes")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise HttpError(413, f"request body over {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request.from_h11(head, bytes(body), client)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        response: Response,
        head_only: bool,
    ) -> None:
        own = {k for k, _ in response.headers}
        headers = [
            (b"content-type", response.content_type.encode()),
            *(h for h in SECURITY_HEADERS if h[0].decode() not in own),
            *((k.encode(), v.encode("utf-8")) for k, v in response.headers),
        ]
        if not any(k == "cache-control" for k, _ in response.headers):
            headers.append((b"cache-control", b"no-store"))
        if response.stream is None:
            headers.append((b"content-length", str(len(response.body)).encode()))
        reason = HTTPStatus(response.status).phrase.encode()
        head = h11.Response(status_code=response.status, headers=headers, reason=reason)
        writer.write(conn.send(head))
        if response.stream is not None:
            await writer.drain()
            async for chunk in response.stream:
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
            return
        if response.body and not head_only:
            writer.write(conn.send(h11.Data(data=response.body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
