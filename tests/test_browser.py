"""The crowdworker's pages in a real Chromium against a real server process (SQLite).

Two browser contexts are two workers: they arrive through the study link, consent, read the
instructions, pass the quiz, wait in the lobby, get paired (roles at random: each test reads
which page shows the targets) and play. Every screen is saved under
test-artifacts/screenshots/ for a person to look at.
"""

from __future__ import annotations

import os
import re

import httpx

import pytest
from playwright.sync_api import expect, sync_playwright

from app.web.pages import example_for, render_consent
from tests.browser_support import (
    CODE,
    Player,
    launch,
    pair,
    prolific_link,
    screenshot,
    server_targets,
    study_link,
)

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        try:
            browser = launch(playwright)
        except Exception as error:  # no Chromium on this machine
            if os.environ.get("CI"):
                raise
            pytest.skip(f"Chromium is not available: {error}")
        yield browser
        browser.close()


def boxes(page, testids):
    return [page.get_by_test_id(t).bounding_box() for t in testids]


# ---------------------------------------------------------------- a whole game to success


def test_two_workers_play_a_game_to_success(browser, start_server, sqlite_url):
    server = start_server(
        sqlite_url,
        MULTIREF_MAX_GAMES_PER_WORKER="1",
        MULTIREF_PROLIFIC_COMPLETION_CODE="C0DE123",
    )
    a = Player(browser, "a").open(prolific_link(server.url, "worker-a", "1"))

    # consent: the default consent text, rendered as HTML (headings, bold), not as source
    page = a.page
    expect(page.get_by_test_id("consent-accept")).to_be_visible()
    expect(page.locator("#consent-text h2")).to_contain_text("Consent to take part")
    assert "**" not in page.locator("#consent-text").text_content()
    screenshot(page, "01-entry-consent")
    a.consent()

    # instructions: the rules and a worked example with real tangram pictures
    example = page.get_by_test_id("worked-example").locator("img")
    expect(example).to_have_count(12)
    srcs = set(example.evaluate_all("(imgs) => imgs.map((i) => new URL(i.src).pathname)"))
    assert len(srcs) == 4 and all(re.fullmatch(r"/tangrams/[\w-]+\.svg", s) for s in srcs)
    page.wait_for_function(
        "Array.from(document.querySelectorAll('[data-testid=worked-example] img'))"
        ".every((i) => i.complete && i.naturalWidth > 0)"
    )
    image = httpx.get(server.url + sorted(srcs)[0])
    assert image.status_code == 200 and "max-age" in image.headers["cache-control"]
    expect(page.locator("#screen-instructions")).to_contain_text("different order")
    screenshot(page, "02-instructions", full_page=True)
    a.read_instructions()

    # quiz: wrong (unanswered) answers are refused with hints, right ones pass
    page.get_by_test_id("quiz-submit").click()
    expect(page.get_by_test_id("quiz-result")).to_contain_text("not right yet")
    expect(page.locator(".question.wrong")).to_have_count(4)
    screenshot(page, "03-quiz", full_page=True)
    assert page.locator("#screen-lobby").is_hidden()
    a.pass_quiz()

    # lobby: the waiting time and what happens at the timeout
    lobby = page.get_by_test_id("lobby-status")
    expect(lobby).to_be_visible()
    expect(lobby).to_contain_text("If no partner is found within")
    expect(lobby).to_contain_text("completion code")
    expect(page.get_by_test_id("lobby-waited")).to_have_text(re.compile(r"0:0[1-9]"))
    screenshot(page, "04-lobby")

    b = Player(browser, "b").arrive(prolific_link(server.url, "worker-b", "2"))
    roles = {a.wait_for_game(): a, b.wait_for_game(): b}
    speaker, listener = roles["speaker"], roles["listener"]
    sp, lp = speaker.page, listener.page

    # both see the same ten pictures, in their own order; only the speaker sees targets
    assert sorted(speaker.tile_ids()) == sorted(listener.tile_ids())
    assert len(set(speaker.tile_ids())) == 10
    targets = speaker.target_ids()
    assert 3 <= len(targets) <= 5
    assert listener.attribute_of_tiles("data-target") == [None] * 10
    assert sp.locator("#board button").count() == 0
    assert lp.locator("#board button.tile").count() == 10
    expect(listener.tile(2)).to_have_attribute("aria-label", "Tangram 3")
    expect(listener.tile(2)).to_have_attribute("aria-pressed", "false")
    for p in (sp, lp):
        expect(p.get_by_test_id("turn-counter")).to_have_text("Turn 1 of 10")
        expect(p.get_by_test_id("turn-timer")).to_contain_text(re.compile(r"[0-9]:[0-5][0-9]"))
        p.wait_for_function(
            "Array.from(document.querySelectorAll('#board img')).every((i) => i.complete && i.naturalWidth > 0)"
        )
        # at 1280x720 the whole board fits the window: no scrolling needed
        for i in range(10):
            box = p.get_by_test_id(f"tangram-{i}").bounding_box()
            assert box["y"] >= 0 and box["y"] + box["height"] <= 720, (i, box)
    expect(sp.get_by_test_id("role-label")).to_have_text("You are the Speaker")
    expect(lp.get_by_test_id("role-label")).to_have_text("You are the Listener")
    listener.expect_status("Waiting for the speaker")
    expect(lp.get_by_test_id("submit-selection")).to_be_disabled()
    expect(sp.get_by_test_id("typing-time")).to_contain_text(re.compile(r"\d+ s left to type"))

    # the speaker types: the counter follows; a message that looks like HTML stays text
    before = boxes(sp, ["tangram-0", "tangram-9", "utterance-input"])
    sp.get_by_test_id("utterance-input").fill(XSS)
    expect(sp.get_by_test_id("char-counter")).to_have_text(f"{len(XSS)} / 500")
    sp.get_by_test_id("send-utterance").click()
    for p in (sp, lp):
        expect(p.get_by_test_id("message-history")).to_contain_text(XSS)
        assert p.get_by_test_id("message-history").locator("img").count() == 0
    assert speaker.messages() == [XSS] and listener.messages() == [XSS]
    assert boxes(sp, ["tangram-0", "tangram-9", "utterance-input"]) == before  # no layout shift
    expect(sp.get_by_test_id("utterance-input")).to_have_value("")

    # the listener clicks a target and a non-target (quickly): the speaker sees them live
    listener.wait_until_selecting()
    listener.expect_status("Select the pictures")
    wrong = next(t for t in listener.tile_ids() if t not in targets)
    listener.click_tiles([targets[0], wrong])
    for tid in (targets[0], wrong):
        expect(speaker.tile_for(tid)).to_have_attribute("data-selected", "true")
        expect(speaker.tile_for(tid)).to_have_attribute("data-feedback", "")
        expect(listener.tile_for(tid)).to_have_attribute("aria-pressed", "true")
    screenshot(sp, "05-speaker-game")
    screenshot(lp, "06-listener-game")

    # submitted: green/red frames for the speaker, a neutral note for the listener
    listener.submit()
    expect(speaker.tile_for(targets[0])).to_have_attribute("data-feedback", "correct")
    expect(speaker.tile_for(wrong)).to_have_attribute("data-feedback", "wrong")
    # what the speaker sees: a green frame with a tick on the target, a red one with a cross on
    # the other; a screen reader says the same (the targets come from the server's game record)
    assert set(targets) == set(server_targets(server.url))
    green, red = speaker.frame_seen(targets[0]), speaker.frame_seen(wrong)
    assert green[:2] == ("green", "✓") and green[2].endswith("target, selected, correct"), green
    assert red[:2] == ("red", "✗") and red[2].endswith("selected, wrong") and "target" not in red[2], red
    assert speaker.frame_seen(targets[1])[0] in ("none", "other")  # not selected: no feedback colour
    listener.expect_status("Not all targets are selected yet")
    assert {listener.frame_seen(t)[0] for t in listener.tile_ids()} <= {"none", "other"}  # learns nothing
    assert listener.attribute_of_tiles("data-feedback") == [""] * 10  # the listener learns nothing
    for p in (sp, lp):
        expect(p.get_by_test_id("turn-counter")).to_have_text("Turn 2 of 10")
    screenshot(sp, "07-speaker-feedback")
    screenshot(lp, "08-listener-after-submit")

    # turn 2: fix the selection and win
    speaker.say("yes that one, not the other; and the rest of the framed ones")
    listener.wait_until_selecting()
    listener.click_tiles([wrong, *targets[1:]])
    expect(speaker.tile_for(targets[-1])).to_have_attribute("data-selected", "true")
    listener.submit()
    codes = []
    for player, name in ((speaker, "09-speaker-end-success"), (listener, "10-listener-end-success")):
        p = player.page
        player.expect_status("Success!")
        codes.append(player.completion_code())
        expect(p.get_by_test_id("pay-success")).to_have_text("$0.25")
        expect(p.get_by_test_id("pay-bonus")).to_have_text(f"${0.05 * len(targets):.2f}")
        total = float(p.get_by_test_id("pay-total").text_content().lstrip("$"))
        assert total >= 0.25 + 0.05 * len(targets)
        link = p.get_by_test_id("prolific-link")
        expect(link).to_have_attribute("href", "https://app.prolific.com/submissions/complete?cc=C0DE123")
        # the targets are now shown to both, the selection framed green
        assert sorted(player.target_ids()) == sorted(targets)
        assert {t for t, f in zip(player.tile_ids(), player.attribute_of_tiles("data-feedback")) if f == "correct"} == set(targets)
        assert {t for t in player.tile_ids() if player.frame_seen(t)[0] == "green"} == set(targets)
        assert not any(player.frame_seen(t)[0] == "red" for t in player.tile_ids())
        expect(p.locator("#composer" if player is speaker else "#submit-selection")).to_be_hidden()
        screenshot(p, name)
    assert codes[0] != codes[1]
    assert speaker.dialogs == [] and listener.dialogs == []
    assert speaker.page_errors == [] and listener.page_errors == []

    # a worker over the game limit who opens the study link again gets the server's message
    again = Player(browser, "a-again").open(prolific_link(server.url, "worker-a", "3"))
    expect(again.page.get_by_test_id("notice-message")).to_contain_text("maximum of 1 games")
    expect(again.page.get_by_test_id("consent-accept")).to_be_hidden()
    screenshot(again.page, "11-refused-game-limit")
    for player in (speaker, listener, again):
        player.close()


