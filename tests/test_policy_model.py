"""The policy's model side on a tiny random Idefics2: prompt, loading, adapters, decoding."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from policy_worker.decoding import (  # noqa: E402
    DecodeRequest,
    action_token_ids,
    action_trie,
    decode_actions,
    most_probable_action,
    score_actions,
)
from policy_worker.model import LoadedPolicy, load_policy  # noqa: E402
from policy_worker.prompt import (  # noqa: E402
    LETTERS,
    PromptGame,
    PromptTurn,
    action_text,
    apply_action,
    build_chat,
    game_from_selections,
    is_legal_action,
    legal_actions,
    parse_action,
    remap_action,
    render_prompt,
    shuffle_letters,
)
from policy_worker.tiny import TINY_IMAGE_SEQ_LEN, build_tiny_idefics2, make_tiny_lora  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

TANGRAMS = [f"page{i}-{i * 7}" for i in range(10)]


def reference_dir() -> Path:
    env = os.environ.get("MULTIREF_REFERENCE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def first_reference_game() -> dict:
    path = reference_dir() / "respect_games" / "sep_12_24_sample.jsonl"
    if not path.is_file():
        pytest.skip(f"reference games not found at {path} (set MULTIREF_REFERENCE_DIR)")
    with path.open() as f:
        return json.loads(f.readline())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_idefics2")
    model_dir = build_tiny_idefics2(root / "model")
    make_tiny_lora(model_dir, root / "lora_a", seed=1)
    make_tiny_lora(model_dir, root / "lora_b", seed=2)
    return root


@pytest.fixture(scope="module")
def policy(tiny_dir: Path) -> LoadedPolicy:
    return load_policy(
        str(tiny_dir / "model"),
        adapters={"a": tiny_dir / "lora_a"},
        dtype="float32",
        device="cpu",
    )


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rnd = random.Random(0)
    out = []
    for i in range(10):
        img = Image.new("RGB", (144, 144), (255, 255, 255))
        for x in range(20 + 8 * i, 100):
            for y in range(30, 30 + rnd.randint(20, 100)):
                img.putpixel((x, y), (rnd.randint(0, 60),) * 3)
        out.append(img)
    return out


def make_game(selected: list[str], utterance: str, history: int = 1) -> PromptGame:
    """A game whose current turn acts on `selected` (letters), after `history` earlier turns."""
    by_letter = dict(zip(LETTERS, TANGRAMS))
    turns = []
    before: list[str] = []
    for t in range(history):
        after = selected if t == history - 1 else sorted(set(before) ^ {LETTERS[t]})
        turns.append(
            PromptTurn(
                utterance=f"earlier message {t}",
                selection_before=[by_letter[c] for c in before],
                action=action_text(before, after, {c: c for c in LETTERS}),
            )
        )
        before = after
    turns.append(PromptTurn(utterance=utterance, selection_before=[by_letter[c] for c in selected]))
    return PromptGame(listener_order=list(TANGRAMS), turns=turns)


def request(
    images: list[Image.Image], selected: list[str], utterance: str = "the bird", **kw: object
) -> DecodeRequest:
    return DecodeRequest.for_game(make_game(selected, utterance), images, **kw)


# --- prompt -----------------------------------------------------------------------------------

PINNED_TRANSCRIPT = (
    "System:<image>A<image>B<image>C<image>D<image>E<image>F<image>G<image>H<image>I<image>J"
    "<end_of_utterance>\n"
    "System: none is selected<end_of_utterance>\n"
    "User: choose the spatula<end_of_utterance>\n"
    "Assistant: select C<end_of_utterance>\n"
    "System: C currently selected<end_of_utterance>\n"
    "User: Correct.  now choose the letter E turned on its side<end_of_utterance>\n"
    "Assistant: select A<end_of_utterance>\n"
    "System: A C currently selected<end_of_utterance>\n"
    "User: Incorrect, delete your choice.  choose the double archway<end_of_utterance>\n"
    "Assistant: deselect A select G<end_of_utterance>\n"
    "System: C G currently selected<end_of_utterance>\n"
    "User: Correct.  now choose the hook on top of small triangle<end_of_utterance>\n"
    "Assistant: select D<end_of_utterance>\n"
    "System: C D G currently selected<end_of_utterance>\n"
    "User: Correct.  now choose the shape on top of a triangle<end_of_utterance>\n"
    "Assistant: select B<end_of_utterance>\n"
    "System: B C D G currently selected<end_of_utterance>\n"
    "User: Incorrect, delete your choice. choose the letter L on top of triangle<end_of_utterance>\n"
    "Assistant: deselect B select H<end_of_utterance>\n"
    "System: C D G H currently selected<end_of_utterance>\n"
    "User: Incorrect, delete your choice. choose the letter J on top of triangle<end_of_utterance>\n"
    "Assistant: deselect H select A<end_of_utterance>\n"
    "System: A C D G currently selected<end_of_utterance>\n"
    "User: Incorrect, delete your choice. choose the OTHER letter J<end_of_utterance>\n"
    "Assistant: deselect A select I<end_of_utterance>\n"
    "System: C D G I currently selected<end_of_utterance>\n"
    "User: Incorrect, delete your choice. choose the ONLY triangle at<end_of_utterance>\n"
    "Assistant: deselect I<end_of_utterance>\n"
    "System: C D G currently selected<end_of_utterance>\n"
    "User: Incorrect, delete your choice. choose the ONLY triangle in bottom right corner<end_of_utterance>\n"
    "Assistant: deselect D select F<end_of_utterance>"
)

PINNED_TURN_3_PROMPT = (
    "System:<image>A<image>B<image>C<image>D<image>E<image>F<image>G<image>H<image>I<image>J"
    "<end_of_utterance>\n"
    "System: none is selected<end_of_utterance>\n"
    "User: choose the spatula<end_of_utterance>\n"
    "Assistant: select C<end_of_utterance>\n"
    "System: C currently selected<end_of_utterance>\n"
    "User: Correct.  now choose the letter E turned on its side<end_of_utterance>\n"
    "Assistant: select A<end_of_utterance>\n"
    "System: A C currently selected<end_of_utterance>\n"
    "User: Incorrect, delete your choice.  choose the double archway<end_of_utterance>\n"
    "Assistant:"
)


def test_prompt_pinned_for_recorded_game(policy: LoadedPolicy) -> None:
    g = first_reference_game()
    full = game_from_selections(g["listener_order"], g["utterances"], g["selection_after_turn"])
    assert render_prompt(policy.processor, build_chat(full)) == PINNED_TRANSCRIPT
    assert render_prompt(policy.tokenizer, build_chat(full)) == PINNED_TRANSCRIPT

    current = game_from_selections(
        g["listener_order"], g["utterances"], g["selection_after_turn"], current_turn=2
    )
    chat = build_chat(current)
    assert render_prompt(policy.processor, chat) == PINNED_TURN_3_PROMPT
    assert chat[0]["content"][:4] == [
        {"type": "image"},
        {"type": "text", "text": "A"},
        {"type": "image"},
        {"type": "text", "text": "B"},
    ]
    assert chat[-1] == {"role": "user", "content": [{"type": "text", "text": g["utterances"][2]}]}
    assert current.current_selected_letters() == ["A", "C"]


def test_action_grammar() -> None:
    letter_of = dict(zip(TANGRAMS, LETTERS))
    t = TANGRAMS
    assert action_text([], [t[1], t[0]], letter_of) == "select A B"
    assert action_text([t[2]], [], letter_of) == "deselect C"
    assert action_text([t[2], t[0]], [t[0], t[6]], letter_of) == "deselect C select G"
    assert action_text([t[3]], [t[3]], letter_of) == "nothing"
    assert parse_action("deselect C select G") == (["C"], ["G"])
    assert parse_action("select B A") == ([], ["A", "B"])
    assert parse_action("nothing") == ([], [])
    for bad in ["", "select", "select A A", "select G deselect C", "deselect C select C", "pick A"]:
        with pytest.raises(ValueError):
            parse_action(bad)
    assert apply_action(["A", "C"], "deselect C select G") == ["A", "G"]
    with pytest.raises(ValueError):
        apply_action(["A"], "select A")


def test_legal_actions_enumeration() -> None:
    acts = legal_actions(["B", "E"])
    assert len(acts) == len(set(acts)) == 2**10
    assert acts[0] == "nothing"
    assert all(is_legal_action(a, ["B", "E"]) for a in acts)
    assert "deselect B E select A J" in acts
    assert not is_legal_action("select B", ["B", "E"])
    assert not is_legal_action("deselect A", ["B", "E"])
    assert not is_legal_action("select J A", ["B"])  # not canonical
    assert len(legal_actions(["A"], LETTERS[:3])) == 8


def test_letter_shuffle_augmentation() -> None:
    game = make_game(["A", "C"], "the boat", history=2)
    same, mapping = shuffle_letters(game, list(range(10)))
    assert same == game and all(k == v for k, v in mapping.items())

    shuffled, mapping = shuffle_letters(game, random.Random(3))
    assert sorted(shuffled.listener_order) == sorted(game.listener_order)
    new_letter = shuffled.letter_of()
    for old_t, new_t in zip(game.turns, shuffled.turns):
        assert old_t.selection_before == new_t.selection_before  # tangram ids are unchanged
        if old_t.action is not None:
            assert new_t.action == remap_action(old_t.action, mapping)
    # The tangram that was "C" is still the one selected, under its new letter.
    assert shuffled.current_selected_letters() == sorted(
        new_letter[t] for t in game.turns[-1].selection_before
    )


# --- loading and adapters ---------------------------------------------------------------------


def test_load_tiny_through_load_policy(policy: LoadedPolicy, images: list[Image.Image]) -> None:
    proc = policy.processor
    assert type(policy.model.get_base_model()).__name__ == "Idefics2ForConditionalGeneration"
    assert proc.image_processor.do_image_splitting is False
    assert proc.image_processor.size.longest_edge == 224
    assert proc.tokenizer.padding_side == "left"
    req = request(images, ["A"])
    batch = proc(text=[render_prompt(proc, req.chat)], images=[req.images], return_tensors="pt")
    assert batch["pixel_values"].shape[1:] == (10, 3, 224, 224)
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 10 * TINY_IMAGE_SEQ_LEN
    [res] = decode_actions(policy, [req])
    assert res.num_prompt_tokens == batch["input_ids"].shape[1]
    assert res.latency_s > 0 and res.prompt.endswith("Assistant:")


def test_processor_forced_to_224_px_without_splitting(tiny_dir: Path, tmp_path: Path) -> None:
    """The hub checkpoint ships 378-980 px with splitting; load_processor must override both."""
    from policy_worker.model import load_processor

    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_dir / "model" / name).read_bytes())
    cfg = json.loads((tmp_path / "processor_config.json").read_text())
    cfg["image_processor"]["size"] = {"shortest_edge": 378, "longest_edge": 980}
    cfg["image_processor"]["do_image_splitting"] = True
    (tmp_path / "processor_config.json").write_text(json.dumps(cfg))
    proc = load_processor(tmp_path)
    assert proc.image_processor.do_image_splitting is False
    out = proc(text=["<image>x"], images=[[Image.new("RGB", (600, 600))]], return_tensors="pt")
    assert out["pixel_values"].shape[-2:] == (224, 224)


def test_adapters_switch_add_remove(tiny_dir: Path, images: list[Image.Image]) -> None:
    pol = load_policy(str(tiny_dir / "model"), dtype="float32", device="cpu")
    req = request(images, ["B", "D"], "the rabbit")
    acts = action_trie(pol, req.selected).actions[:40]

    def scores(adapter: str | None) -> list[float]:
        return score_actions(pol, DecodeRequest(**{**req.__dict__, "adapter": adapter}), acts)

    base = scores(None)
    pol.add_adapter("a", tiny_dir / "lora_a")
    base_model = pol.model.get_base_model()
    pol.add_adapter("b", tiny_dir / "lora_b")
    assert pol.model.get_base_model() is base_model  # hot swap: the base was not reloaded
    assert pol.adapter_names() == ["a", "b"]
    with_a, with_b = scores("a"), scores("b")
    assert with_a != pytest.approx(base) and with_b != pytest.approx(with_a)
    assert scores(None) == pytest.approx(base, rel=1e-6)  # adapters disabled = the base
    assert scores("a") == pytest.approx(with_a, rel=1e-6)  # switching back is exact

    # One batch mixing adapters: rows are grouped by adapter and come back in order.
    mixed = [
        DecodeRequest(**{**req.__dict__, "adapter": a, "temperature": 0})
        for a in ["b", None, "a", "b"]
    ]
    out = decode_actions(pol, mixed)
    for r, m in zip(out, mixed):
        assert r.adapter == m.adapter
        assert r.prob_constrained == pytest.approx(score_actions(pol, m, [r.action])[0], rel=1e-4)
    assert out[0].action == out[3].action

    with pytest.raises(ValueError):
        pol.add_adapter("a", tiny_dir / "lora_a")
    pol.remove_adapter("a")
    with pytest.raises(KeyError):
        decode_actions(pol, [DecodeRequest(**{**req.__dict__, "adapter": "a"})])
    assert scores("b") == pytest.approx(with_b, rel=1e-6)
    pol.remove_adapter("b")
    with pytest.raises(KeyError):
        pol.remove_adapter("b")
    assert scores(None) == pytest.approx(base, rel=1e-6)


# --- constrained decoding ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    selected=st.sets(st.sampled_from(LETTERS)),
    utterance=st.lists(
        st.one_of(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
            st.sampled_from(["<image>", "<end_of_utterance>", "</s>", "select A", "nothing", "\n"]),
        ),
        min_size=1,
        max_size=4,
    ).map("".join),
    temperature=st.sampled_from([0.0, 0.7, 1.0, 3.0]),
    seed=st.integers(0, 2**31),
)
def test_decoding_only_yields_legal_actions(
    policy: LoadedPolicy, images: list[Image.Image], selected: set[str], utterance: str,
    temperature: float, seed: int,
) -> None:
    sel = sorted(selected)
    req = request(images, sel, utterance, adapter="a", temperature=temperature, seed=seed)
    [res] = decode_actions(policy, [req])
    assert is_legal_action(res.action, sel), res.action
    assert len(res.token_ids) <= req.max_new_tokens
    assert 0.0 < res.prob_unconstrained <= res.prob_constrained <= 1.0


def test_batched_greedy_equals_one_at_a_time(
    policy: LoadedPolicy, images: list[Image.Image]
) -> None:
    reqs = [
        request(images, [], "choose the bird", adapter="a", temperature=0),
        request(images, ["A", "C"], "no, not that one, the long ears", adapter="a", temperature=0),
        request(images, ["J"], "x", adapter="a", temperature=0),
        DecodeRequest.for_game(
            make_game(["B"], "the house", history=3), images, adapter="a", temperature=0
        ),
        request(images, list(LETTERS[:5]), "undo all", adapter="a", temperature=0),
    ]
    batched = decode_actions(policy, reqs)
    for req, b in zip(reqs, batched):
        [single] = decode_actions(policy, [req])
        assert b.action == single.action
        assert b.token_ids == single.token_ids
        assert b.num_prompt_tokens == single.num_prompt_tokens
        assert b.prob_constrained == pytest.approx(single.prob_constrained, rel=1e-4)
        assert b.prob_unconstrained == pytest.approx(single.prob_unconstrained, rel=1e-4)


def test_constrained_probabilities_are_exact(
    policy: LoadedPolicy, images: list[Image.Image]
) -> None:
    req = request(images, ["A", "D", "H"], "the left one", adapter="a", temperature=1.0, seed=7)
    trie = action_trie(policy, req.selected, max_new_tokens=req.max_new_tokens)
    assert action_trie(policy, ["H", "D", "A"]) is trie  # cached per (tokenizer, selected set)
    every = legal_actions(req.selected)
    scores = score_actions(policy, req, every)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    # Legal actions too long for max_new_tokens are unreachable, hence probability 0.
    assert all(s == 0.0 for a, s in zip(every, scores) if a in trie.pruned)
    # Illegal (A is selected) and non-canonical (letters out of order) actions have probability 0.
    assert score_actions(policy, req, ["select A", "select D C"]) == [0.0, 0.0]

    for seed in range(5):
        r = DecodeRequest(**{**req.__dict__, "seed": seed})
        [res] = decode_actions(policy, [r])
        assert res.prob_constrained == pytest.approx(scores[every.index(res.action)], rel=1e-4)
        [unc] = score_actions(policy, r, [res.action], constrained=False)
        assert res.prob_unconstrained == pytest.approx(unc, rel=1e-4)

    hot = DecodeRequest(**{**req.__dict__, "temperature": 2.5})
    assert sum(score_actions(policy, hot, every)) == pytest.approx(1.0, abs=1e-5)


def test_greedy_follows_the_argmax_of_each_step(
    policy: LoadedPolicy, images: list[Image.Image]
) -> None:
    req = request(images, ["B", "E"], "pick the fish", adapter="a", temperature=0)
    trie = action_trie(policy, req.selected, max_new_tokens=req.max_new_tokens)
    probs = dict(zip(trie.actions, score_actions(policy, req, trie.actions)))

    # The constrained next-token distribution at a trie node is the mass of its subtree.
    def mass(prefix: tuple[int, ...]) -> float:
        return sum(p for a, p in probs.items() if trie.token_ids[a][: len(prefix)] == prefix)

    prefix: tuple[int, ...] = ()
    node = trie.root
    while node.action is None:
        prefix += (max(node.children, key=lambda tok: mass(prefix + (tok,))),)
        node = node.children[prefix[-1]]
    [res] = decode_actions(policy, [req])
    assert res.action == node.action
    assert res.prob_constrained == pytest.approx(probs[node.action], rel=1e-4)

    best, p = most_probable_action(policy, req)
    assert p == pytest.approx(max(probs.values()), rel=1e-6) and probs[best] == p


def test_seeded_sampling_is_reproducible(policy: LoadedPolicy, images: list[Image.Image]) -> None:
    reqs = [
        request(images, ["C"], "the dog", adapter="a", temperature=1.0, seed=s) for s in range(6)
    ]
    first = decode_actions(policy, reqs)
    again = decode_actions(policy, reqs[::-1])[::-1]  # other batch order, same per-row seeds
    assert [r.action for r in first] == [r.action for r in again]
    assert [r.seed for r in first] == list(range(6))
    assert len({r.action for r in first}) > 1  # different seeds do sample different actions
    [unseeded] = decode_actions(policy, [DecodeRequest(**{**reqs[0].__dict__, "seed": None})])
    replay = DecodeRequest(**{**reqs[0].__dict__, "seed": unseeded.seed})
    [replayed] = decode_actions(policy, [replay])
    assert replayed.action == unseeded.action


def test_action_tokens_match_training_tokenization(policy: LoadedPolicy) -> None:
    """Serving's action tokens are exactly what a training forward over the full chat sees."""
    game = make_game(["A"], "the cat", history=2)
    tok = policy.tokenizer
    prompt_ids = tok(render_prompt(policy.processor, build_chat(game)))["input_ids"]
    for action in ["nothing", "deselect A select B C", "select J"]:
        last = game.turns[-1]
        turns = game.turns[:-1] + [PromptTurn(last.utterance, last.selection_before, action)]
        full = render_prompt(policy.processor, build_chat(PromptGame(game.listener_order, turns)))
        full_ids = tok(full)["input_ids"]
        [cont] = action_token_ids(policy, [action])
        assert full_ids == prompt_ids + list(cont)


