"""The revoke call, the only code that knows httpx: every error becomes an ApiResult."""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol
from urllib.parse import urlencode

import httpx
from pydantic import ValidationError

from consumer.core.redact import scrub_usersig
from consumer.core.results import ApiAnswer, ApiResult, FailureKind, TransportFailure
from consumer.core.transport import LeanTransport
from consumer.core.usersig import UserSigCache
from schemas.api import RevokeResponse
from schemas.recall import RecallRequest

REVOKE_PATH = "/v4/timpush/revoke"
JSON_HEADERS = {"Content-Type": "application/json"}
RANDOM_RANGE = 2**32  # `random` is an unsigned 32-bit integer
_QUERY_AS_IS = re.compile(r"[A-Za-z0-9._~=&-]*")  # what httpx's parse leaves as it is in a query
# httpcore's trace events (`<http11|http2>.<step>.<started|complete|failed>`) that bound the call
# at the socket: the request's last byte handed to the kernel, the answer's headers read from it.
SENT_EVENT = ".send_request_body.complete"
ANSWERED_EVENT = ".receive_response_headers.complete"


class CallObserver(Protocol):
    """Told when a call's request has left and when its answer came, as the socket saw them
    (the pacer's `Slot`: the round trip without our own work on either side of it)."""

    def request_sent(self) -> None:
        """The whole request was handed to the socket just now."""

    def answer_received(self) -> None:
        """The answer's status line and headers were read from the socket just now."""


MAX_HTTP_CONNECTIONS = 100


def make_http_client(
    connect_timeout_s: float,
    read_timeout_s: float,
    *,
    connections: int = 4,
    transport: Literal["lean", "httpcore"] = "lean",
) -> httpx.AsyncClient:
    """One keep-alive client per process, with explicit timeouts; `connections` at once (a few
    per app with a call in flight: each lane makes one call at a time); `transport` below it."""
    timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
    if transport == "lean":
        lean = LeanTransport(
            max_connections=connections,
            keepalive_expiry=60.0,
            ssl_context=httpx.create_ssl_context(trust_env=False),  # httpx's CAs (certifi)
        )
        return DirectClient(lean, timeout)
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=max(2, connections // 2),
        keepalive_expiry=60.0,
    )
    return httpx.AsyncClient(
        timeout=timeout, limits=limits, follow_redirects=False, trust_env=False
    )


