"""Retrospection: decode implicit feedback from the speaker's next utterance (docs/method.md, docs/learning.md).

For every listener action followed by another speaker utterance, the *feedback decoder* — the
base model without any adapter, text only — reads the last four messages (three on the first
turn: previous listener action, speaker utterance, the action being judged, the speaker's next
utterance). The dialogue's *format* is fixed (as the reference): one line per message,
``\tSpeaker: …<end_of_utterance>`` / ``\tListener: …<end_of_utterance>``; the *wording* around it
is a replaceable template (``learning/prompts/``) holding ``{dialogue}`` between its own
start- and end-of-conversation marker lines. The prompt is right-truncated at
``DecoderConfig.max_tokens`` (256) tokens, as the reference did.

Two ways to decide (``DecoderConfig.method``, the ``decoder_scoring`` option):

* ``generate`` (paper default): greedy generation of a few tokens; the label is an exact match
  of the answer's first word on Positive / Negative (/ Neutral), case-insensitive; any other
  answer gets the fallback (binary: negative, ternary: neutral) and is flagged ``unparsed``.
* ``margin`` (this project's alternative, formerly ``scores``): one forward pass per action;
  the label is read from the log-probability of each label word after the prompt. The binary
  decoder says positive only if log p(positive) − log p(negative) > ``margin``.

The instructions before ``{dialogue}`` are the same for every action: their keys and values are
computed once and shared by every batch (``prefix_cache``), which is most of the prompt.

Besides the model, targets give a *heuristic* label (:func:`heuristic_label`, the reference's rule), stored
next to the decoder's label for evaluation only: training never reads it. :func:`decoder_metrics`
scores decoded labels against any reference labels (heuristic or human).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.game.rules import GameState
from learning.distributed import Runtime, main_loads_async
from policy_worker.model import END_OF_UTTERANCE
from policy_worker.prompt import action_text, clean_utterance, letter_map, render_prompt

logger = logging.getLogger("multiref.learning")

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
PLACEHOLDER = "{dialogue}"
LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "binary": ("positive", "negative"),
    "ternary": ("positive", "neutral", "negative"),
}
WORD_LABEL = {"positive": 1, "neutral": 0, "negative": -1}
FALLBACK_LABEL = {"binary": -1, "ternary": 0}  # a generated answer that is no label word
CLASSES = (-1, 0, 1)

# The heuristic label of an action that changes nothing ("nothing"): the reference's rule gives −1 (no part
# is good), and every turn asks the listener to change its selection.
EMPTY_ACTION_HEURISTIC = -1


# ---------------------------------------------------------------- the heuristic label


def move_quality(
    selection_before: Iterable[str], selection_after: Iterable[str], targets: Iterable[str]
) -> tuple[set[str], set[str], bool, bool]:
    """(newly selected, deselected, good select, good deselect): a part is good when it is
    non-empty and all targets (select) / all non-targets (deselect)."""
    before, after, goal = set(selection_before), set(selection_after), set(targets)
    selected, deselected = after - before, before - after
    good_select = bool(selected) and selected <= goal
    good_deselect = bool(deselected) and not (deselected & goal)
    return selected, deselected, good_select, good_deselect


def heuristic_label(
    selection_before: Iterable[str], selection_after: Iterable[str], targets: Iterable[str]
) -> int:
    """The reference's rule: +1 if the newly selected images are all targets or the deselected ones all
    non-targets, with the other part empty or also good; 0 if one part is all good and the
    other is not; −1 otherwise (an empty action included). Evaluation only."""
    selected, deselected, good_sel, good_desel = move_quality(
        selection_before, selection_after, targets
    )
    if (good_sel and (not deselected or good_desel)) or (good_desel and not selected):
        return 1
    if good_sel or good_desel:  # one part all good, the other non-empty and not
        return 0
    return -1


def is_good_move(
    selection_before: Iterable[str], selection_after: Iterable[str], targets: Iterable[str]
) -> bool:
    """A good select or a good deselect (the reference's filter of held-out human turns)."""
    _, _, good_sel, good_desel = move_quality(selection_before, selection_after, targets)
    return good_sel or good_desel


# ---------------------------------------------------------------- what the decoder reads


@dataclass(frozen=True)
class FeedbackContext:
    """One listener action to judge, with the messages around it (actions in listener letters)."""

    game_id: str
    turn: int  # 1-based turn of the action being judged
    previous_action: str | None  # the listener's action of the turn before (None on turn 1)
    utterance: str
    action: str
    next_utterance: str
    heuristic: int | None = None

    def lines(self) -> list[str]:
        """The last four messages (three on turn 1), one line each in the reference's format:
        ``\tSpeaker: …<end_of_utterance>`` / ``\tListener: …<end_of_utterance>``."""
        messages = [] if self.previous_action is None else [("Listener", self.previous_action)]
        messages += [
            ("Speaker", _one_line(self.utterance)),
            ("Listener", self.action),
            ("Speaker", _one_line(self.next_utterance)),
        ]
        return [f"\t{who}: {text}{END_OF_UTTERANCE}" for who, text in messages]

    def dialogue(self) -> str:
        """What replaces ``{dialogue}`` in a template: the lines, one per line."""
        return "\n".join(self.lines())


def _one_line(text: str) -> str:
    return clean_utterance(" ".join(text.split()))


def feedback_contexts(state: GameState) -> list[FeedbackContext]:
    """Every listener action of a game that a later speaker utterance answers.

    The game's last action (no next utterance) gets none; neither does a turn without a
    submitted selection.
    """
    letters = letter_map(state.config.listener_order)
    out: list[FeedbackContext] = []
    turns = state.turns
    for i, record in enumerate(turns):
        if record.utterance is None or record.selection_after is None:
            continue
        if i + 1 >= len(turns) or turns[i + 1].utterance is None:
            continue
        previous = None
        if i > 0 and turns[i - 1].selection_after is not None:
            prev = turns[i - 1]
            previous = action_text(prev.selection_before, prev.selection_after, letters)
        out.append(
            FeedbackContext(
                game_id=state.game_id,
                turn=record.turn,
                previous_action=previous,
                utterance=record.utterance,
                action=action_text(record.selection_before, record.selection_after, letters),
                next_utterance=turns[i + 1].utterance,
                heuristic=heuristic_label(
                    record.selection_before, record.selection_after, state.config.targets
                ),
            )
        )
    return out


@dataclass(frozen=True)
class FeedbackTemplate:
    """A prompt template: instructions, ``{dialogue}``, question. Researchers may replace it."""

    text: str
    source: str = "inline"

    @classmethod
    def load(cls, path: str | Path | None, decoder: str) -> FeedbackTemplate:
        """The template file at ``path``, or the packaged one for ``decoder``."""
        p = Path(path) if path else PROMPTS_DIR / f"feedback_{decoder}.txt"
        text = p.read_text(encoding="utf-8").strip()
        if text.count(PLACEHOLDER) != 1:
            raise ValueError(f"template {p} must contain {PLACEHOLDER} exactly once")
        return cls(text=text, source=str(p))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, context: FeedbackContext) -> str:
        return self.text.replace(PLACEHOLDER, context.dialogue())


