"""Independent oracles: values worked out by hand and written down, never the code's own output.

The export round trip and the database checker compare the code with itself; a bug that is
consistent everywhere (turns numbered from 0, a bonus stored as 0) passes them. Here a scripted
game is played through the real hub, lobby and sweeper on a real SQLite file, with a fake clock,
and the exported turn rows, the pay stored for each participant, who the lobby pairs and what the
speaker's draft does are compared with literal tables.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db.database import Database
from app.db.models import Game, GameEvent, Participant
from app.export import export
from app.game.configs import ConfigQueue
from app.game.rules import Click, GameConfig, GameRules, Join, Leave, SendUtterance, Seat, Submit
from app.live.bus import Bus
from app.live.hub import GameHub
from app.live.lobby import Lobby, LobbyPolicy
from app.live.participants import Status
from app.live.sweeper import Sweeper

T0 = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
POOL = [f"pool-{i:03d}" for i in range(40)]
CONTEXT = tuple(f"tg-{i:02d}" for i in range(10))
TARGETS = ("tg-01", "tg-04", "tg-07")
CONFIG = GameConfig(
    context=CONTEXT,
    targets=TARGETS,
    speaker_order=CONTEXT,
    listener_order=("tg-09", "tg-01", "tg-08", "tg-02", "tg-07", "tg-03", "tg-06", "tg-04", "tg-05", "tg-00"),
)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def at(self, offset: float) -> float:
        self.t = T0 + offset
        return self.t


_MIGRATED: dict[str, Path] = {}


async def _copy_migrated_sqlite(url: str) -> None:
    """Start ``url`` (a new SQLite file) as a copy of a database migrated once per process.

    Migrating takes most of a World test's time (about 0.3 s of 0.4). Keyed by the mutant under
    test as well (``make mutate`` forks one process per mutant from a parent that already holds a
    template): each mutant still migrates once with its own code, so mutants of the migration
    path are still caught here."""
    key = os.environ.get("MUTANT_UNDER_TEST", "")
    template = _MIGRATED.get(key)
    if template is None or not template.exists():
        template = Path(tempfile.mkdtemp(prefix="multiref-template-")) / "migrated.sqlite3"
        db = Database(f"sqlite+aiosqlite:///{template}")
        await db.migrate()
        await db.close()
        _MIGRATED[key] = template
    shutil.copyfile(template, url.split(":///", 1)[1])


class World:
    """The live parts a server runs (hub, lobby, sweeper) on one database, driven by hand."""

    def __init__(self, db: Database, clock: FakeClock, rules: GameRules, policy: LobbyPolicy) -> None:
        self.db, self.clock, self.rules = db, clock, rules
        bus = Bus()
        self.hub = GameHub(db, bus, clock=clock)
        self.lobby = Lobby(db, bus, rules, ConfigQueue(POOL, 7, rules), policy, clock=clock)
        self.sweeper = Sweeper(self.hub, self.lobby)

    @classmethod
    async def make(cls, url: str, rules: GameRules | None = None, policy: LobbyPolicy | None = None) -> "World":
        if url.startswith("sqlite"):
            await _copy_migrated_sqlite(url)
        db = Database(url)
        await db.migrate()  # a no-op on the copy: the schema is at head
        return cls(db, FakeClock(), rules or GameRules(), policy or LobbyPolicy(role_assignment="arrival"))

    async def participant(self, pid: str, worker: str | None = None) -> str:
        async with self.db.session() as s, s.begin():
            s.add(Participant(id=pid, platform="bot", worker_hash=(worker or pid).ljust(64, "0"),
                              status=Status.CONSENTED, created_at=self.clock(), consented_at=self.clock()))
        return pid

    async def game(self, config: GameConfig = CONFIG) -> str:
        """A game for two fresh participants 'spk' (speaker) and 'lis' created at T0."""
        self.clock.at(0)
        await self.participant("spk")
        await self.participant("lis")
        return await self.lobby.create_game_for("spk", "lis", config=config)

    async def do(self, game_id: str, offset: float, cmd_type, seat: Seat, **kw):
        at = self.clock.at(offset)
        state, result = await self.hub.execute(game_id, cmd_type(seat=seat, at=at, **kw))
        assert isinstance(result, list), result  # every scripted command is accepted
        return state

    async def join_both(self, game_id: str, offset: float = 0) -> None:
        await self.do(game_id, offset, Join, Seat.SPEAKER)
        await self.do(game_id, offset, Join, Seat.LISTENER)

    async def pay(self) -> dict[str, tuple[str, int, int, int]]:
        """{participant: (status, base, bonus, success cents)} as stored."""
        async with self.db.session() as s:
            rows = (await s.execute(select(Participant))).scalars().all()
            return {p.id: (p.status, p.pay_base_cents, p.pay_bonus_cents, p.pay_success_cents) for p in rows}


async def play_scripted(w: World) -> str:
    """Three turns to success, at hand-picked times (seconds after T0)."""
    g = await w.game()
    await w.join_both(g, 2)                                          # turn 1 starts at +2
    await w.do(g, 6, SendUtterance, Seat.SPEAKER, text="the  two birds")
    await w.do(g, 8, Click, Seat.LISTENER, tangram_id="tg-01")
    await w.do(g, 9, Click, Seat.LISTENER, tangram_id="tg-02")
    await w.do(g, 12, Submit, Seat.LISTENER)                         # turn 2 starts at +12
    await w.do(g, 20, SendUtterance, Seat.SPEAKER, text="not the boat, add the house")
    await w.do(g, 22, Click, Seat.LISTENER, tangram_id="tg-02")      # deselect
    await w.do(g, 23, Click, Seat.LISTENER, tangram_id="tg-04")
    await w.do(g, 30, Submit, Seat.LISTENER)                         # turn 3 starts at +30
    await w.do(g, 40, SendUtterance, Seat.SPEAKER, text="and the man sitting")
    await w.do(g, 41, Click, Seat.LISTENER, tangram_id="tg-07")
    await w.do(g, 60, Submit, Seat.LISTENER)                         # exact match: success
    return g


# ---------------------------------------------------------------- exported turn rows


# (turn, chats, currently_selected, selected, deselected, clicks, chat_feedback, send s, submit s)
# (exports write tangram ids in the published release's convention: the file name, ``.png``)
EXPECTED_TURNS = [
    (1, ["the two birds"], [], ["tg-01.png", "tg-02.png"], [], ["tg-01.png", "tg-02.png"],
     "not the boat, add the house", 4.0, 10.0),
    (2, ["the two birds", "not the boat, add the house"], ["tg-01.png", "tg-02.png"], ["tg-04.png"],
     ["tg-02.png"], ["tg-01.png", "tg-04.png"], "and the man sitting", 8.0, 18.0),
    (3, ["the two birds", "not the boat, add the house", "and the man sitting"],
     ["tg-01.png", "tg-04.png"], ["tg-07.png"], [], ["tg-01.png", "tg-04.png", "tg-07.png"], None,
     10.0, 30.0),
]


async def test_exported_turn_rows_of_a_scripted_game_match_a_hand_written_table(sqlite_url, tmp_path):
    w = await World.make(sqlite_url)
    g = await play_scripted(w)
    await export(w.db, tmp_path / "out", "jsonl")
    turns = [json.loads(line) for line in (tmp_path / "out" / "turn.jsonl").read_text().splitlines()]
    got = [
        (r["turn"], r["chats"], r["currently_selected"], r["selected"], r["deselected"], r["clicks"],
         r["chat_feedback"], r["sec_until_send"], r["sec_until_submit"])
        for r in turns
    ]
    assert got == EXPECTED_TURNS
    assert [r["game_turn_id"] for r in turns] == [f"{g}_1", f"{g}_2", f"{g}_3"]
    assert {(r["end"], r["outcome"], r["policy_name"], r["listener_kind"]) for r in turns} == {
        (1, "successful", "human", "human")
    }
    assert turns[0]["context"] == [f"{t}.png" for t in CONFIG.listener_order]
    assert turns[0]["targets"] == [f"{t}.png" for t in TARGETS]
    assert turns[0]["date"] == "2025-06-15 15:06:40"
    (inter,) = [json.loads(line) for line in (tmp_path / "out" / "interaction.jsonl").read_text().splitlines()]
    assert (inter["turn"], inter["end"], inter["end_reason"], inter["duration_s"]) == (3, 1, "success", 60.0)
    assert inter["clicks"] == [
        ["tg-01.png", "tg-02.png"], ["tg-01.png", "tg-04.png"], ["tg-01.png", "tg-04.png", "tg-07.png"]
    ]
    assert inter["chat"] == ["the two birds", "not the boat, add the house", "and the man sitting"]
    # the derived table in the database says the same
    async with w.db.session() as s:
        game = await s.get(Game, g)
        assert (game.status, game.outcome, game.turn) == ("ended", "successful", 3)
    await w.db.close()


# ---------------------------------------------------------------- stored pay, in cents

# Defaults: 20 cents a minute from game creation to its end, 5 cents per net correct image in the
# final selection (green minus red, at least 0), 25 cents for success. Both players get the same.


async def test_stored_pay_after_success(sqlite_url):
    w = await World.make(sqlite_url)
    await play_scripted(w)
    # 60 s -> 20; 3 correct, 0 wrong -> 15; success -> 25
    assert await w.pay() == {"spk": ("completed", 20, 15, 25), "lis": ("completed", 20, 15, 25)}
    await w.db.close()


async def test_stored_pay_after_max_turns(sqlite_url):
    w = await World.make(sqlite_url, GameRules(max_turns=2))
    g = await w.game()
    await w.join_both(g, 0)
    await w.do(g, 10, SendUtterance, Seat.SPEAKER, text="one")
    await w.do(g, 12, Click, Seat.LISTENER, tangram_id="tg-01")   # target
    await w.do(g, 13, Click, Seat.LISTENER, tangram_id="tg-03")   # not a target
    await w.do(g, 20, Submit, Seat.LISTENER)
    await w.do(g, 30, SendUtterance, Seat.SPEAKER, text="two")
    await w.do(g, 35, Click, Seat.LISTENER, tangram_id="tg-04")   # target
    state = await w.do(g, 60, Submit, Seat.LISTENER)              # {01, 03, 04}: 2 right, 1 wrong
    assert (state.end_reason, state.outcome) == ("max_turns", "unsuccessful")
    # created at +0, ended at +60 -> 1 min -> 20; net correct 2 - 1 = 1 -> 5; no success
    assert await w.pay() == {"spk": ("completed", 20, 5, 0), "lis": ("completed", 20, 5, 0)}
    await w.db.close()


async def test_stored_pay_after_the_partner_left(sqlite_url):
    w = await World.make(sqlite_url)
    g = await w.game()
    await w.join_both(g, 0)
    await w.do(g, 10, SendUtterance, Seat.SPEAKER, text="birds")
    await w.do(g, 12, Click, Seat.LISTENER, tangram_id="tg-01")
    await w.do(g, 14, Click, Seat.LISTENER, tangram_id="tg-04")
    state = await w.do(g, 45, Leave, Seat.LISTENER)
    assert (state.end_reason, state.outcome) == ("listener_left", "aborted")
    # the speaker: 45 s -> 15; the selection reached {01, 04}: 2 correct -> 10; aborted -> no
    # success bonus. The listener who left forfeits: no pay, no code (docs/operators.md)
    assert await w.pay() == {"spk": ("completed", 15, 10, 0), "lis": ("forfeited", 0, 0, 0)}
    await w.db.close()


async def test_stored_pay_after_an_idle_speaker_fired_by_the_sweeper(sqlite_url):
    w = await World.make(sqlite_url, GameRules(idle_policy="end"))
    g = await w.game()
    await w.join_both(g, 0)
    w.clock.at(29.9)
    assert await w.sweeper.sweep() == 0  # the typing window (30 s) is still open
    w.clock.at(30)
    assert await w.sweeper.sweep() == 1
    state = await w.hub.state(g)
    assert (state.end_reason, state.ended_at) == ("speaker_idle", T0 + 30)
    # the listener: 30 s -> 10; nothing selected -> 0; no success. The idle speaker forfeits
    assert await w.pay() == {"spk": ("forfeited", 0, 0, 0), "lis": ("completed", 10, 0, 0)}
    await w.db.close()


async def test_stored_pay_after_a_lobby_release(sqlite_url):
    w = await World.make(sqlite_url, policy=LobbyPolicy(timeout_seconds=300, fallback="release"))
    w.clock.at(0)
    await w.participant("alone")
    w.lobby.present_ids = lambda: ["alone"]  # this process holds their lobby socket
    await w.lobby.enter("alone")
    w.clock.at(299)
    await w.sweeper.sweep()
    assert (await w.pay())["alone"] == ("waiting", 0, 0, 0)
    w.clock.at(315)
    await w.sweeper.sweep()
    # waited 315 s = 5.25 min -> 105 cents; no game, no bonus
    assert await w.pay() == {"alone": ("released", 105, 0, 0)}
    async with w.db.session() as s:
        p = await s.get(Participant, "alone")
        assert p.released_reason == "lobby_timeout" and p.completion_code.startswith("MR-")
    await w.db.close()


# ---------------------------------------------------------------- the lobby


async def test_the_lobby_never_pairs_two_sessions_of_one_worker(sqlite_url):
    w = await World.make(sqlite_url)
    for i, (pid, worker) in enumerate([("w-1", "worker-W"), ("w-2", "worker-W"), ("v-1", "worker-V"), ("u-1", "worker-U")]):
        w.clock.at(i)
        await w.participant(pid, worker)
        await w.lobby.enter(pid)
        async with w.db.session() as s:
            games = (await s.execute(select(Game.speaker_id, Game.listener_id).order_by(Game.created_at))).all()
        pairs = [tuple(g) for g in games]
        # arrival order decides the seats (role_assignment="arrival"): the first to wait speaks
        expected = {
            0: [],                                   # w-1 waits
            1: [],                                   # w-2 is the same worker: no game
            2: [("w-1", "v-1")],                     # v-1 pairs with the first waiting other worker
            3: [("w-1", "v-1"), ("w-2", "u-1")],     # w-2 got the next one
        }[i]
        assert pairs == expected, (pid, pairs)
    await w.db.close()


# ---------------------------------------------------------------- the speaker's draft


async def test_a_sent_message_clears_the_draft_so_it_is_not_auto_sent_next_turn(sqlite_url):
    w = await World.make(sqlite_url)
    g = await w.game()
    await w.join_both(g, 0)
    w.clock.at(3)
    await w.hub.update_draft(g, Seat.SPEAKER, "the bird flying left")
    await w.do(g, 5, SendUtterance, Seat.SPEAKER, text="the bird flying left")
    await w.do(g, 8, Click, Seat.LISTENER, tangram_id="tg-01")
    await w.do(g, 10, Submit, Seat.LISTENER)  # turn 2 starts at +10; its typing window ends at +40
    async with w.db.session() as s:
        assert (await s.get(Game, g)).speaker_draft == ""
    w.clock.at(40)
    assert await w.sweeper.sweep() == 1
    state = await w.hub.state(g)
    # nothing was typed in turn 2: an idle warning, not the old draft sent again
    assert [m.text for m in state.messages] == ["the bird flying left"]
    assert (state.turn, state.phase, state.warned_this_turn(Seat.SPEAKER)) == (2, "speaking", True)
    async with w.db.session() as s:
        types = [t for (t,) in await s.execute(select(GameEvent.type).where(GameEvent.game_id == g).order_by(GameEvent.seq))]
    assert types[-2:] == ["turn_started", "idle_warning"]
    await w.db.close()


async def test_a_draft_typed_in_the_turn_is_auto_sent_once(sqlite_url):
    w = await World.make(sqlite_url)
    g = await w.game()
    await w.join_both(g, 0)
    w.clock.at(12)
    await w.hub.update_draft(g, Seat.SPEAKER, "  the   tall one ")
    w.clock.at(30)
    assert await w.sweeper.sweep() == 1
    state = await w.hub.state(g)
    assert [(m.text, m.auto) for m in state.messages] == [("the tall one", True)]
    async with w.db.session() as s:
        assert (await s.get(Game, g)).speaker_draft == ""
    await w.db.close()


# ---------------------------------------------------------------- an illegal deselect


def test_an_illegal_deselect_is_refused():
    from app.live.model_listener import target_selection
    from policy_worker.prompt import apply_action, is_legal_action

    assert apply_action(["A"], "deselect A select C") == ["C"]
    with pytest.raises(ValueError, match="illegal action"):
        apply_action(["A"], "deselect C")            # C is not selected
    with pytest.raises(ValueError, match="illegal action"):
        apply_action(["A"], "select A")              # A already is
    assert not is_legal_action("deselect C", ["A"])
    # the server side that plays a model's action refuses it too (it never reaches the game)
    order = CONFIG.listener_order                    # letters A.. in the listener's order
    assert target_selection("select B", set(), order) == {"tg-01"}
    with pytest.raises(ValueError):
        target_selection("deselect B", set(), order)


def test_a_click_on_an_unselected_image_selects_it_and_never_deselects():
    """The rules engine has no deselect command: a click toggles, decided against the
    selection, so a deselection can only remove an image that is selected."""
    from app.game.rules import GameCreated, new_game, step

    s = new_game(GameCreated(game_id="g", config=CONFIG, rules=GameRules(), at=T0))
    for cmd in (Join(seat=Seat.SPEAKER, at=T0), Join(seat=Seat.LISTENER, at=T0),
                SendUtterance(seat=Seat.SPEAKER, text="x", at=T0 + 1)):
        s, _ = step(s, cmd)
    s, events = step(s, Click(seat=Seat.LISTENER, tangram_id="tg-05", at=T0 + 2))
    assert [(e.tangram_id, e.selected) for e in events] == [("tg-05", True)]
    s, events = step(s, Click(seat=Seat.LISTENER, tangram_id="tg-05", at=T0 + 3))
    assert [(e.tangram_id, e.selected) for e in events] == [("tg-05", False)]
    assert s.selection == frozenset()

