"""A real redis-server on loopback, the task engine's broker in tests and benchmarks:
nothing persisted, started and stopped by its PID (tests/processes.py)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.processes import free_port, listening, require_binary, start, stop


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
