"""Example-based tests of the rules engine (app/game/rules.py) and the per-seat view.

Every test drives the pure state machine the way a server would, with a fake clock: commands carry
the time they happened at, and deadlines fire only on ``Tick``. MULTIREF.md §1 is the spec.
"""

from __future__ import annotations

import json

import pytest

from app.game.rules import (
    EVENT_ADAPTER,
    AdminEnd,
    Click,
    Disconnect,
    EndReason,
    Event,
    GameConfig,
    GameCreated,
    GameEnded,
    GameRules,
    GameState,
    IdleWarning,
    Join,
    Leave,
    ListenerKind,
    Outcome,
    Phase,
    PlayerDisconnected,
    PlayerJoined,
    PlayerReconnected,
    Rejection,
    Seat,
    SelectionSubmitted,
    SelectionToggled,
    SendUtterance,
    Submit,
    Tick,
    TurnStarted,
    UtteranceSent,
    base_pay,
    event_from_dict,
    game_pay,
    new_game,
    replay,
    step,
)
from app.protocol import GameView, PayView

SPEAKER, LISTENER = Seat.SPEAKER, Seat.LISTENER
T0 = 1_700_000_000.0
CONTEXT = tuple(f"tangram-{i}" for i in range(10))
TARGETS = ("tangram-1", "tangram-4", "tangram-7")
NON_TARGETS = tuple(t for t in CONTEXT if t not in TARGETS)
SPEAKER_ORDER = CONTEXT[3:] + CONTEXT[:3]
LISTENER_ORDER = tuple(reversed(CONTEXT))


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        assert seconds >= 0
        self.now += seconds
        return self.now

    def set(self, at: float) -> float:
        assert at >= self.now, "the fake clock only moves forward"
        self.now = at
        return self.now


class Game:
    """A server in miniature: the state, its event log and a fake clock.

    ``do`` expects the command to be accepted and checks, on every call, that the log replays to
    the state built step by step; ``reject`` expects a Rejection and an unchanged state.
    """

    def __init__(
        self,
        rules: GameRules | None = None,
        *,
        kind: ListenerKind = ListenerKind.HUMAN,
        targets: tuple[str, ...] = TARGETS,
    ) -> None:
        self.clock = FakeClock()
        self.rules = rules or GameRules()
        created = GameCreated(
            game_id="g1",
            config=GameConfig(
                context=CONTEXT,
                targets=targets,
                speaker_order=SPEAKER_ORDER,
                listener_order=LISTENER_ORDER,
            ),
            rules=self.rules,
            listener_kind=kind,
            at=self.clock.now,
        )
        self.log: list[Event] = [created]
        self.state: GameState = new_game(created)

    # -- driving

    def do(self, cmd) -> list[Event]:
        before = self.state
        self.state, result = step(self.state, cmd)
        assert not isinstance(result, Rejection), result
        self.log.extend(result)
        assert self.state.version == before.version + len(result) == len(self.log)
        assert replay(self.log) == self.state
        return result

    def reject(self, cmd) -> Rejection:
        before = self.state
        self.state, result = step(self.state, cmd)
        assert isinstance(result, Rejection), result
        assert self.state is before
        # the message is shown to the player in an error frame (a str, never empty)
        assert isinstance(result.message, str) and result.message.strip(), result
        return result

    def join(self, seat: Seat, after: float = 0.0) -> list[Event]:
        return self.do(Join(seat=seat, at=self.clock.advance(after)))

    def start(self) -> float:
        """Both seats join (the speaker only, with a model listener); returns turn 1's start."""
        self.join(SPEAKER)
        if self.state.listener_kind is ListenerKind.HUMAN:
            self.join(LISTENER)
        assert self.state.phase is Phase.SPEAKING and self.state.turn == 1
        return self.state.current_turn.started_at

    def say(self, text: str = "the bird", after: float = 0.0) -> list[Event]:
        return self.do(SendUtterance(seat=SPEAKER, text=text, at=self.clock.advance(after)))

    def click(self, *tids: str, after: float = 0.0) -> list[Event]:
        events: list[Event] = []
        for i, tid in enumerate(tids):
            at = self.clock.advance(after if i == 0 else 0.0)
            events += self.do(Click(seat=LISTENER, tangram_id=tid, at=at))
        return events

    def submit(self, after: float = 0.0) -> list[Event]:
        return self.do(Submit(seat=LISTENER, at=self.clock.advance(after)))

    def tick_at(self, at: float, draft: str = "") -> list[Event]:
        return self.do(Tick(at=self.clock.set(at), speaker_draft=draft))

    def play_turn(self, *tids: str, text: str = "the bird") -> list[Event]:
        """One complete turn: a message, clicks, an explicit submit."""
        self.say(text, after=1)
        self.click(*tids, after=1)
        return self.submit(after=1)


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


# ---------------------------------------------------------------- joining and starting


def test_a_new_game_waits_for_its_players() -> None:
    g = Game()
    assert g.state.version == 1
    assert g.state.phase is Phase.WAITING
    assert g.state.turn == 0 and g.state.turns == ()
    assert g.state.joined == frozenset() and g.state.started_at is None
    assert g.state.next_deadline() == T0 + g.rules.join_timeout_seconds