# ---------------------------------------------------------------- the decoder


METHODS = ("generate", "margin")
METHOD_ALIASES = {"scores": "margin"}  # the name before the paper profile


@dataclass
class DecoderConfig:
    """How the feedback decoder decides. Everything that changes labels is in its version.

    ``method`` is the ``decoder_scoring`` option: ``generate`` (paper) or ``margin``.
    ``max_tokens`` right-truncates every prompt (0: no truncation)."""

    decoder: str = "binary"  # binary | ternary
    method: str = "generate"  # generate | margin
    margin: float = 0.5  # binary, margin: positive only if logp(pos) − logp(neg) > margin (nats)
    batch_size: int = 32
    prefix_cache: bool = True  # encode the shared instructions once
    scoring: str = "auto"  # auto | first_token | sequence (margin method)
    max_new_tokens: int = 3  # generate method
    max_tokens: int = 256  # right truncation of the prompt (as the reference)

    def __post_init__(self) -> None:
        self.method = METHOD_ALIASES.get(self.method, self.method)
        if self.decoder not in LABEL_WORDS:
            raise ValueError(f"decoder must be one of {sorted(LABEL_WORDS)}, not {self.decoder!r}")
        if self.method not in METHODS:
            raise ValueError(f"decoder scoring must be generate or margin, not {self.method!r}")
        if self.scoring not in ("auto", "first_token", "sequence"):
            raise ValueError(f"scoring must be auto, first_token or sequence, not {self.scoring!r}")
        if self.max_tokens < 0 or self.max_new_tokens < 1:
            raise ValueError("max_tokens must be >= 0 and max_new_tokens >= 1")

    @property
    def words(self) -> tuple[str, ...]:
        return LABEL_WORDS[self.decoder]


