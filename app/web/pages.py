"""The crowdworkers' pages: the study link entry (``GET /``) and everything after it.

One HTML page carries every screen a worker sees (preview, refusal, consent, instructions,
quiz, lobby, game, end); ``static/app.js`` moves between them and speaks the wire protocol of
``app.protocol``. The server renders what only it knows: the consent text (from
``settings.consent_file`` or ``consent/default.md``), the pictures of the worked example (from
the configured tangram set), the rules' numbers. The Prolific completion link is not in the page: the server hands it out
with the completion code, at the end, to a participant who earned it (``redirect_url``).

Consent text is rendered safely: Markdown without raw HTML (``.md``/``.txt``), or an ``.html``
file reduced to an allowlist of harmless tags and attributes.
"""

from __future__ import annotations

import html
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt

from app import __version__
from app.quiz import questions_for_page

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONSENT = ROOT / "consent" / "default.md"
# MTurk posts an ExternalQuestion HIT back to the turkSubmitTo of the link: these, and nothing else.
MTURK_SUBMIT_ORIGINS = ("https://www.mturk.com", "https://workersandbox.mturk.com")

router = APIRouter()
templates = Jinja2Templates(directory=str(ROOT / "templates"))

# A worked example with KiloGram pictures whose crowd descriptions agree (dense annotations:
# "swan", "hammer", "house", "dog"). None of them is in the MultiRef dev split that games draw
# from by default, so the example gives nothing away. Other sets get a neutral wording.
EXAMPLE_KILOGRAM = {
    "ids": ["page4-162", "page2-131", "page5-232", "page8-234"],
    "targets": ["page4-162", "page5-232"],
    "first_message": "the bird with a long neck, and the tall one with a pointed top",
    "first_selection": ["page4-162", "page2-131"],
    "second_message": "yes the bird! not the hammer. the house with a triangle roof",
}
# The built-in set (seed 0, what a server generates when KiloGram is unavailable), described the way
# a speaker would. The four are in its train split, not the dev split games draw from by default.
EXAMPLE_BUILTIN = {
    "ids": ["builtin-0107", "builtin-0105", "builtin-0113", "builtin-0110"],
    "targets": ["builtin-0107", "builtin-0113"],
    "first_message": "the house with a pointed roof, and the long flat one that looks like a plane",
    "first_selection": ["builtin-0107", "builtin-0110"],
    "second_message": "yes the house! not the V shape. the thin flat one with a pointed nose",
}


def _is_default_builtin(tangrams) -> bool:
    """Whether the set is the built-in one generated with seed 0 (the figures described above)."""
    import json

    from app.tangrams import builtin

    try:
        found = json.loads((Path(tangrams.folder) / builtin.MANIFEST_NAME).read_text())
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return found.get("seed") == 0 and found.get("generator_version") == builtin.GENERATOR_VERSION


# ---------------------------------------------------------------- consent text


