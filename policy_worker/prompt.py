"""The one policy prompt builder (docs/method.md), shared by serving, retrospection and training.

A model is trained on exactly what it sees when it plays only if every caller builds prompts
here. The chat layout follows the ReSpect release (lil-lab/respect, `IdeficsAdapter`):

    System:<image>A<image>B…<image>J          (images lettered in the listener's order)
    System: none is selected | A C currently selected
    User: <speaker utterance>
    Assistant: select A B | deselect C | deselect C select G | nothing
    … one System/User/Assistant triple per turn; the current turn stops after User and the
    rendered text ends with the generation prompt "Assistant:".

The processor expands each `<image>` into `<fake_token_around_image><image>×N<fake…>` and puts a
space before the letter, so the model reads `<image> A <image> B …`.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any, Protocol

logger = logging.getLogger("multiref.policy")

LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJ")
NOTHING = "nothing"

Message = dict[str, Any]
Chat = list[Message]


@dataclass(frozen=True)
class PromptTurn:
    """One turn as the listener saw it: tangram ids for the selection, letters in the action."""

    utterance: str
    selection_before: list[str] = field(default_factory=list)
    action: str | None = None  # the listener's action text; None for the turn being decided


@dataclass(frozen=True)
class PromptGame:
    """What the policy may see of a game: its own image order and the dialogue so far."""

    listener_order: list[str]
    turns: list[PromptTurn]

    def letter_of(self) -> dict[str, str]:
        """Tangram id -> letter, by position in the listener's view."""
        return letter_map(self.listener_order)

    def current_selected_letters(self) -> list[str]:
        """Letters selected before the last turn's action (the state the policy acts on)."""
        if not self.turns:
            return []
        letters = self.letter_of()
        return sorted(letters[t] for t in self.turns[-1].selection_before)


class ChatRenderer(Protocol):
    """Anything with a chat template: a transformers processor or tokenizer."""

    def apply_chat_template(self, conversation: Any, *args: Any, **kwargs: Any) -> Any: ...


def letter_map(listener_order: Sequence[str]) -> dict[str, str]:
    """Tangram id -> letter A–J in the listener's on-screen order."""
    if len(listener_order) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} images, got {len(listener_order)}")
    if len(set(listener_order)) != len(listener_order):
        raise ValueError("listener_order has duplicate tangram ids")
    return {tangram: LETTERS[i] for i, tangram in enumerate(listener_order)}


def selection_text(letters: Sequence[str]) -> str:
    """The state line: `none is selected` or `A C currently selected` (letters sorted)."""
    if not letters:
        return "none is selected"
    return f"{' '.join(sorted(letters))} currently selected"


def format_action(deselect: Sequence[str], select: Sequence[str]) -> str:
    """Canonical action text: deselect part first, letters ascending, or `nothing`."""
    deselect, select = sorted(set(deselect)), sorted(set(select))
    if not deselect and not select:
        return NOTHING
    parts = []
    if deselect:
        parts.append("deselect " + " ".join(deselect))
    if select:
        parts.append("select " + " ".join(select))
    return " ".join(parts)


def action_text(
    selection_before: Sequence[str],
    selection_after: Sequence[str],
    letter_of: Mapping[str, str] | Callable[[str], str],
) -> str:
    """The action that turns one selection (tangram ids) into the next, in the action grammar."""
    to_letter = letter_of.__getitem__ if isinstance(letter_of, Mapping) else letter_of
    before, after = set(selection_before), set(selection_after)
    return format_action(
        [to_letter(t) for t in before - after], [to_letter(t) for t in after - before]
    )


_ACTION_RE = re.compile(r"^(?:deselect((?: [A-Z])+)(?: select((?: [A-Z])+))?|select((?: [A-Z])+))$")


def parse_action(text: str) -> tuple[list[str], list[str]]:
    """Parse action text into (deselect letters, select letters), both sorted.

    Raises ValueError for text outside the grammar or with a letter repeated, so a malformed
    action is never silently treated as `nothing`.
    """
    text = " ".join(text.split())
    if text == NOTHING:
        return [], []
    m = _ACTION_RE.match(text)
    if m is None:
        raise ValueError(f"not an action: {text!r}")
    deselect = (m.group(1) or "").split()
    select = (m.group(2) or m.group(3) or "").split()
    if len(set(deselect)) != len(deselect) or len(set(select)) != len(select):
        raise ValueError(f"letter repeated in action: {text!r}")
    if set(deselect) & set(select):
        raise ValueError(f"letter both deselected and selected: {text!r}")
    return sorted(deselect), sorted(select)


def is_legal_action(text: str, selected: Sequence[str], letters: Sequence[str] = LETTERS) -> bool:
    """True if `text` is canonical and legal: deselects only selected, selects only unselected."""
    try:
        deselect, select = parse_action(text)
    except ValueError:
        return False
    sel, universe = set(selected), set(letters)
    return (
        text == format_action(deselect, select)
        and set(deselect) <= sel
        and set(select) <= universe - sel
    )


def apply_action(selected: Sequence[str], text: str) -> list[str]:
    """Selection (letters) after applying a legal action; raises ValueError if illegal."""
    deselect, select = parse_action(text)
    sel = set(selected)
    if not set(deselect) <= sel or set(select) & sel:
        raise ValueError(f"illegal action {text!r} for selection {sorted(sel)}")
    return sorted((sel - set(deselect)) | set(select))