@dataclass
class Decision:
    label: int
    scores: dict[str, Any] = field(default_factory=dict)


def decoder_version(config: DecoderConfig, template: FeedbackTemplate, model_id: str) -> str:
    """name + settings + template hash + model id, at most 64 characters (the column's size)."""
    settings = config.method
    if config.method == "margin" and config.decoder == "binary":
        settings += f"-m{config.margin:g}"
    if config.method == "generate":
        settings += f"-n{config.max_new_tokens}"
    settings += f"-L{config.max_tokens}"
    tail = Path(str(model_id).rstrip("/")).name or "model"
    model_tag = hashlib.sha256(str(model_id).encode()).hexdigest()[:6]
    head = f"{config.decoder}-{settings}-t{template.sha256[:8]}-"
    room = 64 - len(head) - len(model_tag) - 1
    return f"{head}{tail[: max(room, 1)]}-{model_tag}"[:64]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        if s[:n] == first[:n]:  # the usual case, compared in C
            continue
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


class FeedbackDecoder:
    """The base model (no adapter), text only, labelling actions in batches."""

    def __init__(self, policy: Any, config: DecoderConfig, template: FeedbackTemplate) -> None:
        self.policy = policy
        self.config = config
        self.template = template
        self.version = decoder_version(config, template, policy.base)
        # Each label word's tokens after the prompt; found from the tokenizer on first use.
        self.label_ids: list[tuple[int, ...]] | None = None
        self._frame: str | None = None

    # -- prompts

    def render(self, context: FeedbackContext) -> str:
        """The decoder prompt: the filled template as the user message, then ``Assistant:``."""
        chat = [
            {"role": "user", "content": [{"type": "text", "text": self.template.render(context)}]}
        ]
        return render_prompt(self.policy.processor, chat, add_generation_prompt=True)

    def prompt(self, context: FeedbackContext) -> str:
        """``render(context)``, from the chat rendered once around the template (fast path)."""
        if self._frame is None:
            chat = [{"role": "user", "content": [{"type": "text", "text": self.template.text}]}]
            frame = render_prompt(self.policy.processor, chat, add_generation_prompt=True)
            if frame.count(PLACEHOLDER) != 1:
                raise ValueError("the chat template changes the feedback template's placeholder")
            self._frame = frame
        return self._frame.replace(PLACEHOLDER, context.dialogue())

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.policy.tokenizer(list(texts), add_special_tokens=True)["input_ids"]

    def label_token_ids(self, reference_prompt: str) -> list[tuple[int, ...]]:
        """Each label word's tokens as the model would write it after the prompt (in context)."""
        if self.label_ids is None:
            base = self._encode([reference_prompt])[0]
            out = []
            for word in self.config.words:
                ids = self._encode([reference_prompt + " " + word])[0]
                if ids[: len(base)] != base or len(ids) == len(base):
                    raise ValueError(f"the tokenizer merges the prompt's end with {word!r}")
                out.append(tuple(ids[len(base) :]))
            self.label_ids = out
        return self.label_ids

    # -- deciding

    def decide(
        self, contexts: Sequence[FeedbackContext], on_batch: Callable[[int], None] | None = None
    ) -> list[Decision]:
        """One decision per context, in order; ``on_batch(n)`` after each batch (progress)."""
        import torch

        if not contexts:
            return []
        prompts = [self.prompt(c) for c in contexts]
        ids = self._encode(prompts)
        if self.config.max_tokens:  # right truncation, as the reference's processor did
            ids = [x[: self.config.max_tokens] for x in ids]
        with torch.inference_mode(), self.policy.use_adapter(None):
            if self.config.method == "generate":
                return self._generate_all(ids, on_batch)
            return self._score_all(prompts, ids, on_batch)

    def _batches(self, ids: list[list[int]]) -> list[list[int]]:
        """Indices in batches of similar length (less padding), longest first."""
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        b = max(1, self.config.batch_size)
        return [order[k : k + b] for k in range(0, len(order), b)]

    def _prefix(self, ids: list[list[int]], reserve: int = 1) -> tuple[int, Any]:
        """Length and key/value cache of the token prefix every prompt shares (0, None if off),
        leaving at least ``reserve`` tokens of every prompt after it."""
        import torch

        from policy_worker.decoding import _output_cache

        if not self.config.prefix_cache:
            return 0, None
        p = min(common_prefix_len(ids), min(len(s) for s in ids) - reserve)
        if p < 2:
            return 0, None
        dev = self.policy.device
        out = self.policy.model(
            input_ids=torch.tensor([ids[0][:p]], device=dev),
            attention_mask=torch.ones((1, p), dtype=torch.long, device=dev),
            use_cache=True,
            logits_to_keep=1,
        )
        return p, _output_cache(out)

    def _forward(
        self, rows: list[list[int]], p: int, prefix_cache: Any, keep: int, reuse_cache: bool = True
    ) -> Any:
        """Log-softmax at the last ``keep`` positions of left-padded rows after the prefix.

        The prefix cache is copied for the batch unless ``reuse_cache`` is False (used once, as
        in pre-training, where it carries gradients and cannot be deep-copied)."""
        import torch

        from policy_worker.decoding import _cache_kwarg

        dev = self.policy.device
        n, width = len(rows), max(len(r) for r in rows)
        pad = self.policy.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=dev)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0) + p
        kwargs: dict[str, Any] = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache) if reuse_cache else prefix_cache
            cache.batch_repeat_interleave(n)
            mask = torch.cat([torch.ones((n, p), dtype=mask.dtype, device=dev), mask], dim=-1)
            kwargs[_cache_kwarg(self.policy)] = cache
        out = self.policy.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=prefix_cache is not None,
            logits_to_keep=keep,
            **kwargs,
        )
        return torch.log_softmax(out.logits[:, -keep:].float(), dim=-1)

    def _score_all(
        self, prompts: list[str], ids: list[list[int]], on_batch: Callable[[int], None] | None
    ) -> list[Decision]:
        label_ids = self.label_token_ids(prompts[0])
        firsts = [t[0] for t in label_ids]
        distinct = len(set(firsts)) == len(firsts)
        mode = self.config.scoring
        if mode == "auto":
            mode = "first_token" if distinct else "sequence"
        if mode == "first_token" and not distinct:
            raise ValueError("the label words share their first token: use scoring=sequence")
        p, prefix_cache = self._prefix(ids)
        decisions: list[Decision | None] = [None] * len(ids)
        for batch in self._batches(ids):
            if mode == "first_token":
                logp = self._forward([ids[i][p:] for i in batch], p, prefix_cache, 1)[:, -1]
                per_label = logp[:, firsts]  # [n, L]
            else:
                per_label = self._sequence_scores(
                    [ids[i][p:] for i in batch], p, prefix_cache, label_ids
                )
            for row, i in zip(per_label.float().cpu().tolist(), batch):
                decisions[i] = self._from_logps(row, mode)
            if on_batch:
                on_batch(len(batch))
        return [d for d in decisions if d is not None]

    def _sequence_scores(
        self, suffixes: list[list[int]], p: int, prefix_cache: Any, label_ids: list[tuple[int, ...]]
    ) -> Any:
        """log p(word | prompt) summed over each label word's tokens: rows = actions × labels."""
        import torch

        n_labels = len(label_ids)
        rows = [list(s) + list(lab[:-1]) for s in suffixes for lab in label_ids]
        keep = max(len(lab) for lab in label_ids)
        logp = self._forward(rows, p, prefix_cache, keep)  # [n*L, keep, V]
        out = torch.zeros((len(suffixes), n_labels))
        for r in range(len(rows)):
            lab = label_ids[r % n_labels]
            k = len(lab)
            steps = logp[r, keep - k :]  # the positions predicting lab[0..k-1]
            idx = torch.tensor(lab, device=steps.device)
            out[r // n_labels, r % n_labels] = steps.gather(-1, idx[:, None]).sum().cpu()
        return out

    def _from_logps(self, logps: list[float], mode: str) -> Decision:
        words = self.config.words
        scores: dict[str, Any] = {"method": "margin", "scoring": mode}
        scores["logp"] = {w: round(v, 5) for w, v in zip(words, logps)}
        top = max(logps)
        z = math.log(sum(math.exp(v - top) for v in logps)) + top
        scores["p"] = {w: round(math.exp(v - z), 5) for w, v in zip(words, logps)}
        by_word = dict(zip(words, logps))
        if self.config.decoder == "binary":
            diff = by_word["positive"] - by_word["negative"]
            scores["margin"] = self.config.margin
            label = 1 if diff > self.config.margin else -1
        else:
            best = [w for w in words if by_word[w] == top]
            label = WORD_LABEL[best[0]] if len(best) == 1 else 0
        return Decision(label=label, scores=scores)

    def _generate_all(
        self, ids: list[list[int]], on_batch: Callable[[int], None] | None
    ) -> list[Decision]:
        import torch

        from policy_worker.decoding import _cache_kwarg, _output_cache

        tok = self.policy.tokenizer
        stops = {tok.eos_token_id, self.policy.stop_token_id}
        decisions: list[Decision | None] = [None] * len(ids)
        p, prefix_cache = self._prefix(ids)
        for batch in self._batches(ids):
            rows = [ids[i][p:] for i in batch]
            n, width = len(rows), max(len(r) for r in rows)
            dev = self.policy.device
            pad = tok.pad_token_id or 0
            x = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=dev)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)
            pos = (mask.cumsum(-1) - 1).clamp(min=0) + p
            kw: dict[str, Any] = {}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(n)
                mask = torch.cat([torch.ones((n, p), dtype=mask.dtype, device=dev), mask], -1)
                kw[_cache_kwarg(self.policy)] = cache
            generated: list[list[int]] = [[] for _ in range(n)]
            done = [False] * n
            out = self.policy.model(
                input_ids=x,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **kw,
            )
            for _ in range(self.config.max_new_tokens):
                nxt = out.logits[:, -1].argmax(-1)
                for b in range(n):
                    t = int(nxt[b])
                    if not done[b]:
                        if t in stops:
                            done[b] = True
                        else:
                            generated[b].append(t)
                if all(done):
                    break
                mask = torch.cat([mask, mask.new_ones((n, 1))], -1)
                pos = pos[:, -1:] + 1
                out = self.policy.model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=pos,
                    use_cache=True,
                    **{_cache_kwarg(self.policy): _output_cache(out)},
                )
            for b, i in enumerate(batch):
                decisions[i] = self.parse_answer(tok.decode(generated[b], skip_special_tokens=True))
            if on_batch:
                on_batch(len(batch))
        return [d for d in decisions if d is not None]

    def parse_answer(self, text: str) -> Decision:
        """A generated answer's label: its first word, matched exactly (case and punctuation
        aside) on a label word; anything else gets the decoder's fallback, flagged unparsed."""
        words = re.findall(r"[A-Za-z]+", text)
        first = words[0].lower() if words else ""
        if first in self.config.words:
            return Decision(WORD_LABEL[first], {"method": "generate", "text": text})
        fallback = FALLBACK_LABEL[self.config.decoder]
        return Decision(fallback, {"method": "generate", "text": text, "unparsed": True})


