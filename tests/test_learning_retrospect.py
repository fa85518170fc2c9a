"""Retrospection (MULTIREF.md §4): heuristic labels, the decoder's prompt, batched scoring with a
shared prefix, and the end-to-end run over the 100 real games on a tiny model.

Also holds the helpers other learning tests use to put recorded games into a database (through
the rules engine and the event log, as the server would).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from app.db.database import Database  # noqa: E402
from app.db.gamelog import append, create_game, load_state  # noqa: E402
from app.game import rules as R  # noqa: E402
from learning.retrospect import (  # noqa: E402
    EMPTY_ACTION_HEURISTIC,
    DecoderConfig,
    FeedbackContext,
    FeedbackDecoder,
    FeedbackTemplate,
    confusion_matrix,
    confusion_summary,
    decoder_version,
    feedback_contexts,
    heuristic_label,
)

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


# ------------------------------------------------------- helpers shared by the learning tests


def recorded_config(game: dict) -> R.GameConfig:
    return R.GameConfig(
        context=tuple(sorted(game["speaker_order"])),
        targets=tuple(sorted(game["targets"])),
        speaker_order=tuple(game["speaker_order"]),
        listener_order=tuple(game["listener_order"]),
    )


async def insert_recorded_game(
    db: Database, game: dict, listener_kind: str = "model", game_id: str | None = None, **columns
) -> R.GameState:
    """Play a recorded game (respect_games format) through the rules engine into the event log."""
    t = 1_726_000_000.0
    created = R.GameCreated(
        game_id=(game_id or game["game_id"])[:32],
        config=recorded_config(game),
        rules=R.GameRules(),
        listener_kind=R.ListenerKind(listener_kind),
        at=t,
    )
    async with db.session() as s, s.begin():
        state = before = await create_game(s, created, **columns)
        events: list = []

        def play(state, cmd):
            new, produced = R.step(state, cmd)
            assert not isinstance(produced, R.Rejection), produced
            events.extend(produced)
            return new

        state = play(state, R.Join(seat=R.Seat.SPEAKER, at=t))
        if listener_kind == "human":
            state = play(state, R.Join(seat=R.Seat.LISTENER, at=t))
        for text, selection in zip(game["utterances"], game["selection_after_turn"]):
            t += 10
            state = play(state, R.SendUtterance(seat=R.Seat.SPEAKER, text=text, at=t))
            for tid in sorted(set(state.selection) ^ set(selection)):
                t += 1
                state = play(state, R.Click(seat=R.Seat.LISTENER, tangram_id=tid, at=t))
            t += 1
            state = play(state, R.Submit(seat=R.Seat.LISTENER, at=t))
        await append(s, before, events, state, actor="test")
    return state


def make_database(url: str, games: list[dict], **columns) -> None:
    """A migrated database holding ``games`` (each may carry "_kind" and "_columns")."""

    async def run() -> None:
        db = Database(url)
        await db.migrate()
        for g in games:
            kind = g.get("_kind", "model")
            await insert_recorded_game(
                db, g, kind, g.get("_id"), **{**columns, **g.get("_columns", {})}
            )
        await db.close()

    asyncio.run(run())


def run_db(url: str, fn):
    """Run ``await fn(db)`` on a fresh connection to ``url``; returns its value."""

    async def run():
        db = Database(url)
        try:
            return await fn(db)
        finally:
            await db.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from policy_worker.tiny import build_tiny_idefics2

    return build_tiny_idefics2(tmp_path_factory.mktemp("tiny_decoder"), seed=0)


@pytest.fixture(scope="module")
def tiny_policy(tiny_dir):
    from policy_worker.model import load_policy

    return load_policy(tiny_dir, dtype="float32", device="cpu")


# ---------------------------------------------------------------- heuristic labels


# §8's rule, written out by hand for every kind of move in a universe of 4 images (targets T1 T2,
# non-targets N1 N2). Key: (selected a target, selected a non-target, deselected a target,
# deselected a non-target). A part is "good" when non-empty and all targets (select) / all
# non-targets (deselect); +1 if a part is good and the other empty or good, 0 if a part is good and
# the other not, −1 otherwise.
HEURISTIC_TABLE = {
    (0, 0, 0, 0): -1,  # nothing
    (1, 0, 0, 0): 1,  # selected targets only
    (0, 1, 0, 0): -1,  # selected non-targets only
    (1, 1, 0, 0): -1,  # selected a target and a non-target: no part all good
    (0, 0, 1, 0): -1,  # deselected targets only
    (0, 0, 0, 1): 1,  # deselected non-targets only
    (0, 0, 1, 1): -1,  # deselected a target and a non-target
    (1, 0, 1, 0): 0,  # good select, bad deselect
    (1, 0, 0, 1): 1,  # good select, good deselect
    (1, 0, 1, 1): 0,  # good select, mixed deselect
    (0, 1, 1, 0): -1,  # bad select, bad deselect
    (0, 1, 0, 1): 0,  # bad select, good deselect
    (0, 1, 1, 1): -1,  # bad select, mixed deselect
    (1, 1, 1, 0): -1,  # mixed select, bad deselect
    (1, 1, 0, 1): 0,  # mixed select, good deselect
    (1, 1, 1, 1): -1,  # mixed select, mixed deselect
}
GOOD_MOVE = {k for k in HEURISTIC_TABLE if (k[0] and not k[1]) or (k[3] and not k[2])}


def test_heuristic_label_on_every_move_of_a_four_image_universe():
    from itertools import combinations

    from learning.retrospect import is_good_move

    universe, targets = ["T1", "T2", "N1", "N2"], {"T1", "T2"}
    subsets = [set(c) for n in range(5) for c in combinations(universe, n)]
    seen = set()
    for before in subsets:
        for after in subsets:
            sel, desel = after - before, before - after
            key = (
                int(bool(sel & targets)),
                int(bool(sel - targets)),
                int(bool(desel & targets)),
                int(bool(desel - targets)),
            )
            seen.add(key)
            got = heuristic_label(sorted(before), sorted(after), sorted(targets))
            assert got == HEURISTIC_TABLE[key], (before, after)
            assert is_good_move(before, after, targets) == (key in GOOD_MOVE), (before, after)
    assert seen == set(HEURISTIC_TABLE)  # all 16 kinds of move occur in 256 (before, after)


def test_empty_action_heuristic_is_documented_as_negative():
    assert EMPTY_ACTION_HEURISTIC == -1 == heuristic_label(["T1"], ["T1"], ["T1"])


# ---------------------------------------------------------------- the decoder's input


def _game_state(game: dict, folder: Path) -> R.GameState:
    async def run(db):
        await db.migrate()
        await insert_recorded_game(db, game)
        async with db.session() as s:
            return await load_state(s, game["game_id"][:32])

    return run_db(f"sqlite+aiosqlite:///{folder / 'one.sqlite3'}", run)


def test_contexts_and_prompt_lines_follow_the_recorded_game(recorded_games, tmp_path):
    game = recorded_games[0]
    state = _game_state(game, tmp_path)
    contexts = feedback_contexts(state)
    assert len(contexts) == game["num_turns"] - 1  # the last action has no next utterance
    first, second = contexts[0], contexts[1]
    letters = {t: "ABCDEFGHIJ"[i] for i, t in enumerate(game["listener_order"])}
    assert first.turn == 1 and first.previous_action is None
    assert first.action == "select " + letters[game["selection_after_turn"][0][0]]
    assert first.next_utterance == " ".join(game["utterances"][1].split())
    eou = "<end_of_utterance>"
    assert first.lines() == [
        f"\tSpeaker: {' '.join(game['utterances'][0].split())}{eou}",
        f"\tListener: {first.action}{eou}",
        f"\tSpeaker: {' '.join(game['utterances'][1].split())}{eou}",
    ]
    assert second.previous_action == first.action
    lines = second.lines()
    assert len(lines) == 4 and lines[0] == f"\tListener: {first.action}{eou}"
    assert [ln.split(":")[0] for ln in lines] == ["\tListener", "\tSpeaker", "\tListener", "\tSpeaker"]
    template = FeedbackTemplate.load(None, "binary")
    text = template.render(second)
    assert "{dialogue}" not in text
    # the dialogue sits between a start and an end marker line
    assert "=== dialogue begins ===\n" + "\n".join(lines) + "\n=== dialogue ends ===" in text
    assert "Positive or Negative" in text and "say Negative" in text


def test_template_must_have_one_placeholder(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("no placeholder here")
    with pytest.raises(ValueError, match="dialogue"):
        FeedbackTemplate.load(bad, "binary")


def test_decoder_version_names_decoder_template_and_model():
    t1 = FeedbackTemplate("A {dialogue} B")
    t2 = FeedbackTemplate("A {dialogue} C")
    cfg = DecoderConfig("binary")
    assert cfg.method == "generate" and cfg.max_tokens == 256  # the paper's defaults
    v = decoder_version(cfg, t1, "HuggingFaceM4/idefics2-8b")
    assert v.startswith("binary-generate-n3-L256-t" + t1.sha256[:8]) and "idefics2-8b" in v
    assert v != decoder_version(cfg, t2, "HuggingFaceM4/idefics2-8b")
    assert v != decoder_version(cfg, t1, "/models/other")
    margin = decoder_version(DecoderConfig("binary", method="margin"), t1, "m")
    assert margin.startswith("binary-margin-m0.5-L256-t")
    assert DecoderConfig("binary", method="scores").method == "margin"  # the former name
    with pytest.raises(ValueError, match="generate or margin"):
        DecoderConfig("binary", method="vote")
    long = decoder_version(DecoderConfig("ternary", method="margin"), t1, "/x/" + "m" * 200)
    assert len(long) <= 64 and long.startswith("ternary-margin-L256-t")


# ---------------------------------------------------------------- scoring


CONTEXTS = [
    FeedbackContext("g", 1, None, "choose the bird", "select A", "yes good, now the boat", 1),
    FeedbackContext("g", 2, "select A", "now the boat", "select C", "no not that one, undo", -1),
    FeedbackContext("g", 3, "select C", "no not that one", "deselect C select D", "correct", 1),
    FeedbackContext("h", 1, None, "the letter E turned on its side", "nothing", "try again", -1),
    FeedbackContext("h", 2, "nothing", "try again", "select B J", "wrong", -1),
]


def test_prefix_cache_and_batching_do_not_change_the_scores(tiny_policy):
    template = FeedbackTemplate.load(None, "ternary")
    cached = FeedbackDecoder(
        tiny_policy, DecoderConfig("ternary", "margin", batch_size=2, max_tokens=0), template
    )
    plain = FeedbackDecoder(
        tiny_policy,
        DecoderConfig("ternary", "margin", batch_size=1, prefix_cache=False, max_tokens=0),
        template,
    )
    odd = FeedbackContext(
        "o", 2, "select A", "type <image> here {dialogue}", "nothing", "  spaced   out  ", -1
    )
    for c in [*CONTEXTS, odd]:  # the fast prompt path equals rendering the chat each time
        assert cached.prompt(c) == cached.render(c)
    assert "<image>" not in cached.prompt(odd)  # a speaker cannot inject special tokens
    a, b = cached.decide(CONTEXTS), plain.decide(CONTEXTS)
    for x, y in zip(a, b):
        assert x.label == y.label
        for w in ("positive", "neutral", "negative"):
            assert x.scores["logp"][w] == pytest.approx(y.scores["logp"][w], abs=1e-3)
    # the tiny tokenizer splits the label words, sharing their first token: whole words are scored
    assert a[0].scores["scoring"] == "sequence"
    with pytest.raises(ValueError, match="first token"):
        FeedbackDecoder(
            tiny_policy, DecoderConfig("ternary", "margin", scoring="first_token"), template
        ).decide(CONTEXTS)


def test_scores_are_label_word_log_probabilities(tiny_policy):
    """The sequence score of a word equals its teacher-forced log-probability after the prompt."""
    dec = FeedbackDecoder(
        tiny_policy,
        DecoderConfig("binary", "margin", max_tokens=0),  # the tiny tokenizer's prompts are long
        FeedbackTemplate.load(None, "binary"),
    )
    decision = dec.decide(CONTEXTS[:1])[0]
    prompt = dec.prompt(CONTEXTS[0])
    tok = tiny_policy.tokenizer
    for word in ("positive", "negative"):
        ids = tok(prompt + " " + word, add_special_tokens=True)["input_ids"]
        n = len(tok(prompt, add_special_tokens=True)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(
                tiny_policy.model(input_ids=torch.tensor([ids])).logits[0].float(), -1
            )
        expected = sum(logp[i - 1, ids[i]].item() for i in range(n, len(ids)))
        assert decision.scores["logp"][word] == pytest.approx(expected, abs=1e-3)


def test_binary_margin_leans_negative(tiny_policy):
    dec = FeedbackDecoder(
        tiny_policy,
        DecoderConfig("binary", "margin", margin=0.0),
        FeedbackTemplate.load(None, "binary"),
    )
    for logps, margin, label in [
        ((-1.0, -2.0), 0.0, 1),
        ((-1.0, -2.0), 1.5, -1),
        ((-2.0, -1.0), 0.0, -1),
    ]:
        dec.config.margin = margin
        assert dec._from_logps(list(logps), "first_token").label == label
    ternary = FeedbackDecoder(
        tiny_policy, DecoderConfig("ternary", "margin"), FeedbackTemplate.load(None, "ternary")
    )
    assert ternary._from_logps([-3.0, -1.0, -2.0], "first_token").label == 0
    assert ternary._from_logps([-0.5, -1.0, -2.0], "first_token").label == 1


def test_generate_method_parses_or_falls_back(tiny_policy):
    dec = FeedbackDecoder(
        tiny_policy,
        DecoderConfig("binary", method="generate", batch_size=2),
        FeedbackTemplate.load(None, "binary"),
    )
    decisions = dec.decide(CONTEXTS)
    assert len(decisions) == len(CONTEXTS)
    assert all(d.label in (1, -1) and "text" in d.scores for d in decisions)
    assert dec.parse_answer(" Positive.").label == 1
    assert dec.parse_answer("negative").label == -1
    assert "unparsed" not in dec.parse_answer("Negative").scores
    # exact word match: no prefixes, no label word later in the answer, no third class in binary
    for text in ("neg", "pos", "hmm", "I think Positive", "Neutral", ""):
        d = dec.parse_answer(text)
        assert d.label == -1 and d.scores["unparsed"], text
    ternary = FeedbackDecoder(
        tiny_policy,
        DecoderConfig("ternary", method="generate"),
        FeedbackTemplate.load(None, "ternary"),
    )
    assert ternary.parse_answer("???").label == 0 and ternary.parse_answer("???").scores["unparsed"]
    assert ternary.parse_answer("Neutral").label == 0 and ternary.parse_answer("Negative.").label == -1


def _reference_greedy(policy, ids: list[int], n: int) -> list[int]:
    """Plain transformers greedy generation of one prompt (no batching, no shared prefix)."""
    out = policy.model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=[policy.stop_token_id, policy.tokenizer.eos_token_id],
        pad_token_id=policy.tokenizer.pad_token_id,
    )[0, len(ids):].tolist()
    stops = {policy.stop_token_id, policy.tokenizer.eos_token_id}
    for k, t in enumerate(out):
        if t in stops:
            return out[:k]
    return out


def test_generate_equals_plain_greedy_generation_of_the_truncated_prompt(tiny_policy):
    """Batched, prefix-cached generation reads the same answer as ``model.generate`` on each
    prompt right-truncated at max_tokens; a long utterance is cut, the instructions stay."""
    long = FeedbackContext(
        "l", 2, "select A", "the boat " * 200, "select B", "no not that one " * 40, -1
    )
    contexts = [*CONTEXTS, long]
    for max_tokens in (256, 0):
        dec = FeedbackDecoder(
            tiny_policy,
            DecoderConfig("ternary", "generate", batch_size=3, max_tokens=max_tokens),
            FeedbackTemplate.load(None, "ternary"),
        )
        decisions = dec.decide(contexts)
        tok = tiny_policy.tokenizer
        for c, d in zip(contexts, decisions):
            ids = tok(dec.prompt(c), add_special_tokens=True)["input_ids"]
            if max_tokens:
                ids = ids[:max_tokens]
            with torch.inference_mode():
                expected = _reference_greedy(tiny_policy, ids, dec.config.max_new_tokens)
            assert d.scores["text"] == tok.decode(expected, skip_special_tokens=True)
        full = tok(dec.prompt(long), add_special_tokens=True)["input_ids"]
        assert len(full) > 256


def test_decoder_metrics_precision_recall_f1():
    from learning.retrospect import decoder_metrics, metrics_from_confusion

    # (reference, decoded): worked out by hand
    pairs = [(1, 1), (1, 1), (1, -1), (-1, -1), (-1, 1), (0, -1), (None, 1)]
    m = decoder_metrics(pairs)
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(3 / 6)
    pos, neg, neu = m["per_class"][1], m["per_class"][-1], m["per_class"][0]
    assert pos["precision"] == pytest.approx(2 / 3) and pos["recall"] == pytest.approx(2 / 3)
    assert pos["f1"] == pytest.approx(2 / 3) and pos["support"] == 3
    assert neg["precision"] == pytest.approx(1 / 3) and neg["recall"] == pytest.approx(1 / 2)
    assert neg["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert neu["precision"] is None and neu["recall"] == 0 and neu["f1"] is None
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 0.4 + 0) / 6)
    assert m["confusion"][1][-1] == 1 and m["confusion"][0][-1] == 1
    assert metrics_from_confusion(m["confusion"]) == m


def test_confusion_matrix_and_summary():
    pairs = [(1, 1), (1, 1), (1, -1), (-1, -1), (-1, 1), (0, -1), (None, 1)]
    counts = confusion_matrix(pairs)
    assert counts[1][1] == 2 and counts[1][-1] == 1 and counts[-1][1] == 1 and counts[0][-1] == 1
    s = confusion_summary(counts)
    assert s["n"] == 6 and s["agreement"] == pytest.approx(3 / 6)
    assert s["false_positive_share"] == pytest.approx(1 / 3)  # 3 decoded positives, 1 heuristic −1


# ---------------------------------------------------------------- end to end on the real games


def test_retrospect_over_the_100_real_games(tmp_path, tiny_dir, recorded_games):
    """Insert the 100 real games (human speaker, model listener, round NULL), run
    ``multiref retrospect --all`` with the tiny model, and check the stored labels."""
    from sqlalchemy import func, select
    from typer.testing import CliRunner

    from app.cli import app
    from app.db.models import FeedbackLabel

    url = f"sqlite+aiosqlite:///{tmp_path / 'games.sqlite3'}"
    make_database(url, recorded_games, system="B-SUP", round=None)
    args = [
        "retrospect",
        "--all",
        "--decoder",
        "binary",
        "--base",
        str(tiny_dir),
        "--database-url",
        url,
        "--device",
        "cpu",
        "--batch-size",
        "32",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = sum(g["num_turns"] - 1 for g in recorded_games)
    assert expected == 588
    assert f"{expected} actions with a next utterance; labelled {expected}" in " ".join(
        result.output.split()
    )
    assert "heuristic" in result.output and "actions/s" in result.output
    assert "precision" in result.output and "weighted F1" in result.output

    async def read(db):
        async with db.session() as s:
            return (await s.execute(select(FeedbackLabel))).scalars().all()

    labels = run_db(url, read)
    assert len(labels) == expected
    assert {lab.decoder for lab in labels} == {"binary"}
    assert len({lab.decoder_version for lab in labels}) == 1
    assert all(lab.label in (1, -1) and "text" in lab.scores for lab in labels)  # generated
    # the stored heuristic is recomputed here from the recorded selections and targets
    by_key = {(lab.game_id, lab.turn): lab for lab in labels}
    for g in recorded_games:
        before: list[str] = []
        for turn, after in enumerate(g["selection_after_turn"][:-1], start=1):
            lab = by_key[(g["game_id"][:32], turn)]
            assert lab.heuristic == heuristic_label(before, after, g["targets"])
            before = after
        assert (g["game_id"][:32], g["num_turns"]) not in by_key  # no next utterance, no label
    hist = {h: sum(lab.heuristic == h for lab in labels) for h in (-1, 0, 1)}
    assert all(hist.values())  # the sample has all three heuristic classes

    # a second run labels nothing new (same decoder version)
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0 and f"labelled 0, already labelled {expected}" in " ".join(
        again.output.split()
    )

    async def count(db):
        async with db.session() as s:
            return (await s.execute(select(func.count()).select_from(FeedbackLabel))).scalar()

    assert run_db(url, count) == expected


def test_retrospect_needs_a_round_or_all(tmp_path):
    from typer.testing import CliRunner

    from app.cli import app

    result = CliRunner().invoke(
        app, ["retrospect", "--database-url", f"sqlite+aiosqlite:///{tmp_path}/x.db"]
    )
    assert result.exit_code != 0


def test_retrospect_by_round_only_labels_that_round(tmp_path, tiny_policy, recorded_games):
    from learning.retrospect import retrospect

    url = f"sqlite+aiosqlite:///{tmp_path / 'rounds.sqlite3'}"
    games = [
        dict(g, _columns={"round": i % 2, "system": "B-SUP"})
        for i, g in enumerate(recorded_games[:4])
    ]
    make_database(url, games)
    dec = FeedbackDecoder(
        tiny_policy, DecoderConfig("binary"), FeedbackTemplate.load(None, "binary")
    )
    result = run_db(url, lambda db: retrospect(db, dec, 1))
    expected = sum(g["num_turns"] - 1 for i, g in enumerate(recorded_games[:4]) if i % 2 == 1)
    assert result.games == 2 and result.labelled == expected and result.actions_per_s > 0
