"""The paper profile (MULTIREF.md §8) through the real training path, checked by hand.

Each loss test builds a two-example batch, computes one training step's loss by hand (plain
Python on the model's log-probabilities, not ``learning.losses``), and compares it with the
loss ``fit`` reports for that step (the mean per-example loss before the update), after
``select_examples`` as ``train`` calls it.

Mutations tried on 2026-11-29 (each edit made in a copy of the tree, the tests run, the edit
reverted) and the tests that failed:

* RL not length-normalised (``normalise=False`` for ``norm`` in ``batch_losses``):
  test_rl_step_by_hand
* importance weight from a per-token mean (``importance_weights(norm, …)``):
  test_rl_step_by_hand
* SUP smoothing 0 (``SUPConfig.label_smoothing = 0.0``): test_sup_step_by_hand,
  test_paper_defaults_and_the_project_option
* RL without importance weights (``w = torch.ones_like(seq)``): test_rl_step_by_hand
* KTO z forced to 0 (``mismatched_reference_point`` returns 0): test_kto_step_by_hand
* desirable and undesirable swapped (``labels == -1`` as desirable): test_kto_step_by_hand
* neutral examples kept in RL (``drop_neutral`` ignored in ``select_examples``):
  test_rl_step_by_hand
* seed task missing from a round's data (not appended in ``load_training_data``):
  test_every_round_mixes_in_the_seed_task, test_train_command_paper_manifest
* also: KTO's z per micro-batch instead of the whole effective batch, and π_ref without its
  0.01 floor: test_kto_step_by_hand
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from learning.datasets import (  # noqa: E402
    SEED,
    SEED_CLEAR,
    SEED_UNDO,
    ActionCollator,
    Example,
    augment,
    good_move,
    mismatched_single_click,
    seed_turns,
)
from learning.train import (  # noqa: E402
    PAPER_LORA_TARGETS,
    TEXT_LORA_TARGETS,
    KTOConfig,
    RLConfig,
    SUPConfig,
    attach_adapter,
    deviations_from_paper,
    fit,
    load_config,
    select_examples,
)
from policy_worker.prompt import PromptGame, PromptTurn, apply_action, parse_action  # noqa: E402
from tests.test_learning_retrospect import make_database, run_db  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from policy_worker.tiny import build_tiny_idefics2

    return build_tiny_idefics2(tmp_path_factory.mktemp("tiny_paper"), seed=0)


@pytest.fixture(scope="module")
def tangram_ids(kilogram_dir) -> list[str]:
    return sorted(p.stem for p in Path(kilogram_dir).glob("*.svg"))[:10]


@pytest.fixture(scope="module")
def images(kilogram_dir):
    from policy_worker.gamedata import TangramImages

    return TangramImages(kilogram_dir).images


def load(tiny_dir):
    from policy_worker.model import load_policy

    return load_policy(tiny_dir, dtype="float32", device="cpu")


# ---------------------------------------------------------------- the profile's defaults


def test_paper_defaults_and_the_project_option():
    sup, rl, kto = load_config("B-SUP"), load_config("T-RL"), load_config("B-KTO")
    for c in (sup, rl, kto):
        assert c.profile == "paper" and c.seed_task and c.drop_empty_turns
        assert c.lora_targets == PAPER_LORA_TARGETS and c.lora_init == "gaussian"
        assert c.weight_decay == 0.01 and c.policy_prob == "full" and c.selection == "sample"
        assert c.shuffle_letters and c.seed_label_smoothing == 0.1
        assert deviations_from_paper(c) == {}
    assert sup.optimizer == rl.optimizer == "paged_adamw_8bit" and kto.optimizer == "rmsprop"
    assert (sup.lr_scheduler, kto.lr_scheduler) == ("cosine", "constant")
    assert sup.label_smoothing == 0.1
    assert rl.label_smoothing == 0.1 and rl.drop_neutral
    assert rl.rewards == {1: 1.0, 0: 0.0, -1: -0.1}
    assert (kto.label_smoothing, kto.reference_floor, kto.kl_estimate) == (0.01, 0.01, "mismatched")
    proj = load_config("B-KTO", overrides={"profile": "project"})
    assert (proj.kl_estimate, proj.shuffle_letters, proj.seed_task, proj.lora_targets) == (
        "batch",
        False,
        False,
        TEXT_LORA_TARGETS,
    )
    assert set(deviations_from_paper(proj)) >= {"kl_estimate", "seed_task", "lora_targets"}
    # one key changes one setting and the manifest says so
    one = load_config("B-RL", overrides={"drop_neutral": False})
    assert deviations_from_paper(one) == {"drop_neutral": {"value": False, "paper": True}}
    with pytest.raises(ValueError, match="profile"):
        load_config("B-SUP", overrides={"profile": "mine"})


# ---------------------------------------------------------------- by hand


def hand_logps(policy, images, game: PromptGame, action: str) -> tuple[list[float], list[float]]:
    """Per action token: log p(a_t) and the mean over the vocabulary of log p(v), from one
    unpadded forward pass (the action's tokens are the last ones of the input)."""
    from learning.datasets import model_inputs

    sample = augment(Example("h", 1, game, action), None)
    batch = ActionCollator(policy, images, with_allowed=False)([sample])
    ids = batch["targets"][0].tolist()
    model = policy.model
    model.eval()
    with torch.no_grad():
        logits = model(**model_inputs(batch, policy.device, policy.dtype)).logits[0].double()
    n, length = len(ids), logits.shape[0]
    lp, mean = [], []
    for t, tok in enumerate(ids):
        row = torch.log_softmax(logits[length - n - 1 + t], dim=-1)
        lp.append(float(row[tok]))
        mean.append(float(row.mean()))
    return lp, mean


def smoothing(mean: list[float]) -> float:
    return sum(-m for m in mean) / len(mean)


def one_step(policy, images, config, examples, out) -> tuple[float, dict]:
    """What ``train`` does for one step: select the examples, then ``fit`` one epoch."""
    kept, info = select_examples(examples, config)
    result = fit(policy, config, kept, [], images, out)
    assert [m.epoch for m in result.metrics] == [1] and result.metrics[0].steps == 1
    return result.metrics[0].loss, info


def tiny(cls, **kw):
    values = dict(
        variant={"SUPConfig": "B-SUP", "RLConfig": "T-RL", "KTOConfig": "B-KTO"}[cls.__name__],
        epochs=1,
        warmup_steps=0,
        micro_batch_size=1,  # gradient accumulation: the loss is still the step's mean
        shuffle_letters=False,
        eval_before_training=False,
        lora_dropout=0.0,
        seed_task=False,
    )
    values.update(kw)
    return cls(**values)


def games(tangram_ids) -> list[PromptGame]:
    return [
        PromptGame(tangram_ids, [PromptTurn("choose the bird with open wings", [], None)]),
        PromptGame(
            tangram_ids,
            [
                PromptTurn("pick the boat", [], "select A"),
                PromptTurn("no not that one, the person", [tangram_ids[0]], None),
            ],
        ),
    ]


def test_sup_step_by_hand(tiny_dir, tmp_path, tangram_ids, images):
    g1, g2 = games(tangram_ids)
    examples = [
        Example("s1", 1, g1, "select B", 1, 0.5),
        Example("s2", 2, g2, "deselect A select C E", 1, 0.2),
    ]
    config = tiny(SUPConfig, effective_batch_size=2)
    policy = load(tiny_dir)
    attach_adapter(policy, config, None)
    expected = []
    for e in examples:
        lp, mean = hand_logps(policy, images, e.game, e.action)
        assert len(lp) >= 3
        expected.append(0.9 * (-sum(lp) / len(lp)) + 0.1 * smoothing(mean))
    loss, _ = one_step(policy, images, config, examples, tmp_path / "sup")
    assert loss == pytest.approx(sum(expected) / 2, rel=TOL)


def test_rl_step_by_hand(tiny_dir, tmp_path, tangram_ids, images):
    """A positive, a negative with a small stored probability (floored at 0.01) and a neutral
    example that the paper drops."""
    g1, g2 = games(tangram_ids)
    examples = [
        Example("r1", 1, g1, "select B D", 1, 0.5),
        Example("r2", 2, g2, "deselect A", -1, 0.001),
        Example("r3", 1, g1, "select C", 0, 0.3),
    ]
    config = tiny(RLConfig, effective_batch_size=3)
    policy = load(tiny_dir)
    attach_adapter(policy, config, None)
    expected = []
    for e in examples[:2]:
        lp, mean = hand_logps(policy, images, e.game, e.action)
        assert len(lp) >= 3  # length normalisation matters
        r = {1: 1.0, -1: -0.1}[e.label]
        w = 1.0 if e.label == 1 else math.exp(sum(lp)) / max(e.prob, 0.01)
        expected.append(0.9 * (-w * r * sum(lp) / len(lp)) + 0.1 * abs(r) * smoothing(mean))
    # the per-token-mean weight would be far larger: the test can tell them apart
    lp2, _ = hand_logps(policy, images, g2, "deselect A")
    assert math.exp(sum(lp2) / len(lp2)) / 0.01 > 100 * math.exp(sum(lp2)) / 0.01
    loss, info = one_step(policy, images, config, examples, tmp_path / "rl")
    assert (info["used"], info["dropped_neutral"]) == (2, 1)
    assert loss == pytest.approx(sum(expected) / 2, rel=TOL)


def test_kto_step_by_hand(tiny_dir, tmp_path, tangram_ids, images):
    """Desirable and undesirable examples, π_ref floored at 0.01, and z from the stored table of
    mismatched single clicks over the whole effective batch (two micro-batches of one): the
    table makes the policy's log-ratios on a′ 3 and −1 nats, so z = 1."""
    g1, g2 = games(tangram_ids)
    # Asymmetric on purpose: with equal log-ratios a swap of desirable and undesirable, or a
    # change of z, moves the two losses by the same amount in opposite directions.
    examples = [
        Example("k1", 1, g1, "select B", 1, 0.9),
        Example("k2", 2, g2, "select C", -1, 0.002),  # floored at 0.01
    ]
    config = tiny(KTOConfig, effective_batch_size=2)
    policy = load(tiny_dir)
    attach_adapter(policy, config, None)  # dropout 0 (a saved adapter brings its own 0.1)
    out = tmp_path / "kto"
    (out / "state").mkdir(parents=True)
    table, gaps = {}, []
    for e, gap in zip(examples, (3.0, -1.0)):  # z per micro-batch would be 3 and 0, not 1
        alt = mismatched_single_click(e)
        alt_lp, _ = hand_logps(policy, images, e.game, alt)
        table[e.key()] = sum(alt_lp) - gap
        gaps.append(sum(alt_lp) - table[e.key()])
    stored = {"fingerprint": {}, "table": table}
    (out / "state" / "kto_reference.json").write_text(json.dumps(stored))
    z = max(0.0, sum(gaps) / len(gaps))
    assert z == pytest.approx(1.0)
    parts = [hand_logps(policy, images, e.game, e.action) for e in examples]

    def by_hand(z: float, desirable: int = 1) -> float:
        total = 0.0
        for e, (lp, mean) in zip(examples, parts):
            ratio = sum(lp) - math.log(max(e.prob, 0.01))
            sig = 1 / (1 + math.exp(-0.5 * (ratio - z)))  # σ(β (r − z))
            kto = 1 - sig if e.label == desirable else sig  # undesirable: 1 − σ(β (z − r))
            total += 0.99 * kto + 0.01 * smoothing(mean)
        return total / len(examples)

    expected = by_hand(z)
    # the batch can tell the mistakes apart from the right loss
    assert abs(by_hand(0.0) - expected) > 20 * TOL and abs(by_hand(z, -1) - expected) > 20 * TOL
    loss, _ = one_step(policy, images, config, examples, out)
    assert loss == pytest.approx(expected, rel=TOL)


def test_mismatched_single_click():
    g = PromptGame(list("abcdefghij"), [PromptTurn("x", ["a"], None)])
    assert mismatched_single_click(Example("g", 1, g, "select C")) == "deselect A"
    assert mismatched_single_click(Example("g", 1, g, "deselect A")) == "select B"
    g0 = PromptGame(list("abcdefghij"), [PromptTurn("x", [], None)])
    assert mismatched_single_click(Example("g", 1, g0, "select A")) == "select B"
    assert mismatched_single_click(Example("g", 1, g0, "select A B")) == "select A"


# ---------------------------------------------------------------- the seed task


def test_good_move_follows_the_paper_rule():
    t = ["a", "b"]  # targets; c, d are not
    cases = [
        ([], ["a"], True),  # selects a target
        (["c"], [], True),  # deselects a non-target
        (["c"], ["a"], True),  # both parts good
        ([], ["c"], False),  # selects a non-target
        (["a"], [], False),  # deselects a target
        ([], ["a", "c"], False),  # mixed selection
        (["c"], ["c", "a", "d"], False),
        (["a"], ["a"], False),  # changed nothing
    ]
    for before, after, good in cases:
        assert good_move(before, after, t) is good, (before, after)


def test_seed_turns_of_a_recorded_game(recorded_games, tmp_path):
    from app.db.gamelog import load_state

    url = f"sqlite+aiosqlite:///{tmp_path / 'seed.sqlite3'}"
    game = recorded_games[0]
    make_database(url, [dict(game, _kind="human")])

    async def state(db):
        async with db.session() as s:
            return await load_state(s, game["game_id"][:32])

    st = run_db(url, state)
    examples = seed_turns(st, seed=1)
    targets = set(st.config.targets)
    letter = {t: chr(65 + i) for i, t in enumerate(st.config.listener_order)}
    by_turn = {r.turn: r for r in st.turns}
    kinds = {e.source for e in examples}
    assert SEED in kinds and SEED_CLEAR in kinds
    for e in examples:
        assert e.label == 1 and e.prob is None and e.is_seed and e.game.turns[-1].action is None
        selected = e.game.current_selected_letters()
        deselect, select = parse_action(e.action)
        after = apply_action(selected, e.action)
        if e.source == SEED:
            r = by_turn[e.turn]
            assert good_move(r.selection_before, r.selection_after, targets)
            assert sorted(after) == sorted(letter[t] for t in r.selection_after)
        else:
            r = by_turn[e.turn - 1]  # built after this turn, from the selection it left
            assert select == [] and selected == sorted(letter[t] for t in r.selection_after)
            if e.source == SEED_CLEAR:
                assert after == []
            else:
                newly = set(r.selection_after) - set(r.selection_before)
                assert newly - targets and deselect == sorted(letter[t] for t in newly)
            assert e.game.turns[-2].action is not None  # the real turn precedes it
    assert len({e.key() for e in examples}) == len(examples)
    done = [r for r in st.turns if r.utterance is not None and r.selection_after is not None]
    counts = {k: sum(e.source == k for e in examples) for k in (SEED, SEED_UNDO, SEED_CLEAR)}
    assert counts == {
        SEED: sum(good_move(r.selection_before, r.selection_after, targets) for r in done),
        SEED_UNDO: sum(
            bool(set(r.selection_after) - set(r.selection_before) - targets) for r in done
        ),
        SEED_CLEAR: sum(bool(r.selection_after) for r in done),
    }
    assert counts[SEED_UNDO] > 0 and counts[SEED] > 0
    assert not [e for e in seed_turns(st, seed=1, synthetic=False) if e.source != SEED]


def _round_db(tmp_path, recorded_games, tiny_dir) -> str:
    from tests.test_learning_datasets import _label_and_log

    url = f"sqlite+aiosqlite:///{tmp_path / 'paper.sqlite3'}"
    model_games = [dict(g, _columns={"system": "B-SUP", "round": 0}) for g in recorded_games[:2]]
    human = [dict(g, _kind="human", _columns={"round": 0}) for g in recorded_games[2:8]]
    make_database(url, model_games + human)
    run_db(url, lambda db: _label_and_log(db, load(tiny_dir).processor))
    return url


def test_every_round_mixes_in_the_seed_task(tiny_dir, tmp_path, recorded_games):
    from learning.datasets import load_seed_examples
    from learning.train import load_training_data

    url = _round_db(tmp_path, recorded_games, tiny_dir)
    paper = load_config("B-SUP")
    ex, stats, held, _ = run_db(url, lambda db: load_training_data(db, "B-SUP", 1, paper))
    seed, _ = run_db(url, lambda db: load_seed_examples(db, 1, True, 42, 0.5))
    assert seed and sorted(e.key() for e in ex if e.is_seed) == sorted(e.key() for e in seed)
    assert any(not e.is_seed for e in ex) and stats["seed_task"]["count"] == len(seed)
    assert held and not {e.game_id for e in held} & {e.game_id for e in seed}
    kept, info = select_examples(ex, paper)
    assert info["seed"] == len(seed) and all(e.action != "nothing" for e in kept)
    # the option: no seed task, and every human–human game is held out
    proj = load_config("B-SUP", overrides={"seed_task": False})
    ex2, _, held2, _ = run_db(url, lambda db: load_training_data(db, "B-SUP", 1, proj))
    assert not any(e.is_seed for e in ex2) and len(held2) > len(held)


# ---------------------------------------------------------------- the command


def _cli(url, tiny_dir, kilogram_dir, out, *extra):
    from typer.testing import CliRunner

    from app.cli import app

    args = [
        "train", "--system", "B-SUP", "--base", str(tiny_dir), "--database-url", url,
        "--tangrams", str(kilogram_dir), "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip
    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_train_command_paper_manifest(tiny_dir, tmp_path, recorded_games, kilogram_dir):
    url = _round_db(tmp_path, recorded_games, tiny_dir)
    config = tmp_path / "tiny.toml"
    config.write_text("epochs = 1\nmicro_batch_size = 8\nmax_heldout_turns = 2\n")
    out = tmp_path / "B-SUP-r1"
    result = _cli(url, tiny_dir, kilogram_dir, out, "--round", "0", "--config", str(config))
    assert result.exit_code == 0, result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["profile"] == "paper" and m["pi0"] is False
    assert set(m["deviations_from_paper"]) == {"epochs", "micro_batch_size", "max_heldout_turns"}
    s = m["settings"]
    assert s["seed_task"] and s["seed_examples_used"] > 0 and s["drop_empty_turns"]
    assert s["lora"]["targets"] == PAPER_LORA_TARGETS and s["lora"]["init"] == "gaussian"
    assert s["optimizer_requested"] == "paged_adamw_8bit"
    assert s["optimizer_ran"].startswith("adamw (paged_adamw_8bit unavailable")  # CPU
    assert m["optimizer"] == s["optimizer_ran"] and s["weight_decay"] == 0.01
    assert s["loss"].startswith("SUP: 0.9·NLL/|a| + 0.1·S")
    assert m["data"]["train"]["seed_task"]["count"] >= s["seed_examples_used"]
    # LoRA sits on the connector and the perceiver too
    adapter_cfg = json.loads((out / "adapter_config.json").read_text())
    assert adapter_cfg["target_modules"] == PAPER_LORA_TARGETS
    # the project profile, one option away
    out2 = tmp_path / "project"
    result = _cli(
        url, tiny_dir, kilogram_dir, out2, "--round", "0", "--config", str(config),
        "--profile", "project",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    m2 = json.loads((out2 / "manifest.json").read_text())
    assert m2["profile"] == "project" and m2["settings"]["seed_examples_used"] == 0
    assert "seed_task" in m2["deviations_from_paper"] and m2["optimizer"] == "adamw"


def test_pi0_from_imported_human_games(tiny_dir, tmp_path, recorded_games, kilogram_dir):
    import asyncio

    from app.db.database import Database
    from app.importing import import_files

    url = f"sqlite+aiosqlite:///{tmp_path / 'pi0.sqlite3'}"
    path = tmp_path / "hh.jsonl"
    games = [{**g, "policy": "human", "listener_kind": "human"} for g in recorded_games[:6]]
    path.write_text("".join(json.dumps(g) + "\n" for g in games))

    async def imp():
        db = Database(url)
        await db.migrate()
        try:
            return await import_files(db, [path], actor="test")
        finally:
            await db.close()

    report = asyncio.run(imp())
    assert report.imported == 6 and not report.bad
    config = tmp_path / "tiny.toml"
    config.write_text("epochs = 1\nmicro_batch_size = 8\nmax_heldout_turns = 2\n")
    out = tmp_path / "pi0"
    result = _cli(url, tiny_dir, kilogram_dir, out, "--pi0", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "--round 0 --adapter" in result.output
    m = json.loads((out / "manifest.json").read_text())
    sel = m["data"]["train"]["selection"]
    assert m["pi0"] is True and m["restart"] is True
    assert sel["used"] == sel["seed"] > 0
    # without human–human games there is no π0, and the error says what to do
    empty = f"sqlite+aiosqlite:///{tmp_path / 'none.sqlite3'}"
    make_database(empty, [])
    result = _cli(empty, tiny_dir, kilogram_dir, tmp_path / "x", "--pi0")
    assert result.exit_code == 2 and "human–human games" in result.output


# ---------------------------------------------------------------- LoRA targets and serving


def test_paper_lora_reaches_the_connector_and_adapters_with_other_targets_serve_together(
    tiny_dir, tmp_path, tangram_ids, images
):
    from peft.utils import get_peft_model_state_dict

    from policy_worker.decoding import DecodeRequest, decode_actions
    from policy_worker.model import load_policy

    dirs = {}
    for profile in ("paper", "project"):
        config = load_config("B-SUP", overrides={"profile": profile})
        policy = load(tiny_dir)
        model = attach_adapter(policy, config, None)
        names = list(get_peft_model_state_dict(model))
        on_connector = any("modality_projection" in n for n in names) and any(
            "perceiver_resampler" in n for n in names
        )
        assert on_connector is (profile == "paper")
        assert any("text_model" in n for n in names)
        with torch.no_grad():  # a non-zero B, so each adapter changes the policy
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(n)))
        dirs[profile] = tmp_path / profile
        model.save_pretrained(str(dirs[profile]))
    game = PromptGame(tangram_ids, [PromptTurn("choose the bird", [], None)])

    def request(adapter, seed):
        return DecodeRequest.for_game(game, images(tangram_ids), adapter=adapter, seed=seed)

    served = load_policy(tiny_dir, adapters=dirs, dtype="float32", device="cpu")
    order = [("paper", 1), ("project", 1), ("paper", 2)]
    mixed = decode_actions(served, [request(a, s) for a, s in order])
    alone = [decode_actions(served, [request(a, s)])[0] for a, s in order]
    for m_, a_ in zip(mixed, alone):
        assert m_.action == a_.action
        assert m_.prob_constrained == pytest.approx(a_.prob_constrained, rel=1e-4)
    assert mixed[0].prob_unconstrained != pytest.approx(mixed[1].prob_unconstrained, rel=1e-3)
