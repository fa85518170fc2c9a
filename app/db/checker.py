"""The consistency checker: rebuild each game from its event log and compare with the derived
rows. Cheap to run after any incident (``multiref db check``) and after every fault test."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from app.db.database import Database
from app.db.gamelog import game_row, load_events, turn_row
from app.db.models import Game, GameEvent, Turn
from app.game.rules import replay


@dataclass
class CheckReport:
    games: int = 0
    events: int = 0
    mismatches: list[str] = field(default_factory=list)


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) < 1e-6
    return a == b


async def check_game(db: Database, game_id: str, report: CheckReport) -> None:
    async with db.session() as s:
        seqs = [seq for (seq,) in await s.execute(
            select(GameEvent.seq).where(GameEvent.game_id == game_id).order_by(GameEvent.seq)
        )]
        events = await load_events(s, game_id)
        game = await s.get(Game, game_id)
        turns = {t.turn: t for t in (await s.execute(select(Turn).where(Turn.game_id == game_id))).scalars()}
    report.games += 1
    report.events += len(events)
    if seqs != list(range(1, len(seqs) + 1)):
        report.mismatches.append(f"{game_id}: event sequence has gaps or repeats")
        return
    state = replay(events)
    for column, expected in game_row(state).items():
        actual = getattr(game, column)
        if not _close(actual, expected):
            report.mismatches.append(f"{game_id}: games.{column} is {actual!r}, log says {expected!r}")
    if set(turns) != {t.turn for t in state.turns}:
        report.mismatches.append(f"{game_id}: turns rows {sorted(turns)} != log turns {[t.turn for t in state.turns]}")
    for record in state.turns:
        row = turns.get(record.turn)
        if row is None:
            continue
        for column, expected in turn_row(game_id, record).items():
            actual = getattr(row, column)
            if column == "clicks":
                actual = [list(c) for c in actual]
            if not _close(actual, expected):
                report.mismatches.append(
                    f"{game_id} turn {record.turn}: turns.{column} is {actual!r}, log says {expected!r}"
                )


async def check_games(db: Database, game_ids: list[str] | None = None) -> CheckReport:
    report = CheckReport()
    if game_ids is None:
        async with db.session() as s:
            game_ids = [gid for (gid,) in await s.execute(select(Game.id).order_by(Game.created_at))]
    for game_id in game_ids:
        await check_game(db, game_id, report)
    return report
