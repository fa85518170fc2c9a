"""The wire protocol: every websocket frame, as pydantic models discriminated by ``type``.

The browser client (static/game.js), the server, the bots and the load generator all speak
exactly these frames. The server is authoritative: clients send intentions, the server answers
with the whole view of the game for that seat after every change.

Client -> server
  hello            {token}                 first frame of every connection (join or resume)
  send_utterance   {version, text}         speaker: this turn's message
  draft            {text}                  speaker: text typed so far (auto-sent at the deadline)
  click            {version, tangram_id}   listener: toggle one image
  submit           {version}               listener: done with this turn
  leave            {}                      quit the game (the partner is released with a code)
  ping             {nonce}                 keep-alive / latency probe

Server -> client
  welcome  lobby  state  released  error  pong

Every ``error`` frame carries one of ``ERROR_CODES`` (tests/test_error_codes.py triggers each one
over a real socket; a code no path can produce does not belong in the list).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter
from pydantic_core import to_json

from app.game.rules import (
    EndReason,
    GameState,
    Outcome,
    Pay,
    Phase,
    Seat,
    forfeits,
)

MAX_FRAME_BYTES = 8192
MAX_UTTERANCE_CHARS = 500  # hard protocol bound; games may set a lower one in their rules


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("text may not contain NUL characters")
    return text


Text = Annotated[str, AfterValidator(_no_nul)]  # PostgreSQL text cannot hold NUL


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- client -> server


class HelloFrame(_Frame):
    type: Literal["hello"] = "hello"
    token: str = Field(max_length=1024)


class UtteranceFrame(_Frame):
    type: Literal["send_utterance"] = "send_utterance"
    version: int
    text: Text = Field(max_length=MAX_UTTERANCE_CHARS)


class DraftFrame(_Frame):
    type: Literal["draft"] = "draft"
    text: Text = Field(max_length=MAX_UTTERANCE_CHARS)


class ClickFrame(_Frame):
    type: Literal["click"] = "click"
    version: int
    tangram_id: str = Field(max_length=200)


class SubmitFrame(_Frame):
    type: Literal["submit"] = "submit"
    version: int


class LeaveFrame(_Frame):
    type: Literal["leave"] = "leave"


class PingFrame(_Frame):
    type: Literal["ping"] = "ping"
    nonce: str = Field(default="", max_length=100)


ClientFrame = Annotated[
    Union[HelloFrame, UtteranceFrame, DraftFrame, ClickFrame, SubmitFrame, LeaveFrame, PingFrame],
    Field(discriminator="type"),
]
CLIENT_FRAME: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


# ---------------------------------------------------------------- server -> client


class PayView(BaseModel):
    base_cents: int
    bonus_cents: int
    success_cents: int
    total_cents: int
    correct: int = 0
    wrong: int = 0

    @classmethod
    def of(cls, pay: Pay) -> "PayView":
        return cls(
            base_cents=pay.base_cents,
            bonus_cents=pay.bonus_cents,
            success_cents=pay.success_cents,
            total_cents=pay.total_cents,
            correct=pay.correct,
            wrong=pay.wrong,
        )


class TileView(BaseModel):
    tangram_id: str
    selected: bool
    target: bool | None = None  # only on the speaker's screen, and for both once the game ends


class MessageView(BaseModel):
    turn: int
    text: str
    auto: bool = False


class GameView(BaseModel):
    """Everything one seat may see of a game, in that seat's own image order."""

    game_id: str
    seat: Seat
    version: int
    phase: Phase
    turn: int
    max_turns: int
    tiles: list[TileView]
    messages: list[MessageView]
    # The speaker sees the last submitted selection framed green/red; the listener a neutral note.
    last_submitted: list[str] | None = None
    turn_submitted: bool = False
    deadline: float | None = None  # server epoch seconds at which the current phase ends
    speaker_deadline: float | None = None
    server_time: float
    idle_warning: bool = False  # this seat was warned in the current turn
    partner_connected: bool = True
    listener_kind: str = "human"
    max_utterance_chars: int
    end_reason: EndReason | None = None
    outcome: Outcome | None = None
    pay: PayView | None = None
    completion_code: str | None = None
    redirect_url: str | None = None  # the platform's completion link, sent with an earned code only
    forfeited: bool = False  # this seat walked away: no completion code (docs/operators.md)
    cause: str | None = None  # type of the event that produced this view

    @classmethod
    def of(cls, state: GameState, seat: Seat, now: float, **extra: Any) -> "GameView":
        """``view_data`` validated (its keyword arguments: cause, pay, completion_code, redirect_url)."""
        return cls.model_validate(view_data(state, seat, now, **extra))