# ---------------------------------------------------------------- failure, reload, keyboard, outage


def test_failure_at_the_last_turn_with_reload_keyboard_and_reconnect(browser, start_server, sqlite_url):
    server = start_server(sqlite_url, MULTIREF_RULES__MAX_TURNS="2")
    speaker, listener = pair(browser, server.url, "fail")
    sp, lp = speaker.page, listener.page
    targets = speaker.target_ids()
    non_targets = [t for t in listener.tile_ids() if t not in targets]

    # keyboard only: the speaker types and presses Enter
    speaker.focus_by_tab("utterance-input")
    sp.keyboard.type("the first framed one")
    sp.keyboard.press("Enter")
    expect(lp.get_by_test_id("message-history")).to_contain_text("the first framed one")

    # keyboard only: the listener tabs to two pictures, toggles them with Space and Enter
    listener.wait_until_selecting()
    first, second = (listener.tile_ids().index(t) for t in non_targets[:2])
    listener.focus_by_tab(f"tangram-{first}")
    lp.keyboard.press("Space")
    listener.focus_by_tab(f"tangram-{second}")
    lp.keyboard.press("Enter")
    expect(listener.tile(first)).to_have_attribute("aria-pressed", "true")
    expect(speaker.tile_for(non_targets[1])).to_have_attribute("data-selected", "true")
    selection = listener.selected_ids()
    assert selection == set(non_targets[:2])

    # a reload in mid-game resumes the same state: same selection, messages, turn and order
    order = listener.tile_ids()
    lp.reload()
    listener.wait_for_game()
    expect(listener.tile(first)).to_have_attribute("data-selected", "true")
    assert listener.selected_ids() == selection
    assert listener.tile_ids() == order
    assert listener.messages() == ["the first framed one"]
    expect(lp.get_by_test_id("turn-counter")).to_have_text("Turn 1 of 2")
    listener.wait_until_selecting()
    sp.reload()
    speaker.wait_for_game()
    assert speaker.target_ids() == targets
    assert speaker.messages() == ["the first framed one"]
    expect(speaker.tile_for(non_targets[0])).to_have_attribute("data-selected", "true")

    # keyboard only: submit
    listener.focus_by_tab("submit-selection")
    lp.keyboard.press("Enter")
    expect(speaker.tile_for(non_targets[0])).to_have_attribute("data-feedback", "wrong")
    expect(sp.get_by_test_id("turn-counter")).to_have_text("Turn 2 of 2")

    # the server goes away: both pages say they are reconnecting, then carry on by themselves
    server.kill()
    for p in (sp, lp):
        expect(p.get_by_test_id("connection-banner")).to_be_visible()
        expect(p.get_by_test_id("game-status")).to_contain_text("Reconnecting")
    expect(sp.get_by_test_id("utterance-input")).to_be_disabled()
    screenshot(sp, "12-reconnecting")
    server.start()
    for p in (sp, lp):
        expect(p.get_by_test_id("connection-banner")).to_be_hidden(timeout=20_000)
    expect(sp.get_by_test_id("utterance-input")).to_be_enabled()
    assert speaker.messages() == ["the first framed one"]

    # the last turn goes wrong too: the game ends unsuccessfully, with codes for both
    speaker.say("no, neither of those")
    listener.wait_until_selecting()
    listener.submit()
    for player, name in ((speaker, "13-speaker-end-failure"), (listener, "14-listener-end-failure")):
        player.expect_status("Game over")
        expect(player.page.get_by_test_id("end-message")).to_contain_text("All 2 turns were used")
        player.completion_code()
        expect(player.page.get_by_test_id("pay-success")).to_have_text("$0.00")
        expect(player.page.get_by_test_id("prolific-link")).to_have_count(0)
        screenshot(player.page, name)
    assert speaker.messages() == ["the first framed one", "no, neither of those"]
    assert sorted(listener.target_ids()) == sorted(targets)
    assert speaker.page_errors == [] and listener.page_errors == []
    speaker.close()
    listener.close()


