"""Personal data out of released text: e-mail addresses, phone numbers, URLs, platform worker
ids and social handles typed by players become typed placeholders (``[EMAIL]``, ``[PHONE]``,
``[URL]``, ``[ID]``, ``[HANDLE]``), with counts per kind.

Used by ``multiref export --release`` on the utterances of every exported file; the database
keeps the original text. Patterns, not a recogniser model: the game's messages are short
descriptions of pictures, and what must not leak is contact data and ids, which have shapes.
"""

from __future__ import annotations

import json
import re
from collections import Counter

_DOMAIN_TLDS = (
    "com|org|net|edu|gov|io|co|uk|de|fr|nl|ca|au|us|me|ly|app|dev|info|biz|xyz|tv|ai|gg|so|to"
)
# (kind, pattern) in the order they are applied: a URL's host is not also a domain-free word,
# an e-mail address is not also a handle.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+\s?(?:@|\(at\)|\[at\])\s?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    (
        "URL",
        re.compile(
            r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"]+"
            rf"|\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:{_DOMAIN_TLDS})\b(?:/[^\s<>\"]*)?",
            re.IGNORECASE,
        ),
    ),
    # Prolific ids: 24 hex digits; MTurk worker ids: A + 12-13 upper-case letters and digits.
    ("ID", re.compile(r"\b[0-9a-fA-F]{24}\b|\bA[0-9A-Z]{11,14}\b")),
    ("PHONE", re.compile(r"(?<![\w+])\+?\d[\d\s().-]{5,}\d(?!\w)")),
    ("HANDLE", re.compile(r"(?<![\w@])@[A-Za-z0-9_]{2,30}\b")),
]


def _is_phone(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    return 7 <= digits <= 15


class Scrubber:
    """Replaces personal data in text; ``counts`` says how many of each kind it replaced."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def text(self, value: str | None) -> str | None:
        if not value:
            return value
        for kind, pattern in PATTERNS:
            value = pattern.sub(lambda m, k=kind: self._replace(k, m.group(0)), value)
        return value

    def _replace(self, kind: str, found: str) -> str:
        if kind == "PHONE" and not _is_phone(found):
            return found
        self.counts[kind] += 1
        return f"[{kind}]"

    def texts(self, values: list | None) -> list | None:
        return None if values is None else [self.text(v) for v in values]

    def event_json(self, raw: str) -> str:
        """An event's JSON text with its player-typed text scrubbed (other events unchanged)."""
        if '"text"' not in raw:
            return raw
        data = json.loads(raw)
        if isinstance(data.get("text"), str):
            data["text"] = self.text(data["text"])
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)
