"""learning.agreement: the kappas, raw agreement, majority and the validation figures on
examples computed by hand (and the classic examples from the literature)."""

from __future__ import annotations

import pytest

from learning.agreement import (
    LabelRow,
    agreement,
    cohen_kappa,
    fleiss_kappa,
    majority,
    markdown,
    pairwise_cohen,
    raw_agreement,
    review,
    validation,
)

# Fleiss (1971) as retold on Wikipedia ("Fleiss' kappa", worked example): 10 subjects, 14 raters,
# 5 categories; P̄ = 0.378, P_e = 0.213, κ = 0.210.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def _ratings(row: list[int]) -> list[int]:
    return [category for category, count in enumerate(row, start=1) for _ in range(count)]


def test_fleiss_classic_example():
    items = [_ratings(r) for r in FLEISS_TABLE]
    assert fleiss_kappa(items) == pytest.approx(0.20993, abs=1e-5)
    # raw agreement is P̄ of the same example
    assert raw_agreement(items) == pytest.approx(0.37802, abs=1e-5)


def test_fleiss_small_hand_example():
    # 3 items, 3 raters: [a,a,a] P=1; [a,a,b] P=(4+1-3)/6=1/3; [b,b,b] P=1 -> P̄=7/9
    # p_a = 5/9, p_b = 4/9 -> P_e = 41/81; κ = (7/9 - 41/81) / (1 - 41/81) = 22/40 = 0.55
    assert fleiss_kappa([["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]) == pytest.approx(0.55)


def test_fleiss_refuses_uneven_items_and_is_undefined_for_one_label():
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa([[1, 1], [1, 1, 0]])
    assert fleiss_kappa([[1, 1], [1, 1]]) is None
    assert fleiss_kappa([]) is None


def test_cohen_classic_example():
    # Wikipedia "Cohen's kappa": 50 proposals, yes/yes 20, A yes B no 5, A no B yes 10, no/no 15:
    # p_o = 0.7, p_e = 0.5·0.6 + 0.5·0.4 = 0.5, κ = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert raw_agreement(list(zip(a, b))) == pytest.approx(0.7)


def test_cohen_edge_cases():
    assert cohen_kappa([1, 0, -1], [1, 0, -1]) == pytest.approx(1.0)
    # systematic disagreement: p_o = 0, p_e = 0.5 -> κ = -1
    assert cohen_kappa([1, -1], [-1, 1]) == pytest.approx(-1.0)
    assert cohen_kappa([1, 1], [1, 1]) is None  # chance agreement 1: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa([1], [1, 0])


def test_two_raters_fleiss_and_cohen_are_close_and_pairwise_cohen_uses_shared_items():
    ratings = {1: {"A": 1, "B": 1}, 2: {"A": 0, "B": 1}, 3: {"A": -1, "B": -1}, 4: {"A": 1}}
    pairs = pairwise_cohen(ratings)
    # shared items 1..3: A = [1, 0, -1], B = [1, 1, -1]; p_o = 2/3;
    # p_e = (1·2 + 1·0 + 1·1)/9 = 1/3; κ = (2/3 - 1/3)/(2/3) = 0.5
    assert pairs == {("A", "B"): (3, pytest.approx(0.5))}
    summary = agreement(ratings)
    assert summary["items"] == 3 and summary["cohen"] == pytest.approx(0.5)
    assert summary["raw"] == pytest.approx(2 / 3)
    # Fleiss over the same 3 items: P̄ = 2/3; p_+1 = 3/6, p_0 = 1/6, p_-1 = 2/6
    # P_e = (9 + 1 + 4)/36 = 14/36; κ = (2/3 - 14/36)/(1 - 14/36) = (10/36)/(22/36) = 5/11
    assert summary["fleiss"] == pytest.approx(5 / 11) and summary["fleiss_items"] == 3


def test_majority():
    assert majority([1, 1, 0]) == 1
    assert majority([1, 0]) is None  # a tie has no majority
    assert majority([]) is None
    assert majority([-1]) == -1


def test_validation_counts_by_hand():
    # (human, predicted)
    pairs = [(1, 1), (1, 1), (1, -1), (0, 1), (0, 0), (-1, -1), (-1, -1), (-1, 1)]
    v = validation(pairs)
    assert v["n"] == 8
    assert v["confusion"][1] == {-1: 1, 0: 0, 1: 2}
    assert v["confusion"][-1] == {-1: 2, 0: 0, 1: 1}
    assert v["accuracy"] == pytest.approx(5 / 8)
    # positive class: TP 2, FP 2 (one human neutral, one human negative), FN 1, TN 3
    assert v["precision"] == pytest.approx(0.5)
    assert v["recall"] == pytest.approx(2 / 3)
    assert v["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert v["fpr"] == pytest.approx(2 / 5)
    assert v["fpr_negative"] == pytest.approx(1 / 3)
    assert v["recall_-1"] == pytest.approx(2 / 3) and v["recall_+0"] == pytest.approx(0.5)


def test_validation_empty_is_undefined_not_zero():
    v = validation([])
    assert v["n"] == 0 and v["accuracy"] is None and v["precision"] is None and v["f1"] is None


def test_review_uses_the_human_majority_and_skips_ties():
    rows = [
        LabelRow("S", 1, "g", 1, "A", 1, 1),
        LabelRow("S", 1, "g", 1, "B", 1, 1),
        LabelRow("S", 1, "g", 2, "A", -1, -1),
        LabelRow("S", 1, "g", 2, "B", -1, 0),
        LabelRow("S", 1, "g", 3, "A", 0, 1),
        LabelRow("S", 1, "g", 3, "B", -1, 1),  # feedback tie: left out of the decoder figures
    ]
    decoded = {("g", 1): {"binary": 1}, ("g", 2): {"binary": 1}, ("g", 3): {"binary": -1}}
    heuristics = {("g", 1): 1, ("g", 2): -1, ("g", 3): 0}
    r = review("S", 1, rows, decoded, heuristics)
    assert (r.turns, r.labels, r.annotators) == (3, 6, 2)
    assert r.feedback_agreement["raw"] == pytest.approx(2 / 3)
    d = r.decoders["binary"]
    assert d["n"] == 2 and d["confusion"][1][1] == 1 and d["confusion"][-1][1] == 1
    assert d["fpr"] == pytest.approx(1.0) and d["precision"] == pytest.approx(0.5)
    # action majority: turn 1 correct (heuristic +1 agrees), turn 2 tie (left out),
    # turn 3 correct (heuristic 0 disagrees)
    assert r.heuristic["n"] == 2 and r.heuristic["accuracy"] == pytest.approx(0.5)
    text = "\n".join(markdown([r]))
    assert "## Human review" in text and "| S | 1 | 3 | 6 | 2 | 66.7% |" in text


def test_review_leaves_out_feedback_given_after_seeing_the_targets():
    rows = [
        LabelRow("S", 2, "g", 1, "A", 1, 1),
        LabelRow("S", 2, "g", 1, "B", None, 1),  # revised after seeing the targets
        LabelRow("S", 2, "g", 2, "A", -1, -1),
        LabelRow("S", 2, "g", 2, "B", -1, -1),
    ]
    r = review("S", 2, rows, {("g", 1): {"binary": 1}}, {})
    assert r.turns == 2 and r.labels == 4
    assert r.feedback_agreement["items"] == 1  # only turn 2 has two feedback answers
    assert r.action_agreement["items"] == 2 and r.action_agreement["raw"] == pytest.approx(1.0)
    # turn 1's feedback majority is A's alone: positive, as decoded
    assert r.decoders["binary"]["n"] == 1 and r.decoders["binary"]["accuracy"] == pytest.approx(1.0)
