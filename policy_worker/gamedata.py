"""From the game log to what the policy sees: prompt games and 224 px tangram images.

Serving, retrospection and training all build their prompts through here and
``policy_worker.prompt``, so a model is trained on exactly what it saw when it played.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image

from app.game.rules import GameState
from app.tangrams.render import load_raster, render_png
from policy_worker.prompt import PromptGame, PromptTurn, action_text, letter_map

IMAGE_SIZE = 224


def prompt_game(state: GameState, turn: int, include_action: bool = False) -> PromptGame:
    """The prompt game for deciding ``turn`` (1-based): earlier turns carry their actions.

    With ``include_action`` the turn itself carries the action taken (a training transcript).
    """
    letters = letter_map(state.config.listener_order)
    turns: list[PromptTurn] = []
    for record in state.turns:
        if record.turn > turn or record.utterance is None:
            break
        action = None
        if record.turn < turn or include_action:
            if record.selection_after is None:
                break
            action = action_text(list(record.selection_before), list(record.selection_after), letters)
        turns.append(
            PromptTurn(
                utterance=record.utterance,
                selection_before=sorted(record.selection_before),
                action=action,
            )
        )
    if not turns or turns[-1].action is None and include_action:
        raise ValueError(f"turn {turn} of game {state.game_id} has no complete record")
    return PromptGame(listener_order=list(state.config.listener_order), turns=turns)


class TangramImages:
    """Tangram pictures at the policy's resolution, rendered once and cached."""

    def __init__(self, folder: Path, size: int = IMAGE_SIZE, cache: int = 2048) -> None:
        self.folder = Path(folder)
        self.size = size
        self._load = lru_cache(maxsize=cache)(self._render)

    def _render(self, tangram_id: str) -> Image.Image:
        svg = self.folder / f"{tangram_id}.svg"
        if svg.is_file():
            return render_png(svg, size=self.size)
        png = self.folder / f"{tangram_id}.png"
        if png.is_file():
            return load_raster(png, size=self.size)
        raise FileNotFoundError(f"no image for tangram {tangram_id} in {self.folder}")

    def images(self, order: list[str]) -> list[Image.Image]:
        return [self._load(t) for t in order]