# ---------------------------------------------------------------- evaluation


def confusion_matrix(pairs: Iterable[tuple[int | None, int]]) -> dict[int, dict[int, int]]:
    """counts[heuristic][decoded] over (heuristic, decoded) pairs (no heuristic: skipped)."""
    counts = {h: {d: 0 for d in CLASSES} for h in CLASSES}
    for h, d in pairs:
        if h is not None:
            counts[h][d] += 1
    return counts


def confusion_summary(counts: dict[int, dict[int, int]]) -> dict[str, float | None]:
    """Agreement with the heuristic, per-class recall, and the share of decoded positives that
    the heuristic calls negative (the study's "false positives")."""
    total = sum(sum(row.values()) for row in counts.values())
    agree = sum(counts[c][c] for c in CLASSES)
    decoded_pos = sum(counts[h][1] for h in CLASSES)
    out: dict[str, float | None] = {
        "n": float(total),
        "agreement": agree / total if total else None,
        "false_positive_share": counts[-1][1] / decoded_pos if decoded_pos else None,
    }
    for c in CLASSES:
        row = sum(counts[c].values())
        out[f"recall_{c:+d}"] = counts[c][c] / row if row else None
    return out


def decoder_metrics(pairs: Iterable[tuple[int | None, int]]) -> dict[str, Any]:
    """Decoded labels against reference labels (heuristic, human, any source), as
    (reference, decoded) pairs (no reference: skipped): the confusion matrix, accuracy, and per
    class precision, recall, F1 and support, with their macro and support-weighted means (the
    reference evaluation's "weighted" F1). A metric with an empty denominator is None."""
    counts = confusion_matrix(pairs)
    n = sum(sum(row.values()) for row in counts.values())
    per_class: dict[int, dict[str, float | int | None]] = {}
    for c in CLASSES:
        tp = counts[c][c]
        support = sum(counts[c].values())
        predicted = sum(counts[h][c] for h in CLASSES)
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support,
            "predicted": predicted,
        }
    supported = [c for c in CLASSES if per_class[c]["support"]]
    f1s = [(per_class[c]["f1"] or 0.0, per_class[c]["support"]) for c in supported]
    return {
        "n": n,
        "accuracy": sum(counts[c][c] for c in CLASSES) / n if n else None,
        "macro_f1": sum(f for f, _ in f1s) / len(f1s) if f1s else None,
        "weighted_f1": sum(f * w for f, w in f1s) / n if n else None,
        "per_class": per_class,
        "confusion": counts,
    }


