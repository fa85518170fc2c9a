"""The lobby's pairing creates games through the event store (``EventStore.create_game``, the one
creation path), seating the workers only if they still wait, on both databases.

In process with tests/test_oracles.py's World (real database, fake clock). Two ``Lobby`` objects
on one database stand in for two server processes pairing the same queue at once.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select, update

from app.db.models import Game, Participant
from app.game.rules import ListenerKind, Seat
from app.live.bus import Bus
from app.live.lobby import Lobby
from app.live.participants import Status
from app.live.store import NewGame, NotWaiting
from tests.test_oracles import World


async def _waiting(w: World, ids: list[str]) -> None:
    for pid in ids:
        await w.participant(pid)
    async with w.db.session() as s, s.begin():
        for i, pid in enumerate(ids):
            await s.execute(
                update(Participant).where(Participant.id == pid)
                .values(status=Status.WAITING, waiting_since=w.clock() + i * 0.001, present_at=w.clock())
            )


async def test_two_lobbies_pairing_one_queue_seat_every_worker_once(database_url):
    w = await World.make(database_url)
    other = Lobby(w.db, Bus(), w.rules, w.lobby.configs, w.lobby.policy, clock=w.clock)
    ids = [f"w{i:02d}" for i in range(24)]
    await _waiting(w, ids)
    made = await asyncio.gather(w.lobby.match(), other.match())
    games = [g for part in made for g in part]
    async with w.db.session() as s:
        rows = (await s.execute(select(Game.id, Game.speaker_id, Game.listener_id, Game.config_index))).all()
        seated = {p.id: (p.status, p.game_id) for p in (await s.execute(select(Participant))).scalars()}
    assert sorted(games) == sorted(r[0] for r in rows) and len(rows) == 12
    players = [pid for r in rows for pid in (r[1], r[2])]
    assert sorted(players) == ids  # every worker in exactly one game
    assert all(seated[r[1]] == (Status.IN_GAME, r[0]) == seated[r[2]] for r in rows)
    assert sorted(r[3] for r in rows) == list(range(12))  # the config queue, no index twice
    await w.db.close()


async def test_a_worker_who_stopped_waiting_is_not_seated_and_nothing_is_created(database_url):
    w = await World.make(database_url)
    await _waiting(w, ["a", "b"])
    async with w.db.session() as s, s.begin():  # b's last socket closed after the queue was read
        await s.execute(update(Participant).where(Participant.id == "b").values(status=Status.CONSENTED))
    game_id = uuid.uuid4().hex
    with pytest.raises(NotWaiting):
        await w.lobby.store.create_game(NewGame(
            game_id=game_id, listener_kind=ListenerKind.HUMAN, system="human", rules=w.rules, at=w.clock(),
            players={Seat.SPEAKER: "a", Seat.LISTENER: "b"}, next_config=w.lobby.configs.config, waiting=True,
        ))
    async with w.db.session() as s:
        assert (await s.execute(select(Game.id))).all() == []
        a = await s.get(Participant, "a")
        assert (a.status, a.game_id) == (Status.WAITING, None)  # a's seat rolled back with it
    assert await w.lobby.match() == []  # b no longer waits: a waits alone
    await w.db.close()
