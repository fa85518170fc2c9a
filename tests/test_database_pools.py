"""PostgreSQL: the live tier's asyncpg pool (every action's commit, game creation) can have its
own size, ``db_commit_pool_size``, apart from the ORM's ``db_pool_size`` (by default the same),
so that it can grow without the ORM's pool and its overflow growing with it."""

from __future__ import annotations

from app.db.database import Database


async def test_the_commit_pool_has_its_own_size(pg_url):
    db = Database(pg_url, 3, commit_pool_size=7)
    try:
        async with db.asyncpg_connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        assert (await db._asyncpg_pool()).get_max_size() == 7
        assert db.engine.pool.size() == 3
    finally:
        await db.close()


async def test_without_its_own_size_the_commit_pool_follows_the_orm_pool(pg_url):
    db = Database(pg_url, 4)
    try:
        assert (await db._asyncpg_pool()).get_max_size() == 4
    finally:
        await db.close()


async def test_expiring_the_commit_pool_replaces_its_connections(pg_url):
    """After a connection error the store expires the pool so that no connection to a restarted
    server is reused; asyncpg's expire_connections is a coroutine that was called unawaited."""
    db = Database(pg_url, 2)
    try:
        async with db.asyncpg_connection() as conn:
            before = await conn.fetchval("SELECT pg_backend_pid()")
        await db.expire_asyncpg_connections()
        async with db.asyncpg_connection() as conn:
            after = await conn.fetchval("SELECT pg_backend_pid()")
        assert after != before
    finally:
        await db.close()
