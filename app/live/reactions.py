"""Lifecycle reactions of committed events, as data: what else a commit must write.

When events end a game, its players are paid and given completion codes (a seat that walked
away forfeits both) and a model listener's open requests are cancelled; when a speaker's
message reaches a model listener, a request for the model's turn is queued and the policy
workers are woken. :func:`react` computes these from (before, events, after) alone, so the
event store (``app.live.store``) writes them in the events' own transaction as plain
statements, the same for every database, and tests can check them against hand-written rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.game.rules import (
    Event,
    GameEnded,
    GameState,
    ListenerKind,
    Pay,
    Seat,
    UtteranceSent,
    forfeits,
    game_pay,
)
from app.live.participants import new_code as _new_code

NO_PAY = Pay(base_cents=0, bonus_cents=0, success_cents=0)


@dataclass(frozen=True)
class Settlement:
    """The participant row of one seat of an ended game (none for a model's seat: no row).

    ``completion_code`` is given to a participant that has none yet (an earlier code is kept);
    a forfeited seat loses its code and its pay."""

    seat: Seat
    finished_at: float | None
    forfeited: bool
    pay: Pay
    completion_code: str | None


@dataclass(frozen=True)
class ListenerTurn:
    """A pending request for the model listener's turn (system and checkpoint: the game's)."""

    turn: int
    created_at: float
    deadline: float


@dataclass(frozen=True)
class Reactions:
    settlements: tuple[Settlement, ...] = ()
    cancel_listener_requests: bool = False  # the game ended: open model turns are moot
    listener_turns: tuple[ListenerTurn, ...] = ()
    wake_listeners: bool = False  # tell the policy workers (a bus message in the transaction)

    def __bool__(self) -> bool:
        return bool(
            self.settlements or self.cancel_listener_requests or self.listener_turns or self.wake_listeners
        )


NONE = Reactions()


def react(
    before: GameState, events: list[Event], after: GameState, new_code: Callable[[], str] = _new_code
) -> Reactions:
    """The rows a commit of ``events`` (which took ``before`` to ``after``) must also write.

    ``new_code`` makes completion codes (injected so that tests can name them)."""
    del before  # every reaction so far follows from the events and the state they lead to
    model = after.listener_kind is ListenerKind.MODEL
    ended = any(isinstance(e, GameEnded) for e in events)
    sent = [e for e in events if isinstance(e, UtteranceSent)]
    wake = model and bool(sent)
    if ended:
        pay, lost = game_pay(after), forfeits(after)
        settlements = tuple(
            Settlement(seat, after.ended_at, True, NO_PAY, None)
            if seat in lost
            else Settlement(seat, after.ended_at, False, pay, new_code())
            for seat in Seat
        )
        return Reactions(settlements=settlements, cancel_listener_requests=model, wake_listeners=wake)
    if model and sent:
        turns = tuple(ListenerTurn(e.turn, e.at, after.phase_deadline or e.at) for e in sent)
        return Reactions(listener_turns=turns, wake_listeners=True)
    return NONE
