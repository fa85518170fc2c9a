"""The append's rows: the SQLite store updates only the ``games`` columns that change."""

from __future__ import annotations

import random

from app.db.gamelog import AppendRows, _dump, _json_positions, changed_game_values, game_row
from app.game.rules import (
    Click,
    Disconnect,
    GameConfig,
    GameCreated,
    GameRules,
    Join,
    Leave,
    ListenerKind,
    Seat,
    SendUtterance,
    Submit,
    Tick,
    new_game,
    step,
)

CONTEXT = tuple(f"t{i}" for i in range(10))


def random_appends(seed: int, games: int):
    """(before, events, after) of every accepted command in random games of both kinds."""
    rng = random.Random(seed)
    for g in range(games):
        config = GameConfig(context=CONTEXT, targets=tuple(rng.sample(CONTEXT, 3)), speaker_order=CONTEXT,
                            listener_order=tuple(rng.sample(CONTEXT, 10)))
        kind = rng.choice(list(ListenerKind))
        t = 1e9
        state = new_game(GameCreated(game_id=f"g{g}", config=config, rules=GameRules(), listener_kind=kind, at=t))
        for _ in range(60):
            t += rng.random() * 20
            seat = rng.choice(list(Seat))
            cmd = rng.choice([
                Join(seat=seat, at=t), Join(seat=seat, at=t), Disconnect(seat=seat, at=t),
                SendUtterance(seat=Seat.SPEAKER, text=rng.choice(["a b", "  x  ", "the two birds"]), at=t),
                Click(seat=Seat.LISTENER, tangram_id=rng.choice(CONTEXT), at=t),
                Click(seat=Seat.LISTENER, tangram_id=rng.choice(CONTEXT), at=t),
                Submit(seat=Seat.LISTENER, at=t), Tick(at=t, speaker_draft=rng.choice(["", "draft"])),
                Leave(seat=seat, at=t) if rng.random() < 0.05 else Tick(at=t),
            ])
            after, result = step(state, cmd)
            if isinstance(result, list) and result:
                yield state, result, after
            state = after
            if state.ended:
                break


def test_the_changed_columns_turn_the_row_before_into_the_row_after() -> None:
    seen = set()
    for before, events, after in random_appends(seed=7, games=400):
        rows = AppendRows(before, events, after, "server")
        cols, values = changed_game_values(before, rows)
        assert "version" in cols and set(cols) <= set(rows.game_cols)
        old = game_row(before)
        json_at = _json_positions("games", rows.game_cols)
        row = {c: _dump(old[c]) if i in json_at else old[c] for i, c in enumerate(rows.game_cols) if c in old}
        row.update(zip(cols, values))
        assert row == dict(zip(rows.game_cols, rows.game))
        if "speaker_draft" in rows.game_cols:  # not derived: always written
            assert "speaker_draft" in cols
        seen.add(len(cols))
    assert min(seen) <= 3 and max(seen) >= 6  # a click sets a few columns, a game's end many
