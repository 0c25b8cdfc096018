"""rollouts hold a lease of the run that carries them out; unfinished ones are indexed

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

With the task engine a rollout's task may be handed out twice (its worker died, or
it ran past the broker's visibility timeout): ``runner`` and ``runner_expires_at``
let the second run wait while the first lives and carry on after it died.  The
partial index finds the rollouts not finished yet (a run lost with its process or its
queue) without reading the whole history.

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runner', sa.String(length=128), server_default='',
                                      nullable=False))
        batch_op.add_column(sa.Column('runner_expires_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.create_index('ix_rollouts_unfinished', ['status'], unique=False,
                              sqlite_where=sa.text("status IN ('pending', 'running')"),
                              postgresql_where=sa.text("status IN ('pending', 'running')"))


def downgrade():
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index('ix_rollouts_unfinished')
        batch_op.drop_column('runner_expires_at')
        batch_op.drop_column('runner')
