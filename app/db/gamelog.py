"""Reading and appending the per-game event log, and projecting it onto the derived tables.

``append`` writes events with consecutive sequence numbers; the unique (game_id, seq) key makes
two writers racing on one game (two server processes, a sweeper and a player) collide instead
of interleaving: the loser gets :class:`Conflict`, reloads and decides again. The derived rows
(games, turns) are pure functions of the replayed state (``game_row``, ``turn_row``), which is
what lets the checker compare them with a fresh replay.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Game, GameEvent, Turn
from app.game.rules import (
    EVENT_ADAPTER,
    Event,
    GameCreated,
    GameState,
    Phase,
    TurnRecord,
    event_from_dict,
    new_game,
    replay,
)


class Conflict(Exception):
    """Another writer appended to this game first."""


def event_json(event: Event) -> dict:
    return EVENT_ADAPTER.dump_python(event, mode="json")


def game_row(state: GameState) -> dict:
    """The ``games`` columns that follow from the event log."""
    return {
        "status": "ended" if state.phase is Phase.ENDED else "live",
        "phase": state.phase.value,
        "turn": state.turn,
        "version": state.version,
        "selection": sorted(state.selection),
        "started_at": state.started_at,
        "ended_at": state.ended_at,
        "next_deadline": state.next_deadline(),
        "end_reason": state.end_reason.value if state.end_reason else None,
        "outcome": state.outcome.value if state.outcome else None,
    }


def turn_row(game_id: str, t: TurnRecord) -> dict:
    return {
        "game_id": game_id,
        "turn": t.turn,
        "started_at": t.started_at,
        "utterance": t.utterance,
        "auto_sent": t.auto_sent,
        "sent_at": t.sent_at,
        "selection_before": list(t.selection_before),
        "selection_after": list(t.selection_after) if t.selection_after is not None else None,
        "selected": list(t.selected),
        "deselected": list(t.deselected),
        "clicks": [[tid, sel] for tid, sel in t.clicks],
        "auto_submitted": t.auto_submitted,
        "submitted_at": t.submitted_at,
        "sec_until_send": round(t.sent_at - t.started_at, 3) if t.sent_at is not None else None,
        "sec_until_submit": (
            round(t.submitted_at - t.started_at, 3) if t.submitted_at is not None else None
        ),
    }


def _upsert(session: AsyncSession, table, rows: list[dict], keys: list[str]):
    dialect = session.bind.dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(table).values(rows)
    cols = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    return stmt.on_conflict_do_update(index_elements=keys, set_=cols)


async def create_game(session: AsyncSession, created: GameCreated, **columns) -> GameState:
    """Insert a new game with its first event (seq 1). Caller commits."""
    state = new_game(created)
    session.add(
        Game(
            id=created.game_id,
            listener_kind=created.listener_kind.value,
            config=created.config.model_dump(mode="json"),
            rules=created.rules.model_dump(mode="json"),
            created_at=created.at,
            speaker_draft="",
            **game_row(state),
            **columns,
        )
    )
    await session.flush()
    session.add(
        GameEvent(
            game_id=created.game_id,
            seq=1,
            type=created.type,
            at=created.at,
            data=event_json(created),
            actor="server",
        )
    )
    await session.flush()
    return state


async def append(
    session: AsyncSession,
    before: GameState,
    events: list[Event],
    after: GameState,
    actor: str,
) -> None:
    """Append ``events`` (which took ``before`` to ``after``) and update the derived rows.

    Raises :class:`Conflict` when another writer got there first. Caller commits.
    """
    rows = [
        {
            "game_id": before.game_id,
            "seq": before.version + i + 1,
            "type": e.type,
            "at": e.at,
            "data": event_json(e),
            "actor": actor,
        }
        for i, e in enumerate(events)
    ]
    try:
        await session.execute(GameEvent.__table__.insert(), rows)
    except IntegrityError as exc:
        raise Conflict(before.game_id) from exc
    values = game_row(after)
    if any(e.type == "utterance_sent" for e in events):
        values["speaker_draft"] = ""
    result = await session.execute(
        update(Game)
        .where(Game.id == before.game_id, Game.version == before.version)
        .values(**values)
    )
    if result.rowcount != 1:
        raise Conflict(before.game_id)
    touched = [e.turn for e in events if hasattr(e, "turn")]
    if touched and after.turns:
        changed = [turn_row(after.game_id, t) for t in after.turns if t.turn >= min(touched)]
        await session.execute(_upsert(session, Turn.__table__, changed, ["game_id", "turn"]))


async def load_events(session: AsyncSession, game_id: str, after_seq: int = 0) -> list[Event]:
    rows = await session.execute(
        select(GameEvent.data)
        .where(GameEvent.game_id == game_id, GameEvent.seq > after_seq)
        .order_by(GameEvent.seq)
    )
    return [event_from_dict(data) for (data,) in rows]


async def load_state(session: AsyncSession, game_id: str) -> GameState | None:
    events = await load_events(session, game_id)
    return replay(events) if events else None