def test_turn_one_starts_when_both_seats_have_joined() -> None:
    g = Game()
    assert g.join(SPEAKER, after=5) == [PlayerJoined(seat=SPEAKER, at=T0 + 5)]
    assert g.state.phase is Phase.WAITING and g.state.turn == 0
    events = g.join(LISTENER, after=7)
    assert events == [PlayerJoined(seat=LISTENER, at=T0 + 12), TurnStarted(turn=1, at=T0 + 12)]
    assert g.state.phase is Phase.SPEAKING
    assert g.state.turn == 1
    assert g.state.started_at == T0 + 12
    assert g.state.phase_deadline == T0 + 12 + g.rules.speaker_seconds
    assert g.state.connected == {SPEAKER, LISTENER}


def test_the_listener_may_join_first() -> None:
    g = Game()
    assert types(g.join(LISTENER)) == ["player_joined"]
    assert types(g.join(SPEAKER, after=3)) == ["player_joined", "turn_started"]
    assert g.state.turn == 1


def test_joining_again_while_connected_changes_nothing() -> None:
    g = Game()
    g.start()
    before = g.state
    assert g.join(SPEAKER, after=1) == []
    assert g.join(LISTENER) == []
    assert g.state == before


def test_model_listener_game_starts_when_the_speaker_joins() -> None:
    g = Game(kind=ListenerKind.MODEL)
    assert g.state.joined == {LISTENER}
    events = g.join(SPEAKER, after=2)
    assert types(events) == ["player_joined", "turn_started"]
    assert g.state.phase is Phase.SPEAKING and g.state.turn == 1
    # The model seat needs no connection and cannot join, drop or reconnect.
    assert g.join(LISTENER) == []
    assert g.do(Disconnect(seat=LISTENER, at=g.clock.advance(1))) == []
    assert g.state.seat_is_present(LISTENER)


@pytest.mark.parametrize(
    ("kind", "joining", "missing"),
    [
        (ListenerKind.HUMAN, [SPEAKER], "listener"),
        (ListenerKind.HUMAN, [LISTENER], "speaker"),
        (ListenerKind.HUMAN, [], "listener speaker"),
        (ListenerKind.MODEL, [], "speaker"),
    ],
)
def test_join_timeout_ends_the_game(kind, joining, missing) -> None:
    g = Game(kind=kind)
    for seat in joining:
        g.join(seat, after=1)
    timeout = T0 + g.rules.join_timeout_seconds
    assert g.state.next_deadline() == timeout
    assert g.tick_at(timeout - 0.01) == []
    assert g.tick_at(timeout) == [
        GameEnded(reason=EndReason.JOIN_TIMEOUT, outcome=Outcome.ABORTED, note=missing, at=timeout)
    ]
    assert g.state.ended and g.state.end_reason is EndReason.JOIN_TIMEOUT
    assert g.state.outcome is Outcome.ABORTED


def test_a_started_game_has_no_join_timeout() -> None:
    g = Game()
    start = g.start()
    g.say(after=1)
    # Long after the join timeout, only the turn's own deadline matters.
    assert g.state.next_deadline() == start + g.rules.turn_seconds
    assert g.tick_at(start + g.rules.turn_seconds - 0.5) == []


# ---------------------------------------------------------------- the speaker's message


def test_the_speaker_sends_one_message_per_turn() -> None:
    g = Game()
    start = g.start()
    events = g.say("the tall bird", after=4)
    assert events == [UtteranceSent(turn=1, text="the tall bird", at=start + 4)]
    assert g.state.phase is Phase.SELECTING
    assert g.state.messages[-1].text == "the tall bird" and not g.state.messages[-1].auto
    assert g.state.current_turn.utterance == "the tall bird"
    assert g.state.current_turn.sent_at == start + 4
    rejection = g.reject(SendUtterance(seat=SPEAKER, text="and also", at=g.clock.advance(1)))
    assert rejection.code == "not_your_turn"
    assert len(g.state.messages) == 1


def test_the_listener_cannot_write() -> None:
    g = Game()
    g.start()
    rejection = g.reject(SendUtterance(seat=LISTENER, text="which one?", at=g.clock.advance(1)))
    assert rejection.code == "not_your_seat"


def test_no_message_before_the_game_starts() -> None:
    g = Game()
    g.join(SPEAKER)
    assert g.reject(SendUtterance(seat=SPEAKER, text="hi", at=T0)).code == "not_your_turn"


def test_whitespace_in_a_message_is_collapsed() -> None:
    g = Game()
    g.start()
    events = g.say("  the \n\n bird\twith   wings  ")
    assert events[0].text == "the bird with wings"


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r\n"])
def test_an_empty_message_is_rejected(text) -> None:
    g = Game()
    g.start()
    assert g.reject(SendUtterance(seat=SPEAKER, text=text, at=T0)).code == "empty_utterance"
    assert g.state.phase is Phase.SPEAKING


def test_message_length_is_bounded() -> None:
    g = Game(GameRules(max_utterance_chars=20))
    g.start()
    too_long = SendUtterance(seat=SPEAKER, text="x" * 21, at=T0)
    assert g.reject(too_long).code == "utterance_too_long"
    assert g.say("y" * 20)[0].text == "y" * 20


def test_message_length_is_measured_after_collapsing_whitespace() -> None:
    # A message that fits once its whitespace is collapsed (e.g. a trailing newline from the text
    # box) is the message that is sent and shown, so it is accepted.
    g = Game(GameRules(max_utterance_chars=20))
    g.start()
    assert g.say("y" * 20 + "\n")[0].text == "y" * 20
    g2 = Game(GameRules(max_utterance_chars=10))
    g2.start()
    assert g2.say("a    b    c    d")[0].text == "a b c d"


