"""Deadlines with a fake clock: the hub, the lobby and the sweeper of a server, on a real SQLite
database, with time moved by the test instead of slept through.

Each deadline is checked on both sides of its boundary (a sweep just before it changes nothing, a
sweep at it fires it), which sleeping against 1–3 s windows on a loaded machine cannot do. What
the players are shown is read from their connections' outboxes. One end-to-end test with a real
server process and real time (tests/test_server_play.py) checks that the server's own sweeper
runs.
"""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from app.db.models import Game, GameEvent, Participant, Turn
from app.game.rules import Click, GameRules, Seat, SendUtterance
from app.live.hub import Connection
from app.live.lobby import LobbyPolicy
from tests.test_oracles import T0, World


class Screen:
    """A player's connection whose frames are kept (the hub's real ``Connection``)."""

    def __init__(self) -> None:
        self.frames: list[dict] = []

        async def send(text: str) -> None:
            self.frames.append(json.loads(text))

        self.conn = Connection(send)

    async def view(self) -> dict:
        await asyncio.sleep(0.05)  # the connection's writer runs
        return [f for f in self.frames if f["type"] == "state"][-1]["view"]

    async def errors(self) -> list[str]:
        await asyncio.sleep(0.05)
        return [f["code"] for f in self.frames if f["type"] == "error"]


async def seated(w: World, game_id: str, offset: float = 0) -> tuple[Screen, Screen]:
    """Both players connect (the hub's attach: a Join at the clock's time)."""
    w.clock.at(offset)
    speaker, listener = Screen(), Screen()
    await w.hub.attach(speaker.conn, game_id, Seat.SPEAKER)
    await w.hub.attach(listener.conn, game_id, Seat.LISTENER)
    return speaker, listener


async def sweep_at(w: World, offset: float) -> int:
    w.clock.at(offset)
    return await w.sweeper.sweep()


async def close(w: World, *screens: Screen) -> None:
    for s in screens:
        await s.conn.close()
    await w.db.close()


async def test_the_typing_window_sends_the_draft_then_the_turn_end_submits_the_clicks(sqlite_url):
    w = await World.make(sqlite_url)  # speaker 30 s, turn 45 s, selection 15 s
    g = await w.game()
    speaker, listener = await seated(w, g, 0)
    w.clock.at(5)
    await w.hub.update_draft(g, Seat.SPEAKER, "the bird on the left")
    assert await sweep_at(w, 29.99) == 0
    assert (await listener.view())["phase"] == "speaking"
    assert await sweep_at(w, 30) == 1
    view = await listener.view()
    assert view["phase"] == "selecting"
    assert [(m["text"], m["auto"]) for m in view["messages"]] == [("the bird on the left", True)]
    # the listener's deadline: the later of the turn's end (+45) and sent + 15 s (+45)
    assert view["deadline"] == T0 + 45
    await w.do(g, 31, Click, Seat.LISTENER, tangram_id="tg-05")
    assert await sweep_at(w, 44.99) == 0
    assert await sweep_at(w, 45) == 1
    view = await speaker.view()
    assert (view["turn"], view["phase"], view["last_submitted"]) == (2, "speaking", ["tg-05"])
    async with w.db.session() as s:
        turn = await s.get(Turn, (g, 1))
        assert (turn.auto_sent, turn.auto_submitted, turn.sent_at, turn.submitted_at) == (True, True, T0 + 30, T0 + 45)
    await close(w, speaker, listener)


async def test_an_action_after_a_deadline_nobody_fired_is_refused_and_time_goes_first(sqlite_url):
    """No sweep runs: the late actions themselves find the passed deadline, which fires first."""
    w = await World.make(sqlite_url)
    g = await w.game()
    speaker, listener = await seated(w, g, 0)
    w.clock.at(5)
    await w.hub.update_draft(g, Seat.SPEAKER, "the bird on the left")
    version = (await speaker.view())["version"]
    w.clock.at(31)  # the typing window closed at +30
    _, result = await w.hub.execute(g, SendUtterance(seat=Seat.SPEAKER, text="too late", at=w.clock()), version=version)
    assert result.code == "stale_version"
    view = await listener.view()
    assert [(m["text"], m["auto"]) for m in view["messages"]] == [("the bird on the left", True)]
    await w.do(g, 35, Click, Seat.LISTENER, tangram_id="tg-05")
    version = (await listener.view())["version"]
    w.clock.at(46.5)  # the selection window ended at +46 (sent at +31, plus 15 s)
    _, result = await w.hub.execute(g, Click(seat=Seat.LISTENER, tangram_id="tg-06", at=w.clock()), version=version)
    assert result.code == "stale_version"
    view = await speaker.view()
    assert (view["turn"], view["last_submitted"]) == (2, ["tg-05"])
    state = await w.hub.state(g)
    assert state.turns[0].auto_submitted and state.turns[0].submitted_at == T0 + 46.5
    await close(w, speaker, listener)


async def test_a_partner_gone_past_the_grace_ends_the_game_paying_the_one_who_stayed(sqlite_url):
    w = await World.make(sqlite_url)  # grace 30 s
    g = await w.game()
    speaker, listener = await seated(w, g, 0)
    await w.do(g, 5, SendUtterance, Seat.SPEAKER, text="the bird")
    w.clock.at(10)
    await w.hub.detach(listener.conn)  # the tab closes at +10
    assert (await speaker.view())["partner_connected"] is False
    assert await sweep_at(w, 39.99) == 0
    assert await sweep_at(w, 40) == 1
    view = await speaker.view()
    assert (view["end_reason"], view["outcome"]) == ("listener_disconnected", "aborted")
    assert view["completion_code"].startswith("MR-")
    async with w.db.session() as s:
        people = {p.id: (p.status, p.completion_code) for p in (await s.execute(select(Participant))).scalars()}
    # the speaker who stayed is paid and gets a code; the listener who walked away forfeits
    # (no code: docs/operators.md, "What each ending pays")
    assert people["spk"] == ("completed", view["completion_code"])
    assert people["lis"] == ("forfeited", None)
    await close(w, speaker, listener)


