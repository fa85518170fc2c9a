"""The MultiRef game as a pure state machine (docs/game.md).

No I/O and no clock: every command carries the time it happened at (``at``, seconds since the
epoch, given by the driver). ``decide`` validates a command against the state and returns the
facts (events) it causes, or a :class:`Rejection`; ``evolve`` folds one event into the state.
The event log is the source of truth: ``replay`` rebuilds any game from its events alone.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Seat(StrEnum):
    SPEAKER = "speaker"
    LISTENER = "listener"

    @property
    def partner(self) -> "Seat":
        return Seat.LISTENER if self is Seat.SPEAKER else Seat.SPEAKER


class ListenerKind(StrEnum):
    HUMAN = "human"
    MODEL = "model"


class Phase(StrEnum):
    WAITING = "waiting"  # matched, waiting for both seats to connect
    SPEAKING = "speaking"  # the speaker may send this turn's message
    SELECTING = "selecting"  # the listener clicks and submits
    ENDED = "ended"


class EndReason(StrEnum):
    SUCCESS = "success"
    MAX_TURNS = "max_turns"
    SPEAKER_IDLE = "speaker_idle"
    LISTENER_IDLE = "listener_idle"
    SPEAKER_DISCONNECTED = "speaker_disconnected"
    LISTENER_DISCONNECTED = "listener_disconnected"
    SPEAKER_LEFT = "speaker_left"
    LISTENER_LEFT = "listener_left"
    JOIN_TIMEOUT = "join_timeout"
    MODEL_UNAVAILABLE = "model_unavailable"
    ADMIN_ENDED = "admin_ended"


class Outcome(StrEnum):
    SUCCESSFUL = "successful"  # final selection equals the targets
    UNSUCCESSFUL = "unsuccessful"  # all turns played without success
    ABORTED = "aborted"  # ended early for any other reason


IDLE_END = {Seat.SPEAKER: EndReason.SPEAKER_IDLE, Seat.LISTENER: EndReason.LISTENER_IDLE}
DISCONNECT_END = {
    Seat.SPEAKER: EndReason.SPEAKER_DISCONNECTED,
    Seat.LISTENER: EndReason.LISTENER_DISCONNECTED,
}
LEAVE_END = {Seat.SPEAKER: EndReason.SPEAKER_LEFT, Seat.LISTENER: EndReason.LISTENER_LEFT}


class GameRules(BaseModel):
    """Every game parameter, with the defaults of docs/game.md. Stored with each game."""

    model_config = ConfigDict(frozen=True)

    num_images: int = 10
    min_targets: int = 3
    max_targets: int = 5
    max_turns: int = 10
    turn_seconds: float = 45.0
    speaker_seconds: float = 30.0
    max_utterance_chars: int = 500
    # "warn": warn, extend the window, end only if idling goes on; "end": end at the first idle
    # window, like the original deployment.
    idle_policy: Literal["warn", "end"] = "warn"
    idle_extension_seconds: float = 15.0
    max_idle_warnings: int = 2
    disconnect_grace_seconds: float = 30.0
    join_timeout_seconds: float = 60.0
    model_turn_seconds: float = 30.0
    # Pay, in cents: base rate per minute of play, per net correct selection, success bonus.
    base_cents_per_minute: float = 20.0
    bonus_cents_per_correct: int = 5
    success_bonus_cents: int = 25

    @property
    def selection_seconds(self) -> float:
        return self.turn_seconds - self.speaker_seconds


class GameConfig(BaseModel):
    """The 10 tangrams of a game, its targets and the two independent on-screen orders."""

    model_config = ConfigDict(frozen=True)

    context: tuple[str, ...]
    targets: tuple[str, ...]
    speaker_order: tuple[str, ...]
    listener_order: tuple[str, ...]

    def check(self) -> None:
        ctx = set(self.context)
        if len(ctx) != len(self.context):
            raise ValueError("context has duplicate tangrams")
        if set(self.speaker_order) != ctx or len(self.speaker_order) != len(ctx):
            raise ValueError("speaker order is not a permutation of the context")
        if set(self.listener_order) != ctx or len(self.listener_order) != len(ctx):
            raise ValueError("listener order is not a permutation of the context")
        if not set(self.targets) <= ctx or len(set(self.targets)) != len(self.targets):
            raise ValueError("targets must be distinct tangrams of the context")


# ---------------------------------------------------------------- events (facts in the log)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)
    at: float


class GameCreated(_Event):
    type: Literal["game_created"] = "game_created"
    game_id: str
    config: GameConfig
    rules: GameRules
    listener_kind: ListenerKind = ListenerKind.HUMAN


class PlayerJoined(_Event):
    type: Literal["player_joined"] = "player_joined"
    seat: Seat


class TurnStarted(_Event):
    type: Literal["turn_started"] = "turn_started"
    turn: int


class UtteranceSent(_Event):
    type: Literal["utterance_sent"] = "utterance_sent"
    turn: int
    text: str
    auto: bool = False  # sent for the speaker when the typing window closed


class SelectionToggled(_Event):
    type: Literal["selection_toggled"] = "selection_toggled"
    turn: int
    tangram_id: str
    selected: bool  # the state after the click


class SelectionSubmitted(_Event):
    type: Literal["selection_submitted"] = "selection_submitted"
    turn: int
    selection: tuple[str, ...]
    auto: bool = False  # submitted for the listener when the turn ran out


class IdleWarning(_Event):
    type: Literal["idle_warning"] = "idle_warning"
    seat: Seat
    turn: int
    deadline: float  # the extended deadline


class PlayerDisconnected(_Event):
    type: Literal["player_disconnected"] = "player_disconnected"
    seat: Seat


class PlayerReconnected(_Event):
    type: Literal["player_reconnected"] = "player_reconnected"
    seat: Seat


class GameEnded(_Event):
    type: Literal["game_ended"] = "game_ended"
    reason: EndReason
    outcome: Outcome
    note: str = ""


Event = Annotated[
    Union[
        GameCreated,
        PlayerJoined,
        TurnStarted,
        UtteranceSent,
        SelectionToggled,
        SelectionSubmitted,
        IdleWarning,
        PlayerDisconnected,
        PlayerReconnected,
        GameEnded,
    ],
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def event_from_dict(data: dict) -> Event:
    return EVENT_ADAPTER.validate_python(data)


# ---------------------------------------------------------------- commands (inputs)


@dataclass(frozen=True)
class Join:
    seat: Seat
    at: float


@dataclass(frozen=True)
class Disconnect:
    seat: Seat
    at: float


@dataclass(frozen=True)
class SendUtterance:
    """A message. Live input is normalised (runs of whitespace become one space, ends trimmed);
    ``verbatim`` keeps the text byte for byte (imported records: data is kept as it was)."""

    seat: Seat
    text: str
    at: float
    verbatim: bool = False


@dataclass(frozen=True)
class Click:
    seat: Seat
    tangram_id: str
    at: float


@dataclass(frozen=True)
class Submit:
    seat: Seat
    at: float


@dataclass(frozen=True)
class Leave:
    seat: Seat
    at: float


@dataclass(frozen=True)
class AdminEnd:
    at: float
    note: str = ""
    reason: EndReason = EndReason.ADMIN_ENDED


@dataclass(frozen=True)
class Tick:
    """Time has passed: fire every deadline at or before ``at``.

    ``speaker_draft`` is the text the speaker typed but did not send (kept by the driver), sent
    automatically when the typing window closes.
    """

    at: float
    speaker_draft: str = ""


Command = Union[Join, Disconnect, SendUtterance, Click, Submit, Leave, AdminEnd, Tick]


@dataclass(frozen=True)
class Rejection:
    """Why a command changes nothing. ``code`` is stable; ``message`` is for people."""

    code: str
    message: str


# ---------------------------------------------------------------- state


@dataclass(frozen=True)
class Message:
    turn: int
    text: str
    auto: bool
    at: float


@dataclass(frozen=True)
class TurnRecord:
    turn: int
    started_at: float
    utterance: str | None = None
    auto_sent: bool = False
    sent_at: float | None = None
    selection_before: tuple[str, ...] = ()
    selection_after: tuple[str, ...] | None = None
    auto_submitted: bool = False
    submitted_at: float | None = None
    clicks: tuple[tuple[str, bool], ...] = ()

    @property
    def selected(self) -> tuple[str, ...]:
        if self.selection_after is None:
            return ()
        return tuple(sorted(set(self.selection_after) - set(self.selection_before)))

    @property
    def deselected(self) -> tuple[str, ...]:
        if self.selection_after is None:
            return ()
        return tuple(sorted(set(self.selection_before) - set(self.selection_after)))


@dataclass(frozen=True)
class GameState:
    game_id: str
    config: GameConfig
    rules: GameRules
    listener_kind: ListenerKind
    created_at: float
    version: int = 1  # number of events applied (the GameCreated event is 1)
    phase: Phase = Phase.WAITING
    turn: int = 0
    phase_deadline: float | None = None
    selection: frozenset[str] = frozenset()
    joined: frozenset[Seat] = frozenset()
    connected: frozenset[Seat] = frozenset()
    disconnected_since: tuple[tuple[Seat, float], ...] = ()
    warnings: tuple[tuple[Seat, int], ...] = ()  # (seat, turn) of every idle warning
    messages: tuple[Message, ...] = ()
    turns: tuple[TurnRecord, ...] = ()
    started_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    outcome: Outcome | None = None

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    @property
    def targets(self) -> frozenset[str]:
        return frozenset(self.config.targets)

    @property
    def current_turn(self) -> TurnRecord | None:
        return self.turns[-1] if self.turns else None

    def warnings_of(self, seat: Seat) -> int:
        return sum(1 for s, _ in self.warnings if s is seat)

    def warned_this_turn(self, seat: Seat) -> bool:
        return (seat, self.turn) in self.warnings

    def seat_is_present(self, seat: Seat) -> bool:
        if seat is Seat.LISTENER and self.listener_kind is ListenerKind.MODEL:
            return True
        return seat in self.connected

    def next_deadline(self) -> float | None:
        """The earliest time at which a Tick would change this state, or None."""
        if self.ended:
            return None
        times = [since + self.rules.disconnect_grace_seconds for _, since in self.disconnected_since]
        if self.phase is Phase.WAITING:
            times.append(self.created_at + self.rules.join_timeout_seconds)
        elif self.phase_deadline is not None:
            times.append(self.phase_deadline)
        return min(times) if times else None


def _replacer(cls):
    """``dataclasses.replace`` for ``cls`` (no ``__post_init__``, no ``init=False`` fields),
    generated once, as dataclasses generates ``__init__``: it sets each field on a new object
    like the frozen ``__init__`` does, without building keyword arguments and looking the
    fields up on every call (13 µs a GameState, against 4). Not through ``__dict__``: that
    would give every state a dict of its own, one more object for the collector to scan."""
    names = [f.name for f in dataclasses.fields(cls)]
    lines = [f"    _set(new, {n!r}, changes[{n!r}] if {n!r} in changes else obj.{n})" for n in names]
    source = "def replace(obj, changes):\n    new = _new(cls)\n" + "\n".join(lines) + "\n    return new\n"
    namespace = {"_set": object.__setattr__, "_new": object.__new__, "cls": cls}
    exec(source, namespace)  # noqa: S102 - field names of our own dataclasses only
    return frozenset(names), namespace["replace"]


_REPLACERS = {cls: _replacer(cls) for cls in (GameState, TurnRecord)}


def _replace(obj, **changes):
    """``dataclasses.replace(obj, **changes)`` for the states that ``evolve`` copies for every
    event the live server commits."""
    fields, replace = _REPLACERS[type(obj)]
    if not fields.issuperset(changes):
        raise TypeError(f"{type(obj).__name__} has no field {sorted(set(changes) - fields)[0]!r}")
    return replace(obj, changes)


def _replace_last_turn(state: GameState, **changes) -> tuple[TurnRecord, ...]:
    return state.turns[:-1] + (_replace(state.turns[-1], **changes),)


def _required_seats(state: GameState) -> frozenset[Seat]:
    if state.listener_kind is ListenerKind.MODEL:
        return frozenset({Seat.SPEAKER})
    return frozenset({Seat.SPEAKER, Seat.LISTENER})


# ---------------------------------------------------------------- evolve


def new_game(event: GameCreated) -> GameState:
    event.config.check()
    return GameState(
        game_id=event.game_id,
        config=event.config,
        rules=event.rules,
        listener_kind=event.listener_kind,
        created_at=event.at,
        joined=frozenset({Seat.LISTENER}) if event.listener_kind is ListenerKind.MODEL else frozenset(),
    )


def evolve(state: GameState, event: Event) -> GameState:
    """Fold one event into the state. Events are facts: no validation here."""
    s = state
    r = s.rules
    v = s.version + 1
    match event:
        case PlayerJoined(seat=seat):
            return _replace(
                s, version=v, joined=s.joined | {seat}, connected=s.connected | {seat}
            )
        case PlayerReconnected(seat=seat):
            return _replace(
                s,
                version=v,
                connected=s.connected | {seat},
                disconnected_since=tuple(x for x in s.disconnected_since if x[0] is not seat),
            )
        case PlayerDisconnected(seat=seat, at=at):
            return _replace(
                s,
                version=v,
                connected=s.connected - {seat},
                disconnected_since=tuple(x for x in s.disconnected_since if x[0] is not seat)
                + ((seat, at),),
            )
        case TurnStarted(turn=turn, at=at):
            record = TurnRecord(turn=turn, started_at=at, selection_before=tuple(sorted(s.selection)))
            return _replace(
                s,
                version=v,
                phase=Phase.SPEAKING,
                turn=turn,
                phase_deadline=at + r.speaker_seconds,
                turns=s.turns + (record,),
                started_at=s.started_at if s.started_at is not None else at,
            )
        case UtteranceSent(turn=turn, text=text, auto=auto, at=at):
            started = s.turns[-1].started_at
            if s.listener_kind is ListenerKind.MODEL:
                deadline = at + r.model_turn_seconds
            else:
                deadline = max(started + r.turn_seconds, at + r.selection_seconds)
            return _replace(
                s,
                version=v,
                phase=Phase.SELECTING,
                phase_deadline=deadline,
                messages=s.messages + (Message(turn=turn, text=text, auto=auto, at=at),),
                turns=_replace_last_turn(s, utterance=text, auto_sent=auto, sent_at=at),
            )
        case SelectionToggled(tangram_id=tid, selected=selected):
            selection = s.selection | {tid} if selected else s.selection - {tid}
            clicks = s.turns[-1].clicks + ((tid, selected),)
            return _replace(
                s, version=v, selection=selection, turns=_replace_last_turn(s, clicks=clicks)
            )
        case SelectionSubmitted(selection=selection, auto=auto, at=at):
            return _replace(
                s,
                version=v,
                selection=frozenset(selection),
                phase_deadline=None,
                turns=_replace_last_turn(
                    s, selection_after=tuple(sorted(selection)), auto_submitted=auto, submitted_at=at
                ),
            )
        case IdleWarning(seat=seat, turn=turn, deadline=deadline):
            return _replace(
                s, version=v, phase_deadline=deadline, warnings=s.warnings + ((seat, turn),)
            )
        case GameEnded(reason=reason, outcome=outcome, at=at):
            return _replace(
                s,
                version=v,
                phase=Phase.ENDED,
                phase_deadline=None,
                ended_at=at,
                end_reason=reason,
                outcome=outcome,
            )
        case GameCreated():
            raise ValueError("game_created can only start a log")
    raise TypeError(f"unknown event {event!r}")


def replay(events: list[Event]) -> GameState:
    """Rebuild a game from its event log (the first event must be ``game_created``)."""
    if not events or not isinstance(events[0], GameCreated):
        raise ValueError("an event log starts with game_created")
    state = new_game(events[0])
    for event in events[1:]:
        state = evolve(state, event)
    return state


# ---------------------------------------------------------------- decide


def _end(state: GameState, reason: EndReason, at: float, note: str = "") -> GameEnded:
    if reason is EndReason.SUCCESS:
        outcome = Outcome.SUCCESSFUL
    elif reason is EndReason.MAX_TURNS:
        outcome = Outcome.UNSUCCESSFUL
    else:
        outcome = Outcome.ABORTED
    return GameEnded(reason=reason, outcome=outcome, at=at, note=note)


def _after_submit(state: GameState, selection: frozenset[str], at: float) -> list[Event]:
    """What follows a submitted selection: success, the last turn's end, or the next turn."""
    if selection == state.targets:
        return [_end(state, EndReason.SUCCESS, at)]
    if state.turn >= state.rules.max_turns:
        return [_end(state, EndReason.MAX_TURNS, at)]
    return [TurnStarted(turn=state.turn + 1, at=at)]