# ---------------------------------------------------------------- clicks and submissions


def test_only_the_listener_clicks_and_submits() -> None:
    g = Game()
    g.start()
    g.say(after=1)
    click = Click(seat=SPEAKER, tangram_id=TARGETS[0], at=g.clock.now)
    assert g.reject(click).code == "not_your_seat"
    assert g.reject(Submit(seat=SPEAKER, at=g.clock.now)).code == "not_your_seat"


def test_the_listener_waits_for_the_message() -> None:
    g = Game()
    g.start()
    assert g.reject(Click(seat=LISTENER, tangram_id=TARGETS[0], at=T0)).code == "not_your_turn"
    assert g.reject(Submit(seat=LISTENER, at=T0)).code == "not_your_turn"


@pytest.mark.parametrize("tid", ["tangram-99", "", "TANGRAM-1", "tangram-1 "])
def test_clicking_an_unknown_image_is_rejected(tid) -> None:
    g = Game()
    g.start()
    g.say()
    assert g.reject(Click(seat=LISTENER, tangram_id=tid, at=T0)).code == "unknown_tangram"
    assert g.state.selection == frozenset()


def test_a_click_toggles_an_image() -> None:
    g = Game()
    g.start()
    g.say()
    a, b = NON_TARGETS[:2]
    assert g.click(a) == [SelectionToggled(turn=1, tangram_id=a, selected=True, at=T0)]
    g.click(b)
    assert g.state.selection == {a, b}
    assert g.click(a)[0].selected is False
    assert g.state.selection == {b}
    assert g.state.current_turn.clicks == ((a, True), (b, True), (a, False))


def test_the_selection_is_cumulative_across_turns() -> None:
    g = Game()
    g.start()
    a, b = NON_TARGETS[:2]
    t1 = TARGETS[0]
    events = g.play_turn(a, t1)
    assert events == [
        SelectionSubmitted(turn=1, selection=tuple(sorted((a, t1))), at=g.clock.now),
        TurnStarted(turn=2, at=g.clock.now),
    ]
    assert g.state.turn == 2 and g.state.phase is Phase.SPEAKING
    assert g.state.selection == {a, t1}
    g.play_turn(a, b)  # deselect a, select b
    assert g.state.selection == {t1, b}
    first, second = g.state.turns[:2]
    assert first.selection_before == () and first.selection_after == tuple(sorted((a, t1)))
    assert first.selected == tuple(sorted((a, t1))) and first.deselected == ()
    assert second.selection_before == tuple(sorted((a, t1)))
    assert second.selected == (b,) and second.deselected == (a,)
    assert g.state.current_turn.turn == 3 and g.state.current_turn.selection_before == tuple(
        sorted((t1, b))
    )


def test_a_submission_without_clicks_keeps_the_selection() -> None:
    g = Game()
    g.start()
    g.play_turn(TARGETS[0])
    g.play_turn()
    assert g.state.turns[1].selection_after == (TARGETS[0],)
    assert g.state.turn == 3


def test_one_click_one_message_per_turn_then_submit_again_is_not_your_turn() -> None:
    g = Game()
    g.start()
    g.play_turn(NON_TARGETS[0])
    # The next turn has started: the listener must wait for the next message.
    assert g.reject(Submit(seat=LISTENER, at=g.clock.now)).code == "not_your_turn"
    assert g.reject(Click(seat=LISTENER, tangram_id=TARGETS[0], at=g.clock.now)).code == (
        "not_your_turn"
    )


# ---------------------------------------------------------------- ends: success and max turns


def test_an_exact_match_ends_the_game_at_once() -> None:
    g = Game()
    g.start()
    g.say(after=2)
    g.click(*TARGETS, after=3)
    end_at = g.clock.advance(1)
    events = g.do(Submit(seat=LISTENER, at=end_at))
    assert events == [
        SelectionSubmitted(turn=1, selection=tuple(sorted(TARGETS)), at=end_at),
        GameEnded(reason=EndReason.SUCCESS, outcome=Outcome.SUCCESSFUL, at=end_at),
    ]
    s = g.state
    assert s.ended and s.phase is Phase.ENDED
    assert s.ended_at == end_at and s.turn == 1
    assert s.selection == s.targets
    assert s.next_deadline() is None and s.phase_deadline is None


def test_a_superset_of_the_targets_is_not_a_success() -> None:
    g = Game()
    g.start()
    events = g.play_turn(*TARGETS, NON_TARGETS[0])
    assert types(events) == ["selection_submitted", "turn_started"]
    assert not g.state.ended
    events = g.play_turn(NON_TARGETS[0])  # deselect the extra image
    assert types(events) == ["selection_submitted", "game_ended"]
    assert g.state.outcome is Outcome.SUCCESSFUL and g.state.turn == 2


def test_the_game_ends_after_max_turns_without_success() -> None:
    g = Game(GameRules(max_turns=3))
    g.start()
    g.play_turn(NON_TARGETS[0])
    g.play_turn(NON_TARGETS[1])
    events = g.play_turn(TARGETS[0])
    assert types(events) == ["selection_submitted", "game_ended"]
    assert events[-1].reason is EndReason.MAX_TURNS
    assert g.state.outcome is Outcome.UNSUCCESSFUL
    assert g.state.turn == 3 == len(g.state.turns)


