"""The owner's page as an ASGI application (Starlette + Jinja2; docs/web.md).

Server-rendered pages that work without JavaScript; ``static/app.js`` only refreshes the live
status in place. Every page but ``/login`` and ``/static`` needs a session; every POST needs
the session's CSRF token; every route checks the role's permission
(:data:`appliance.web.accounts.PERMISSIONS`). Everything shown that came from the line (caller
number and name) goes through Jinja2's autoescape and :func:`line_text`.

Heavy work stays out of this process (its RSS budget is 50 MB, docs/performance.md):
hand-over and erase run :mod:`appliance.web.jobs` in a child process (it needs the audio
stack to write WAV), health runs ``appliance doctor --json``; the live state comes from the
daemon's control socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.errors import StoreError
from appliance.reference import display_reference, is_canonical
from appliance.store.db import OUTCOMES, Store
from appliance.store.lookup import locate_recording
from appliance.text import printable
from appliance.web.accounts import Account, Accounts
from appliance.web.i18n import PAGE_LANGUAGES, translator, value_words
from appliance.web.index import AUDIT_PAGE_SIZE, CallIndex, Search
from appliance.web.sessions import COOKIE_NAME, CSRF_FIELD, Session, Sessions, Throttle

if TYPE_CHECKING:
    from appliance.config import Config

_LOGGER = logging.getLogger(__name__)

LANG_COOKIE: Final = "appliance_lang"
LOGIN_CSRF_COOKIE: Final = "appliance_login_csrf"
#: A play is audited once per session and call within this window (a seek is a new range
#: request, not a new listening).
PLAY_AUDIT_WINDOW_S: Final = 600.0
#: Longest a hand-over or erase job may take (FLAC → WAV of an hour's call is ~10 s on a Pi).
JOB_TIMEOUT_S: Final = 300.0
DOCTOR_TIMEOUT_S: Final = 60.0
JOURNAL_LINES: Final = 200
#: Audit actions written by the page (the store writes ``export`` and ``erase`` itself).
AUDIT_LOGIN: Final = "web-login"
AUDIT_LOGIN_FAILED: Final = "web-login-failed"
AUDIT_PLAY: Final = "play"
AUDIT_DOWNLOAD: Final = "download"
AUDIT_VERIFY: Final = "audit-verify"
#: Session flash key of the last verification's result (JSON list of problems).
VERIFY_FLASH: Final = "audit-verify"
#: Media types of the codecs the recorder writes (config.CODECS).
_AUDIO_TYPES: Final = {".flac": "audio/flac", ".opus": "audio/ogg", ".ogg": "audio/ogg",
                       ".wav": "audio/wav"}
_SECURITY_HEADERS: Final = {
    # Everything the page needs is its own: no inline script, no third party, no framing.
    "Content-Security-Policy": "default-src 'self'; media-src 'self'; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


#: The systemd units whose journal the logs page shows (the daemon's and the page's own).
JOURNAL_UNITS: Final = ("appliance", "appliance-web")


@dataclass(frozen=True, slots=True)
class WebSettings:
    """What the page needs to know, built by :meth:`from_config` from the configuration.

    No field has a default: the configuration is the one source of the values, and
    ``appliance web`` adds what only it knows (TLS, the arguments of child commands).

    Attributes:
        db_path: the call index.
        recordings_dir: root of the recordings tree.
        state_dir: the daemon's state directory (its control socket lives there).
        web_dir: accounts, certificate.
        language: default page language (``web.language``, else ``device.language``).
        device_language, languages_dir: ``device.language`` and ``speech.languages_dir``:
            an export's SUMMARY.txt speaks the device's language first, as the CLI's does.
        lines: configured line names (the search filter).
        secure_cookies: set the ``Secure`` cookie flag (``appliance web`` sets it whenever it
            serves HTTPS).
        session_idle_s, session_max_s, lockout_failures, lockout_s: the ``[web]`` keys of the
            same names (docs/configuration.md).
        fingerprint: the TLS certificate's SHA-256 (footer), or None on plain HTTP.
        cli_args: ``--config``/``--state-dir`` arguments for child ``appliance`` commands.
        journal_units: systemd units whose journal the logs page shows.
    """

    db_path: Path
    recordings_dir: Path
    state_dir: Path
    web_dir: Path
    language: str
    device_language: str
    languages_dir: str
    lines: tuple[str, ...]
    secure_cookies: bool
    session_idle_s: float
    session_max_s: float
    lockout_failures: int
    lockout_s: float
    fingerprint: str | None
    cli_args: tuple[str, ...]
    journal_units: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Config, *, secure_cookies: bool, fingerprint: str | None,
                    cli_args: tuple[str, ...]) -> WebSettings:
        """The page's settings of ``config``, with what ``appliance web`` adds."""
        web = config.web
        return cls(
            db_path=config.db_path, recordings_dir=config.recordings_dir,
            state_dir=config.device.state_dir, web_dir=config.web_dir,
            language=web.language or config.device.language,
            device_language=config.device.language, languages_dir=config.speech.languages_dir,
            lines=tuple(line.name for line in config.lines), secure_cookies=secure_cookies,
            session_idle_s=web.session_idle_s, session_max_s=web.session_max_s,
            lockout_failures=web.lockout_failures, lockout_s=web.lockout_s,
            fingerprint=fingerprint, cli_args=cli_args, journal_units=JOURNAL_UNITS)


