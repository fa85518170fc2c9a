"""Training (MULTIREF.md §5) on a tiny Idefics2: configs, the restart-vs-continue rule, KTO's
reference path, a small synthetic task that training must learn, resumption, and an adapter
with a manifest that ``multiref deploy`` accepts."""

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

from learning import losses  # noqa: E402
from learning.datasets import ActionCollator, Example, augment  # noqa: E402
from learning.train import (  # noqa: E402
    KTOConfig,
    RLConfig,
    SUPConfig,
    attach_adapter,
    batch_losses,
    fit,
    load_config,
    parse_variant,
    policy_token_logps,
    previous_adapter,
    select_examples,
    starts_fresh,
)
from policy_worker.prompt import PromptGame, PromptTurn  # noqa: E402
from tests.test_learning_retrospect import make_database, run_db  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# The tiny model's final norm and output layer are random and frozen, which caps how far LoRA on
# the attention/MLP projections can move its logits; the synthetic tests also adapt lm_head.
TINY_TARGETS = (
    r".*(text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head)$"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from policy_worker.tiny import build_tiny_idefics2

    return build_tiny_idefics2(tmp_path_factory.mktemp("tiny_train"), seed=0)


def load(tiny_dir):
    from policy_worker.model import load_policy

    return load_policy(tiny_dir, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def tangram_ids(kilogram_dir) -> list[str]:
    return sorted(p.stem for p in Path(kilogram_dir).glob("*.svg"))[:10]


@pytest.fixture(scope="module")
def images(kilogram_dir):
    from policy_worker.gamedata import TangramImages

    return TangramImages(kilogram_dir).images


# ---------------------------------------------------------------- configs


def test_variants_and_method_defaults():
    assert parse_variant("B-SUP") == ("binary", "sup")
    assert parse_variant("T-KTO") == ("ternary", "kto")
    assert parse_variant("b-rl-v2") == ("binary", "rl")
    with pytest.raises(ValueError):
        parse_variant("CONTROL")
    sup, rl, kto = load_config("B-SUP"), load_config("T-RL"), load_config("B-KTO")
    assert isinstance(sup, SUPConfig) and sup.label_smoothing == 0.1 and sup.decoder == "binary"
    assert (sup.lora_r, sup.lora_alpha, sup.lora_dropout) == (8, 8, 0.1)
    assert (sup.learning_rate, sup.lr_scheduler, sup.warmup_steps, sup.epochs) == (
        1e-4,
        "cosine",
        10,
        20,
    )
    assert (sup.effective_batch_size, sup.seed, sup.dtype) == (64, 42, "auto")
    assert (
        isinstance(rl, RLConfig)
        and rl.rewards == {1: 1.0, 0: 0.0, -1: -0.1}
        and rl.weight_floor == 0.01
    )
    assert rl.decoder == "ternary"
    assert isinstance(kto, KTOConfig) and (kto.beta, kto.learning_rate, kto.optimizer) == (
        0.5,
        1e-5,
        "rmsprop",
    )


def test_config_files_override_defaults(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        "epochs = 3\nlearning_rate = 0.002\n[kto]\nbeta = 0.3\n[sup]\nlabel_smoothing = 0.0\n"
    )
    kto = load_config("B-KTO", toml)
    assert (kto.epochs, kto.learning_rate, kto.beta) == (3, 0.002, 0.3)
    sup = load_config("T-SUP", toml, {"epochs": 1})
    assert (sup.epochs, sup.label_smoothing) == (1, 0.0)
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"variant": "B-RL", "reward_negative": -0.5}))
    rl = load_config("MY-SYSTEM", js)
    assert isinstance(rl, RLConfig) and rl.reward_negative == -0.5 and rl.variant == "B-RL"
    bad = tmp_path / "bad.toml"
    bad.write_text("beta = 1\n")
    with pytest.raises(ValueError, match="unknown sup config keys"):
        load_config("B-SUP", bad)


