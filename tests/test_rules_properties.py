"""Property-based tests of the rules engine: random games from both seats, with a fake clock.

Each example draws a game (rules, targets, orders, human or model listener) and then plays random
commands from both seats against it: joins, drops, messages (empty, too long, any text), clicks on
random ids (some not in the context, some steering toward the targets so that games do succeed),
submissions, leaves, operator ends, and Ticks with random drafts at random, monotone times (some
exactly at, or just before, the next deadline).

Example counts come from the hypothesis profile named by HYPOTHESIS_PROFILE: ``ci`` (default,
200 examples) or ``long`` (2,000).
"""

from __future__ import annotations

import collections
import json
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from app.game.rules import (
    EVENT_ADAPTER,
    AdminEnd,
    Click,
    Command,
    Disconnect,
    EndReason,
    IdleWarning,
    Event,
    GameConfig,
    GameCreated,
    GameEnded,
    GameRules,
    GameState,
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
    decide,
    event_from_dict,
    evolve,
    game_pay,
    new_game,
    replay,
    step,
)
from app.protocol import GameView, StateFrame, state_frame_json, view_data


def _visible(text: str) -> bool:
    """The reference's own reading of "something to see" (issue 13): a letter, digit,
    punctuation mark or symbol that is not a blank filler."""
    blank = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}
    return any(unicodedata.category(c)[0] in "LNPS" and c not in blank for c in text)


# Own profile names, so that neither hypothesis's built-in "ci" profile (100 derandomized
# examples) nor any profile registered elsewhere is clobbered or silently used instead.
settings.register_profile("rules-ci", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("rules-long", max_examples=2000, deadline=None, print_blob=True)
_PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")
try:
    _PROFILE = settings.get_profile(
        {"ci": "rules-ci", "long": "rules-long"}.get(_PROFILE_NAME, _PROFILE_NAME)
    )
except InvalidArgument:
    _PROFILE = settings.get_profile("rules-ci")
PROPS = settings(
    _PROFILE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

T0 = 1_700_000_000.0
EPS = 0.001
CONTEXT = tuple(f"tangram-{i}" for i in range(10))
FOREIGN_IDS = ("tangram-10", "", "TANGRAM-1", " tangram-2", "page-3")
REJECTION_CODES = {
    "not_your_seat",
    "not_your_turn",
    "unknown_tangram",
    "game_ended",
    "empty_utterance",
    "utterance_too_long",
    "invalid_end_reason",
}
OUTCOME_OF = {
    EndReason.SUCCESS: Outcome.SUCCESSFUL,
    EndReason.MAX_TURNS: Outcome.UNSUCCESSFUL,
}

# ---------------------------------------------------------------- strategies


@st.composite
def game_rules(draw) -> GameRules:
    speaker = draw(st.sampled_from([5.0, 10.0, 30.0]))
    selection = draw(st.sampled_from([0.0, 5.0, 15.0]))
    return GameRules(
        max_turns=draw(st.integers(1, 4)),
        speaker_seconds=speaker,
        turn_seconds=speaker + selection,
        max_utterance_chars=draw(st.sampled_from([5, 20, 500])),
        idle_policy=draw(st.sampled_from(["warn", "end"])),
        idle_extension_seconds=draw(st.sampled_from([0.5, 5.0, 15.0])),
        max_idle_warnings=draw(st.integers(0, 3)),
        disconnect_grace_seconds=draw(st.sampled_from([1.0, 10.0, 30.0])),
        join_timeout_seconds=draw(st.sampled_from([10.0, 120.0])),
        model_turn_seconds=draw(st.sampled_from([5.0, 30.0])),
        base_cents_per_minute=draw(st.sampled_from([0.0, 12.5, 20.0])),
        bonus_cents_per_correct=draw(st.integers(0, 10)),
        success_bonus_cents=draw(st.integers(0, 50)),
    )


@st.composite
def games(draw) -> GameCreated:
    targets = draw(st.lists(st.sampled_from(CONTEXT), min_size=3, max_size=5, unique=True))
    return GameCreated(
        game_id=draw(st.sampled_from(["g", "game-42"])),
        config=GameConfig(
            context=CONTEXT,
            targets=tuple(targets),
            speaker_order=tuple(draw(st.permutations(CONTEXT))),
            listener_order=tuple(draw(st.permutations(CONTEXT))),
        ),
        rules=draw(game_rules()),
        listener_kind=draw(st.sampled_from(list(ListenerKind))),
        at=T0,
    )


TEXTS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\n\t ", "the  tall\nbird", "x" * 6, "y" * 21, "z" * 600]),
)
DRAFTS = st.one_of(st.just(""), TEXTS)
_SHORT_DELAYS = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 10.0])
DELAYS = st.one_of(
    _SHORT_DELAYS,
    _SHORT_DELAYS,
    _SHORT_DELAYS,
    st.floats(min_value=0.0, max_value=40.0, allow_nan=False, allow_infinity=False),
)
# Weighted command kinds (a repeated kind is drawn more often); leaving and operator ends are rare
# so that most games are played out.
KINDS = (
    ["join"] * 6
    + ["disconnect"] * 4
    + ["say"] * 12
    + ["click"] * 6
    + ["click_toward"] * 16
    + ["submit"] * 12
    + ["tick"] * 8
    + ["tick_deadline"] * 6
    + ["tick_before"] * 4
    + ["leave", "admin"]
)
COOPERATIVE_LISTENER = (
    ["click_toward"] * 4 + ["click_missing"] * 2 + ["click"] * 2 + ["submit"] * 3 + ["tick_deadline"]
)
SEATS = st.sampled_from(list(Seat))
MOSTLY_SPEAKER = st.sampled_from([Seat.SPEAKER] * 4 + [Seat.LISTENER])
MOSTLY_LISTENER = st.sampled_from([Seat.LISTENER] * 4 + [Seat.SPEAKER])


