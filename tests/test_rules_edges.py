"""Corners of the rules engine that `make mutate` found untested, against hand-written values.

Each test is named for what a wrong engine would get wrong: who forfeits a join timeout, an
invisible draft at the typing deadline, a reconnect that must clear the disconnection, the time
stamped on a message, the deadline of an ended game, and the messages of a malformed event log
and of a bad config index (people read them in logs and in `multiref` errors).
"""

from __future__ import annotations

import pytest

from app.game.configs import ConfigQueue
from app.game.rules import (
    Disconnect,
    EndReason,
    GameCreated,
    GameRules,
    IdleWarning,
    Join,
    Leave,
    Message,
    Seat,
    evolve,
    forfeits,
    replay,
)
from tests.test_rules import CONTEXT, LISTENER, SPEAKER, T0, Game


def test_a_join_timeout_forfeits_the_seat_that_never_came_and_nothing_else():
    g = Game()
    g.join(SPEAKER, after=1)
    g.tick_at(T0 + g.rules.join_timeout_seconds)
    assert g.state.end_reason is EndReason.JOIN_TIMEOUT
    assert forfeits(g.state) == frozenset({LISTENER})
    played = Game()
    played.start()
    played.play_turn("tangram-1", "tangram-4", "tangram-7")  # the targets: success
    assert played.state.end_reason is EndReason.SUCCESS
    assert forfeits(played.state) == frozenset()


def test_an_invisible_draft_at_the_typing_deadline_is_no_message():
    g = Game()
    start = g.start()
    # Hangul fillers and a blank Braille pattern between spaces: nothing a reader can see
    events = g.tick_at(start + g.rules.speaker_seconds, draft=" \u3164 \u2800\u115f ")
    assert [type(e) for e in events] == [IdleWarning]
    assert g.state.messages == ()
    assert events[0].seat is SPEAKER


def test_a_reconnect_clears_the_disconnection_so_its_grace_never_fires():
    g = Game(GameRules(disconnect_grace_seconds=10.0))  # typing window: 30 s
    start = g.start()
    g.do(Disconnect(seat=LISTENER, at=g.clock.advance(1)))
    assert g.state.disconnected_since == ((LISTENER, start + 1),)
    g.do(Join(seat=LISTENER, at=g.clock.advance(1)))
    assert g.state.disconnected_since == ()
    # when the grace would have run out (+11, before the typing window closes): nothing fires
    assert g.tick_at(start + 11) == []
    assert not g.state.ended


def test_a_message_keeps_the_time_it_was_sent_and_an_ended_game_has_no_deadline():
    g = Game()
    start = g.start()
    g.say("the bird", after=3)
    assert g.state.messages == (Message(turn=1, text="the bird", auto=False, at=start + 3),)
    g.click("tangram-1", "tangram-4", "tangram-7", after=1)
    g.submit(after=1)
    assert g.state.ended and g.state.phase_deadline is None and g.state.next_deadline() is None
    left = Game()
    left.start()
    left.do(Leave(seat=SPEAKER, at=left.clock.advance(5)))  # ends mid-turn, a deadline pending
    assert left.state.ended and left.state.phase_deadline is None


def test_a_malformed_event_log_is_refused_with_a_clear_message():
    g = Game()
    created = g.log[0]
    assert isinstance(created, GameCreated)
    with pytest.raises(ValueError, match=r"^an event log starts with game_created$"):
        replay([])
    with pytest.raises(ValueError, match=r"^an event log starts with game_created$"):
        replay(g.log[1:] or [Join(seat=SPEAKER, at=T0)])
    with pytest.raises(ValueError, match=r"^game_created can only start a log$"):
        evolve(g.state, created)


def test_a_negative_config_index_is_refused_with_a_clear_message():
    queue = ConfigQueue([f"p-{i}" for i in range(len(CONTEXT) * 2)], seed=1)
    with pytest.raises(IndexError, match=r"^config index must be >= 0$"):
        queue.config(-1)
