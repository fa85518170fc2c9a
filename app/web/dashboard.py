"""The admin dashboard: HTML pages under ``/admin`` (plain HTML, CSS and JavaScript).

Authentication: the login form posts the admin token (never a query string); the server checks
it like the bearer routes (SHA-256 digests, constant time) and sets a signed session cookie
(HttpOnly, SameSite=Strict, path ``/admin``, Secure on https) that names the token by its
fingerprint only. A session ends when it expires (12 h), on logout (its id is kept in
``admin_sessions_revoked`` until it would have expired, so the old cookie stops working on every
replica), or when its token is no longer configured (token rotation). Every POST form carries a CSRF token bound to the session (the login form
one bound to a pre-login cookie), and POSTs from another origin are refused.

Pages: ``/admin`` (live games, lobby, per-system stats of the round, workers, systems, rounds,
audit log; refreshed every 2 s), ``/admin/games`` (recent games), ``/admin/games/{id}`` (read-only
live view of both screens, polled every second), ``/admin/games/{id}/replay`` (step through the
event log), ``/admin/export`` (the release-format files as one zip download). Their JSON comes
from ``/admin/api/...``, authenticated by the same cookie. After an action, the next page says
what was done (a signed one-time "flash" cookie, so a reload does not repeat it).
Everything shown is escaped: Jinja2 autoescapes, and the scripts only ever set ``textContent``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import tempfile
import time
import zipfile
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import delete
from starlette.background import BackgroundTask
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app import audit
from app.db.models import AdminSessionRevoked, Game
from app.deploy import RegistryError, current_round, deploy_checkpoint, list_systems
from app.deploy import set_paused, set_quota, set_share, start_round
from app.game.rules import EndReason
from app.web import admin as admin_api
from app.web.auth import token_digest, token_matches

ROOT = Path(__file__).resolve().parents[2]
templates = Jinja2Templates(directory=str(ROOT / "templates"))
# JSON as text (Jinja2 autoescapes it), written like the page's JSON.stringify
templates.env.filters["jsontext"] = lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))

async def _check_revoked(request: Request) -> None:
    """Marks the request when its session cookie names a session ended by logout (kept in the
    database, so a logout ends the session on every server replica)."""
    sid = _session_id(request)
    if sid is None:
        return
    async with request.app.state.services.db.session() as s:
        request.state.admin_revoked = await s.get(AdminSessionRevoked, sid) is not None


router = APIRouter(prefix="/admin", include_in_schema=False, dependencies=[Depends(_check_revoked)])

SESSION_COOKIE = "mr_admin"
LOGIN_COOKIE = "mr_admin_login"
FLASH_COOKIE = "mr_admin_flash"
FLASH_SECONDS = 120
SESSION_SECONDS = 12 * 3600
LOGIN_FORM_SECONDS = 3600
MAX_FORM_BYTES = 16_384
LOGIN_FAILURES = 10  # per address and window, then 429
LOGIN_WINDOW = 300.0

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send Origin: null
    "Cache-Control": "no-store",
}

_failures: defaultdict[str, deque] = defaultdict(deque)


@dataclass(frozen=True)
class AdminSession:
    fingerprint: str  # 12 hex digits of the token's SHA-256
    csrf: str

    @property
    def actor(self) -> str:
        return audit.digest_fingerprint(self.fingerprint)


def _serializer(request: Request, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(request.app.state.services.hash_key, salt=salt)


def _session_data(request: Request) -> dict | None:
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(request, "multiref-admin-session").loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    return data if isinstance(data, dict) else None


def _session_id(request: Request) -> str | None:
    """The id a session is revoked by: its CSRF token, unique per login."""
    data = _session_data(request)
    csrf = data.get("csrf") if data else None
    return hashlib.sha256(csrf.encode()).hexdigest() if isinstance(csrf, str) else None


def current_session(request: Request) -> AdminSession | None:
    if getattr(request.state, "admin_revoked", False):
        return None  # logged out
    data = _session_data(request)
    if data is None:
        return None
    fp, csrf = data.get("fp"), data.get("csrf")
    if not isinstance(fp, str) or not isinstance(csrf, str):
        return None
    live = [d[:12] for d in request.app.state.services.admin_digests]
    ok = False
    for d in live:  # the token must still be configured
        ok |= hmac.compare_digest(fp, d)
    return AdminSession(fp, csrf) if ok else None


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def _headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(request: Request, name: str, context: dict, status_code: int = 200) -> Response:
    flash = _read_flash(request)
    response = templates.TemplateResponse(
        request, name, {"flash": flash, **context}, status_code=status_code
    )
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/admin")
    return _headers(response)


def _with_flash(request: Request, response: Response, message: str) -> Response:
    """Say on the next page what an action did (once: the page deletes the cookie)."""
    response.set_cookie(
        FLASH_COOKIE,
        _serializer(request, "multiref-admin-flash").dumps(message),
        max_age=FLASH_SECONDS, path="/admin", httponly=True, samesite="strict",
        secure=_secure(request),
    )
    return response


def _read_flash(request: Request) -> str | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        message = _serializer(request, "multiref-admin-flash").loads(raw, max_age=FLASH_SECONDS)
    except BadSignature:
        return None
    return message if isinstance(message, str) else None


def _to_login() -> Response:
    return _headers(RedirectResponse("/admin/login", status_code=303))


def require_session(request: Request) -> AdminSession:
    session = current_session(request)
    if session is None:
        raise HTTPException(401, "Log in to the dashboard first.")
    return session


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # not sent by every browser for same-origin forms
        return True
    if origin == "null":
        return False
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "Form too large.")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
    return {k: v[0] for k, v in fields.items()}


async def _checked_form(request: Request) -> tuple[AdminSession, dict[str, str]]:
    """A POST from a logged-in dashboard page: session, same origin, CSRF token."""
    session = require_session(request)
    if not _same_origin(request):
        raise HTTPException(403, "Cross-origin form refused.")
    form = await _form(request)
    if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
        raise HTTPException(403, "The form has expired; reload the page.")
    return session, form


def _back(path: str = "/admin") -> Response:
    return _headers(RedirectResponse(path, status_code=303))


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


def _too_many_failures(address: str) -> bool:
    q = _failures[address]
    cutoff = time.monotonic() - LOGIN_WINDOW
    while q and q[0] < cutoff:
        q.popleft()
    return len(q) >= LOGIN_FAILURES


# ---------------------------------------------------------------- login


@router.get("/login")
async def login_page(request: Request):
    nonce = secrets.token_urlsafe(24)
    response = _page(request, "admin/login.html", {"csrf": nonce, "error": None})
    response.set_cookie(
        LOGIN_COOKIE,
        _serializer(request, "multiref-admin-login").dumps(nonce),
        max_age=LOGIN_FORM_SECONDS,
        path="/admin/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.post("/login")
async def login(request: Request):
    address = _address(request)
    if _too_many_failures(address):
        raise HTTPException(429, "Too many failed logins; wait a few minutes.")
    if not _same_origin(request):
        raise HTTPException(403, "Cross-origin form refused.")
    form = await _form(request)
    try:
        expected = _serializer(request, "multiref-admin-login").loads(
            request.cookies.get(LOGIN_COOKIE, ""), max_age=LOGIN_FORM_SECONDS
        )
    except BadSignature:
        expected = None
    if not isinstance(expected, str) or not hmac.compare_digest(form.get("csrf", ""), expected):
        raise HTTPException(403, "The login form has expired; reload the page.")
    token = form.get("token", "").strip()
    digests = request.app.state.services.admin_digests
    if not token or not digests or not token_matches(token, digests):
        _failures[address].append(time.monotonic())
        nonce = secrets.token_urlsafe(24)
        response = _page(
            request, "admin/login.html", {"csrf": nonce, "error": "That token is not valid."}, 401
        )
        response.set_cookie(
            LOGIN_COOKIE,
            _serializer(request, "multiref-admin-login").dumps(nonce),
            max_age=LOGIN_FORM_SECONDS, path="/admin/login", httponly=True, samesite="strict",
            secure=_secure(request),
        )
        return response
    fingerprint = token_digest(token)[:12]
    session = {"fp": fingerprint, "csrf": secrets.token_urlsafe(24)}
    response = _back("/admin")
    response.set_cookie(
        SESSION_COOKIE,
        _serializer(request, "multiref-admin-session").dumps(session),
        max_age=SESSION_SECONDS,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/admin/login")
    async with request.app.state.services.db.session() as s, s.begin():
        await audit.record(s, audit.digest_fingerprint(fingerprint), audit.LOGIN, "dashboard", {"address": address})
    return response


@router.post("/logout")
async def logout(request: Request):
    await _checked_form(request)
    sid = _session_id(request)
    async with request.app.state.services.db.session() as s, s.begin():
        now = time.time()
        await s.execute(delete(AdminSessionRevoked).where(AdminSessionRevoked.expires_at < now))
        if sid is not None and await s.get(AdminSessionRevoked, sid) is None:
            s.add(AdminSessionRevoked(session_id=sid, expires_at=now + SESSION_SECONDS))
    response = _to_login()
    response.delete_cookie(SESSION_COOKIE, path="/admin")
    return response


# ---------------------------------------------------------------- pages


def _reasons() -> list[str]:
    return [r.value for r in admin_api.ADMIN_END_REASONS]


@router.get("")
@router.get("/")
async def index(request: Request):
    session = current_session(request)
    if session is None:
        return _to_login()
    services = request.app.state.services
    data = await admin_api.overview(services)
    return _page(
        request,
        "admin/index.html",
        {"csrf": session.csrf, "actor": session.actor, "o": data, "reasons": _reasons(), "now": time.time()},
    )


@router.get("/games")
async def games_page(request: Request):
    session = current_session(request)
    if session is None:
        return _to_login()
    services = request.app.state.services
    async with services.db.session() as s:
        games = await admin_api.recent_games(s, None, 200, time.time())
    return _page(request, "admin/games.html", {"csrf": session.csrf, "actor": session.actor, "games": games})


@router.get("/games/{game_id}")
async def game_page(game_id: str, request: Request):
    session = current_session(request)
    if session is None:
        return _to_login()
    detail = await admin_api.game_detail(request.app.state.services, game_id)
    if detail is None:
        raise HTTPException(404, "Unknown game.")
    return _page(
        request,
        "admin/game.html",
        {"csrf": session.csrf, "actor": session.actor, "game_id": game_id, "d": detail, "reasons": _reasons()},
    )


@router.get("/games/{game_id}/replay")
async def replay_page(game_id: str, request: Request):
    session = current_session(request)
    if session is None:
        return _to_login()
    services = request.app.state.services
    async with services.db.session() as s:
        game = await s.get(Game, game_id)
    if game is None:
        raise HTTPException(404, "Unknown game.")
    return _page(
        request, "admin/replay.html", {"csrf": session.csrf, "actor": session.actor, "game_id": game_id}
    )


# ---------------------------------------------------------------- JSON for the pages


def _json(data) -> Response:
    return _headers(JSONResponse(data))


@router.get("/api/overview")
async def api_overview(request: Request):
    require_session(request)
    return _json(await admin_api.overview(request.app.state.services))


@router.get("/api/games/{game_id}")
async def api_game(game_id: str, request: Request):
    require_session(request)
    detail = await admin_api.game_detail(request.app.state.services, game_id)
    if detail is None:
        raise HTTPException(404, "Unknown game.")
    return _json(detail)


@router.get("/api/games/{game_id}/replay")
async def api_replay(game_id: str, request: Request):
    require_session(request)
    replay = await admin_api.game_replay(request.app.state.services, game_id)
    if replay is None:
        raise HTTPException(404, "Unknown game.")
    return _json(replay)


# ---------------------------------------------------------------- export (a download)


@router.get("/export")
async def export_download(request: Request):
    """The games in the release format (interaction, turn and events files) as one zip."""
    from app.export import FORMATS, ExportFilter, export

    session = require_session(request)
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in FORMATS:
        raise HTTPException(422, f"format must be one of {', '.join(FORMATS)}.")
    raw_round = request.query_params.get("round", "").strip()
    rounds = [_number(raw_round, int, "round")] if raw_round else None
    sources = [request.query_params["source"]] if request.query_params.get("source") in ("live", "imported") else None
    services = request.app.state.services
    folder = tempfile.TemporaryDirectory(prefix="multiref-export-")
    try:
        report = await export(services.db, Path(folder.name) / "files", fmt, ExportFilter(rounds=rounds, sources=sources))
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        name = f"multiref-export-{stamp}" + (f"-round{rounds[0]}" if rounds else "") + ".zip"
        archive = Path(folder.name) / name
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted((Path(folder.name) / "files").iterdir()):
                z.write(path, path.name)
        async with services.db.session() as s, s.begin():
            await audit.record(
                s, session.actor, "export", "dashboard",
                {"format": fmt, "rounds": rounds, "sources": sources, "games": report.games},
            )
    except BaseException:
        folder.cleanup()
        raise
    response = FileResponse(
        archive, media_type="application/zip", filename=name, background=BackgroundTask(folder.cleanup)
    )
    return _headers(response)


# ---------------------------------------------------------------- actions (forms)


@router.post("/games/{game_id}/end")
async def end_game(game_id: str, request: Request):
    session, form = await _checked_form(request)
    try:
        reason = EndReason(form.get("reason") or EndReason.ADMIN_ENDED.value)
    except ValueError as exc:
        raise HTTPException(422, "Unknown end reason.") from exc
    if reason not in admin_api.ADMIN_END_REASONS:
        raise HTTPException(422, f"A game cannot be ended with {reason.value}.")
    note = form.get("note", "")[:500]
    await admin_api.end_game(request.app.state.services, game_id, reason, note, session.actor)
    target = form.get("next") if form.get("next") in ("/admin", f"/admin/games/{game_id}") else "/admin"
    return _with_flash(
        request, _back(target),
        f"Game {game_id[:12]} ended ({reason.value}). Both players are paid what the rules owe "
        "and see their completion codes.",
    )


@router.post("/block")
async def block(request: Request):
    session, form = await _checked_form(request)
    pid = form.get("participant_id", "").strip()
    if not pid:
        raise HTTPException(422, "Give a participant id.")
    await admin_api.block_participant(
        request.app.state.services, pid, form.get("reason", "")[:500], session.actor
    )
    return _with_flash(request, _back(), f"Worker {pid} is blocked.")


def _number(value: str | None, cast, field: str):
    try:
        return cast(value)
    except (TypeError, ValueError) as exc:
        raise HTTPException(422, f"{field} must be a number.") from exc


@router.post("/systems/{name}")
async def system_form(name: str, request: Request):
    session, form = await _checked_form(request)
    services = request.app.state.services
    try:
        async with services.db.session() as s, s.begin():
            current = {x.name: x for x in await list_systems(s)}.get(name)
            if current is None:
                raise HTTPException(404, "Unknown system.")
            if "share" in form and form["share"].strip() != "":
                share = _number(form["share"], float, "share")
                if share != current.share:
                    await set_share(s, name, share, session.actor)
            paused = form.get("paused") == "on"
            if paused != current.paused:
                await set_paused(s, name, paused, session.actor)
            if "quota" in form:
                raw = form["quota"].strip()
                quota = None if raw == "" else _number(raw, int, "quota")
                if quota != current.quota:
                    await set_quota(s, name, quota, session.actor)
    except RegistryError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _back()


@router.post("/rounds")
async def round_form(request: Request):
    session, form = await _checked_form(request)
    raw = form.get("number", "").strip()
    number = None if raw == "" else _number(raw, int, "round")
    services = request.app.state.services
    try:
        async with services.db.session() as s, s.begin():
            await start_round(s, number, session.actor, form.get("note", "")[:2000])
    except RegistryError as exc:
        raise HTTPException(409, str(exc)) from exc
    return _back()


@router.post("/deploy")
async def deploy_form(request: Request):
    session, form = await _checked_form(request)
    system = form.get("system", "").strip()
    round_ = _number(form.get("round"), int, "round")
    adapter = form.get("adapter", "").strip() or None
    base = form.get("base", "").strip() or "HuggingFaceM4/idefics2-8b"
    if adapter and not Path(adapter).is_dir():
        raise HTTPException(422, f"{adapter} is not a folder on the server.")
    services = request.app.state.services
    try:
        async with services.db.session() as s, s.begin():
            if form.get("start_round") == "on" and await current_round(s) != round_:
                await start_round(s, round_, session.actor, note=f"started with the deploy of {system}")
            await deploy_checkpoint(
                s, system, round_, base, str(Path(adapter).resolve()) if adapter else None,
                deployed_by=session.actor,
            )
    except RegistryError as exc:
        raise HTTPException(422, str(exc)) from exc
    return _back()
