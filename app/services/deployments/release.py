"""The remote half of one node's deployment: upload a release beside the live one,
swap the link with one atomic rename, test, reload, verify, and put the previous
release back, byte for byte, on any failure.  Works on a :class:`NodeJob` detached from
the database, so that a slow node never holds a database connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.connector import (
    CommandResult,
    ConnectorError,
    HostKeyChanged,
    SSHPool,
    SSHTarget,
)
from app.services.deployments.verify import OldGeneration, verify_sites, wait_for_probe

logger = logging.getLogger(__name__)

RELEASE_PREFIX = "v"


ADOPTED_PREFIX = "adopted-"


class StepFailed(Exception):
    """A step failed; ``restored`` says whether the previous release is live again."""

    def __init__(self, step: str, message: str, *, restored: bool, after_swap: bool) -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.restored = restored
        self.after_swap = after_swap


@dataclass
class NodeJob:
    """Everything the remote part needs, detached from the database session."""

    target: SSHTarget
    config_dir: str
    files: dict[str, bytes]
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


class Release:
    """The remote half of one node's deployment (upload, swap, test, reload, verify,
    and putting things back)."""

    def __init__(self, pool: SSHPool, job: NodeJob) -> None:
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

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.current = name
        self.job.on_step(name)
        started = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.job.steps.append({"step": name, "seconds": round(time.monotonic() - started, 4),
                                   "ok": ok})

    def run(self) -> None:
        """:raises StepFailed: for any failure, after putting the previous release back
            once the swap happened (a lost connection, an expired lease or a timeout
            mid-way included: nothing half-deployed stays live)."""
        try:
            self._steps()
        except StepFailed:
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
            raise StepFailed(self.current, describe_failure(exc), restored=restored,
                             after_swap=self.swapped) from exc
        finally:
            if self.old_generation is not None:
                self.old_generation.close()
        # The new release is live and verified: a failure from here on is no reason to
        # roll back (the next deployment's sweep removes what is left).
        try:
            with self.step("cleanup"):
                if self.previous and not self.adopted and self._ours(self.previous):
                    self.pool.remove_tree(self.job.target, self._absolute(self.previous))
        except Exception:
            logger.warning("node %s: could not remove the previous release",
                           self.job.target.node_id, exc_info=True)

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
        self._stage()
        self._test_and_reload()
        with self.step("verify"):
            problem = wait_for_probe(job.verify_address, job.verify_port, job.probe,
                                     job.verify_timeout, self.old_generation)
            if not problem:
                problem, job.site_warnings = verify_sites(
                    job.verify_address, job.verify_port, job.verify_hosts, job.verify_timeout)
            if problem:
                self._fail("verify", problem, reload=True)

    def _stage(self) -> None:
        """Upload the release and swap the link to it (the operator's directory kept
        aside on our first deployment)."""
        pool, target, job = self.pool, self.job.target, self.job
        with self.step("upload"):
            # Usually a link already (one request); otherwise, what it is.
            self.previous = pool.readlink(target, self.config_dir)
            kind = "link" if self.previous is not None else pool.kind(target, self.config_dir)
            if kind == "file":
                raise StepFailed("upload", f"{self.config_dir} is a file, not a directory",
                                 restored=True, after_swap=False)
            pool.mkdir_p(target, self.releases)
            self._sweep(kind)
            pool.upload_tree(target, self.release, job.files)
        with self.step("swap"):
            if kind == "dir":
                # Our first deployment: the operator's directory is kept aside, intact.
                self.previous = f"{self.releases}/{ADOPTED_PREFIX}{self.job.release_name}"
                pool.rename(target, self.config_dir, self.previous)
                self.adopted = True
            self.swapped = True
            pool.symlink_swap(target, self.config_dir, self.release)

    def _test_and_reload(self) -> None:
        """The test command, then the reload only if it passed, in one remote session
        (one shell on the node instead of two); each step timed on its own."""
        pool, target, job = self.pool, self.job.target, self.job
        if job.probe is not None:
            # A connection the running workers hold, to see them retire.
            self.old_generation = OldGeneration.attach(job.verify_address, job.verify_port,
                                                       min(job.verify_timeout, 2.0),
                                                       job.previous_probe)
        self.current = "test"
        job.on_step("test")
        started = time.monotonic()
        reload_started: list[float] = []
        lost: list[Exception] = []

        def reloading(_index: int) -> None:
            reload_started.append(time.monotonic())
            self.current = "reload"
            try:
                job.on_step("reload")
            except Exception as exc:  # raised once the session is over
                lost.append(exc)

        def record(results: list[CommandResult]) -> None:
            now = time.monotonic()
            middle = reload_started[0] if reload_started else now
            job.steps.append({"step": "test", "seconds": round(middle - started, 4),
                              "ok": bool(results) and results[0].ok})
            if reload_started:
                job.steps.append({"step": "reload", "seconds": round(now - middle, 4),
                                  "ok": len(results) > 1 and results[1].ok})

        self.reloaded = True  # the reload may start before we hear that the test passed
        try:
            results = pool.run_chain(target, [job.test_command, job.reload_command],
                                     timeout=job.command_timeout, on_next=reloading)
        except Exception:
            record([])
            raise
        record(results)
        if lost:
            raise lost[0]
        if not results[0].ok:
            self._fail("test", f"the node's test command refused the configuration: "
                               f"{output_of(results[0])}", reload=False)
        if not results[1].ok:
            self._fail("reload", f"reload failed: {output_of(results[1])}", reload=True,
                       reload_refused=True)

    def _absolute(self, link: str) -> str:
        return link if link.startswith("/") else f"{self.config_dir.rsplit('/', 1)[0]}/{link}"

    def _ours(self, path: str) -> bool:
        return self._absolute(path).startswith(f"{self.releases}/{RELEASE_PREFIX}")

    def _sweep(self, kind: str | None) -> None:
        """Remove releases left by interrupted deployments (never the live one, never
        an adopted operator directory)."""
        live = self._absolute(self.previous) if kind == "link" and self.previous else None
        for name in self.pool.listdir(self.job.target, self.releases):
            path = f"{self.releases}/{name}"
            if name.startswith(RELEASE_PREFIX) and path != live:
                self.pool.remove_tree(self.job.target, path)

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
        except Exception:
            logger.exception("node %s: could not put the previous release back",
                             target.node_id)
            return False
        try:
            pool.remove_tree(target, self.release)
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