# ---------------------------------------------------------------- a partner who closes the tab


def test_partner_closing_the_tab_releases_the_other_with_a_code(browser, start_server, sqlite_url):
    server = start_server(sqlite_url, MULTIREF_RULES__DISCONNECT_GRACE_SECONDS="2")
    speaker, listener = pair(browser, server.url, "gone")
    speaker.say("hello there")
    listener.wait_until_selecting()
    listener.close()  # the tab is gone; the speaker is told, then released with a code
    speaker.expect_status("Your partner lost their connection")
    screenshot(speaker.page, "15-partner-disconnected")
    speaker.expect_status("connection was lost and they did not come back")
    code = speaker.completion_code()
    assert CODE.match(code)
    total = speaker.page.get_by_test_id("pay-total").text_content()
    assert total.startswith("$")
    screenshot(speaker.page, "16-partner-left-end")
    speaker.close()


# ---------------------------------------------------------------- lobby timeout and preview


def test_lobby_timeout_releases_a_lone_worker_with_a_code_and_preview_does_not_join(
    browser, start_server, sqlite_url
):
    server = start_server(sqlite_url, MULTIREF_LOBBY_TIMEOUT_SECONDS="2", MULTIREF_REQUIRE_QUIZ="false")
    # The page's real CSP stays on here: it must let the HIT be posted to MTurk.
    alone = Player(browser, "alone", bypass_csp=False).open(
        study_link(server.url, workerId="W1", assignmentId="A1", hitId="H1",
                   turkSubmitTo="https://workersandbox.mturk.com")
    )
    alone.consent()
    # without the quiz, the instructions lead straight to the lobby
    expect(alone.page.get_by_test_id("instructions-continue")).to_have_text(re.compile("find me a partner"))
    alone.read_instructions()
    assert alone.page.locator("#screen-quiz").is_hidden()
    expect(alone.page.get_by_test_id("lobby-status")).to_contain_text("completion code")
    released = alone.page.locator("#screen-released")
    expect(released).to_be_visible(timeout=15_000)
    expect(released).to_contain_text("No partner was available")
    expect(released).to_contain_text("paid for your waiting time")
    alone.completion_code()
    expect(alone.page.get_by_test_id("pay-total")).to_have_text(re.compile(r"^\$\d+\.\d\d$"))
    screenshot(alone.page, "17-released-lobby-timeout")
    # a reload shows the same release (the token is kept in sessionStorage)
    code = alone.completion_code()
    alone.page.reload()
    expect(alone.page.get_by_test_id("completion-code")).to_have_text(code)
    # MTurk ExternalQuestion: the end screen posts the assignment id (and the code) to MTurk
    posted: list[tuple[str, str | None]] = []

    def mturk(route):
        posted.append((route.request.url, route.request.post_data))
        route.fulfill(status=200, content_type="text/html", body="<p>HIT submitted</p>")

    alone.page.route("https://workersandbox.mturk.com/**", mturk)
    alone.page.get_by_test_id("mturk-submit").get_by_role("button", name="Submit the HIT").click()
    expect(alone.page.get_by_text("HIT submitted")).to_be_visible()
    assert posted == [
        ("https://workersandbox.mturk.com/mturk/externalSubmit", f"assignmentId=A1&completion_code={code}")
    ]
    alone.close()

    # a link whose turkSubmitTo is not MTurk gets no form: the code is shown to copy instead
    elsewhere = Player(browser, "elsewhere").open(
        study_link(server.url, workerId="W2", assignmentId="A2", hitId="H1", turkSubmitTo="https://evil.example")
    )
    elsewhere.consent()
    elsewhere.read_instructions()
    expect(elsewhere.page.locator("#screen-released")).to_be_visible(timeout=15_000)
    elsewhere.completion_code()
    expect(elsewhere.page.get_by_test_id("mturk-submit")).to_have_count(0)
    elsewhere.close()

    # local test mode: a study link without parameters still works (a fresh worker per visit)
    local = Player(browser, "local").open(study_link(server.url))
    expect(local.page.get_by_test_id("consent-accept")).to_be_visible()
    assert local.join_requests == 1
    local.close()

    preview = Player(browser, "preview").open(
        study_link(server.url, assignmentId="ASSIGNMENT_ID_NOT_AVAILABLE", hitId="H1")
    )
    expect(preview.page.get_by_test_id("notice-title")).to_have_text("Preview")
    expect(preview.page.get_by_test_id("consent-accept")).to_be_hidden()
    expect(preview.page.get_by_test_id("worked-example")).to_be_visible()  # what the task is
    expect(preview.page.get_by_test_id("instructions-continue")).to_be_hidden()
    assert preview.join_requests == 0
    screenshot(preview.page, "18-mturk-preview", full_page=True)
    preview.close()


