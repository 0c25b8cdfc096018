"""The remote half of one node's deployment: upload a release beside the live one,
swap the link with one atomic rename, test, reload, verify, and put the previous
release back, byte for byte, on any failure.  Works on a :class:`NodeJob` detached from
the database, so that a slow node never holds a database connection.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shlex
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.connector import (
    CommandResult,
    ConnectorError,
    HostKeyChanged,
    RemoteFileError,
    SSHConnectionPool,
    SSHTarget,
    check_tree_path,
)
from app.services.deployments.verify import OldGeneration, verify_sites, wait_for_probe

logger = logging.getLogger(__name__)

RELEASE_PREFIX = "v"
# The staging command's answers besides 0: the live release does not hold the files
# the control plane last sent (send everything), the managed directory is still the
# operator's own (adopt it first), the release on the node does not hold exactly
# the files sent, the link does not point at the release the control plane last
# swapped in (look at the node before trusting anything).
NEEDS_FULL, NOT_A_LINK, MISMATCH, NOT_KNOWN = 75, 76, 77, 78
# Builds the new release beside the live one in one command: the releases left by
# earlier deployments go (never the live one), the live release is copied as hard
# links (unchanged files cost nothing to send), the removed files go, the archive on
# stdin (changed files only; every file for a full upload) is unpacked with each file
# unlinked first so that no file of the live release is written through a link, and
# the link is swapped with one rename.  Every value arrives as a positional word;
# none is shell code.
#
# ``known`` names the release the control plane last swapped in on this node (its
# name carries its version and digest): when the link still points at it, it is
# trusted to hold that version's files and nothing is read to check it, so a
# one-site change costs a handful of processes on the node.  Without it (a node whose
# release is unknown, or flagged as drifted), the live release's files are hashed
# first and the result is checked against the digest of the whole desired set.
STAGE_SCRIPT = r"""set -eu
link=$1 releases=$2 new=$3 base=$4 want=$5 known=$6
shift 6
umask 022
digest() {
  (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum \
    | sha256sum | cut -d" " -f1)
}
if [ -n "$known" ]; then
  [ -L "$link" ] && [ "$link" -ef "$known" ] || exit 78
  live=$known
