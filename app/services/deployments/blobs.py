"""The files of config versions, stored by content: a version keeps a manifest
{path: sha256}, and each distinct content is one ``config_blobs`` row however many
versions and nodes carry it.  Recording a pool's versions after a one-site change
then adds that site's files and the manifests, not a copy of the pool per node.

Blobs are only ever added, so a hash named by a recorded manifest is always stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from app.extensions import db
from app.models import ConfigBlob

# Hashes per ``IN (...)`` list: well within every supported database's bind limit.
CHUNK = 1000

# An insert that skips a blob another transaction stored first (two rollouts racing
# with the same new file), per dialect.
_INSERTS: dict[str, Callable[..., Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


def content_hash(content: str | bytes) -> str:
    """The name of a content: the SHA-256 of its (UTF-8) bytes, as ``sha256sum`` on
    the node prints it for the file, so that a node's files compare by hash."""
    data = content.encode() if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()


def store_files(file_sets: Sequence[Mapping[str, str]],
                known: Sequence[Mapping[str, str]] | None = None,
                stored: Collection[str] = frozenset()) -> list[dict[str, str]]:
    """Store the contents of these file sets that are not stored yet and return each
    set's manifest, in order.  One lookup (per :data:`CHUNK` distinct hashes) and one
    bulk insert for all the sets: the nodes of a pool share most of their files.

    :param known: the sets' manifests when the caller hashed the files already.
    :param stored: hashes known to be stored (those a recorded manifest names), which
        are not looked up: a one-site change then asks about that site's files, not
        the pool's.

    Runs in the caller's transaction and does not commit, so that the blobs and the
    versions naming them are written together."""
    manifests: list[dict[str, str]] = []
    contents: dict[str, str] = {}
    # Nodes of a pool share the rendered text of each site: hash each object once.
    hashed: dict[int, tuple[str, str]] = {}
    for index, files in enumerate(file_sets):
        if known is not None:
            manifest = dict(known[index])
            for path, text in files.items():
                contents.setdefault(manifest[path], text)
            manifests.append(manifest)
            continue
        manifest = {}
        for path, text in files.items():
            seen = hashed.get(id(text))
            if seen is None or seen[0] is not text:
                seen = hashed[id(text)] = (text, content_hash(text))
            manifest[path] = seen[1]
            contents.setdefault(seen[1], text)
        manifests.append(manifest)
    unknown = [digest for digest in contents if digest not in stored]
    found = _stored(unknown)
    missing = [{"sha256": digest, "content": contents[digest]}
               for digest in unknown if digest not in found]
    if missing:
        insert = _INSERTS[db.session.get_bind().dialect.name]
        db.session.execute(
            insert(ConfigBlob).on_conflict_do_nothing(index_elements=["sha256"]), missing)
    return manifests


def load_contents(hashes: Collection[str]) -> dict[str, str]:
    """{hash: text} of these blobs, each read and decrypted once.

    :raises LookupError: if one is not stored (the database lost rows).
    """
    contents: dict[str, str] = {}
    for chunk in _chunks(sorted(set(hashes))):
        contents.update(db.session.execute(
            select(ConfigBlob.sha256, ConfigBlob.content)
            .where(ConfigBlob.sha256.in_(chunk))).all())
    lost = set(hashes) - set(contents)
    if lost:
        raise LookupError(f"{len(lost)} file contents of config versions are not stored")
    return contents


def manifest_files(manifests: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The files of each manifest, in order; a content several of them share is
    loaded once (and is the same string in each)."""
    contents = load_contents({digest for manifest in manifests for digest in manifest.values()})
    return [{path: contents[digest] for path, digest in manifest.items()}
            for manifest in manifests]


def _stored(hashes: list[str]) -> set[str]:
    """Which of these hashes are stored already."""
    stored: set[str] = set()
    for chunk in _chunks(hashes):
        stored.update(db.session.scalars(
            select(ConfigBlob.sha256).where(ConfigBlob.sha256.in_(chunk))))
    return stored


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]