def sensible_kind(state: GameState) -> str:
    """What a cooperative pair would do next (so that games reach their later turns and ends)."""
    if state.phase is Phase.WAITING:
        return "join"
    if state.phase is Phase.SPEAKING:
        return "say"
    return "click_toward" if state.selection != state.targets else "submit"


def draw_command(data, state: GameState, now: float, cooperative: bool = False) -> Command:
    if cooperative and data.draw(st.integers(0, 3), label="sensible"):
        kind = sensible_kind(state)
        if kind == "say":
            text = data.draw(st.sampled_from(["the bird", "tall one", "no, the other"]))
            if data.draw(st.integers(0, 5)):
                return SendUtterance(seat=Seat.SPEAKER, text=text, at=now + data.draw(DELAYS))
            # The typing window runs out with a draft typed.
            return Tick(at=max(now, state.next_deadline()), speaker_draft=text)
        if kind == "click_toward":  # an imperfect listener: right, random, late or early
            kind = data.draw(st.sampled_from(COOPERATIVE_LISTENER))
    else:
        kind = data.draw(st.sampled_from(KINDS), label="kind")
    at = now + data.draw(DELAYS, label="delay")
    if kind == "join":
        missing = sorted(set(Seat) - state.joined)
        return Join(seat=data.draw(st.sampled_from(missing or list(Seat))), at=at)
    if kind == "disconnect":
        return Disconnect(seat=data.draw(SEATS), at=at)
    if kind == "say":
        return SendUtterance(seat=data.draw(MOSTLY_SPEAKER), text=data.draw(TEXTS), at=at)
    if kind == "click":
        tid = data.draw(st.sampled_from(CONTEXT + FOREIGN_IDS))
        seat = Seat.LISTENER if cooperative else data.draw(MOSTLY_LISTENER)
        return Click(seat=seat, tangram_id=tid, at=at)
    if kind == "click_toward":
        wrong = sorted(state.selection ^ state.targets)
        tid = data.draw(st.sampled_from(wrong)) if wrong else data.draw(st.sampled_from(CONTEXT))
        return Click(seat=Seat.LISTENER, tangram_id=tid, at=at)
    if kind == "click_missing":  # select targets, then extras: supersets get submitted
        missing = sorted(state.targets - state.selection) or sorted(set(CONTEXT) - state.selection)
        tid = data.draw(st.sampled_from(missing or list(CONTEXT)))
        return Click(seat=Seat.LISTENER, tangram_id=tid, at=at)
    if kind == "submit":
        seat = Seat.LISTENER if cooperative else data.draw(MOSTLY_LISTENER)
        return Submit(seat=seat, at=at)
    if kind == "tick":
        return Tick(at=at, speaker_draft=data.draw(DRAFTS))
    if kind == "tick_deadline":
        deadline = state.next_deadline()
        at = max(now, deadline) if deadline is not None else at
        return Tick(at=at, speaker_draft=data.draw(DRAFTS))
    if kind == "tick_before":
        deadline = state.next_deadline()
        if deadline is not None and deadline - EPS >= now:
            at = deadline - EPS
        return Tick(at=at, speaker_draft=data.draw(DRAFTS))
    if kind == "leave":
        return Leave(seat=data.draw(SEATS), at=at)
    reason = data.draw(st.sampled_from(list(EndReason)))
    return AdminEnd(at=at, reason=reason, note=data.draw(st.sampled_from(["", "ops"])))