else
  live=$(readlink -- "$link" || true)
  case "$live" in ""|/*) ;; *) live="$(dirname -- "$link")/$live" ;; esac
fi
# The node already runs this very release (a control plane restored from a backup
# numbers its versions again): nothing to build, nothing to swap.
if [ "$live" = "$new" ] && [ -d "$new" ] && [ "$(digest "$new")" = "$want" ]; then
  exit 0
fi
[ -d "$releases" ] || mkdir -p -- "$releases"
for old in "$releases"/v*; do
  [ -e "$old" ] || [ -L "$old" ] || continue
  [ "$old" = "$live" ] || rm -rf -- "$old"
done
if [ -e "$link" ] && [ ! -L "$link" ]; then exit 76; fi
staging="$new.partial"
if [ -n "$base" ]; then
  case "$live" in "$releases"/v*) ;; *) exit 75 ;; esac
  [ -n "$known" ] || [ "$(digest "$live")" = "$base" ] || exit 75
  cp -al -- "$live" "$staging"
  cd "$staging"
  if [ "$#" -gt 0 ]; then
    rm -f -- "$@"
    find . -mindepth 1 -type d -empty -delete
  fi
else
  mkdir -- "$staging"
  cd "$staging"
fi
tar -x -U --no-same-owner -f -
[ -n "$known" ] || [ "$(digest .)" = "$want" ] || exit 77
cd /
mv -T -- "$staging" "$new"
ln -s -- "$new" "$new.link"
mv -T -- "$new.link" "$link"
"""


def release_name(version: int, digest: str) -> str:
    """A release's directory name: its version and the digest of its files, so that
    the control plane knows, from its records alone, which release a node runs."""
    return f"{RELEASE_PREFIX}{version}-{digest[:12]}"


def manifest_digest(manifest: Mapping[str, str]) -> str:
    """What the staging command computes on the node for a release holding the files
    of ``manifest`` ({path: SHA-256 of the file}): ``sha256sum``'s listing of them in
    byte order, hashed.  The same files give the same digest, computed here from the
    hashes alone."""
    listing = "".join(f"{manifest[path]}  ./{path}\n"
                      for path in sorted(manifest, key=lambda p: p.encode()))
    return hashlib.sha256(listing.encode()).hexdigest()


def tar_archive(files: Mapping[str, bytes]) -> bytes:
    """The files as a tar archive: regular files 0644 owned by no one in particular
    (the node's user owns them once unpacked), in path order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(files[path]), 0o644, 0
            archive.addfile(info, io.BytesIO(files[path]))
    return buffer.getvalue()


ADOPTED_PREFIX = "adopted-"


class StepFailed(Exception):
    """A step failed; ``restored`` says whether the previous release is live again."""

    def __init__(self, step: str, message: str, *, restored: bool, after_swap: bool) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.restored = restored
        self.after_swap = after_swap
        # The node came back with another host key while its previous release was
        # being put back (that is why it could not be).
        self.key_changed: HostKeyChanged | None = None


@dataclass
class NodeJob:
    """Everything the remote part needs, detached from the database session."""

    target: SSHTarget
    config_dir: str
    files: dict[str, str]
    # {path: SHA-256} of ``files``.
    manifest: dict[str, str]
    release_name: str
    test_command: list[str]
    reload_command: list[str]
    verify_address: str
    verify_port: int
    # (site id, domain) of the sites this deployment changes: the ones to ask for.
    verify_hosts: list[tuple[int, str]]
    probe: str | None
    # What the probe answers while the last deployed version runs (None if unknown).
    previous_probe: str | None
    # The manifest of the version the node last took (None if unknown): the release
    # is built from the live one with only the difference sent, if the node still
    # holds exactly these files.
    base_manifest: dict[str, str] | None
    # The release directory (absolute) of that version, trusted without reading the
    # node when the link points at it (None: the node's release is looked at first).
    known_release: str | None
    command_timeout: float
    verify_timeout: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    on_step: Callable[[str], None] = lambda step: None
    # Per verified site: "" when the proxy answered it well, else a warning for its
    # owner (its backend answered 5xx, say).
    site_warnings: dict[int, str] = field(default_factory=dict)


def output_of(result: Any) -> str:
    text = (result.stderr or "") + (result.stdout or "")
    return text.strip()[-2000:] or f"exit status {result.exit_status}"


class _Then:
    """Steps whose commands run one after another in one remote session (the test
    and the reload), in the staging command's session when it can, each timed and
    recorded as a step of its own."""

    def __init__(self, release: Release, steps: list[tuple[str, list[str]]]) -> None:
        self.release = release
        self.steps = steps
        # The steps' results once they ran (None: they have not).
        self.results: list[CommandResult] | None = None
        self._marks: list[float] = []  # when each step started
        self._lost: list[Exception] = []

    def after(self, first: list[str], stdin: bytes, details: dict[str, Any]) -> CommandResult:
        """Run ``first`` (the staging command, reading ``stdin``) and, if it succeeds,
        the steps in the same session.  Returns the result of ``first``, whose own
        time goes in its step's ``details``; the steps' results are kept in
        :attr:`results` when ``first`` succeeded (or the session was lost), for
        :meth:`record`."""
        self.release.reloaded = True  # the reload may start before we hear of the test
        started = time.monotonic()
        try:
            results = self._chain([first, *(argv for _, argv in self.steps)], stdin, offset=1)
        except Exception:
            self.results = []
            raise
        finally:
            if self._marks:
                details["seconds"] = round(self._marks[0] - started, 4)
        if not results[0].ok:
            self.release.reloaded = False  # the session stopped at the staging command
            return results[0]
        self.results = results[1:]
        return results[0]

    def alone(self) -> None:
        """Run the steps in a session of their own and record them."""
        release, (name, _) = self.release, self.steps[0]
        release.current = name
        release.job.on_step(name)  # a lost lease stops everything before it runs
        release.reloaded = True  # the reload may start before we hear of the test
        self._marks = [time.monotonic()]
        try:
            self.results = self._chain([argv for _, argv in self.steps], None, offset=0)
        except Exception:
            self.results = []
            self.record(raise_lost=False)
            raise
        self.record()

    def _chain(self, commands: list[list[str]], stdin: bytes | None,
               offset: int) -> list[CommandResult]:
        """Run the commands, the step ``index - offset`` starting at command ``index``."""
        release = self.release

        def starts(index: int) -> None:
            self._marks.append(time.monotonic())
            name = self.steps[index - offset][0]
            if name == "reload":
                release.reload_starts()
            release.current = name
            try:
                release.job.on_step(name)
            except Exception as exc:  # raised once the session is over
                self._lost.append(exc)

        return release.pool.run_chain(release.job.target, commands, stdin=stdin,
                                      timeout=release.job.command_timeout, on_next=starts)

    def record(self, *, raise_lost: bool = True) -> None:
        """Record each step that started, with its time and outcome.

        :raises Exception: what a step's progress callback raised meanwhile."""
        end = time.monotonic()
        results = self.results or []
        for index, mark in enumerate(self._marks):
            following = self._marks[index + 1] if index + 1 < len(self._marks) else end
            self.release.job.steps.append({
                "step": self.steps[index][0], "seconds": round(following - mark, 4),
                "ok": len(results) > index and results[index].ok})
        self._marks = []
        if self._lost and raise_lost:
            raise self._lost[0]


class Release:
    """The remote half of one node's deployment (upload, swap, test, reload, verify,
    and putting things back)."""

    def __init__(self, pool: SSHConnectionPool, job: NodeJob) -> None:
        self.pool = pool
        self.job = job
        self.config_dir = job.config_dir.rstrip("/")
        self.releases = self.config_dir + ".releases"
        self.release = f"{self.releases}/{job.release_name}"
        self.previous: str | None = None
        self.adopted = False
        self.swapped = False
        self.reloaded = False
        self.current = ""
        self.old_generation: OldGeneration | None = None
        self.key_changed: HostKeyChanged | None = None
        self._said = ""

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a step; what the body puts in the dictionary it gets is recorded too."""
        self.current = name
        self.job.on_step(name)
        started = time.monotonic()
        ok = False
        details: dict[str, Any] = {}
        try:
            yield details
            ok = True
        finally:
            self.job.steps.append({"step": name, "seconds": round(time.monotonic() - started, 4),
                                   "ok": ok, **details})

    def run(self) -> None:
        """:raises StepFailed: for any failure, after putting the previous release back
            once the swap happened (a lost connection, an expired lease or a timeout
            mid-way included: nothing half-deployed stays live)."""
        try:
            self._steps()
        except StepFailed as failure:
            failure.key_changed = self.key_changed
            raise
        except HostKeyChanged as exc:
            if not self.swapped:
                raise  # nothing was sent; the caller records the key to accept
            # Reconnecting to put the previous release back meets the same key, but
            # try; whether it worked decides whether the node is flagged.
            restored = self.restore(reload=self.reloaded)
            raise StepFailed(self.current, describe_failure(exc), restored=restored,
                             after_swap=True) from exc
        except Exception as exc:
            restored = self.restore(reload=self.reloaded) if self.swapped else True
            lost = StepFailed(self.current, describe_failure(exc), restored=restored,
                              after_swap=self.swapped)
            lost.key_changed = self.key_changed
            raise lost from exc
        finally:
            if self.old_generation is not None:
                self.old_generation.close()
        # The previous release stays until the next deployment's staging command
        # sweeps it: an operator can still look at it, and no request is spent now.

    def test_only(self) -> tuple[bool, str]:
        """Stage the release, run the node's test command on it and put the previous
        release back without a reload: what the node thinks of a candidate
        configuration, while the proxy keeps running the live one.  Returns whether
        the test passed, and what it printed.

        :raises StepFailed: when the stage or the restore fails."""
        try:
            self._stage()
            result = self.pool.run(self.job.target, self.job.test_command,
                                   timeout=self.job.command_timeout)
        except StepFailed:
            raise
        except Exception as exc:
            restored = self.restore(reload=False) if self.swapped else True
            raise StepFailed(self.current, describe_failure(exc), restored=restored,
                             after_swap=self.swapped) from exc
        if not self.restore(reload=False):
            raise StepFailed("test", "could not put the previous release back after a test",
                             restored=False, after_swap=True)
        return result.ok, output_of(result)

    def _steps(self) -> None:
        job = self.job
        if job.probe is not None:
            # A connection the running workers hold, to see them retire.
            self.old_generation = OldGeneration.attach(job.verify_address, job.verify_port,
                                                       min(job.verify_timeout, 2.0),
                                                       job.previous_probe)
        then = _Then(self, [("test", job.test_command), ("reload", job.reload_command)])
        self._stage(then)
        if then.results is None:  # not run with the staging command
            then.alone()
        self._judge(then.results or [])
        with self.step("verify"):
            problem = wait_for_probe(job.verify_address, job.verify_port, job.probe,
                                     job.verify_timeout, self.old_generation)
            if not problem:
                problem, job.site_warnings = verify_sites(
                    job.verify_address, job.verify_port, job.verify_hosts, job.verify_timeout)
            if problem:
                self._fail("verify", problem, reload=True)

    def _stage(self, then: _Then | None = None) -> None:
        """Build the release on the node and swap the link to it, in one command: from
        the live release plus the changed files when the node holds what it last took,
        else from every file.  The operator's own directory, on our first deployment,
        is kept aside first (:meth:`_adopt`).

        ``then`` (the test and the reload) runs in the same remote session as the
        staging command when the node holds the release the control plane last sent,
        the usual case: one session on the node instead of two.  Otherwise its
        ``results`` stay None and the caller runs it."""
        try:
            with self.step("upload") as details:
                adopt = self._upload(details, then)
        except BaseException:
            if then is not None and then.results is not None:
                then.record(raise_lost=False)
            raise
        if then is not None and then.results is not None:
            then.record()
        if adopt:
            self._adopt()

    def _upload(self, details: dict[str, Any], then: _Then | None) -> bool:
        """The staging command and its fallbacks; returns whether the managed
        directory must be adopted first."""
        job = self.job
        # The previous release is known before anything changes, so that a lost
        # connection can be undone: from the records, or else from the node.
        known = job.known_release if job.base_manifest is not None else None
        self.swapped = True  # the command may swap before we hear back from it
        status = NOT_KNOWN
        if known:
            self.previous = known
            status = self._send(details, job.base_manifest, known, then)
        if status == NOT_KNOWN:
            self.swapped = False
            self.previous = self.pool.readlink(job.target, self.config_dir)
            self.swapped = True
            status = self._send(details, job.base_manifest)
        if status == NEEDS_FULL and job.base_manifest is not None:
            status = self._send(details, None)
        if status == NOT_A_LINK:
            self.swapped = False
            details["mode"] = "adopt"
            return True
        if status == MISMATCH:
            self.swapped = False
            raise StepFailed("upload", "the release on the node does not hold exactly the "
                             "files sent", restored=True, after_swap=False)
        if status != 0:
            self.swapped = False
            raise StepFailed("upload", f"could not build the release: {self._said}",
                             restored=True, after_swap=False)
        return False

    def _send(self, details: dict[str, Any], base: Mapping[str, str] | None,
              known: str = "", then: _Then | None = None) -> int:
        """Run the staging command with the files ``base`` (a manifest) lacks, and
        ``then`` after it in the same session if it succeeds; returns its exit status."""
        files, manifest = self.job.files, self.job.manifest
        if base is None:
            sent = {path: text.encode() for path, text in files.items()}
            removed: list[str] = []
            base_digest = ""
        else:
            sent = {path: files[path].encode() for path, digest in manifest.items()
                    if base.get(path) != digest}
            removed = sorted(path for path in base if path not in manifest)
            base_digest = manifest_digest(base)
        # Names reach tar and rm on the node: none may point outside the release.
        for path in (*sent, *removed):
            check_tree_path(path)
        archive = tar_archive(sent)
        details.update(mode="incremental" if base is not None else "full", files=len(sent),
                       removed=len(removed), bytes=len(archive))
        argv = ["sh", "-c", STAGE_SCRIPT, "sh", self.config_dir, self.releases, self.release,
                base_digest, manifest_digest(manifest), known, *removed]
        if then is None:
            result = self.pool.run(self.job.target, argv, stdin=archive,
                                   timeout=self.job.command_timeout)
        else:
            result = then.after(argv, archive, details)
        self._said = output_of(result)
        return result.exit_status

    def _adopt(self) -> None:
        """Our first deployment to a node whose managed directory is still a plain
        directory: it is kept aside, intact, and the release is uploaded over SFTP."""
        pool, target, job = self.pool, self.job.target, self.job
        with self.step("adopt"):
            kind = pool.kind(target, self.config_dir)
            if kind == "file":
                raise StepFailed("upload", f"{self.config_dir} is a file, not a directory",
                                 restored=True, after_swap=False)
            pool.mkdir_p(target, self.releases)
            pool.upload_tree(target, self.release,
                             {path: text.encode() for path, text in job.files.items()})
        with self.step("swap"):
            if kind == "dir":
                # Our first deployment: the operator's directory is kept aside, intact.
                self.previous = f"{self.releases}/{ADOPTED_PREFIX}{self.job.release_name}"
                pool.rename(target, self.config_dir, self.previous)
                self.adopted = True
            self.swapped = True
            pool.symlink_swap(target, self.config_dir, self.release)

    def reload_starts(self) -> None:
        """The reload is about to start: a connection of the old generation closed
        before now was not closed by it (a keep-alive timeout, another reload), so it
        says nothing of this one."""
        self.reloaded = True
        if self.old_generation is not None and self.old_generation.wait_retired(0):
            self.old_generation.close()
            self.old_generation = None

    def _judge(self, results: list[CommandResult]) -> None:
        """Fail the deployment (putting the previous release back) if the test or the
        reload did."""
        job = self.job
        if not results or not results[0].ok:
            said = output_of(results[0]) if results else "it did not run"
            self._fail("test", f"the node's test command refused the configuration: {said}",
                       reload=False)
        if len(results) < 2 or not results[1].ok:
            said = output_of(results[1]) if len(results) > 1 else "it did not run"
            self._fail("reload", f"reload failed ({shlex.join(job.reload_command)}): {said}",
                       reload=True, reload_refused=True)

    def _remove(self, release: str) -> None:
        """Remove a release of ours with one command (a release holds a file or more
        per site: one request per file would cost a big pool seconds).

        :raises RemoteFileError: when the node refuses."""
        result = self.pool.run(self.job.target, ["rm", "-rf", "--", release],
                               timeout=self.job.command_timeout)
        if not result.ok:
            raise RemoteFileError(f"node {self.job.target.node_id}: could not remove "
                                  f"{release}: {output_of(result)}", None)

    def _fail(self, step: str, message: str, *, reload: bool,
              reload_refused: bool = False) -> None:
        restored = self.restore(reload=reload, reload_refused=reload_refused)
        raise StepFailed(step, message, restored=restored, after_swap=True)

    def restore(self, *, reload: bool, reload_refused: bool = False) -> bool:
        """Put the previous release back (and reload it when the new one may have been
        loaded).  Returns whether that worked: a reload that fails here means the proxy
        may still run the new release, unless the node refused the deployment's own
        reload too (``reload_refused``: it never left the previous one).

        Removing the failed release is only tidying up: when that fails (a stall, a
        dropped connection), the release stays for the next deployment's sweep and the
        previous release is still reloaded, or the proxy would keep running the one
        that failed."""
        pool, target = self.pool, self.job.target
        try:
            if self.swapped:
                if self.adopted and self.previous:
                    pool.remove_tree(target, self.config_dir)
                    pool.rename(target, self.previous, self.config_dir)
                elif self.previous:
                    pool.symlink_swap(target, self.config_dir, self.previous)
                else:
                    pool.remove_tree(target, self.config_dir)
        except HostKeyChanged as exc:
            logger.error("node %s: could not put the previous release back: %s",
                         target.node_id, exc)
            self.key_changed = exc
            return False
        except Exception:
            logger.exception("node %s: could not put the previous release back",
                             target.node_id)
            return False
        try:
            self._remove(self.release)
        except Exception:
            logger.warning("node %s: could not remove the failed release %s; the next "
                           "deployment's sweep does", target.node_id, self.release,
                           exc_info=True)
        if not reload:
            return True
        try:
            result = pool.run(target, self.job.reload_command,
                              timeout=self.job.command_timeout)
        except Exception:
            logger.exception("node %s: could not reload the previous release", target.node_id)
            return False
        if not result.ok and not reload_refused:
            logger.error("node %s: reloading the previous release failed: %s",
                         target.node_id, output_of(result))
            return False
        return True


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, HostKeyChanged):
        return (f"{exc}; an administrator must check the node and accept the new key "
                f"before it can be deployed to")
    if isinstance(exc, ConnectorError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__