def metrics_from_confusion(counts: dict[int, dict[int, int]]) -> dict[str, Any]:
    """:func:`decoder_metrics` of a confusion matrix already counted."""
    return decoder_metrics((h, d) for h in CLASSES for d in CLASSES for _ in range(counts[h][d]))


def metrics_table(metrics: dict[str, Any], title: str = "") -> Any:
    """A rich table of :func:`decoder_metrics`: one row per class."""
    from rich.table import Table

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f}%"

    table = Table(title=title or "decoder metrics")
    for col in ("class", "precision", "recall", "F1", "support", "decoded"):
        table.add_column(col, justify="right")
    for c in CLASSES:
        m = metrics["per_class"][c]
        table.add_row(
            signed_label(c), pct(m["precision"]), pct(m["recall"]), pct(m["f1"]),
            str(m["support"]), str(m["predicted"]),
        )
    table.caption = (
        f"n {metrics['n']}, accuracy {pct(metrics['accuracy'])}, "
        f"macro F1 {pct(metrics['macro_f1'])}, weighted F1 {pct(metrics['weighted_f1'])}"
    )
    return table


def confusion_table(counts: dict[int, dict[int, int]], title: str = "") -> Any:
    """A rich table: rows = heuristic label, columns = decoded label."""
    from rich.table import Table

    table = Table(title=title or "decoder vs heuristic (rows: heuristic)")
    table.add_column("heuristic \\ decoded", justify="right")
    for d in CLASSES:
        table.add_column(signed_label(d), justify="right")
    for h in CLASSES:
        table.add_row(signed_label(h), *(str(counts[h][d]) for d in CLASSES))
    return table


