"""Systems, rounds and checkpoints: which listener new games get (docs/method.md).

A *system* is one listener policy under a name (``B-SUP``), or the special system ``human``
(human-human games). Model systems have checkpoints (a base model plus an optional LoRA
adapter); activating one (``multiref deploy`` or ``POST /api/operator/deploy``) changes which
one *new* games of the system get: games already running keep the checkpoint recorded on their
row, and workers load new adapters on first use, without restarting.

Traffic: each system has a share, can be paused, and can have a quota of games per round. A
system registered by a deploy starts with share 0, so deploying never moves traffic by itself;
as long as no system has a positive share the lobby follows the settings (``listener``,
``model_system``). A *round* is one deployment period; games record the round that was current
when they were created.

Every change here writes an audit entry in the same transaction (``app.audit``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app import audit
from app.db.models import MAX_INT, Checkpoint, Round, System

HUMAN = "human"
KINDS = ("model", "human")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


class RegistryError(ValueError):
    """An operator request that cannot be applied (unknown system, bad value…)."""


class UnknownSystem(RegistryError):
    pass


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise RegistryError(
            f"{name!r} is not a valid system name (letters, digits, . _ + -; at most 64)"
        )
    return name


def kind_of(name: str) -> str:
    return "human" if name == HUMAN else "model"


def checkpoint_id(system: str, round_: int, base: str, adapter: str | None) -> str:
    digest = hashlib.sha256(f"{base}\n{adapter or ''}".encode()).hexdigest()[:8]
    return f"{system}-r{round_}-{digest}"


def read_manifest(adapter: str | None) -> dict:
    """The training manifest next to an adapter, if there is one."""
    if not adapter:
        return {}
    path = Path(adapter) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


async def ensure_system(s: AsyncSession, name: str, kind: str | None = None) -> System:
    """The system named ``name``, registered (with share 0: no traffic yet) if it is new."""
    check_name(name)
    kind = kind or kind_of(name)
    if kind not in KINDS:
        raise RegistryError(f"kind must be one of {KINDS}")
    if (name == HUMAN) != (kind == "human"):
        raise RegistryError("the system 'human' is the only one of kind human")
    system = await s.get(System, name)
    if system is None:
        system = System(name=name, kind=kind, share=0.0, paused=False, created_at=time.time())
        s.add(system)
        await s.flush()
    return system


async def get_system(s: AsyncSession, name: str) -> System:
    system = await s.get(System, name)
    if system is None:
        if name == HUMAN:
            return await ensure_system(s, HUMAN, "human")
        raise UnknownSystem(f"there is no system {name!r}; deploy a checkpoint or add it first")
    return system


async def add_system(
    s: AsyncSession, name: str, kind: str | None, actor: str, share: float = 0.0
) -> System:
    existed = await s.get(System, name) is not None
    system = await ensure_system(s, name, kind)
    if not existed:
        await audit.record(s, actor, audit.SYSTEM_ADD, name, {"kind": system.kind})
    if share:
        await set_share(s, name, share, actor)
    return system


async def set_share(s: AsyncSession, name: str, share: float, actor: str) -> System:
    if not (share >= 0 and share <= 1e6):
        raise RegistryError("a share is a number >= 0")
    system = await get_system(s, name)
    before = system.share
    system.share = float(share)
    await audit.record(s, actor, audit.SHARE, name, {"share": system.share, "before": before})
    return system


async def set_paused(s: AsyncSession, name: str, paused: bool, actor: str) -> System:
    system = await get_system(s, name)
    system.paused = bool(paused)
    await audit.record(s, actor, audit.PAUSE if paused else audit.RESUME, name, {})
    return system


async def set_quota(s: AsyncSession, name: str, quota: int | None, actor: str) -> System:
    if quota is not None and quota < 0:
        raise RegistryError("a quota is a number of games >= 0 (or none)")
    system = await get_system(s, name)
    before = system.quota
    system.quota = quota
    await audit.record(s, actor, audit.QUOTA, name, {"quota": quota, "before": before})
    return system


async def deploy_checkpoint(
    s: AsyncSession,
    system: str,
    round_: int,
    base: str,
    adapter: str | None = None,
    deployed_by: str | None = None,
) -> Checkpoint:
    """Register (or reuse) a checkpoint and make it the system's active one. Caller commits."""
    await ensure_system(s, system, "model")
    cid = checkpoint_id(system, round_, base, adapter)
    ck = await s.get(Checkpoint, cid)
    if ck is None:
        ck = Checkpoint(
            id=cid,
            system=system,
            round=round_,
            base=base,
            adapter=str(adapter) if adapter else None,
            manifest=read_manifest(adapter),
            created_at=time.time(),
            deployed_by=(deployed_by or None) and deployed_by[:64],
            active=False,
        )
        s.add(ck)
        await s.flush()
    previous = await active_checkpoint(s, system)
    await s.execute(
        update(Checkpoint)
        .where(Checkpoint.system == system, Checkpoint.id != cid)
        .values(active=False)
    )
    ck.active = True
    await audit.record(
        s,
        deployed_by or "unknown",
        audit.DEPLOY,
        system,
        {"checkpoint": cid, "round": round_, "base": base, "adapter": ck.adapter, "previous": previous},
    )
    return ck


async def active_checkpoint(s: AsyncSession, system: str) -> str | None:
    return (
        await s.execute(
            select(Checkpoint.id)
            .where(Checkpoint.system == system, Checkpoint.active.is_(True))
            .order_by(Checkpoint.created_at.desc())
            .limit(1)
        )
    ).scalar()


# ---------------------------------------------------------------- rounds


async def current_round(s: AsyncSession) -> int | None:
    return (
        await s.execute(
            select(Round.number).where(Round.current.is_(True)).order_by(Round.number.desc()).limit(1)
        )
    ).scalar()


async def start_round(
    s: AsyncSession, number: int | None, actor: str, note: str = ""
) -> Round:
    """Make a new round current: games created from now on record it. ``None``: the next one."""
    highest = (await s.execute(select(func.max(Round.number)))).scalar()
    if number is None:
        number = 0 if highest is None else highest + 1
    if not 0 <= number <= MAX_INT:
        raise RegistryError(f"round numbers go from 0 to {MAX_INT} (the highest started is {highest})")
    if await s.get(Round, number) is not None:
        raise RegistryError(f"round {number} was already started")
    previous = await current_round(s)
    await s.execute(update(Round).where(Round.current.is_(True)).values(current=False))
    r = Round(number=number, started_at=time.time(), note=note[:2000], current=True)
    s.add(r)
    await s.flush()
    await audit.record(s, actor, audit.ROUND_START, str(number), {"note": note, "previous": previous})
    return r


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class SystemInfo:
    name: str
    kind: str
    share: float
    paused: bool
    quota: int | None
    checkpoint: str | None
    checkpoint_round: int | None

    def json(self) -> dict:
        return self.__dict__.copy()


async def list_systems(s: AsyncSession) -> list[SystemInfo]:
    systems = (await s.execute(select(System).order_by(System.name))).scalars().all()
    active = {
        c.system: c
        for c in (
            await s.execute(
                select(Checkpoint).where(Checkpoint.active.is_(True)).order_by(Checkpoint.created_at)
            )
        ).scalars()
    }
    return [
        SystemInfo(
            name=x.name,
            kind=x.kind,
            share=x.share,
            paused=x.paused,
            quota=x.quota,
            checkpoint=active[x.name].id if x.name in active else None,
            checkpoint_round=active[x.name].round if x.name in active else None,
        )
        for x in systems
    ]
