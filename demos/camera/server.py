"""The demo's local web server (stdlib `http.server`, one thread per request).

Routes (JSON unless said otherwise; errors are JSON `{"error": "..."}` with the status code):

    GET  /                 the page (HTML with inline JS/CSS; no external resources)
    GET  /frame.jpg        newest processed frame, JPEG; ?seq=N is only a cache-buster
                           (integer 0..2**53-1); 503 before the first frame
    GET  /api/status       prediction, variant, FPS, latency, budget, battery, CPU, switches
    GET  /api/variants     every variant: id, cfg_id, flops, params, top1, candidate
    GET  /api/history      chart points and switches; ?since=S (seconds since start, a number
                           >= -1; -1: from the start) &max=N (integer 1..5000 points, newest kept)
    GET  /api/tasks        the task selector's choices: the backbone's own head (task null)
                           and every task: name, labels, variants, top-1 on the active variant
    POST /api/task         switch task: {"task": NAME} or {"task": null} (the backbone's own
                           head); the active variant stays; unknown task -> 400
    GET  /api/config       the settings the page can change
    POST /api/config       change them: JSON object with any of power_saving (true/false/null),
                           target_fps (number), pinned (variant id, cfg_id, "auto" or null),
                           plugged (true/false, simulated battery only)

Rejected with 400: unknown or repeated query parameters, values that do not parse or are out
of range (integers are ASCII digits only), bodies that are not JSON objects or are nested more
than 32 deep, unknown fields, unknown variants. 415 when a POST
is not `Content-Type: application/json` (which also keeps other web sites from posting to the
demo: a cross-site JSON post needs a CORS preflight, which this server never grants), 413 for
bodies over 64 KiB, 404/405 for unknown routes and methods. When bound to a loopback address,
requests whose Host header is not a loopback name get 403 (DNS-rebinding guard).

One thread per connection, a listen backlog of 64 (a page opening, or a burst of clients, does
not wait for the kernel's SYN retries), and a client that leaves mid-answer is logged at DEBUG,
not printed as a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .engine import ConfigError, DemoEngine

log = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
MAX_BODY = 64 * 1024
MAX_JSON_DEPTH = 32  # the config is flat; deeper bodies are refused before parsing
LISTEN_BACKLOG = 64
MAX_SEQ = 2**53 - 1  # the largest integer a page's JavaScript counts exactly
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_INT = re.compile(r"-?[0-9]{1,20}")
_NUMBER = re.compile(r"-?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][-+]?[0-9]{1,4})?")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class BadRequest(Exception):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Param:
    """A query parameter: an integer or a number, within [lo, hi]."""

    def __init__(self, kind: type, lo: float = -math.inf, hi: float = math.inf) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi

    def parse(self, name: str, text: str) -> int | float:
        if self.kind is int:
            if not _INT.fullmatch(text):
                raise BadRequest(f"query parameter '{name}' must be an integer, got {text!r}")
            v: int | float = int(text)
        else:
            if not _NUMBER.fullmatch(text):
                try:
                    bad_float = not math.isfinite(float(text))
                except ValueError:
                    bad_float = False
                what = "finite" if bad_float else "a number"
                raise BadRequest(f"query parameter '{name}' must be {what}, got {text!r}")
            v = float(text)
            if not math.isfinite(v):
                raise BadRequest(f"query parameter '{name}' must be finite, got {text!r}")
        if not self.lo <= v <= self.hi:
            hi = "" if self.hi == math.inf else _fmt(self.hi)
            raise BadRequest(f"query parameter '{name}' must be in {_fmt(self.lo)}..{hi}, got "
                             f"{text!r}")
        return v


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def parse_query(query: str, spec: dict[str, Param]) -> dict[str, Any]:
    """Query parameters named in `spec`, each at most once and valid; anything else raises
    BadRequest."""
    if not query:
        return {}
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest(f"malformed query string {query!r}") from None
    out: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in spec:
            raise BadRequest(f"unknown query parameter '{name}'; known: {sorted(spec) or 'none'}")
        if len(values) != 1:
            raise BadRequest(f"query parameter '{name}' given {len(values)} times")
        out[name] = spec[name].parse(name, values[0])
    return out


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether arrays/objects in the JSON `text` nest deeper than `limit` (brackets inside
    strings do not count). Linear, no recursion: json.loads would recurse once per level."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE):  # the page was closed or reloaded mid-answer
            log.debug("client %s left: %r", client_address, exc)
            return
        log.error("error on a connection from %s", client_address, exc_info=True)


class DemoServer:
    """Serves `engine` over HTTP on (host, port); port 0 picks a free one."""

    def __init__(self, engine: DemoEngine, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.engine = engine
        self.page = PAGE.read_bytes()
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = _Server((host, port), handler)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.loopback_only = is_loopback(host)
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()  # open keep-alive connections
        self._conns_lock = threading.Lock()

    @property
    def url(self) -> str:
        h = self.host
        if h in ("0.0.0.0", "::", ""):
            h = "127.0.0.1"
        if ":" in h and not h.startswith("["):
            h = f"[{h}]"
        return f"http://{h}:{self.port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="snrt-demo-http", daemon=True)
        self._thread.start()
        log.info("serving on %s", self.url)

    def close(self) -> None:
        """Stop accepting requests, end open connections (their threads wait for the next
        request of a keep-alive browser otherwise) and close the socket. Safe to call twice."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5.0)
            self._thread = None
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client
        self.httpd.server_close()

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._conns_lock:
            if open_:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