class _Forbidden(Exception):
    """The session's role lacks the permission."""


class _NotFound(Exception):
    """No such call or page."""


def line_text(value: object) -> str:
    """Text that came from the telephone line, made safe to read
    (:func:`appliance.text.printable`); HTML escaping is Jinja2's autoescape, after this."""
    return "" if value is None else printable(value)


def _led(pattern: object) -> str:
    """A panel LED pattern as the daemon reports it (``on``, ``off``, ``('blink', 0.25,
    0.25)``, ``('code', 4)``) in a word and a number a person reads."""
    text = str(pattern)
    if not text.startswith("("):
        return text
    parts = [p.strip(" '\"") for p in text.strip("()").split(",")]
    if parts[0] == "code" and len(parts) > 1:
        return f"code {parts[1]}"
    if parts[0] == "blink" and len(parts) > 1:
        return f"blink {parts[1]} s"
    return parts[0]


def _layers(value: object) -> list[dict[str, Any]]:
    """``notice_layers`` as stored (a JSON list of ``{"layer", "version"?, "played"}``; schema
    v4), or [] for an older row or an unreadable value."""
    if not value:
        return []
    try:
        layers = json.loads(str(value))
    except ValueError:
        return []
    return [x for x in layers if isinstance(x, dict)] if isinstance(layers, list) else []


def _when(t: float | None) -> str:
    if not t:
        return "—"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _parse_date(text: str, *, end: bool = False) -> float | None:
    """``YYYY-MM-DD`` (an ``<input type=date>``) → local midnight epoch; end = next midnight."""
    text = text.strip()
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        return None
    if end:
        day += dt.timedelta(days=1)
    return dt.datetime.combine(day, dt.time()).astimezone().timestamp()