def test_each_method_selects_its_examples():
    g = PromptGame(["a", "b"], [PromptTurn("x", [], None)])
    ex = [
        Example("g", i, g, "select A", label, prob)
        for i, (label, prob) in enumerate([(1, 0.5), (0, 0.5), (-1, 0.5), (1, None), (-1, None)])
    ]
    empty = Example("g", 9, g, "nothing", 1, 0.5)
    seed = Example("h", 1, g, "select B", 1, None, source="seed")
    project = {"profile": "project"}
    # the project profile: RL keeps neutral examples, empty turns stay, no seed task
    assert [e.turn for e in select_examples(ex, load_config("B-SUP", overrides=project))[0]] == [
        0,
        3,
    ]
    assert len(select_examples(ex, load_config("T-RL", overrides=project))[0]) == 5
    kept, info = select_examples(ex, load_config("T-KTO", overrides=project))
    assert [e.turn for e in kept] == [0, 2] and (info["available"], info["used"]) == (5, 2)
    assert [e.turn for e in select_examples([empty], load_config("B-SUP", overrides=project))[0]]
    # the paper profile: neutral RL examples and empty turns are dropped; seed examples stay
    kept, info = select_examples([*ex, empty, seed], load_config("T-RL"))
    assert [e.turn for e in kept] == [0, 2, 3, 4, 1]
    assert (info["dropped_neutral"], info["dropped_empty"], info["seed"]) == (1, 1, 1)
    assert [e.game_id for e in select_examples([empty, seed], load_config("B-KTO"))[0]] == ["h"]
    assert [e.turn for e in select_examples([*ex, empty], load_config("B-SUP"))[0]] == [0, 3]


# ---------------------------------------------------------------- restart vs continue


def test_restart_vs_continue_rule(tiny_dir, tmp_path):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from policy_worker.tiny import make_tiny_lora

    assert starts_fresh(load_config("B-SUP")) and starts_fresh(load_config("T-RL"))
    assert not starts_fresh(load_config("B-KTO"))
    assert starts_fresh(load_config("B-KTO", overrides={"init": "fresh"}))
    # fresh: LoRA B starts at zero, so the model is exactly the base model
    policy = load(tiny_dir)
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        base_logits = policy.model(input_ids=ids).logits
    model = attach_adapter(policy, load_config("B-SUP"), None)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, base_logits)
    assert all(
        v.abs().sum() == 0 for k, v in get_peft_model_state_dict(model).items() if "lora_B" in k
    )
    # continue: the previous adapter's weights, trainable
    previous = make_tiny_lora(tiny_dir, tmp_path / "prev", seed=3)
    cont = attach_adapter(load(tiny_dir), load_config("B-KTO"), previous)
    saved = load_file(str(previous / "adapter_model.safetensors"))
    state = get_peft_model_state_dict(cont)
    assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)
    assert any(p.requires_grad for p in cont.parameters())


def test_kto_continues_from_the_systems_newest_checkpoint(tmp_path):
    from app.deploy import deploy_checkpoint

    url = f"sqlite+aiosqlite:///{tmp_path / 'ck.sqlite3'}"
    make_database(url, [])

    async def deploy(db):
        async with db.session() as s, s.begin():
            for rnd in (0, 1, 2):
                await deploy_checkpoint(s, "B-KTO", rnd, "base", f"/adapters/r{rnd}")
            await deploy_checkpoint(s, "B-SUP", 1, "base", "/adapters/sup")

    run_db(url, deploy)
    assert run_db(url, lambda db: previous_adapter(db, "B-KTO", 1)) == "/adapters/r1"
    assert run_db(url, lambda db: previous_adapter(db, "B-KTO", 5)) == "/adapters/r2"
    assert run_db(url, lambda db: previous_adapter(db, "T-KTO", 5)) is None


# ---------------------------------------------------------------- KTO's reference


