"""Human review of turns (issue 17): operators make annotation tasks on the dashboard, people
label the sampled turns through their own links.

Operator side (the dashboard's session cookie and CSRF forms, see ``app.web.dashboard``):

- ``GET  /admin/annotation``                       tasks with progress; the form for a new task
- ``POST /admin/annotation/tasks``                 a task: a system, a round, a sample of turns
                                                   (size, seed), annotators wanted per turn
- ``GET  /admin/annotation/{task}``                progress, annotators, agreement, decoder and
                                                   heuristic against the human majority
- ``POST /admin/annotation/{task}/annotators``     a new annotator link (its token is shown once;
                                                   only its SHA-256 is stored)
- ``GET  /admin/annotation/{task}/labels.jsonl|csv``  the labels with their turn rows
- ``GET  /api/admin/annotation[/{task}[/labels.jsonl]]``  the same as JSON for scripts (bearer)

Annotator side: the link is ``/annotate#TOKEN``; the page's script reads the token from the
fragment (never sent to the server, so never in a log) and calls ``/annotate/api/...`` with it
as a bearer token. An annotator token opens one task's labelling and nothing
else. The server decides what is shown: the targets of a turn are sent only after the
annotator has answered the feedback question for it, and answers are accepted only for the
annotator's current turn, in order (feedback, then action).

A turn is handed out when the annotator asks for one: their oldest unanswered turn (resume
later), else the first turn of the sample that they have not seen and that has fewer than
``per_turn`` annotators (skips do not count). The hand-out row is the label row
(``human_labels``), finished by the action answer or a skip.
"""

from __future__ import annotations

import csv
import io
import json
import random
import secrets
import time
import uuid
from collections import defaultdict

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select

from app.db.gamelog import load_state
from app.db.models import (
    AnnotationItem,
    AnnotationTask,
    Annotator,
    FeedbackLabel,
    Game,
    HumanLabel,
    Turn,
)
from app.web.auth import bearer, require_admin, token_digest
from app.web.dashboard import _checked_form, _headers, _page, _to_login, current_session

router = APIRouter()

FEEDBACK = {"positive": 1, "neutral": 0, "negative": -1}
ACTION = {"correct": 1, "partly": 0, "wrong": -1}
FEEDBACK_WORD = {v: k for k, v in FEEDBACK.items()}
ACTION_WORD = {v: k for k, v in ACTION.items()}
MAX_SAMPLE = 5000
MAX_PER_TURN = 20


# ---------------------------------------------------------------- tasks (operator side)


async def candidate_turns(s, system: str, round_: int | None) -> list[tuple[str, int]]:
    """(game, turn) of every listener action of the system's ended games in the round that the
    speaker's next message answers (the turns the feedback decoder labels)."""
    q = select(Game.id).where(Game.status == "ended")
    if system == "human":
        q = q.where(
            (Game.system == "human") | (Game.system.is_(None) & (Game.listener_kind == "human"))
        )
    else:
        q = q.where(Game.system == system)
    q = q.where(Game.round.is_(None) if round_ is None else Game.round == round_)
    ids = [g for (g,) in await s.execute(q)]
    out: list[tuple[str, int]] = []
    for k in range(0, len(ids), 500):
        rows = await s.execute(
            select(Turn.game_id, Turn.turn, Turn.utterance, Turn.selection_after).where(
                Turn.game_id.in_(ids[k : k + 500])
            )
        )
        by_game: dict[str, dict[int, tuple]] = defaultdict(dict)
        for gid, turn, utterance, after in rows:
            by_game[gid][turn] = (utterance, after)
        for gid, turns in by_game.items():
            for turn, (utterance, after) in turns.items():
                nxt = turns.get(turn + 1)
                if utterance is not None and after is not None and nxt and nxt[0] is not None:
                    out.append((gid, turn))
    return sorted(out)


