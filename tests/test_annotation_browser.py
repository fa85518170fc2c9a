"""Human review in real Chromium: an operator creates an annotation task from the dashboard and
makes two annotator links; two annotators (a laptop and a tablet) label the same sample with
the keyboard shortcuts (one undoes an answer and resumes later); the task page and the
report show their agreement. Screenshots go to test-artifacts/screenshots/annotate/."""

from __future__ import annotations

import time

import pytest

from app.db.database import Database
from app.db.models import FeedbackLabel
from learning.report import collect, markdown
from tests.conftest import ADMIN_TOKEN, ROOT
from tests.test_annotation_api import SYSTEM, seed_database

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "test-artifacts" / "screenshots" / "annotate"
LAPTOP = {"viewport": {"width": 1280, "height": 800}}
TABLET = {
    "viewport": {"width": 820, "height": 1180},
    "has_touch": True,
    "is_mobile": True,
    "device_scale_factor": 1,
}

# keys per sample position: (feedback key, action key); 1 positive/correct, 2 neutral/partly,
# 3 negative/wrong. Feedback: Ada +,-,-,0 ; Bo +,-,+,0 -> Cohen's κ = 7/11 = 0.636,
# Fleiss' κ = 26/42 = 0.619, raw agreement 3/4 (worked out in tests/test_annotation_api.py).
ADA = [("1", "1"), ("3", "3"), ("3", "2"), ("2", "3")]
BO = [("1", "1"), ("3", "3"), ("1", "2"), ("2", "1")]


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def _shot(page, name: str, full_page: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


def _watch(page, problems: list[str]) -> None:
    def console(m) -> None:  # the site has no favicon: the browser's own request for it is no error
        if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico"):
            problems.append(f"{m.text} {m.location}")

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )


async def _label(
    page, expect, keys: tuple[str, str], done_after: int, shots: str | None = None
) -> None:
    """Answer the current turn with two key presses; check the targets appear only in between."""
    await expect(page.get_by_test_id("question-feedback")).to_be_visible()
    assert set(
        await page.locator("#board figure").evaluate_all("fs => fs.map(f => f.dataset.target)")
    ) == {"hidden"}
    if shots:
        await _shot(page, f"{shots}-feedback")
    await page.keyboard.press(keys[0])
    await expect(page.get_by_test_id("question-action")).to_be_visible()
    targets = await page.locator("#board figure").evaluate_all(
        "fs => fs.map(f => f.dataset.target)"
    )
    assert "true" in targets and "hidden" not in targets
    if shots:
        await _shot(page, f"{shots}-action")
    await page.keyboard.press(keys[1])
    await expect(page.locator("#done")).to_have_text(str(done_after))


