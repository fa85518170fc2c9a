"""Game configurations: the draw of MULTIREF.md §1 and the replayable queue of §2."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from app.game.configs import ConfigQueue, make_config
from app.game.rules import GameRules

POOL = [f"t{i:03d}" for i in range(101)]  # the size of the MultiRef dev split
RULES = GameRules()


def test_config_has_ten_distinct_tangrams_from_the_pool() -> None:
    rng = random.Random(1)
    for _ in range(200):
        config = make_config(POOL, rng, RULES)
        assert len(config.context) == 10
        assert len(set(config.context)) == 10
        assert set(config.context) <= set(POOL)
        assert list(config.context) == sorted(config.context)
        assert set(config.targets) <= set(config.context)
        assert len(set(config.targets)) == len(config.targets)


def test_target_count_is_uniform_over_three_to_five() -> None:
    rng = random.Random(2)
    counts = Counter(len(make_config(POOL, rng, RULES).targets) for _ in range(3000))
    assert set(counts) == {3, 4, 5}
    for n in (3, 4, 5):  # expected 1000 each, standard deviation about 26
        assert 900 <= counts[n] <= 1100, counts


def test_target_range_follows_the_rules() -> None:
    rng = random.Random(3)
    rules = GameRules(min_targets=2, max_targets=2)
    assert {len(make_config(POOL, rng, rules).targets) for _ in range(50)} == {2}


def test_orders_are_independent_permutations_of_the_context() -> None:
    rng = random.Random(4)
    configs = [make_config(POOL, rng, RULES) for _ in range(300)]
    for config in configs:
        assert sorted(config.speaker_order) == list(config.context)
        assert sorted(config.listener_order) == list(config.context)
    differ = sum(c.speaker_order != c.listener_order for c in configs)
    assert differ >= 295  # equal only with probability 1/10! per game
    # Neither order is the sorted context in disguise: first positions vary widely.
    assert len({c.speaker_order[0] for c in configs}) > 50
    assert len({c.listener_order[0] for c in configs}) > 50


def test_targets_are_spread_over_the_context() -> None:
    rng = random.Random(5)
    positions = Counter()
    for _ in range(2000):
        config = make_config(POOL, rng, RULES)
        positions.update(config.context.index(t) for t in config.targets)
    # Each sorted-context position is a target about 0.4 of the time (4 of 10 on average).
    for pos in range(10):
        assert 0.33 <= positions[pos] / 2000 <= 0.47, positions


def test_make_config_is_reproducible_with_the_same_rng_seed() -> None:
    a = [make_config(POOL, random.Random(7), RULES) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert make_config(POOL, random.Random(8), RULES) != a[0]


def test_make_config_rejects_a_small_pool() -> None:
    with pytest.raises(ValueError, match="needs 10"):
        make_config(POOL[:9] + POOL[:9], random.Random(0), RULES)


def test_queue_is_a_pure_function_of_pool_seed_and_index() -> None:
    queue = ConfigQueue(POOL, seed=11, rules=RULES)
    later = queue.config(57)
    early = [queue.config(i) for i in range(5)]
    # A fresh queue with the pool in another order replays the same configs, in any call order.
    shuffled = list(POOL)
    random.Random(0).shuffle(shuffled)
    other = ConfigQueue(shuffled, seed=11, rules=RULES)
    assert other.config(57) == later
    assert [other.config(i) for i in reversed(range(5))] == list(reversed(early))
    assert other.fingerprint == queue.fingerprint
    assert queue[3] == early[3]
    for config in early:
        config.check()


def test_queue_depends_on_the_seed() -> None:
    a = ConfigQueue(POOL, seed=1)
    b = ConfigQueue(POOL, seed=2)
    assert [a.config(i) for i in range(5)] != [b.config(i) for i in range(5)]
    assert a.fingerprint != b.fingerprint


def test_queue_is_pinned_across_versions() -> None:
    """Deployments replay queues across restarts and releases: the algorithm must not drift."""
    queue = ConfigQueue(POOL, seed=0)
    first = queue.config(0)
    assert first.context == PINNED_CONTEXT
    assert first.targets == PINNED_TARGETS


PINNED_CONTEXT = ("t006", "t015", "t017", "t024", "t028", "t045", "t072", "t082", "t088", "t100")
PINNED_TARGETS = ("t017", "t024", "t045", "t088")


def test_queue_covers_the_pool_evenly() -> None:
    queue = ConfigQueue(POOL, seed=3)
    per_epoch = queue.games_per_epoch
    assert per_epoch == 10  # 101 tangrams, 10 per game
    epoch = [t for i in range(per_epoch) for t in queue.config(i).context]
    assert len(epoch) == len(set(epoch)) == 100  # no tangram twice within an epoch
    uses = Counter(
        t for config in (queue.config(i) for i in range(per_epoch * 20)) for t in config.context
    )
    assert set(uses) == set(POOL)
    assert max(uses.values()) == 20  # once per epoch at most
    assert min(uses.values()) >= 17  # one tangram sits out each epoch, a different one each time


def test_queue_iterates_from_the_start() -> None:
    queue = ConfigQueue(POOL, seed=5)
    iterator = iter(queue)
    assert [next(iterator) for _ in range(4)] == [queue.config(i) for i in range(4)]


def test_queue_rejects_a_pool_smaller_than_a_game() -> None:
    with pytest.raises(ValueError, match="needs 10"):
        ConfigQueue(POOL[:9], seed=0)