async def create_task(
    db,
    *,
    system: str,
    round_: int | None,
    sample_size: int,
    seed: int,
    per_turn: int,
    name: str,
    actor: str,
) -> str:
    """A task over a seeded random sample of the round's turns; 422 if there is none to sample."""
    if not system:
        raise HTTPException(422, "Give a system (a system name, or human).")
    if not 1 <= sample_size <= MAX_SAMPLE:
        raise HTTPException(422, f"The sample size must be between 1 and {MAX_SAMPLE}.")
    if not 1 <= per_turn <= MAX_PER_TURN:
        raise HTTPException(422, f"Annotators per turn must be between 1 and {MAX_PER_TURN}.")
    async with db.session() as s, s.begin():
        turns = await candidate_turns(s, system, round_)
        if not turns:
            where = "without a round" if round_ is None else f"in round {round_}"
            raise HTTPException(
                422,
                f"No ended game of {system} {where} has a turn to review; "
                "check the system and round.",
            )
        sample = random.Random(seed).sample(turns, min(sample_size, len(turns)))
        task_id = uuid.uuid4().hex
        s.add(
            AnnotationTask(
                id=task_id,
                name=name or f"{system} round {'—' if round_ is None else round_}",
                system=system,
                round=round_,
                sample_size=len(sample),
                seed=seed,
                per_turn=per_turn,
                created_at=time.time(),
                created_by=actor,
            )
        )
        await s.flush()
        s.add_all(
            AnnotationItem(task_id=task_id, position=i, game_id=g, turn=t)
            for i, (g, t) in enumerate(sample)
        )
    return task_id


async def add_annotator(db, task_id: str, name: str, actor: str) -> str:
    """A new annotator of the task; returns the token of their link (never stored)."""
    token = secrets.token_urlsafe(24)
    async with db.session() as s, s.begin():
        if await s.get(AnnotationTask, task_id) is None:
            raise HTTPException(404, "Unknown annotation task.")
        count = (
            await s.execute(
                select(func.count()).select_from(Annotator).where(Annotator.task_id == task_id)
            )
        ).scalar_one()
        s.add(
            Annotator(
                id=uuid.uuid4().hex,
                task_id=task_id,
                name=(name or f"annotator {count + 1}")[:100],
                token_sha256=token_digest(token),
                created_at=time.time(),
                created_by=actor,
            )
        )
    return token


async def task_progress(s, task: AnnotationTask) -> dict:
    items = (
        await s.execute(
            select(func.count())
            .select_from(AnnotationItem)
            .where(AnnotationItem.task_id == task.id)
        )
    ).scalar_one()
    rows = (
        (await s.execute(select(HumanLabel).where(HumanLabel.task_id == task.id))).scalars().all()
    )
    done = [r for r in rows if r.answered_at is not None and not r.skipped]
    per_item: dict[int, int] = defaultdict(int)
    for r in done:
        per_item[r.item_id] += 1
    return {
        "task_id": task.id,
        "name": task.name,
        "system": task.system,
        "round": task.round,
        "seed": task.seed,
        "per_turn": task.per_turn,
        "turns": items,
        "labels": len(done),
        "skipped": sum(r.skipped for r in rows),
        "wanted": items * task.per_turn,
        "complete_turns": sum(1 for n in per_item.values() if n >= task.per_turn),
        "created_at": task.created_at,
    }


async def list_tasks(db) -> list[dict]:
    async with db.session() as s:
        tasks = (
            (await s.execute(select(AnnotationTask).order_by(AnnotationTask.created_at.desc())))
            .scalars()
            .all()
        )
        return [await task_progress(s, t) for t in tasks]


async def task_detail(db, task_id: str) -> dict | None:
    from learning.agreement import LabelRow, review

    async with db.session() as s:
        task = await s.get(AnnotationTask, task_id)
        if task is None:
            return None
        progress = await task_progress(s, task)
        annotators = (
            (
                await s.execute(
                    select(Annotator)
                    .where(Annotator.task_id == task_id)
                    .order_by(Annotator.created_at)
                )
            )
            .scalars()
            .all()
        )
        rows = (
            (
                await s.execute(
                    select(HumanLabel).where(HumanLabel.task_id == task_id).order_by(HumanLabel.id)
                )
            )
            .scalars()
            .all()
        )
        games = sorted({r.game_id for r in rows})
        decoded, heuristics = await _machine_labels(s, games)
    names = {a.id: a.name for a in annotators}
    people = []
    for a in annotators:
        mine = [r for r in rows if r.annotator_id == a.id]
        people.append(
            {
                "name": a.name,
                "labels": sum(r.answered_at is not None and not r.skipped for r in mine),
                "skipped": sum(r.skipped for r in mine),
                "last": max((r.answered_at for r in mine if r.answered_at), default=None),
            }
        )
    finished = [
        LabelRow(
            task.system,
            task.round,
            r.game_id,
            r.turn,
            names.get(r.annotator_id, r.annotator_id),
            None if r.feedback_revised else r.feedback,  # not blind to the targets: left out
            r.action,
        )
        for r in rows
        if r.answered_at is not None and not r.skipped
    ]
    figures = review(task.system, task.round, finished, decoded, heuristics) if finished else None
    return {"task": progress, "annotators": people, "review": figures.json() if figures else None}


