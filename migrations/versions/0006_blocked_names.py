"""blocked names

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('blocked_names',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('blocked_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocked_names')),
    sa.UniqueConstraint('name', name=op.f('uq_blocked_names_name'))
    )
    # Names of sites blocked before this table existed stay blocked too.
    op.execute("INSERT INTO blocked_names (name, reason, blocked_by, created_at) "
               "SELECT h.name, s.blocked_reason, '', CURRENT_TIMESTAMP "
               "FROM site_hostnames h JOIN sites s ON s.id = h.site_id WHERE s.blocked")


def downgrade():
    op.drop_table('blocked_names')
