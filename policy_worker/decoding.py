"""Decoding listener actions, and the probabilities stored with them (docs/method.md, docs/learning.md).

Two modes (``DecodeRequest.decoding``; the worker's ``--decoding``):

* ``paper`` (the reference's deployment): sampling at the request's temperature (1 in
  deployment) for at most ``max_new_tokens`` (10), with the vocabulary cut to the tokens actions
  are made of (letters, select/deselect, the stop token) and **no grammar**; the text is parsed
  with a regular expression, illegal letters are dropped, and when nothing is left the action is
  "select the first image" (the first unselected one in the listener's order: A when legal).
  ``nothing`` is never produced.
* ``grammar`` (this project's alternative): only legal actions can come out. For a state the
  legal actions are finite (at most 1024), so we tokenize each in context, build a trie of token
  ids ending with ``<end_of_utterance>``, and at each step mask the logits to the node's
  children. ``prob_constrained`` is then the exact probability of the action under the masked,
  renormalised policy, and ``score_actions`` reproduces it by teacher forcing.

Whatever the mode, every result carries ``prob_deployed``: the action's **full-vocabulary,
length-normalised** sequence probability at temperature 1, exp(mean_t log p(a_t | x, a_<t)) over
its tokens (stop token included), teacher-forced on the prompt's cached keys and values. That is
π_deployed, the number RL and KTO read (as the reference). In paper mode ``prob_constrained`` is the action's
probability under the vocabulary-cut softmax at the sampling temperature.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import re
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .model import LoadedPolicy
from .prompt import (
    LETTERS,
    Chat,
    PromptGame,
    build_chat,
    format_action,
    legal_actions,
    render_prompt,
)

logger = logging.getLogger("multiref.policy")

DEFAULT_MAX_NEW_TOKENS = 10
DECODING_MODES = ("paper", "grammar")


@dataclass
class DecodeRequest:
    """One listener decision: the chat (ending on the speaker's utterance) and its images.

    `selected` are the letters selected before the action; `letters` the image letters in play
    (default: the first len(images) of A–J). `adapter=None` decodes with the bare base model.
    Temperature 0 is greedy. A None seed is drawn at random and reported in the result.
    """

    chat: Chat
    images: Sequence[Any]  # PIL images in the listener's order, one per {"type": "image"}
    selected: Sequence[str]
    adapter: str | None = None
    temperature: float = 1.0
    seed: int | None = None
    letters: Sequence[str] | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    decoding: str = "grammar"  # paper | grammar (the worker's default is paper)

    def __post_init__(self) -> None:
        if self.decoding not in DECODING_MODES:
            raise ValueError(f"decoding must be paper or grammar, not {self.decoding!r}")

    @classmethod
    def for_game(cls, game: PromptGame, images: Sequence[Any], **kwargs: Any) -> DecodeRequest:
        """The request for deciding the last turn of `game` (whose action must be None)."""
        if not game.turns or game.turns[-1].action is not None:
            raise ValueError("the game's last turn must be the undecided current turn")
        return cls(
            chat=build_chat(game),
            images=images,
            selected=game.current_selected_letters(),
            letters=list(LETTERS[: len(game.listener_order)]),
            **kwargs,
        )

    def letters_in_play(self) -> list[str]:
        return list(self.letters) if self.letters is not None else list(LETTERS[: len(self.images)])


@dataclass
class DecodeResult:
    """A decoded action with the numbers the turn record needs.

    prob_constrained: probability of `action` under the masked, renormalised policy at the
    effective temperature (grammar: the trie's mask; paper: the action-token vocabulary).
    prob_unconstrained: product of the full-vocabulary softmax probabilities of its tokens at
    that temperature. prob_deployed: the full-vocabulary length-normalised probability at
    temperature 1 (π_deployed). Greedy requests (temperature 0) report the first two at
    temperature 1, the model's own distribution, since a point mass is useless to RL/KTO.
    """

    action: str
    prob_constrained: float
    prob_unconstrained: float
    num_prompt_tokens: int
    latency_s: float
    adapter: str | None = None
    temperature: float = 1.0
    seed: int | None = None
    prompt: str = ""
    token_ids: list[int] = field(default_factory=list)
    # full-vocabulary, length-normalised probability at temperature 1: π_deployed (as the reference)
    prob_deployed: float | None = None
    num_action_tokens: int = 0  # the action's tokens (stop included) that prob_deployed averages
    decoding: str = "grammar"
    generated: str | None = None  # paper mode: the raw text the model wrote
    parse: str = "grammar"  # paper mode: parsed | dropped (illegal letters removed) | fallback


# --- the action trie ---------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "child_ids", "action", "_allowed")

    def __init__(self) -> None:
        self.children: dict[int, _Node] = {}
        self.child_ids: tuple[int, ...] = ()  # sorted children, set once the trie is complete
        self.action: str | None = None  # set on the node reached by the stop token
        self._allowed: dict[torch.device, torch.Tensor] = {}

    def allowed(self, device: torch.device) -> torch.Tensor:
        """Child token ids as a tensor, cached per device."""
        t = self._allowed.get(device)
        if t is None:
            t = torch.tensor(self.child_ids, dtype=torch.long, device=device)
            self._allowed[device] = t
        return t


@dataclass
class ActionTrie:
    """Token-id trie of the legal actions of one state, each path ending with the stop token."""

    root: _Node
    token_ids: dict[str, tuple[int, ...]]  # action -> its continuation tokens (stop included)
    pruned: list[str]  # legal actions longer than max_new_tokens (unreachable)
    # action -> for each of its steps, the token ids the trie allows there (for renormalising)
    step_allowed: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)

    @property
    def actions(self) -> list[str]:
        return list(self.token_ids)

    @property
    def depth(self) -> int:
        return max(len(ids) for ids in self.token_ids.values())


# tokenizer -> LRU of {(chat template, letters, selected, max_new_tokens): ActionTrie}. Bounded:
# a trie is ~1k actions, and over many games most of the 1024 selection states turn up.
TRIE_CACHE_SIZE = 64
_TRIE_CACHE: weakref.WeakKeyDictionary[Any, OrderedDict[tuple[Any, ...], ActionTrie]] = (
    weakref.WeakKeyDictionary()
)
_CONTEXT_CACHE: weakref.WeakKeyDictionary[Any, dict[str, tuple[str, str, str, list[int]]]] = (
    weakref.WeakKeyDictionary()
)
_SENTINEL = "\u2063ACTION\u2063"


def _continuation_context(processor: Any) -> tuple[str, str, str, list[int]]:
    """How the chat template wraps an assistant action after the generation prompt.

    Returns (prompt, before, after, prompt_ids) such that the full rendering of a finished turn
    is prompt + before + action + after. Derived from the template itself, so any Idefics2-style
    template works without hard-coding "Assistant: …<end_of_utterance>".
    """
    tokenizer = processor.tokenizer
    template = getattr(processor, "chat_template", None) or tokenizer.chat_template
    per_tok = _CONTEXT_CACHE.setdefault(tokenizer, {})
    if template in per_tok:
        return per_tok[template]
    user = {"role": "user", "content": [{"type": "text", "text": "x"}]}
    prompt = render_prompt(processor, [user], add_generation_prompt=True)
    full = processor.apply_chat_template(
        [user, {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}],
        add_generation_prompt=False,
        tokenize=False,
    )
    if not full.startswith(prompt) or full.count(_SENTINEL) != 1:
        raise ValueError("chat template: an assistant turn does not extend the generation prompt")
    before, after = full[len(prompt) :].split(_SENTINEL)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    per_tok[template] = (prompt, before, after, prompt_ids)
    return per_tok[template]


def action_token_ids(policy: LoadedPolicy, actions: Sequence[str]) -> list[tuple[int, ...]]:
    """Token ids the model emits after the generation prompt for each action, stop token included.

    Tokenized in context (prompt + action) so boundary merges match what a training forward
    over the full chat sees.
    """
    processor, tokenizer, stop = policy.processor, policy.tokenizer, policy.stop_token_id
    prompt, before, after, prompt_ids = _continuation_context(processor)
    texts = [prompt + before + a + after for a in actions]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out: list[tuple[int, ...]] = []
    for action, ids in zip(actions, encoded):
        if ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(f"tokenizer merges the generation prompt with action {action!r}")
        cont = ids[len(prompt_ids) :]
        if stop not in cont:
            raise ValueError(f"action {action!r} does not end with the stop token")
        out.append(tuple(cont[: cont.index(stop) + 1]))
    return out


def action_trie(
    policy: LoadedPolicy,
    selected: Sequence[str],
    letters: Sequence[str] = LETTERS,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> ActionTrie:
    """The (cached) trie of legal actions for a state; actions over max_new_tokens are pruned."""
    tokenizer = policy.tokenizer
    template = getattr(policy.processor, "chat_template", None) or tokenizer.chat_template
    key = (template, tuple(letters), frozenset(selected), max_new_tokens)
    per_tok = _TRIE_CACHE.setdefault(tokenizer, OrderedDict())
    trie = per_tok.get(key)
    if trie is not None:
        per_tok.move_to_end(key)
        return trie
    actions = legal_actions(selected, letters)
    root = _Node()
    kept: dict[str, tuple[int, ...]] = {}
    pruned: list[str] = []
    for action, ids in zip(actions, action_token_ids(policy, actions)):
        if len(ids) > max_new_tokens:
            pruned.append(action)
            continue
        node = root
        for tok in ids:
            node = node.children.setdefault(tok, _Node())
            if node.action is not None:
                raise ValueError(f"action {action!r} extends {node.action!r}: trie not prefix-free")
        if node.children:
            raise ValueError(f"action {action!r} is a token prefix of another action")
        node.action = action
        kept[action] = ids
    if not kept:
        raise ValueError(f"no legal action fits in max_new_tokens={max_new_tokens}")
    if pruned:
        logger.debug("%d legal actions exceed %d tokens: unreachable", len(pruned), max_new_tokens)
    stack = [root]
    while stack:
        node = stack.pop()
        node.child_ids = tuple(sorted(node.children))
        stack.extend(node.children.values())
    step_allowed: dict[str, list[tuple[int, ...]]] = {}
    for action, ids in kept.items():
        node, steps = root, []
        for tok in ids:
            steps.append(node.child_ids)
            node = node.children[tok]
        step_allowed[action] = steps
    trie = ActionTrie(root=root, token_ids=kept, pruned=pruned, step_allowed=step_allowed)
    per_tok[key] = trie
    while len(per_tok) > TRIE_CACHE_SIZE:
        per_tok.popitem(last=False)
    return trie


# --- model calls -------------------------------------------------------------------------------


def _base_model(policy: LoadedPolicy) -> Any:
    model = policy.model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_kwarg(policy: LoadedPolicy) -> str:
    """transformers 5 renames `past_key_values` to `cache`; use whichever forward accepts."""
    params = inspect.signature(_base_model(policy).forward).parameters
    return "cache" if "cache" in params else "past_key_values"



def _next_step(
    policy: LoadedPolicy, next_tokens: list[int], attn: Any, pos: Any, cache: Any, cache_kw: str,
    device: Any,
) -> tuple[Any, Any, Any, Any]:
    """One decoding step of every row on the kept cache: feed each row's new token."""
    attn = torch.cat([attn, attn.new_ones((len(next_tokens), 1))], dim=-1)
    pos = pos + 1
    out = policy.model(
        input_ids=torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None],
        attention_mask=attn,
        position_ids=pos,
        use_cache=True,
        **{cache_kw: cache},
    )
    return out, _output_cache(out), attn, pos

def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _encode(
    policy: LoadedPolicy, requests: Sequence[DecodeRequest]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Render and process prompts (left-padded) with their images, on the policy's device."""
    prompts = [render_prompt(policy.processor, r.chat) for r in requests]
    batch = policy.processor(
        text=prompts,
        images=[list(r.images) for r in requests],
        padding=True,
        return_tensors="pt",
    )
    inputs: dict[str, torch.Tensor] = {}
    for k, v in batch.items():
        v = v.to(policy.device)
        if k == "pixel_values":
            v = v.to(policy.dtype)
        inputs[k] = v
    mask = inputs["attention_mask"]
    if (mask[:, -1] == 0).any():
        raise RuntimeError("prompts must be left-padded for batched decoding")
    inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return inputs, prompts


def _effective_temperature(t: float) -> float:
    if t < 0 or math.isnan(t):
        raise ValueError(f"temperature must be >= 0, got {t}")
    return t if t > 0 else 1.0


def _sampling(
    requests: Sequence[DecodeRequest], device: Any
) -> tuple[list[int | None], list[torch.Generator | None], list[float], torch.Tensor]:
    """Each request's seed (a fresh one when it samples without one, so the log can replay it),
    generator and temperature, and the temperatures as a column for the logits."""
    seeds = [
        r.seed if r.seed is not None else (secrets.randbits(63) if r.temperature > 0 else None)
        for r in requests
    ]
    gens = [torch.Generator().manual_seed(x) if x is not None else None for x in seeds]
    temps = [_effective_temperature(r.temperature) for r in requests]
    return seeds, gens, temps, torch.tensor(temps, dtype=torch.float32, device=device)[:, None]


def _decode_group(
    policy: LoadedPolicy, requests: Sequence[DecodeRequest], started: float
) -> list[DecodeResult]:
    """Batched constrained decoding for requests that share an adapter: one prefill, then steps."""
    device = policy.device
    stop = policy.stop_token_id
    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else stop
    tries = [
        action_trie(policy, r.selected, r.letters_in_play(), r.max_new_tokens) for r in requests
    ]
    seeds, gens, temps, temp_t = _sampling(requests, device)
    n = len(requests)

    inputs, prompts = _encode(policy, requests)
    attn = inputs["attention_mask"]
    pos = inputs["position_ids"][:, -1:]
    num_prompt = attn.sum(-1).tolist()
    cache_kw = _cache_kwarg(policy)

    nodes = [t.root for t in tries]
    logp_c = [0.0] * n
    logp_u = [0.0] * n
    tokens: list[list[int]] = [[] for _ in range(n)]
    latency = [0.0] * n
    done = [False] * n

    out = policy.model(**inputs, use_cache=True, logits_to_keep=1)
    cache = _output_cache(out)
    prefill = _Prefill.keep(out, inputs)
    for _ in range(max(t.depth for t in tries)):
        logprobs = torch.log_softmax(out.logits[:, -1, :].float() / temp_t, dim=-1)
        next_tokens = []
        for b in range(n):
            if done[b]:
                next_tokens.append(pad)
                continue
            allowed = nodes[b].allowed(device)
            full = logprobs[b, allowed].double().cpu()
            masked = full - torch.logsumexp(full, dim=0)
            if requests[b].temperature == 0:
                i = int(torch.argmax(masked))
            else:
                i = int(torch.multinomial(masked.exp(), 1, generator=gens[b]))
            tok = int(allowed[i])
            logp_c[b] += float(masked[i])
            logp_u[b] += float(full[i])
            tokens[b].append(tok)
            nodes[b] = nodes[b].children[tok]
            if nodes[b].action is not None:
                done[b] = True
                latency[b] = time.perf_counter() - started
            next_tokens.append(tok)
        if all(done):
            break
        out, cache, attn, pos = _next_step(policy, next_tokens, attn, pos, cache, cache_kw, device)
    if not all(done):  # cannot happen: every trie path fits in the step budget
        raise RuntimeError("constrained decoding did not finish")
    deployed = prefill.score(
        policy, [tries[b].token_ids[str(nodes[b].action)] for b in range(n)], temps
    )["deployed"]

    return [
        DecodeResult(
            action=str(nodes[b].action),
            prob_constrained=math.exp(logp_c[b]),
            prob_unconstrained=math.exp(logp_u[b]),
            num_prompt_tokens=int(num_prompt[b]),
            latency_s=latency[b],
            adapter=requests[b].adapter,
            temperature=requests[b].temperature,
            seed=seeds[b],
            prompt=prompts[b],
            token_ids=tokens[b],
            prob_deployed=deployed[b],
            num_action_tokens=len(tries[b].token_ids[str(nodes[b].action)]),
            decoding="grammar",
        )
        for b in range(n)
    ]


# --- paper mode: the action-token vocabulary, no grammar, a regex parse -------------------------


_VOCAB_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[int, ...]]] = (
    weakref.WeakKeyDictionary()
)
# Our own pattern for the action grammar (any capital letter: illegal ones are dropped after).
_GENERATED_RE = re.compile(
    r"^(?:deselect((?: [A-Z])+)(?: select((?: [A-Z])+))?|select((?: [A-Z])+))$"
)