# ---------------------------------------------------------------- driver


@dataclass(frozen=True)
class Step:
    before: GameState
    cmd: Command
    result: list[Event] | Rejection
    after: GameState


@dataclass
class Run:
    created: GameCreated
    state: GameState
    log: list[Event]
    now: float


def play(data, run: Run, steps: int, *, past_end: bool = False) -> Iterator[Step]:
    """Apply up to ``steps`` random commands to ``run`` (in place), yielding each step.

    Most games start with their seats joining at once; the rest leave joining to chance (and
    often time out). Play stops at the end of the game unless ``past_end``.
    """
    cooperative = data.draw(st.booleans(), label="cooperative")
    prelude: list[Command] = []
    if data.draw(st.integers(0, 4), label="join_first"):
        seats = [Seat.SPEAKER]
        if run.state.listener_kind is ListenerKind.HUMAN:
            seats.append(Seat.LISTENER)
        prelude = [Join(seat=seat, at=run.now) for seat in data.draw(st.permutations(seats))]
    for i in range(steps):
        if run.state.ended and not past_end:
            return
        if i < len(prelude):
            cmd = prelude[i]
        else:
            cmd = draw_command(data, run.state, run.now, cooperative)
        before = run.state
        after, result = step(before, cmd)
        run.state = after
        run.now = cmd.at
        if not isinstance(result, Rejection):
            run.log.extend(result)
        yield Step(before, cmd, result, after)


def start(data) -> Run:
    created = data.draw(games(), label="game")
    return Run(created=created, state=new_game(created), log=[created], now=T0)


STEPS = st.integers(min_value=1, max_value=80)


def expected_rejection(state: GameState, cmd: Command) -> str | None:
    """A reference model of command validation (None: the command is accepted)."""
    if isinstance(cmd, Tick):
        return None
    if state.ended:
        return "game_ended"
    if isinstance(cmd, SendUtterance):
        if cmd.seat is not Seat.SPEAKER:
            return "not_your_seat"
        if state.phase is not Phase.SPEAKING:
            return "not_your_turn"
        clean = " ".join(cmd.text.split())
        if not _visible(clean):
            return "empty_utterance"
        if len(clean) > state.rules.max_utterance_chars:
            return "utterance_too_long"
        return None
    if isinstance(cmd, Click):
        if cmd.seat is not Seat.LISTENER:
            return "not_your_seat"
        if cmd.tangram_id not in state.config.context:
            return "unknown_tangram"
        return None if state.phase is Phase.SELECTING else "not_your_turn"
    if isinstance(cmd, Submit):
        if cmd.seat is not Seat.LISTENER:
            return "not_your_seat"
        return None if state.phase is Phase.SELECTING else "not_your_turn"
    if isinstance(cmd, AdminEnd) and cmd.reason in (EndReason.SUCCESS, EndReason.MAX_TURNS):
        return "invalid_end_reason"
    return None


