"""Blocking a worker, as stored, against hand-written values: who is released and paid what,
what the block row keeps, what a second block changes, and who is left alone.

Written for gaps `make mutate` found in ``app.live.lobby.block_worker`` (a release that did not
filter on the worker, a reason not capped, a second block that kept the old reason) that passed
every fast test. In process, on a real SQLite file, with a fake clock (tests/test_oracles.py).
"""

from __future__ import annotations

from sqlalchemy import select

from app.db.models import AuditEntry, BlockedWorker, Participant
from app.live.lobby import LobbyPolicy
from tests.test_oracles import T0, World


def _hash(worker: str) -> str:
    return worker.ljust(64, "0")  # World.participant's worker hash


async def test_blocking_a_worker_releases_their_sessions_only_and_keeps_the_latest_reason(sqlite_url):
    w = await World.make(sqlite_url, policy=LobbyPolicy(timeout_seconds=600, fallback="release"))
    w.clock.at(0)
    await w.participant("a1", "worker-A")
    await w.participant("a2", "worker-A")
    await w.participant("b1", "worker-B")
    w.lobby.present_ids = lambda: ["a1"]
    await w.lobby.enter("a1")  # a1 waits in the lobby from +0; a2 and b1 only consented
    w.clock.at(90)
    released = await w.lobby.block(_hash("worker-A"), "spam " + "x" * 2100, actor="ops")
    assert sorted(released) == ["a1", "a2"]
    async with w.db.session() as s:
        people = {p.id: p for p in (await s.execute(select(Participant))).scalars()}
        row = await s.get(BlockedWorker, _hash("worker-A"))
        assert (row.reason[:5], len(row.reason), row.at) == ("spam ", 2000, T0 + 90)
    # a1 waited 90 s: 1.5 min at 20 cents = 30; a2 never waited: 0; b1 is another worker
    assert {pid: (p.status, p.released_reason, p.pay_base_cents) for pid, p in people.items()} == {
        "a1": ("released", "blocked", 30),
        "a2": ("released", "blocked", 0),
        "b1": ("consented", None, 0),
    }
    w.clock.at(100)
    again = "again " + "y" * 2100
    assert await w.lobby.block(_hash("worker-A"), again, actor="ops", participant_id="a2") == []
    async with w.db.session() as s:
        row = await s.get(BlockedWorker, _hash("worker-A"))
        assert (row.reason, row.at) == (again[:2000], T0 + 100)
        assert await s.get(BlockedWorker, _hash("worker-B")) is None
        audits = (await s.execute(select(AuditEntry).order_by(AuditEntry.id))).scalars().all()
    # the audit names the participant the operator clicked, else the worker hash's first 16
    assert [(a.actor, a.action, a.target, sorted(a.details["released"])) for a in audits] == [
        ("ops", "block", "worker-A00000000", ["a1", "a2"]),
        ("ops", "block", "a2", []),
    ]
    assert audits[1].details == {"worker_hash": _hash("worker-A"), "reason": again, "released": []}
    await w.db.close()