async def test_two_annotators_label_a_task_made_on_the_dashboard(
    start_server, sqlite_url, tmp_path, browser
):
    from playwright.async_api import expect

    seeded = await seed_database(sqlite_url, tmp_path)
    db = Database(sqlite_url)
    async with db.session() as s, s.begin():  # a decoder's labels for every decodable turn
        for gid, turn in seeded["turns"]:
            s.add(
                FeedbackLabel(
                    game_id=gid,
                    turn=turn,
                    decoder="ternary",
                    decoder_version="v1",
                    label=(turn % 3) - 1,
                    heuristic=None,
                    scores={},
                    created_at=time.time(),
                )
            )
    server = start_server(sqlite_url)
    problems: list[str] = []

    # the operator: log in, open Annotation, create a task, make two links
    operator = await browser.new_context(**LAPTOP)
    op = await operator.new_page()
    _watch(op, problems)
    await op.goto(server.url + "/admin/login")
    await op.fill("#token", ADMIN_TOKEN)
    await op.click("button[type=submit]")
    await op.wait_for_url(server.url + "/admin")
    await op.get_by_test_id("nav-annotation").click()
    await op.wait_for_url(server.url + "/admin/annotation")
    await op.get_by_test_id("annotation-name").fill("pilot review")
    await op.get_by_test_id("annotation-system").fill(SYSTEM)
    await op.get_by_test_id("annotation-round").fill("1")
    await op.get_by_test_id("annotation-sample-size").fill("4")
    await op.get_by_test_id("annotation-seed").fill("3")
    await op.get_by_test_id("annotation-per-turn").fill("2")
    await _shot(op, "operator-new-task")
    await op.get_by_test_id("annotation-create").click()
    await op.wait_for_url(f"{server.url}/admin/annotation/*")
    task_url = op.url
    await expect(op.get_by_test_id("annotation-turns")).to_have_text("4")
    links = {}
    for name in ("Ada", "Bo"):
        await op.get_by_test_id("annotator-name").fill(name)
        await op.get_by_test_id("annotator-create").click()
        links[name] = await op.get_by_test_id("annotator-link").inner_text()
        assert links[name].startswith(server.url + "/annotate#")
    await _shot(op, "operator-task-links", full_page=True)

    # Ada on a laptop: first turn, undo, second turn, then she closes the page
    ada_ctx = await browser.new_context(**LAPTOP)
    ada = await ada_ctx.new_page()
    _watch(ada, problems)
    await ada.goto(links["Ada"])
    await expect(ada.get_by_test_id("tile-J")).to_be_visible()
    await expect(ada.get_by_test_id("annotator-name-shown")).to_have_text("Ada")
    assert await ada.locator("#board figure").count() == 10
    assert await ada.get_by_test_id("next-message").inner_text() != ""
    assert await ada.locator("[data-testid=dialogue] li").count() >= 1
    await expect(ada.get_by_test_id("current-action")).to_be_visible()
    await _label(ada, expect, ADA[0], 1, shots="laptop")
    await ada.keyboard.press("u")  # undo: back to the first turn's action question
    await expect(ada.locator("#done")).to_have_text("0")
    await expect(ada.get_by_test_id("question-action")).to_be_visible()
    await expect(ada.get_by_test_id("feedback-given")).to_have_text("positive")
    await ada.keyboard.press(ADA[0][1])
    await expect(ada.locator("#done")).to_have_text("1")
    await _label(ada, expect, ADA[1], 2)
    await ada.close()

    # Bo on a tablet labels all four, by keys, and sees the end
    bo_ctx = await browser.new_context(**TABLET)
    wrong = await bo_ctx.new_page()  # a mistyped link: one clear line, nothing else
    await wrong.goto(server.url + "/annotate#not-a-token")
    await expect(wrong.get_by_test_id("error")).to_contain_text("not valid")
    await expect(wrong.get_by_test_id("board")).to_be_hidden()
    await wrong.close()
    bo = await bo_ctx.new_page()
    _watch(bo, problems)
    await bo.goto(links["Bo"])
    for n, keys in enumerate(BO, start=1):
        await _label(bo, expect, keys, n, shots="tablet" if n == 1 else None)
    await expect(bo.get_by_test_id("finished")).to_be_visible()
    await expect(bo.get_by_test_id("skip")).to_be_disabled()
    await _shot(bo, "tablet-finished")

    # Ada resumes later where she stopped, then finishes (the rest on a phone-sized screen)
    ada = await ada_ctx.new_page()
    _watch(ada, problems)
    await ada.set_viewport_size({"width": 390, "height": 844})
    await ada.goto(links["Ada"])
    await expect(ada.locator("#done")).to_have_text("2")
    await expect(ada.locator("#remaining")).to_have_text("2")
    assert await ada.evaluate("document.documentElement.scrollWidth") <= 390
    await _shot(ada, "phone", full_page=True)
    await _label(ada, expect, ADA[2], 3)
    await _label(ada, expect, ADA[3], 4)
    await expect(ada.get_by_test_id("finished")).to_be_visible()

    # the operator's task page shows the agreement of the two
    await op.goto(task_url)
    await expect(op.get_by_test_id("annotation-labels")).to_have_text("8")
    await expect(op.get_by_test_id("annotation-complete")).to_have_text("4")
    await expect(op.get_by_test_id("feedback-cohen")).to_have_text("0.636")
    await expect(op.get_by_test_id("feedback-fleiss")).to_have_text("0.619")
    await expect(op.get_by_test_id("feedback-raw")).to_have_text("75.0 %")
    await expect(op.get_by_test_id("action-cohen")).to_have_text("0.636")
    assert await op.locator("[data-testid=decoder-table] tr[data-decoder=ternary]").count() == 1
    await op.get_by_test_id("annotation-report").scroll_into_view_if_needed()
    await _shot(op, "operator-agreement", full_page=True)

    # and so does the report (multiref report's collect + markdown)
    text = markdown(await collect(db, [1]), [])
    assert f"| {SYSTEM} | 1 | 4 | 8 | 2 | 75.0% | 0.636 | 0.619 |" in text
    await db.close()
    assert not problems, problems
    for ctx in (operator, ada_ctx, bo_ctx):
        await ctx.close()
