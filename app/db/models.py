"""SQLAlchemy 2 models. ``game_events`` is the append-only source of truth; the other game tables
are projections of it, rebuilt and checked by ``app.db.checker``.

Times are stored as epoch seconds (double precision), the same clock the rules engine uses.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")
MAX_INT = 2**31 - 1  # the largest value of an INTEGER column (PostgreSQL refuses more)
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only


class Base(DeclarativeBase):
    pass


class Secret(Base):
    """Server-wide secrets made once and shared by every process (signing and hashing keys)."""

    __tablename__ = "secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Game(Base):
    __tablename__ = "games"
    # The next config of a system's queue is one index lookup, however many games were played.
    __table_args__ = (Index("ix_games_config_queue", "system", "round", "source", "config_index"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # live | ended
    phase: Mapped[str] = mapped_column(String(16))
    turn: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer)  # seq of the last event
    listener_kind: Mapped[str] = mapped_column(String(16))
    system: Mapped[str | None] = mapped_column(String(64), index=True)
    round: Mapped[int | None] = mapped_column(Integer)
    checkpoint: Mapped[str | None] = mapped_column(String(200))
    split: Mapped[str | None] = mapped_column(String(16))
    config_index: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSONType)
    rules: Mapped[dict] = mapped_column(JSONType)
    selection: Mapped[list] = mapped_column(JSONType, default=list)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float)
    next_deadline: Mapped[float | None] = mapped_column(Float, index=True)
    end_reason: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(16))
    speaker_draft: Mapped[str] = mapped_column(Text, default="")
    speaker_id: Mapped[str | None] = mapped_column(String(32))
    listener_id: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16), default="live")  # live | imported


class ConfigQueue(Base):
    """The next config index of each (system, round) queue of live games: claimed by one
    statement that increments it, so that creations never wait for each other. A creation
    that fails after its claim leaves its index unplayed, as an abandoned game does."""

    __tablename__ = "config_queues"
    queue: Mapped[str] = mapped_column(String(100), primary_key=True)  # "system/round" ("/-": no round)
    next_index: Mapped[int] = mapped_column(Integer)


class GameEvent(Base):
    __tablename__ = "game_events"
    __table_args__ = (UniqueConstraint("game_id", "seq", name="uq_game_events_game_seq"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    game_id: Mapped[str] = mapped_column(String(32), ForeignKey("games.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[float] = mapped_column(Float)  # the server's clock when the event happened
    data: Mapped[dict] = mapped_column(JSONType)
    actor: Mapped[str | None] = mapped_column(String(16))  # speaker | listener | server | admin


class Turn(Base):
    __tablename__ = "turns"
    game_id: Mapped[str] = mapped_column(String(32), ForeignKey("games.id"), primary_key=True)
    turn: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    utterance: Mapped[str | None] = mapped_column(Text)
    auto_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    sent_at: Mapped[float | None] = mapped_column(Float)
    selection_before: Mapped[list] = mapped_column(JSONType)
    selection_after: Mapped[list | None] = mapped_column(JSONType)
    selected: Mapped[list] = mapped_column(JSONType)
    deselected: Mapped[list] = mapped_column(JSONType)
    clicks: Mapped[list] = mapped_column(JSONType)
    auto_submitted: Mapped[bool] = mapped_column(Boolean, default=False)
    submitted_at: Mapped[float | None] = mapped_column(Float)
    sec_until_send: Mapped[float | None] = mapped_column(Float)
    sec_until_submit: Mapped[float | None] = mapped_column(Float)


class Participant(Base):
    """A crowdworker visit. The platform worker id is kept only as a keyed hash."""

    __tablename__ = "participants"
    # a worker's n-th visit is attempt n: the per-worker limit holds under racing joins
    __table_args__ = (UniqueConstraint("worker_hash", "attempt", name="uq_participants_worker_attempt"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))  # prolific | mturk | local | bot
    worker_hash: Mapped[str] = mapped_column(String(64), index=True)
    study_id: Mapped[str | None] = mapped_column(String(128))
    session_id: Mapped[str | None] = mapped_column(String(128))
    assignment_id: Mapped[str | None] = mapped_column(String(128))
    hit_id: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    consented_at: Mapped[float | None] = mapped_column(Float)
    quiz_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    quiz_passed_at: Mapped[float | None] = mapped_column(Float)
    waiting_since: Mapped[float | None] = mapped_column(Float, index=True)
    game_id: Mapped[str | None] = mapped_column(String(32), index=True)
    seat: Mapped[str | None] = mapped_column(String(16))
    released_reason: Mapped[str | None] = mapped_column(String(32))
    completion_code: Mapped[str | None] = mapped_column(String(32))
    pay_base_cents: Mapped[int] = mapped_column(Integer, default=0)
    pay_bonus_cents: Mapped[int] = mapped_column(Integer, default=0)
    pay_success_cents: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[float | None] = mapped_column(Float)
    attempt: Mapped[int | None] = mapped_column(Integer)
    present_at: Mapped[float | None] = mapped_column(Float)  # a live lobby socket vouched for them


class AdminSessionRevoked(Base):
    """A dashboard session ended by logout, kept until its cookie would have expired anyway."""

    __tablename__ = "admin_sessions_revoked"
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float)


class BlockedWorker(Base):
    __tablename__ = "blocked_workers"
    worker_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[float] = mapped_column(Float)


class ListenerRequest(Base):
    """A model listener's pending turn, claimed by a policy worker under a lease."""

    __tablename__ = "listener_requests"
    __table_args__ = (
        UniqueConstraint("game_id", "turn", name="uq_listener_requests_game_turn"),
        Index("ix_listener_requests_pending", "status", "system"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    game_id: Mapped[str] = mapped_column(String(32), ForeignKey("games.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    system: Mapped[str] = mapped_column(String(64))
    checkpoint: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # pending | claimed | done | applied | failed
    created_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float)
    worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    action: Mapped[str | None] = mapped_column(String(200))
    prob_action: Mapped[float | None] = mapped_column(Float)
    prob_unconstrained: Mapped[float | None] = mapped_column(Float)
    latency_s: Mapped[float | None] = mapped_column(Float)
    model_input: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[float | None] = mapped_column(Float)


class ActionScore(Base):
    """π_deployed of one logged listener action under one checkpoint (docs/learning.md): the
    full-vocabulary, length-normalised probability at temperature 1 that RL and KTO read.

    Written by the worker when it serves the action (``source = "serve"``) and by
    ``multiref rescore`` (``"rescore"``), which also fills it for imported games (no request).
    ``checkpoint`` is a checkpoint id, ``adapter:<path>`` for an adapter folder, or ``base``."""

    __tablename__ = "action_scores"
    __table_args__ = (
        UniqueConstraint("game_id", "turn", "checkpoint", name="uq_action_scores_game_turn_ck"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    game_id: Mapped[str] = mapped_column(String(32), ForeignKey("games.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    checkpoint: Mapped[str] = mapped_column(String(300))
    action: Mapped[str] = mapped_column(String(200))
    prob_deployed: Mapped[float] = mapped_column(Float)
    logp_sum: Mapped[float] = mapped_column(Float)  # Σ_t log p(a_t), full vocabulary, T = 1
    num_tokens: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # serve | rescore
    created_at: Mapped[float] = mapped_column(Float)


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"
    worker_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(128))
    systems: Mapped[list] = mapped_column(JSONType)
    checkpoints: Mapped[dict] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    beat_at: Mapped[float] = mapped_column(Float)


class System(Base):
    """A listener policy deployed under a name (``B-SUP``), or the special system ``human``."""

    __tablename__ = "systems"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # model | human
    share: Mapped[float] = mapped_column(Float, default=1.0)  # traffic share among active systems
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    quota: Mapped[int | None] = mapped_column(Integer)  # completed games per round, then stop
    created_at: Mapped[float] = mapped_column(Float)


class Checkpoint(Base):
    """One deployed checkpoint of a model system: a base model plus an optional LoRA adapter.

    Games record the checkpoint they started with and keep it; a new active checkpoint of a
    system serves new games only.
    """

    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    system: Mapped[str] = mapped_column(String(64), ForeignKey("systems.name"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    base: Mapped[str] = mapped_column(String(500))
    adapter: Mapped[str | None] = mapped_column(String(1000))
    manifest: Mapped[dict] = mapped_column(JSONType, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    deployed_by: Mapped[str | None] = mapped_column(String(64))


class Round(Base):
    """A deployment period. Games carry the round they were played in."""

    __tablename__ = "rounds"
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(Text, default="")
    current: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditEntry(Base):
    """Every operator or admin action: who (a token fingerprint, never the token), what, when."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict] = mapped_column(JSONType, default=dict)


class FeedbackLabel(Base):
    """A retrospective label of one listener action, decoded from the speaker's next utterance."""

    __tablename__ = "feedback_labels"
    __table_args__ = (
        UniqueConstraint("game_id", "turn", "decoder", "decoder_version", name="uq_feedback_label"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    game_id: Mapped[str] = mapped_column(String(32), ForeignKey("games.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    decoder: Mapped[str] = mapped_column(String(32))  # binary | ternary
    decoder_version: Mapped[str] = mapped_column(String(64))
    label: Mapped[int] = mapped_column(Integer)  # +1 | 0 | -1
    heuristic: Mapped[int | None] = mapped_column(Integer)  # from targets, evaluation only
    scores: Mapped[dict] = mapped_column(JSONType, default=dict)
    created_at: Mapped[float] = mapped_column(Float)


# ---------------------------------------------------------------- human review (annotation)


class AnnotationTask(Base):
    """A sample of turns of one round and system, to be labelled by people (issue 17)."""

    __tablename__ = "annotation_tasks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    system: Mapped[str] = mapped_column(String(64))
    round: Mapped[int | None] = mapped_column(Integer)
    sample_size: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    per_turn: Mapped[int] = mapped_column(Integer)  # annotators wanted per turn
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))


class AnnotationItem(Base):
    """One sampled turn of a task: a listener action that the speaker's next message answers."""

    __tablename__ = "annotation_items"
    __table_args__ = (UniqueConstraint("task_id", "game_id", "turn", name="uq_annotation_item"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(32), ForeignKey("annotation_tasks.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    game_id: Mapped[str] = mapped_column(String(32), ForeignKey("games.id"))
    turn: Mapped[int] = mapped_column(Integer)


class Annotator(Base):
    """A person's link to one task. Only the SHA-256 of the link's token is kept."""

    __tablename__ = "annotators"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(32), ForeignKey("annotation_tasks.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))


class HumanLabel(Base):
    """An item handed to an annotator, and their answers. The row is made when the item is
    shown (the assignment); ``answered_at`` is set by the action answer or a skip.
    Labels: feedback +1 positive / 0 neutral / −1 negative; action +1 correct / 0 partly /
    −1 wrong. ``feedback_revised``: the feedback answer was undone after the targets were shown,
    so the feedback label is no longer blind to them (kept, but left out of the figures)."""

    __tablename__ = "human_labels"
    __table_args__ = (UniqueConstraint("item_id", "annotator_id", name="uq_human_label"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(32), ForeignKey("annotation_tasks.id"), index=True)
    item_id: Mapped[int] = mapped_column(BigId, ForeignKey("annotation_items.id"), index=True)
    annotator_id: Mapped[str] = mapped_column(String(32), ForeignKey("annotators.id"), index=True)
    game_id: Mapped[str] = mapped_column(String(32))
    turn: Mapped[int] = mapped_column(Integer)
    assigned_at: Mapped[float] = mapped_column(Float)
    feedback: Mapped[int | None] = mapped_column(Integer)
    feedback_at: Mapped[float | None] = mapped_column(Float)
    action: Mapped[int | None] = mapped_column(Integer)
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    feedback_revised: Mapped[bool] = mapped_column(Boolean, default=False)
    answered_at: Mapped[float | None] = mapped_column(Float)
