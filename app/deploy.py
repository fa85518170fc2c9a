"""Registering and activating checkpoints of listener systems (``multiref deploy``).

Activating a checkpoint changes which one *new* games of the system get; games already running
keep the checkpoint recorded on their row, and workers load new adapters without restarting.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Checkpoint, System


def checkpoint_id(system: str, round_: int, base: str, adapter: str | None) -> str:
    digest = hashlib.sha256(f"{base}\n{adapter or ''}".encode()).hexdigest()[:8]
    return f"{system}-r{round_}-{digest}"


def read_manifest(adapter: str | None) -> dict:
    """The training manifest next to an adapter, if there is one."""
    if not adapter:
        return {}
    path = Path(adapter) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


async def ensure_system(s: AsyncSession, name: str, kind: str = "model") -> System:
    system = await s.get(System, name)
    if system is None:
        system = System(name=name, kind=kind, share=1.0, paused=False, created_at=time.time())
        s.add(system)
        await s.flush()
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
            deployed_by=deployed_by,
            active=False,
        )
        s.add(ck)
        await s.flush()
    await s.execute(update(Checkpoint).where(Checkpoint.system == system, Checkpoint.id != cid).values(active=False))
    ck.active = True
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