def _submit(state: GameState, at: float, auto: bool) -> list[Event]:
    submitted = SelectionSubmitted(
        turn=state.turn, selection=tuple(sorted(state.selection)), auto=auto, at=at
    )
    return [submitted, *_after_submit(state, state.selection, at)]


def _idle(state: GameState, seat: Seat, at: float) -> Event:
    r = state.rules
    if r.idle_policy == "end" or state.warnings_of(seat) >= r.max_idle_warnings:
        return _end(state, IDLE_END[seat], at)
    return IdleWarning(seat=seat, turn=state.turn, deadline=at + r.idle_extension_seconds, at=at)


def _tick_once(state: GameState, cmd: Tick) -> list[Event]:
    """Events for the earliest deadline that has passed at ``cmd.at`` (empty when none)."""
    at = cmd.at
    r = state.rules
    # Deadlines fire in time order: an expired grace wins only if it ran out no later than the
    # phase's own deadline (join timeout while waiting).
    if state.phase is Phase.WAITING:
        phase_due: float | None = state.created_at + r.join_timeout_seconds
    else:
        phase_due = state.phase_deadline
    for seat, since in sorted(state.disconnected_since, key=lambda x: x[1]):
        grace_end = since + r.disconnect_grace_seconds
        if at >= grace_end and (phase_due is None or at < phase_due or grace_end <= phase_due):
            return [_end(state, DISCONNECT_END[seat], at)]
    if state.phase is Phase.WAITING:
        if at >= state.created_at + r.join_timeout_seconds:
            missing = sorted(_required_seats(state) - state.joined)
            return [_end(state, EndReason.JOIN_TIMEOUT, at, note=" ".join(missing))]
        return []
    if state.phase_deadline is None or at < state.phase_deadline:
        return []
    if state.phase is Phase.SPEAKING:
        draft = _clean_utterance(cmd.speaker_draft, r)
        if draft:
            return [UtteranceSent(turn=state.turn, text=draft, auto=True, at=at)]
        return [_idle(state, Seat.SPEAKER, at)]
    if state.phase is Phase.SELECTING:
        if state.listener_kind is ListenerKind.MODEL:
            return [_end(state, EndReason.MODEL_UNAVAILABLE, at)]
        if state.turns[-1].clicks:
            return _submit(state, at, auto=True)
        return [_idle(state, Seat.LISTENER, at)]
    return []