# ---------------------------------------------------------------- reference model of §1
# An independent statement of what each accepted command causes, used as an oracle for decide.


def _ended(reason: EndReason, at: float, note: str = "") -> GameEnded:
    return GameEnded(
        reason=reason, outcome=OUTCOME_OF.get(reason, Outcome.ABORTED), at=at, note=note
    )


def _after_submission(state: GameState, at: float, auto: bool) -> list[Event]:
    submitted = SelectionSubmitted(
        turn=state.turn, selection=tuple(sorted(state.selection)), auto=auto, at=at
    )
    if state.selection == state.targets:
        return [submitted, _ended(EndReason.SUCCESS, at)]
    if state.turn == state.rules.max_turns:
        return [submitted, _ended(EndReason.MAX_TURNS, at)]
    return [submitted, TurnStarted(turn=state.turn + 1, at=at)]


def _idle_event(state: GameState, seat: Seat, at: float) -> Event:
    r = state.rules
    warned = sum(1 for s, _ in state.warnings if s is seat)
    if r.idle_policy == "end" or warned == r.max_idle_warnings:
        reason = EndReason.SPEAKER_IDLE if seat is Seat.SPEAKER else EndReason.LISTENER_IDLE
        return _ended(reason, at)
    return IdleWarning(seat=seat, turn=state.turn, deadline=at + r.idle_extension_seconds, at=at)


def _first_due(state: GameState, cmd: Tick) -> list[Event]:
    """The events of the earliest deadline due at ``cmd.at`` (graces first on a tie)."""
    r, at = state.rules, cmd.at
    due = [
        (since + r.disconnect_grace_seconds, 0, i, seat)
        for i, (seat, since) in enumerate(state.disconnected_since)
    ]
    if state.phase is Phase.WAITING:
        due.append((state.created_at + r.join_timeout_seconds, 1, 0, None))
    elif state.phase_deadline is not None:
        due.append((state.phase_deadline, 1, 0, None))
    due = [d for d in due if d[0] <= at]
    if not due:
        return []
    _, kind, _, seat = min(due)
    if kind == 0:
        return [
            _ended(
                EndReason.SPEAKER_DISCONNECTED
                if seat is Seat.SPEAKER
                else EndReason.LISTENER_DISCONNECTED,
                at,
            )
        ]
    if state.phase is Phase.WAITING:
        humans = {Seat.SPEAKER} | (
            {Seat.LISTENER} if state.listener_kind is ListenerKind.HUMAN else set()
        )
        missing = " ".join(sorted(humans - state.joined))
        return [_ended(EndReason.JOIN_TIMEOUT, at, note=missing)]
    if state.phase is Phase.SPEAKING:
        draft = " ".join(cmd.speaker_draft.split())[: r.max_utterance_chars].strip()
        if _visible(draft):
            return [UtteranceSent(turn=state.turn, text=draft, auto=True, at=at)]
        return [_idle_event(state, Seat.SPEAKER, at)]
    if state.listener_kind is ListenerKind.MODEL:
        return [_ended(EndReason.MODEL_UNAVAILABLE, at)]
    if state.turns[-1].clicks:
        return _after_submission(state, at, auto=True)
    return [_idle_event(state, Seat.LISTENER, at)]


