"""human review of turns: annotation tasks, items, annotators, human labels

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 19:17:55
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('annotation_tasks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('system', sa.String(length=64), nullable=False),
    sa.Column('round', sa.Integer(), nullable=True),
    sa.Column('sample_size', sa.Integer(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('per_turn', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('annotation_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('game_id', sa.String(length=32), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['game_id'], ['games.id'], ),
    sa.ForeignKeyConstraint(['task_id'], ['annotation_tasks.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('task_id', 'game_id', 'turn', name='uq_annotation_item')
    )
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotation_items_task_id'), ['task_id'], unique=False)

    op.create_table('annotators',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['annotation_tasks.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('token_sha256')
    )
    with op.batch_alter_table('annotators', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotators_task_id'), ['task_id'], unique=False)

    op.create_table('human_labels',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('item_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('annotator_id', sa.String(length=32), nullable=False),
    sa.Column('game_id', sa.String(length=32), nullable=False),
    sa.Column('turn', sa.Integer(), nullable=False),
    sa.Column('assigned_at', sa.Float(), nullable=False),
    sa.Column('feedback', sa.Integer(), nullable=True),
    sa.Column('feedback_at', sa.Float(), nullable=True),
    sa.Column('action', sa.Integer(), nullable=True),
    sa.Column('skipped', sa.Boolean(), nullable=False),
    sa.Column('feedback_revised', sa.Boolean(), nullable=False),
    sa.Column('answered_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotators.id'], ),
    sa.ForeignKeyConstraint(['item_id'], ['annotation_items.id'], ),
    sa.ForeignKeyConstraint(['task_id'], ['annotation_tasks.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('item_id', 'annotator_id', name='uq_human_label')
    )
    with op.batch_alter_table('human_labels', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_human_labels_annotator_id'), ['annotator_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_human_labels_item_id'), ['item_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_human_labels_task_id'), ['task_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('human_labels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_human_labels_task_id'))
        batch_op.drop_index(batch_op.f('ix_human_labels_item_id'))
        batch_op.drop_index(batch_op.f('ix_human_labels_annotator_id'))

    op.drop_table('human_labels')
    with op.batch_alter_table('annotators', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotators_task_id'))

    op.drop_table('annotators')
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_items_task_id'))

    op.drop_table('annotation_items')
    op.drop_table('annotation_tasks')