# --- paper-mode decoding (MULTIREF.md §8) and π_deployed ----------------------------------------


def test_parse_generated_drops_illegal_letters_and_falls_back_to_the_first_image() -> None:
    from policy_worker.decoding import fallback_action, parse_generated

    cases = [  # (generated text, selected, expected action, how), written by hand from §8
        ("select A B", [], "select A B", "parsed"),
        (" select  B   C ", ["A"], "select B C", "parsed"),
        ("deselect A select C", ["A"], "deselect A select C", "parsed"),
        ("select B A", [], "select A B", "parsed"),  # canonical order
        ("select A C", ["A"], "select C", "dropped"),  # A is already selected
        ("deselect C select D", ["A"], "select D", "dropped"),  # C is not selected
        ("deselect A select A", ["A"], "deselect A", "dropped"),
        ("select K", [], "select A", "fallback"),  # K is not in play
        ("select A", ["A"], "select B", "fallback"),  # A illegal: the first unselected image
        ("deselect C", ["A"], "select B", "fallback"),
        ("nothing", [], "select A", "fallback"),  # never nothing
        ("", [], "select A", "fallback"),
        ("select", [], "select A", "fallback"),
        ("selectA", [], "select A", "fallback"),
        ("select A select B", [], "select A", "fallback"),  # outside the grammar
        ("select a", ["B"], "select A", "fallback"),
    ]
    for text, selected, action, how in cases:
        assert parse_generated(text, selected) == (action, how), text
    assert fallback_action(list(LETTERS)) == "deselect A"  # every image selected: not nothing
    assert fallback_action([], ["A", "B", "C"]) == "select A"