def expected_events(state: GameState, cmd: Command) -> list[Event]:
    """What an accepted command causes according to MULTIREF.md §1."""
    if isinstance(cmd, Tick):
        events: list[Event] = []
        for _ in range(8):  # the engine handles a bounded cascade of deadlines per Tick
            if state.ended:
                break
            more = _first_due(state, cmd)
            if not more:
                break
            for e in more:
                state = evolve(state, e)
            events += more
        return events
    at = cmd.at
    if isinstance(cmd, Join):
        if cmd.seat not in state.joined:
            humans = {Seat.SPEAKER} | (
                {Seat.LISTENER} if state.listener_kind is ListenerKind.HUMAN else set()
            )
            starts = state.phase is Phase.WAITING and humans <= state.joined | {cmd.seat}
            return [PlayerJoined(seat=cmd.seat, at=at)] + (
                [TurnStarted(turn=1, at=at)] if starts else []
            )
        if any(seat is cmd.seat for seat, _ in state.disconnected_since):
            return [PlayerReconnected(seat=cmd.seat, at=at)]
        return []
    if isinstance(cmd, Disconnect):
        return [PlayerDisconnected(seat=cmd.seat, at=at)] if cmd.seat in state.connected else []
    if isinstance(cmd, Leave):
        reason = EndReason.SPEAKER_LEFT if cmd.seat is Seat.SPEAKER else EndReason.LISTENER_LEFT
        return [_ended(reason, at)]
    if isinstance(cmd, AdminEnd):
        return [_ended(cmd.reason, at, note=cmd.note)]
    if isinstance(cmd, SendUtterance):
        return [UtteranceSent(turn=state.turn, text=" ".join(cmd.text.split()), at=at)]
    if isinstance(cmd, Click):
        selected = cmd.tangram_id not in state.selection
        tid = cmd.tangram_id
        return [SelectionToggled(turn=state.turn, tangram_id=tid, selected=selected, at=at)]
    assert isinstance(cmd, Submit)
    return _after_submission(state, at, auto=False)


def check_deadlines(before: GameState, events: list[Event], after: GameState) -> None:
    """The phase deadline that the last event of a step sets (MULTIREF.md §1 timers)."""
    if not events or after.ended:
        return
    r, last = after.rules, events[-1]
    if isinstance(last, TurnStarted):
        assert after.phase_deadline == last.at + r.speaker_seconds
    elif isinstance(last, UtteranceSent):
        if after.listener_kind is ListenerKind.MODEL:
            assert after.phase_deadline == last.at + r.model_turn_seconds
        else:
            started = after.current_turn.started_at
            assert after.phase_deadline == max(
                started + r.turn_seconds, last.at + r.selection_seconds
            )
    elif isinstance(last, IdleWarning):
        assert after.phase_deadline == last.deadline == last.at + r.idle_extension_seconds
    else:
        assert after.phase_deadline == before.phase_deadline


# ---------------------------------------------------------------- invariants of every state


def check_state(state: GameState, log: list[Event]) -> None:
    rules = state.rules
    assert state.selection <= set(state.config.context)
    assert 0 <= state.turn <= rules.max_turns
    assert [t.turn for t in state.turns] == list(range(1, state.turn + 1))
    # One speaker message per turn at most, and only in turns that exist.
    per_turn = collections.Counter(m.turn for m in state.messages)
    assert all(n == 1 for n in per_turn.values())
    assert set(per_turn) <= set(range(1, state.turn + 1))
    assert all(len(m.text) <= rules.max_utterance_chars and m.text.strip() for m in state.messages)
    assert all(m.text == " ".join(m.text.split()) for m in state.messages)
    # A grace clock runs exactly for the joined human seats that are not connected.
    humans = set(Seat) if state.listener_kind is ListenerKind.HUMAN else {Seat.SPEAKER}
    dropped = [seat for seat, _ in state.disconnected_since]
    assert len(dropped) == len(set(dropped))
    assert set(dropped) == (state.joined - state.connected) & humans
    # The version counts the events applied, GameCreated included.
    assert state.version == len(log)
    assert [e.at for e in log] == sorted(e.at for e in log)
    # The end is one event, the last one, and every end field agrees with it.
    ends = [i for i, e in enumerate(log) if isinstance(e, GameEnded)]
    assert ends == ([len(log) - 1] if state.ended else [])
    assert state.ended == (state.outcome is not None) == (state.end_reason is not None)
    assert state.ended == (state.ended_at is not None)
    if state.ended:
        assert state.outcome is OUTCOME_OF.get(state.end_reason, Outcome.ABORTED)
        assert state.phase_deadline is None
    if state.outcome is Outcome.SUCCESSFUL:
        assert state.selection == state.targets
        assert state.turns[-1].selection_after == tuple(sorted(state.targets))
    if state.end_reason is EndReason.MAX_TURNS:
        assert state.turn == rules.max_turns and state.selection != state.targets
    # A submission that matches the targets ends the game at once, as a success.
    for i, e in enumerate(log):
        if isinstance(e, SelectionSubmitted) and set(e.selection) == state.targets:
            assert log[i + 1] == GameEnded(
                reason=EndReason.SUCCESS, outcome=Outcome.SUCCESSFUL, at=e.at
            )
    # Something is always pending in a live game; nothing once it ended.
    deadline = state.next_deadline()
    assert (deadline is None) == state.ended
    if not state.ended and state.phase is not Phase.WAITING:
        assert state.phase_deadline is not None


