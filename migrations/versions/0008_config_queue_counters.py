"""config queues: a counter per (system, round) instead of a locked MAX over games

Game creations claimed the next config index under an advisory lock held for four round
trips (lock, MAX, rows, commit), so on PostgreSQL creations ran one at a time. The counter
is claimed by one statement that increments it. Existing queues start after their highest
index.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 15:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'config_queues',
        sa.Column('queue', sa.String(length=100), nullable=False),
        sa.Column('next_index', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('queue'),
    )
    # the same key as app.live.store.config_queue_key
    op.execute(
        "INSERT INTO config_queues (queue, next_index) "
        "SELECT system || '/' || COALESCE(CAST(round AS VARCHAR(20)), '-'), MAX(config_index) + 1 "
        "FROM games WHERE source = 'live' AND config_index IS NOT NULL AND system IS NOT NULL "
        "GROUP BY system, round"
    )


def downgrade() -> None:
    op.drop_table('config_queues')
