"""Human review over HTTP against a running server on PostgreSQL: an operator makes a task and
two annotator links from the dashboard's forms, the annotators label through their tokens
(the server hides the targets until the feedback answer, keeps the order of the questions,
undoes, hands a skipped turn to a third annotator), the task page shows the agreement computed
by hand, the labels export with their turn rows, and ``multiref report`` has the section."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db.database import Database
from app.db.models import Annotator, FeedbackLabel, HumanLabel
from app.importing import import_files
from learning.retrospect import load_contexts
from tests.conftest import ADMIN_TOKEN, ROOT, reference_dir

SYSTEM = "B-SUP"


def write_games(tmp: Path, start: int, count: int, round_: int) -> tuple[Path, list[dict]]:
    """``count`` recorded games of the reference sample as system B-SUP, round ``round_``."""
    path = reference_dir() / "respect_games" / "sep_12_24_sample.jsonl"
    if not path.is_file():
        pytest.skip(f"reference games not found at {path}")
    records = [json.loads(line) for line in path.read_text().splitlines()[start : start + count]]
    for r in records:
        r["policy"] = SYSTEM
    out = tmp / f"games-{round_}.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out, records


async def seed_database(url: str, tmp: Path, round_games: int = 4) -> dict:
    """Imported games of rounds 1 and 2; returns {game_id: record} of round 1 and its turns."""
    db = Database(url)
    await db.migrate()
    one, records = write_games(tmp, 0, round_games, 1)
    two, _ = write_games(tmp, 50, 2, 2)
    assert (await import_files(db, [one], round_=1, actor="test")).imported == round_games
    assert (await import_files(db, [two], round_=2, actor="test")).imported == 2
    _, contexts = await load_contexts(db, 1)  # the decoder's turns, found by other code
    await db.close()
    return {
        "records": {r["game_id"]: r for r in records},
        "turns": sorted((c.game_id, c.turn) for c in contexts),
    }


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def login(c: httpx.AsyncClient) -> str:
    page = await c.get("/admin/login")
    r = await c.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf": csrf_of(page.text)})
    assert r.status_code == 303
    return csrf_of((await c.get("/admin/annotation")).text)


async def new_link(c: httpx.AsyncClient, csrf: str, task: str, name: str) -> str:
    r = await c.post(f"/admin/annotation/{task}/annotators", data={"csrf": csrf, "name": name})
    assert r.status_code == 200, r.text
    link = re.search(r'data-testid="annotator-link">([^<]+)<', r.text).group(1)
    assert name in r.text
    assert link.split("#")[0].endswith("/annotate")
    return link.split("#", 1)[1]


class Annotating:
    def __init__(self, base: str, token: str) -> None:
        self.c = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=20
        )

    async def current(self) -> dict:
        r = await self.c.get("/annotate/api/current")
        assert r.status_code == 200, r.text
        return r.json()

    async def post(self, path: str, body: dict | None = None, status: int = 200) -> dict:
        r = await self.c.post(f"/annotate/api/{path}", json=body)
        assert r.status_code == status, (path, body, r.status_code, r.text)
        return r.json()

    async def label(self, feedback: str, action: str) -> dict:
        item = (await self.current())["current"]["item"]
        await self.post("answer", {"item": item, "feedback": feedback})
        return await self.post("answer", {"item": item, "action": action})


# Answers by sample position: (feedback, action); A skips position 1.
A_ANSWERS = {
    0: ("positive", "correct"),
    2: ("negative", "wrong"),
    3: ("negative", "partly"),
    4: ("neutral", "wrong"),
}
B_ANSWERS = {
    0: ("positive", "correct"),
    1: ("negative", "wrong"),
    2: ("negative", "wrong"),
    3: ("positive", "partly"),
    4: ("neutral", "correct"),
}


async def test_annotation_task_end_to_end_over_http(start_server, pg_url, tmp_path):
    seeded = await seed_database(pg_url, tmp_path)
    records, turns = seeded["records"], seeded["turns"]
    server = start_server(pg_url)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        csrf = await login(c)
        # bad input: one clear line each, nothing made
        for form, message in (
            ({"system": "nope", "round": "1"}, "No ended game of nope in round 1"),
            ({"system": SYSTEM, "round": "1", "sample_size": "0"}, "sample size must be between"),
            ({"system": SYSTEM, "round": "one"}, "round must be a whole number"),
            ({"system": SYSTEM, "round": "1", "per_turn": "0"}, "Annotators per turn"),
        ):
            r = await c.post("/admin/annotation/tasks", data={"csrf": csrf, **form})
            assert r.status_code == 422 and message in r.json()["detail"], (form, r.text)
        assert "No annotation task yet" in (await c.get("/admin/annotation")).text
        # without the CSRF token the form is refused
        assert (await c.post("/admin/annotation/tasks", data={"system": SYSTEM})).status_code == 403

        r = await c.post(
            "/admin/annotation/tasks",
            data={
                "csrf": csrf,
                "name": "pilot",
                "system": SYSTEM,
                "round": "1",
                "sample_size": "5",
                "seed": "7",
                "per_turn": "2",
            },
        )
        assert r.status_code == 303
        task = r.headers["location"].rsplit("/", 1)[1]
        listing = (await c.get("/admin/annotation")).text
        assert "pilot" in listing and "0 / 10" in listing
        token_a = await new_link(c, csrf, task, "Ada")
        token_b = await new_link(c, csrf, task, "Bo")
        token_c = await new_link(c, csrf, task, "Cy")

    # the sample is the seeded draw from the round's decodable turns (round 2 left out)
    expected = random.Random(7).sample(turns, 5)
    db = Database(pg_url)
    async with db.session() as s:
        digests = {a.name: a.token_sha256 for a in (await s.execute(select(Annotator))).scalars()}
    assert token_a not in json.dumps(digests) and len(digests["Ada"]) == 64

    # the decoder says positive for positions 0 and 2, negative for the rest
    async with db.session() as s, s.begin():
        for pos, (gid, turn) in enumerate(expected):
            s.add(
                FeedbackLabel(
                    game_id=gid,
                    turn=turn,
                    decoder="binary",
                    decoder_version="v1",
                    label=1 if pos in (0, 2) else -1,
                    heuristic=None,
                    scores={},
                    created_at=time.time(),
                )
            )

    a, b, cy = (
        Annotating(server.url, token_a),
        Annotating(server.url, token_b),
        Annotating(server.url, token_c),
    )
    async with httpx.AsyncClient(base_url=server.url) as anon:
        assert (await anon.get("/annotate/api/current")).status_code == 401
        bad = await anon.get(
            "/annotate/api/current", headers={"Authorization": "Bearer not-a-token"}
        )
        assert bad.status_code == 401 and "not valid" in bad.json()["detail"]
        # an annotator token has no admin power
        r = await anon.get("/api/admin/overview", headers={"Authorization": f"Bearer {token_a}"})
        assert r.status_code == 401
        r = await anon.get(
            f"/admin/annotation/{task}/labels.jsonl", headers={"Authorization": f"Bearer {token_a}"}
        )
        assert r.status_code == 401
        page = await anon.get("/annotate")
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["content-security-policy"]
        )
        assert page.headers["referrer-policy"] == "no-referrer"

    # the first turn: the listener's ten pictures in the listener's order, no targets yet
    state = await a.current()
    cur = state["current"]
    assert cur["position"] == 0
    gid, turn = expected[0]
    rec = records[gid]
    assert (state["progress"]["done"], state["progress"]["total"]) == (0, 5)
    assert [t["image"] for t in cur["tiles"]] == [f"/tangrams/{x}" for x in rec["listener_order"]]
    assert all(t["target"] is None for t in cur["tiles"]) and cur["step"] == "feedback"
    assert "targets" not in json.dumps(cur).replace("targets_shown", "")
    assert cur["next_message"] == " ".join(rec["utterances"][turn].split())
    assert [d["speaker"] for d in cur["dialogue"]] == [
        " ".join(u.split()) for u in rec["utterances"][:turn]
    ]
    after = set(rec["selection_after_turn"][turn - 1])
    before = set(rec["selection_after_turn"][turn - 2]) if turn > 1 else set()
    shown = {
        rec["listener_order"][i] for i, t in enumerate(cur["tiles"]) if t["change"] == "selected"
    }
    assert shown == after - before
    # the action question waits for the feedback answer; the targets come with it
    await a.post("answer", {"item": cur["item"], "action": "correct"}, status=409)
    await a.post("answer", {"item": cur["item"], "feedback": "bad-word"}, status=422)
    s1 = await a.post("answer", {"item": cur["item"], "feedback": "positive"})
    assert s1["current"]["step"] == "action" and s1["current"]["item"] == cur["item"]
    revealed = {
        rec["listener_order"][i] for i, t in enumerate(s1["current"]["tiles"]) if t["target"]
    }
    assert revealed == set(rec["targets"])
    await a.post("answer", {"item": cur["item"], "feedback": "negative"}, status=409)  # answered
    s2 = await a.post("answer", {"item": cur["item"], "action": "wrong"})
    assert s2["progress"]["done"] == 1 and s2["current"]["item"] != cur["item"]
    # undo: the first turn comes back at its action question, its feedback kept; redo it
    s3 = await a.post("undo")
    assert s3["current"]["item"] == cur["item"] and s3["current"]["step"] == "action"
    assert s3["current"]["feedback"] == "positive" and s3["progress"]["done"] == 0
    await a.post("answer", {"item": cur["item"], "action": A_ANSWERS[0][1]})
    # position 1: A skips it
    now = (await a.current())["current"]
    skipped_item = now["item"]
    assert now["position"] == 1
    # another annotator's token cannot answer A's current turn
    await b.current()
    await b.post("answer", {"item": skipped_item, "feedback": "positive"}, status=409)
    await a.post("skip", {"item": skipped_item})
    for pos in (2, 3, 4):
        await a.label(*A_ANSWERS[pos])
    done = await a.current()
    assert done["current"] is None and done["progress"] == {"done": 5, "remaining": 0, "total": 5}
    for pos in range(5):
        await b.label(*B_ANSWERS[pos])
    # resume later: state is on the server; C gets only the turn A skipped (others have 2 labels)
    c_state = await cy.current()
    assert c_state["current"]["position"] == 1 and c_state["progress"]["total"] == 1
    # C answers the feedback, sees the targets, takes the answer back: the targets stay shown
    # and the new feedback answer is marked as not blind (kept out of the figures)
    item_c = c_state["current"]["item"]
    await cy.post("answer", {"item": item_c, "feedback": "positive"})
    back = await cy.post("undo")
    assert back["current"]["step"] == "feedback" and back["current"]["targets_shown"]
    assert back["current"]["feedback_revised"] and back["current"]["item"] == item_c
    await cy.post("answer", {"item": item_c, "feedback": "negative"})
    await cy.post("answer", {"item": item_c, "action": "wrong"})
    assert (await cy.current())["current"] is None
    for x in (a, b, cy):
        await x.c.aclose()

    async with db.session() as s:
        rows = (await s.execute(select(HumanLabel).order_by(HumanLabel.id))).scalars().all()
    assert len(rows) == 11 and sum(r.skipped for r in rows) == 1
    assert all(r.answered_at >= r.feedback_at for r in rows if not r.skipped)
    await db.close()

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        await login(c)
        page = (await c.get(f"/admin/annotation/{task}")).text
        # feedback on turns 0, 2, 3, 4 by A and B (C's revised answer on turn 1 is left out):
        # A = +,-,-,0 ; B = +,-,+,0. Cohen: p_o 3/4, p_e = (1·2 + 2·1 + 1·1)/16 = 5/16 -> 7/11;
        # Fleiss: P̄ = 3/4; p(+) = 3/8, p(-) = 3/8, p(0) = 2/8 -> P_e = 22/64; κ = 26/42 = 0.619
        assert re.search(r'data-testid="feedback-cohen">0\.636<', page), page
        assert re.search(r'data-testid="feedback-fleiss">0\.619<', page)
        assert re.search(r'data-testid="feedback-raw">75\.0 %<', page)
        # the action answers have no revision: turn 1 by B and C (both wrong) counts there.
        # A = c,w,p,w ; B = c,w,p,c on turns 0, 2, 3, 4, and w,w on turn 1: Fleiss over 5 turns:
        # P̄ = 4/5; p(c) = 3/10, p(w) = 5/10, p(p) = 2/10 -> P_e = 0.38; κ = 0.42/0.62 = 0.677
        assert re.search(r'data-testid="action-fleiss">0\.677<', page)
        # decoder (binary) vs the majority: turn 0 +/+, turn 1 -/-, turn 2 -/+ (a false positive),
        # turn 3 no majority, turn 4 0/-: FPR = 1 of 3 non-positive turns
        assert re.search(r'data-testid="decoder-fpr">33\.3 %<', page)
        assert "labels.jsonl" in page
        jsonl = await c.get(f"/admin/annotation/{task}/labels.jsonl")
        assert jsonl.status_code == 200
        exported = [json.loads(line) for line in jsonl.text.splitlines()]
        assert len(exported) == 11
        first = next(
            r for r in exported if r["annotator"] == "Ada" and r["game_turn_id"] == f"{gid}_{turn}"
        )
        assert first["feedback"] == "positive" and first["action_label"] == "correct"
        assert (
            first["targets"] == sorted(rec["targets"]) and first["context"] == rec["listener_order"]
        )
        assert first["chat_feedback"] == " ".join(rec["utterances"][turn].split())
        assert first["decoded"] == {"binary": 1} and first["heuristic"] in (-1, 0, 1)
        assert sum(r["skipped"] for r in exported) == 1
        assert [r["annotator"] for r in exported if r["feedback_revised"]] == ["Cy"]
        table = list(
            csv.DictReader(io.StringIO((await c.get(f"/admin/annotation/{task}/labels.csv")).text))
        )
        assert len(table) == 11 and json.loads(table[0]["context"]) == exported[0]["context"]

    # the same for scripts, with the admin bearer token (an annotator's token is refused)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        r = await c.get(
            f"/api/admin/annotation/{task}", headers={"Authorization": f"Bearer {token_a}"}
        )
        assert r.status_code == 401
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        detail = (await c.get(f"/api/admin/annotation/{task}", headers=admin)).json()
        assert detail["task"]["labels"] == 10 and detail["review"]["feedback_agreement"][
            "fleiss"
        ] == pytest.approx(26 / 42)
        assert [
            t["task_id"] for t in (await c.get("/api/admin/annotation", headers=admin)).json()
        ] == [task]
        assert (
            len(
                (
                    await c.get(f"/api/admin/annotation/{task}/labels.jsonl", headers=admin)
                ).text.splitlines()
            )
            == 11
        )

    # multiref report has the human review section and its plot
    out = tmp_path / "report"
    env = {**os.environ, "MULTIREF_DATABASE_URL": pg_url, "PYTHONPATH": str(ROOT)}
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "report", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    text = (out / "report.md").read_text()
    assert "## Human review" in text
    assert f"| {SYSTEM} | 1 | 5 | 10 | 3 | 75.0% | 0.636 | 0.619 |" in text
    assert (out / "human-review.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert next(m for m in metrics if m["round"] == 1)["human"]["decoders"]["binary"]["n"] == 4


async def test_concurrent_annotators_never_take_the_same_turn_past_the_wanted_number(
    start_server, pg_url, tmp_path
):
    """One annotator per turn, three annotators asking at once: every turn is handed out once."""
    await seed_database(pg_url, tmp_path)
    server = start_server(pg_url)
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        csrf = await login(c)
        r = await c.post(
            "/admin/annotation/tasks",
            data={
                "csrf": csrf,
                "system": SYSTEM,
                "round": "1",
                "sample_size": "12",
                "seed": "1",
                "per_turn": "1",
            },
        )
        task = r.headers["location"].rsplit("/", 1)[1]
        tokens = [await new_link(c, csrf, task, f"p{i}") for i in range(3)]
    people = [Annotating(server.url, t) for t in tokens]

    async def work(a: Annotating) -> list[int]:
        positions = []
        while (cur := (await a.current())["current"]) is not None:
            positions.append(cur["position"])
            await a.post("answer", {"item": cur["item"], "feedback": "neutral"})
            await a.post("answer", {"item": cur["item"], "action": "partly"})
        return positions

    done = await asyncio.gather(*(work(a) for a in people))
    for a in people:
        await a.c.aclose()
    every = sorted(p for d in done for p in d)
    assert every == list(range(12)), done  # each turn once, none twice, none left