def action_vocabulary(policy: LoadedPolicy, letters: Sequence[str] = LETTERS) -> tuple[int, ...]:
    """The token ids actions are made of (paper mode's vocabulary): every token of ``select``
    and ``deselect … select …`` actions over ``letters``, tokenized in context, plus the stop
    and end-of-sequence tokens. ``nothing`` is left out: the paper's model never says it."""
    tokenizer = policy.tokenizer
    template = getattr(policy.processor, "chat_template", None) or tokenizer.chat_template
    key = (template, tuple(letters))
    per_tok = _VOCAB_CACHE.setdefault(tokenizer, {})
    if key not in per_tok:
        letters = list(letters)
        every = " ".join(letters)
        actions = [f"select {every}", f"deselect {every} select {every}"]
        for a in letters:
            actions += [f"select {a}", f"deselect {a}"]
            actions += [f"deselect {a} select {b}" for b in letters if b != a]
        ids = {t for seq in action_token_ids(policy, actions) for t in seq}
        ids.add(policy.stop_token_id)
        if tokenizer.eos_token_id is not None:
            ids.add(int(tokenizer.eos_token_id))
        per_tok[key] = tuple(sorted(ids))
    return per_tok[key]


def fallback_action(selected: Sequence[str], letters: Sequence[str] = LETTERS) -> str:
    """"Select the first image": the first unselected letter in the listener's order (A when
    legal). With every image selected, deselect the first one: the answer is never nothing."""
    chosen = set(selected)
    for letter in letters:
        if letter not in chosen:
            return f"select {letter}"
    return f"deselect {letters[0]}"


