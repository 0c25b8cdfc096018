"""domains given to one client

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('domain_grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('granted_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_domain_grants_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_domain_grants')),
    sa.UniqueConstraint('name', name=op.f('uq_domain_grants_name'))
    )
    with op.batch_alter_table('domain_grants', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_domain_grants_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('domain_grants', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_domain_grants_user_id'))
    op.drop_table('domain_grants')