class _AllowlistHTML(HTMLParser):
    """Keeps harmless structure (headings, paragraphs, lists, emphasis, links) and text only."""

    TAGS = {
        "p", "br", "h1", "h2", "h3", "h4", "ul", "ol", "li", "strong", "em", "b", "i", "u",
        "a", "blockquote", "hr", "table", "thead", "tbody", "tr", "th", "td", "small", "span",
        "div", "section", "dl", "dt", "dd",
    }
    VOID = {"br", "hr"}
    DROP_CONTENT = {"script", "style", "iframe", "object", "embed", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.DROP_CONTENT:
            self.skipping += 1
            return
        if self.skipping or tag not in self.TAGS:
            return
        extra = ""
        if tag == "a":
            href = dict(attrs).get("href") or ""
            if href.lower().startswith(("https://", "http://", "mailto:")):
                extra = f' href="{html.escape(href, quote=True)}" rel="noopener noreferrer" target="_blank"'
        self.out.append(f"<{tag}{extra}>")
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.DROP_CONTENT:
            self.skipping = max(0, self.skipping - 1)
            return
        if self.skipping or tag not in self.TAGS or tag in self.VOID or tag not in self.open:
            return
        while self.open:
            top = self.open.pop()
            self.out.append(f"</{top}>")
            if top == tag:
                break

    def handle_data(self, data):
        if not self.skipping:
            self.out.append(html.escape(data, quote=False))

    def result(self) -> str:
        return "".join(self.out) + "".join(f"</{t}>" for t in reversed(self.open))


def sanitize_html(source: str) -> str:
    parser = _AllowlistHTML()
    parser.feed(source)
    parser.close()
    return parser.result()


def render_consent(text: str, suffix: str) -> str:
    """Consent text as safe HTML: Markdown (no raw HTML) or allowlisted HTML."""
    if suffix.lower() in (".html", ".htm"):
        return sanitize_html(text)
    return MarkdownIt("commonmark", {"html": False}).render(text)


@lru_cache(maxsize=8)
def _consent_cached(path: str, mtime: float) -> str:
    p = Path(path)
    return render_consent(p.read_text(encoding="utf-8"), p.suffix)


def consent_html(consent_file: Path | None) -> str:
    path = Path(consent_file) if consent_file else DEFAULT_CONSENT
    if not path.is_absolute() and not path.exists():
        path = ROOT / path
    try:
        return _consent_cached(str(path), path.stat().st_mtime)
    except OSError:
        # A deployment must not run without its consent text: say so instead of a blank form.
        return (
            "<p><strong>The consent form could not be loaded.</strong> "
            "Please do not continue, and contact the researchers.</p>"
        )


# ---------------------------------------------------------------- the worked example


def example_for(tangrams) -> dict:
    """Four pictures of the configured set for the instructions' worked example."""
    if all(t in tangrams for t in EXAMPLE_KILOGRAM["ids"]):
        return {**EXAMPLE_KILOGRAM, "described": True}
    if all(t in tangrams for t in EXAMPLE_BUILTIN["ids"]) and _is_default_builtin(tangrams):
        return {**EXAMPLE_BUILTIN, "described": True}
    ids = tangrams.ids()
    picked = [ids[(i * len(ids)) // 4] for i in range(4)] if len(ids) >= 4 else ids
    return {
        "ids": picked,
        "targets": picked[:2],
        "first_message": "(a description of the two framed pictures)",
        "first_selection": [picked[0], picked[2]] if len(picked) > 2 else picked[:1],
        "second_message": "(feedback, and more about the picture still missing)",
        "described": False,
    }


# ---------------------------------------------------------------- routes


def _money(cents: float) -> str:
    return f"${cents / 100:.2f}"


def page_config(request: Request) -> dict:
    services = request.app.state.services
    settings = services.settings
    rules = settings.rules
    return {
        "version": __version__,
        "require_quiz": settings.require_quiz,
        "quiz": questions_for_page(),
        "mturk_submit_origins": list(MTURK_SUBMIT_ORIGINS),
        "lobby_timeout_seconds": settings.lobby_timeout_seconds,
        "lobby_fallback": settings.lobby_fallback,
        "rules": {
            "num_images": rules.num_images,
            "min_targets": rules.min_targets,
            "max_targets": rules.max_targets,
            "max_turns": rules.max_turns,
            "turn_seconds": rules.turn_seconds,
            "speaker_seconds": rules.speaker_seconds,
            "max_utterance_chars": rules.max_utterance_chars,
        },
        "pay": {
            "base_per_minute": _money(rules.base_cents_per_minute),
            "per_correct": _money(rules.bonus_cents_per_correct),
            "success": _money(rules.success_bonus_cents),
        },
    }


def _csp(request: Request) -> str:
    host = request.headers.get("host", "")
    sockets = f" ws://{host} wss://{host}" if host else ""
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'self' {' '.join(MTURK_SUBMIT_ORIGINS)}; "
        "object-src 'none'; frame-ancestors 'none'"
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def entry(request: Request):
    """The study link: Prolific or MTurk parameters in the query string, or none (local test)."""
    services = request.app.state.services
    config = page_config(request)
    example = example_for(services.tangrams)
    response = templates.TemplateResponse(
        request,
        "index.html",
        {
            "config": config,
            "consent_html": consent_html(services.settings.consent_file),
            "example": example,
            "version": __version__,
        },
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = _csp(request)
    response.headers["Referrer-Policy"] = "no-referrer"  # study ids stay out of Referer headers
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"  # no framing: clickjacking of the game
    return response
