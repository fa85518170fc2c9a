"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 23:32:47.845659
"""
from alembic import op
import sqlalchemy as sa

from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('blocked_workers',
    sa.Column('worker_hash', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('worker_hash')
    )
    op.create_table('games',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('listener_kind', sa.String(length=16), nullable=False),
    sa.Column('system', sa.String(length=64), nullable=True),
    sa.Column('round', sa.Integer(), nullable=True),
    sa.Column('checkpoint', sa.String(length=200), nullable=True),
    sa.Column('split', sa.String(length=16), nullable=True),
    sa.Column('config_index', sa.Integer(), nullable=True),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('rules', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('selection', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('next_deadline', sa.Float(), nullable=True),
    sa.Column('end_reason', sa.String(length=32), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=True),
    sa.Column('speaker_draft', sa.Text(), nullable=False),
    sa.Column('speaker_id', sa.String(length=32), nullable=True),
    sa.Column('listener_id', sa.String(length=32), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('games', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_games_next_deadline'), ['next_deadline'], unique=False)
        batch_op.create_index(batch_op.f('ix_games_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_games_system'), ['system'], unique=False)

    op.create_table('participants',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('platform', sa.String(length=16), nullable=False),
    sa.Column('worker_hash', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.String(length=128), nullable=True),
    sa.Column('session_id', sa.String(length=128), nullable=True),
    sa.Column('assignment_id', sa.String(length=128), nullable=True),
    sa.Column('hit_id', sa.String(length=128), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('consented_at', sa.Float(), nullable=True),
    sa.Column('waiting_since', sa.Float(), nullable=True),
    sa.Column('game_id', sa.String(length=32), nullable=True),
    sa.Column('seat', sa.String(length=16), nullable=True),
    sa.Column('released_reason', sa.String(length=32), nullable=True),
    sa.Column('completion_code', sa.String(length=32), nullable=True),
    sa.Column('pay_base_cents', sa.Integer(), nullable=False),
    sa.Column('pay_bonus_cents', sa.Integer(), nullable=False),
    sa.Column('pay_success_cents', sa.Integer(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_participants_game_id'), ['game_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_participants_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_participants_waiting_since'), ['waiting_since'], unique=False)
        batch_op.create_index(batch_op.f('ix_participants_worker_hash'), ['worker_hash'], unique=False)

    op.create_table('secrets',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('worker_heartbeats',
    sa.Column('worker_id', sa.String(length=64), nullable=False),
    sa.Column('host', sa.String(length=128), nullable=False),
    sa.Column('systems', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('checkpoints', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('beat_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('worker_id')
    )
    op.create_table('game_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('game_id', sa.String(length=32), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('data', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('actor', sa.String(length=16), nullable=True),
    sa.ForeignKeyConstraint(['game_id'], ['games.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('game_id', 'seq', name='uq_game_events_game_seq')
    )
    with op.batch_alter_table('game_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_game_events_game_id'), ['game_id'], unique=False)

    op.create_table('listener_requests',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('game_id', sa.String(length=32), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('system', sa.String(length=64), nullable=False),
    sa.Column('checkpoint', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('deadline', sa.Float(), nullable=False),
    sa.Column('worker_id', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.Float(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=200), nullable=True),
    sa.Column('prob_action', sa.Float(), nullable=True),
    sa.Column('prob_unconstrained', sa.Float(), nullable=True),
    sa.Column('latency_s', sa.Float(), nullable=True),
    sa.Column('model_input', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('done_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['game_id'], ['games.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('game_id', 'turn', name='uq_listener_requests_game_turn')
    )
    with op.batch_alter_table('listener_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_listener_requests_game_id'), ['game_id'], unique=False)
        batch_op.create_index('ix_listener_requests_pending', ['status', 'system'], unique=False)

    op.create_table('turns',
    sa.Column('game_id', sa.String(length=32), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('utterance', sa.Text(), nullable=True),
    sa.Column('auto_sent', sa.Boolean(), nullable=False),
    sa.Column('sent_at', sa.Float(), nullable=True),
    sa.Column('selection_before', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('selection_after', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('selected', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('deselected', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('clicks', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('auto_submitted', sa.Boolean(), nullable=False),
    sa.Column('submitted_at', sa.Float(), nullable=True),
    sa.Column('sec_until_send', sa.Float(), nullable=True),
    sa.Column('sec_until_submit', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['game_id'], ['games.id'], ),
    sa.PrimaryKeyConstraint('game_id', 'turn')
    )
    


def downgrade() -> None:
    
    op.drop_table('turns')
    with op.batch_alter_table('listener_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_listener_requests_pending')
        batch_op.drop_index(batch_op.f('ix_listener_requests_game_id'))

    op.drop_table('listener_requests')
    with op.batch_alter_table('game_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_game_events_game_id'))

    op.drop_table('game_events')
    op.drop_table('worker_heartbeats')
    op.drop_table('secrets')
    with op.batch_alter_table('participants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_participants_worker_hash'))
        batch_op.drop_index(batch_op.f('ix_participants_waiting_since'))
        batch_op.drop_index(batch_op.f('ix_participants_status'))
        batch_op.drop_index(batch_op.f('ix_participants_game_id'))

    op.drop_table('participants')
    with op.batch_alter_table('games', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_games_system'))
        batch_op.drop_index(batch_op.f('ix_games_status'))
        batch_op.drop_index(batch_op.f('ix_games_next_deadline'))

    op.drop_table('games')
    op.drop_table('blocked_workers')
    
