"""Operator HTTP API (bearer token): systems, traffic shares, quotas, pauses, rounds, deploys.

Routes (all under ``/api/operator``, all refused without a valid ``Authorization: Bearer``):

- ``GET  /systems``                    systems with shares, pause, quota, active checkpoint
- ``POST /systems``                    register a system ``{name, kind, share}``
- ``POST /systems/{name}/share``       ``{share}``: relative traffic share (0 = no new games)
- ``POST /systems/{name}/pause``       stop assigning new games (running games go on)
- ``POST /systems/{name}/resume``
- ``POST /systems/{name}/quota``       ``{quota}``: games per round (null = no quota)
- ``POST /deploy``                     register and activate a checkpoint ``{system, round,
                                       adapter, base, start_round}``; workers pick it up without
                                       restarting, running games keep theirs
- ``GET  /checkpoints``                every checkpoint, newest first
- ``GET  /rounds``, ``POST /rounds``   list rounds, start one ``{number, note}``

Every action is written to the audit log under the caller's token fingerprint.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.db.models import MAX_INT, Checkpoint, Round
from app.deploy import (
    RegistryError,
    UnknownSystem,
    add_system,
    current_round,
    deploy_checkpoint,
    list_systems,
    set_paused,
    set_quota,
    set_share,
    start_round,
)
from app.web.admin import admin_actor
from app.web.auth import require_admin

router = APIRouter(prefix="/api/operator", dependencies=[Depends(require_admin)])

DEFAULT_BASE = "HuggingFaceM4/idefics2-8b"


class NewSystem(BaseModel):
    name: str = Field(max_length=64)
    kind: str | None = Field(default=None, pattern="^(model|human)$")
    share: float = Field(default=0.0, ge=0)


class Share(BaseModel):
    share: float = Field(ge=0, le=1e6)


class Quota(BaseModel):
    quota: int | None = Field(default=None, ge=0, le=MAX_INT)


class Deploy(BaseModel):
    system: str = Field(max_length=64)
    round: int = Field(ge=0, le=MAX_INT)
    adapter: str | None = Field(default=None, max_length=1000)
    base: str = Field(default=DEFAULT_BASE, max_length=500)
    start_round: bool = False  # also make ``round`` the current round if it is not yet
    allow_missing_adapter: bool = False  # the adapter folder exists only where workers run


class NewRound(BaseModel):
    number: int | None = Field(default=None, ge=0, le=MAX_INT)
    note: str = Field(default="", max_length=2000)


def _registry_errors(exc: Exception) -> HTTPException:
    if isinstance(exc, UnknownSystem):
        return HTTPException(404, str(exc))
    return HTTPException(422, str(exc))


async def _systems(services) -> list[dict]:
    async with services.db.session() as s:
        return [x.json() for x in await list_systems(s)]


@router.get("/systems")
async def get_systems(request: Request):
    services = request.app.state.services
    async with services.db.session() as s:
        round_ = await current_round(s)
    return {"round": round_, "systems": await _systems(services)}


async def _change(request: Request, fn, *args) -> dict:
    services = request.app.state.services
    try:
        async with services.db.session() as s, s.begin():
            await fn(s, *args)
    except RegistryError as exc:
        raise _registry_errors(exc) from exc
    return {"systems": await _systems(services)}


@router.post("/systems")
async def post_system(body: NewSystem, request: Request, actor: str = Depends(admin_actor)):
    return await _change(request, add_system, body.name, body.kind, actor, body.share)


@router.post("/systems/{name}/share")
async def post_share(name: str, body: Share, request: Request, actor: str = Depends(admin_actor)):
    return await _change(request, set_share, name, body.share, actor)


@router.post("/systems/{name}/pause")
async def post_pause(name: str, request: Request, actor: str = Depends(admin_actor)):
    return await _change(request, set_paused, name, True, actor)


@router.post("/systems/{name}/resume")
async def post_resume(name: str, request: Request, actor: str = Depends(admin_actor)):
    return await _change(request, set_paused, name, False, actor)


@router.post("/systems/{name}/quota")
async def post_quota(name: str, body: Quota, request: Request, actor: str = Depends(admin_actor)):
    return await _change(request, set_quota, name, body.quota, actor)


@router.post("/deploy")
async def post_deploy(body: Deploy, request: Request, actor: str = Depends(admin_actor)):
    services = request.app.state.services
    adapter = body.adapter
    if adapter:
        path = Path(adapter)
        if not path.is_dir() and not body.allow_missing_adapter:
            raise HTTPException(
                422,
                f"{adapter} is not a folder on the server; pass allow_missing_adapter if it "
                "exists only where the workers run",
            )
        adapter = str(path.resolve()) if path.is_dir() else adapter
    try:
        async with services.db.session() as s, s.begin():
            warning = None
            current = await current_round(s)
            if body.start_round and current != body.round:
                if await s.get(Round, body.round) is not None:
                    raise RegistryError(f"round {body.round} was already started")
                await start_round(s, body.round, actor, note=f"started with the deploy of {body.system}")
                current = body.round
            elif current != body.round:
                warning = (
                    f"the current round is {current}; games keep recording it until round "
                    f"{body.round} is started"
                )
            ck = await deploy_checkpoint(s, body.system, body.round, body.base, adapter, deployed_by=actor)
            result = {
                "checkpoint": ck.id,
                "system": ck.system,
                "round": ck.round,
                "base": ck.base,
                "adapter": ck.adapter,
                "active": True,
                "current_round": current,
            }
            if warning:
                result["warning"] = warning
    except RegistryError as exc:
        raise _registry_errors(exc) from exc
    return result


@router.get("/checkpoints")
async def get_checkpoints(request: Request, system: str | None = None):
    async with request.app.state.services.db.session() as s:
        q = select(Checkpoint).order_by(Checkpoint.created_at.desc())
        if system:
            q = q.where(Checkpoint.system == system)
        rows = (await s.execute(q)).scalars().all()
    return [
        {
            "id": c.id,
            "system": c.system,
            "round": c.round,
            "base": c.base,
            "adapter": c.adapter,
            "active": c.active,
            "created_at": c.created_at,
            "deployed_by": c.deployed_by,
        }
        for c in rows
    ]


@router.get("/rounds")
async def get_rounds(request: Request):
    async with request.app.state.services.db.session() as s:
        rows = (await s.execute(select(Round).order_by(Round.number))).scalars().all()
    return [{"number": r.number, "started_at": r.started_at, "note": r.note, "current": r.current} for r in rows]


@router.post("/rounds")
async def post_round(body: NewRound, request: Request, actor: str = Depends(admin_actor)):
    services = request.app.state.services
    try:
        async with services.db.session() as s, s.begin():
            r = await start_round(s, body.number, actor, body.note)
            number = r.number
    except RegistryError as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"round": number}
