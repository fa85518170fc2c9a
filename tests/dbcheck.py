"""Test support: read what a server stored, and run the consistency checker on it."""

from __future__ import annotations

from sqlalchemy import select

from app.db.checker import check_games
from app.db.database import Database
from app.db.models import Game, Turn


async def check_database(url: str) -> list[str]:
    db = Database(url)
    try:
        report = await check_games(db)
        assert report.games > 0, "no game to check"
        return report.mismatches
    finally:
        await db.close()


async def fetch_game_rows(url: str, game_id: str) -> tuple[dict, list[dict]]:
    db = Database(url)
    try:
        async with db.session() as s:
            game = await s.get(Game, game_id)
            turns = (await s.execute(select(Turn).where(Turn.game_id == game_id).order_by(Turn.turn))).scalars().all()
            as_dict = lambda row: {c.name: getattr(row, c.name) for c in row.__table__.columns}
            return as_dict(game), [as_dict(t) for t in turns]
    finally:
        await db.close()