# ---------------------------------------------------------------- the database side


@dataclass
class RetrospectResult:
    version: str
    games: int
    actions: int  # actions that have a next utterance
    labelled: int  # labels written by this run
    skipped: int  # already labelled with this decoder version
    seconds: float
    confusion: dict[int, dict[int, int]]
    label_counts: dict[int, int]
    processes: int = 1  # under accelerate launch: how many shared the work
    per_process: list[int] = field(default_factory=list)  # actions each process labelled

    @property
    def actions_per_s(self) -> float:
        return self.labelled / self.seconds if self.seconds > 0 else 0.0

    def json(self) -> dict:
        d = asdict(self)
        d["actions_per_s"] = self.actions_per_s
        d["summary"] = confusion_summary(self.confusion)
        d["metrics"] = metrics_from_confusion(self.confusion)
        return d


async def load_contexts(
    db: Any, round_: int | None, all_games: bool = False, ended_only: bool = True
) -> tuple[int, list[FeedbackContext]]:
    """(number of games, contexts) for the games of round ``round_`` (or every game)."""
    from sqlalchemy import select

    from app.db.gamelog import load_state
    from app.db.models import Game

    q = select(Game.id).order_by(Game.created_at, Game.id)
    if not all_games:
        q = q.where(Game.round.is_(None) if round_ is None else Game.round == round_)
    if ended_only:
        q = q.where(Game.status == "ended")
    contexts: list[FeedbackContext] = []
    async with db.session() as s:
        ids = [i for (i,) in await s.execute(q)]
        for gid in ids:
            state = await load_state(s, gid)
            if state is not None:
                contexts.extend(feedback_contexts(state))
    return len(ids), contexts


async def labelled_keys(db: Any, decoder: str, version: str) -> set[tuple[str, int]]:
    from sqlalchemy import select

    from app.db.models import FeedbackLabel

    async with db.session() as s:
        rows = await s.execute(
            select(FeedbackLabel.game_id, FeedbackLabel.turn).where(
                FeedbackLabel.decoder == decoder, FeedbackLabel.decoder_version == version
            )
        )
        return {(g, t) for g, t in rows}