def _full_forward_logps(
    policy: LoadedPolicy, req: DecodeRequest, action: str
) -> tuple[list[float], list[torch.Tensor]]:
    """Per-token full-vocabulary log-probabilities of `action` after the prompt, and the logits
    rows, by one plain forward pass over prompt + action (no cache, no batching)."""
    [seq] = action_token_ids(policy, [action])
    batch = policy.processor(
        text=[render_prompt(policy.processor, req.chat)], images=[list(req.images)],
        return_tensors="pt",
    )
    n = batch["input_ids"].shape[1]
    ids = torch.cat([batch["input_ids"], torch.tensor([seq])], dim=1)
    with torch.inference_mode(), policy.use_adapter(req.adapter):
        logits = policy.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=batch["pixel_values"],
            pixel_attention_mask=batch.get("pixel_attention_mask"),
        ).logits[0].float()
    rows = [logits[n - 1 + j] for j in range(len(seq))]
    return [float(torch.log_softmax(r, -1)[t]) for r, t in zip(rows, seq)], rows


def test_paper_decoding_samples_the_action_vocabulary_and_never_says_nothing(
    policy: LoadedPolicy, images: list[Image.Image]
) -> None:
    from policy_worker.decoding import action_vocabulary, parse_generated

    vocab = set(action_vocabulary(policy))
    words = {policy.tokenizer.decode([t]).strip() for t in vocab} - {""}
    assert set(LETTERS) <= words and "nothing" not in words and len(vocab) < 40
    hows = set()
    for seed in range(12):
        selected = sorted(random.Random(seed).sample(LETTERS, seed % 4))
        req = request(images, selected, "the bird", adapter="a", seed=seed, decoding="paper")
        [res] = decode_actions(policy, [req])
        assert res.decoding == "paper" and res.action != "nothing"
        assert is_legal_action(res.action, selected), res.action
        assert set(res.token_ids) <= vocab and 1 <= len(res.token_ids) <= 10
        assert (res.action, res.parse) == parse_generated(res.generated, selected)
        hows.add(res.parse)
        # the random tiny model rarely writes a whole action: the fallback is exercised
    assert "fallback" in hows
    # seeded paper sampling is reproducible and batch-independent
    reqs = [request(images, ["C"], "x", adapter="a", seed=s, decoding="paper") for s in range(4)]
    one = decode_actions(policy, reqs)
    assert [r.token_ids for r in one] == [r.token_ids for r in decode_actions(policy, reqs[::-1])[::-1]]