def test_kto_reference_is_the_stored_deployed_probability(tiny_dir, tmp_path, tangram_ids, images):
    """Deploy an adapter, record π_deployed(a|x) as the worker does, then continue KTO from that
    adapter: before any update log π − log π_ref = 0 for every action, so every loss is 0.5.
    A fresh adapter (the SUP/RL rule) is the base model instead, and its ratio is not 0."""
    from policy_worker.decoding import DecodeRequest, decode_actions
    from policy_worker.model import load_policy
    from policy_worker.tiny import make_tiny_lora

    adapter = make_tiny_lora(tiny_dir, tmp_path / "deployed", seed=7)
    served = load_policy(tiny_dir, adapters={"B-KTO-r0": adapter}, dtype="float32", device="cpu")
    games = [
        PromptGame(
            tangram_ids,
            [
                PromptTurn("choose the bird", [], "select A"),
                PromptTurn("no", [tangram_ids[0]], None),
            ],
        ),
        PromptGame(tangram_ids, [PromptTurn("pick the person sitting", [], None)]),
        PromptGame(tangram_ids[::-1], [PromptTurn("the boat", [], None)]),
    ]
    requests = [
        DecodeRequest.for_game(g, images(list(g.listener_order)), adapter="B-KTO-r0", seed=i)
        for i, g in enumerate(games)
    ]
    results = decode_actions(served, requests)

    def examples(prob: str) -> list[Example]:
        return [
            Example(f"g{i}", len(g.turns), g, r.action, 1 if i % 2 == 0 else -1, getattr(r, prob))
            for i, (g, r) in enumerate(zip(games, results))
        ]

    def ratios(policy, config, prob):
        policy.model.eval()
        samples = [augment(e, None) for e in examples(prob)]
        batch = ActionCollator(policy, images)(samples)
        with torch.no_grad():
            width = batch["targets"].shape[1]
            from learning.datasets import model_inputs

            logits = policy.model(
                **model_inputs(batch, policy.device, policy.dtype), logits_to_keep=width + 1
            ).logits[:, :-1]
            seq = losses.sequence_logps(
                policy_token_logps(logits, batch, config, policy.device),
                batch["target_mask"],
                False,
            )
            kto = batch_losses(policy.model, batch, config, policy.device, policy.dtype, 0.0)
        return seq - torch.log(batch["deployed_probs"].float()), kto

    # the project option: π over the grammar's tokens vs the stored constrained probability
    project = load_config("B-KTO", overrides={"profile": "project"})
    trained = load(tiny_dir)
    attach_adapter(trained, project, adapter)  # KTO: continue from the deployed adapter
    r, kto = ratios(trained, project, "prob_constrained")
    assert r.abs().max().item() < 1e-4
    assert kto.tolist() == pytest.approx([0.5] * 3, abs=1e-4)
    # the paper: full-vocabulary π vs the full-vocabulary deployed probability
    paper = load_config("B-KTO", overrides={"reference_floor": 0.0})  # tiny model: p < 0.01
    r, kto = ratios(trained, paper, "prob_unconstrained")
    assert r.abs().max().item() < 1e-4
    assert all(0.99 * 0.5 < k for k in kto.tolist())  # + 0.01 · the smoothing term (> 0)
    fresh = load(tiny_dir)
    attach_adapter(fresh, load_config("B-SUP"), None)
    r_fresh, _ = ratios(fresh, project, "prob_constrained")
    assert r_fresh.abs().max().item() > 1e-2


# ---------------------------------------------------------------- learning a small task


TASK = [
    ("choose the bird with open wings", "select B"),
    ("pick the boat with a tall sail", "select G"),
]


def synthetic(tangram_ids, n: int, split: str) -> list[Example]:
    return [
        Example(
            f"{split}{i}",
            1,
            PromptGame(tangram_ids, [PromptTurn(TASK[i % 2][0], [], None)]),
            TASK[i % 2][1],
            1,
            0.5,
        )
        for i in range(n)
    ]


