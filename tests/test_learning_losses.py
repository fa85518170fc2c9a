"""Each loss of learning.losses against a number computed by hand (pure tensors, no model)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from learning import losses  # noqa: E402

LN = math.log


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_token_logps_and_sup_loss_by_hand():
    # V = 3. Step 0: uniform logits, target 0. Step 1: logits (ln 2, 0, 0) so p = (1/2, 1/4, 1/4),
    # target 0. Step 2 is padding (masked) with junk logits.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [LN(2), 0.0, 0.0], [9.0, -9.0, 3.0]]])
    targets = torch.tensor([[0, 0, 2]])
    mask = torch.tensor([[True, True, False]])
    lp, mean_lp = losses.token_logps(logits, targets)
    assert lp[0, :2].tolist() == pytest.approx([-LN(3), LN(0.5)], abs=1e-6)
    assert mean_lp[0, 1].item() == pytest.approx((LN(0.5) + 2 * LN(0.25)) / 3, abs=1e-6)
    # per token: (1-ε)(-log p(y)) + ε(-(1/V) Σ log p(v)), ε = 0.1
    t0 = 0.9 * LN(3) + 0.1 * LN(3)  # = ln 3 = 1.098612
    t1 = 0.9 * LN(2) + 0.1 * (LN(2) + 2 * LN(4)) / 3  # = 0.623832 + 0.115525 = 0.739357
    expected = (t0 + t1) / 2  # length-normalised over the 2 real tokens: 0.918985
    got = losses.sup_loss(lp, mean_lp, mask, label_smoothing=0.1)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.918985, abs=1e-6)
    # the per-token term is PyTorch's label-smoothed cross-entropy
    ce = torch.nn.functional.cross_entropy(logits[0, :2], targets[0, :2], label_smoothing=0.1)
    assert got.item() == pytest.approx(ce.item(), abs=1e-6)


def test_sup_loss_without_smoothing_is_the_mean_token_nll():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -7.0, -7.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    got = losses.sup_loss(lp, torch.zeros_like(lp), mask, label_smoothing=0.0)
    assert got.tolist() == pytest.approx([2.0, 0.5])


def test_constrained_token_logps_renormalise_over_allowed_tokens():
    # V = 4, logits ln(1, 2, 3, 4). Step 0: target 1 among allowed {1, 3}: log 2/(2+4) = ln 1/3.
    # Step 1: target 2 among {0, 2}: ln 3/4. Step 2: padding (nothing allowed) -> 0.
    z = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    logits = z.expand(1, 3, 4).clone()
    targets = torch.tensor([[1, 2, 0]])
    allowed = torch.tensor([[[1, 3], [0, 2], [0, 0]]])
    allowed_mask = torch.tensor([[[True, True], [True, True], [False, False]]])
    got = losses.constrained_token_logps(logits, targets, allowed, allowed_mask)
    assert got[0].tolist() == pytest.approx([LN(1 / 3), LN(3 / 4), 0.0], abs=1e-6)


def test_sequence_logps_sum_and_mean():
    lp = torch.tensor([[-1.0, -2.0, -9.0]])
    mask = torch.tensor([[True, True, False]])
    assert losses.sequence_logps(lp, mask, normalise=False).item() == pytest.approx(-3.0)
    assert losses.sequence_logps(lp, mask, normalise=True).item() == pytest.approx(-1.5)


def test_importance_weights_by_hand():
    # positive: w = 1 whatever the ratio; negative: π = 0.1, π_dep = 0.05 -> 2; neutral:
    # π = 0.002, π_dep = 0.001 floored at 0.01 -> 0.2; unknown π_dep (human listener) -> 1.
    seq = torch.log(torch.tensor([0.3, 0.1, 0.002, 0.4]))
    deployed = torch.tensor([0.9, 0.05, 0.001, math.nan])
    positive = torch.tensor([True, False, False, False])
    w = losses.importance_weights(seq, deployed, positive, floor=0.01)
    assert w.tolist() == pytest.approx([1.0, 2.0, 0.2, 1.0], rel=1e-5)


def test_rl_loss_by_hand_and_weight_is_detached():
    # labels +1, -1, 0 -> rewards 1, -0.1, 0; length-normalised log π -1, -2, -0.5;
    # w = 1, 2, 0.2. L = -w r log π = (-(1)(1)(-1), -(2)(-0.1)(-2), 0) = (1, -0.4, 0).
    labels = torch.tensor([1, -1, 0])
    rewards = losses.rewards_for(labels)
    assert rewards.tolist() == pytest.approx([1.0, -0.1, 0.0])
    norm = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    seq = torch.log(torch.tensor([0.3, 0.1, 0.002])).requires_grad_(True)
    w = losses.importance_weights(seq, torch.tensor([0.9, 0.05, 0.001]), labels == 1, 0.01)
    loss = losses.rl_loss(norm, rewards, w)
    assert loss.tolist() == pytest.approx([1.0, -0.4, 0.0], rel=1e-5)
    loss.sum().backward()
    assert seq.grad is None or torch.all(seq.grad == 0)  # the weight carries no gradient
    assert norm.grad.tolist() == pytest.approx([-1.0, 0.2, 0.0], rel=1e-5)  # dL/dlogπ = -w r


def test_kto_loss_by_hand():
    # r = log π − log π_ref = (0.5, −1.0); z = max(0, mean r) = 0; β = 0.5.
    # desirable: 1 − σ(0.5 · 0.5) = 1 − σ(0.25) = 0.437823
    # undesirable: 1 − σ(0.5 · (0 − (−1))) = 1 − σ(0.5) = 0.377541
    policy = torch.tensor([-1.0, -3.0])
    ref = torch.tensor([-1.5, -2.0])
    desirable = torch.tensor([True, False])
    z = losses.kto_reference_point(policy, ref)
    assert z.item() == 0.0
    got = losses.kto_loss(policy, ref, desirable, z, beta=0.5)
    assert got.tolist() == pytest.approx([0.437823, 0.377541], abs=1e-6)
    # with a reference point z = 0.2: 1 − σ(0.5·0.3) = 0.462570, 1 − σ(0.5·1.2) = 0.354344
    got = losses.kto_loss(policy, ref, desirable, 0.2, beta=0.5)
    assert got.tolist() == pytest.approx([0.462570, 0.354344], abs=1e-6)
    # class weights scale each side
    got = losses.kto_loss(
        policy, ref, desirable, 0.0, 0.5, desirable_weight=2.0, undesirable_weight=0.5
    )
    assert got.tolist() == pytest.approx([2 * 0.437823, 0.5 * 0.377541], abs=1e-6)


def test_kto_reference_point_is_the_clamped_detached_mean_log_ratio():
    policy = torch.tensor([0.0, 0.0], requires_grad=True)
    ref = torch.tensor([-1.0, -0.5])
    z = losses.kto_reference_point(policy, ref)
    assert z.item() == pytest.approx(0.75) and not z.requires_grad
    assert losses.kto_reference_point(torch.tensor([-2.0]), torch.tensor([-1.0])).item() == 0.0


def test_kto_at_the_reference_is_one_half():
    """Policy == deployed policy: every log-ratio is 0, so every loss is 1 − σ(0) = 0.5."""
    p = torch.log(torch.tensor([0.2, 0.7, 0.01]))
    got = losses.kto_loss(
        p, p.clone(), torch.tensor([True, False, True]), losses.kto_reference_point(p, p)
    )
    assert got.tolist() == pytest.approx([0.5, 0.5, 0.5])


def test_smoothing_term_and_the_paper_rl_form_by_hand():
    # mean_t over the real tokens of −(1/V) Σ_v log p_v: tokens with −2 and −4, one padding step
    mean_lp = torch.tensor([[-2.0, -4.0, -99.0]])
    mask = torch.tensor([[True, True, False]])
    s = losses.smoothing_term(mean_lp, mask)
    assert s.tolist() == pytest.approx([3.0])
    # MULTIREF §8: 0.9 · (−w r norm) + 0.1 · |r| · S; r = −0.1, w = 2, norm = −2, S = 3:
    # 0.9 · (−(2)(−0.1)(−2)) + 0.1 · 0.1 · 3 = −0.36 + 0.03 = −0.33
    got = losses.rl_loss(
        torch.tensor([-2.0]), torch.tensor([-0.1]), torch.tensor([2.0]), s, label_smoothing=0.1
    )
    assert got.tolist() == pytest.approx([-0.33], rel=1e-6)
    # a neutral reward has no smoothing term either: |r| = 0
    zero = losses.rl_loss(torch.tensor([-2.0]), torch.tensor([0.0]), torch.tensor([1.0]), s, 0.1)
    assert zero.tolist() == [0.0]
    # KTO's 0.99 / 0.01 mix
    assert losses.smoothed(torch.tensor([0.5]), s, 0.01).tolist() == pytest.approx(
        [0.99 * 0.5 + 0.01 * 3.0]
    )
    assert losses.smoothed(torch.tensor([0.5]), s, 0.0).tolist() == [0.5]