def test_prob_deployed_is_the_full_vocabulary_length_normalised_probability(
    policy: LoadedPolicy, images: list[Image.Image]
) -> None:
    """Both modes store exp(mean_t log p(a_t)) over the whole vocabulary at temperature 1, checked
    against a plain forward pass; paper mode's constrained probability is over its vocabulary."""
    from policy_worker.decoding import action_vocabulary

    vocab = list(action_vocabulary(policy))
    for mode, temperature in (("paper", 1.0), ("grammar", 1.0), ("paper", 2.0), ("grammar", 0.0)):
        req = request(
            images, ["B", "E"], "pick the fish", adapter="a", seed=3, decoding=mode,
            temperature=temperature,
        )
        [res] = decode_actions(policy, [req])
        logps, rows = _full_forward_logps(policy, req, res.action)
        mean = sum(logps) / len(logps)
        assert res.prob_deployed == pytest.approx(math.exp(mean), rel=1e-4), mode
        t = temperature or 1.0
        [seq] = action_token_ids(policy, [res.action])
        unc = sum(float(torch.log_softmax(r / t, -1)[k]) for r, k in zip(rows, seq))
        assert res.prob_unconstrained == pytest.approx(math.exp(unc), rel=1e-4), mode
        if mode == "paper":
            cut = sum(
                float(torch.log_softmax(r[vocab] / t, -1)[vocab.index(k)]) for r, k in zip(rows, seq)
            )
            assert res.prob_constrained == pytest.approx(math.exp(cut), rel=1e-4)
        # not the constrained number, nor the unnormalised product: the §8 quantity
        assert res.prob_deployed != pytest.approx(res.prob_constrained, rel=1e-3)