async def _machine_labels(s, games: list[str]) -> tuple[dict, dict]:
    """The decoders' newest labels and the heuristic label of every turn of ``games``."""
    from learning.retrospect import heuristic_label

    decoded: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    heuristics: dict[tuple[str, int], int] = {}
    for k in range(0, len(games), 500):
        part = games[k : k + 500]
        labels = await s.execute(
            select(FeedbackLabel)
            .where(FeedbackLabel.game_id.in_(part))
            .order_by(FeedbackLabel.created_at, FeedbackLabel.id)
        )
        for lab in labels.scalars():
            decoded[(lab.game_id, lab.turn)][lab.decoder] = lab.label
        targets = {
            g: c.get("targets", [])
            for g, c in await s.execute(select(Game.id, Game.config).where(Game.id.in_(part)))
        }
        for t in (await s.execute(select(Turn).where(Turn.game_id.in_(part)))).scalars():
            if t.selection_after is not None:
                heuristics[(t.game_id, t.turn)] = heuristic_label(
                    t.selection_before, t.selection_after, targets[t.game_id]
                )
    return decoded, heuristics


async def export_rows(db, task_id: str) -> list[dict]:
    """One row per finished label (skips included, marked) with the turn it judges."""
    async with db.session() as s:
        task = await s.get(AnnotationTask, task_id)
        if task is None:
            raise HTTPException(404, "Unknown annotation task.")
        rows = (
            await s.execute(
                select(HumanLabel, Annotator.name)
                .join(Annotator, Annotator.id == HumanLabel.annotator_id)
                .where(HumanLabel.task_id == task_id, HumanLabel.answered_at.is_not(None))
                .order_by(HumanLabel.game_id, HumanLabel.turn, HumanLabel.id)
            )
        ).all()
        games = sorted({h.game_id for h, _ in rows})
        decoded, heuristics = await _machine_labels(s, games)
        states = {g: await load_state(s, g) for g in games}
        meta = (
            {g.id: g for g in (await s.execute(select(Game).where(Game.id.in_(games)))).scalars()}
            if games
            else {}
        )
    out = []
    for h, name in rows:
        state, game = states[h.game_id], meta[h.game_id]
        spoken = [t for t in state.turns if t.utterance is not None]
        index = next(i for i, t in enumerate(spoken) if t.turn == h.turn)
        record = spoken[index]
        out.append(
            {
                "task_id": task_id,
                "annotator": name,
                "annotator_id": h.annotator_id,
                "assigned_at": h.assigned_at,
                "feedback_at": h.feedback_at,
                "answered_at": h.answered_at,
                "skipped": h.skipped,
                "feedback": FEEDBACK_WORD.get(h.feedback) if h.feedback is not None else None,
                "feedback_revised": h.feedback_revised,
                "action_label": ACTION_WORD.get(h.action) if h.action is not None else None,
                "heuristic": heuristics.get((h.game_id, h.turn)),
                "decoded": decoded.get((h.game_id, h.turn), {}),
                "game_turn_id": f"{h.game_id}_{h.turn}",
                "game_id": h.game_id,
                "turn": h.turn,
                "policy_name": game.system
                or ("human" if game.listener_kind == "human" else "model"),
                "round": game.round,
                "chats": [t.utterance for t in spoken[: index + 1]],
                "chat_feedback": spoken[index + 1].utterance if index + 1 < len(spoken) else None,
                "context": list(state.config.listener_order),
                "targets": sorted(state.config.targets),
                "currently_selected": list(record.selection_before),
                "selected": list(record.selected),
                "deselected": list(record.deselected),
                "clicks": list(record.selection_after or ()),
            }
        )
    return out