def legal_actions(selected: Sequence[str], letters: Sequence[str] = LETTERS) -> list[str]:
    """Every canonical legal action for a state: subsets of selected × subsets of unselected.

    At most 2**len(letters) strings (1024 for 10 images); `nothing` comes first.
    """
    sel = sorted(set(selected))
    unsel = sorted(set(letters) - set(sel))
    if not set(sel) <= set(letters):
        raise ValueError(f"selected letters {sel} not among {list(letters)}")
    out: list[str] = []
    for nd in range(len(sel) + 1):
        for d in combinations(sel, nd):
            for ns in range(len(unsel) + 1):
                for s in combinations(unsel, ns):
                    out.append(format_action(d, s))
    return out


# Idefics2's special tokens. A speaker who types one must not inject an image slot or end a turn.
_SPECIAL_RE = re.compile(r"<(/?(?:image|fake_token_around_image|end_of_utterance|s|unk|pad))>")


def clean_utterance(text: str) -> str:
    """Neutralise special-token strings in speaker text (`<image>` becomes `‹image›`)."""
    return _SPECIAL_RE.sub("\u2039\\1\u203a", text)


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def build_chat(game: PromptGame) -> Chat:
    """The policy chat for a game (Idefics2 message format).

    Turns with an action get a closing assistant message; a last turn with `action=None` ends
    on the user message, to be rendered with the generation prompt.
    """
    letters = game.letter_of()
    context: list[dict[str, str]] = []
    for tangram in game.listener_order:
        context.append({"type": "image"})
        context.append(_text(letters[tangram]))
    chat: Chat = [{"role": "system", "content": context}]
    for i, turn in enumerate(game.turns):
        if turn.action is None and i != len(game.turns) - 1:
            raise ValueError(f"turn {i} has no action but is not the last turn")
        before = [letters[t] for t in turn.selection_before]
        chat.append({"role": "system", "content": [_text(selection_text(before))]})
        chat.append({"role": "user", "content": [_text(clean_utterance(turn.utterance))]})
        if turn.action is not None:
            chat.append({"role": "assistant", "content": [_text(turn.action)]})
    return chat


def render_prompt(
    processor_or_tokenizer: ChatRenderer, chat: Chat, add_generation_prompt: bool | None = None
) -> str:
    """Render a chat with the model's chat template, stripped as in the ReSpect release.

    By default the generation prompt is added when the chat does not end with the assistant.
    """
    if add_generation_prompt is None:
        add_generation_prompt = chat[-1]["role"] != "assistant"
    text = processor_or_tokenizer.apply_chat_template(
        chat, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    if not isinstance(text, str):  # some processors return a one-element batch
        text = text[0]
    return text.strip()


def game_from_selections(
    listener_order: Sequence[str],
    utterances: Sequence[str],
    selections_after: Sequence[Sequence[str]],
    current_turn: int | None = None,
) -> PromptGame:
    """Build a PromptGame from recorded cumulative selections (export / reference format).

    With `current_turn=t`, turns 0..t are included and turn t has no action (the prompt for
    deciding turn t). With None, every utterance's turn is complete (a training transcript).
    """
    n = len(utterances) if current_turn is None else current_turn + 1
    if n > len(utterances):
        raise ValueError(f"turn {current_turn} out of range ({len(utterances)} utterances)")
    letters = letter_map(listener_order)
    turns: list[PromptTurn] = []
    before: list[str] = []
    for t in range(n):
        action = None
        if current_turn is None or t < current_turn:
            action = action_text(before, selections_after[t], letters)
        turns.append(
            PromptTurn(utterance=utterances[t], selection_before=sorted(before), action=action)
        )
        if t < len(selections_after):
            before = list(selections_after[t])
    return PromptGame(listener_order=list(listener_order), turns=turns)


# --- augmentation ----------------------------------------------------------------------------


def remap_action(text: str, mapping: Mapping[str, str]) -> str:
    """Rewrite an action's letters through `mapping` (old letter -> new), re-canonicalised."""
    deselect, select = parse_action(text)
    return format_action([mapping[c] for c in deselect], [mapping[c] for c in select])


def shuffle_letters(
    game: PromptGame, rng: random.Random | Sequence[int]
) -> tuple[PromptGame, dict[str, str]]:
    """Letter-shuffle augmentation: reorder the listener's images, relabelling every letter.

    The prompt keeps its A–J layout, but each tangram gets a new letter; past actions are
    rewritten to match. `rng` is a Random or an explicit permutation (new position -> old
    position). Returns the new game and old letter -> new letter, to remap the target action
    with `remap_action`.
    """
    n = len(game.listener_order)
    if isinstance(rng, random.Random):
        perm = list(range(n))
        rng.shuffle(perm)
    else:
        perm = list(rng)
        if sorted(perm) != list(range(n)):
            raise ValueError(f"not a permutation of range({n}): {perm}")
    new_order = [game.listener_order[p] for p in perm]
    old_letters, new_letters = letter_map(game.listener_order), letter_map(new_order)
    mapping = {old_letters[t]: new_letters[t] for t in game.listener_order}
    turns = [
        replace(turn, action=None if turn.action is None else remap_action(turn.action, mapping))
        for turn in game.turns
    ]
    return PromptGame(listener_order=new_order, turns=turns), mapping