class _Handler(BaseHTTPRequestHandler):
    app: DemoServer
    server_version = "snrt-demo"
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection is kept

    def setup(self) -> None:
        super().setup()
        self.app._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.app._track(self.connection, False)

    # -- plumbing ----------------------------------------------------------------------------
    def log_message(self, fmt: str, *args: Any) -> None:  # stderr -> logging
        log.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()
        self._send(status, body, "application/json")

    def _error(self, status: int, message: str) -> None:
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True  # a body we did not read may follow
        if status >= 500:
            log.error("%s %s: %s", self.command, self.path, message)
        else:
            log.info("%s %s -> %d: %s", self.command, self.path, status, message)
        self._json({"error": message, "status": status}, status)

    def _guard_host(self) -> bool:
        if not self.app.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if is_loopback(name):
            return True
        self._error(HTTPStatus.FORBIDDEN, f"Host '{host}' refused: this demo only answers "
                    "requests for a loopback address (start it with --host to change)")
        return False

    def _dispatch(self, routes: dict) -> None:
        try:
            if not self._guard_host():
                return
            url = urlsplit(self.path)
            fn = routes.get(url.path)
            if fn is None:
                other = _GET if routes is _POST else _POST
                if url.path in other:
                    allowed = "GET, HEAD" if url.path in _GET else "POST"
                    self.close_connection = True
                    raise BadRequest(f"{self.command} is not allowed on {url.path}; use "
                                     f"{allowed}", HTTPStatus.METHOD_NOT_ALLOWED)
                raise BadRequest(f"no such page: {url.path}", HTTPStatus.NOT_FOUND)
            fn(self, url.query)
        except BadRequest as e:
            self._error(e.status, str(e))
        except ConfigError as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except _CLIENT_GONE:
            self.close_connection = True  # the page went away mid-answer
        except Exception as e:
            log.exception("error answering %s %s", self.command, self.path)
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")
            except OSError:
                pass

    def do_GET(self) -> None:
        self._dispatch(_GET)

    def do_HEAD(self) -> None:
        self._dispatch(_GET)

    def do_POST(self) -> None:
        self._dispatch(_POST)

    def do_PUT(self) -> None:
        self._method_not_allowed()

    do_DELETE = do_PATCH = do_PUT

    def _method_not_allowed(self) -> None:
        self.close_connection = True  # an unread body may follow
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported")

    def _read_json(self) -> Any:
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise BadRequest("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise BadRequest(f"bad Content-Length {length!r}") from None
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise BadRequest(f"body of {n} bytes refused (at most {MAX_BODY})",
                             HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = self.rfile.read(n)
        if ctype != "application/json":
            raise BadRequest("send the body as JSON with Content-Type: application/json "
                             f"(got {ctype or 'none'!r})", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"the body is not valid JSON ({e})") from None
        if json_depth_exceeds(text, MAX_JSON_DEPTH):
            raise BadRequest(f"the body nests arrays/objects more than {MAX_JSON_DEPTH} deep; "
                             "send a flat JSON object such as {\"target_fps\": 15}")
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError, RecursionError) as e:
            raise BadRequest(f"the body is not valid JSON ({e})") from None

    # -- routes ------------------------------------------------------------------------------
    def page(self, query: str) -> None:
        parse_query(query, {})
        self._send(200, self.app.page, "text/html; charset=utf-8",
                   {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                    "connect-src 'self'"})

    def favicon(self, query: str) -> None:
        self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")

    def frame(self, query: str) -> None:
        parse_query(query, {"seq": Param(int, 0, MAX_SEQ)})
        got = self.app.engine.jpeg()
        if got is None:
            raise BadRequest("no frame yet; retry in a moment", HTTPStatus.SERVICE_UNAVAILABLE)
        seq, data = got
        self._send(200, data, "image/jpeg", {"X-Frame-Seq": str(seq)})

    def status(self, query: str) -> None:
        parse_query(query, {})
        self._json(self.app.engine.status())

    def variants(self, query: str) -> None:
        parse_query(query, {})
        self._json({"variants": self.app.engine.variants()})

    def history(self, query: str) -> None:
        q = parse_query(query, {"since": Param(float, -1.0), "max": Param(int, 1, 5000)})
        n = q.get("max", 2000)
        self._json(self.app.engine.history(q.get("since", -1.0), n))

    def get_config(self, query: str) -> None:
        parse_query(query, {})
        self._json(self.app.engine.config())

    def post_config(self, query: str) -> None:
        parse_query(query, {})
        body = self._read_json()
        self._json(self.app.engine.apply_config(body))

    def get_tasks(self, query: str) -> None:
        parse_query(query, {})
        self._json({"task": self.app.engine.rt.current_task,
                    "tasks": self.app.engine.tasks()})

    def post_task(self, query: str) -> None:
        parse_query(query, {})
        body = self._read_json()
        self._json(self.app.engine.set_task(body))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


_GET = {"/": _Handler.page, "/index.html": _Handler.page, "/frame.jpg": _Handler.frame,
        "/api/status": _Handler.status, "/api/variants": _Handler.variants,
        "/api/history": _Handler.history, "/api/config": _Handler.get_config,
        "/api/tasks": _Handler.get_tasks, "/favicon.ico": _Handler.favicon}
_POST = {"/api/config": _Handler.post_config, "/api/task": _Handler.post_task}