def test_success_on_the_last_turn_is_a_success() -> None:
    g = Game(GameRules(max_turns=2))
    g.start()
    g.play_turn(TARGETS[0])
    events = g.play_turn(*TARGETS[1:])
    assert events[-1].reason is EndReason.SUCCESS
    assert g.state.outcome is Outcome.SUCCESSFUL


# ---------------------------------------------------------------- the speaker's window


def test_a_draft_is_sent_automatically_when_the_speaker_window_closes() -> None:
    g = Game()
    start = g.start()
    deadline = start + g.rules.speaker_seconds
    assert g.state.next_deadline() == deadline
    assert g.tick_at(deadline - 0.001, draft="the bi") == []
    events = g.tick_at(deadline, draft="  the   bird ")
    assert events == [UtteranceSent(turn=1, text="the bird", auto=True, at=deadline)]
    assert g.state.messages[-1].auto and g.state.current_turn.auto_sent
    assert g.state.phase is Phase.SELECTING
    # The listener's window runs to the end of the turn.
    assert g.state.phase_deadline == start + g.rules.turn_seconds


def test_an_auto_sent_draft_is_cut_to_the_length_bound() -> None:
    g = Game(GameRules(max_utterance_chars=8))
    start = g.start()
    events = g.tick_at(start + g.rules.speaker_seconds, draft="abcd efgh ijkl")
    assert events[0].text == "abcd efg" and events[0].auto


def test_a_cut_draft_does_not_end_with_a_space() -> None:
    g = Game(GameRules(max_utterance_chars=5))
    start = g.start()
    events = g.tick_at(start + g.rules.speaker_seconds, draft="tall  one")
    assert events[0].text == "tall"


@pytest.mark.parametrize("draft", ["", "   \n "])
def test_an_idle_speaker_is_warned_and_gets_more_time(draft) -> None:
    g = Game()
    start = g.start()
    deadline = start + g.rules.speaker_seconds
    events = g.tick_at(deadline, draft=draft)
    extended = deadline + g.rules.idle_extension_seconds
    assert events == [IdleWarning(seat=SPEAKER, turn=1, deadline=extended, at=deadline)]
    assert g.state.phase is Phase.SPEAKING
    assert g.state.phase_deadline == extended == g.state.next_deadline()
    assert g.state.warned_this_turn(SPEAKER) and not g.state.warned_this_turn(LISTENER)
    # A late message still counts; the listener gets its full selection window after it.
    sent = g.clock.set(extended - 1)
    g.say()
    assert g.state.phase_deadline == sent + g.rules.selection_seconds
    assert g.state.phase_deadline > start + g.rules.turn_seconds


def test_the_speaker_idling_past_the_warnings_ends_the_game() -> None:
    rules = GameRules(max_idle_warnings=2)
    g = Game(rules)
    start = g.start()
    t = start + rules.speaker_seconds
    for n in (1, 2):
        assert types(g.tick_at(t)) == ["idle_warning"]
        assert g.state.warnings_of(SPEAKER) == n
        t += rules.idle_extension_seconds
        assert g.state.next_deadline() == t
    events = g.tick_at(t)
    assert events == [GameEnded(reason=EndReason.SPEAKER_IDLE, outcome=Outcome.ABORTED, at=t)]
    assert g.state.ended


def test_idle_warnings_add_up_across_turns() -> None:
    rules = GameRules(max_idle_warnings=1)
    g = Game(rules)
    start = g.start()
    assert types(g.tick_at(start + rules.speaker_seconds)) == ["idle_warning"]
    g.play_turn(NON_TARGETS[0])
    start2 = g.state.current_turn.started_at
    events = g.tick_at(start2 + rules.speaker_seconds)
    assert events[0].type == "game_ended" and events[0].reason is EndReason.SPEAKER_IDLE


def test_idle_policy_end_ends_at_the_first_idle_speaker() -> None:
    g = Game(GameRules(idle_policy="end"))
    start = g.start()
    events = g.tick_at(start + g.rules.speaker_seconds, draft=" ")
    assert types(events) == ["game_ended"]
    assert g.state.end_reason is EndReason.SPEAKER_IDLE and g.state.outcome is Outcome.ABORTED


def test_max_idle_warnings_zero_ends_at_the_first_idle() -> None:
    g = Game(GameRules(max_idle_warnings=0))
    start = g.start()
    assert g.tick_at(start + g.rules.speaker_seconds)[0].reason is EndReason.SPEAKER_IDLE


# ---------------------------------------------------------------- the listener's window


def test_the_listener_deadline_is_the_later_of_turn_end_and_selection_window() -> None:
    g = Game()  # 45 s turns, 30 s speaking, so 15 s of selection
    start = g.start()
    g.say(after=10)
    assert g.state.phase_deadline == start + 45
    g.click(NON_TARGETS[0])
    g.submit(after=1)
    start2 = g.clock.now
    g.tick_at(start2 + 30)  # idle warning: speaker window extended to start2 + 45
    g.clock.set(start2 + 40)
    g.say()
    assert g.state.phase_deadline == start2 + 40 + 15