def rows_csv(rows: list[dict]) -> str:
    """CSV of export rows; lists and dicts as JSON text in their cell."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                    for k, v in r.items()
                }
            )
    return buf.getvalue()


# ---------------------------------------------------------------- operator pages


def _int(value: str | None, field: str, default: int | None = None) -> int | None:
    raw = (value or "").strip()
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise HTTPException(422, f"{field} must be a whole number.") from exc


@router.get("/admin/annotation", include_in_schema=False)
async def tasks_page(request: Request):
    session = current_session(request)
    if session is None:
        return _to_login()
    tasks = await list_tasks(request.app.state.services.db)
    return _page(
        request,
        "annotate/tasks.html",
        {"csrf": session.csrf, "actor": session.actor, "tasks": tasks},
    )


@router.post("/admin/annotation/tasks", include_in_schema=False)
async def create_task_form(request: Request):
    session, form = await _checked_form(request)
    task_id = await create_task(
        request.app.state.services.db,
        system=form.get("system", "").strip()[:64],
        round_=_int(form.get("round"), "round"),
        sample_size=_int(form.get("sample_size"), "sample size", 100),
        seed=_int(form.get("seed"), "seed", 0),
        per_turn=_int(form.get("per_turn"), "annotators per turn", 2),
        name=form.get("name", "").strip()[:200],
        actor=session.actor,
    )
    return _headers(RedirectResponse(f"/admin/annotation/{task_id}", status_code=303))


async def _task_page(request: Request, task_id: str, session, new_link: str | None = None):
    detail = await task_detail(request.app.state.services.db, task_id)
    if detail is None:
        raise HTTPException(404, "Unknown annotation task.")
    return _page(
        request,
        "annotate/task.html",
        {"csrf": session.csrf, "actor": session.actor, "d": detail, "new_link": new_link},
    )


@router.get("/admin/annotation/{task_id}", include_in_schema=False)
async def task_page(task_id: str, request: Request):
    session = current_session(request)
    if session is None:
        return _to_login()
    return await _task_page(request, task_id, session)


@router.post("/admin/annotation/{task_id}/annotators", include_in_schema=False)
async def add_annotator_form(task_id: str, request: Request):
    session, form = await _checked_form(request)
    token = await add_annotator(
        request.app.state.services.db, task_id, form.get("name", "").strip(), session.actor
    )
    link = f"{str(request.base_url).rstrip('/')}/annotate#{token}"  # a fragment is never sent
    return await _task_page(request, task_id, session, new_link=link)


@router.get("/admin/annotation/{task_id}/labels.{fmt}", include_in_schema=False)
async def export_labels(task_id: str, fmt: str, request: Request):
    if current_session(request) is None:
        raise HTTPException(401, "Log in to the dashboard first.")
    if fmt not in ("jsonl", "csv"):
        raise HTTPException(404, "Export as labels.jsonl or labels.csv.")
    rows = await export_rows(request.app.state.services.db, task_id)
    if fmt == "jsonl":
        body, media = (
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
            "application/x-ndjson",
        )
    else:
        body, media = rows_csv(rows), "text/csv"
    response = Response(body, media_type=media)
    response.headers["Content-Disposition"] = f'attachment; filename="labels-{task_id[:8]}.{fmt}"'
    return _headers(response)


# ---------------------------------------------------------------- the same for scripts (bearer)

api = APIRouter(
    prefix="/api/admin/annotation", dependencies=[Depends(require_admin)], tags=["annotation"]
)


@api.get("")
async def api_tasks(request: Request) -> list[dict]:
    """Annotation tasks with their progress, newest first."""
    return await list_tasks(request.app.state.services.db)


@api.get("/{task_id}")
async def api_task(task_id: str, request: Request) -> dict:
    """A task's progress, annotators, agreement and decoder / heuristic figures."""
    detail = await task_detail(request.app.state.services.db, task_id)
    if detail is None:
        raise HTTPException(404, "Unknown annotation task.")
    return detail


@api.get("/{task_id}/labels.jsonl")
async def api_labels(task_id: str, request: Request) -> Response:
    """The task's labels with their turn rows, one JSON object a line."""
    rows = await export_rows(request.app.state.services.db, task_id)
    return Response(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
        media_type="application/x-ndjson",
    )


router.include_router(api)


# ---------------------------------------------------------------- annotator side


async def _annotator(request: Request, authorization: str | None) -> Annotator:
    token = bearer(authorization)
    if token is None:
        raise HTTPException(401, "Open your annotation link again.")
    async with request.app.state.services.db.session() as s:
        found = (
            await s.execute(select(Annotator).where(Annotator.token_sha256 == token_digest(token)))
        ).scalar_one_or_none()
    if found is None:
        raise HTTPException(
            401, "This annotation link is not valid; ask the operator for a new one."
        )
    return found


