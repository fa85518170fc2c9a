"""Helpers for the browser tests: a real Chromium driven by Playwright, and a crowdworker
(``Player``) who goes through the pages the way a person does, by the pages' test ids."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlencode

from playwright.sync_api import Browser, BrowserContext, Page, expect

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("MULTIREF_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DESKTOP = {"width": 1280, "height": 720}
CODE = re.compile(r"^MR-[0-9A-F]{8}$")

# The quiz's right answers, by the start of their label.
QUIZ_ANSWERS = [
    "Only the speaker",
    "Exactly the target pictures",
    "No, so describe",
    "The listener's selection",
]


def colour_family(css: str) -> str:
    """"green" or "red" when that channel clearly dominates an ``rgb(...)`` colour, else "other"."""
    m = re.match(r"rgba?\((\d+), (\d+), (\d+)", css)
    if not m:
        return "other"
    r, g, b = map(int, m.groups())
    if g > r + 40 and g > b + 40:
        return "green"
    if r > g + 40 and r > b + 40:
        return "red"
    return "other"


def server_targets(base_url: str) -> list[str]:
    """The targets of the one live game, from the server's record (admin API), not the page."""
    import httpx

    from tests.conftest import ADMIN_TOKEN

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    (game,) = httpx.get(f"{base_url}/api/admin/games", params={"status": "live"}, headers=auth).json()
    return httpx.get(f"{base_url}/api/admin/games/{game['game_id']}/replay", headers=auth).json()["targets"]


def launch(playwright) -> Browser:
    executable = CHROMIUM if Path(CHROMIUM).exists() else None  # else Playwright's own build
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def study_link(base_url: str, **params: str) -> str:
    return f"{base_url}/?{urlencode(params)}" if params else f"{base_url}/"


def prolific_link(base_url: str, pid: str, session: str = "1") -> str:
    return study_link(base_url, PROLIFIC_PID=pid, STUDY_ID="study-1", SESSION_ID=session)


def screenshot(page: Page, name: str, full_page: bool = False) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


class Player:
    """One crowdworker in their own browser context (own sessionStorage, own websocket)."""

    def __init__(self, browser: Browser, name: str, **context_options) -> None:
        # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's strict
        # CSP forbids; the page's own scripts run under the same rules either way.
        options = {"viewport": DESKTOP, "bypass_csp": True, **context_options}
        self.name = name
        self.context: BrowserContext = browser.new_context(**options)
        self.context.set_default_timeout(15_000)
        self.page: Page = self.context.new_page()
        self.dialogs: list[str] = []
        self.page_errors: list[str] = []
        self.join_requests = 0
        self.page.on("dialog", self._on_dialog)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on(
            "request", lambda r: setattr(self, "join_requests", self.join_requests + ("/api/join" in r.url))
        )

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def close(self) -> None:
        self.context.close()

    # ---------------------------------------------------------------- before the game

    def open(self, url: str) -> "Player":
        self.page.goto(url)
        return self

    def consent(self) -> None:
        self.page.get_by_test_id("consent-accept").click()
        expect(self.page.get_by_test_id("instructions-continue")).to_be_visible()

    def read_instructions(self) -> None:
        self.page.get_by_test_id("instructions-continue").click()

    def pass_quiz(self) -> None:
        for qi, answer in enumerate(QUIZ_ANSWERS):
            self.page.get_by_test_id(f"quiz-question-{qi}").get_by_label(answer).check()
        self.page.get_by_test_id("quiz-submit").click()

    def arrive(self, url: str, quiz: bool = True) -> "Player":
        """Study link -> consent -> instructions (-> quiz); then the lobby or a game opens."""
        self.open(url)
        self.consent()
        self.read_instructions()
        if quiz:
            self.pass_quiz()
        return self

    # ---------------------------------------------------------------- in the game

    def wait_for_game(self, timeout: float = 20_000) -> str:
        expect(self.page.get_by_test_id("tangram-9")).to_be_visible(timeout=timeout)
        role = self.page.locator("#screen-game").get_attribute("data-role")
        assert role in ("speaker", "listener")
        return role

    def tile(self, index: int):
        return self.page.get_by_test_id(f"tangram-{index}")

    def attribute_of_tiles(self, name: str) -> list[str | None]:
        return self.page.locator("#board .tile").evaluate_all(
            f"(tiles) => tiles.map((t) => t.getAttribute({name!r}))"
        )

    def tile_ids(self) -> list[str]:
        return self.attribute_of_tiles("data-tangram-id")

    def target_ids(self) -> list[str]:
        ids, targets = self.tile_ids(), self.attribute_of_tiles("data-target")
        return [t for t, target in zip(ids, targets) if target == "true"]

    def selected_ids(self) -> set[str]:
        ids, selected = self.tile_ids(), self.attribute_of_tiles("data-selected")
        return {t for t, s in zip(ids, selected) if s == "true"}

    def tile_for(self, tangram_id: str):
        return self.page.locator(f'#board .tile[data-tangram-id="{tangram_id}"]')

    def frame_seen(self, tangram_id: str) -> tuple[str, str, str]:
        """What a person sees and hears of a tile's feedback frame, not the data-* attributes the
        same line of script sets: (the colour family of its computed outline, "green", "red" or
        "none"; the badge's text; its accessible name)."""
        outline, width, badge, label = self.tile_for(tangram_id).evaluate(
            """(el) => { const s = getComputedStyle(el);
                 return [s.outlineColor, s.outlineWidth, el.querySelector('.badge').textContent,
                         el.getAttribute('aria-label')]; }"""
        )
        return colour_family(outline) if width not in ("0px", "") else "none", badge, label

    def messages(self) -> list[str]:
        return self.page.get_by_test_id("message-history").get_by_test_id("message-text").all_text_contents()

    def say(self, text: str) -> None:
        box = self.page.get_by_test_id("utterance-input")
        expect(box).to_be_enabled()
        box.fill(text)
        self.page.get_by_test_id("send-utterance").click()

    def click_tiles(self, tangram_ids) -> None:
        for tid in tangram_ids:
            self.tile_for(tid).click()

    def submit(self) -> None:
        self.page.get_by_test_id("submit-selection").click()

    def wait_until_selecting(self) -> None:
        expect(self.page.get_by_test_id("submit-selection")).to_be_enabled()

    def expect_status(self, pattern: str) -> None:
        expect(self.page.get_by_test_id("game-status")).to_contain_text(re.compile(pattern))

    def completion_code(self) -> str:
        code = self.page.get_by_test_id("completion-code")
        expect(code).to_have_text(CODE)
        return code.text_content()

    def focus_by_tab(self, testid: str, limit: int = 40) -> None:
        """Press Tab until the element with this test id has the keyboard focus."""
        for _ in range(limit):
            if self.page.evaluate("document.activeElement && document.activeElement.dataset.testid") == testid:
                return
            self.page.keyboard.press("Tab")
        raise AssertionError(f"{testid} never got the focus by Tab")


def pair(browser: Browser, base_url: str, tag: str, **context_options) -> tuple[Player, Player]:
    """Two workers through the study link into one game; returns (speaker, listener)."""
    a = Player(browser, f"{tag}-a", **context_options).arrive(prolific_link(base_url, f"{tag}-a", "1"))
    expect(a.page.get_by_test_id("lobby-status")).to_be_visible()
    b = Player(browser, f"{tag}-b", **context_options).arrive(prolific_link(base_url, f"{tag}-b", "2"))
    roles = {a.wait_for_game(): a, b.wait_for_game(): b}
    assert set(roles) == {"speaker", "listener"}
    return roles["speaker"], roles["listener"]
