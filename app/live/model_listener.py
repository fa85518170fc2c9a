"""Plays a model listener's decided actions into its game, click by click.

A policy worker writes the action of a listener turn to ``listener_requests`` (status ``done``).
One server process takes it (status ``applying``, under a short lease so another process
resumes it if this one dies), turns the letters into tangram ids in the listener's order, and
runs the clicks through the hub with a small delay between them, so the speaker watches them
arrive, then submits. Applying is idempotent: the clicks made are the difference between the
current selection and the one the action asks for.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import and_, or_, update

from app.db.models import ListenerRequest
from app.game.rules import Click, Phase, Rejection, Seat, Submit
from app.live.background import BackgroundLoop
from app.live.hub import GameHub
from policy_worker.prompt import apply_action, letter_map

log = logging.getLogger("multiref.model_listener")

# Far shorter than a model turn's window (``model_turn_seconds``, 30 s): a server killed while
# applying loses its claim within seconds, and a restarted server (or another replica) retakes
# the stored action in time. The applier renews the lease while it plays the clicks.
APPLY_LEASE_SECONDS = 5.0


def target_selection(action: str, before: set[str], listener_order: tuple[str, ...]) -> set[str]:
    """The selection (tangram ids) an action text such as ``deselect C select G`` leads to."""
    letters = letter_map(listener_order)
    by_letter = {letter: tid for tid, letter in letters.items()}
    after = apply_action(sorted(letters[t] for t in before), action)
    return {by_letter[letter] for letter in after}


class ModelListenerDriver(BackgroundLoop):
    name = "applying model actions"

    def __init__(self, hub: GameHub, click_delay: float = 0.4) -> None:
        super().__init__(interval=0.5)  # kicked by the hub when a worker's action arrives
        self.hub = hub
        self.click_delay = click_delay
        self._running: set[int] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.hub.on_listener_request = self.kick
        await super().start()

    async def step(self) -> None:
        await self.apply_ready()

    async def apply_ready(self) -> int:
        """Take every decided request (or one whose applier died) and play it; returns count."""
        now = time.time()
        async with self.hub.db.session() as s, s.begin():
            rows = (
                await s.execute(
                    update(ListenerRequest)
                    .where(
                        or_(
                            ListenerRequest.status == "done",
                            and_(ListenerRequest.status == "applying", ListenerRequest.lease_until < now),
                        )
                    )
                    .values(status="applying", lease_until=now + APPLY_LEASE_SECONDS)
                    .returning(ListenerRequest.id, ListenerRequest.game_id, ListenerRequest.turn, ListenerRequest.action)
                )
            ).all()
        for rid, game_id, turn, action in rows:
            if rid not in self._running:
                self._running.add(rid)
                asyncio.create_task(self._apply(rid, game_id, turn, action))
        return len(rows)

    async def stop(self) -> None:
        """A graceful stop (a rolling restart) hands the actions being applied back at once,
        so another process finishes them without waiting for the lease to run out."""
        await super().stop()
        running, self._running = set(self._running), set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if running:
            try:
                async with self.hub.db.session() as s, s.begin():
                    await s.execute(
                        update(ListenerRequest)
                        .where(ListenerRequest.id.in_(running), ListenerRequest.status == "applying")
                        .values(status="done", lease_until=None)
                    )
            except Exception as exc:  # the lease still runs out
                log.warning("could not hand back %d model actions: %s", len(running), exc)

    async def _renew(self, rid: int) -> None:
        while True:
            await asyncio.sleep(APPLY_LEASE_SECONDS / 3)
            try:
                async with self.hub.db.session() as s, s.begin():
                    await s.execute(
                        update(ListenerRequest)
                        .where(ListenerRequest.id == rid, ListenerRequest.status == "applying")
                        .values(lease_until=time.time() + APPLY_LEASE_SECONDS)
                    )
            except Exception as exc:
                log.warning("could not renew the lease of model action %s: %s", rid, exc)

    async def _apply(self, rid: int, game_id: str, turn: int, action: str) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        renew = asyncio.create_task(self._renew(rid))
        try:
            status = await self._play(game_id, turn, action)
        except asyncio.CancelledError:
            return  # stopped: stop() hands the action back
        except Exception:
            log.exception("could not apply %r to game %s turn %s", action, game_id, turn)
            status = "failed"
        finally:
            renew.cancel()
            self._running.discard(rid)
            self._tasks.discard(task)
        async with self.hub.db.session() as s, s.begin():
            await s.execute(
                update(ListenerRequest).where(ListenerRequest.id == rid).values(status=status, lease_until=None)
            )

    async def _play(self, game_id: str, turn: int, action: str) -> str:
        hub = self.hub
        state = await hub.state(game_id)
        if state is None or state.ended or state.turn != turn or state.phase is not Phase.SELECTING:
            return "stale"
        wanted = target_selection(
            action, set(state.turns[-1].selection_before), state.config.listener_order
        )
        while True:
            state = await hub.state(game_id)
            if state is None or state.ended or state.turn != turn or state.phase is not Phase.SELECTING:
                return "stale"
            todo = sorted(state.selection - wanted) + sorted(wanted - state.selection)
            if not todo:
                break
            await asyncio.sleep(self.click_delay)
            _, result = await hub.execute(game_id, Click(seat=Seat.LISTENER, tangram_id=todo[0], at=hub.clock()), actor="model")
            if isinstance(result, Rejection):
                return "stale"
        await asyncio.sleep(self.click_delay)
        _, result = await hub.execute(game_id, Submit(seat=Seat.LISTENER, at=hub.clock()), actor="model")
        return "stale" if isinstance(result, Rejection) else "applied"