def parse_generated(
    text: str, selected: Sequence[str], letters: Sequence[str] = LETTERS
) -> tuple[str, str]:
    """(canonical legal action, how): ``parsed`` when the text is a legal action, ``dropped``
    when illegal letters (deselecting an unselected image, selecting a selected one, a letter
    not in play) were removed, ``fallback`` when nothing parses or nothing legal is left."""
    m = _GENERATED_RE.match(" ".join(text.split()))
    if m is not None:
        deselect = set((m.group(1) or "").split())
        select = set((m.group(2) or m.group(3) or "").split())
        chosen, universe = set(selected), set(letters)
        keep_d = deselect & chosen & universe
        keep_s = (select & universe) - chosen
        if keep_d or keep_s:
            how = "parsed" if (keep_d, keep_s) == (deselect, select) else "dropped"
            return format_action(sorted(keep_d), sorted(keep_s)), how
    return fallback_action(selected, letters), "fallback"


def _decode_paper_group(
    policy: LoadedPolicy, requests: Sequence[DecodeRequest], started: float
) -> list[DecodeResult]:
    """Batched paper-mode decoding for requests that share an adapter: one prefill, then sample
    from the action-token vocabulary until the stop token or ``max_new_tokens``."""
    device = policy.device
    tokenizer = policy.tokenizer
    stops = {policy.stop_token_id}
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else policy.stop_token_id
    vocab = [action_vocabulary(policy, r.letters_in_play()) for r in requests]
    vocab_t = {v: torch.tensor(v, dtype=torch.long, device=device) for v in set(vocab)}
    seeds, gens, temps, temp_t = _sampling(requests, device)
    n = len(requests)

    inputs, prompts = _encode(policy, requests)
    attn = inputs["attention_mask"]
    pos = inputs["position_ids"][:, -1:]
    num_prompt = attn.sum(-1).tolist()
    cache_kw = _cache_kwarg(policy)
    tokens: list[list[int]] = [[] for _ in range(n)]
    latency = [0.0] * n
    done = [r.max_new_tokens < 1 for r in requests]

    out = policy.model(**inputs, use_cache=True, logits_to_keep=1)
    cache = _output_cache(out)
    prefill = _Prefill.keep(out, inputs)
    for _ in range(max(r.max_new_tokens for r in requests)):
        if all(done):
            break
        logits = out.logits[:, -1, :].float() / temp_t
        next_tokens = []
        for b in range(n):
            if done[b]:
                next_tokens.append(pad)
                continue
            allowed = vocab_t[vocab[b]]
            logp = torch.log_softmax(logits[b, allowed].double().cpu(), dim=0)
            if requests[b].temperature == 0:
                i = int(torch.argmax(logp))
            else:
                i = int(torch.multinomial(logp.exp(), 1, generator=gens[b]))
            tok = int(allowed[i])
            tokens[b].append(tok)
            if tok in stops or len(tokens[b]) >= requests[b].max_new_tokens:
                done[b] = True
                latency[b] = time.perf_counter() - started
            next_tokens.append(tok)
        if all(done):
            break
        out, cache, attn, pos = _next_step(policy, next_tokens, attn, pos, cache, cache_kw, device)

    texts = [
        tokenizer.decode([t for t in toks if t not in stops], skip_special_tokens=True)
        for toks in tokens
    ]
    parsed = [
        parse_generated(texts[b], requests[b].selected, requests[b].letters_in_play())
        for b in range(n)
    ]
    actions = [a for a, _ in parsed]
    seqs = action_token_ids(policy, actions)
    probs = prefill.score(policy, seqs, temps, [vocab_t[v] for v in vocab])
    return [
        DecodeResult(
            action=actions[b],
            prob_constrained=probs["constrained"][b],
            prob_unconstrained=probs["unconstrained"][b],
            num_prompt_tokens=int(num_prompt[b]),
            latency_s=latency[b] or time.perf_counter() - started,
            adapter=requests[b].adapter,
            temperature=requests[b].temperature,
            seed=seeds[b],
            prompt=prompts[b],
            token_ids=tokens[b],
            prob_deployed=probs["deployed"][b],
            num_action_tokens=len(seqs[b]),
            decoding="paper",
            generated=texts[b],
            parse=parsed[b][1],
        )
        for b in range(n)
    ]