async def _current(s, me: Annotator, task: AnnotationTask, allocate: bool) -> HumanLabel | None:
    """The annotator's oldest unanswered turn, else (``allocate``) a new one from the sample."""
    mine = (
        await s.execute(
            select(HumanLabel)
            .where(HumanLabel.annotator_id == me.id, HumanLabel.answered_at.is_(None))
            .order_by(HumanLabel.id)
            .limit(1)
        )
    ).scalar_one_or_none()
    if mine is not None or not allocate:
        return mine
    item = await _next_item(s, me, task)
    if item is None:
        return None
    row = HumanLabel(
        task_id=task.id,
        item_id=item.id,
        annotator_id=me.id,
        game_id=item.game_id,
        turn=item.turn,
        assigned_at=time.time(),
        skipped=False,
    )
    s.add(row)
    await s.flush()
    return row


async def _open_items(s, me: Annotator, task: AnnotationTask) -> list[AnnotationItem]:
    items = (
        (
            await s.execute(
                select(AnnotationItem)
                .where(AnnotationItem.task_id == task.id)
                .order_by(AnnotationItem.position)
            )
        )
        .scalars()
        .all()
    )
    rows = (
        await s.execute(
            select(HumanLabel.item_id, HumanLabel.annotator_id, HumanLabel.skipped).where(
                HumanLabel.task_id == task.id
            )
        )
    ).all()
    taken: dict[int, int] = defaultdict(int)
    seen: set[int] = set()
    for item_id, annotator_id, skipped in rows:
        if annotator_id == me.id:
            seen.add(item_id)
        elif not skipped:
            taken[item_id] += 1
    return [i for i in items if i.id not in seen and taken[i.id] < task.per_turn]


async def _next_item(s, me: Annotator, task: AnnotationTask) -> AnnotationItem | None:
    # One hand-out at a time per task (PostgreSQL; SQLite has a single writer anyway).
    await s.execute(select(AnnotationTask.id).where(AnnotationTask.id == task.id).with_for_update())
    items = await _open_items(s, me, task)
    return items[0] if items else None


def _action_words(before, after, letters: dict[str, str]) -> str:
    selected = sorted(letters[t] for t in set(after) - set(before))
    deselected = sorted(letters[t] for t in set(before) - set(after))
    parts = ([f"selected {', '.join(selected)}"] if selected else []) + (
        [f"deselected {', '.join(deselected)}"] if deselected else []
    )
    return "; ".join(parts) or "changed nothing"


async def _item_view(s, row: HumanLabel) -> dict:
    state = await load_state(s, row.game_id)
    order = list(state.config.listener_order)
    letters = {t: chr(ord("A") + i) for i, t in enumerate(order)}
    turns = {t.turn: t for t in state.turns}
    record = turns[row.turn]
    before, after = set(record.selection_before), set(record.selection_after or ())
    # the targets only after the feedback answer (and, once seen, for good)
    show_targets = row.feedback is not None or row.feedback_revised
    targets = set(state.config.targets)
    tiles = [
        {
            "letter": letters[t],
            "image": f"/tangrams/{t}",
            "before": t in before,
            "after": t in after,
            "change": "selected"
            if t in after - before
            else "deselected"
            if t in before - after
            else None,
            "target": (t in targets) if show_targets else None,
        }
        for t in order
    ]
    dialogue = []
    for n in range(1, row.turn + 1):
        t = turns.get(n)
        if t is None or t.utterance is None:
            continue
        dialogue.append(
            {
                "turn": n,
                "speaker": t.utterance,
                "listener": _action_words(t.selection_before, t.selection_after, letters)
                if t.selection_after is not None
                else None,
                "current": n == row.turn,
            }
        )
    nxt = turns.get(row.turn + 1)
    item = await s.get(AnnotationItem, row.item_id)
    return {
        "item": row.id,  # the hand-out (label row) the answers refer to
        "position": item.position,  # in the task's sample
        "turn": row.turn,
        "step": "feedback" if row.feedback is None else "action",
        "feedback": FEEDBACK_WORD.get(row.feedback) if row.feedback is not None else None,
        "tiles": tiles,
        "dialogue": dialogue,
        "next_message": nxt.utterance if nxt else None,
        "action": _action_words(record.selection_before, record.selection_after or (), letters),
        "targets_shown": show_targets,
        "feedback_revised": row.feedback_revised,
    }


