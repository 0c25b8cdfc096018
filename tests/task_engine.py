"""The task engine's processes in tests and benchmarks: a real redis-server on
loopback (its broker, nothing persisted) and real workers (``flask --app wsgi
worker``), each started and stopped by its PID (tests/processes.py)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from tests.components import ROOT
from tests.processes import free_port, listening, require_binary, start, stop
from tests.sshd import below, process_children


class RedisServer:
    """redis-server on ``address``, its files and log in a directory of its own."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address, self.port = address, free_port(address)
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-redis-"))
        try:
            self.process = start(
                [require_binary("redis-server"), "--bind", address, "--port", str(self.port),
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--dir", str(self.root)],
                ready=listening((address, self.port)), log=self.root / "redis.log")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        return f"redis://{self.address}:{self.port}/0"

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.root, ignore_errors=True)


class Worker:
    """``flask --app wsgi worker`` with a prefork pool of ``concurrency`` processes, its
    output in a log of its own; stopped by its PID, and its pool processes by theirs."""

    def __init__(self, env: dict[str, str], name: str, concurrency: int = 2) -> None:
        self.hostname = f"{name}@rpcc-tests"
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-worker-"))
        self.log = self.root / "worker.log"
        ready = f"{self.hostname} ready."
        try:
            self.process = start(
                [os.path.join(ROOT, ".venv", "bin", "flask"), "--app", "wsgi", "worker",
                 "--concurrency", str(concurrency), "--hostname", self.hostname,
                 "--without-mingle", "--without-gossip"],
                ready=lambda _process: ready in self.log.read_text(errors="replace"),
                log=self.log, timeout=90, cwd=ROOT, env=env)
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def pool(self) -> list[int]:
        """The PIDs of its pool processes (the ones that run tasks)."""
        return below(process_children(), self.process.pid)

    def stop(self) -> None:
        pool = self.pool()
        stop(self.process, timeout=60)
        for pid in pool:  # a pool process outliving a worker killed at the deadline
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