# --- teacher forcing on the prompt's cached keys and values -------------------------------------


@dataclass
class _Prefill:
    """A copy of the prompt's key/value cache and last logits, kept before decoding moves on,
    to teacher-force the decided actions afterwards (one short forward, no second prefill)."""

    cache: Any
    first_logits: torch.Tensor  # [n, V]: the distribution of the first action token
    mask: torch.Tensor  # [n, prompt length] (left-padded)
    last_pos: torch.Tensor  # [n, 1]: each prompt's last position

    @classmethod
    def keep(cls, out: Any, inputs: dict[str, torch.Tensor]) -> _Prefill:
        return cls(
            cache=copy.deepcopy(_output_cache(out)),
            first_logits=out.logits[:, -1, :].float(),
            mask=inputs["attention_mask"],
            last_pos=inputs["position_ids"][:, -1:],
        )

    def score(
        self,
        policy: LoadedPolicy,
        seqs: Sequence[Sequence[int]],
        temps: Sequence[float],
        allowed: Sequence[torch.Tensor] | None = None,
    ) -> dict[str, list[float]]:
        """Per row: ``deployed`` (full vocabulary, temperature 1, length-normalised),
        ``unconstrained`` (full vocabulary at the row's temperature, product) and, given each
        row's allowed token ids, ``constrained`` (that vocabulary only, at the temperature)."""
        device = policy.device
        n, width = len(seqs), max(len(q) for q in seqs)
        pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([list(q) + [pad] * (width - len(q)) for q in seqs], device=device)
        valid = torch.tensor(
            [[1] * len(q) + [0] * (width - len(q)) for q in seqs], device=device
        )
        rows = self.first_logits[:, None, :]
        if width > 1:
            step = policy.model(
                input_ids=ids[:, :-1],
                attention_mask=torch.cat([self.mask, valid[:, :-1]], dim=-1),
                position_ids=self.last_pos + 1 + torch.arange(width - 1, device=device)[None, :],
                use_cache=True,
                **{_cache_kwarg(policy): self.cache},
            )
            rows = torch.cat([rows, step.logits.float()], dim=1)  # row j predicts token j
        mask = valid.bool()
        tok = ids[..., None]

        def gathered(logp: torch.Tensor) -> torch.Tensor:
            lp = logp.gather(-1, tok).squeeze(-1)
            return torch.where(mask, lp, torch.zeros_like(lp)).double()

        t1 = gathered(torch.log_softmax(rows, dim=-1)).sum(-1) / valid.sum(-1)
        temp = torch.tensor(temps, dtype=torch.float32, device=device)[:, None, None]
        scaled = rows / temp
        out = {
            "deployed": t1.exp().tolist(),
            "unconstrained": gathered(torch.log_softmax(scaled, -1)).sum(-1).exp().tolist(),
        }
        if allowed is not None:
            constrained = []
            for b in range(n):
                lse = torch.logsumexp(scaled[b][:, allowed[b]], dim=-1)
                lp = scaled[b].gather(-1, ids[b][:, None]).squeeze(-1) - lse
                constrained.append(float(lp[mask[b]].double().sum().exp()))
            out["constrained"] = constrained
        return out


