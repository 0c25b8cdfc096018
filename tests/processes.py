"""Real components as processes, one way: start one, wait until it is ready, stop it by
PID.  A binary that is missing fails the test that needs it, loudly: real components
are never skipped (the README's test command installs every one)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

#: Where daemons live (sshd, knotd, keymgr): not on every PATH.
SYSTEM_DIRECTORIES = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: How much of a log a failed start quotes.
LOG_TAIL = 4000


def require_binary(name: str) -> str:
    """The binary's path (PATH first, then the system directories).

    :raises pytest.fail.Exception: when it is not installed.
    """
    path = shutil.which(name) or next(
        (candidate for directory in SYSTEM_DIRECTORIES
         if os.access(candidate := os.path.join(directory, name), os.X_OK)), None)
    if not path:
        pytest.fail(f"'{name}' is not installed: run the README's test command, which installs it")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def accepts(host: str, port: int) -> bool:
    """Whether ``host:port`` takes a TCP connection now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


#: Whether a started process is ready (it is given the process).
Ready = Callable[[subprocess.Popen[bytes]], bool]


def listening(*addresses: tuple[str, int]) -> Ready:
    """Ready once every ``(host, port)`` takes connections."""
    return lambda _process: all(accepts(host, port) for host, port in addresses)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something already started (a thread's server, or a running process's
    new listener) takes connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while not accepts(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def start(args: Sequence[str], *, ready: Ready, log: Path | None = None,
          timeout: float = 10.0, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``args`` and wait until ``ready(process)``; its output is appended to ``log`` (or
    discarded, unless ``popen`` routes it elsewhere).  A process that exits first, is
    not ready in time or whose wait is interrupted is stopped again: a caller whose
    start failed has nothing to stop.

    :raises RuntimeError: naming the command, with the end of its log.
    """
    if log is None:
        popen.setdefault("stdout", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.DEVNULL)
        process = subprocess.Popen(list(args), **popen)
    else:
        with log.open("ab") as handle:
            process = subprocess.Popen(list(args), stdout=handle, stderr=subprocess.STDOUT,
                                       **popen)
    try:
        deadline = time.monotonic() + timeout
        while not ready(process):
            if process.poll() is not None:
                raise RuntimeError(_failure(args, f"exited with status {process.returncode}",
                                            log))
            if time.monotonic() > deadline:
                raise RuntimeError(_failure(args, f"was not ready after {timeout}s", log))
            time.sleep(0.02)
    except BaseException:
        stop(process)
        raise
    return process


def _failure(args: Sequence[str], why: str, log: Path | None) -> str:
    tail = log.read_text(errors="replace")[-LOG_TAIL:] if log and log.exists() else ""
    return f"{os.path.basename(args[0])} {why}" + (f":\n{tail}" if tail else "")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
         timeout: float = 10.0) -> None:
    """Stop the process by its PID with ``sig``, SIGKILL if it outlives ``timeout``, and
    reap it (it is our child)."""
    if process.poll() is None:
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