class WebApp:
    """The page's state: settings, accounts, sessions, the index, templates."""

    def __init__(self, settings: WebSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.accounts = Accounts.in_dir(settings.web_dir)
        self.sessions = Sessions(idle_s=settings.session_idle_s, max_s=settings.session_max_s,
                                 clock=clock)
        self.throttle = Throttle(max_failures=settings.lockout_failures,
                                 window_s=settings.lockout_s, clock=clock)
        self._clock = clock
        self._store: Store | None = None
        self._index: CallIndex | None = None
        self._played: dict[tuple[str, str], float] = {}
        self.env = Environment(loader=PackageLoader("appliance.web", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(line_text=line_text, when=_when, ref=display_reference, led=_led,
                                layers=_layers)

    # ------------------------------------------------------------------ index access

    def store(self) -> Store:
        """The index for writes (audit) and the store's own reads; opened on first use.

        Raises:
            StoreError: no index yet (the page never creates it: the daemon owns the file).
        """
        if self._store is None:
            if not self.settings.db_path.exists():
                raise StoreError(f"no index at {self.settings.db_path} yet")
            self._store = Store.open(self.settings.db_path, check=False)
        return self._store

    def index(self) -> CallIndex:
        """The read-only search connection; opened on first use."""
        if self._index is None:
            self.store()  # the same existence rule (and the migration, if any)
            self._index = CallIndex(self.settings.db_path)
        return self._index

    async def close(self) -> None:
        """Close the index connections."""
        if self._index is not None:
            self._index.close()
        if self._store is not None:
            await self._store.close()

    async def audit(self, action: str, session: Session | None, request: Request, *,
                    account: str | None = None, reference: str | None = None,
                    **details: Any) -> None:
        """Append an audit row naming the account and the client address."""
        who = account or (session.account if session else "?")
        client = _client(request)
        await self.store().append_audit(action, actor=f"web:{who}@{client}",
                                        reference=reference,
                                        details={"account": who, "client": client, **details})

    # ------------------------------------------------------------------ rendering

    def language(self, request: Request) -> str:
        lang = request.cookies.get(LANG_COOKIE, "")
        return lang if lang in PAGE_LANGUAGES else self.settings.language

    def render(self, request: Request, template: str, session: Session | None,
               status_code: int = 200, **context: Any) -> HTMLResponse:
        lang = self.language(request)
        account = self.accounts.get(session.account) if session else None
        t = translator(lang)
        html = self.env.get_template(template).render(
            t=t, tv=value_words(t), lang=lang, session=session, account=account,
            csrf_field=CSRF_FIELD, fingerprint=self.settings.fingerprint,
            path=request.url.path, outcomes=OUTCOMES, **context)
        return HTMLResponse(html, status_code=status_code)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


# ---------------------------------------------------------------------- the application


def create_app(settings: WebSettings, *, clock: Callable[[], float] = time.time) -> Starlette:
    """Build the ASGI application.

    Args:
        settings: see :class:`WebSettings`.
        clock: epoch-seconds clock for sessions and throttling (tests inject one).
    """
    web = WebApp(settings, clock=clock)

    def current(request: Request) -> Session | None:
        def password_stamp(name: str) -> float | None:
            acc = web.accounts.get(name)
            return None if acc is None else acc.password_changed_at

        return web.sessions.get(request.cookies.get(COOKIE_NAME),
                                password_stamp=password_stamp)

    Handler = Callable[[Request, Session, Account], Awaitable[Response]]

    def page(permission: str | None, *, post: bool = False) -> Callable[[Handler], Any]:
        """Wrap a handler: a session (else to /login), its permission, CSRF on POST."""

        def wrap(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                session = current(request)
                account = web.accounts.get(session.account) if session else None
                if session is None or account is None:
                    if request.method == "GET" and "text/html" in request.headers.get(
                            "accept", ""):
                        return RedirectResponse("/login?next=" + request.url.path, 303)
                    return PlainRefusal(401, "login required")
                t = translator(web.language(request))
                if post:
                    form = await request.form()
                    if not session.csrf_ok(form.get(CSRF_FIELD)):  # type: ignore[arg-type]
                        return web.render(request, "message.html", session, 403,
                                          title=t("failed"), message=t("bad_form"))
                    request.state.form = form
                if permission is not None and not account.can(permission):
                    return web.render(request, "message.html", session, 403,
                                      title=t("failed"), message=t("forbidden"))
                try:
                    return await fn(request, session, account)
                except _NotFound:
                    return web.render(request, "message.html", session, 404,
                                      title=t("failed"), message=t("not_found"))
                except StoreError as exc:
                    _LOGGER.warning("Web page %s: %s", request.url.path, exc)
                    return web.render(request, "message.html", session, 503,
                                      title=t("failed"), message=str(exc))

            return endpoint

        return wrap

    # -------------------------------------------------------------- login / logout

    async def login_form(request: Request) -> Response:
        if current(request) is not None:
            return RedirectResponse("/", 303)
        token = secrets.token_urlsafe(32)
        response = web.render(request, "login.html", None, login_csrf=token,
                              next=_safe_next(request.query_params.get("next", "/")))
        _set_cookie(response, LOGIN_CSRF_COOKIE, token, settings, max_age=3600)
        return response

    async def login(request: Request) -> Response:
        form = await request.form()
        t = translator(web.language(request))
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        submitted = str(form.get(CSRF_FIELD, ""))
        if not cookie or not secrets.compare_digest(cookie, submitted):
            return web.render(request, "message.html", None, 403, title=t("failed"),
                              message=t("bad_form"))
        name = str(form.get("account", "")).strip().lower()
        password = str(form.get("password", ""))
        next_url = _safe_next(str(form.get("next", "/")))
        client = _client(request)

        def again(message: str, code: int) -> Response:
            token = secrets.token_urlsafe(32)
            response = web.render(request, "login.html", None, code, login_csrf=token,
                                  error=message, next=next_url, name=name)
            _set_cookie(response, LOGIN_CSRF_COOKIE, token, settings, max_age=3600)
            return response

        try:
            web.store()
        except StoreError:
            return again(t("login_no_index"), 503)
        if web.throttle.blocked(client):
            await web.audit(AUDIT_LOGIN_FAILED, None, request, account=_loggable(name),
                            why="address throttled")
            return again(t("login_locked"), 429)
        account, why = await asyncio.to_thread(
            web.accounts.authenticate, name, password, max_failures=settings.lockout_failures,
            lockout_s=settings.lockout_s, now=web._clock())
        if account is None:
            web.throttle.failed(client)
            await web.audit(AUDIT_LOGIN_FAILED, None, request, account=_loggable(name), why=why)
            _LOGGER.info("Web login failed for %s from %s (%s)", _loggable(name), client, why)
            return again(t("login_locked") if why == "locked" else t("login_failed"),
                         429 if why == "locked" else 401)
        web.throttle.succeeded(client)
        session = web.sessions.create(account.name, account.role, client,
                                      account.password_changed_at)
        await web.audit(AUDIT_LOGIN, session, request, role=account.role)
        _LOGGER.info("Web login: %s (%s) from %s", account.name, account.role, client)
        if next_url == "/" and not account.can("calls"):
            next_url = "/status"
        response = RedirectResponse(next_url, 303)
        _set_cookie(response, COOKIE_NAME, session.token, settings)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return response

    @page(None, post=True)
    async def logout(request: Request, session: Session, account: Account) -> Response:
        web.sessions.end(session.token)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    async def set_language(request: Request) -> Response:
        lang = request.path_params["lang"]
        response = RedirectResponse(_safe_next(request.query_params.get("next", "/")), 303)
        if lang in PAGE_LANGUAGES:
            _set_cookie(response, LANG_COOKIE, lang, settings, max_age=365 * 86400,
                        http_only=False)
        return response

    @page(None)
    async def home(request: Request, session: Session, account: Account) -> Response:
        return RedirectResponse("/calls" if account.can("calls") else "/status", 303)

    # -------------------------------------------------------------- calls

    @page("calls")
    async def calls(request: Request, session: Session, account: Account) -> Response:
        q = request.query_params
        try:
            page_no = max(1, int(q.get("page", "1")))
        except ValueError:
            page_no = 1
        outcome = q.get("outcome", "")
        search = Search(text=q.get("q", "")[:100], since=_parse_date(q.get("from", "")),
                        until=_parse_date(q.get("to", ""), end=True),
                        outcome=outcome if outcome in OUTCOMES else "",
                        line=q.get("line", "")[:40], page=page_no)
        index = web.index()
        result = await asyncio.to_thread(index.search, search)
        if result.reference and len(result.rows) == 1 and page_no == 1 and not (
                search.since or search.until or search.outcome or search.line):
            return RedirectResponse(f"/calls/{result.reference}", 303)
        params = {k: v for k, v in q.items() if k != "page" and v}
        return web.render(request, "calls.html", session, result=result, query=params,
                          lines=settings.lines, q=q)

    def _call_row(reference: str) -> dict[str, Any]:
        if not is_canonical(reference):
            raise _NotFound
        row = web.store().get_call(reference)
        if row is None:
            raise _NotFound
        return row

    def _recording(row: dict[str, Any]) -> Path | None:
        """The call's audio file, only ever inside the recordings tree."""
        if row["recording_deleted_at"] is not None or not row["recording_path"]:
            return None
        path = locate_recording(settings.recordings_dir, row["recording_path"])
        return path if path is not None and path.is_file() else None

    @page("calls")
    async def call(request: Request, session: Session, account: Account) -> Response:
        row = _call_row(request.path_params["reference"])
        store = web.store()
        events = store.events(row["reference"])
        recording = _recording(row)
        t0 = events[0]["t"] if events else (row["ring_at"] or 0.0)
        flash = request.query_params.get("done", "")
        return web.render(request, "call.html", session, row=row, events=events, t0=t0,
                          recording=recording, flash=flash,
                          error=session.flash.pop(row["reference"], ""))

    async def _serve_audio(request: Request, session: Session, *, download: bool) -> Response:
        row = _call_row(request.path_params["reference"])
        path = _recording(row)
        if path is None:
            raise _NotFound
        reference = row["reference"]
        if download:
            await web.audit(AUDIT_DOWNLOAD, session, request, reference=reference,
                            file=path.name)
        else:
            key = (session.token, reference)
            now = web._clock()
            if now - web._played.get(key, -PLAY_AUDIT_WINDOW_S) >= PLAY_AUDIT_WINDOW_S:
                # Forget plays older than the window (the memo stays as small as its use).
                web._played = {k: t for k, t in web._played.items()
                               if now - t < PLAY_AUDIT_WINDOW_S}
                web._played[key] = now
                await web.audit(AUDIT_PLAY, session, request, reference=reference)
        media = _AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
        name = f"{display_reference(reference)}{path.suffix}"
        return FileResponse(path, media_type=media, filename=name if download else None,
                            content_disposition_type="attachment" if download else "inline")

    @page("play")
    async def audio(request: Request, session: Session, account: Account) -> Response:
        return await _serve_audio(request, session, download=False)

    @page("play")
    async def download(request: Request, session: Session, account: Account) -> Response:
        return await _serve_audio(request, session, download=True)

    @page("handover", post=True)
    async def handover(request: Request, session: Session, account: Account) -> Response:
        row = _call_row(request.path_params["reference"])
        t = translator(web.language(request))
        reason = str(request.state.form.get("reason", "")).strip()[:500]
        reference = row["reference"]
        if not reason:
            return _back(session, reference, t("reason_needed"))
        out = Path(tempfile.mkdtemp(prefix=".handover-", dir=_tmp_dir(settings)))
        reply = await _job(settings, {"cmd": "export", "reference": reference,
                                      "out_dir": str(out), "reason": reason,
                                      "actor": f"web:{session.account}@{_client(request)}",
                                      "account": session.account,
                                      "client": _client(request)})
        if not reply.get("ok"):
            shutil.rmtree(out, ignore_errors=True)
            return _back(session, reference, f"{t('failed')}: {reply.get('error')}")
        path = Path(reply["path"])
        return FileResponse(path, media_type="application/zip", filename=path.name,
                            background=BackgroundTask(shutil.rmtree, out, True))

    @page("erase", post=True)
    async def erase(request: Request, session: Session, account: Account) -> Response:
        row = _call_row(request.path_params["reference"])
        t = translator(web.language(request))
        form = request.state.form
        reason = str(form.get("reason", "")).strip()[:500]
        reference = row["reference"]
        typed = "".join(ch for ch in str(form.get("confirm", "")) if ch.isdigit())
        if not reason:
            return _back(session, reference, t("reason_needed"))
        if typed != reference:
            return _back(session, reference, t("erase_confirm_wrong"))
        reply = await _job(settings, {"cmd": "erase", "reference": reference,
                                      "reason": reason,
                                      "actor": f"web:{session.account}@{_client(request)}"})
        if not reply.get("ok"):
            return _back(session, reference, f"{t('failed')}: {reply.get('error')}")
        return RedirectResponse(f"/calls/{reference}?done=erased", 303)

    # -------------------------------------------------------------- status, health, audit

    async def _daemon_status() -> dict[str, Any] | None:
        from appliance.daemon.control import request as control_request
        from appliance.daemon.control import socket_path

        path = socket_path(settings.state_dir)
        try:
            reply = await asyncio.to_thread(control_request, path, {"cmd": "status"},
                                            timeout_s=2.0)
        except (OSError, ValueError):
            return None
        return reply if reply.get("ok") else None

    @page("status")
    async def status(request: Request, session: Session, account: Account) -> Response:
        return web.render(request, "status.html", session, s=await _daemon_status(),
                          now=time.time())

    @page("status")
    async def status_fragment(request: Request, session: Session,
                              account: Account) -> Response:
        return web.render(request, "status_fragment.html", session, s=await _daemon_status(),
                          now=time.time())

    @page("health")
    async def health(request: Request, session: Session, account: Account) -> Response:
        checks, error = await _doctor(settings)
        return web.render(request, "health.html", session, checks=checks, error=error)

    @page("audit")
    async def audit(request: Request, session: Session, account: Account) -> Response:
        try:
            before = int(request.query_params["before"])
        except (KeyError, ValueError):
            before = None
        entries, total = await asyncio.to_thread(web.index().audit_page, before=before)
        verified = session.flash.pop(VERIFY_FLASH, None) if request.query_params.get(
            "verified") else None
        return web.render(request, "audit.html", session, entries=entries, total=total,
                          problems=None if verified is None else json.loads(verified),
                          older=entries[-1]["id"] if len(entries) == AUDIT_PAGE_SIZE else None)

    @page("audit", post=True)
    async def audit_verify(request: Request, session: Session, account: Account) -> Response:
        reply = await _job(settings, {"cmd": "verify-audit"})
        problems = reply.get("problems") if reply.get("ok") else [str(reply.get("error"))]
        await web.audit(AUDIT_VERIFY, session, request, intact=not problems,
                        problems=len(problems or []))
        session.flash[VERIFY_FLASH] = json.dumps(problems or [])
        return RedirectResponse("/audit?verified=1", 303)

    @page("logs")
    async def logs(request: Request, session: Session, account: Account) -> Response:
        lines = await asyncio.to_thread(_journal, settings.journal_units)
        return web.render(request, "logs.html", session, lines=lines)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await web.close()

    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/lang/{lang}", set_language, methods=["GET"]),
        Route("/", home, methods=["GET"]),
        Route("/calls", calls, methods=["GET"]),
        Route("/calls/{reference}", call, methods=["GET"]),
        Route("/calls/{reference}/audio", audio, methods=["GET"]),
        Route("/calls/{reference}/download", download, methods=["GET"]),
        Route("/calls/{reference}/handover", handover, methods=["POST"]),
        Route("/calls/{reference}/erase", erase, methods=["POST"]),
        Route("/status", status, methods=["GET"]),
        Route("/status/fragment", status_fragment, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/audit", audit, methods=["GET"]),
        Route("/audit/verify", audit_verify, methods=["POST"]),
        Route("/logs", logs, methods=["GET"]),
        Mount("/static", StaticFiles(packages=[("appliance.web", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(_SecurityHeaders)])
    app.state.web = web
    return app


class _SecurityHeaders:
    """ASGI middleware: :data:`_SECURITY_HEADERS` on every HTTP response, and the server's own
    time to the response head as ``Server-Timing: app;dur=<ms>`` (``appliance bench``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in _SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers["Server-Timing"] = f"app;dur={elapsed_ms:.2f}"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class PlainRefusal(Response):
    """A short text answer (401 for a request without a session that is not a page load)."""

    def __init__(self, status_code: int, text: str) -> None:
        super().__init__(text + "\n", status_code=status_code, media_type="text/plain")


def _set_cookie(response: Response, name: str, value: str, settings: WebSettings, *,
                max_age: int | None = None, http_only: bool = True) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=http_only,
                        secure=settings.secure_cookies, samesite="strict")


def _safe_next(target: str) -> str:
    """Only a local path may follow login (no open redirect to another site)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _loggable(name: str) -> str:
    """An account name fit for the audit chain (a password typed into the name field is not)."""
    from appliance.web.accounts import NAME_PATTERN

    return name if NAME_PATTERN.match(name) else "(invalid name)"


def _back(session: Session, reference: str, message: str) -> Response:
    """Back to the call's page with ``message`` shown once (kept in the session, never in the
    URL: a link cannot make the page say something it did not)."""
    session.flash[reference] = message
    return RedirectResponse(f"/calls/{reference}#error", 303)


def _tmp_dir(settings: WebSettings) -> Path:
    """Where hand-over packages are assembled (the web's own directory, never /tmp)."""
    path = settings.web_dir / "tmp"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


async def _job(settings: WebSettings, request: dict[str, Any]) -> dict[str, Any]:
    """Run one :mod:`appliance.web.jobs` command in a child process; its JSON reply."""
    payload = {**request, "db_path": str(settings.db_path),
               "recordings_dir": str(settings.recordings_dir),
               "device_language": settings.device_language,
               "languages_dir": settings.languages_dir}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance.web.jobs", stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(JOB_TIMEOUT_S):
            out, err = await proc.communicate(json.dumps(payload).encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"ok": False, "error": "timed out"}
    try:
        reply: dict[str, Any] = json.loads(out.decode() or "{}")
    except ValueError:
        reply = {}
    if not reply:
        _LOGGER.error("Web job %s failed: %s", request.get("cmd"), err.decode(errors="replace"))
        return {"ok": False, "error": f"job exited with {proc.returncode}"}
    return reply


async def _doctor(settings: WebSettings) -> tuple[list[dict[str, Any]], str | None]:
    """``appliance doctor --json`` in a child process: the same checks as the technician's."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "appliance", *settings.cli_args, "doctor", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(DOCTOR_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return [], "doctor timed out"
    try:
        return list(json.loads(out.decode())), None
    except ValueError:
        return [], err.decode(errors="replace")[-500:] or f"exit {proc.returncode}"


def _journal(units: tuple[str, ...]) -> list[str] | None:
    """The last journal lines of the appliance's units, or None without a journal."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return None
    cmd = [journalctl, "-o", "short-iso", "--no-pager", "-n", str(JOURNAL_LINES)]
    for unit in units:
        cmd += ["-u", unit]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.splitlines()