def decode_actions(
    policy: LoadedPolicy, requests: Sequence[DecodeRequest], max_batch_size: int = 16
) -> list[DecodeResult]:
    """Decode one legal action per request, batching requests that share an adapter and mode.

    Results come back in request order. Each row's latency counts from this call's start to the
    step its action finished. Sampling uses a per-row generator, so a seeded request gives the
    same action whatever else is in the batch.
    """
    started = time.perf_counter()
    results: list[DecodeResult | None] = [None] * len(requests)
    groups: dict[tuple[str | None, str], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.adapter, r.decoding), []).append(i)
    with torch.inference_mode():
        for (adapter, mode), idx in groups.items():
            decode = _decode_paper_group if mode == "paper" else _decode_group
            with policy.use_adapter(adapter):
                for k in range(0, len(idx), max_batch_size):
                    chunk = idx[k : k + max_batch_size]
                    decoded = decode(policy, [requests[i] for i in chunk], started)
                    for i, res in zip(chunk, decoded):
                        results[i] = res
    for r in results:
        assert r is not None
        logger.debug(
            "decoded %r p=%.4g in %.3fs (adapter %s)",
            r.action, r.prob_constrained, r.latency_s, r.adapter,
        )
    return [r for r in results if r is not None]


def score_actions(
    policy: LoadedPolicy,
    request: DecodeRequest,
    actions: Sequence[str],
    constrained: bool = True,
    chunk_size: int = 64,
) -> list[float]:
    """Probability of each action for a request, by teacher forcing (temperature as in decoding).

    Constrained (default): under the masked, renormalised policy decoding samples from, so it
    equals `DecodeResult.prob_constrained`; illegal, non-canonical or too-long actions get 0.
    Unconstrained: product of full-softmax token probabilities (actions must be legal).
    The prompt is encoded once; continuations run in chunks on a repeated KV cache.
    """
    trie = action_trie(policy, request.selected, request.letters_in_play(), request.max_new_tokens)
    temp = _effective_temperature(request.temperature)
    scored = [a for a in dict.fromkeys(actions) if a in trie.token_ids]
    if not constrained and len(scored) != len(set(actions)):
        raise ValueError("unconstrained scores need legal, canonical actions")
    probs: dict[str, float] = {}
    if scored:
        with torch.inference_mode(), policy.use_adapter(request.adapter):
            probs = _score_in_trie(policy, request, trie, scored, temp, constrained, chunk_size)
    return [probs.get(a, 0.0) for a in actions]


