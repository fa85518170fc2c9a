"""Appends of many games committed at once (``EventStore.commit``), on both databases.

On PostgreSQL the store group-commits appends without reactions: those that arrive while a
statement is in flight go together in one. These tests hold what a group must keep from
one-by-one commits: each game is checked against its own expected version (a stale append
conflicts alone), what a player typed is stored verbatim, events keep their order, and a
member whose rows the database refuses does not take the rest of its group down.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.db.database import Database
from app.db.gamelog import Conflict, create_game, event_json
from app.game.rules import (
    GameConfig,
    GameCreated,
    GameRules,
    Join,
    ListenerKind,
    Seat,
    SendUtterance,
    new_game,
    step,
)
from app.live.bus import Bus
from app.live.reactions import react
from app.live.store import Batch, event_store

T0 = 1_700_000_000.0
CONTEXT = tuple(f"tangram-{i}" for i in range(10))
CONFIG = GameConfig(
    context=CONTEXT, targets=CONTEXT[:3], speaker_order=CONTEXT, listener_order=tuple(reversed(CONTEXT))
)
GAMES = 12


async def _games(db: Database, n: int) -> list:
    states = []
    async with db.session() as s, s.begin():
        for _ in range(n):
            created = GameCreated(
                game_id=uuid.uuid4().hex, config=CONFIG, rules=GameRules(), listener_kind=ListenerKind.HUMAN, at=T0
            )
            await create_game(s, created, system="human")
            states.append(new_game(created))
    return states


def _batch(before, cmd) -> Batch:
    after, events = step(before, cmd)
    assert isinstance(events, list) and events, events
    message = {"k": "g", "id": before.game_id, "v": after.version, "e": [event_json(e) for e in events]}
    return Batch(before, events, after, "speaker", react(before, events, after), message)


async def _logged(db: Database, game_id: str) -> list[tuple]:
    rows = await db.fetch("SELECT id, seq, type FROM game_events WHERE game_id = $1 ORDER BY seq", game_id)
    if rows is None:
        pytest.fail("no direct read on this database")
    return [tuple(r) for r in rows]


async def test_a_stale_append_conflicts_alone_and_the_rest_of_its_group_commits(database_url) -> None:
    db = Database(database_url)
    await db.migrate()
    try:
        store = event_store(db, Bus())
        games = await _games(db, GAMES)
        joins = [_batch(g, Join(seat=Seat.SPEAKER, at=T0 + 1)) for g in games]
        await asyncio.gather(*(store.commit(b) for b in joins))
        texts = [f"the bird #{i} \u00e9\u00e8 \"quoted\" back\\slash \U0001f426" for i in range(GAMES)]
        listens = [_batch(b.after, Join(seat=Seat.LISTENER, at=T0 + 2)) for b in joins]
        await asyncio.gather(*(store.commit(b) for b in listens))
        sends = [
            _batch(b.after, SendUtterance(seat=Seat.SPEAKER, text=text, at=T0 + 5))
            for b, text in zip(listens, texts)
        ]
        # game 0's listener join again, decided on the state before it: stale
        results = await asyncio.gather(
            *(store.commit(b) for b in sends), store.commit(listens[0]), return_exceptions=True
        )
        assert [type(r).__name__ for r in results] == ["Committed"] * GAMES + ["Conflict"]
        if db.dialect == "postgresql":  # fewer statements than appends
            assert 0 < store.stats["groups"] < 3 * GAMES + 1, store.stats
        for b, text in zip(sends, texts):
            game_id = b.after.game_id
            logged = await _logged(db, game_id)
            assert [(seq, kind) for _, seq, kind in logged] == [
                (1, "game_created"), (2, "player_joined"), (3, "player_joined"), (4, "turn_started"),
                (5, "utterance_sent"),
            ][: len(logged)]
            assert len(logged) == b.after.version
            assert [i for i, _, _ in logged] == sorted(i for i, _, _ in logged)  # ids follow seq
            rows = await db.fetch("SELECT version, phase, speaker_draft FROM games WHERE id = $1", game_id)
            assert tuple(rows[0]) == (b.after.version, b.after.phase.value, "")
            turn = await db.fetch("SELECT utterance FROM turns WHERE game_id = $1 AND turn = 1", game_id)
            assert turn[0][0] == text  # verbatim
            events = await store.load_events(game_id)
            assert [e.type for e in events][-1] == "utterance_sent" and events[-1].text == text
    finally:
        await db.close()


async def test_a_member_the_database_refuses_does_not_take_its_group_down(database_url) -> None:
    """A NUL character cannot be stored in a PostgreSQL text column (the web edge refuses it
    long before; the store must still fail alone): that member's commit raises, every other
    member of the group commits. SQLite stores it."""
    db = Database(database_url)
    await db.migrate()
    try:
        store = event_store(db, Bus())
        n = 20  # more than the statements in flight at once: the last ones go as one group
        games = await _games(db, n)
        joined = []
        for g in games:
            b1 = _batch(g, Join(seat=Seat.SPEAKER, at=T0 + 1))
            await store.commit(b1)
            b2 = _batch(b1.after, Join(seat=Seat.LISTENER, at=T0 + 2))
            await store.commit(b2)
            joined.append(b2.after)
        texts = ["fine"] * n
        texts[-2] = "bad \x00 byte"
        sends = [_batch(s, SendUtterance(seat=Seat.SPEAKER, text=t, at=T0 + 5)) for s, t in zip(joined, texts)]
        results = await asyncio.gather(*(store.commit(b) for b in sends), return_exceptions=True)
        kinds = [type(r).__name__ for r in results]
        if db.dialect == "postgresql":
            assert kinds[:-2] + kinds[-1:] == ["Committed"] * (n - 1) and kinds[-2] != "Committed", results
            assert not isinstance(results[-2], Conflict)  # the database's own error, not a lost race
            assert store.stats["group_fallbacks"] >= 2  # it went in a group, with others
        else:
            assert kinds == ["Committed"] * n
        for b, r in zip(sends, results):
            logged = await _logged(db, b.after.game_id)
            assert len(logged) == (b.after.version if type(r).__name__ == "Committed" else b.before.version)
    finally:
        await db.close()
