"""The console's web app (Starlette): pages, a JSON API, live updates as
server-sent events, and the admin actions.

Nothing but ``/login``, ``/healthz`` and the login page's stylesheet is served
without a session: pages redirect to ``/login``, the API answers 401. Actions
need the admin role (403 otherwise) and the session's CSRF token in the
``X-CSRF-Token`` header (403 otherwise). Every response carries a strict
Content-Security-Policy (scripts from the console itself only).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._actions import ActionError, Actions, AuditLog
from ._auth import Accounts, LoginThrottle, Session, Sessions
from ._state import SORT_KEYS, FleetState

__all__ = ["COOKIE", "Console", "create_app"]

COOKIE = "continuum_console"
HERE = Path(__file__).parent
_PUBLIC = ("/login", "/healthz", "/static/console.css")
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'"
)


@dataclass(slots=True)
class Console:
    """What the app serves from."""

    state: FleetState
    accounts: Accounts
    sessions: Sessions
    audit: AuditLog
    actions: Actions | None = None  # None: actions unavailable (no client)
    secure_cookies: bool = False
    push_interval: float = 0.5
    throttle: LoginThrottle | None = None


class _Headers:
    """ASGI middleware: security headers on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not scope["path"].startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


def create_app(console: Console) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    c = console
    throttle = c.throttle or LoginThrottle()

    def session_of(request: Request) -> Session | None:
        return c.sessions.get(request.cookies.get(COOKIE))

    Endpoint = Callable[[Request, Session], Awaitable[Response]]

    def page(fn: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            s = session_of(request)
            if s is None:
                return RedirectResponse("/login", status_code=303)
            return await fn(request, s)

        return wrapped

    def api(fn: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            s = session_of(request)
            if s is None:
                return JSONResponse({"error": "login required"}, status_code=401)
            return await fn(request, s)

        return wrapped

    def render(request: Request, name: str, s: Session | None, **ctx: Any) -> Response:
        return templates.TemplateResponse(request, name, {"session": s, **ctx})

    # -- login ------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/", status_code=303)
        return render(request, "login.html", None, error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        user, pw = str(form.get("username", ""))[:200], str(form.get("password", ""))[:1000]
        addr = request.client.host if request.client else "?"
        keys = (f"ip:{addr}", f"user:{user}")
        if throttle.blocked(*keys):
            msg = "Too many failed logins; try again in a minute."
            return _login_error(request, msg, 429)
        op = await run_in_threadpool(c.accounts.authenticate, user, pw)
        if op is None:
            throttle.failed(*keys)
            return _login_error(request, "Wrong user name or password.", 401)
        throttle.succeeded(*keys)
        s = c.sessions.create(op)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(
            COOKIE,
            s.token,
            max_age=int(c.sessions.ttl),
            httponly=True,
            samesite="strict",
            secure=c.secure_cookies,
            path="/",
        )
        return resp

    def _login_error(request: Request, msg: str, status: int) -> Response:
        resp = render(request, "login.html", None, error=msg)
        resp.status_code = status
        return resp

    async def logout(request: Request) -> Response:
        s = session_of(request)
        form = await request.form()
        if s is not None:
            if not s.csrf_ok(str(form.get("csrf", ""))):
                return PlainTextResponse("CSRF token missing or wrong", status_code=403)
            c.sessions.drop(s.token)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    # -- pages ------------------------------------------------------------------------
    @page
    async def fleet(request: Request, s: Session) -> Response:
        return render(request, "fleet.html", s, nav="fleet")

    @page
    async def device(request: Request, s: Session) -> Response:
        return render(request, "device.html", s, nav="fleet", dev=request.path_params["dev"])

    @page
    async def nodes(request: Request, s: Session) -> Response:
        return render(request, "nodes.html", s, nav="nodes")

    @page
    async def objects(request: Request, s: Session) -> Response:
        return render(request, "objects.html", s, nav="objects")

    @page
    async def audit(request: Request, s: Session) -> Response:
        return render(request, "audit.html", s, nav="audit")

    # -- JSON API ---------------------------------------------------------------------
    def fleet_params(request: Request) -> dict[str, Any]:
        qp = request.query_params
        return {
            "q": qp.get("q", "")[:200],
            "sort": qp.get("sort", "id") if qp.get("sort") in SORT_KEYS else "id",
            "desc": qp.get("desc") in ("1", "true"),
            "offset": _int(qp.get("offset"), 0, 0, 10_000_000),
            "limit": _int(qp.get("limit"), 50, 1, 500),
        }

    def device_data(dev: str, since: float | None = None) -> dict[str, Any] | None:
        view = c.state.device_view(dev, since)
        if view is not None:
            objs = c.state.objects_view()["objects"]
            view["objects"] = [o for o in objs if _belongs(o, dev)]
        return view

    def view_data(view: str, request: Request, since: float | None) -> dict[str, Any] | None:
        if view == "fleet":
            return c.state.fleet_page(**fleet_params(request))
        if view == "device":
            return device_data(request.query_params.get("id", ""), since)
        if view == "nodes":
            return c.state.nodes_view()
        if view == "objects":
            qp = request.query_params
            return c.state.objects_view(qp.get("q", "")[:200], qp.get("node", ""))
        if view == "audit":
            return {"version": c.audit.count, "entries": c.audit.tail(200)}
        return None

    @api
    async def api_view(request: Request, s: Session) -> Response:
        view = request.path_params["view"]
        data = view_data(view, request, None)
        if data is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(data)

    @api
    async def api_device(request: Request, s: Session) -> Response:
        data = device_data(request.path_params["dev"])
        if data is None:
            return JSONResponse({"error": "unknown device"}, status_code=404)
        return JSONResponse(data)

    @api
    async def stream(request: Request, s: Session) -> Response:
        view = request.query_params.get("view", "fleet")
        if view_data(view, request, None) is None and view != "device":
            return JSONResponse({"error": "not found"}, status_code=404)
        return StreamingResponse(
            _events(request, s, view),
            media_type="text/event-stream",
            headers={"x-accel-buffering": "no"},
        )

    async def _events(request: Request, s: Session, view: str) -> AsyncIterator[str]:
        last_version: Any = None
        since: float | None = None
        quiet = 0.0
        yield "retry: 2000\n\n"
        while True:
            if not c.sessions.alive(s):
                yield "event: logout\ndata: {}\n\n"
                return
            # off the event loop: sorting a large fleet takes milliseconds
            data = await run_in_threadpool(view_data, view, request, since)
            if data is not None and (data.get("version") != last_version or quiet >= 5.0):
                last_version = data.get("version")
                if view == "device":
                    data["incremental"] = since is not None
                    if data["samples"]:
                        since = data["samples"][-1][0]
                    elif since is None:
                        since = 0.0
                yield f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
                quiet = 0.0
            await asyncio.sleep(c.push_interval)
            quiet += c.push_interval

    # -- actions ----------------------------------------------------------------------
    async def _act(request: Request, s: Session, action: str) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "a JSON object is required"}, status_code=400)
        target = str(body.get("device") or body.get("ref") or body.get("node") or "")[:300]
        if not s.csrf_ok(request.headers.get("x-csrf-token")):
            c.audit.write(user=s.user, action=action, target=target, outcome="refused", why="csrf")
            return JSONResponse({"error": "CSRF token missing or wrong"}, status_code=403)
        if not s.is_admin:
            c.audit.write(user=s.user, action=action, target=target, outcome="refused", why="role")
            return JSONResponse({"error": "admins only"}, status_code=403)
        if c.actions is None:
            return JSONResponse({"error": "actions unavailable"}, status_code=503)
        try:
            if action == "retrain":
                epochs = body.get("epochs")
                if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool)):
                    raise ActionError("epochs must be an integer")
                entry = await run_in_threadpool(c.actions.retrain, s.user, target, epochs=epochs)
            elif action in ("drain", "undrain"):
                undo = action == "undrain"
                entry = await run_in_threadpool(c.actions.drain, s.user, target, undo=undo)
            else:
                entry = await run_in_threadpool(c.actions.delete, s.user, target)
        except ActionError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        status = 200 if entry.get("outcome") in ("ok", "started") else 502
        return JSONResponse(entry, status_code=status)

    @api
    async def act_retrain(request: Request, s: Session) -> Response:
        return await _act(request, s, "retrain")

    @api
    async def act_delete(request: Request, s: Session) -> Response:
        return await _act(request, s, "delete")

    @api
    async def act_drain(request: Request, s: Session) -> Response:
        return await _act(request, s, "drain")

    @api
    async def act_undrain(request: Request, s: Session) -> Response:
        return await _act(request, s, "undrain")

    class _Static(StaticFiles):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            request = Request(scope)
            if scope["path"] not in _PUBLIC and session_of(request) is None:
                await PlainTextResponse("login required", status_code=401)(scope, receive, send)
                return
            await super().__call__(scope, receive, send)

    routes = [
        Route("/healthz", health),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", fleet),
        Route("/device/{dev}", device),
        Route("/nodes", nodes),
        Route("/objects", objects),
        Route("/audit", audit),
        Route("/api/stream", stream),
        Route("/api/device/{dev}", api_device),
        Route("/api/{view}", api_view),
        Route("/api/actions/retrain", act_retrain, methods=["POST"]),
        Route("/api/actions/delete", act_delete, methods=["POST"]),
        Route("/api/actions/drain", act_drain, methods=["POST"]),
        Route("/api/actions/undrain", act_undrain, methods=["POST"]),
        Mount("/static", app=_Static(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_Headers)
    return app


def _int(v: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(v))) if v is not None else default
    except ValueError:
        return default


def _belongs(obj: dict[str, Any], dev: str) -> bool:
    """Whether an object is the device's: owned by it or under its alias namespace."""
    if obj.get("owner") == dev:
        return True
    return any(str(a).startswith(dev + "/") for a in obj.get("aliases") or ())
