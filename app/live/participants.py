"""Crowdworkers: arrival from a study link, consent, game limits, pay and completion codes.

Worker ids from Prolific or MTurk are personal data: only a keyed hash (HMAC-SHA256 with a
server secret) is stored, which still lets us recognise a returning worker.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from urllib.parse import quote
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import BlockedWorker, Participant
from app.game.rules import Pay

ACTIVE = ("arrived", "consented", "waiting", "in_game")


class Status:
    ARRIVED = "arrived"
    CONSENTED = "consented"
    WAITING = "waiting"
    IN_GAME = "in_game"
    RELEASED = "released"  # let go without a finished game (lobby timeout, partner left…)
    COMPLETED = "completed"  # played a game to its end
    FORFEITED = "forfeited"  # left, went idle or never joined: no code, no game pay


@dataclass(frozen=True)
class StudyArrival:
    """The crowd-platform parameters of a study link (all optional: local test mode)."""

    platform: str
    worker_id: str
    study_id: str | None = None
    session_id: str | None = None
    assignment_id: str | None = None
    hit_id: str | None = None

    @property
    def preview(self) -> bool:
        return self.assignment_id == "ASSIGNMENT_ID_NOT_AVAILABLE"

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "StudyArrival":
        if params.get("PROLIFIC_PID"):
            return cls(
                platform="prolific",
                worker_id=params["PROLIFIC_PID"],
                study_id=params.get("STUDY_ID"),
                session_id=params.get("SESSION_ID"),
            )
        if params.get("workerId") or params.get("assignmentId"):
            return cls(
                platform="mturk",
                worker_id=params.get("workerId", ""),
                assignment_id=params.get("assignmentId"),
                hit_id=params.get("hitId"),
            )
        # Local test mode: every visit is a fresh worker unless a name is given.
        platform = params.get("platform", "local")
        if platform not in ("local", "bot"):
            platform = "local"
        return cls(platform=platform, worker_id=params.get("worker") or uuid.uuid4().hex)


@dataclass(frozen=True)
class Refusal:
    code: str  # blocked | game_limit | preview | bad_request
    message: str


def worker_hash(key: str, platform: str, worker_id: str) -> str:
    return hmac.new(key.encode(), f"{platform}:{worker_id}".encode(), hashlib.sha256).hexdigest()


def new_code() -> str:
    return "MR-" + secrets.token_hex(4).upper()


async def arrive(
    session: AsyncSession, arrival: StudyArrival, hash_key: str, max_games: int
) -> Participant | Refusal:
    """Register a visit, or say why this worker cannot play. A returning active worker resumes."""
    if arrival.preview:
        return Refusal("preview", "This is a preview. Accept the HIT to start playing.")
    if not arrival.worker_id:
        return Refusal("bad_request", "The study link has no worker id.")
    h = worker_hash(hash_key, arrival.platform, arrival.worker_id)
    blocked = await session.get(BlockedWorker, h)
    if blocked is not None:
        return Refusal("blocked", "Your worker id cannot take part in this study. " + blocked.reason)
    # One statement, so one snapshot: the active visit to resume, or how many visits there
    # were. Every earlier visit counts toward the cap: games (whatever their end) and paid
    # releases. The unique (worker_hash, attempt) constraint makes racing joins of one worker
    # collide, so the cap holds in the database itself (see join_worker, which retries).
    visits = (
        await session.execute(
            select(Participant)
            .where(Participant.worker_hash == h)
            .order_by(Participant.created_at.desc())
        )
    ).scalars().all()
    active = next((v for v in visits if v.status in ACTIVE), None)
    if active is not None:
        return active
    done = len(visits)
    last = max((v.attempt or 0 for v in visits), default=0)
    if max_games and done >= max_games:
        return Refusal(
            "game_limit",
            f"You have already played the maximum of {max_games} games in this study. Thank you!",
        )
    p = Participant(
        id=uuid.uuid4().hex,
        platform=arrival.platform,
        worker_hash=h,
        study_id=arrival.study_id,
        session_id=arrival.session_id,
        assignment_id=arrival.assignment_id,
        hit_id=arrival.hit_id,
        status=Status.ARRIVED,
        created_at=time.time(),
        attempt=max(done, last) + 1,
    )
    session.add(p)
    await session.flush()
    return p


async def join_worker(db, arrival: StudyArrival, hash_key: str, max_games: int) -> Participant | Refusal:
    """:func:`arrive` in its own transaction, retried when a racing join of the same worker took
    the same attempt number (the loser then resumes the winner's visit, or is refused)."""
    for _ in range(8):
        try:
            async with db.session() as s, s.begin():
                return await arrive(s, arrival, hash_key, max_games)
        except IntegrityError:
            continue
    return Refusal("busy", "Too many simultaneous visits with this worker id; try again.")


async def release(
    session: AsyncSession, participant_id: str, reason: str, pay: Pay, now: float
) -> str:
    """Let a participant go without a game (lobby timeout, block), paid for their time; ``now`` is
    the caller's clock (the lobby's, injectable in tests), stamped as the finish time."""
    code = new_code()
    await session.execute(
        update(Participant)
        .where(Participant.id == participant_id)
        .values(
            status=Status.RELEASED,
            released_reason=reason,
            completion_code=code,
            pay_base_cents=pay.base_cents,
            pay_bonus_cents=0,
            pay_success_cents=0,
            finished_at=now,
            waiting_since=None,
        )
    )
    return code


PROLIFIC_COMPLETE = "https://app.prolific.com/submissions/complete?cc="


def completion_redirect(prolific_code: str, earned_code: str | None) -> str | None:
    """The Prolific completion link, for a participant who earned a completion code only: the
    study's code in it is what Prolific pays on, so it is never in a page before the end."""
    if not prolific_code or not earned_code:
        return None
    return PROLIFIC_COMPLETE + quote(prolific_code, safe="")


def pay_of(p: Participant) -> Pay:
    return Pay(
        base_cents=p.pay_base_cents, bonus_cents=p.pay_bonus_cents, success_cents=p.pay_success_cents
    )