class DirectClient(httpx.AsyncClient):
    """An httpx.AsyncClient whose `send` hands a request straight to its transport.

    The revoke call uses no cookies, auth, redirects or event hooks; AsyncClient's handling of
    them (a cookie jar fed every answer through urllib's Request) was a tenth of a call's CPU.
    Anything that asks for them (`stream=True`, an `auth`, redirects) goes the usual way.
    """

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: httpx.Timeout) -> None:
        super().__init__(
            timeout=timeout, transport=transport, follow_redirects=False, trust_env=False
        )
        self._direct = transport

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Send `request` as is and read its answer (see the class docstring)."""
        plain = auth is httpx.USE_CLIENT_DEFAULT and follow_redirects in (
            httpx.USE_CLIENT_DEFAULT,
            False,
        )
        if stream or not plain or self.is_closed:
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        # httpx's send sets the client's timeouts on a request built without them; so do we
        request.extensions.setdefault("timeout", self.timeout.as_dict())
        response = await self._direct.handle_async_request(request)
        response.request = request
        await response.aread()
        return response


class RevokeClient:
    """Calls `v4/timpush/revoke` and turns whatever happens into an ApiResult."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        sdkappid: int,
        identifier: str,
        usersigs: UserSigCache,
        *,
        random: Callable[[], int] = lambda: secrets.randbelow(RANDOM_RANGE),
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + REVOKE_PATH
        self._sdkappid = sdkappid
        self._identifier = identifier
        self._usersigs = usersigs
        self._random = random
        # The headers build_request would make (Host, the client's defaults, then ours), once:
        # a request gets a copy and its Content-Length.
        host = httpx.URL(self._url).netloc.decode("ascii")
        self._headers = httpx.Headers({"Host": host, **http.headers, **JSON_HEADERS})
        self._signed: tuple[str, httpx.URL | None] = ("", None)  # (usersig, its parsed URL)

    def _signed_url(self) -> httpx.URL:
        # Only `random` changes from call to call: the rest of the query is built and parsed
        # once per UserSig (about 190 characters; httpx checks a URL string a character at a
        # time, which was a tenth of a recall's CPU when done for every call).
        usersig = self._usersigs.get()
        signed_for, url = self._signed
        if url is None or usersig != signed_for:
            query = urlencode(
                {
                    "usersig": usersig,
                    "identifier": self._identifier,
                    "sdkappid": str(self._sdkappid),
                    "contenttype": "json",
                }
            )
            url = httpx.URL(f"{self._url}?{query}")
            self._signed = (usersig, url)
        return url

    def renew_usersig(self) -> None:
        """Make a new UserSig before the next call (the server said the old one is no good)."""
        self._usersigs.renew()

    async def revoke(
        self, request: RecallRequest, observer: CallObserver | None = None
    ) -> ApiResult:
        """Send one recall and report what came of it (and, to `observer`, when at the socket)."""
        return await self.post(request.api_bytes(), observer)

    async def post(self, body: bytes, observer: CallObserver | None = None) -> ApiResult:
        """POST a JSON `body` to the revoke endpoint (also a probe body while halted)."""
        url = with_query(self._signed_url(), f"random={self._random()}")
        extensions = {"trace": _tracer(observer)} if observer is not None else None
        try:
            request = self._request(url, body, extensions)
            response = await self._http.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return TransportFailure(FailureKind.CONNECT, _describe(exc))
        except httpx.TimeoutException as exc:
            return TransportFailure(FailureKind.TIMEOUT, _describe(exc))
        except httpx.HTTPError as exc:
            return TransportFailure(FailureKind.NETWORK, _describe(exc))
        return _read(response)

    def _request(
        self, url: httpx.URL, body: bytes, extensions: dict[str, Any] | None
    ) -> httpx.Request:
        """The request `Request(url, content=body)` would make, without working out its
        headers again (a third of building one)."""
        headers = self._headers.copy()
        headers["Content-Length"] = str(len(body))
        request = httpx.Request(
            "POST", url, headers=headers, stream=httpx.ByteStream(body), extensions=extensions
        )
        request.read()  # `content` set, as `content=` does
        return request


def with_query(url: httpx.URL, more: str) -> httpx.URL:
    """`url` with `more` (`name=value`, URL-safe) added to its query, without parsing it again."""
    parsed = getattr(url, "_uri_reference", None)
    if parsed is None or not _QUERY_AS_IS.fullmatch(more):
        query = f"{url.query.decode()}&{more}" if url.query else more
        return httpx.URL(url, query=query.encode())
    # httpx's own copy (URL(url, query=...)) re-checks the whole query a character at a time;
    # the signed part was checked when parsed, and `more` holds only characters a parse keeps
    # as they are (anything else takes httpx's own path above). Its parsed form is
    # a NamedTuple: test_client_translation pins this against a full parse.
    query = more if not parsed.query else f"{parsed.query}&{more}"
    added = httpx.URL.__new__(httpx.URL)  # URL() would parse an empty string
    added._uri_reference = parsed._replace(query=query)
    return added


def _tracer(observer: CallObserver) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """httpx's `trace` extension for one call, reporting the two socket events to `observer`.

    A transport that emits no trace events (a mock, a custom transport) reports nothing: the
    pacer then has no round trip for the call and does not learn from it.
    """

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith(SENT_EVENT):
            observer.request_sent()
        elif event.endswith(ANSWERED_EVENT):
            observer.answer_received()

    return trace


def _read(response: httpx.Response) -> ApiResult:
    if response.status_code != 200:
        return TransportFailure(
            FailureKind.HTTP_STATUS,
            f"HTTP {response.status_code}",
            http_status=response.status_code,
        )
    try:
        parsed = RevokeResponse.model_validate_json(response.content)
    except (ValueError, ValidationError):
        return TransportFailure(
            FailureKind.BAD_BODY,
            f"HTTP 200 with a body that is not the API's JSON ({len(response.content)} bytes)",
        )
    return ApiAnswer(code=parsed.error_code, info=scrub_usersig(parsed.error_info))


def _describe(exc: httpx.HTTPError) -> str:
    # str(exc) of httpx errors normally holds no URL, but scrub anyway: the URL carries the UserSig.
    text = str(exc) or "no detail"
    return scrub_usersig(f"{type(exc).__name__}: {text}")[:300]
