"""config versions keep what changed since an earlier version

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08

A version may name a base (an earlier version of the same node) and keep only the
manifest entries that differ from it; ``depth`` counts the bases up to a whole
manifest.  Versions recorded before keep their whole manifests (depth 0).  The
downgrade gives every version its whole manifest again.

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('base_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('depth', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.create_foreign_key(batch_op.f('fk_config_versions_base_id_config_versions'),
                                    'config_versions', ['base_id'], ['id'],
                                    ondelete='CASCADE')


def downgrade():
    conn = op.get_bind()
    versions = sa.table('config_versions', sa.column('id', sa.Integer()),
                        sa.column('base_id', sa.Integer()), sa.column('manifest', sa.JSON()))
    rows = {row.id: (row.base_id, row.manifest)
            for row in conn.execute(sa.select(versions.c.id, versions.c.base_id,
                                              versions.c.manifest))}
    whole: dict[int, dict] = {}

    def resolve(version_id):
        chain = []
        while version_id not in whole and rows[version_id][0] is not None:
            chain.append(version_id)
            version_id = rows[version_id][0]
        if version_id not in whole:
            whole[version_id] = dict(rows[version_id][1])
        for later in reversed(chain):
            manifest = dict(whole[version_id])
            for path, digest in rows[later][1].items():
                if digest is None:
                    manifest.pop(path, None)
                else:
                    manifest[path] = digest
            whole[later] = manifest
            version_id = later

    for version_id, (base_id, _) in rows.items():
        if base_id is not None:
            resolve(version_id)
            conn.execute(versions.update().where(versions.c.id == version_id)
                         .values(manifest=whole[version_id]))
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_config_versions_base_id_config_versions'),
                                 type_='foreignkey')
        batch_op.drop_column('depth')
        batch_op.drop_column('base_id')
