"""quiz attempts; an index for the config queue

The server checks the comprehension quiz and records the tries. The next config of a system's
queue was a COUNT over all its games (80 ms at 37,000 games on SQLite, on every game created);
with this index it is a MAX read from the index.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 03:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('quiz_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('quiz_passed_at', sa.Float(), nullable=True))
    # Workers already past the quiz page (waiting or playing) took it in the browser.
    op.execute("UPDATE participants SET quiz_passed_at = consented_at WHERE status NOT IN ('arrived', 'consented')")
    with op.batch_alter_table('games', schema=None) as batch_op:
        batch_op.create_index('ix_games_config_queue', ['system', 'round', 'source', 'config_index'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('games', schema=None) as batch_op:
        batch_op.drop_index('ix_games_config_queue')
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.drop_column('quiz_passed_at')
        batch_op.drop_column('quiz_attempts')
