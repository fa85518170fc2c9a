"""action scores: π_deployed of logged listener actions (MULTIREF.md §8)

The full-vocabulary, length-normalised probability of each logged action under a checkpoint,
written by the worker when it serves the action and by `multiref rescore` (which also fills it
for imported games, which have no listener request). RL and KTO read it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 19:35:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('action_scores',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('game_id', sa.String(length=32), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('checkpoint', sa.String(length=300), nullable=False),
    sa.Column('action', sa.String(length=200), nullable=False),
    sa.Column('prob_deployed', sa.Float(), nullable=False),
    sa.Column('logp_sum', sa.Float(), nullable=False),
    sa.Column('num_tokens', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['game_id'], ['games.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('game_id', 'turn', 'checkpoint', name='uq_action_scores_game_turn_ck')
    )
    with op.batch_alter_table('action_scores', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_action_scores_game_id'), ['game_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('action_scores', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_action_scores_game_id'))
    op.drop_table('action_scores')
