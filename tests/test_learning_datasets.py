"""D≤ρ from the database: prompts rebuilt as the worker built them, labels, stored probabilities,
round filters, held-out human turns, letter shuffling, and the collator's tensors."""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from app.db.gamelog import load_state  # noqa: E402
from app.db.models import FeedbackLabel, ListenerRequest  # noqa: E402
from learning.datasets import (  # noqa: E402
    ActionCollator,
    ActionDataset,
    Example,
    augment,
    data_hash,
    load_examples,
    load_heldout,
)
from policy_worker.gamedata import prompt_game  # noqa: E402
from policy_worker.prompt import apply_action, build_chat, letter_map, render_prompt  # noqa: E402
from tests.test_learning_retrospect import make_database, run_db  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from policy_worker.model import load_policy
    from policy_worker.tiny import build_tiny_idefics2

    return load_policy(
        build_tiny_idefics2(tmp_path_factory.mktemp("tiny_data")), dtype="float32", device="cpu"
    )


def prob_of(game_id: str, turn: int) -> float:
    return round(0.01 + (sum(map(ord, game_id)) + 7 * turn) % 90 / 100, 4)


async def _label_and_log(db, renderer, tamper: tuple[str, int] | None = None) -> None:
    """Give every game's actions a binary label, and model games the worker's request rows."""
    from sqlalchemy import select

    from app.db.models import Game

    async with db.session() as s, s.begin():
        games = (await s.execute(select(Game))).scalars().all()
        for g in games:
            state = await load_state(s, g.id)
            for record in state.turns:
                if record.selection_after is None:
                    continue
                s.add(
                    FeedbackLabel(
                        game_id=g.id,
                        turn=record.turn,
                        decoder="binary",
                        decoder_version="v1",
                        label=1 if record.turn % 2 else -1,
                        heuristic=None,
                        scores={},
                        created_at=1.0,
                    )
                )
                if g.listener_kind != "model":
                    continue
                game = prompt_game(state, record.turn)
                full = prompt_game(state, record.turn, include_action=True)
                model_input = render_prompt(renderer, build_chat(game))
                if tamper == (g.id, record.turn):
                    model_input += " (changed)"
                s.add(
                    ListenerRequest(
                        game_id=g.id,
                        turn=record.turn,
                        system=g.system or "x",
                        checkpoint="ck",
                        status="applied",
                        created_at=1.0,
                        deadline=2.0,
                        action=full.turns[-1].action,
                        prob_action=prob_of(g.id, record.turn),
                        prob_unconstrained=prob_of(g.id, record.turn) / 10,
                        model_input=model_input,
                    )
                )