def view_data(
    state: GameState,
    seat: Seat,
    now: float,
    *,
    cause: str | None = None,
    pay: Pay | None = None,
    completion_code: str | None = None,
    redirect_url: str | None = None,
) -> dict:
    """What ``seat`` may see of ``state``, as plain data: the one definition of a seat's view
    (``GameView.of`` validates it; ``state_frame_json`` sends it without validating)."""
    order = state.config.speaker_order if seat is Seat.SPEAKER else state.config.listener_order
    show_targets = seat is Seat.SPEAKER or state.ended
    selection = state.selection
    if show_targets:
        targets = state.targets
        tiles = [{"tangram_id": t, "selected": t in selection, "target": t in targets} for t in order]
    else:
        tiles = [{"tangram_id": t, "selected": t in selection, "target": None} for t in order]
    current = state.current_turn
    last = None
    for t in reversed(state.turns):
        if t.selection_after is not None:
            last = list(t.selection_after)
            break
    forfeited = state.ended and seat in forfeits(state)
    pay_view = None
    if pay is not None and show_targets and not forfeited:
        pay_view = {
            "base_cents": pay.base_cents, "bonus_cents": pay.bonus_cents,
            "success_cents": pay.success_cents, "total_cents": pay.total_cents,
            "correct": pay.correct, "wrong": pay.wrong,
        }
    return {
        "game_id": state.game_id,
        "seat": seat.value,
        "version": state.version,
        "phase": state.phase.value,
        "turn": state.turn,
        "max_turns": state.rules.max_turns,
        "tiles": tiles,
        "messages": [{"turn": m.turn, "text": m.text, "auto": m.auto} for m in state.messages],
        "last_submitted": last,
        "turn_submitted": current is not None and current.selection_after is not None,
        "deadline": state.phase_deadline,
        "speaker_deadline": current.started_at + state.rules.speaker_seconds if current is not None else None,
        "server_time": now,
        "idle_warning": state.warned_this_turn(seat) and not state.ended,
        "partner_connected": state.seat_is_present(seat.partner),
        "listener_kind": state.listener_kind.value,
        "max_utterance_chars": state.rules.max_utterance_chars,
        "end_reason": state.end_reason.value if state.end_reason is not None else None,
        "outcome": state.outcome.value if state.outcome is not None else None,
        "pay": pay_view,
        "completion_code": completion_code,
        "redirect_url": redirect_url if completion_code else None,
        "forfeited": forfeited,
        "cause": cause,
    }


def state_frame_json(state: GameState, seat: Seat, now: float, **view: Any) -> str:
    """``StateFrame(view=GameView.of(...)).model_dump_json()`` without the models: every
    committed action sends one per seat, and validating a dozen models for each was a tenth
    of the server's CPU at 500 games. tests/test_rules_properties.py holds the two equal."""
    frame = {"type": "state", "view": view_data(state, seat, now, **view)}
    return to_json(frame).decode()  # compact, as the models' JSON


class WelcomeFrame(_Frame):
    type: Literal["welcome"] = "welcome"
    participant_id: str
    status: str  # waiting | in_game | released | completed


class LobbyFrame(_Frame):
    type: Literal["lobby"] = "lobby"
    waiting_seconds: float
    timeout_seconds: float
    on_timeout: str  # "model" (play with a model listener) or "release" (paid, with a code)
    waiting_players: int


class StateFrame(_Frame):
    type: Literal["state"] = "state"
    view: GameView


class ReleasedFrame(_Frame):
    """The participant leaves without (finishing) a game, paid, with a completion code."""

    type: Literal["released"] = "released"
    reason: str
    message: str
    completion_code: str
    pay: PayView
    redirect_url: str | None = None  # the platform's completion link (with the code only)


# The codes of error frames. The connection: before or around hello.
ErrorCode = Literal[
    "too_many_connections",  # this address holds the most connections allowed (then closed)
    "hello_required",  # the first frame (or none within the hello timeout) was not hello
    "bad_token",  # forged token, unknown participant, or another participant's token
    "consent_required",  # hello before the consent form was accepted
    "quiz_required",  # hello before the quiz was passed (when the server requires it)
    # Frames: refused before they reach a game.
    "binary_frame",
    "frame_too_large",
    "malformed",  # not JSON
    "unknown_type",
    "invalid_frame",  # a known type with missing or wrong fields
    "utterance_too_long",  # also from the rules, when a game sets a lower bound
    "rate_limited",
    "not_in_game",  # a game action from a connection not seated in a game
    # Game actions refused by the hub or the rules engine (nothing changes).
    "unknown_game",
    "stale_version",
    "busy",  # the game was written by others six times in a row while deciding
    "game_ended",
    "not_your_seat",
    "not_your_turn",
    "empty_utterance",
    "unknown_tangram",
]
ERROR_CODES: tuple[str, ...] = ErrorCode.__args__


class ErrorFrame(_Frame):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    version: int | None = None  # the current state version, for stale actions


class PongFrame(_Frame):
    type: Literal["pong"] = "pong"
    nonce: str = ""
    server_time: float


ServerFrame = Annotated[
    Union[WelcomeFrame, LobbyFrame, StateFrame, ReleasedFrame, ErrorFrame, PongFrame],
    Field(discriminator="type"),
]
SERVER_FRAME: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