def test_clicks_are_submitted_automatically_at_the_turn_end() -> None:
    g = Game()
    start = g.start()
    g.say(after=5)
    g.click(NON_TARGETS[0], TARGETS[0], after=5)
    deadline = start + g.rules.turn_seconds
    assert g.tick_at(deadline - 0.001) == []
    events = g.tick_at(deadline)
    assert events == [
        SelectionSubmitted(
            turn=1, selection=tuple(sorted((NON_TARGETS[0], TARGETS[0]))), auto=True, at=deadline
        ),
        TurnStarted(turn=2, at=deadline),
    ]
    assert g.state.turns[0].auto_submitted


def test_an_auto_submitted_exact_match_is_a_success() -> None:
    g = Game()
    start = g.start()
    g.say(after=5)
    g.click(*TARGETS, after=5)
    events = g.tick_at(start + g.rules.turn_seconds)
    assert types(events) == ["selection_submitted", "game_ended"]
    assert events[0].auto and g.state.outcome is Outcome.SUCCESSFUL


def test_an_idle_listener_is_warned_then_auto_submitted_after_clicking() -> None:
    g = Game()
    start = g.start()
    g.say(after=5)
    deadline = start + g.rules.turn_seconds
    events = g.tick_at(deadline)
    extended = deadline + g.rules.idle_extension_seconds
    assert events == [IdleWarning(seat=LISTENER, turn=1, deadline=extended, at=deadline)]
    assert g.state.phase is Phase.SELECTING and g.state.next_deadline() == extended
    g.click(TARGETS[0], after=3)
    events = g.tick_at(extended)
    assert types(events) == ["selection_submitted", "turn_started"]
    assert events[0].auto and events[0].selection == (TARGETS[0],)


def test_an_idle_listener_past_the_warnings_ends_the_game() -> None:
    rules = GameRules(max_idle_warnings=2)
    g = Game(rules)
    start = g.start()
    g.say(after=1)
    t = start + rules.turn_seconds
    for _ in range(2):
        assert types(g.tick_at(t)) == ["idle_warning"]
        t += rules.idle_extension_seconds
    events = g.tick_at(t)
    assert events == [GameEnded(reason=EndReason.LISTENER_IDLE, outcome=Outcome.ABORTED, at=t)]


def test_idle_policy_end_ends_at_the_first_idle_listener() -> None:
    g = Game(GameRules(idle_policy="end"))
    start = g.start()
    g.say(after=1)
    events = g.tick_at(start + g.rules.turn_seconds)
    assert types(events) == ["game_ended"] and events[0].reason is EndReason.LISTENER_IDLE


def test_each_seat_has_its_own_warning_count() -> None:
    rules = GameRules(max_idle_warnings=1)
    g = Game(rules)
    start = g.start()
    assert types(g.tick_at(start + rules.speaker_seconds)) == ["idle_warning"]
    g.say(after=1)
    events = g.tick_at(g.state.phase_deadline)
    assert events == [
        IdleWarning(
            seat=LISTENER,
            turn=1,
            deadline=g.clock.now + rules.idle_extension_seconds,
            at=g.clock.now,
        )
    ]


# ---------------------------------------------------------------- model listener


def test_model_listener_turn_deadline_then_model_unavailable() -> None:
    g = Game(kind=ListenerKind.MODEL)
    g.start()
    g.say(after=3)
    sent = g.clock.now
    deadline = sent + g.rules.model_turn_seconds
    assert g.state.phase_deadline == deadline
    assert g.tick_at(deadline - 0.01) == []
    events = g.tick_at(deadline)
    assert events == [
        GameEnded(reason=EndReason.MODEL_UNAVAILABLE, outcome=Outcome.ABORTED, at=deadline)
    ]


def test_model_listener_clicks_are_not_auto_submitted() -> None:
    # The model's deadline is a service failure, not a listener idling: no auto-submission.
    g = Game(kind=ListenerKind.MODEL)
    g.start()
    g.say()
    g.click(*TARGETS)
    events = g.tick_at(g.state.phase_deadline)
    assert types(events) == ["game_ended"] and events[0].reason is EndReason.MODEL_UNAVAILABLE


def test_model_listener_plays_a_whole_game() -> None:
    g = Game(kind=ListenerKind.MODEL)
    g.start()
    g.play_turn(TARGETS[0])
    assert g.state.turn == 2 and g.state.phase is Phase.SPEAKING
    events = g.play_turn(*TARGETS[1:])
    assert events[-1].reason is EndReason.SUCCESS


# ---------------------------------------------------------------- disconnects


def test_a_reconnect_within_the_grace_resumes_the_game() -> None:
    g = Game()
    start = g.start()
    g.say(after=2)
    g.click(TARGETS[0], after=1)
    before = g.state
    dropped = g.clock.advance(3)
    assert g.do(Disconnect(seat=LISTENER, at=dropped)) == [
        PlayerDisconnected(seat=LISTENER, at=dropped)
    ]
    assert g.state.connected == {SPEAKER}
    assert g.state.next_deadline() == min(
        before.phase_deadline, dropped + g.rules.disconnect_grace_seconds
    )
    back = g.clock.advance(g.rules.disconnect_grace_seconds - 1)
    assert g.join(LISTENER) == [PlayerReconnected(seat=LISTENER, at=back)]
    s = g.state
    assert s.connected == {SPEAKER, LISTENER} and s.disconnected_since == ()
    assert (s.phase, s.turn, s.selection, s.phase_deadline) == (
        before.phase,
        before.turn,
        before.selection,
        before.phase_deadline,
    )
    assert s.next_deadline() == start + g.rules.turn_seconds
    # The grace that no longer applies does not end anything.
    g.click(TARGETS[1])
    assert types(g.tick_at(start + g.rules.turn_seconds)) == ["selection_submitted", "turn_started"]


