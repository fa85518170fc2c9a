"""Admin HTTP API (bearer token): watch the platform and act on games and workers.

Routes (all under ``/api/admin``, all refused without a valid ``Authorization: Bearer`` token):

- ``GET  /overview``                   live games, lobby size, per-system stats of the round,
                                       worker health, systems, recent audit entries
- ``GET  /games?status=live|ended``    games, newest first
- ``GET  /games/{id}``                 a read-only live view: both screens, as the players see them
- ``GET  /games/{id}/replay``          a finished (or running) game rebuilt step by step from its log
- ``POST /games``                      create a game with a given configuration (scripted, replays)
- ``POST /games/{id}/end``             end a game (typed reason + note); both players are paid
- ``POST /participants/{id}/block``    block the participant's worker (by keyed worker hash)
- ``GET  /audit``                      the audit log

The read functions below are shared with the HTML dashboard (``app.web.dashboard``).
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import case, func, select

from app import audit
from app.db.gamelog import load_events
from app.db.models import Game, ListenerRequest, Participant, WorkerHeartbeat
from app.deploy import current_round, list_systems
from app.game.rules import (
    AdminEnd,
    EndReason,
    GameConfig,
    GameCreated,
    Rejection,
    Seat,
    evolve,
    game_pay,
    new_game,
)
from app.live.participants import Status, worker_hash
from app.protocol import GameView, PayView
from app.web.auth import require_admin

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])

WORKER_STALE_SECONDS = 15.0
# Reasons an admin may end a game with (admin_ended first: the dashboard's default).
ADMIN_END_REASONS = (EndReason.ADMIN_ENDED,) + tuple(
    r for r in EndReason if r not in (EndReason.SUCCESS, EndReason.MAX_TURNS, EndReason.ADMIN_ENDED)
)


async def admin_actor(fingerprint: str = Depends(require_admin)) -> str:
    """The audit name of the caller: the fingerprint of the token it authenticated with
    (``async``: no worker thread, see ``require_admin``)."""
    return audit.digest_fingerprint(fingerprint)


# ---------------------------------------------------------------- read models (shared)


async def live_games(s, now: float, limit: int = 500) -> list[dict]:
    rows = (
        await s.execute(
            select(Game).where(Game.status == "live").order_by(Game.created_at).limit(limit)
        )
    ).scalars()
    return [game_summary(g, now) for g in rows]


def game_summary(g: Game, now: float) -> dict:
    start = g.started_at or g.created_at
    end = g.ended_at if g.ended_at is not None else now
    return {
        "game_id": g.id,
        "status": g.status,
        "phase": g.phase,
        "turn": g.turn,
        "system": g.system,
        "round": g.round,
        "checkpoint": g.checkpoint,
        "listener_kind": g.listener_kind,
        "source": g.source,
        "created_at": g.created_at,
        "elapsed_seconds": round(max(0.0, end - start), 1),
        "speaker_id": g.speaker_id,
        "listener_id": g.listener_id,
        "outcome": g.outcome,
        "end_reason": g.end_reason,
    }


async def recent_games(s, status: str | None, limit: int, now: float) -> list[dict]:
    q = select(Game).order_by(Game.created_at.desc()).limit(limit)
    if status:
        q = q.where(Game.status == status)
    return [game_summary(g, now) for g in (await s.execute(q)).scalars()]


async def lobby_size(s) -> int:
    return (
        await s.execute(
            select(func.count()).select_from(Participant).where(Participant.status == Status.WAITING)
        )
    ).scalar_one()


async def system_stats(s, round_: int | None) -> list[dict]:
    """Per system, games of the round: started, live, finished, success rate, mean turns.

    Success rate and mean turns are over games played to the end (successful or unsuccessful);
    aborted games (dropouts, timeouts, admin ends) are counted apart."""
    completed = Game.outcome.in_(("successful", "unsuccessful"))
    rows = await s.execute(
        select(
            Game.system,
            func.count(),
            func.sum(case((Game.status == "live", 1), else_=0)),
            func.sum(case((Game.status == "ended", 1), else_=0)),
            func.sum(case((Game.outcome == "successful", 1), else_=0)),
            func.sum(case((completed, 1), else_=0)),
            func.sum(case((completed, Game.turn), else_=0)),
        )
        .where(
            Game.source == "live",
            Game.round.is_(None) if round_ is None else Game.round == round_,
        )
        .group_by(Game.system)
        .order_by(Game.system)
    )
    out = []
    for system, started, live, finished, successful, played, turns in rows:
        played = int(played or 0)
        out.append(
            {
                "system": system,
                "started": int(started or 0),
                "live": int(live or 0),
                "finished": int(finished or 0),
                "completed": played,
                "aborted": int(finished or 0) - played,
                "successful": int(successful or 0),
                "success_rate": round(int(successful or 0) / played, 4) if played else None,
                "mean_turns": round(int(turns or 0) / played, 2) if played else None,
            }
        )
    return out


async def worker_health(s, now: float) -> list[dict]:
    rows = (await s.execute(select(WorkerHeartbeat).order_by(WorkerHeartbeat.worker_id))).scalars()
    out = []
    for w in rows:
        age = now - w.beat_at
        ck = w.checkpoints or {}
        out.append(
            {
                "worker_id": w.worker_id,
                "host": w.host,
                "status": w.status,
                "systems": list(w.systems or []),
                "base": ck.get("base"),
                "loaded_checkpoints": list(ck.get("loaded") or []),
                "served": ck.get("served"),
                "started_at": w.started_at,
                "beat_at": w.beat_at,
                "seconds_since_beat": round(age, 1),
                "healthy": w.status == "serving" and age < WORKER_STALE_SECONDS,
            }
        )
    return out


async def overview(services) -> dict:
    now = time.time()
    async with services.db.session() as s:
        round_ = await current_round(s)
        systems = [x.json() for x in await list_systems(s)]
        workers = await worker_health(s, now)
        for x in systems:  # which healthy workers serve each system's checkpoint
            x["workers"] = [
                w["worker_id"] for w in workers if w["healthy"] and x["name"] in w["systems"]
            ]
        return {
            "now": now,
            "round": round_,
            "lobby_size": await lobby_size(s),
            "live_games": await live_games(s, now),
            "stats": await system_stats(s, round_),
            "systems": systems,
            "workers": workers,
            "audit": [audit.entry_json(e) for e in await audit.recent(s, 30)],
        }


def _screens(state, now: float) -> dict:
    pay = game_pay(state) if state.ended else None
    screens = {}
    for seat in (Seat.SPEAKER, Seat.LISTENER):
        view = GameView.of(state, seat, now, pay=pay)
        screens[seat.value] = view.model_dump(mode="json")
    return screens


async def game_detail(services, game_id: str) -> dict | None:
    """Both screens of a game as its players see them now (read-only)."""
    now = time.time()
    async with services.db.session() as s:
        game = await s.get(Game, game_id)
        if game is None:
            return None
        requests = (
            await s.execute(
                select(ListenerRequest)
                .where(ListenerRequest.game_id == game_id)
                .order_by(ListenerRequest.turn)
            )
        ).scalars().all()
    state = await services.hub.state(game_id)
    if state is None:
        return None
    return {
        "game": game_summary(game, now),
        "version": state.version,
        "phase": state.phase.value,
        "turn": state.turn,
        "targets": sorted(state.targets),
        "selection": sorted(state.selection),
        "deadline": state.phase_deadline,
        "server_time": now,
        "screens": _screens(state, now),
        "model_turns": [
            {
                "turn": r.turn,
                "status": r.status,
                "action": r.action,
                "prob_action": r.prob_action,
                "latency_s": r.latency_s,
                "checkpoint": r.checkpoint,
                "worker_id": r.worker_id,
            }
            for r in requests
        ],
    }


async def game_replay(services, game_id: str) -> dict | None:
    """The game rebuilt from its event log: one step per event, with both screens after it."""
    async with services.db.session() as s:
        game = await s.get(Game, game_id)
        if game is None:
            return None
        events = await load_events(s, game_id)
    if not events or not isinstance(events[0], GameCreated):
        return None
    state = new_game(events[0])
    steps = [_step(1, events[0], state)]
    for seq, event in enumerate(events[1:], start=2):
        state = evolve(state, event)
        steps.append(_step(seq, event, state))
    return {"game": game_summary(game, time.time()), "targets": sorted(state.targets), "steps": steps}


def _step(seq: int, event, state) -> dict:
    data = event.model_dump(mode="json")
    if data.get("type") == "game_created":  # the config is in the screens; keep the step small
        data = {"type": "game_created", "listener_kind": data.get("listener_kind"), "at": data.get("at")}
    return {
        "seq": seq,
        "type": event.type,
        "at": event.at,
        "event": data,
        "phase": state.phase.value,
        "turn": state.turn,
        "screens": _screens(state, event.at),
    }


async def end_game(services, game_id: str, reason: EndReason, note: str, actor: str) -> dict:
    """End a running game (both players paid as the rules owe); audited."""
    hub = services.hub
    state, result = await hub.execute(
        game_id, AdminEnd(at=hub.clock(), note=note, reason=reason), actor="admin"
    )
    if state is None:
        raise HTTPException(404, "Unknown game.")
    if isinstance(result, Rejection):
        raise HTTPException(409, result.message)
    async with services.db.session() as s, s.begin():
        await audit.record(
            s, actor, audit.END_GAME, game_id, {"reason": reason.value, "note": note}
        )
    return {
        "game_id": game_id,
        "end_reason": state.end_reason,
        "outcome": state.outcome,
        "pay": PayView.of(game_pay(state)).model_dump(),
    }


async def block_participant(services, participant_id: str, reason: str, actor: str) -> dict:
    async with services.db.session() as s:
        p = await s.get(Participant, participant_id)
    if p is None:
        raise HTTPException(404, "Unknown participant.")
    released = await services.lobby.block(p.worker_hash, reason, actor, participant_id=participant_id)
    return {"participant_id": participant_id, "blocked": True, "released": released}


# ---------------------------------------------------------------- routes


class CreateGame(BaseModel):
    """A game with a given configuration (a replayed game, a scripted test)."""

    config: GameConfig | None = None
    listener: str = Field(default="human", pattern="^(human|model)$")
    system: str | None = Field(default=None, max_length=64)  # a model system (default: settings)


class CreatedGame(BaseModel):
    game_id: str
    speaker_token: str
    listener_token: str | None


class EndGame(BaseModel):
    note: str = Field(default="", max_length=500)
    reason: EndReason = EndReason.ADMIN_ENDED


class Block(BaseModel):
    reason: str = Field(default="", max_length=500)


def _bot_participant(services, label: str) -> dict:
    """The ``participants`` row of a bot made with a game through the admin API (consented;
    the event store seats it)."""
    pid = uuid.uuid4().hex
    now = time.time()
    return {
        "id": pid,
        "platform": "bot",
        "worker_hash": worker_hash(services.hash_key, "bot", f"{label}-{pid}"),
        "status": Status.CONSENTED,
        "created_at": now,
        "consented_at": now,
        "quiz_attempts": 0,
        "pay_base_cents": 0,
        "pay_bonus_cents": 0,
        "pay_success_cents": 0,
    }


@router.get("/overview")
async def get_overview(request: Request):
    return await overview(request.app.state.services)


@router.get("/games")
async def get_games(
    request: Request,
    status: str | None = Query(default=None, pattern="^(live|ended)$"),
    limit: int = Query(default=100, ge=1, le=1000),
):
    services = request.app.state.services
    async with services.db.session() as s:
        return await recent_games(s, status, limit, time.time())


@router.get("/games/{game_id}")
async def get_game(game_id: str, request: Request):
    detail = await game_detail(request.app.state.services, game_id)
    if detail is None:
        raise HTTPException(404, "Unknown game.")
    return detail


@router.get("/games/{game_id}/replay")
async def get_replay(game_id: str, request: Request):
    replay = await game_replay(request.app.state.services, game_id)
    if replay is None:
        raise HTTPException(404, "Unknown game.")
    return replay


@router.post("/games", response_model=CreatedGame)
async def create_game(body: CreateGame, request: Request, actor: str = Depends(admin_actor)):
    services = request.app.state.services
    if body.config is not None:
        try:
            body.config.check()
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        unknown = [t for t in body.config.context if t not in services.tangrams]
        if unknown:
            raise HTTPException(422, f"tangrams not in the server's set: {', '.join(unknown[:5])}")
    if body.system is not None and body.listener == "human" and body.system != "human":
        raise HTTPException(422, "a human listener plays the system 'human'")
    system = body.system if body.listener == "model" else None
    # one transaction: the bot participants, the game and its audit entry
    speaker = _bot_participant(services, "speaker")
    listener = _bot_participant(services, "listener") if body.listener == "human" else None
    players = {Seat.SPEAKER: speaker["id"]}
    if listener is not None:
        players[Seat.LISTENER] = listener["id"]
    game_id = uuid.uuid4().hex
    await services.lobby.create_game_with(
        players,
        [p for p in (speaker, listener) if p is not None],
        body.config,
        system=system,
        audit_entry=audit.entry_row(actor, audit.CREATE_GAME, game_id, {"listener": body.listener, "system": system}),
        game_id=game_id,
    )
    return CreatedGame(
        game_id=game_id,
        speaker_token=services.tokens.issue(speaker["id"]),
        listener_token=services.tokens.issue(listener["id"]) if listener else None,
    )


@router.post("/games/{game_id}/end")
async def post_end_game(game_id: str, body: EndGame, request: Request, actor: str = Depends(admin_actor)):
    if body.reason not in ADMIN_END_REASONS:
        raise HTTPException(422, f"A game cannot be ended with {body.reason.value}.")
    return await end_game(request.app.state.services, game_id, body.reason, body.note, actor)


@router.post("/participants/{participant_id}/block")
async def post_block(participant_id: str, body: Block, request: Request, actor: str = Depends(admin_actor)):
    return await block_participant(request.app.state.services, participant_id, body.reason, actor)


@router.get("/audit")
async def get_audit(request: Request, limit: int = Query(default=100, ge=1, le=1000)):
    async with request.app.state.services.db.session() as s:
        return [audit.entry_json(e) for e in await audit.recent(s, limit)]