def _clean_utterance(text: str, rules: GameRules) -> str:
    clean = " ".join(text.split())[: rules.max_utterance_chars].rstrip()
    return clean if has_visible_text(clean) else ""


# Letters and symbols that draw nothing (Hangul fillers, the blank Braille pattern).
_BLANK_GRAPHEMES = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_text(text: str) -> bool:
    """True when ``text`` has a character a reader can see: a letter, digit, punctuation mark or
    symbol. Whitespace, format characters (zero-width spaces and joiners, U+2060, U+FEFF),
    controls, lone combining marks and unassigned or private code points draw nothing, so a
    message made only of them would use a turn while the listener sees an empty line."""
    return any(
        unicodedata.category(ch)[0] in "LNPS" and ch not in _BLANK_GRAPHEMES for ch in text
    )


def decide(state: GameState, cmd: Command) -> list[Event] | Rejection:
    """Validate ``cmd`` against ``state``: the events it causes, or why it changes nothing."""
    if isinstance(cmd, Tick):
        events: list[Event] = []
        s = state
        for _ in range(8):  # a few deadlines can pass at once (e.g. after a long outage)
            if s.ended:
                break
            step = _tick_once(s, cmd)
            if not step:
                break
            for e in step:
                s = evolve(s, e)
            events.extend(step)
        return events
    if state.ended:
        return Rejection("game_ended", "The game has ended.")
    match cmd:
        case Join(seat=seat, at=at):
            if seat not in state.joined:
                events = [PlayerJoined(seat=seat, at=at)]
                if state.phase is Phase.WAITING and _required_seats(state) <= state.joined | {seat}:
                    events.append(TurnStarted(turn=1, at=at))
                return events
            if seat not in state.connected and not (
                seat is Seat.LISTENER and state.listener_kind is ListenerKind.MODEL
            ):
                return [PlayerReconnected(seat=seat, at=at)]
            return []
        case Disconnect(seat=seat, at=at):
            if seat in state.connected:
                return [PlayerDisconnected(seat=seat, at=at)]
            return []
        case Leave(seat=seat, at=at):
            return [_end(state, LEAVE_END[seat], at)]
        case AdminEnd(at=at, note=note, reason=reason):
            if reason in (EndReason.SUCCESS, EndReason.MAX_TURNS):
                return Rejection("invalid_end_reason", f"A game cannot be ended with {reason}.")
            return [_end(state, reason, at, note=note)]
        case SendUtterance(seat=seat, text=text, at=at, verbatim=verbatim):
            if seat is not Seat.SPEAKER:
                return Rejection("not_your_seat", "Only the speaker can send messages.")
            if state.phase is not Phase.SPEAKING:
                return Rejection("not_your_turn", "You can send one message per turn; wait for the listener.")
            # the bound applies to the message as sent
            clean = text if verbatim else " ".join(text.split())
            if not has_visible_text(clean):
                return Rejection("empty_utterance", "The message is empty.")
            if len(clean) > state.rules.max_utterance_chars:
                return Rejection(
                    "utterance_too_long",
                    f"Messages are limited to {state.rules.max_utterance_chars} characters.",
                )
            return [UtteranceSent(turn=state.turn, text=clean, at=at)]
        case Click(seat=seat, tangram_id=tid, at=at):
            if seat is not Seat.LISTENER:
                return Rejection("not_your_seat", "Only the listener can select images.")
            if tid not in state.config.context:
                return Rejection("unknown_tangram", "That image is not part of this game.")
            if state.phase is not Phase.SELECTING:
                return Rejection("not_your_turn", "Wait for the speaker's message before selecting.")
            return [
                SelectionToggled(
                    turn=state.turn, tangram_id=tid, selected=tid not in state.selection, at=at
                )
            ]
        case Submit(seat=seat, at=at):
            if seat is not Seat.LISTENER:
                return Rejection("not_your_seat", "Only the listener can submit a selection.")
            if state.phase is not Phase.SELECTING:
                return Rejection("not_your_turn", "Wait for the speaker's message before submitting.")
            return _submit(state, at, auto=False)
    raise TypeError(f"unknown command {cmd!r}")


