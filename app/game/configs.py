"""Game configurations: which tangrams a game shows, which are targets, in which orders.

Pure (no I/O, no global random state). docs/method.md: systems deployed at the same time must
play the same configurations, so :class:`ConfigQueue` makes config ``i`` a function of
(pool, seed, rules, i) alone; every system replays the same queue from index 0. The server
keys the seed with its secret (:func:`keyed_seed`) so that nobody else can replay the queue.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Iterable, Iterator

from app.game.rules import GameConfig, GameRules


def make_config(pool: list[str], rng: random.Random, rules: GameRules) -> GameConfig:
    """A random game: ``rules.num_images`` distinct tangrams of ``pool``, 3–5 targets (uniform
    over min..max targets), and two independent on-screen orders (speaker, listener)."""
    candidates = list(dict.fromkeys(pool))
    if len(candidates) < rules.num_images:
        raise ValueError(
            f"the tangram pool has {len(candidates)} distinct ids; a game needs {rules.num_images}"
        )
    if not 0 <= rules.min_targets <= rules.max_targets <= rules.num_images:
        raise ValueError(
            f"targets must satisfy 0 <= min ({rules.min_targets}) <= max ({rules.max_targets}) "
            f"<= images ({rules.num_images})"
        )
    chosen = rng.sample(candidates, rules.num_images)
    n_targets = rng.randint(rules.min_targets, rules.max_targets)
    targets = rng.sample(chosen, n_targets)
    context = tuple(sorted(chosen))
    config = GameConfig(
        context=context,
        targets=tuple(sorted(targets)),
        speaker_order=tuple(rng.sample(context, len(context))),
        listener_order=tuple(rng.sample(context, len(context))),
    )
    config.check()
    return config


def keyed_seed(secret: str, seed: object) -> str:
    """The queue's seed as the server uses it: an HMAC of the study's seed under the server's
    secret. The queue is public code over a public split, so a bare seed lets anyone replay it
    and read a game's targets off its ten tangrams; keyed, it replays only for whoever holds
    the secret (the operator), and every system still plays the same configs."""
    if not secret:
        raise ValueError("a config queue needs a secret key")
    return hmac.new(secret.encode(), f"multiref-configs:{seed}".encode(), hashlib.sha256).hexdigest()


def _rng(*parts: object) -> random.Random:
    """A random generator seeded by a stable hash (Python's ``hash`` changes per process)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


class ConfigQueue:
    """A reproducible, shuffled, endless sequence of game configurations over a tangram pool.

    The pool is walked in epochs: each epoch is a fresh shuffle of the pool cut into games of
    ``num_images`` tangrams, so every tangram appears about equally often. Targets and orders
    come from a generator seeded by (seed, i). Config ``i`` depends only on the set of pool ids,
    the seed, the rules and ``i`` (not on the pool's order, nor on earlier calls).
    """

    def __init__(
        self, pool: Iterable[str], seed: int | str, rules: GameRules | None = None
    ) -> None:
        self.rules = rules if rules is not None else GameRules()
        self.pool: tuple[str, ...] = tuple(sorted(set(pool)))
        self.seed = seed
        if len(self.pool) < self.rules.num_images:
            raise ValueError(
                f"the tangram pool has {len(self.pool)} distinct ids; a game needs "
                f"{self.rules.num_images}"
            )
        self.games_per_epoch = len(self.pool) // self.rules.num_images
        self._epoch_cache: tuple[int, list[str]] | None = None

    @property
    def fingerprint(self) -> str:
        """Short hash of what defines the queue: equal fingerprints replay equal configs."""
        text = "\n".join((str(self.seed), self.rules.model_dump_json(), *self.pool))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _epoch_order(self, epoch: int) -> list[str]:
        cached = self._epoch_cache  # read once: safe if several threads share the queue
        if cached is not None and cached[0] == epoch:
            return cached[1]
        order = list(self.pool)
        _rng("multiref-epoch", self.seed, epoch).shuffle(order)
        self._epoch_cache = (epoch, order)
        return order

    def config(self, i: int) -> GameConfig:
        """Config number ``i`` (0-based) of the queue."""
        if i < 0:
            raise IndexError("config index must be >= 0")
        epoch, slot = divmod(i, self.games_per_epoch)
        k = self.rules.num_images
        tangrams = self._epoch_order(epoch)[slot * k : (slot + 1) * k]
        return make_config(tangrams, _rng("multiref-game", self.seed, i), self.rules)

    def __getitem__(self, i: int) -> GameConfig:
        return self.config(i)

    def __iter__(self) -> Iterator[GameConfig]:
        i = 0
        while True:
            yield self.config(i)
            i += 1
