"""The losses' defaults, extremes and padding, against numbers worked out by hand.

Written for the gaps `make mutate` found in learning/losses.py: the paper's default
hyper-parameters (ε = 0.1 for SUP, floor 0.01, β = 0.5 for KTO, no smoothing for RL) were never
exercised (every test passed them explicitly), nor padded candidate lists inside a decoding
step, nor the ε = 1 end of the smoothing mix.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from learning import losses  # noqa: E402

LN = math.log


def test_sup_loss_defaults_to_label_smoothing_one_tenth():
    # one token with log p = ln 1/2 and mean_v log p_v = -2: 0.9 ln 2 + 0.1 * 2 = 0.823832
    lp, mean_lp, mask = torch.tensor([[LN(0.5)]]), torch.tensor([[-2.0]]), torch.tensor([[True]])
    assert losses.sup_loss(lp, mean_lp, mask).item() == pytest.approx(0.9 * LN(2) + 0.2, abs=1e-6)
    assert 0.9 * LN(2) + 0.2 == pytest.approx(0.823832, abs=1e-6)


def test_importance_weights_default_floor_is_one_hundredth():
    # π = 0.002 against a stored 0.001: floored at 0.01 -> 0.2 (not 2, not 0.002 / 1.01)
    w = losses.importance_weights(
        torch.log(torch.tensor([0.002])), torch.tensor([0.001]), torch.tensor([False])
    )
    assert w.item() == pytest.approx(0.2, rel=1e-5)


def test_rl_loss_is_plain_reinforce_by_default_and_without_a_smoothing_term():
    norm, rewards, w = torch.tensor([-2.0]), torch.tensor([1.0]), torch.tensor([1.5])
    smoothing = torch.tensor([7.0])
    # L = -w r log π = 3, whatever S is, unless ε is given
    assert losses.rl_loss(norm, rewards, w, smoothing).item() == pytest.approx(3.0)
    # an ε without a smoothing term is the plain form too (nothing to mix in)
    assert losses.rl_loss(norm, rewards, w, None, label_smoothing=0.5).item() == pytest.approx(3.0)


def test_full_smoothing_keeps_only_the_smoothing_term():
    # ε = 1: RL gives |r| S = 0.1 * 7 = 0.7; KTO's mix gives S = 7
    norm, rewards, w = torch.tensor([-2.0]), torch.tensor([-0.1]), torch.tensor([1.0])
    s = torch.tensor([7.0])
    assert losses.rl_loss(norm, rewards, w, s, label_smoothing=1.0).item() == pytest.approx(0.7)
    assert losses.smoothed(torch.tensor([3.0]), s, 1.0).item() == pytest.approx(7.0)
    assert losses.smoothed(torch.tensor([3.0]), s, 0.0).item() == pytest.approx(3.0)


def test_kto_loss_defaults_to_beta_one_half():
    # r = 1, z = 0, desirable: 1 - σ(0.5) = 0.377541
    got = losses.kto_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([True]), 0.0)
    assert got.item() == pytest.approx(1.0 - 1.0 / (1.0 + math.exp(-0.5)), abs=1e-6)
    assert got.item() == pytest.approx(0.377541, abs=1e-6)


def test_padded_candidates_inside_a_step_are_left_out_of_the_normaliser():
    # V = 4, logits ln(1, 2, 3, 4). Step 0: target 1 among {1, 3} plus one padded slot (id 2,
    # masked): ln 2/(2+4) = ln 1/3, the padding's 3 not counted. Step 1: target 0 alone: ln 1 = 0.
    z = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    logits = z.expand(1, 2, 4).clone()
    targets = torch.tensor([[1, 0]])
    allowed = torch.tensor([[[1, 3, 2], [0, 2, 2]]])
    allowed_mask = torch.tensor([[[True, True, False], [True, False, False]]])
    got = losses.constrained_token_logps(logits, targets, allowed, allowed_mask)
    assert got[0].tolist() == pytest.approx([LN(1 / 3), 0.0], abs=1e-6)