def tiny_config(**kw) -> SUPConfig:
    values = dict(
        variant="B-SUP",
        epochs=6,
        learning_rate=1e-2,
        warmup_steps=0,
        lr_scheduler="constant",
        effective_batch_size=2,
        micro_batch_size=2,
        shuffle_letters=False,
        lora_targets=TINY_TARGETS,
        eval_batch_size=8,
    )
    values.update(kw)
    return SUPConfig(**values)


def test_training_lowers_the_loss_and_raises_exact_match(tiny_dir, tmp_path, tangram_ids, images):
    policy = load(tiny_dir)
    config = tiny_config(selection="greedy")  # the kept adapter reproduces greedy exact match
    attach_adapter(policy, config, None)
    result = fit(
        policy,
        config,
        synthetic(tangram_ids, 8, "t"),
        synthetic(tangram_ids, 4, "h"),
        images,
        tmp_path / "out",
    )
    first, last = result.metrics[1], result.metrics[-1]
    assert result.metrics[0].epoch == 0 and result.metrics[0].heldout_exact_match == 0.0
    assert last.loss < 0.6 * first.loss
    assert result.best_exact_match >= 0.5 > result.metrics[0].heldout_exact_match
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    # the kept adapter is the best epoch's: loading it reproduces that exact match
    from learning.train import exact_match
    from policy_worker.model import load_policy

    served = load_policy(
        tiny_dir, adapters={"best": tmp_path / "out"}, dtype="float32", device="cpu"
    )
    held = synthetic(tangram_ids, 4, "h")
    assert exact_match(served, held, images, adapter="best") == pytest.approx(
        result.best_exact_match
    )


