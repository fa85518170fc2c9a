"""Simulated people: speakers who describe tangrams with real crowd descriptions and react to
the listener with implicit feedback, and (for human–human games) a simulated human listener.

A speaker sees only what a person in the speaker seat sees: the images with the targets framed,
and after each listener turn the listener's selection (green = target, red = not). It says only
what a person could: KiloGram crowd descriptions and feedback phrases in the styles of the
recorded ReSpect games ("total 4. first one bird flying", "good. next T symbol", "no. deselect
the funnel"). Never a tangram id, a letter or a screen position.

Every utterance that reacts to a listener action carries the action's TRUE label (what the
speaker saw: +1 only good clicks, −1 only bad ones or nothing, 0 mixed) and which noise shaped
the wording. The driver keeps those in a side file that only the report reads.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

POSITIVE = ["good.", "yes!", "correct.", "nice.", "great.", "yes, good.", "perfect."]
NEGATIVE = ["no.", "wrong.", "incorrect.", "no, not that one.", "nope.", "wrong one."]
AMBIGUOUS = ["ok.", "hmm.", "alright.", "well.", "so."]
FIRST = ["{d}", "total {n}. first one {d}", "choose the {d}", "{n} pictures. first {d}", "the {d}"]
NEXT = ["{fb} next {d}", "{fb} now choose the {d}", "{fb} {d}", "{fb} next one {d}", "{fb} the {d}"]
DESELECT = ["{fb} deselect the {w}", "{fb} unselect the {w}", "{fb} remove the {w}"]
REPHRASE = ["{d}", "it looks like {d}", "i mean the {d}", "try the {d}"]
MIXED = "{fb} one is right. deselect the {w}"


@dataclass(frozen=True)
class Noise:
    """How often the speaker departs from clean feedback (probabilities per reaction)."""

    silent: float = 0.2  # no feedback word: the speaker just moves on (or repeats itself)
    rephrase: float = 0.5  # after a miss: a new description of the same target, not the old one
    ambiguous: float = 0.03  # a non-committal word ("ok.", "hmm.") instead of yes/no
    wrong: float = 0.01  # the opposite feedback word (a distracted speaker)

    def json(self) -> dict:
        return self.__dict__.copy()


# ---------------------------------------------------------------- descriptions


_WORD = re.compile(r"[a-z]+")


class Descriptions:
    """KiloGram's crowd descriptions (``whole`` field) of each tangram, cleaned.

    ``distinctive`` keeps, per tangram, the descriptions whose words are most specific to it
    (a speaker who wants to be understood avoids "human" when five images are people)."""

    def __init__(self, by_tangram: dict[str, list[str]], keep: float = 0.6) -> None:
        self.all = {t: ds for t, ds in by_tangram.items() if ds}
        words_in = {t: Counter(w for d in ds for w in set(_WORD.findall(d))) for t, ds in self.all.items()}
        total = Counter()
        for c in words_in.values():
            total.update(c)
        n_t = len(self.all)
        self.distinctive: dict[str, list[str]] = {}
        for t, ds in self.all.items():
            def score(d: str) -> float:
                ws = set(_WORD.findall(d))
                if not ws:
                    return -1e9
                return sum(math.log((words_in[t][w] + 0.5) / (total[w] + 0.5) * n_t) for w in ws) / len(ws)

            ranked = sorted(ds, key=score, reverse=True)
            self.distinctive[t] = ranked[: max(3, int(len(ranked) * keep))]

    @classmethod
    def load(cls, path: str | Path, keep: float = 0.6) -> "Descriptions":
        """``dense_annotations.json`` (or KiloGram's ``dense.json``): {id: [{"whole": …}]}."""
        p = Path(path)
        if p.is_dir():
            p = p / "dense_annotations.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"no KiloGram annotations at {p}: pass --annotations pointing to dense_annotations.json"
            )
        raw = json.loads(p.read_text())
        out: dict[str, list[str]] = {}
        for tid, anns in raw.items():
            ds = []
            for a in anns:
                text = " ".join(str(a.get("whole", "") if isinstance(a, dict) else a).lower().split())
                text = re.sub(r"[^a-z0-9 ,'-]", "", text).strip(" ,")
                if 1 <= len(text) <= 60 and tid.lower() not in text:
                    ds.append(text)
            out[tid] = ds
        return cls(out, keep)

    @property
    def tangrams(self) -> list[str]:
        return sorted(self.all)

    def pick(self, tangram: str, rng: random.Random, avoid: str | None = None) -> str:
        pool = self.distinctive[tangram]
        choices = [d for d in pool if d != avoid] or pool
        return rng.choice(choices)

    def vocabulary_lines(self) -> list[str]:
        return [d for ds in self.all.values() for d in ds]


# ---------------------------------------------------------------- what the speaker sees