async def test_a_reconnect_within_the_grace_keeps_the_game(sqlite_url):
    w = await World.make(sqlite_url)
    g = await w.game()
    speaker, listener = await seated(w, g, 0)
    await w.do(g, 5, SendUtterance, Seat.SPEAKER, text="the bird")
    w.clock.at(10)
    await w.hub.detach(listener.conn)
    w.clock.at(39)
    again = Screen()
    await w.hub.attach(again.conn, g, Seat.LISTENER)  # back 29 s later
    assert await sweep_at(w, 41) == 0
    view = await again.view()
    assert (view["phase"], view["partner_connected"]) == ("selecting", True)
    await close(w, speaker, listener, again)


async def test_an_idle_speaker_is_warned_twice_then_the_game_ends(sqlite_url):
    w = await World.make(sqlite_url)  # warn, extend 15 s, at most 2 warnings
    g = await w.game()
    speaker, listener = await seated(w, g, 0)
    assert await sweep_at(w, 30) == 1
    view = await speaker.view()
    assert (view["idle_warning"], view["deadline"], view["phase"]) == (True, T0 + 45, "speaking")
    assert await sweep_at(w, 44.9) == 0
    assert await sweep_at(w, 45) == 1
    assert (await speaker.view())["deadline"] == T0 + 60
    assert await sweep_at(w, 60) == 1
    view = await listener.view()
    assert (view["end_reason"], view["outcome"]) == ("speaker_idle", "aborted")
    await close(w, speaker, listener)


async def test_a_sweep_after_a_long_outage_fires_every_passed_deadline_in_order(sqlite_url):
    """The speaker's typing window closed at +30 and the speaker's grace ran out at +40; nothing
    swept until +500. One sweep fires both, the earlier first: an idle warning, then the end."""
    w = await World.make(sqlite_url)
    g = await w.game()
    speaker, listener = await seated(w, g, 0)
    w.clock.at(10)
    await w.hub.detach(speaker.conn)
    assert await sweep_at(w, 500) == 1
    async with w.db.session() as s:
        types = [t for (t,) in await s.execute(select(GameEvent.type).where(GameEvent.game_id == g).order_by(GameEvent.seq))]
    assert types[-3:] == ["player_disconnected", "idle_warning", "game_ended"]
    view = await listener.view()
    assert (view["end_reason"], view["outcome"]) == ("speaker_disconnected", "aborted")
    assert await sweep_at(w, 1000) == 0  # an ended game has no deadline
    await close(w, speaker, listener)


async def test_a_player_who_never_comes_ends_the_game_at_the_join_timeout(sqlite_url):
    w = await World.make(sqlite_url)  # join timeout 60 s
    g = await w.game()
    w.clock.at(3)
    speaker = Screen()
    await w.hub.attach(speaker.conn, g, Seat.SPEAKER)
    assert await sweep_at(w, 59.9) == 0
    assert await sweep_at(w, 60) == 1
    state = await w.hub.state(g)
    assert (state.end_reason, state.turn) == ("join_timeout", 0)
    async with w.db.session() as s:
        game = await s.get(Game, g)
    assert (game.status, game.end_reason) == ("ended", "join_timeout")
    await close(w, speaker)


async def test_the_lobby_timeout_falls_back_to_a_model_listener(sqlite_url):
    w = await World.make(sqlite_url, policy=LobbyPolicy(timeout_seconds=120, fallback="model"))
    w.clock.at(0)
    await w.participant("alone")
    w.lobby.present_ids = lambda: ["alone"]  # this process holds their lobby socket
    await w.lobby.enter("alone")
    await sweep_at(w, 119)
    async with w.db.session() as s:
        assert (await s.get(Participant, "alone")).status == "waiting"
    await sweep_at(w, 120)
    async with w.db.session() as s:
        p = await s.get(Participant, "alone")
        game = await s.get(Game, p.game_id)
    assert (p.status, p.seat, game.listener_kind, game.created_at) == ("in_game", "speaker", "model", T0 + 120)
    await w.db.close()


async def test_the_sweeper_ticks_a_game_nobody_is_connected_to(sqlite_url):
    """Both players gone and no process holds the game: the sweeper still ends it and pays."""
    w = await World.make(sqlite_url, GameRules(disconnect_grace_seconds=20))
    g = await w.game()
    speaker, listener = await seated(w, g, 0)
    w.clock.at(4)
    await w.hub.detach(speaker.conn)
    await w.hub.detach(listener.conn)
    assert g not in w.hub.game_conns and g not in w.hub.states
    assert await sweep_at(w, 23.9) == 0
    assert await sweep_at(w, 24) == 1
    async with w.db.session() as s:
        game = await s.get(Game, g)
        paid = {p.id: (p.status, p.pay_base_cents) for p in (await s.execute(select(Participant))).scalars()}
    # both left at +4: the speaker's grace (first in time) ends it at +24; the speaker forfeits,
    # the listener is paid 24 s of 20 c/min = 8 c
    assert (game.status, game.end_reason) == ("ended", "speaker_disconnected")
    assert paid == {"spk": ("forfeited", 0), "lis": ("completed", 8)}
    await close(w, speaker, listener)