def check_views(state: GameState, now: float) -> None:
    for seat in Seat:
        view = GameView.of(state, seat, now=now)
        order = state.config.speaker_order if seat is Seat.SPEAKER else state.config.listener_order
        assert [t.tangram_id for t in view.tiles] == list(order)
        assert {t.tangram_id for t in view.tiles if t.selected} == state.selection
        if seat is Seat.LISTENER and not state.ended:
            assert all(t.target is None for t in view.tiles)
            assert view.end_reason is None and view.outcome is None
        else:
            assert {t.tangram_id for t in view.tiles if t.target} == state.targets
            assert all(t.target is not None for t in view.tiles)
        # the hub's broadcasts build the frame from plain data and cached pieces: byte for byte
        # the models' JSON
        for kw in ({}, {"cause": "selection_toggled", "pay": game_pay(state), "completion_code": "C0DE",
                        "redirect_url": "https://app.prolific.com/submissions/complete?cc=X"}):
            fast = state_frame_json(state, seat, now, **kw)
            assert fast == StateFrame(view=GameView.of(state, seat, now, **kw)).model_dump_json()
            assert json.loads(fast) == {"type": "state", "view": view_data(state, seat, now, **kw)}


# ---------------------------------------------------------------- properties


@PROPS
@given(data=st.data())
def test_random_play_keeps_every_invariant(data) -> None:
    run = start(data)
    check_state(run.state, run.log)
    for s in play(data, run, data.draw(STEPS, label="steps")):
        check_state(s.after, run.log)
        check_views(s.after, run.now)
        # The log is the source of truth: it replays to the state built step by step.
        assert replay(run.log) == s.after


@PROPS
@given(data=st.data())
def test_a_rejected_command_changes_nothing(data) -> None:
    run = start(data)
    for s in play(data, run, data.draw(STEPS, label="steps")):
        expected = expected_rejection(s.before, s.cmd)
        if isinstance(s.result, Rejection):
            assert s.result.code in REJECTION_CODES
            assert s.result.code == expected, (s.cmd, s.result)
            assert s.after is s.before
            assert decide(s.before, s.cmd) == s.result  # decide is pure
        else:
            assert expected is None, (s.cmd, expected)
            assert s.after.version == s.before.version + len(s.result)
            if isinstance(s.cmd, Click):
                assert (s.cmd.tangram_id in s.after.selection) != (
                    s.cmd.tangram_id in s.before.selection
                )


@PROPS
@given(data=st.data())
def test_decide_agrees_with_a_reference_model(data) -> None:
    run = start(data)
    for s in play(data, run, data.draw(STEPS, label="steps")):
        if isinstance(s.result, Rejection):
            continue
        assert s.result == expected_events(s.before, s.cmd), s.cmd
        check_deadlines(s.before, s.result, s.after)


