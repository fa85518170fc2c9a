"""The speaker's kept draft and a lobby release, as stored, against hand-written values.

Written for gaps `make mutate` found: a draft update that wrote to every live game (the game id
left out of its WHERE), a draft kept while the listener is selecting, the 2,000-character cap,
and a release that left the participant without a finish time or still marked as waiting.
In process, on a real SQLite file, with a fake clock (tests/test_oracles.py's World).
"""

from __future__ import annotations

from app.db.models import Game, Participant
from app.game.rules import Seat, SendUtterance
from app.live.lobby import LobbyPolicy
from tests.test_oracles import CONFIG, World


async def _drafts(w: World, *games: str) -> list[str]:
    async with w.db.session() as s:
        return [(await s.get(Game, g)).speaker_draft for g in games]


async def test_a_draft_is_kept_for_its_own_game_only_while_its_speaker_is_typing(sqlite_url):
    w = await World.make(sqlite_url)
    one = await w.game()
    await w.participant("spk-2")
    await w.participant("lis-2")
    two = await w.lobby.create_game_for("spk-2", "lis-2", config=CONFIG)
    for g in (one, two):
        await w.join_both(g, 1)
    await w.hub.update_draft(one, Seat.SPEAKER, "the bird")
    assert await _drafts(w, one, two) == ["the bird", ""]
    await w.hub.update_draft(two, Seat.LISTENER, "not a speaker")  # listeners have no draft
    assert await _drafts(w, one, two) == ["the bird", ""]
    await w.hub.update_draft(two, Seat.SPEAKER, "x" * 2500)  # kept up to 2,000 characters
    assert await _drafts(w, one, two) == ["the bird", "x" * 2000]
    # once the message is sent the listener selects: text typed now is no draft of this turn
    await w.do(one, 5, SendUtterance, Seat.SPEAKER, text="the bird")
    await w.hub.update_draft(one, Seat.SPEAKER, "typed while the listener selects")
    assert (await _drafts(w, one))[0] == ""
    await w.db.close()


async def test_a_lobby_release_finishes_the_participant_and_ends_their_wait(sqlite_url):
    w = await World.make(sqlite_url, policy=LobbyPolicy(timeout_seconds=300, fallback="release"))
    w.clock.at(0)
    await w.participant("alone")
    w.lobby.present_ids = lambda: ["alone"]
    await w.lobby.enter("alone")
    async with w.db.session() as s:
        p = await s.get(Participant, "alone")
        assert (p.status, p.finished_at, p.waiting_since is not None) == ("waiting", None, True)
    w.clock.at(315)
    await w.sweeper.sweep()
    async with w.db.session() as s:
        p = await s.get(Participant, "alone")
        assert (p.status, p.waiting_since, p.pay_bonus_cents, p.pay_success_cents) == ("released", None, 0, 0)
        # stamped by the lobby's clock (the fake one here), not the wall clock
        assert p.finished_at == w.clock()
    await w.db.close()