@pytest.mark.parametrize(
    ("seat", "reason"),
    [(SPEAKER, EndReason.SPEAKER_DISCONNECTED), (LISTENER, EndReason.LISTENER_DISCONNECTED)],
)
def test_a_disconnect_past_the_grace_ends_the_game(seat, reason) -> None:
    g = Game(GameRules(disconnect_grace_seconds=10))
    g.start()
    dropped = g.clock.advance(2)
    g.do(Disconnect(seat=seat, at=dropped))
    assert g.state.next_deadline() == dropped + 10
    assert g.tick_at(dropped + 9.99) == []
    ended = GameEnded(reason=reason, outcome=Outcome.ABORTED, at=dropped + 10)
    assert g.tick_at(dropped + 10) == [ended]


def test_disconnecting_twice_or_before_joining_changes_nothing() -> None:
    g = Game()
    assert g.do(Disconnect(seat=SPEAKER, at=T0)) == []
    g.start()
    g.do(Disconnect(seat=SPEAKER, at=g.clock.advance(1)))
    since = g.state.disconnected_since
    assert g.do(Disconnect(seat=SPEAKER, at=g.clock.advance(5))) == []
    assert g.state.disconnected_since == since


def test_a_disconnected_speaker_still_has_the_draft_auto_sent() -> None:
    g = Game(GameRules(disconnect_grace_seconds=60))
    start = g.start()
    g.do(Disconnect(seat=SPEAKER, at=g.clock.advance(20)))
    events = g.tick_at(start + g.rules.speaker_seconds, draft="the bird")
    assert events[0].auto and events[0].text == "the bird"


def test_deadlines_fire_in_time_order_within_one_tick() -> None:
    # The listener has the targets clicked and drops; the turn ends (auto-submit, success) before
    # the grace runs out, so one late Tick must find the success, not the disconnect.
    g = Game(GameRules(disconnect_grace_seconds=30))
    start = g.start()
    g.say(after=2)
    g.click(*TARGETS, after=2)
    g.do(Disconnect(seat=LISTENER, at=start + 20))
    g.clock.set(start + 20)
    events = g.tick_at(start + 55)  # turn end at +45, grace end at +50
    assert types(events) == ["selection_submitted", "game_ended"]
    assert events[-1].reason is EndReason.SUCCESS


def test_an_expired_grace_before_the_phase_deadline_wins() -> None:
    g = Game(GameRules(disconnect_grace_seconds=5))
    start = g.start()
    g.say(after=2)
    g.click(*TARGETS, after=2)
    g.do(Disconnect(seat=LISTENER, at=g.clock.advance(1)))
    events = g.tick_at(start + 60)  # grace end at +10, turn end at +45
    assert types(events) == ["game_ended"] and events[0].reason is EndReason.LISTENER_DISCONNECTED


# ---------------------------------------------------------------- leave, admin, after the end


@pytest.mark.parametrize(
    ("seat", "reason"), [(SPEAKER, EndReason.SPEAKER_LEFT), (LISTENER, EndReason.LISTENER_LEFT)]
)
def test_leaving_ends_the_game(seat, reason) -> None:
    g = Game()
    g.start()
    at = g.clock.advance(7)
    ended = GameEnded(reason=reason, outcome=Outcome.ABORTED, at=at)
    assert g.do(Leave(seat=seat, at=at)) == [ended]


def test_leaving_the_waiting_room_ends_the_game() -> None:
    g = Game()
    g.join(SPEAKER)
    assert g.do(Leave(seat=SPEAKER, at=T0 + 1))[0].reason is EndReason.SPEAKER_LEFT


def test_admin_end_keeps_its_note() -> None:
    g = Game()
    g.start()
    events = g.do(AdminEnd(at=g.clock.advance(1), note="operator: broken images"))
    assert events == [
        GameEnded(
            reason=EndReason.ADMIN_ENDED,
            outcome=Outcome.ABORTED,
            note="operator: broken images",
            at=g.clock.now,
        )
    ]


def test_admin_end_may_name_an_abort_reason() -> None:
    g = Game(kind=ListenerKind.MODEL)
    g.start()
    g.do(AdminEnd(at=T0 + 1, reason=EndReason.MODEL_UNAVAILABLE))
    assert g.state.end_reason is EndReason.MODEL_UNAVAILABLE and g.state.outcome is Outcome.ABORTED


@pytest.mark.parametrize("reason", [EndReason.SUCCESS, EndReason.MAX_TURNS])
def test_admin_end_cannot_claim_a_played_outcome(reason) -> None:
    # Success and max turns are outcomes of play (and success earns a bonus): no operator
    # command can declare them.
    g = Game()
    g.start()
    g.say()
    assert g.reject(AdminEnd(at=T0 + 1, reason=reason)).code == "invalid_end_reason"


def _ended_game() -> Game:
    g = Game()
    g.start()
    g.play_turn(*TARGETS)
    assert g.state.ended
    return g


