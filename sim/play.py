"""Simulated speakers (and human listeners) playing through the real server's websocket protocol.

Games are created with the admin game API (``app.bot.create_game``): a model-listener game per
system gets the system's next config from the server's queue, so concurrently deployed systems
play the same configurations, as in a real study. Each speaker is an ``app.bot.BotClient``.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from app.bot import BotClient
from sim.speakers import Descriptions, Noise, SimHumanListener, SimSpeaker, Utterance


@dataclass
class GameRecord:
    game_id: str
    system: str
    round: int
    success: bool
    end_reason: str | None
    turns: int
    selects: int  # images the listener selected, over the game
    target_selects: int  # of which targets
    utterances: list[str]


def _tiles(view) -> list[tuple[str, bool, bool]]:
    return [(t.tangram_id, t.selected, bool(t.target)) for t in view.tiles]


async def play_speaker(
    bot: BotClient,
    speaker: SimSpeaker,
    truth: list[dict],
    meta: dict,
    said: list[Utterance] | None = None,
    timeout: float = 300,
) -> tuple[Any, list[str], int, int]:
    """Play the speaker seat to the end; one truth row per reaction to a listener action."""
    texts: list[str] = []
    spoken_turn = 0
    before: set[str] | None = None
    selects = target_selects = 0
    seen: set[str] = set()
    while True:
        view = await bot.wait_for(
            lambda b: b.view
            and (b.view.phase == "ended" or (b.view.phase == "speaking" and b.view.turn > spoken_turn))
            and b.view,
            timeout,
        )
        tiles = _tiles(view)
        now = {t for t, s, _ in tiles if s}
        new = now - seen
        selects += len(new)
        target_selects += len(new & {t for t, _, g in tiles if g})
        seen = now
        if view.phase == "ended":
            return view, texts, selects, target_selects
        utt = speaker.speak(view.turn, tiles, before)
        if utt.reacts_to_turn:
            truth.append(
                {
                    **meta,
                    "game_id": view.game_id,
                    "turn": utt.reacts_to_turn,
                    "true_label": utt.true_label,
                    "said": utt.said,
                    "noise": utt.noise,
                }
            )
        if said is not None:
            said.append(utt)
        before = now
        spoken_turn = view.turn
        texts.append(utt.text)
        await bot.say(utt.text)


async def play_human_listener(bot: BotClient, listener: SimHumanListener, said: list[Utterance], timeout: float = 300):
    done: set[int] = set()
    while True:
        view = await bot.wait_for(
            lambda b: b.view
            and (b.view.phase == "ended" or (b.view.phase == "selecting" and b.view.turn not in done and not b.view.turn_submitted))
            and b.view,
            timeout,
        )
        if view.phase == "ended":
            return view
        done.add(view.turn)
        current = {t.tangram_id for t in view.tiles if t.selected}
        wanted = listener.choose([t.tangram_id for t in view.tiles], current, said[-1])
        await bot.select_exactly(wanted)


async def create_game(url: str, admin_token: str, system: str | None) -> dict:
    """A game from the server's config queue: a model listener of ``system``, or (None) a
    human–human game (both seats for simulated people)."""
    body = {"config": None, "listener": "human"} if system is None else {
        "config": None, "listener": "model", "system": system}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.post(
            "/api/admin/games", json=body, headers={"Authorization": f"Bearer {admin_token}"}
        )
        r.raise_for_status()
        return r.json()


async def play_game(
    url: str,
    admin_token: str,
    system: str,
    round_: int,
    descriptions: Descriptions,
    noise: Noise,
    seed: int,
    truth: list[dict],
    human_accuracy: float = 0.9,
) -> GameRecord:
    rng = random.Random(seed)
    human = system == "human"
    created = await create_game(url, admin_token, None if human else system)
    speaker = SimSpeaker(descriptions, noise, rng)
    bot = await BotClient(url, created["speaker_token"]).connect()
    listener_bot = None
    said: list[Utterance] = []
    try:
        meta = {"system": system, "round": round_}
        if human:
            listener_bot = await BotClient(url, created["listener_token"]).connect()
            (view, texts, sel, good), _ = await asyncio.gather(
                play_speaker(bot, speaker, truth, meta, said),
                play_human_listener(listener_bot, SimHumanListener(human_accuracy, rng), said),
            )
        else:
            view, texts, sel, good = await play_speaker(bot, speaker, truth, meta, said)
        return GameRecord(
            game_id=view.game_id,
            system=system,
            round=round_,
            success=view.outcome == "success" or view.end_reason == "success",
            end_reason=str(view.end_reason.value if hasattr(view.end_reason, "value") else view.end_reason),
            turns=view.turn,
            selects=sel,
            target_selects=good,
            utterances=texts,
        )
    finally:
        await bot.close()
        if listener_bot is not None:
            await listener_bot.close()


async def play_round(
    url: str,
    admin_token: str,
    plan: list[tuple[str, int]],
    round_: int,
    descriptions: Descriptions,
    noise: Noise,
    concurrency: int,
    games_path: Path,
    truth_path: Path,
    progress: Any = None,
    human_accuracy: float = 0.9,
) -> list[GameRecord]:
    """Play ``plan`` ((system, seed) per game) with at most ``concurrency`` games at once;
    append each finished game to ``games_path`` and its true labels to ``truth_path``."""
    sem = asyncio.Semaphore(concurrency)
    task = progress.add_task(f"round {round_}: games", total=len(plan)) if progress else None
    records: list[GameRecord] = []
    lock = asyncio.Lock()

    async def one(system: str, seed: int) -> None:
        async with sem:
            truth: list[dict] = []
            rec = await play_game(url, admin_token, system, round_, descriptions, noise, seed, truth, human_accuracy)
        async with lock:
            records.append(rec)
            with open(games_path, "a") as f:
                f.write(json.dumps(asdict(rec)) + "\n")
            with open(truth_path, "a") as f:
                for row in truth:
                    f.write(json.dumps(row) + "\n")
            if task is not None:
                wins = sum(r.success for r in records if r.system != "human")
                n = sum(r.system != "human" for r in records)
                progress.update(task, advance=1, description=f"round {round_}: games ({wins}/{n} model wins)")

    await asyncio.gather(*(one(s, seed) for s, seed in plan))
    return records