# ---------------------------------------------------------------- 200% zoom


def test_layout_at_200_percent_zoom_keeps_all_tiles_reachable(browser, start_server, sqlite_url):
    server = start_server(sqlite_url)
    # 1280x720 at 200% zoom: 640x360 CSS pixels, two device pixels each
    zoom = {"viewport": {"width": 640, "height": 360}, "device_scale_factor": 2}
    speaker, listener = pair(browser, server.url, "zoom", **zoom)
    speaker.say("the framed ones")
    listener.wait_until_selecting()
    for player in (speaker, listener):
        p = player.page
        assert p.evaluate("document.documentElement.scrollWidth") <= 640  # no sideways scrolling
        for i in range(10):
            tile = player.tile(i)
            tile.scroll_into_view_if_needed()
            box = tile.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 640, (player.name, i, box)
            assert box["width"] >= 60
            hit = p.evaluate(
                "([x, y]) => document.elementFromPoint(x, y)?.closest('.tile')?.dataset.testid",
                [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
            )
            assert hit == f"tangram-{i}", (player.name, i, hit)
    # every tile can be selected at this zoom, and the submit button reached
    for i in range(10):
        listener.tile(i).click()
    for i in range(10):
        expect(listener.tile(i)).to_have_attribute("data-selected", "true")
    expect(speaker.page.locator('#board [data-selected="true"]')).to_have_count(10)
    listener.page.get_by_test_id("submit-selection").scroll_into_view_if_needed()
    expect(listener.page.get_by_test_id("submit-selection")).to_be_in_viewport()
    listener.page.get_by_test_id("tangram-0").scroll_into_view_if_needed()
    screenshot(listener.page, "19-zoom-200-listener", full_page=True)
    screenshot(speaker.page, "20-zoom-200-speaker", full_page=True)
    # leaving on purpose (two steps, no browser dialog): the partner gets a code at once, the
    # leaver none (SECURITY.md, issue 13 item 4)
    lp = listener.page
    lp.get_by_role("button", name="Leave the game").click()
    lp.get_by_test_id("leave-game").click()
    listener.expect_status("You left the game")
    speaker.expect_status("Your partner left the game")
    assert CODE.match(speaker.completion_code())
    expect(lp.get_by_test_id("no-code")).to_be_visible()
    expect(lp.get_by_test_id("completion-code")).to_have_count(0)
    expect(lp.get_by_test_id("game-status")).to_contain_text("no completion code")
    assert speaker.dialogs == [] and listener.dialogs == []
    speaker.close()
    listener.close()


# ---------------------------------------------------------------- drafts, timers and idling


def test_unsent_draft_is_sent_at_the_deadline_and_an_idle_listener_is_warned(
    browser, start_server, sqlite_url
):
    server = start_server(
        sqlite_url,
        MULTIREF_RULES__SPEAKER_SECONDS="4",
        MULTIREF_RULES__TURN_SECONDS="8",
        MULTIREF_RULES__IDLE_EXTENSION_SECONDS="3",
        MULTIREF_RULES__MAX_IDLE_WARNINGS="1",
    )
    speaker, listener = pair(browser, server.url, "idle")
    sp, lp = speaker.page, listener.page
    # typed, never sent: the page sends drafts, and the server sends the text at the deadline
    sp.get_by_test_id("utterance-input").fill("a bird   with a long neck")
    expect(sp.get_by_test_id("typing-time")).to_contain_text("s left to type")
    for p in (sp, lp):
        expect(p.get_by_test_id("message-history")).to_contain_text("a bird with a long neck")
        expect(p.get_by_test_id("message-history")).to_contain_text("sent automatically")
    expect(sp.get_by_test_id("utterance-input")).to_have_value("")
    expect(sp.get_by_test_id("turn-timer")).to_contain_text("Listener's time")
    expect(lp.get_by_test_id("turn-timer")).to_contain_text("Time to select")
    # the listener does nothing: first a warning, then the game ends: a code for the speaker,
    # none for the idle listener (SECURITY.md, issue 13 item 4)
    listener.expect_status("Are you still there")
    expect(lp.get_by_test_id("game-status")).to_have_attribute("data-tone", "warn")
    screenshot(lp, "21-listener-idle-warning")
    speaker.expect_status("your partner was inactive")
    listener.expect_status("no pictures were selected for too long")
    speaker.completion_code()
    expect(lp.get_by_test_id("no-code")).to_be_visible()
    speaker.close()
    listener.close()


# ---------------------------------------------------------------- server-side page parts (no browser)


def test_consent_text_is_rendered_safely():
    md = render_consent("# Consent\n\n**Pay** <img src=x onerror=alert(1)> [x](javascript:alert(1))", ".md")
    assert "<h1>Consent</h1>" in md and "<strong>Pay</strong>" in md
    assert "<img" not in md and 'href="javascript' not in md
    page = render_consent(
        '<h2 onclick="x()">Study</h2><script>alert(1)</script><p>Read <a href="https://example.org" '
        'onmouseover="x()">this</a> and <a href="javascript:alert(1)">that</a>.</p><iframe src=x></iframe>',
        ".html",
    )
    assert page.startswith("<h2>Study</h2>")
    assert "script" not in page and "alert" not in page and "onclick" not in page and "iframe" not in page
    assert 'href="https://example.org"' in page and "onmouseover" not in page


def test_worked_example_uses_tangrams_of_the_configured_set(tmp_path):
    from app.tangrams.builtin import generate_set
    from app.tangrams.store import TangramSet
    from app.web.pages import EXAMPLE_KILOGRAM

    # a folder holding the KiloGram pictures the example describes (their names, any figure)
    kilogram_dir = tmp_path / "kilogram"
    kilogram_dir.mkdir()
    figure = generate_set(1)["builtin-0001"]
    for tid in [*EXAMPLE_KILOGRAM["ids"], "page-Z1", "page-Z2"]:
        (kilogram_dir / f"{tid}.svg").write_text(figure)
    kilogram = example_for(TangramSet(kilogram_dir))
    assert kilogram["described"] and set(kilogram["targets"]) <= set(kilogram["ids"])
    for i in range(6):
        (tmp_path / f"shape-{i}.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    other = example_for(TangramSet(tmp_path))
    assert not other["described"] and len(other["ids"]) == 4
    assert set(other["ids"]) <= {f"shape-{i}" for i in range(6)}