@pytest.mark.parametrize(
    "make",
    [
        lambda at: Join(seat=SPEAKER, at=at),
        lambda at: Join(seat=LISTENER, at=at),
        lambda at: Disconnect(seat=LISTENER, at=at),
        lambda at: SendUtterance(seat=SPEAKER, text="more", at=at),
        lambda at: Click(seat=LISTENER, tangram_id=TARGETS[0], at=at),
        lambda at: Submit(seat=LISTENER, at=at),
        lambda at: Leave(seat=SPEAKER, at=at),
        lambda at: AdminEnd(at=at),
    ],
)
def test_nothing_is_accepted_after_the_end(make) -> None:
    g = _ended_game()
    assert g.reject(make(g.clock.advance(1))).code == "game_ended"


def test_time_passing_after_the_end_changes_nothing() -> None:
    g = _ended_game()
    final = g.state
    for later in (1, 60, 3600):
        assert g.tick_at(g.clock.now + later, draft="late text") == []
    assert g.state == final


# ---------------------------------------------------------------- pay


def test_pay_for_a_successful_game() -> None:
    g = Game()
    g.start()
    g.say(after=30)
    g.click(*TARGETS, after=60)
    g.submit(after=30)  # ended at T0 + 120: two minutes
    pay = game_pay(g.state)
    r = g.rules
    assert pay.minutes == 2.0
    assert pay.base_cents == round(2 * r.base_cents_per_minute) == 40
    assert (pay.correct, pay.wrong) == (3, 0)
    assert pay.bonus_cents == 3 * r.bonus_cents_per_correct == 15
    assert pay.success_cents == r.success_bonus_cents == 25
    assert pay.total_cents == 80


def test_pay_nets_wrong_selections_and_gives_no_success_bonus() -> None:
    g = Game(GameRules(max_turns=1))
    g.start()
    g.play_turn(*TARGETS, NON_TARGETS[0])
    assert g.state.outcome is Outcome.UNSUCCESSFUL
    pay = game_pay(g.state)
    assert (pay.correct, pay.wrong) == (3, 1)
    assert pay.bonus_cents == 2 * g.rules.bonus_cents_per_correct
    assert pay.success_cents == 0


def test_net_correct_is_floored_at_zero() -> None:
    g = Game(GameRules(max_turns=1))
    g.start()
    g.play_turn(TARGETS[0], *NON_TARGETS[:3])
    pay = game_pay(g.state)
    assert (pay.correct, pay.wrong) == (1, 3)
    assert pay.bonus_cents == 0


def test_base_pay_counts_from_creation_to_the_end_and_rounds() -> None:
    rules = GameRules(base_cents_per_minute=20, bonus_cents_per_correct=7, success_bonus_cents=50)
    g = Game(rules)
    g.join(SPEAKER, after=30)  # waiting time counts too
    g.do(Leave(seat=SPEAKER, at=T0 + 100))
    pay = game_pay(g.state)
    assert pay.base_cents == 33  # 100 s at 20 c/min = 33.3 c
    assert pay.bonus_cents == 0 and pay.success_cents == 0
    assert pay.total_cents == 33


def test_aborted_game_pays_for_the_selection_it_reached_but_no_success() -> None:
    g = Game()
    g.start()
    g.play_turn(*TARGETS[:2])
    g.do(Leave(seat=SPEAKER, at=g.clock.advance(1)))
    pay = game_pay(g.state)
    assert pay.correct == 2 and pay.bonus_cents == 10 and pay.success_cents == 0


def test_base_pay() -> None:
    rules = GameRules(base_cents_per_minute=12)
    assert base_pay(rules, 300).base_cents == 60
    assert base_pay(rules, 300).total_cents == 60
    assert base_pay(rules, 0).total_cents == 0
    assert base_pay(rules, -50).total_cents == 0
    assert base_pay(rules, 45).base_cents == 9


# ---------------------------------------------------------------- event log


def test_a_whole_game_log_survives_json_and_replays() -> None:
    g = Game()
    start = g.start()
    g.tick_at(start + 30)  # speaker idle warning
    g.say("first")
    g.click(NON_TARGETS[0], TARGETS[0])
    g.tick_at(g.state.phase_deadline)  # auto-submit
    g.do(Disconnect(seat=SPEAKER, at=g.clock.advance(1)))
    g.join(SPEAKER, after=2)
    g.tick_at(g.state.phase_deadline, draft="second  one")
    g.click(NON_TARGETS[0], *TARGETS[1:])
    g.submit()
    assert g.state.outcome is Outcome.SUCCESSFUL
    wire = json.loads(json.dumps([EVENT_ADAPTER.dump_python(e, mode="json") for e in g.log]))
    back = [event_from_dict(d) for d in wire]
    assert back == g.log
    assert replay(back) == g.state


def test_replay_needs_a_game_created_first() -> None:
    with pytest.raises(ValueError):
        replay([])
    with pytest.raises(ValueError):
        replay([PlayerJoined(seat=SPEAKER, at=T0)])


def test_a_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        new_game(
            GameCreated(
                game_id="bad",
                config=GameConfig(
                    context=CONTEXT,
                    targets=("not-in-context",),
                    speaker_order=CONTEXT,
                    listener_order=CONTEXT,
                ),
                rules=GameRules(),
                at=T0,
            )
        )


# ---------------------------------------------------------------- the per-seat view


def test_the_listener_never_sees_the_targets_before_the_end() -> None:
    g = Game()
    g.start()
    g.say()
    g.click(TARGETS[0], NON_TARGETS[0])
    view = GameView.of(g.state, LISTENER, now=g.clock.now)
    assert [t.tangram_id for t in view.tiles] == list(LISTENER_ORDER)
    assert all(t.target is None for t in view.tiles)
    assert {t.tangram_id for t in view.tiles if t.selected} == {TARGETS[0], NON_TARGETS[0]}
    assert view.end_reason is None and view.outcome is None
    assert '"target":true' not in view.model_dump_json().replace(" ", "")


