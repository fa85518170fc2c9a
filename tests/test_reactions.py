"""The lifecycle reactions of committed events (app/live/reactions.py), as data.

Each test plays a game with the pure rules engine and a hand-set clock, and compares what
``react`` says the commit must also write with rows written out by hand: who is paid how much,
who forfeits, which model turn is requested with which deadline. The event store's writing of
these rows, on both databases, is in ``test_store_writes_the_reactions_in_the_events_transaction``.
"""

from __future__ import annotations

import itertools
import time
import uuid

from app.game.rules import (
    AdminEnd,
    Click,
    GameConfig,
    GameCreated,
    GameRules,
    Join,
    Leave,
    ListenerKind,
    Pay,
    Seat,
    SendUtterance,
    Submit,
    new_game,
    step,
)
from app.live.reactions import NO_PAY, ListenerTurn, Reactions, Settlement, react

SPEAKER, LISTENER = Seat.SPEAKER, Seat.LISTENER
T0 = 1_700_000_000.0
CONTEXT = tuple(f"tangram-{i}" for i in range(10))
TARGETS = ("tangram-1", "tangram-4", "tangram-7")
CONFIG = GameConfig(
    context=CONTEXT, targets=TARGETS, speaker_order=CONTEXT, listener_order=tuple(reversed(CONTEXT))
)


class Play:
    """A game driven by commands at given offsets from T0; keeps the last commit's reactions."""

    def __init__(self, kind: ListenerKind = ListenerKind.HUMAN, game_id: str = "g1") -> None:
        self.state = new_game(
            GameCreated(game_id=game_id, config=CONFIG, rules=GameRules(), listener_kind=kind, at=T0)
        )
        self.codes = (f"MR-CODE{i}" for i in itertools.count(1))
        self.last: Reactions | None = None
        self.batches: list[tuple] = []

    def do(self, cmd) -> Reactions:
        before = self.state
        self.state, events = step(before, cmd)
        assert isinstance(events, list) and events, events
        self.last = react(before, events, self.state, new_code=lambda: next(self.codes))
        self.batches.append((before, events, self.state))
        return self.last

    def start(self) -> None:
        self.do(Join(seat=SPEAKER, at=T0 + 1))
        if self.state.listener_kind is ListenerKind.HUMAN:
            self.do(Join(seat=LISTENER, at=T0 + 2))


def test_a_human_game_in_play_writes_nothing_else() -> None:
    g = Play()
    assert g.do(Join(seat=SPEAKER, at=T0 + 1)) == Reactions()
    assert g.do(Join(seat=LISTENER, at=T0 + 2)) == Reactions()
    assert g.do(SendUtterance(seat=SPEAKER, text="the bird", at=T0 + 5)) == Reactions()
    assert g.do(Click(seat=LISTENER, tangram_id="tangram-1", at=T0 + 7)) == Reactions()
    assert not Reactions()


def test_a_message_to_a_model_listener_requests_its_turn_and_wakes_the_workers() -> None:
    g = Play(ListenerKind.MODEL)
    g.start()
    r = g.do(SendUtterance(seat=SPEAKER, text="the bird", at=T0 + 5))
    # the model's turn ends model_turn_seconds (30) after the message
    assert r == Reactions(listener_turns=(ListenerTurn(turn=1, created_at=T0 + 5, deadline=T0 + 35),), wake_listeners=True)


def test_a_won_game_pays_both_seats_in_full_and_gives_each_a_code() -> None:
    g = Play()
    g.start()
    g.do(SendUtterance(seat=SPEAKER, text="all three", at=T0 + 10))
    for i, tid in enumerate(TARGETS):
        g.do(Click(seat=LISTENER, tangram_id=tid, at=T0 + 20 + i))
    r = g.do(Submit(seat=LISTENER, at=T0 + 60))
    # one minute since creation: 20 c base; 3 right, 0 wrong: 15 c; success: 25 c
    pay = Pay(base_cents=20, bonus_cents=15, success_cents=25, correct=3, wrong=0, minutes=1.0)
    assert r == Reactions(settlements=(
        Settlement(SPEAKER, T0 + 60, False, pay, "MR-CODE1"),
        Settlement(LISTENER, T0 + 60, False, pay, "MR-CODE2"),
    ))


def test_the_seat_that_leaves_forfeits_and_its_partner_is_paid() -> None:
    g = Play()
    g.start()
    g.do(SendUtterance(seat=SPEAKER, text="the bird", at=T0 + 10))
    g.do(Click(seat=LISTENER, tangram_id="tangram-1", at=T0 + 20))
    g.do(Click(seat=LISTENER, tangram_id="tangram-2", at=T0 + 21))
    r = g.do(Leave(seat=LISTENER, at=T0 + 30))
    # half a minute: 10 c base; one right and one wrong in the selection: net 0, no bonus
    pay = Pay(base_cents=10, bonus_cents=0, success_cents=0, correct=1, wrong=1, minutes=0.5)
    assert r == Reactions(settlements=(
        Settlement(SPEAKER, T0 + 30, False, pay, "MR-CODE1"),
        Settlement(LISTENER, T0 + 30, True, NO_PAY, None),
    ))