@PROPS
@given(data=st.data())
def test_an_ended_game_never_changes(data) -> None:
    run = start(data)
    for _ in play(data, run, data.draw(STEPS, label="steps")):
        pass
    if not run.state.ended:
        run.state, result = step(run.state, Leave(seat=data.draw(SEATS), at=run.now))
        run.log.extend(result)
    final = run.state
    assert final.ended
    for s in play(data, run, data.draw(st.integers(1, 30), label="after"), past_end=True):
        if isinstance(s.cmd, Tick):
            assert s.result == []
        else:
            assert isinstance(s.result, Rejection) and s.result.code == "game_ended"
        assert s.after is final
    # Even a Tick far in the future changes nothing.
    assert decide(final, Tick(at=run.now + 10**6, speaker_draft="late")) == []
    assert replay(run.log) == final


@PROPS
@given(data=st.data())
def test_ticks_fire_exactly_the_deadlines_that_passed(data) -> None:
    run = start(data)
    for s in play(data, run, data.draw(STEPS, label="steps")):
        state, now = s.after, run.now
        deadline = state.next_deadline()
        if deadline is not None:
            # Before the next deadline, time passing changes nothing...
            for probe in {now, deadline - EPS}:
                if now <= probe < deadline:
                    assert decide(state, Tick(at=probe, speaker_draft="a draft")) == []
            # ... and at it, something happens.
            assert decide(state, Tick(at=max(now, deadline), speaker_draft="")) != []
        if isinstance(s.cmd, Tick) and not state.ended:
            # A Tick leaves no passed deadline behind.
            assert state.next_deadline() > s.cmd.at


@PROPS
@given(data=st.data())
def test_the_event_log_survives_json_and_replays(data) -> None:
    run = start(data)
    for _ in play(data, run, data.draw(STEPS, label="steps")):
        pass
    wire = [EVENT_ADAPTER.dump_python(e, mode="json") for e in run.log]
    back = [event_from_dict(d) for d in wire]
    assert back == run.log
    assert replay(back) == run.state
    assert back[0].rules == run.created.rules and back[0].config == run.created.config


@PROPS
@given(data=st.data())
def test_pay_follows_the_rules(data) -> None:
    run = start(data)
    for _ in play(data, run, data.draw(STEPS, label="steps")):
        pass
    if not run.state.ended:
        run.state, _ = step(run.state, AdminEnd(at=run.now + data.draw(DELAYS)))
    state, r = run.state, run.state.rules
    pay = game_pay(state)
    correct = len(state.selection & state.targets)
    wrong = len(state.selection) - correct
    minutes = (state.ended_at - state.created_at) / 60
    assert (pay.correct, pay.wrong) == (correct, wrong)
    assert pay.base_cents == round(minutes * r.base_cents_per_minute)
    assert pay.bonus_cents == max(0, correct - wrong) * r.bonus_cents_per_correct
    success = state.outcome is Outcome.SUCCESSFUL
    assert pay.success_cents == (r.success_bonus_cents if success else 0)
    assert pay.total_cents == pay.base_cents + pay.bonus_cents + pay.success_cents >= 0


@PROPS
@given(data=st.data())
def test_the_fast_replace_makes_what_dataclasses_replace_makes(data) -> None:
    """``evolve`` copies states with ``rules._replace`` (not through the frozen ``__init__``):
    equal objects, of the same type, with every field and nothing else, the original unchanged."""
    import dataclasses

    from app.game.rules import _replace

    run = start(data)
    for s in play(data, run, data.draw(STEPS, label="steps")):
        state = s.after
        original = dict(vars(state))
        changes = {"version": state.version + 1, "selection": frozenset({"x"}), "turn": 99}
        fast, slow = _replace(state, **changes), dataclasses.replace(state, **changes)
        assert type(fast) is GameState and fast == slow and vars(fast) == vars(slow)
        assert vars(state) == original
        if state.turns:
            turn = state.turns[-1]
            assert _replace(turn, clicks=(("a", True),)) == dataclasses.replace(turn, clicks=(("a", True),))
    try:
        _replace(run.state, no_such_field=1)
    except TypeError:
        pass
    else:
        raise AssertionError("an unknown field must be refused, as dataclasses.replace does")
