"""Admin HTTP API (bearer token): create scripted games, end games, inspect state."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from app.db.models import Participant
from app.game.rules import AdminEnd, GameConfig, Rejection
from app.live.participants import Status, worker_hash
from app.web.auth import require_admin

router = APIRouter(prefix="/api/admin", dependencies=[Depends(require_admin)])


class CreateGame(BaseModel):
    """A game with a given configuration (a replayed game, a scripted test)."""

    config: GameConfig | None = None
    listener: str = Field(default="human", pattern="^(human|model)$")


class CreatedGame(BaseModel):
    game_id: str
    speaker_token: str
    listener_token: str | None


class EndGame(BaseModel):
    note: str = Field(default="", max_length=500)


async def _bot_participant(services, label: str) -> str:
    pid = uuid.uuid4().hex
    async with services.db.session() as s, s.begin():
        s.add(
            Participant(
                id=pid,
                platform="bot",
                worker_hash=worker_hash(services.hash_key, "bot", f"{label}-{pid}"),
                status=Status.CONSENTED,
                created_at=time.time(),
                consented_at=time.time(),
            )
        )
    return pid


@router.post("/games", response_model=CreatedGame)
async def create_game(body: CreateGame, request: Request):
    services = request.app.state.services
    if body.config is not None:
        try:
            body.config.check()
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
    speaker = await _bot_participant(services, "speaker")
    listener = await _bot_participant(services, "listener") if body.listener == "human" else None
    game_id = await services.lobby.create_game_for(speaker, listener, body.config)
    return CreatedGame(
        game_id=game_id,
        speaker_token=services.tokens.issue(speaker),
        listener_token=services.tokens.issue(listener) if listener else None,
    )


@router.post("/games/{game_id}/end")
async def end_game(game_id: str, body: EndGame, request: Request):
    hub = request.app.state.services.hub
    state, result = await hub.execute(game_id, AdminEnd(at=hub.clock(), note=body.note), actor="admin")
    if state is None:
        raise HTTPException(404, "Unknown game.")
    if isinstance(result, Rejection):
        raise HTTPException(409, result.message)
    return {"game_id": game_id, "end_reason": state.end_reason, "outcome": state.outcome}
