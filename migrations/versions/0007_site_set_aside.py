"""a site's accepted and refused versions, and its deployment warning

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.add_column(sa.Column('accepted_spec', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('accepted_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('refused_version', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('refused_reason', sa.Text(), server_default='',
                                      nullable=False))
        batch_op.add_column(sa.Column('deploy_warning', sa.Text(), server_default='',
                                      nullable=False))


def downgrade():
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.drop_column('deploy_warning')
        batch_op.drop_column('refused_reason')
        batch_op.drop_column('refused_version')
        batch_op.drop_column('accepted_version')
        batch_op.drop_column('accepted_spec')