def true_label(before: set[str], after: set[str], targets: set[str]) -> int:
    """The speaker's verdict on one listener action, as a person with the targets sees it: the
    spec's heuristic (``learning.retrospect.heuristic_label``: +1 a good select or deselect, 0 one
    part good and the other not, −1 otherwise, no change included), so the report scores the
    decoder against the same rule the evaluation uses."""
    from learning.retrospect import heuristic_label

    return heuristic_label(before, after, targets)


@dataclass
class Utterance:
    text: str
    intent_select: list[str]  # what the speaker means the listener to do (for the sim listener)
    intent_deselect: list[str]
    reacts_to_turn: int | None = None  # the listener action this message answers
    true_label: int | None = None
    said: str | None = None  # the feedback the wording carries: positive, negative, ambiguous, none
    noise: list[str] = field(default_factory=list)


class SimSpeaker:
    """One speaker for one game. ``speak(turn, tiles, before)``: ``tiles`` is the speaker's view
    as (tangram id, selected, is target) triples; ``before`` the selection before the listener's
    last action (the speaker remembers what it saw a turn ago)."""

    def __init__(self, descriptions: Descriptions, noise: Noise, rng: random.Random) -> None:
        self.d = descriptions
        self.noise = noise
        self.rng = rng
        self.focus: str | None = None
        self.last_description: str | None = None

    def _describe(self, tangram: str, rephrase: bool) -> str:
        if self.focus == tangram and self.last_description and not rephrase:
            return self.last_description
        text = self.d.pick(tangram, self.rng, avoid=self.last_description if self.focus == tangram else None)
        self.focus, self.last_description = tangram, text
        return text

    def speak(self, turn: int, tiles: list[tuple[str, bool, bool]], before: set[str] | None) -> Utterance:
        rng, noise = self.rng, self.noise
        targets = {t for t, _, g in tiles if g}
        selected = {t for t, s, _ in tiles if s}
        missing = [t for t, s, g in tiles if g and not s]  # in the speaker's order
        wrong = [t for t, s, g in tiles if s and not g]
        if turn == 1 or before is None:
            target = missing[0] if missing else None
            d = self._describe(target, False) if target else "that is all"
            text = rng.choice(FIRST).format(d=d, n=len(targets))
            return Utterance(text, [target] if target else [], [])
        label = true_label(before, selected, targets)
        tags: list[str] = []
        meant = "positive" if label == 1 else "negative"
        said = meant
        r = rng.random()
        if r < noise.wrong:
            said = "negative" if meant == "positive" else "positive"
            tags.append("wrong")
        elif r < noise.wrong + noise.ambiguous:
            said = "ambiguous"
            tags.append("ambiguous")
        elif r < noise.wrong + noise.ambiguous + noise.silent:
            said = "none"
            tags.append("silent")
        fb = {
            "positive": rng.choice(POSITIVE),
            "negative": rng.choice(NEGATIVE),
            "ambiguous": rng.choice(AMBIGUOUS),
            "none": "",
        }[said]
        if wrong:
            w = self.d.pick(wrong[0], rng)
            template = MIXED if label == 0 else rng.choice(DESELECT)
            text = template.format(fb=fb, w=w)
            return self._done(text, [], [wrong[0]], turn, label, said, tags)
        target = self.focus if self.focus in missing else (missing[0] if missing else None)
        if target is None:  # nothing left to say (the game would have ended): a plain check
            return self._done(f"{fb} all done".strip(), [], [], turn, label, said, tags)
        if target == self.focus and label != 1:  # a miss on the same target: repeat or rephrase
            rephrase = rng.random() < noise.rephrase
            if rephrase:
                tags.append("rephrase")
            d = self._describe(target, rephrase)
            text = f"{fb} {rng.choice(REPHRASE).format(d=d)}" if rephrase else f"{fb} {d}"
        else:
            d = self._describe(target, False)
            text = rng.choice(NEXT).format(fb=fb, d=d)
        return self._done(text, [target], [], turn, label, said, tags)

    @staticmethod
    def _done(text, sel, desel, turn, label, said, tags) -> Utterance:
        return Utterance(" ".join(text.split()), sel, desel, turn - 1, label, said, tags)


class SimHumanListener:
    """A person in the listener seat of a human–human game: understands the speaker's intent
    with probability ``accuracy``; otherwise clicks a wrong image (or nothing)."""

    def __init__(self, accuracy: float, rng: random.Random) -> None:
        self.accuracy = accuracy
        self.rng = rng

    def choose(self, tiles: list[str], selected: set[str], said: Utterance) -> set[str]:
        wanted = (selected - set(said.intent_deselect)) | set(said.intent_select)
        if self.rng.random() < self.accuracy:
            return wanted
        others = [t for t in tiles if t not in selected and t not in said.intent_select]
        if said.intent_select and others:
            return selected | {self.rng.choice(others)}
        return set(selected)