def test_rl_and_kto_steps_run_and_move_the_policy(tiny_dir, tmp_path, tangram_ids, images):
    examples = [
        Example(e.game_id, e.turn, e.game, e.action, label, 0.3)
        for e, label in zip(synthetic(tangram_ids, 4, "r"), [1, -1, 0, -1])
    ]
    for config in (
        RLConfig(
            variant="B-RL",
            epochs=1,
            effective_batch_size=4,
            micro_batch_size=2,
            warmup_steps=0,
            learning_rate=1e-2,
            lora_targets=TINY_TARGETS,
            eval_before_training=False,
        ),
        KTOConfig(
            variant="B-KTO",
            epochs=1,
            effective_batch_size=4,
            micro_batch_size=4,
            warmup_steps=0,
            learning_rate=1e-3,
            lora_targets=TINY_TARGETS,
            eval_before_training=False,
            init="fresh",
        ),
    ):
        policy = load(tiny_dir)
        model = attach_adapter(policy, config, None)
        before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        kept, _ = select_examples(examples, config)
        result = fit(policy, config, kept, [], images, tmp_path / config.method)
        assert math.isfinite(result.metrics[-1].loss)
        moved = sum(
            not torch.equal(before[k], v) for k, v in model.named_parameters() if v.requires_grad
        )
        assert moved > 0, config.method


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_dir, tmp_path, tangram_ids, images):
    from safetensors.torch import load_file

    train, held = synthetic(tangram_ids, 4, "t"), synthetic(tangram_ids, 2, "h")
    config = tiny_config(epochs=2, shuffle_letters=True, eval_before_training=False)
    fp = {"test": 1}

    def run(out, **kw):
        policy = load(tiny_dir)
        attach_adapter(policy, config, None)
        return fit(policy, config, train, held, images, out, fingerprint=fp, **kw)

    full = run(tmp_path / "full")
    part = run(tmp_path / "part", stop_after_epoch=1)
    assert [m.epoch for m in part.metrics] == [1]
    with pytest.raises(ValueError, match="cannot resume"):
        policy = load(tiny_dir)
        attach_adapter(policy, config, None)
        fit(
            policy,
            config,
            train,
            held,
            images,
            tmp_path / "part",
            resume=True,
            fingerprint={"other": 1},
        )
    resumed = run(tmp_path / "part", resume=True)
    assert resumed.resumed_from_epoch == 1 and [m.epoch for m in resumed.metrics] == [1, 2]
    a = load_file(str(tmp_path / "full" / "state" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "part" / "state" / "adapter.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [m.loss for m in full.metrics] == [m.loss for m in resumed.metrics]


# ---------------------------------------------------------------- the command, the manifest, deploy


def test_train_command_writes_an_adapter_that_deploy_accepts(
    tiny_dir, tmp_path, recorded_games, kilogram_dir
):
    from sqlalchemy import select
    from typer.testing import CliRunner

    from app.cli import app
    from app.db.models import Checkpoint
    from policy_worker.model import load_policy
    from tests.test_learning_datasets import _label_and_log

    url = f"sqlite+aiosqlite:///{tmp_path / 'train.sqlite3'}"
    games = [dict(g, _columns={"system": "B-SUP", "round": 0}) for g in recorded_games[:3]]
    games.append(dict(recorded_games[3], _kind="human", _columns={"round": 0}))
    make_database(url, games)
    run_db(url, lambda db: _label_and_log(db, load(tiny_dir).processor))
    config = tmp_path / "tiny.toml"
    config.write_text(
        "epochs = 2\nmicro_batch_size = 4\neffective_batch_size = 8\nmax_heldout_turns = 3\n"
        f"lora_targets = '{TINY_TARGETS}'\nlearning_rate = 0.005\nwarmup_steps = 1\n"
    )
    out = tmp_path / "B-SUP-r0"
    args = [
        "train",
        "--system",
        "B-SUP",
        "--round",
        "0",
        "--base",
        str(tiny_dir),
        "--database-url",
        url,
        "--tangrams",
        str(kilogram_dir),
        "--config",
        str(config),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    positives = sum((t + 1) % 2 for g in recorded_games[:3] for t in range(g["num_turns"]))
    assert (
        manifest["system"] == "B-SUP" and manifest["round"] == 0 and manifest["variant"] == "B-SUP"
    )
    assert (
        manifest["method"] == "sup" and manifest["restart"] is True and manifest["complete"] is True
    )
    assert manifest["data"]["train"]["selection"]["used"] == positives
    assert manifest["data"]["train"]["model_input_mismatches"] == 0
    assert (
        manifest["data"]["heldout"]["count"] == 3 and len(manifest["data"]["train"]["sha256"]) == 64
    )
    assert [m["epoch"] for m in manifest["metrics"]] == [0, 1, 2] and manifest["best_epoch"] in (
        1,
        2,
    )
    assert manifest["config"]["epochs"] == 2 and manifest["base"] == str(tiny_dir)
    assert manifest["dtype"] == "float32"

    deployed = CliRunner().invoke(
        app,
        [
            "deploy",
            "--system",
            "B-SUP",
            "--round",
            "1",
            "--adapter",
            str(out),
            "--base",
            str(tiny_dir),
            "--database-url",
            url,
        ],
        catch_exceptions=False,
    )
    assert deployed.exit_code == 0, deployed.output

    async def checkpoint(db):
        async with db.session() as s:
            return (
                await s.execute(select(Checkpoint).where(Checkpoint.system == "B-SUP"))
            ).scalar_one()

    ck = run_db(url, checkpoint)
    assert (
        ck.active
        and ck.round == 1
        and ck.manifest["data"]["train"]["sha256"] == manifest["data"]["train"]["sha256"]
    )
    served = load_policy(tiny_dir, adapters={ck.id: out}, dtype="float32", device="cpu")
    assert served.adapter_names() == [ck.id]
    # a second run with --resume on a finished output changes nothing and says so
    again = CliRunner().invoke(app, [*args, "--resume"], catch_exceptions=False)
    assert again.exit_code == 0 and "resumed after epoch 2" in again.output


def test_train_command_explains_missing_data(tiny_dir, tmp_path, kilogram_dir):
    from typer.testing import CliRunner

    from app.cli import app

    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}"
    make_database(url, [])
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--system",
            "T-KTO",
            "--round",
            "0",
            "--base",
            str(tiny_dir),
            "--database-url",
            url,
            "--tangrams",
            str(kilogram_dir),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2 and "--init-adapter" in result.output