def _score_in_trie(
    policy: LoadedPolicy,
    request: DecodeRequest,
    trie: ActionTrie,
    actions: list[str],
    temp: float,
    constrained: bool,
    chunk_size: int,
) -> dict[str, float]:
    device = policy.device
    inputs, _ = _encode(policy, [request])
    cache_kw = _cache_kwarg(policy)
    out = policy.model(**inputs, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1, :].float() / temp, dim=-1)
    cache = _output_cache(out)
    next_pos = int(inputs["position_ids"][0, -1]) + 1
    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else 0

    probs: dict[str, float] = {}
    rows_in_cache = 1
    for k in range(0, len(actions), chunk_size):
        chunk = actions[k : k + chunk_size]
        seqs = [trie.token_ids[a] for a in chunk]
        n, width = len(chunk), max(len(s) for s in seqs)
        # Reuse one cache for all chunks: grow it to n rows once, then crop back to the prompt.
        if rows_in_cache == 1 and n > 1:
            cache.batch_repeat_interleave(n)
        elif rows_in_cache != n:
            cache.batch_select_indices(torch.arange(n, device=device))
        rows_in_cache = n
        ids = torch.tensor([list(q) + [pad] * (width - len(q)) for q in seqs], device=device)
        cont_mask = torch.tensor(
            [[1] * len(q) + [0] * (width - len(q)) for q in seqs], device=device
        )
        attn = torch.cat([inputs["attention_mask"].expand(n, -1), cont_mask], dim=-1)
        pos = (next_pos + torch.arange(width, device=device)).expand(n, -1)
        step = policy.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            **{cache_kw: cache},
        )
        cache = _output_cache(step)
        cache.crop(-width)  # negative = tokens to remove (the same meaning in transformers 4 and 5)
        logprobs = torch.log_softmax(step.logits.float() / temp, dim=-1)
        # Row j predicts continuation token j: the prefill's last logits, then the chunk's.
        rows = torch.cat([first.expand(n, 1, -1), logprobs[:, : width - 1]], dim=1)
        valid = cont_mask.bool()
        lp = rows.gather(-1, ids[..., None]).squeeze(-1)
        if constrained:  # renormalise each step over the trie node's children
            steps = [trie.step_allowed[a] for a in chunk]
            k_max = max(len(c) for st in steps for c in st)
            empty = [[0] * k_max]
            padded = [
                [[*c, *[0] * (k_max - len(c))] for c in st] + empty * (width - len(st))
                for st in steps
            ]
            counts = torch.tensor([[len(c) for c in st] + [0] * (width - len(st)) for st in steps])
            idx = torch.tensor(padded, dtype=torch.long, device=device)
            ok = (torch.arange(k_max)[None, None, :] < counts[..., None]).to(device)
            norm = torch.logsumexp(rows.gather(-1, idx).masked_fill(~ok, -math.inf), dim=-1)
            lp = lp - torch.where(valid, norm, torch.zeros_like(norm))
        totals = torch.where(valid, lp, torch.zeros_like(lp)).double().sum(-1).exp().tolist()
        probs.update(zip(chunk, totals))
    return probs