def test_the_speaker_sees_the_targets_in_its_own_order() -> None:
    g = Game()
    g.start()
    view = GameView.of(g.state, SPEAKER, now=g.clock.now)
    assert [t.tangram_id for t in view.tiles] == list(SPEAKER_ORDER)
    assert {t.tangram_id for t in view.tiles if t.target} == set(TARGETS)
    assert all(t.target is False for t in view.tiles if t.tangram_id not in TARGETS)


def test_both_seats_see_targets_and_outcome_at_the_end() -> None:
    g = Game(GameRules(max_turns=1))
    g.start()
    g.play_turn(NON_TARGETS[0])
    for seat in Seat:
        view = GameView.of(g.state, seat, now=g.clock.now)
        assert {t.tangram_id for t in view.tiles if t.target} == set(TARGETS)
        assert view.phase is Phase.ENDED
        assert view.end_reason is EndReason.MAX_TURNS and view.outcome is Outcome.UNSUCCESSFUL
        assert view.deadline is None


def test_the_view_after_a_submission() -> None:
    g = Game()
    g.start()
    g.play_turn(NON_TARGETS[0], TARGETS[0])
    for seat in Seat:
        view = GameView.of(g.state, seat, now=g.clock.now)
        assert view.last_submitted == sorted((NON_TARGETS[0], TARGETS[0]))
        assert view.turn == 2 and not view.turn_submitted
        assert view.version == g.state.version
        assert [m.text for m in view.messages] == ["the bird"]


def test_the_view_shows_idle_warnings_and_partner_presence() -> None:
    g = Game()
    start = g.start()
    g.tick_at(start + g.rules.speaker_seconds)
    assert GameView.of(g.state, SPEAKER, now=g.clock.now).idle_warning
    assert not GameView.of(g.state, LISTENER, now=g.clock.now).idle_warning
    g.do(Disconnect(seat=LISTENER, at=g.clock.advance(1)))
    assert not GameView.of(g.state, SPEAKER, now=g.clock.now).partner_connected
    assert GameView.of(g.state, LISTENER, now=g.clock.now).partner_connected


def test_the_listener_view_hides_pay_details_until_the_end() -> None:
    # Pay counts correct and wrong selections: before the end it would tell the listener how many
    # of its images are targets.
    g = Game()
    g.start()
    g.play_turn(TARGETS[0], NON_TARGETS[0])
    pay = game_pay(g.state)
    assert GameView.of(g.state, LISTENER, now=g.clock.now, pay=pay).pay is None
    assert GameView.of(g.state, SPEAKER, now=g.clock.now, pay=pay).pay == PayView.of(pay)
    g.do(Leave(seat=SPEAKER, at=g.clock.advance(1)))
    pay = game_pay(g.state)
    assert GameView.of(g.state, LISTENER, now=g.clock.now, pay=pay).pay == PayView.of(pay)


# ---------------------------------------------------------------- found by mutation testing


def test_the_game_start_is_the_start_of_turn_one() -> None:
    g = Game()
    start = g.start()
    g.play_turn(NON_TARGETS[0])
    assert g.state.turn == 2 and g.state.started_at == start < g.state.current_turn.started_at


def test_a_grace_ending_after_the_join_timeout_loses_to_it() -> None:
    """While waiting for the partner: the speaker joins and drops; the join timeout (+60) comes
    before the speaker's grace ends (+40 + 30): one late tick ends the game by the join timeout."""
    g = Game()
    g.join(SPEAKER, after=1)
    g.do(Disconnect(seat=SPEAKER, at=T0 + 40))
    g.clock.set(T0 + 40)
    events = g.tick_at(T0 + 100)
    assert [(e.reason, e.at, e.note) for e in events] == [(EndReason.JOIN_TIMEOUT, T0 + 100, "listener")]
    # and the other way round: a grace ending before the join timeout ends the game first
    g = Game()
    g.join(SPEAKER, after=1)
    g.do(Disconnect(seat=SPEAKER, at=T0 + 5))  # grace ends at +35, the join timeout at +60
    g.clock.set(T0 + 5)
    assert [e.reason for e in g.tick_at(T0 + 100)] == [EndReason.SPEAKER_DISCONNECTED]


def test_a_grace_ending_with_the_phase_deadline_wins_the_tie() -> None:
    g = Game(GameRules(disconnect_grace_seconds=20))
    start = g.start()
    g.do(Disconnect(seat=SPEAKER, at=start + 10))  # grace ends at +30, the typing window too
    g.clock.set(start + 10)
    assert [e.reason for e in g.tick_at(start + 30)] == [EndReason.SPEAKER_DISCONNECTED]


def test_under_a_second_of_play_pays_no_base_even_at_a_high_rate() -> None:
    rules = GameRules(base_cents_per_minute=6000)  # 100 c a second
    assert base_pay(rules, 0).base_cents == 0 and base_pay(rules, 0.5).base_cents == 50
    assert base_pay(rules, 90).minutes == 1.5
    g = Game(rules)
    g.do(Leave(seat=SPEAKER, at=T0 + 0.25))
    pay = game_pay(g.state)
    assert (pay.base_cents, pay.minutes) == (25, 0.25 / 60)