def step(state: GameState, cmd: Command) -> tuple[GameState, list[Event] | Rejection]:
    """Decide and evolve in one go (the shape bots, tests and in-process drivers use)."""
    result = decide(state, cmd)
    if isinstance(result, Rejection):
        return state, result
    for event in result:
        state = evolve(state, event)
    return state, result


# ---------------------------------------------------------------- pay


@dataclass(frozen=True)
class Pay:
    base_cents: int
    bonus_cents: int
    success_cents: int
    correct: int = 0
    wrong: int = 0
    minutes: float = 0.0

    @property
    def total_cents(self) -> int:
        return self.base_cents + self.bonus_cents + self.success_cents


def base_pay(rules: GameRules, seconds: float) -> Pay:
    """Pay for time spent without a finished game (a lobby timeout, for instance)."""
    minutes = max(0.0, seconds) / 60.0
    return Pay(base_cents=round(minutes * rules.base_cents_per_minute), bonus_cents=0, success_cents=0, minutes=minutes)


def forfeits(state: GameState) -> frozenset[Seat]:
    """The seats that ended an ended game by walking away: the seat that left, went idle past
    its warnings or stayed disconnected, or never joined. They get no completion code and no
    game pay (docs/operators.md, "What each ending pays"); their partner is paid in full."""
    reason = state.end_reason
    for seat in Seat:
        if reason in (LEAVE_END[seat], IDLE_END[seat], DISCONNECT_END[seat]):
            return frozenset({seat})
    if reason is EndReason.JOIN_TIMEOUT:
        return _required_seats(state) - state.joined
    return frozenset()


def game_pay(state: GameState) -> Pay:
    """Pay owed to each player of an ended game: base per minute + net correct + success.

    Net correct is green minus red in the final selection, floored at 0 (docs/game.md).
    """
    r = state.rules
    start = state.created_at
    end = state.ended_at if state.ended_at is not None else start
    minutes = max(0.0, end - start) / 60.0
    correct = len(state.selection & state.targets)
    wrong = len(state.selection - state.targets)
    return Pay(
        base_cents=round(minutes * r.base_cents_per_minute),
        bonus_cents=max(0, correct - wrong) * r.bonus_cents_per_correct,
        success_cents=r.success_bonus_cents if state.outcome is Outcome.SUCCESSFUL else 0,
        correct=correct,
        wrong=wrong,
        minutes=minutes,
    )
