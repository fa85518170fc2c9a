"""HTTP routes for players and for health: join from a study link, consent, quiz, tangram images."""

from __future__ import annotations

import time

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from app import __version__
from app.db.models import Participant
from app.live.participants import Refusal, Status, StudyArrival, completion_redirect, join_worker, pay_of
from app.protocol import PayView
from app.quiz import wrong_answers
from app.web.auth import participant_from_header

router = APIRouter()

IMAGE_CACHE = "public, max-age=31536000, immutable"


class JoinRequest(BaseModel):
    """The study link's query parameters, passed on by the entry page (or a bot)."""

    params: dict[str, str] = Field(default_factory=dict, max_length=20)


class JoinResponse(BaseModel):
    participant_id: str
    token: str
    status: str


class ParticipantView(BaseModel):
    participant_id: str
    status: str
    game_id: str | None
    seat: str | None
    completion_code: str | None
    released_reason: str | None
    pay: PayView
    redirect_url: str | None = None  # the platform's completion link, only with an earned code


MAX_PARAM_CHARS = 128  # the participants table's id columns


def _clean_param(value: str) -> bool:
    """Study-link values are ids: bounded, printable, no control characters."""
    return len(value) <= MAX_PARAM_CHARS and value.isprintable()


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    services = request.app.state.services
    body = {"status": "ok", "version": __version__, "database": services.db.describe()}
    try:
        async with services.db.session() as s:
            await s.execute(text("SELECT 1"))
        body["revision"] = await services.db.current_revision()
    except Exception as exc:
        body.update(status="database_unavailable", error=type(exc).__name__)
        return JSONResponse(body, status_code=503)
    if not services.bus.connected.is_set():  # deaf to the other replicas' moves until it is back
        body.update(status="bus_disconnected")
        return JSONResponse(body, status_code=503)
    return JSONResponse(body)


@router.post("/api/join", response_model=JoinResponse)
async def join(body: JoinRequest, request: Request):
    services = request.app.state.services
    bad = next((k for k, v in body.params.items() if not _clean_param(v)), None)
    if bad is not None:
        return JSONResponse(
            {"code": "bad_request", "message": f"The study link's parameter {bad[:40]!r} is not valid."},
            status_code=400,
        )
    arrival = StudyArrival.from_params(body.params)
    result = await join_worker(
        services.db, arrival, services.hash_key, services.settings.max_games_per_worker
    )
    if isinstance(result, Refusal):
        return JSONResponse({"code": result.code, "message": result.message}, status_code=403)
    return JoinResponse(
        participant_id=result.id, token=services.tokens.issue(result.id), status=result.status
    )


@router.post("/api/consent")
async def consent(request: Request, authorization: str | None = Header(default=None)):
    services = request.app.state.services
    pid = participant_from_header(request, authorization)
    async with services.db.session() as s, s.begin():
        p = await s.get(Participant, pid)
        if p is None:
            raise HTTPException(404, "Unknown participant.")
        if p.status == Status.ARRIVED:
            p.status = Status.CONSENTED
            p.consented_at = time.time()
        status = p.status
    return {"status": status}


class QuizAnswers(BaseModel):
    """The option chosen for each question, in order (null: not answered)."""

    answers: list[int | None] = Field(max_length=50)


class QuizResult(BaseModel):
    passed: bool
    wrong: list[int]  # the questions to look at again
    attempts: int


@router.post("/api/quiz", response_model=QuizResult)
async def quiz(body: QuizAnswers, request: Request, authorization: str | None = Header(default=None)):
    """Check the comprehension quiz; every try is counted, the first pass lets the worker in."""
    services = request.app.state.services
    pid = participant_from_header(request, authorization)
    wrong = wrong_answers(body.answers)
    async with services.db.session() as s, s.begin():
        p = await s.get(Participant, pid)
        if p is None:
            raise HTTPException(404, "Unknown participant.")
        if p.status == Status.ARRIVED:
            return JSONResponse(
                {"code": "consent_required", "message": "Please accept the consent form first."}, status_code=409
            )
        p.quiz_attempts = (p.quiz_attempts or 0) + 1
        if not wrong and p.quiz_passed_at is None:
            p.quiz_passed_at = time.time()
        attempts = p.quiz_attempts
    return QuizResult(passed=not wrong, wrong=wrong, attempts=attempts)


@router.get("/api/participant", response_model=ParticipantView)
async def participant(request: Request, authorization: str | None = Header(default=None)):
    services = request.app.state.services
    pid = participant_from_header(request, authorization)
    async with services.db.session() as s:
        p = await s.get(Participant, pid)
    if p is None:
        raise HTTPException(404, "Unknown participant.")
    return ParticipantView(
        participant_id=p.id,
        status=p.status,
        game_id=p.game_id,
        seat=p.seat,
        completion_code=p.completion_code,
        released_reason=p.released_reason,
        pay=PayView.of(pay_of(p)),
        redirect_url=completion_redirect(services.settings.prolific_completion_code, p.completion_code),
    )


@router.get("/tangrams/{name}")
async def tangram_image(name: str, request: Request):
    """A tangram picture; ids are looked up in the set, never used as paths."""
    tangrams = request.app.state.services.tangrams
    tid = name.rsplit(".", 1)[0]
    if tid not in tangrams:
        raise HTTPException(404, "Unknown tangram.")
    return FileResponse(
        tangrams.path(tid), media_type=tangrams.media_type(tid), headers={"Cache-Control": IMAGE_CACHE}
    )