@pytest.fixture
def database(tmp_path, recorded_games, tiny_policy):
    """Rounds 0, 1, 2 and NULL of B-SUP (model listener), and two human–human games."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'd.sqlite3'}"
    games = []
    for i, g in enumerate(recorded_games[:8]):
        rnd = [0, 1, 2, None][i % 4]
        games.append(dict(g, _columns={"system": "B-SUP", "round": rnd}))
    games.append(dict(recorded_games[8], _columns={"system": "B-RL", "round": 0}))
    for g in recorded_games[9:11]:
        games.append(dict(g, _kind="human", _columns={"round": 0}))
    make_database(url, games)
    return url, games


def _turns(games, pred) -> int:
    return sum(g["num_turns"] for g in games if pred(g))


def test_d_le_rho_rebuilds_the_worker_prompts_and_reads_labels_and_probs(database, tiny_policy):
    url, games = database
    run_db(url, lambda db: _label_and_log(db, tiny_policy.processor))
    examples, stats = run_db(
        url,
        lambda db: load_examples(
            db, "binary", 1, systems=["B-SUP"], renderer=tiny_policy.processor, strict=True
        ),
    )

    # rounds 0 and 1 and NULL of B-SUP; not round 2, not B-RL, not the human games
    def want(g):
        c = g.get("_columns", {})
        return (
            g.get("_kind", "model") == "model"
            and c.get("system") == "B-SUP"
            and c.get("round") in (0, 1, None)
        )

    assert stats.count == len(examples) == _turns(games, want)
    assert stats.model_inputs_checked == stats.count and stats.model_input_mismatches == 0
    assert stats.with_prob == stats.count and stats.rounds == [None, 0, 1]
    assert stats.sha256 == data_hash(examples)
    for e in examples:
        assert e.prob == prob_of(e.game_id, e.turn)
        assert e.label == (1 if e.turn % 2 else -1)
        assert e.game.turns[-1].action is None and len(e.game.turns) == e.turn
        assert e.action == prompt_game_action(url, e)
    unconstrained, _ = run_db(
        url, lambda db: load_examples(db, "binary", 1, systems=["B-SUP"], prob="unconstrained")
    )
    assert [e.prob for e in unconstrained] == pytest.approx([e.prob / 10 for e in examples])
    # re-scored probabilities (`multiref rescore`) replace the full-vocabulary ones
    rescored = {(e.game_id, e.turn): 0.123 for e in examples[:2]}
    full, _ = run_db(
        url,
        lambda db: load_examples(
            db, "binary", 1, systems=["B-SUP"], prob="unconstrained", deployed_probs=rescored
        ),
    )
    assert [e.prob for e in full] == pytest.approx(
        [0.123, 0.123] + [e.prob / 10 for e in examples[2:]]
    )
    kept, _ = run_db(
        url,
        lambda db: load_examples(db, "binary", 1, systems=["B-SUP"], deployed_probs=rescored),
    )
    assert [e.prob for e in kept] == [e.prob for e in examples]  # constrained: not replaced
    # without unrounded games, and for all systems
    only, _ = run_db(url, lambda db: load_examples(db, "binary", 0, include_unrounded=False))
    assert {e.round for e in only} == {0} and {e.system for e in only} == {"B-SUP", "B-RL"}
    assert not run_db(url, lambda db: load_examples(db, "ternary", 5))[0]


def prompt_game_action(url: str, e: Example) -> str:
    async def run(db):
        async with db.session() as s:
            state = await load_state(s, e.game_id)
        return prompt_game(state, e.turn, include_action=True).turns[-1].action

    return run_db(url, run)


def test_a_prompt_that_differs_from_the_logged_model_input_is_caught(database, tiny_policy):
    url, games = database
    gid = games[0]["game_id"][:32]
    run_db(url, lambda db: _label_and_log(db, tiny_policy.processor, tamper=(gid, 2)))
    _, stats = run_db(
        url, lambda db: load_examples(db, "binary", 2, renderer=tiny_policy.processor)
    )
    assert stats.model_input_mismatches == 1
    with pytest.raises(ValueError, match="model_input"):
        run_db(
            url,
            lambda db: load_examples(db, "binary", 2, renderer=tiny_policy.processor, strict=True),
        )


def test_newest_label_wins_unless_a_version_is_named(database, tiny_policy):
    url, games = database
    run_db(url, lambda db: _label_and_log(db, tiny_policy.processor))
    gid = games[0]["game_id"][:32]

    async def relabel(db):
        async with db.session() as s, s.begin():
            s.add(
                FeedbackLabel(
                    game_id=gid,
                    turn=1,
                    decoder="binary",
                    decoder_version="v2",
                    label=-1,
                    scores={},
                    created_at=5.0,
                )
            )

    run_db(url, relabel)
    newest, stats = run_db(url, lambda db: load_examples(db, "binary", 0, systems=["B-SUP"]))
    assert next(e for e in newest if (e.game_id, e.turn) == (gid, 1)).label == -1
    assert stats.decoder_versions == ["v1", "v2"]
    v1, _ = run_db(
        url, lambda db: load_examples(db, "binary", 0, systems=["B-SUP"], decoder_version="v1")
    )
    assert next(e for e in v1 if (e.game_id, e.turn) == (gid, 1)).label == 1


def test_heldout_is_the_human_human_turns(database):
    url, games = database
    heldout, stats = run_db(url, lambda db: load_heldout(db, 0))
    humans = [g for g in games if g.get("_kind") == "human"]
    assert stats.count == sum(g["num_turns"] for g in humans)
    assert all(e.listener_kind == "human" and e.prob is None and e.label is None for e in heldout)
    first = humans[0]
    letters = letter_map(first["listener_order"])
    e = next(x for x in heldout if x.game_id == first["game_id"][:32] and x.turn == 1)
    assert e.action == "select " + " ".join(
        sorted(letters[t] for t in first["selection_after_turn"][0])
    )
    few, _ = run_db(url, lambda db: load_heldout(db, 0, limit=5, seed=3))
    again, _ = run_db(url, lambda db: load_heldout(db, 0, limit=5, seed=3))
    assert len(few) == 5 and [x.key() for x in few] == [x.key() for x in again]


def test_letter_shuffling_relabels_consistently(recorded_games, tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 's.sqlite3'}"
    make_database(url, recorded_games[:1])

    async def state(db):
        async with db.session() as s:
            return await load_state(s, recorded_games[0]["game_id"][:32])

    st = run_db(url, state)
    turn = 3
    full = prompt_game(st, turn, include_action=True)
    game = prompt_game(st, turn)
    example = Example("g", turn, game, full.turns[-1].action, 1, 0.3)
    assert augment(example, None).game is game  # evaluation: unchanged
    sample = augment(example, random.Random(5))
    assert sample.game.listener_order != game.listener_order
    assert sorted(sample.game.listener_order) == sorted(game.listener_order)

    # the shuffled action applied to the shuffled state selects the same tangrams
    def tangrams(g, letters):
        order = g.listener_order
        return {order["ABCDEFGHIJ".index(c)] for c in letters}

    after = apply_action(sample.game.current_selected_letters(), sample.action)
    original = apply_action(game.current_selected_letters(), example.action)
    assert tangrams(sample.game, after) == tangrams(game, original)
    # past actions are rewritten too: replaying them reproduces each turn's selection
    for t_old, t_new in zip(game.turns[:-1], sample.game.turns[:-1]):
        assert tangrams(
            sample.game,
            apply_action(
                [letter_map(sample.game.listener_order)[x] for x in t_new.selection_before],
                t_new.action,
            ),
        ) == tangrams(
            game,
            apply_action(
                [letter_map(game.listener_order)[x] for x in t_old.selection_before], t_old.action
            ),
        )
    ds = ActionDataset([example], shuffle=True, seed=1)
    assert ds.sample(0, 1) == ds.sample(0, 1) and ds.sample(0, 1).game != ds.sample(0, 2).game
    assert ActionDataset([example], shuffle=False, seed=1).sample(0, 1).game is game


def test_collator_matches_the_processor_and_the_decoding_tokens(tiny_policy, kilogram_dir):
    from policy_worker.decoding import action_token_ids, action_trie
    from policy_worker.gamedata import TangramImages
    from policy_worker.prompt import PromptGame, PromptTurn

    ids = sorted(p.stem for p in Path(kilogram_dir).glob("*.svg"))[:10]
    images = TangramImages(kilogram_dir).images
    games = [
        PromptGame(
            ids, [PromptTurn("choose the bird", [], "select A"), PromptTurn("no", [ids[0]], None)]
        ),
        PromptGame(ids[::-1], [PromptTurn("pick the boat", [], None)]),
    ]
    actions = ["deselect A select C", "select B J"]
    samples = [
        augment(Example(f"g{i}", 1, g, a, 1, 0.5), None)
        for i, (g, a) in enumerate(zip(games, actions))
    ]
    batch = ActionCollator(tiny_policy, images)(samples)
    ref = tiny_policy.processor(
        text=[render_prompt(tiny_policy.processor, build_chat(g)) for g in games],
        images=[images(list(g.listener_order)) for g in games],
        padding=True,
        return_tensors="pt",
    )
    width = ref["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][:, :width], ref["input_ids"])
    assert torch.equal(batch["pixel_values"], ref["pixel_values"])
    assert torch.equal(batch["pixel_attention_mask"], ref["pixel_attention_mask"])
    for b, (g, a) in enumerate(zip(games, actions)):
        tokens = action_token_ids(tiny_policy, [a])[0]
        n = len(tokens)
        assert (
            batch["targets"][b, :n].tolist() == list(tokens) and batch["target_mask"][b].sum() == n
        )
        assert batch["input_ids"][b, width : width + n].tolist() == list(tokens)
        trie = action_trie(tiny_policy, g.current_selected_letters(), list("ABCDEFGHIJ"))
        for t, allowed in enumerate(trie.step_allowed[a]):
            got = batch["allowed"][b, t][batch["allowed_mask"][b, t]].tolist()
            assert got == list(allowed)
    assert batch["deployed_probs"].tolist() == [0.5, 0.5]
    assert batch["position_ids"][0, -1] == batch["attention_mask"][0].sum() - 1