async def store_labels(
    db: Any,
    decoder: str,
    version: str,
    contexts: Sequence[FeedbackContext],
    decisions: Sequence[Decision],
    replace: bool = False,
    chunk: int = 500,
) -> int:
    """Write one FeedbackLabel per decision (replacing this version's earlier rows if asked)."""
    from sqlalchemy import and_, delete, or_

    from app.db.models import FeedbackLabel

    now = time.time()
    written = 0
    for k in range(0, len(contexts), chunk):
        part = list(zip(contexts[k : k + chunk], decisions[k : k + chunk]))
        async with db.session() as s, s.begin():
            if replace:
                keys = [
                    and_(FeedbackLabel.game_id == c.game_id, FeedbackLabel.turn == c.turn)
                    for c, _ in part
                ]
                await s.execute(
                    delete(FeedbackLabel).where(
                        FeedbackLabel.decoder == decoder,
                        FeedbackLabel.decoder_version == version,
                        or_(*keys),
                    )
                )
            s.add_all(
                FeedbackLabel(
                    game_id=c.game_id,
                    turn=c.turn,
                    decoder=decoder,
                    decoder_version=version,
                    label=d.label,
                    heuristic=c.heuristic,
                    scores=d.scores,
                    created_at=now,
                )
                for c, d in part
            )
        written += len(part)
    return written


async def retrospect(
    db: Any,
    decoder: FeedbackDecoder,
    round_: int | None,
    all_games: bool = False,
    overwrite: bool = False,
    progress: Any = None,
    rt: Runtime | None = None,
) -> RetrospectResult:
    """Label every unlabelled action of the chosen games and store the labels.

    ``progress`` is a ``rich.progress.Progress`` (or None). The decoding runs in this thread:
    the event loop has nothing else to do meanwhile. Under ``accelerate launch`` (``rt``
    distributed) the main process reads the actions (``db`` is None elsewhere), each process
    labels its share, and the main process stores them all (learning/distributed.py).
    """
    rt = rt or Runtime()
    cfg = decoder.config

    async def load() -> tuple[int, int, list[FeedbackContext]]:
        n_games, contexts = await load_contexts(db, round_, all_games)
        done = set() if overwrite else await labelled_keys(db, cfg.decoder, decoder.version)
        return n_games, len(contexts), [c for c in contexts if (c.game_id, c.turn) not in done]

    n_games, n_actions, todo = await main_loads_async(rt, load)
    mine = rt.split(todo)
    task = None
    if progress is not None:
        task = progress.add_task(f"retrospect ({decoder.version}){rt.tag}", total=len(mine))
    started = time.perf_counter()
    decisions = decoder.decide(
        mine, on_batch=(lambda n: progress.advance(task, n)) if progress is not None else None
    )
    per_process = rt.gather([len(mine)])
    decisions = rt.gather(decisions, total=len(todo))
    seconds = time.perf_counter() - started  # the slowest process's share and the gathering
    if rt.is_main:
        await store_labels(db, cfg.decoder, decoder.version, todo, decisions, replace=overwrite)
    labels = [d.label for d in decisions]
    return RetrospectResult(
        version=decoder.version,
        games=n_games,
        actions=n_actions,
        labelled=len(todo),
        skipped=n_actions - len(todo),
        seconds=seconds,
        confusion=confusion_matrix((c.heuristic, d.label) for c, d in zip(todo, decisions)),
        label_counts={c: labels.count(c) for c in CLASSES},
        processes=rt.processes,
        per_process=per_process,
    )


def load_decoder(
    base: str,
    config: DecoderConfig,
    template: str | Path | None = None,
    device: str = "auto",
    dtype: str | None = None,
) -> FeedbackDecoder:
    """The base model without adapter (bf16 on an accelerator, fp32 on the CPU) as a decoder."""
    from policy_worker.model import load_policy, resolve_device

    dev = resolve_device(device)
    policy = load_policy(
        base,
        adapters=None,
        dtype=dtype or ("float32" if dev.type == "cpu" else "bfloat16"),
        device=dev,
    )
    return FeedbackDecoder(policy, config, FeedbackTemplate.load(template, config.decoder))


def signed_label(label: int) -> str:
    """+1, 0, -1 as table headings."""
    return f"{label:+d}" if label else "0"
