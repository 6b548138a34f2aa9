"""The help-desk console: pages, forms and a live feed over the site.

Routes (all but /login and /static need a session, or a `Bearer` token for scripts):
  GET  /                      fleet: a tile per room (?q= search, ?group= building/floor)
  GET  /rooms/{room}          a room: devices, readings and their age, alerts, commands
  POST /rooms/{room}/ack      acknowledge an alert                     (technician)
  POST /rooms/{room}/devices/{device}/command   a device command      (technician)
  POST /rooms/{room}/check    run a level 1/2/3 check                  (technician)
  GET  /rooms/{room}/report   the room's last check report (as `roomd check` writes it)
  GET  /incidents[.csv]       alerts of the last days, time to acknowledge and to clear
  GET  /events                server-sent events: which rooms changed
Every state-changing request needs the session's CSRF token and a same-origin Origin; every
acknowledgement and command is logged with the user and announced with `by`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2

from ..daemon.bookings import Booking
from ..daemon.checks import render_html
from ..daemon.commands import CommandService
from ..daemon.config import ConsoleConfig
from ..daemon.model import Transition
from ..daemon.notify_text import describe
from ..daemon.site import Site
from ..daemon.units import severity_rank
from ..drivers.base import CommandError
from ..i18n import LANGUAGES, translations
from . import views
from .auth import Gate, Session
from .http import HttpError, HttpServer, Request, Response

log = logging.getLogger("roomd.console")

HERE = Path(__file__).parent
SESSION_COOKIE = "roomd_session"
LOGIN_COOKIE = "roomd_login"  # the login form's CSRF token (double submit)
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
LIVE_DEBOUNCE = 0.5  # seconds: changes within this go out as one event
TICK = 5.0  # seconds: readings age even when nothing changes
INCIDENT_DAYS = 7
# The check report is the standalone page `roomd check` writes, with its own inline style.
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'"


@dataclass
class Backend:
    """What the console needs of the daemon: the site, bookings, checks and commands."""

    site: Site
    commands: CommandService
    current: Callable[[str], Booking | None]
    upcoming: Callable[[str], Booking | None]
    bookings: Callable[[str], list[Booking]]
    last_check: Callable[[], dict[str, dict[str, Any]]]
    check_room: Callable[[str, int | None], Awaitable[dict[str, Any]]]
    spawn: Callable[[Coroutine[Any, Any, Any]], None]


@cache
def _environment(language: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.filters["value"] = views.fmt_value
    env.filters["seconds"] = views.fmt_seconds
    env.filters["when"] = _when
    return env


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).astimezone().strftime("%Y-%m-%d %H:%M")


class Console:
    def __init__(self, config: ConsoleConfig, backend: Backend, language: str) -> None:
        self.config = config
        self.backend = backend
        self.site = backend.site
        self.language = language if language in LANGUAGES else "en"
        self.gate = Gate(config, self.site.clock.monotonic)
        self.tls = _tls(config)
        self.server = HttpServer(config.host, config.port, self.handle, self.tls)
        self._subscribers: set[asyncio.Queue[str]] = set()
        self._dirty: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None
        self.site.room_listeners.append(self._room_changed)
        self._statics = {name: (HERE / "static" / name).read_bytes() for name in STATIC}
        self._flash: dict[str, tuple[str, str]] = {}  # session token → (kind, text)
        self.running_checks: set[str] = set()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.server.host}:{self.server.port}/"

    async def start(self) -> None:
        await self.server.start()
        log.info("console on %s", self.url)

    async def stop(self) -> None:
        for q in self._subscribers:
            q.put_nowait("")  # ends each event stream
        await self.server.stop()

    # ---- live feed ---------------------------------------------------------------------------

    def _room_changed(self, room_id: str) -> None:
        if not self._subscribers:
            return
        self._dirty.add(room_id)
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(LIVE_DEBOUNCE, self._send_dirty)

    def _send_dirty(self) -> None:
        self._flush = None
        rooms = " ".join(sorted(self._dirty))
        self._dirty.clear()
        for q in self._subscribers:
            if q.qsize() < 20:  # a reader that does not read loses updates, not memory
                q.put_nowait(f"event: rooms\ndata: {rooms}\n\n")

    async def _events(self) -> AsyncIterator[bytes]:
        q: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            yield b"retry: 3000\n\n"
            while True:
                try:
                    async with asyncio.timeout(TICK):
                        message = await q.get()
                except TimeoutError:
                    message = "event: tick\ndata: \n\n"
                if not message:
                    return
                yield message.encode()
        finally:
            self._subscribers.discard(q)

    # ---- requests ----------------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        path = req.path
        if path.startswith("/static/"):
            name = path.removeprefix("/static/")
            if name not in STATIC:
                raise HttpError(404, "not found")
            return Response(
                200, self._statics[name], STATIC[name], [("cache-control", "max-age=300")]
            )
        if path == "/login":
            return await self._login(req)
        if path == "/favicon.ico":
            raise HttpError(404, "no icon")
        session = self._session(req)
        if session is None:
            if req.method == "GET" and not path.startswith("/events"):
                return Response.redirect("/login?next=" + quote(path, safe="/"))
            raise HttpError(401, "log in first")
        if req.method == "POST":
            self._check_post(req, session)
        if path == "/logout" and req.method == "POST":
            self.gate.close(session.token)
            log.info("console: %s logged out", session.account.name)
            return self._clear_cookie(Response.redirect("/login"))
        if path == "/events" and req.method == "GET":
            return Response(
                200, b"", "text/event-stream", [("x-accel-buffering", "no")], self._events()
            )
        if path == "/" and req.method in ("GET", "HEAD"):
            return self._fleet(req, session)
        if path in ("/incidents", "/incidents.csv") and req.method in ("GET", "HEAD"):
            return self._incidents(req, session, csv=path.endswith(".csv"))
        match = re.fullmatch(r"/rooms/([a-z0-9_-]+)(/.*)?", path)
        if match:
            room = self.site.config.room(match.group(1))
            if room is None:
                raise HttpError(404, f"no room {match.group(1)}")
            return await self._room_route(req, session, room.id, match.group(2) or "")
        raise HttpError(404, "not found")

    def _session(self, req: Request) -> Session | None:
        auth = req.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            if self.gate.throttled(f"addr:{req.client}"):
                raise HttpError(429, "too many failed logins from this address; wait 5 minutes")
            account = self.gate.bearer(auth[7:].strip())
            if account is None:
                self.gate.failed(f"addr:{req.client}")
                log.warning("console: wrong bearer token from %s", req.client)
                return None
            # A script's request: a session for this request only, its CSRF token known.
            s = self.gate.open(account)
            self.gate.close(s.token)
            s.csrf = "bearer"
            return s
        return self.gate.session(req.cookies.get(SESSION_COOKIE))

    def _check_post(self, req: Request, session: Session) -> None:
        """Same origin and the session's CSRF token on everything that changes something."""
        if session.csrf == "bearer":
            return  # no cookie was involved: nothing a foreign page could forge
        origin = req.headers.get("origin")
        if origin is not None and origin != "null":
            host = urlsplit(origin).netloc
            if host != req.headers.get("host", "") and origin != self._public_origin():
                raise HttpError(403, "cross-origin request refused")
        form = req.form()
        if not self.gate.csrf_ok(session, form.get("csrf") or req.headers.get("x-csrf-token")):
            raise HttpError(403, "missing or stale form token; reload the page")

    def _public_origin(self) -> str | None:
        if not self.config.public_url:
            return None
        u = urlsplit(self.config.public_url)
        return f"{u.scheme}://{u.netloc}"

    def _cookie(self, name: str, value: str, max_age: int | None = None) -> tuple[str, str]:
        secure = (
            "; Secure" if self.tls or (self.config.public_url or "").startswith("https") else ""
        )
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return ("set-cookie", f"{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}")

    def _clear_cookie(self, response: Response) -> Response:
        response.headers.append(self._cookie(SESSION_COOKIE, "", 0))
        return response

    def _language(self, session: Session | None) -> str:
        if session is not None and session.account.language:
            return session.account.language
        return self.language

    def _page(
        self, template: str, session: Session | None, status: int = 200, **context: Any
    ) -> Response:
        language = self._language(session)
        env = _environment(language)
        flash = self._flash.pop(session.token, None) if session is not None else None
        body = env.get_template(template).render(
            describe=lambda a: describe(a, self.site.config.label(a.room, a.metric), language),
            site=self.site.config.site,
            session=session,
            language=language,
            flash=flash,
            **context,
        )
        return Response(status, body.encode())

    def _say(self, session: Session, kind: str, text: str) -> None:
        self._flash[session.token] = (kind, text)
        if len(self._flash) > 1000:
            self._flash.pop(next(iter(self._flash)))

    def _tr(self, session: Session | None) -> Any:
        return translations(self._language(session))

    # ---- login -------------------------------------------------------------------------------

    async def _login(self, req: Request) -> Response:
        token = req.cookies.get(LOGIN_COOKIE) or ""
        nxt = req.query.get("next", "/")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"  # never a redirect off the console
        if req.method == "POST":
            form = req.form()
            if not token or form.get("csrf") != token:
                raise HttpError(403, "missing or stale form token; reload the page")
            name, secret = form.get("user", ""), form.get("password", "")
            account = await self.gate.login(name, secret, req.client)
            if account is None:
                log.warning("console: failed login for %r from %s", name[:64], req.client)
                tr = translations(self.language)
                return self._login_page(tr.gettext("Wrong name or password."), nxt, 401, token)
            session = self.gate.open(account)
            log.info("console: %s (%s) logged in from %s", account.name, account.role, req.client)
            response = Response.redirect(nxt)
            response.headers.append(self._cookie(SESSION_COOKIE, session.token))
            return response
        return self._login_page(None, nxt, 200, token)

    def _login_page(self, error: str | None, nxt: str, status: int, token: str = "") -> Response:
        # One token per browser, kept while it is there: a second tab (or the browser's own
        # favicon request) must not void the form already shown.
        if not re.fullmatch(r"[A-Za-z0-9_-]{32}", token):
            token = secrets.token_urlsafe(24)
        response = self._page("login.html", None, status, error=error, csrf=token, next=nxt)
        response.headers.append(self._cookie(LOGIN_COOKIE, token))
        return response

    # ---- pages -------------------------------------------------------------------------------

    def _floor_label(self, session: Session | None) -> Callable[[str, int], str]:
        tr = self._tr(session)
        return lambda building, floor: (
            tr.gettext("%(building)s · floor %(floor)s")
            % {
                "building": building,
                "floor": floor,
            }
        )

    def _tiles(self, session: Session | None) -> list[views.Tile]:
        b = self.backend
        return views.tiles(
            self.site, b.current, b.upcoming, b.last_check(), self._floor_label(session)
        )

    def _fleet(self, req: Request, session: Session) -> Response:
        all_tiles = self._tiles(session)
        q, group, status = (req.query.get(k, "") for k in ("q", "group", "status"))
        shown = views.select(all_tiles, q, group, status)
        counts: dict[str, int] = {}
        for t in all_tiles:
            counts[t.status] = counts.get(t.status, 0) + 1
        groups = sorted({t.group for t in all_tiles if t.group})
        template = "_tiles.html" if req.query.get("fragment") else "fleet.html"
        return self._page(
            template,
            session,
            tiles=shown,
            total=len(all_tiles),
            counts=counts,
            groups=groups,
            q=q,
            group=group,
            status_filter=status,
        )

    def _incidents(self, req: Request, session: Session, csv: bool) -> Response:
        try:
            days = max(1, min(366, int(req.query.get("days", INCIDENT_DAYS))))
        except ValueError:
            days = INCIDENT_DAYS
        rows = self.site.store.incidents(self.site.clock.time() - days * 86400, limit=5000)
        if csv:
            stamp = datetime.now(UTC).strftime("%Y%m%d")
            return Response(
                200,
                views.incidents_csv(rows),
                "text/csv; charset=utf-8",
                [
                    (
                        "content-disposition",
                        f'attachment; filename="{self.site.config.site}-incidents-{stamp}.csv"',
                    )
                ],
            )
        active = sorted(
            self.site.book.active.values(),
            key=lambda a: (severity_rank(a.severity), a.since),
        )
        return self._page("incidents.html", session, rows=rows, active=active, days=days)

    async def _room_route(
        self, req: Request, session: Session, room_id: str, rest: str
    ) -> Response:
        if rest in ("", "/") and req.method in ("GET", "HEAD"):
            return self._room(req, session, room_id)
        if rest == "/report" and req.method in ("GET", "HEAD"):
            report = self.backend.last_check().get(room_id)
            if report is None:
                raise HttpError(404, "no check report for this room yet")
            return Response(
                200,
                render_html(report, self._language(session)).encode(),
                headers=[("content-security-policy", REPORT_CSP)],
            )
        if req.method != "POST":
            raise HttpError(405, "method not allowed")
        back = Response.redirect(f"/rooms/{room_id}")
        tr = self._tr(session)
        if not session.may_act:
            log.warning("console: viewer %s tried %s", session.account.name, req.path)
            self._say(session, "error", tr.gettext("Viewers cannot acknowledge or command."))
            return self._room_page(session, room_id, 403)
        form = req.form()
        who = f"{session.account.name}@console"
        if rest == "/ack":
            alert_id = form.get("alert", "")
            alert = self.site.book.active.get(alert_id)
            if alert is None or alert.room != room_id:
                self._say(session, "error", tr.gettext("No such active alert."))
                return back
            t: Transition | None = self.backend.commands.acknowledge(alert_id, who)
            log.info("console: %s acknowledged %s from %s", who, alert_id, req.client)
            if t is not None:
                self._say(
                    session, "ok", tr.gettext("Acknowledged %(alert)s.") % {"alert": alert_id}
                )
            return back
        match = re.fullmatch(r"/devices/([a-z0-9_-]+)/command", rest)
        if match:
            return await self._command(session, room_id, match.group(1), form, who, req.client)
        if rest == "/check":
            return self._start_check(session, room_id, form.get("level", ""), who)
        raise HttpError(404, "not found")

    def _room(self, req: Request, session: Session, room_id: str) -> Response:
        if req.query.get("fragment"):
            return self._room_page(session, room_id, 200, "_room_live.html")
        return self._room_page(session, room_id, 200)

    def _room_page(
        self, session: Session, room_id: str, status: int, template: str = "room.html"
    ) -> Response:
        room = self.site.config.room(room_id)
        assert room is not None
        alerts = views.alerts_by_room(self.site).get(room_id, [])
        rows = views.device_rows(self.site, room_id)
        check = self.backend.last_check().get(room_id)
        status_name = views.room_status([r.poller for r in rows], alerts)
        now = self.site.clock.time()
        bookings = [b for b in self.backend.bookings(room_id) if b.end >= now][:10]
        return self._page(
            template,
            session,
            status,
            room=room,
            name=room.config.name or room.id,
            group=views.room_group(room, self._floor_label(session)),
            status_name=status_name,
            alerts=alerts,
            rows=rows,
            check=check,
            checking=room_id in self.running_checks,
            bookings=bookings,
            current=self.backend.current(room_id),
            attendees=self.site.attendees.get(room_id),
        )

    async def _command(
        self,
        session: Session,
        room_id: str,
        dev_id: str,
        form: dict[str, str],
        who: str,
        client: str,
    ) -> Response:
        back = Response.redirect(f"/rooms/{room_id}#dev-{dev_id}")
        tr = self._tr(session)
        poller = self.site.room_pollers.get(room_id, {}).get(dev_id)
        if poller is None:
            raise HttpError(404, f"no device {dev_id}")
        name = form.get("command", "")
        spec = next(
            (
                s
                for s in poller.driver.command_specs()
                if s.name == name and s.label == form.get("label", s.label)
            ),
            None,
        )
        if spec is None:
            self._say(session, "error", tr.gettext("This device takes no such command."))
            return back
        try:
            args = {a.name: a.parse(form.get(f"arg.{a.name}", "")) for a in spec.args}
        except CommandError as exc:
            self._say(session, "error", f"{dev_id}: {exc}")
            return back
        log.info("console: %s: %s/%s %s %s from %s", who, room_id, dev_id, name, args, client)
        result = await self.backend.commands.run_device_command(poller, name, args, by=who)
        if result.get("ok"):
            answer = views.fmt_answer(result.get("result"))
            self._say(session, "ok", f"{dev_id} {name}: {answer}")
        else:
            self._say(session, "error", f"{dev_id} {name}: {result.get('error')}")
        return back

    def _start_check(self, session: Session, room_id: str, level_text: str, who: str) -> Response:
        tr = self._tr(session)
        back = Response.redirect(f"/rooms/{room_id}")
        if level_text not in ("1", "2", "3"):
            self._say(session, "error", tr.gettext("Choose a check level: 1, 2 or 3."))
            return back
        if room_id in self.running_checks:
            self._say(session, "error", tr.gettext("A check of this room is already running."))
            return back
        log.info("console: %s runs a level %s check of %s", who, level_text, room_id)
        self.running_checks.add(room_id)

        async def run() -> None:
            try:
                await self.backend.check_room(room_id, int(level_text))
            except Exception:
                log.exception("console: check of %s", room_id)
            finally:
                self.running_checks.discard(room_id)
                self._room_changed(room_id)

        self.backend.spawn(run())
        self._room_changed(room_id)
        self._say(session, "ok", tr.gettext("Check started; the result appears here."))
        return back


def _tls(config: ConsoleConfig) -> ssl.SSLContext | None:
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return ctx