def test_a_model_game_ended_by_an_admin_cancels_its_open_requests() -> None:
    g = Play(ListenerKind.MODEL)
    g.start()
    g.do(SendUtterance(seat=SPEAKER, text="the bird", at=T0 + 5))
    r = g.do(AdminEnd(at=T0 + 120))
    pay = Pay(base_cents=40, bonus_cents=0, success_cents=0, correct=0, wrong=0, minutes=2.0)
    assert r == Reactions(
        settlements=(
            Settlement(SPEAKER, T0 + 120, False, pay, "MR-CODE1"),
            Settlement(LISTENER, T0 + 120, False, pay, "MR-CODE2"),
        ),
        cancel_listener_requests=True,
    )


# ---------------------------------------------------------------- the store writes them


async def test_store_writes_the_reactions_in_the_events_transaction(database_url) -> None:
    """The wiring: a model game's request row (the game's system and checkpoint), then its end:
    the speaker paid with a code, the request cancelled, all through ``EventStore.commit``."""
    from sqlalchemy import select

    from app.db.database import Database
    from app.db.gamelog import create_game, event_json
    from app.db.models import ListenerRequest, Participant
    from app.live.bus import Bus
    from app.live.store import Batch, event_store

    db = Database(database_url)
    await db.migrate()
    try:
        game_id = uuid.uuid4().hex
        g = Play(ListenerKind.MODEL, game_id=game_id)
        async with db.session() as s, s.begin():
            await create_game(
                s, GameCreated(game_id=game_id, config=CONFIG, rules=GameRules(),
                               listener_kind=ListenerKind.MODEL, at=T0),
                system="B-SUP", checkpoint="ck-1",
            )
            s.add(Participant(id="spk", platform="bot", worker_hash="h" * 64, status="in_game",
                              created_at=time.time(), game_id=game_id, seat="speaker"))
        store = event_store(db, Bus())
        g.start()
        g.do(SendUtterance(seat=SPEAKER, text="the bird", at=T0 + 5))
        g.do(AdminEnd(at=T0 + 120))
        results = []
        for before, events, after in g.batches:
            message = {"k": "g", "id": game_id, "v": after.version, "e": [event_json(e) for e in events]}
            batch = Batch(before, events, after, "speaker", react(before, events, after, new_code=lambda: "MR-X"), message)
            results.append(await store.commit(batch))
        assert [len(r.staged) for r in results] == [1, 2, 1]  # the message wakes the workers
        assert results[1].staged[1] == {"k": "r", "id": game_id}
        assert results[-1].codes == {SPEAKER: "MR-X"}  # no participant row for the model's seat
        async with db.session() as s:
            req = (await s.execute(select(ListenerRequest))).scalar_one()
            p = await s.get(Participant, "spk")
        assert (req.game_id, req.turn, req.system, req.checkpoint, req.status, req.created_at, req.deadline,
                req.attempts) == (game_id, 1, "B-SUP", "ck-1", "cancelled", T0 + 5, T0 + 35, 0)
        assert (p.status, p.completion_code, p.pay_base_cents, p.pay_bonus_cents, p.pay_success_cents,
                p.finished_at) == ("completed", "MR-X", 40, 0, 0, T0 + 120)
        logged = [e.type for _, events, _ in g.batches for e in events]
        assert [e.type for e in await store.load_events(game_id)] == ["game_created", *logged]
        assert [e.type for e in await store.load_events(game_id, 2)] == logged[1:]
    finally:
        await db.close()


async def test_a_game_made_for_waiting_players_tells_every_process_including_this_one(database_url) -> None:
    """Seating players who exist already (their lobby pages may be open on any server
    process, this one included) sends each a participant message that this process's own
    bus delivers too: on PostgreSQL in the creation's transaction (a notification sent after
    the commit by this process's notifier is skipped by its own listener)."""
    import asyncio

    from app.db.database import Database
    from app.db.models import Participant
    from app.game.configs import ConfigQueue
    from app.live.bus import Bus, PostgresBus, asyncpg_dsn
    from app.live.store import NewGame, event_store

    db = Database(database_url)
    await db.migrate()
    bus = PostgresBus(asyncpg_dsn(database_url)) if db.dialect == "postgresql" else Bus()
    got: asyncio.Queue[dict] = asyncio.Queue()

    async def handler(message: dict) -> None:
        await got.put(message)

    bus.subscribe(handler)
    await bus.start()
    try:
        async with db.session() as s, s.begin():
            for pid in ("spk", "lis"):
                s.add(Participant(id=pid, platform="bot", worker_hash=pid.ljust(64, "0"), status="waiting",
                                  created_at=T0, waiting_since=T0))
        game_id = uuid.uuid4().hex
        await event_store(db, bus).create_game(NewGame(
            game_id=game_id, listener_kind=ListenerKind.HUMAN, system="human", rules=GameRules(), at=T0,
            players={SPEAKER: "spk", LISTENER: "lis"}, next_config=ConfigQueue([f"t{i}" for i in range(40)], 1, GameRules()).config,
        ))
        seen = set()
        while len(seen) < 2:
            message = await asyncio.wait_for(got.get(), timeout=5)
            if message.get("k") == "p":
                seen.add(message["id"])
        assert seen == {"spk", "lis"}
        async with db.session() as s:
            rows = [(p.status, p.game_id, p.seat, p.waiting_since) for p in [await s.get(Participant, x) for x in ("spk", "lis")]]
        assert rows == [("in_game", game_id, "speaker", None), ("in_game", game_id, "listener", None)]
    finally:
        await bus.stop()
        await db.close()
