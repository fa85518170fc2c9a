"""systems and checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 23:46:29.573813
"""
from alembic import op
import sqlalchemy as sa

from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('systems',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('share', sa.Float(), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('quota', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('checkpoints',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('system', sa.String(length=64), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('base', sa.String(length=500), nullable=False),
    sa.Column('adapter', sa.String(length=1000), nullable=True),
    sa.Column('manifest', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('deployed_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['system'], ['systems.name'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_active'), ['active'], unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoints_system'), ['system'], unique=False)

    


def downgrade() -> None:
    
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_system'))
        batch_op.drop_index(batch_op.f('ix_checkpoints_active'))

    op.drop_table('checkpoints')
    op.drop_table('systems')
    
