"""The guard in front of every route of the app: what a web page on the same machine must not be able to do.

- Host/Origin allow-list: a page whose domain is rebound to 127.0.0.1 (DNS rebinding) sends `Host: evil.example`;
  a cross-site page sends its own `Origin`. Both get 403 before any handler runs, so nothing is written.
- Login throttling: after `max_failures` wrong passwords for a user or from an address within `window_s`, logins
  from them get 429 for `lockout_s`, doubling with every further failure.
- Security headers on every response: the page cannot be framed (clickjacking), types are not sniffed.
- The API endpoints' requests must match their signature (422), unknown endpoints are 404, both with a message.

A pure ASGI middleware (Starlette's BaseHTTPMiddleware would buffer the streamed responses), installed through
`demo.launch(app_kwargs={"middleware": [...]})` so that it wraps Gradio's own routes.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
API_ROUTES = ("/gradio_api/run/", "/gradio_api/call/", "/gradio_api/api/")  # + the endpoint's api_name
QUEUE_JOIN = "/gradio_api/queue/join"


@dataclass
class GuardConfig:
    allowed_hosts: frozenset[str] = frozenset(LOOPBACK_NAMES)  # Host/Origin names served (lower case, no port)
    max_failures: int = 5  # wrong passwords per user or per address within window_s before logins are refused
    window_s: float = 60.0
    lockout_s: float = 30.0  # the first refusal period; doubles with every failure past max_failures
    max_body_bytes: int = 4 << 20  # API/login bodies are read whole to be checked; a label is a few hundred bytes


def allowed_hosts(host: str = "127.0.0.1", root_path: str | None = None, extra: Sequence[str] = ()) -> frozenset[str]:
    """Loopback names, the bind address (unless it is every interface), the host of a `--root-path` URL, and the
    names a reverse proxy forwards (`--allowed-host`)."""
    names = set(LOOPBACK_NAMES)
    if host and host not in ("0.0.0.0", "::"):
        names.add(host.strip("[]").lower())
    if root_path and "://" in root_path and urlsplit(root_path).hostname:
        names.add(urlsplit(root_path).hostname)
    names.update(name.strip().strip("[]").lower() for name in extra if name.strip())
    return frozenset(names)


def _hostname(value: str) -> str | None:
    """'127.0.0.1:7860' / '[::1]:7860' / 'http://localhost:7860' -> the bare lower-case name; None if unparsable."""
    try:
        return urlsplit(value if "://" in value else f"//{value}").hostname
    except ValueError:
        return None


@dataclass
class LoginThrottle:
    """Failed logins per key (a user name, a client address) in a sliding window, and the lockouts they earned."""

    config: GuardConfig
    failures: dict[str, deque] = field(default_factory=lambda: defaultdict(deque))
    locked_until: dict[str, float] = field(default_factory=dict)

    def retry_after(self, keys: Sequence[str], now: float) -> float:
        """Seconds until every key may try again (0 when none is locked)."""
        return max([self.locked_until.get(key, 0.0) - now for key in keys] + [0.0])

    def failed(self, keys: Sequence[str], now: float) -> None:
        for key in keys:
            recent = self.failures[key]
            recent.append(now)
            while recent and recent[0] < now - self.config.window_s:
                recent.popleft()
            if len(recent) >= self.config.max_failures:
                extra = len(recent) - self.config.max_failures
                self.locked_until[key] = now + self.config.lockout_s * 2 ** min(extra, 10)

    def succeeded(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.failures.pop(key, None)
            self.locked_until.pop(key, None)


class RequestGuard:
    """ASGI middleware: see the module docstring. `demo` gives the endpoints' signatures (read at the first call)."""

    def __init__(self, app, demo=None, config: GuardConfig | None = None):
        self.app, self.demo, self.config = app, demo, config or GuardConfig()
        self.throttle = LoginThrottle(self.config)
        self._endpoints: dict[str, object] | None = None  # api_name -> BlockFunction, public API endpoints only

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        refusal = self._origin_refusal(headers)
        if refusal:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _reply(send, 403, refusal)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in names]
                message = {**message, "headers": kept + SECURITY_HEADERS}
            await send(message)

        path = scope.get("path", "")
        if scope["method"] == "POST" and (path.rstrip("/").endswith("/login") or self._is_api(path)):
            body = await _read_body(receive, self.config.max_body_bytes)
            if body is None:
                return await _reply(send_with_headers, 413, f"request body over {self.config.max_body_bytes:,} "
                                                            "bytes; send less.")
            receive = _replay(body, receive)
            if path.rstrip("/").endswith("/login"):
                return await self._login(scope, receive, send_with_headers, body)
            refusal = self._signature_refusal(path, body)
            if refusal:
                return await _reply(send_with_headers, *refusal)
        return await self.app(scope, receive, send_with_headers)

    # -- Host / Origin --------------------------------------------------------------------------------------------

    def _origin_refusal(self, headers: dict[str, str]) -> str | None:
        allowed = self.config.allowed_hosts
        if _hostname(headers.get("host", "")) not in allowed:
            return ("this app answers only to the names it was started for (loopback, --host, --root-path); a "
                    "reverse proxy's name needs --allowed-host NAME.")
        origin = headers.get("origin")
        if origin is not None and (origin == "null" or _hostname(origin) not in allowed):
            return "requests from other sites' pages are refused (Origin not allowed)."
        return None

    # -- login throttling -----------------------------------------------------------------------------------------

    async def _login(self, scope, receive, send, body: bytes):
        form = parse_qs(body.decode("utf-8", "replace"))
        user = (form.get("username") or [""])[0].strip()
        keys = [f"user:{user}", f"address:{(scope.get('client') or ('?',))[0]}"]
        now = time.monotonic()
        wait = self.throttle.retry_after(keys, now)
        if wait > 0:
            return await _reply(send, 429, f"too many failed logins; try again in {math.ceil(wait)} s.",
                                [(b"retry-after", str(math.ceil(wait)).encode())])
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        if status.get("code") == 200:
            self.throttle.succeeded(keys)
        elif status.get("code") in (400, 401, 403):
            self.throttle.failed(keys, now)

    # -- API signatures -------------------------------------------------------------------------------------------

    def _is_api(self, path: str) -> bool:
        return path.startswith(API_ROUTES) or path.rstrip("/") == QUEUE_JOIN

    def endpoints(self) -> dict[str, object]:
        if self._endpoints is None:
            fns = self.demo.fns.values() if self.demo is not None else []
            self._endpoints = {fn.api_name: fn for fn in fns if fn.api_name and fn.api_visibility != "private"}
        return self._endpoints

    def _signature_refusal(self, path: str, body: bytes) -> tuple[int, str] | None:
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, RecursionError):
            return 422, "the request body is not JSON; send {\"data\": [...]}."
        if not isinstance(payload, dict):
            return 422, "the request body must be a JSON object like {\"data\": [...]}."
        fn_index = payload.get("fn_index")
        if fn_index is not None:  # the page's own events name their function by index (validated by its handler)
            fns = self.demo.fns if self.demo is not None else {}
            fn = fns.get(fn_index) if isinstance(fn_index, int) else None
            if fn is None:
                return 404, f"no event with fn_index {fn_index!r}."
            if fn.api_visibility == "private":
                return None
        elif path.rstrip("/") == QUEUE_JOIN:
            return 422, "queue/join needs an fn_index."
        else:
            name = path.rstrip("/").split("/")[-1]  # also /call/v2/<name>
            fn = self.endpoints().get(name)
            if fn is None:
                known = ", ".join(f"/{n}" for n in sorted(self.endpoints()))
                return 404, f"no API endpoint /{name}; the endpoints are {known} (see /gradio_api/info)."
        data = payload.get("data")
        wanted = len(fn.inputs)
        if not isinstance(data, list) or len(data) != wanted:
            got = f"{len(data)} values" if isinstance(data, list) else f"{type(data).__name__}"
            names = ", ".join(str(getattr(block, "label", None) or type(block).__name__) for block in fn.inputs)
            return 422, f"/{fn.api_name} takes {wanted} values ({names}); got {got}."
        return None


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None when it is over `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that hands the already-read body to the app once, then waits on the real one (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _reply(send, status: int, message: str, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers, *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