def most_probable_action(policy: LoadedPolicy, request: DecodeRequest) -> tuple[str, float]:
    """The exact argmax action and its constrained probability, by scoring every legal action.

    Temperature-0 decoding is token-greedy, which need not find this action; use this where the
    single most probable action matters (evaluation), at the cost of ~1k teacher-forced rows.
    """
    trie = action_trie(policy, request.selected, request.letters_in_play(), request.max_new_tokens)
    scores = score_actions(policy, request, trie.actions)
    best = max(range(len(scores)), key=scores.__getitem__)
    return trie.actions[best], scores[best]


def score_deployed(
    policy: LoadedPolicy,
    requests: Sequence[DecodeRequest],
    actions: Sequence[str],
    max_batch_size: int = 16,
) -> list[tuple[float, int]]:
    """(π_deployed, number of tokens) of each given action, teacher-forced under each request's
    adapter: the full-vocabulary, length-normalised probability at temperature 1 that decoding
    stores with the actions it produces (``DecodeResult.prob_deployed``). For re-scoring logged
    actions — any text the tokenizer takes, legal or not, is scored as written."""
    if len(requests) != len(actions):
        raise ValueError("one action per request")
    out: list[tuple[float, int] | None] = [None] * len(requests)
    groups: dict[str | None, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(r.adapter, []).append(i)
    with torch.inference_mode():
        for adapter, idx in groups.items():
            with policy.use_adapter(adapter):
                for k in range(0, len(idx), max_batch_size):
                    chunk = idx[k : k + max_batch_size]
                    inputs, _ = _encode(policy, [requests[i] for i in chunk])
                    first = policy.model(**inputs, use_cache=True, logits_to_keep=1)
                    prefill = _Prefill(
                        cache=_output_cache(first),
                        first_logits=first.logits[:, -1, :].float(),
                        mask=inputs["attention_mask"],
                        last_pos=inputs["position_ids"][:, -1:],
                    )
                    seqs = action_token_ids(policy, [actions[i] for i in chunk])
                    probs = prefill.score(policy, seqs, [1.0] * len(chunk))["deployed"]
                    for i, p, q in zip(chunk, probs, seqs):
                        out[i] = (p, len(q))
    return [x for x in out if x is not None]
