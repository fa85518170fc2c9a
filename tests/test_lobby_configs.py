"""Which config the lobby gives each new game (MULTIREF.md's fair comparison: a system's n-th game
of a round plays config n of one shuffled queue), against indexes written down by hand.

In process, on a real SQLite file, with a fake clock (tests/test_oracles.py's World). Written for
the gaps `make mutate` found in the config pick (``Lobby._next_config`` then, the event store's
``_create_game`` now): no fast test made a second game, so a queue that never advanced, started
at 1, skipped by two, counted imported games or other systems' or other rounds' games all passed.
"""

from __future__ import annotations

from sqlalchemy import select, update

from app.db.models import Game, Round
from app.game.configs import ConfigQueue
from tests.test_oracles import POOL, T0, World


async def _new_game(w: World, name: str, system: str | None = None) -> str:
    await w.participant(f"{name}-s")
    await w.participant(f"{name}-l")
    return await w.lobby.create_game_for(f"{name}-s", f"{name}-l", system=system)


async def _games(w: World) -> dict[str, tuple[str, int | None, int | None, list]]:
    async with w.db.session() as s:
        rows = (await s.execute(select(Game.id, Game.system, Game.round, Game.config_index, Game.config))).all()
    return {gid: (system, round_, index, config["context"]) for gid, system, round_, index, config in rows}


async def test_each_system_and_round_plays_the_config_queue_in_order(database_url):
    w = await World.make(database_url)
    queue = ConfigQueue(POOL, 7, w.rules)  # the World's lobby queue: pool, seed 7
    first = [await _new_game(w, f"g{i}") for i in range(3)]
    games = await _games(w)
    assert [games[g][2] for g in first] == [0, 1, 2]
    assert [games[g][3] for g in first] == [list(queue.config(i).context) for i in range(3)]
    assert [games[g][:2] for g in first] == [("human", None)] * 3

    # an index is never handed out twice, and an imported game (a recorded one, any index)
    # does not move the queue
    async with w.db.session() as s, s.begin():
        await s.execute(update(Game).where(Game.id == first[2]).values(source="imported", config_index=40))
    g3 = await _new_game(w, "g3")
    assert (await _games(w))[g3][2] == 3

    # another system counts its own games from 0
    b1 = await _new_game(w, "b1", system="B-SUP")
    b2 = await _new_game(w, "b2", system="B-SUP")
    games = await _games(w)
    assert (games[b1][:3], games[b2][:3]) == (("B-SUP", None, 0), ("B-SUP", None, 1))

    # a new round starts every system's queue again from 0
    async with w.db.session() as s, s.begin():
        s.add(Round(number=1, started_at=T0, note="", current=True))
    r1 = await _new_game(w, "r1")
    r2 = await _new_game(w, "r2")
    games = await _games(w)
    assert (games[r1][:3], games[r2][:3]) == (("human", 1, 0), ("human", 1, 1))
    await w.db.close()


async def test_a_database_from_before_the_queue_counters_continues_each_queue(database_url, tmp_path):
    """Migration 0008: each (system, round) queue of live games goes on after its highest
    index; imported games and other queues do not count."""
    import asyncio

    from alembic import command

    from app.db.database import Database, alembic_config
    from app.db.gamelog import create_game
    from app.game.rules import GameCreated, ListenerKind
    from app.live.store import CLAIM_CONFIG_INDEX, config_queue_key

    db = Database(database_url)
    await asyncio.to_thread(command.upgrade, alembic_config(db.url), "0007")
    queue = ConfigQueue(POOL, 7)
    games = [("human", None, 0, "live"), ("human", None, 4, "live"), ("B-SUP", 1, 2, "live"),
             ("B-SUP", 2, 0, "live"), ("human", None, 40, "imported"), ("B-SUP", 1, None, "live")]
    async with db.session() as s, s.begin():
        for i, (system, round_, index, source) in enumerate(games):
            created = GameCreated(game_id=f"old{i}", config=queue.config(i), rules=queue.rules,
                                  listener_kind=ListenerKind.HUMAN, at=T0)
            await create_game(s, created, system=system, round=round_, config_index=index, source=source)
    await db.migrate()
    claims = {}
    for system, round_ in [("human", None), ("B-SUP", 1), ("B-SUP", 2), ("B-SUP", None)]:
        rows = await db.fetch(CLAIM_CONFIG_INDEX, config_queue_key(system, round_))
        claims[(system, round_)] = rows[0][0]
    assert claims == {("human", None): 5, ("B-SUP", 1): 3, ("B-SUP", 2): 1, ("B-SUP", None): 0}
    await db.close()
