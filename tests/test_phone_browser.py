"""The crowdworker's pages on a phone (390 x 844, touch, mobile viewport) in a real Chromium
against a real server: every screen is saved under test-artifacts/screenshots/phone/, and each is
checked for what a worker trips over on a small screen: status notes cut off with "…", tangrams
too small to tell apart, the completion code below the fold, the newest message scrolled away.
The game-feel details ride along: a long paste is cut with a notice, an automatic submission is
announced, a double click selects once, and a second tab of the same worker says so.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.browser_support import (
    SCREENSHOTS,
    Player,
    launch,
    prolific_link,
)

pytestmark = pytest.mark.browser

PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
PHONE_SHOTS = SCREENSHOTS / "phone"


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


def shot(player: Player, name: str, full_page: bool = False) -> None:
    """Save the screen and check that no visible text on it is cut off."""
    PHONE_SHOTS.mkdir(parents=True, exist_ok=True)
    player.page.screenshot(path=str(PHONE_SHOTS / f"{name}.png"), full_page=full_page)
    assert_nothing_truncated(player)


def assert_nothing_truncated(player: Player) -> None:
    """Every visible status line and paragraph fits its box (no ellipsis, no clipped text),
    and nothing is wider than the phone."""
    cut = player.page.evaluate(
        """() => [...document.querySelectorAll(
              '.status-main, .status-note, p, h1, h2, .code, .bubble, .history li, label, button:not(.tile)')]
            .filter((el) => el.offsetParent !== null && el.clientWidth > 0)
            .filter((el) => el.scrollWidth > el.clientWidth + 1)
            .map((el) => `${el.id || el.className}: ${el.textContent.trim().slice(0, 60)}`)"""
    )
    assert not cut, cut
    width = player.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px phone"


def assert_tiles_fit(player: Player) -> None:
    boxes = player.page.locator("#board .tile").evaluate_all(
        "(tiles) => tiles.map((t) => t.getBoundingClientRect().toJSON())"
    )
    assert len(boxes) == 10
    assert min(b["width"] for b in boxes) >= 80, [round(b["width"]) for b in boxes]
    assert max(b["right"] for b in boxes) <= 390


def assert_newest_message_visible(player: Player) -> None:
    state = player.page.get_by_test_id("message-history").evaluate(
        """(list) => {
            const items = list.querySelectorAll('li');
            const last = items[items.length - 1].getBoundingClientRect();
            const box = list.getBoundingClientRect();
            return {top: last.top, bottom: last.bottom, boxTop: box.top, boxBottom: box.bottom,
                    overflows: list.scrollHeight > list.clientHeight, scrollTop: list.scrollTop};
        }"""
    )
    assert state["overflows"], "the test needs a history longer than its box"
    assert state["scrollTop"] > 0
    # the newest message's end is inside the list's visible box
    assert state["boxTop"] - 1 <= state["bottom"] <= state["boxBottom"] + 1, state


def assert_code_in_first_viewport(player: Player) -> str:
    code = player.completion_code()
    assert player.page.evaluate("window.scrollY") == 0
    box = player.page.get_by_test_id("completion-code").bounding_box()
    assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 844, box
    return code


def test_a_whole_game_on_two_phones(browser, start_server, sqlite_url):
    server = start_server(
        sqlite_url,
        MULTIREF_RULES__SPEAKER_SECONDS="20",
        MULTIREF_RULES__TURN_SECONDS="30",
    )
    a = Player(browser, "phone-a", **PHONE)
    a.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    a.open(prolific_link(server.url, "phone-a", "1"))
    expect(a.page.get_by_test_id("consent-accept")).to_be_visible()
    shot(a, "01-consent")
    a.consent()
    shot(a, "02-instructions")
    shot(a, "02b-instructions-full", full_page=True)
    example = a.page.get_by_test_id("worked-example")
    assert "(" not in example.inner_text().split("The speaker writes:")[1].split("\n")[1]
    a.read_instructions()
    expect(a.page.get_by_test_id("quiz-submit")).to_be_visible()
    shot(a, "03-quiz")
    a.pass_quiz()
    expect(a.page.get_by_test_id("lobby-status")).to_be_visible()
    shot(a, "04-lobby")
    b = Player(browser, "phone-b", **PHONE)
    b.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    b.arrive(prolific_link(server.url, "phone-b", "2"))
    roles = {a.wait_for_game(): a, b.wait_for_game(): b}
    speaker, listener = roles["speaker"], roles["listener"]
    sp, lp = speaker.page, listener.page

    # turn 1: the board is legible; the listener is told where the message will appear
    for p in (speaker, listener):
        assert_tiles_fit(p)
    listener.expect_status("will appear below the pictures")
    shot(speaker, "05-speaker-writes")
    shot(listener, "06-listener-waits")

    # a 600-character paste is cut to 500, and the speaker is told
    long_text = ("the long flat one lying down like a plane " * 15)[:600]
    box = sp.get_by_test_id("utterance-input")
    box.focus()
    sp.evaluate("(text) => navigator.clipboard.writeText(text)", long_text)
    sp.keyboard.press("Control+V")
    expect(box).to_have_value(long_text[:500])
    expect(sp.get_by_test_id("composer-note")).to_contain_text("cut to 500 characters")
    expect(sp.get_by_test_id("char-counter")).to_have_text("500 / 500")
    shot(speaker, "07-speaker-paste-cut")
    sp.get_by_test_id("send-utterance").click()
    expect(sp.get_by_test_id("composer-note")).to_have_text("")

    # the listener selects one wrong picture and lets the time run out
    listener.wait_until_selecting()
    shot(listener, "08-listener-selects")  # the speaker's long message, wrapped, not cut
    targets = speaker.target_ids()
    wrong = next(t for t in speaker.tile_ids() if t not in targets)
    listener.click_tiles([wrong])
    shot(speaker, "09-speaker-sees-clicks")
    expect(lp.get_by_test_id("turn-counter")).to_contain_text("Turn 2", timeout=40_000)
    listener.expect_status("submitted automatically")
    shot(listener, "10-listener-auto-submitted")
    shot(speaker, "11-speaker-feedback")

    # turn 2: a double click selects a picture once; then the targets, and success
    speaker.say(("yes the house! not the ramp. the other flat one " * 10)[:480])
    listener.wait_until_selecting()
    listener.tile_for(targets[0]).dblclick()
    expect(listener.tile_for(targets[0])).to_have_attribute("data-selected", "true")
    lp.wait_for_timeout(700)  # the server's answer is in: still selected after a double click
    expect(listener.tile_for(targets[0])).to_have_attribute("data-selected", "true")
    listener.click_tiles([wrong, *targets[1:]])
    assert listener.selected_ids() == set(targets)
    listener.submit()
    for p, name in ((speaker, "12-speaker-end"), (listener, "13-listener-end")):
        p.expect_status("Success")
        assert_code_in_first_viewport(p)
        assert_newest_message_visible(p)
        shot(p, name)
        shot(p, name + "-full", full_page=True)
    assert not speaker.page_errors and not listener.page_errors
    speaker.close()
    listener.close()


def test_released_partner_gone_and_a_second_tab_on_a_phone(browser, start_server, sqlite_url):
    lonely = start_server(sqlite_url, MULTIREF_LOBBY_TIMEOUT_SECONDS="4")
    # a lone worker is released by the lobby timeout, with a code in the first viewport
    alone = Player(browser, "phone-alone", **PHONE).arrive(prolific_link(lonely.url, "phone-alone"))
    code = alone.completion_code()
    box = alone.page.get_by_test_id("completion-code").bounding_box()
    assert box["y"] + box["height"] <= 844
    shot(alone, "20-released-lobby-timeout")
    alone.close()
    lonely.stop()

    server = start_server(
        sqlite_url.replace(".sqlite3", "-2.sqlite3"), MULTIREF_RULES__DISCONNECT_GRACE_SECONDS="6"
    )

    # two workers in a game; the listener's phone opens the study in a second tab
    a = Player(browser, "phone-c", **PHONE).arrive(prolific_link(server.url, "phone-c", "1"))
    expect(a.page.get_by_test_id("lobby-status")).to_be_visible()
    b = Player(browser, "phone-d", **PHONE).arrive(prolific_link(server.url, "phone-d", "2"))
    a.wait_for_game()
    b.wait_for_game()
    second = b.context.new_page()
    second.goto(prolific_link(server.url, "phone-d", "2"))
    expect(second.get_by_test_id("tangram-9")).to_be_visible()
    expect(b.page.get_by_test_id("notice-title")).to_have_text("This study is open in another tab")
    PHONE_SHOTS.mkdir(parents=True, exist_ok=True)
    b.page.screenshot(path=str(PHONE_SHOTS / "21-second-tab-notice.png"))
    assert_nothing_truncated(b)
    second.close()

    # the partner's phone goes away: the other is told, in full, and then released with a code
    b.close()
    a.expect_status("lost their connection")
    shot(a, "22-partner-disconnected")
    note = a.page.locator("#status-note")
    expect(note).to_contain_text("you get your completion code")
    expect(a.page.get_by_test_id("end-title")).to_be_visible(timeout=30_000)
    assert_code_in_first_viewport(a)
    shot(a, "23-partner-gone-end")
    assert code and not a.page_errors
    a.close()


def test_the_worked_example_describes_the_built_in_set(tmp_path):
    """The server's fallback set (built-in, seed 0) gets real example text, not placeholders."""
    import json
    import time

    from app.tangrams import builtin
    from app.tangrams.store import TangramSet
    from app.web.pages import EXAMPLE_BUILTIN, example_for

    started = time.monotonic()
    builtin.write_set(tmp_path / "seed0", 1013, 0)
    example = example_for(TangramSet(tmp_path / "seed0"))
    assert example["described"] and example["ids"] == EXAMPLE_BUILTIN["ids"]
    for text in (example["first_message"], example["second_message"]):
        assert "(" not in text and len(text.split()) >= 8
    assert set(example["targets"]) <= set(example["ids"])
    assert len(set(example["first_selection"]) & set(example["targets"])) == 1  # one right, one wrong
    # the example gives nothing away: none of its pictures is in the split games draw from
    splits = json.loads((tmp_path / "seed0" / builtin.SPLITS_NAME).read_text())
    assert not set(example["ids"]) & set(splits["dev"])
    # another seed draws other figures: the description would not fit them
    builtin.write_set(tmp_path / "seed1", 200, 1)
    assert not example_for(TangramSet(tmp_path / "seed1"))["described"]
    assert time.monotonic() - started < 120


def test_the_pages_have_a_favicon(start_server, sqlite_url):
    import re

    import httpx

    server = start_server(sqlite_url)
    page = httpx.get(server.url + "/").text
    login = httpx.get(server.url + "/admin/login").text
    for html in (page, login):
        href = re.search(r'<link rel="icon" href="([^"]+)"', html).group(1)
        icon = httpx.get(server.url + href)
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.text.lstrip().startswith("<svg")
