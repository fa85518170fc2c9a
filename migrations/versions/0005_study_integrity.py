"""study integrity: per-worker attempt numbers, lobby presence, revoked admin sessions

``participants.attempt`` numbers a worker's visits (1, 2, …) under a unique constraint with the
worker hash, so the per-worker limit holds however many joins race (issue 13, item 3).
``participants.present_at`` is when a live socket last vouched for a waiting worker: pairing
ignores waiting rows nobody has vouched for lately (a ghost after kill -9, item 7).
``admin_sessions_revoked`` lists dashboard sessions ended by logout (item 9).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 19:30:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('present_at', sa.Float(), nullable=True))
        batch_op.create_unique_constraint('uq_participants_worker_attempt', ['worker_hash', 'attempt'])
    op.create_table(
        'admin_sessions_revoked',
        sa.Column('session_id', sa.String(64), primary_key=True),
        sa.Column('expires_at', sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('admin_sessions_revoked')
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.drop_constraint('uq_participants_worker_attempt', type_='unique')
        batch_op.drop_column('present_at')
        batch_op.drop_column('attempt')
