"""The admin dashboard in real Chromium: log in, watch a live game's two screens update, end
it with a reason, see the audit log, step through the replay, block a worker, log out."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.bot import BotClient, create_game
from app.db.database import Database
from app.db.models import Game, WorkerHeartbeat
from app.game.rules import GameConfig
from tests.conftest import ADMIN_TOKEN, ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "test-artifacts" / "screenshots"
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> select the bird & "co"'


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


async def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"admin-{name}.png"), full_page=True)


async def test_dashboard_login_live_view_end_replay_block(start_server, sqlite_url, kilogram_dir, browser):
    server = start_server(sqlite_url)
    ids = sorted(p.stem for p in kilogram_dir.glob("*.svg"))[:10]
    config = GameConfig(context=tuple(ids), targets=tuple(ids[:3]), speaker_order=tuple(ids),
                        listener_order=tuple(reversed(ids)))
    created = await create_game(server.url, ADMIN_TOKEN, config)
    gid = created["game_id"]
    speaker = await BotClient(server.url, created["speaker_token"]).connect()
    listener = await BotClient(server.url, created["listener_token"]).connect()
    await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking")
    await speaker.say(HOSTILE)
    await listener.wait_for(lambda b: b.view and b.view.phase == "selecting")
    await listener.click(ids[0])  # a target
    await speaker.wait_for(lambda b: sum(t.selected for t in b.view.tiles) == 1)
    db = Database(sqlite_url)
    async with db.session() as s, s.begin():
        s.add(WorkerHeartbeat(worker_id="gpu-worker-1", host="node7", systems=["B-SUP"], status="serving",
                              checkpoints={"base": "idefics2", "loaded": ["B-SUP-r3-1a2b3c4d"], "served": 5},
                              started_at=time.time() - 30, beat_at=time.time()))
        speaker_id = (await s.get(Game, gid)).speaker_id

    context = await browser.new_context()
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status == 404 or r.status >= 500 else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("dialog", lambda d: problems.append("dialog: " + d.message))

    # not logged in: the dashboard sends to the login form; a wrong token is refused
    await page.goto(server.url + "/admin")
    assert page.url.endswith("/admin/login")
    await page.fill("#token", "not-the-token")
    await page.click("button[type=submit]")
    await page.wait_for_selector(".error")
    assert "not valid" in await page.inner_text(".error")
    assert "token" not in page.url.split("/admin", 1)[1]
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(server.url + "/admin")
    cookie = next(c for c in await context.cookies() if c["name"] == "mr_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert ADMIN_TOKEN not in cookie["value"]

    # the overview: the live game with its turn, system and elapsed time; lobby; workers
    row = page.locator(f'#live-games tr[data-game-id="{gid}"]')
    await row.wait_for()
    cells = await row.locator("td").all_inner_texts()
    assert cells[1] == "human" and cells[3] == "1" and cells[4] == "selecting" and cells[5].endswith(" s")
    assert await page.inner_text("#lobby-size") == "0"
    assert "gpu-worker-1" in await page.inner_text("#workers")
    assert "B-SUP-r3-1a2b3c4d" in await page.inner_text("#workers")
    await page.wait_for_function("() => document.getElementById('refreshed').textContent !== 'now'", timeout=10000)
    await _shot(page, "overview")

    # the read-only live view: both screens in their own orders, refreshed every second
    await row.locator("a").click()
    await page.wait_for_url(f"{server.url}/admin/games/{gid}")
    await page.wait_for_function("() => document.querySelectorAll('#listener-board figure').length === 10")
    speaker_tiles = await page.locator("#speaker-board figure").evaluate_all("els => els.map(e => e.dataset.tangram)")
    listener_tiles = await page.locator("#listener-board figure").evaluate_all("els => els.map(e => e.dataset.tangram)")
    assert speaker_tiles == list(config.speaker_order) and listener_tiles == list(config.listener_order)
    assert await page.locator("#speaker-board figure.target").count() == 3
    assert await page.locator("#listener-board figure.target").count() == 0
    assert await page.locator("#speaker-board figure.selected.good").count() == 1
    # the hostile utterance is shown as text, never run or parsed as HTML
    assert await page.locator("#messages .text").inner_text() == HOSTILE
    assert await page.evaluate("window.pwned === undefined")
    assert await page.locator("main img[src='x']").count() == 0
    await listener.click(ids[5])  # not a target: the speaker's screen frames it red
    await page.wait_for_function("() => document.querySelectorAll('#speaker-board figure.selected.wrong').length === 1", timeout=10000)
    await page.wait_for_function("() => document.querySelectorAll('#listener-board figure.selected').length === 2")
    await _shot(page, "live-view")

    # a form without its CSRF token is refused, even with the session cookie
    refused = await page.request.post(f"{server.url}/admin/games/{gid}/end", form={"note": "x"})
    assert refused.status == 403

    # end the game with a reason and a note
    await page.select_option("#end-section select[name=reason]", "admin_ended")
    await page.fill("#end-section input[name=note]", "ended from the dashboard <b>test</b>")
    await page.click("#end-section button[type=submit]")
    await page.wait_for_url(f"{server.url}/admin/games/{gid}")
    await page.wait_for_function("() => document.getElementById('g-phase').textContent === 'ended'", timeout=10000)
    assert await page.inner_text("#g-reason") == "admin_ended"
    assert await page.locator("#end-section").is_hidden()
    for bot in (speaker, listener):
        view = await bot.wait_for(lambda b: b.view.phase == "ended" and b.view.completion_code and b.view, 20)
        assert view.end_reason == "admin_ended" and view.pay is not None
    await _shot(page, "ended")

    # the audit log on the overview shows it, under the token's fingerprint
    await page.goto(server.url + "/admin")
    audit = await page.inner_text("#audit")
    assert "end_game" in audit and "ended from the dashboard <b>test</b>" in audit and "login" in audit
    assert ADMIN_TOKEN not in await page.content()
    assert await page.locator(f'#live-games tr[data-game-id="{gid}"]').count() == 0

    # the replay, rebuilt from the event log, step by step
    await page.goto(f"{server.url}/admin/games")
    await page.click(f'a[href="/admin/games/{gid}/replay"]')
    await page.wait_for_function("() => document.getElementById('step-type').textContent === 'game_created'")
    assert await page.locator("#speaker-board figure").count() == 10
    await page.click("#next")
    assert await page.inner_text("#step-type") == "player_joined"
    seen = ["game_created", "player_joined"]
    for _ in range(12):
        await page.click("#next")
        seen.append(await page.inner_text("#step-type"))
        if seen[-1] == "utterance_sent":
            break
    assert "turn_started" in seen and seen[-1] == "utterance_sent"
    assert await page.locator("#messages .text").inner_text() == HOSTILE
    await page.click("#last")
    assert await page.inner_text("#step-type") == "game_ended"
    assert await page.locator("#speaker-board figure.selected").count() == 2
    await _shot(page, "replay")

    # block the speaker's worker by participant id
    await page.goto(server.url + "/admin")
    await page.fill("#block-form input[name=participant_id]", speaker_id)
    await page.fill("#block-form input[name=reason]", "spam in messages")
    await page.click("#block-form button[type=submit]")
    await page.wait_for_url(server.url + "/admin")
    audit = await page.inner_text("#audit")
    assert "block" in audit and speaker_id in audit

    # log out: the dashboard is closed again
    await page.click("header form button[type=submit]")
    await page.wait_for_url(server.url + "/admin/login")
    await page.goto(server.url + "/admin/api/overview")
    assert "Log in" in await page.content()
    assert not problems, problems
    await context.close()
    await speaker.close()
    await listener.close()
    await db.close()


async def test_dashboard_stats_download_confirmation_thumbnails_and_phone(start_server, sqlite_url, kilogram_dir, browser, tmp_path):
    """The operator's second look: "Finished" leaves aborted games out, mean turns always has one
    decimal, the data downloads as a zip, ending a game is confirmed once, a model turn's letters
    show their pictures, the games list has start times, and the pages fit a phone."""
    import json
    import re
    import zipfile

    from sqlalchemy import func, select

    from app.db.models import ListenerRequest
    from bench.export_bench import generate_games

    db = Database(sqlite_url)
    await db.migrate()
    await generate_games(db, 14, seed=2, round_=None, abandon_rate=0.35, systems=("B-SUP", "human"))
    async with db.session() as s:
        rows = (await s.execute(select(Game.system, Game.outcome, func.count()).where(Game.status == "ended")
                                .group_by(Game.system, Game.outcome))).all()
    completed = {sys: sum(n for s_, o, n in rows if s_ == sys and o in ("successful", "unsuccessful")) for sys in ("B-SUP", "human")}
    ended = {sys: sum(n for s_, o, n in rows if s_ == sys) for sys in ("B-SUP", "human")}
    assert any(ended[s] > completed[s] for s in ended), "the test needs aborted games"

    server = start_server(sqlite_url)
    ids = sorted(p.stem for p in kilogram_dir.glob("*.svg"))[:10]
    config = GameConfig(context=tuple(ids), targets=tuple(ids[:3]), speaker_order=tuple(ids),
                        listener_order=tuple(reversed(ids)))
    model_game = await create_game(server.url, ADMIN_TOKEN, config, listener="model")
    speaker = await BotClient(server.url, model_game["speaker_token"]).connect()
    await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking")
    await speaker.say("the swan and the house")
    gid = model_game["game_id"]
    for _ in range(100):  # the hub writes the model turn's request; a worker would answer it
        async with db.session() as s, s.begin():
            request = (await s.execute(select(ListenerRequest).where(ListenerRequest.game_id == gid))).scalar()
            if request is not None:
                request.action, request.prob_action, request.latency_s = "select C A", 0.42, 0.8
                request.status, request.worker_id = "failed", "test-worker"
                break
        await asyncio.sleep(0.1)
    assert request is not None

    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    await page.goto(server.url + "/admin/login")
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(server.url + "/admin")

    async def stats() -> dict:
        cells = await page.locator("#stats tr").evaluate_all("rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")
        return {c[0]: c for c in cells}

    for when in ("rendered by the server", "refreshed by the page"):
        table = await stats()
        for system in ("B-SUP", "human"):
            row = table[system]
            assert int(row[3]) == completed[system], (when, row)  # Finished: played to the end
            assert int(row[3]) + int(row[4]) == ended[system], (when, row)  # + Aborted
            assert re.fullmatch(r"\d+\.\d", row[6]), (when, row)  # Mean turns: one decimal
        await page.wait_for_function("() => document.getElementById('refreshed').textContent !== 'now'", timeout=10000)

    # the download: one zip with the release-format files of every finished game
    async with page.expect_download() as info:
        await page.click("#export-form button[type=submit]")
    download = await info.value
    path = tmp_path / download.suggested_filename
    await download.save_as(path)
    assert path.suffix == ".zip"
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert {"interaction.jsonl", "turn.jsonl"} <= names, names
        games = [json.loads(line) for line in z.read("interaction.jsonl").decode().splitlines()]
    assert len(games) == sum(ended.values())
    assert json.dumps(games[0]).count("game_id")

    # buttons are styled, not the browser's defaults
    await page.mouse.move(0, 0)
    style = await page.locator("#export-form button").evaluate("b => getComputedStyle(b).borderRadius + ' ' + getComputedStyle(b).backgroundColor")
    assert style.startswith("6px") and "rgb(29, 78, 216)" in style, style

    # the model turn: each letter of "select C A" with the listener's picture for it
    await page.goto(f"{server.url}/admin/games/{gid}")
    await page.wait_for_function("() => document.querySelectorAll('#model-turns td.action .letter').length === 2")
    shown = await page.locator("#model-turns td.action .letter").evaluate_all("els => els.map(e => [e.textContent, e.dataset.tangram])")
    assert shown == [["C", config.listener_order[2]], ["A", config.listener_order[0]]]
    assert await page.locator("#model-turns td.action img").evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
    await _shot(page, "model-turns")

    # ending the game is confirmed on the next page, once
    await page.fill("#end-section input[name=note]", "confirm me")
    await page.click("#end-section button[type=submit]")
    await page.wait_for_url(f"{server.url}/admin/games/{gid}")
    flash = page.get_by_test_id("flash")
    assert "ended (admin_ended)" in await flash.inner_text() and gid[:12] in await flash.inner_text()
    await page.reload()
    assert await page.get_by_test_id("flash").count() == 0

    # the games list has start times, in the browser's local time
    await page.goto(server.url + "/admin/games")
    started = await page.locator("td.started").all_inner_texts()
    assert len(started) == 15 and all(re.search(r"\d{1,4}\D\d{1,2}\D\d{1,4}", t) for t in started), started[:3]

    # a phone: the page never gets wider than the screen; wide tables scroll inside themselves
    await page.set_viewport_size({"width": 390, "height": 844})
    for url in ("/admin", "/admin/games", f"/admin/games/{gid}"):
        await page.goto(server.url + url)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, url
    await page.goto(server.url + "/admin/games")
    assert await page.locator("table.grid").evaluate("t => t.scrollWidth > t.clientWidth && getComputedStyle(t).overflowX === 'auto'")
    await _shot(page, "phone-games")
    assert not problems, problems
    await context.close()
    await speaker.close()
    await db.close()
