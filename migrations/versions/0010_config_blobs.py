"""config versions keep a manifest; each file content is stored once

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

Every version's encrypted JSON copy of its files becomes a manifest {path: sha256}
plus one encrypted ``config_blobs`` row per distinct content.  The ``files`` column is
dropped, not emptied: it would otherwise keep the full copies (private keys
included) that this revision exists to stop writing, and a column the model no
longer has would still be rotated as a secret and checked by autogenerate.
Downgrade rebuilds ``files`` from the blobs.  Secrets are decrypted and encrypted
again with the app's own keys (``ENCRYPTION_KEYS``), so run it with them set.

"""
import hashlib
import json

from alembic import op
import sqlalchemy as sa
from flask import current_app


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

# Versions converted per round, and hashes per IN (...) list.
BATCH = 200
CHUNK = 1000

versions = sa.table(
    'config_versions',
    sa.column('id', sa.Integer()),
    sa.column('files', sa.Text()),
    sa.column('manifest', sa.JSON()),
)
blobs = sa.table(
    'config_blobs',
    sa.column('id', sa.Integer()),
    sa.column('sha256', sa.String(64)),
    sa.column('content', sa.Text()),
)


def upgrade():
    op.create_table('config_blobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_config_blobs')),
    sa.UniqueConstraint('sha256', name=op.f('uq_config_blobs_sha256'))
    )
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('manifest', sa.JSON(), nullable=True))
    _files_to_blobs(op.get_bind())
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.alter_column('manifest', existing_type=sa.JSON(), nullable=False)
        batch_op.drop_column('files')


def downgrade():
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('files', sa.Text(), nullable=True))
    _blobs_to_files(op.get_bind())
    with op.batch_alter_table('config_versions', schema=None) as batch_op:
        batch_op.alter_column('files', existing_type=sa.Text(), nullable=False)
        batch_op.drop_column('manifest')
    op.drop_table('config_blobs')


def _keys():
    return current_app.extensions['rpcc_fernet']


def _version_ids(conn):
    ids = list(conn.scalars(sa.select(versions.c.id).order_by(versions.c.id)))
    return [ids[start:start + BATCH] for start in range(0, len(ids), BATCH)]


def _files_to_blobs(conn):
    keys = _keys()
    stored = set()
    for batch in _version_ids(conn):
        rows = conn.execute(sa.select(versions.c.id, versions.c.files)
                            .where(versions.c.id.in_(batch))).all()
        manifests, new_blobs = [], []
        for version_id, token in rows:
            files = json.loads(keys.decrypt(token.encode()).decode())
            manifest = {}
            for path, text in files.items():
                digest = hashlib.sha256(text.encode()).hexdigest()
                manifest[path] = digest
                if digest not in stored:
                    stored.add(digest)
                    new_blobs.append({'sha256': digest,
                                      'content': keys.encrypt(text.encode()).decode()})
            manifests.append({'version_id': version_id, 'new_manifest': manifest})
        if new_blobs:
            conn.execute(blobs.insert(), new_blobs)
        conn.execute(versions.update().where(versions.c.id == sa.bindparam('version_id'))
                     .values(manifest=sa.bindparam('new_manifest', type_=sa.JSON())), manifests)


def _blobs_to_files(conn):
    keys = _keys()
    for batch in _version_ids(conn):
        rows = conn.execute(sa.select(versions.c.id, versions.c.manifest)
                            .where(versions.c.id.in_(batch))).all()
        hashes = sorted({digest for _, manifest in rows for digest in manifest.values()})
        contents = {}
        for start in range(0, len(hashes), CHUNK):
            for digest, token in conn.execute(
                    sa.select(blobs.c.sha256, blobs.c.content)
                    .where(blobs.c.sha256.in_(hashes[start:start + CHUNK]))):
                contents[digest] = keys.decrypt(token.encode()).decode()
        updates = []
        for version_id, manifest in rows:
            files = {path: contents[digest] for path, digest in manifest.items()}
            updates.append({'version_id': version_id,
                            'new_files': keys.encrypt(json.dumps(files).encode()).decode()})
        if updates:
            conn.execute(versions.update().where(versions.c.id == sa.bindparam('version_id'))
                         .values(files=sa.bindparam('new_files')), updates)