async def _state(s, me: Annotator, allocate: bool = True) -> dict:
    task = await s.get(AnnotationTask, me.task_id)
    row = await _current(s, me, task, allocate)
    answered = (
        await s.execute(
            select(func.count())
            .select_from(HumanLabel)
            .where(HumanLabel.annotator_id == me.id, HumanLabel.answered_at.is_not(None))
        )
    ).scalar_one()
    open_items = await _open_items(s, me, task)
    remaining = (
        len(open_items)
        + (
            await s.execute(
                select(func.count())
                .select_from(HumanLabel)
                .where(HumanLabel.annotator_id == me.id, HumanLabel.answered_at.is_(None))
            )
        ).scalar_one()
    )
    return {
        "task": {"name": task.name},
        "annotator": me.name,
        "progress": {"done": answered, "remaining": remaining, "total": answered + remaining},
        "can_undo": answered > 0 or (row is not None and row.feedback is not None),
        "current": await _item_view(s, row) if row is not None else None,
    }


def _json(data: dict) -> Response:
    return _headers(JSONResponse(data))


class Answer(BaseModel):
    item: int
    feedback: str | None = Field(default=None, pattern="^(positive|neutral|negative)$")
    action: str | None = Field(default=None, pattern="^(correct|partly|wrong)$")


class ItemRef(BaseModel):
    item: int


async def _own_current(s, me: Annotator, item: int) -> HumanLabel:
    task = await s.get(AnnotationTask, me.task_id)
    row = await _current(s, me, task, allocate=False)
    if row is None or row.id != item:
        raise HTTPException(409, "That turn is not your current one; reload the page.")
    return row


@router.get("/annotate/api/current")
async def api_current(request: Request, authorization: str | None = Header(default=None)):
    me = await _annotator(request, authorization)
    async with request.app.state.services.db.session() as s, s.begin():
        return _json(await _state(s, me))


@router.post("/annotate/api/answer")
async def api_answer(
    body: Answer, request: Request, authorization: str | None = Header(default=None)
):
    me = await _annotator(request, authorization)
    if (body.feedback is None) == (body.action is None):
        raise HTTPException(422, "Answer one question at a time: feedback or action.")
    async with request.app.state.services.db.session() as s, s.begin():
        row = await _own_current(s, me, body.item)
        now = time.time()
        if body.feedback is not None:
            if row.feedback is not None:
                raise HTTPException(409, "The feedback question is answered; undo to change it.")
            row.feedback, row.feedback_at = FEEDBACK[body.feedback], now
        else:
            if row.feedback is None:
                raise HTTPException(409, "Answer the feedback question first.")
            row.action, row.answered_at = ACTION[body.action], now
        await s.flush()
        return _json(await _state(s, me))


@router.post("/annotate/api/skip")
async def api_skip(
    body: ItemRef, request: Request, authorization: str | None = Header(default=None)
):
    me = await _annotator(request, authorization)
    async with request.app.state.services.db.session() as s, s.begin():
        row = await _own_current(s, me, body.item)
        row.skipped, row.answered_at = True, time.time()
        await s.flush()
        return _json(await _state(s, me))


@router.post("/annotate/api/undo")
async def api_undo(request: Request, authorization: str | None = Header(default=None)):
    """Take back the last answer: the current turn's feedback answer, else the last finished turn
    (its action answer or skip), which becomes the current turn again. A feedback answer taken
    back after the targets were shown is marked ``feedback_revised`` (kept out of the figures)."""
    me = await _annotator(request, authorization)
    async with request.app.state.services.db.session() as s, s.begin():
        task = await s.get(AnnotationTask, me.task_id)
        row = await _current(s, me, task, allocate=False)
        if row is not None and row.feedback is not None:
            row.feedback = row.feedback_at = None
            row.feedback_revised = True  # the targets were shown: the next answer is not blind
        else:
            last = (
                await s.execute(
                    select(HumanLabel)
                    .where(HumanLabel.annotator_id == me.id, HumanLabel.answered_at.is_not(None))
                    .order_by(HumanLabel.answered_at.desc(), HumanLabel.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if last is None:
                raise HTTPException(409, "Nothing to undo.")
            if (
                row is not None
                and row.feedback is None
                and not row.feedback_revised
                and row.id > last.id
            ):
                await s.execute(delete(HumanLabel).where(HumanLabel.id == row.id))  # hand it back
            last.action = last.answered_at = None
            last.skipped = False
        await s.flush()
        return _json(await _state(s, me))


@router.get("/annotate", include_in_schema=False)
async def annotator_page(request: Request):
    """The page; the link's token is in its fragment (``/annotate#TOKEN``), which browsers never
    send, so it stays out of access logs and Referer headers."""
    response = _page(request, "annotate/annotate.html", {})
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
