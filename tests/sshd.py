"""A real OpenSSH server as test nodes, and a relay in front of it that fails on cue.

:class:`SshServer` runs ``/usr/sbin/sshd -D`` on loopback (up to 16 addresses, one
port) with its own host key and client key under a temp directory, so tests never
touch the machine's sshd, keys or accounts.  :class:`FaultyRelay` forwards TCP to it
and can drop every connection, drop after a number of bytes, refuse connections or
stall, to simulate networks failing in the middle of an operation.

Other test modules get both through the fixtures at the bottom (import them, or
assign them to a module-level name).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.connector import SSHTarget
from tests.processes import Ready, free_port, require_binary, start, stop

#: OpenSSH's compiled-in limit of listen addresses for one sshd.
MAX_ADDRESSES = 16
START_TIMEOUT = 10.0


def keygen(path: Path, key_type: str = "ed25519", *, pem: bool = False) -> str:
    """Generate a key pair without a passphrase; returns the public key line
    (type and base64, without the comment)."""
    args = [require_binary("ssh-keygen"), "-q", "-t", key_type, "-N", "", "-C", "", "-f", str(path)]
    if key_type == "rsa":
        args += ["-b", "2048"]
    if pem:
        args += ["-m", "PEM"]
    subprocess.run(args, check=True, capture_output=True, timeout=30)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def ssh_keygen_fingerprint(public_key_file: Path) -> str:
    """The SHA256 fingerprint as OpenSSH itself prints it (``ssh-keygen -lf``)."""
    out = subprocess.run([require_binary("ssh-keygen"), "-lf", str(public_key_file)],
                         check=True, capture_output=True, text=True, timeout=30).stdout
    return out.split()[1]


def process_children() -> dict[int, list[int]]:
    """Every process's children, from one pass over /proc (a fleet of hundreds of
    nodes runs thousands of processes: one pass per node would take seconds)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                # The command name may contain spaces and parentheses: split after it.
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def below(children: dict[int, list[int]], pid: int) -> list[int]:
    """Every process below ``pid`` in a map from :func:`process_children`."""
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's per-connection monitors, their session
    children and the commands they run)."""
    return below(process_children(), pid)


def _kill(pids: Sequence[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class SshServer:
    """One sshd on loopback with generated keys, logging in as root.

    :param addresses: listen addresses (127.0.0.x), all on one port.
    :param password: if given, root may also log in with this password.  sshd checks
        passwords against /etc/shadow (UsePAM no); the machine's file is never
        touched: sshd runs in its own mount namespace where a copy holding this
        password is bind-mounted over it.
    :param tiny_fs_bytes: if given, ``tiny_fs`` is a tmpfs of that size, mounted only
        in sshd's own mount namespace: a node whose disk is full.
    :param sftp_umask: if given (e.g. ``"077"``), the umask of the SFTP server, which
        then creates files and directories with modes other than the usual ones.
    """

    def __init__(self, addresses: Sequence[str] = ("127.0.0.1",), *,
                 password: str | None = None, tiny_fs_bytes: int | None = None,
                 sftp_umask: str | None = None) -> None:
        if not 1 <= len(addresses) <= MAX_ADDRESSES:
            raise ValueError(f"one sshd listens on 1 to {MAX_ADDRESSES} addresses")
        self.binary = require_binary("sshd")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation
        self.addresses = tuple(addresses)
        self.password = password
        self.tiny_fs_bytes = tiny_fs_bytes
        self.sftp_umask = sftp_umask
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-sshd-"))
        self.root.chmod(0o755)
        self.tiny_fs = self.root / "tiny"
        self.tiny_fs.mkdir()
        self.home = self.root / "home"  # sessions' HOME: root's ~/.bashrc never runs
        self.home.mkdir()
        self.host_key_path = self.root / "ssh_host_ed25519_key"
        self.client_key_path = self.root / "client_ed25519"
        self.authorized_keys = self.root / "authorized_keys"
        self.log_path = self.root / "sshd.log"
        self.config_path = self.root / "sshd_config"
        self.pid_path = self.root / "sshd.pid"
        self.host_key_line = keygen(self.host_key_path)
        self.authorized_keys.write_text(keygen(self.client_key_path) + "\n")
        self.client_key_text = self.client_key_path.read_text()
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._start(fixed_port=False)

    # -- what tests use ---------------------------------------------------------

    @property
    def host(self) -> str:
        return self.addresses[0]

    @property
    def host_fingerprint(self) -> str:
        return ssh_keygen_fingerprint(Path(f"{self.host_key_path}.pub"))

    def target(self, node_id: int = 1, *, pinned: bool = False, **fields: Any) -> SSHTarget:
        """A target for root on this server with the client key; ``pinned`` pins the
        current host key; ``fields`` override anything (host, port, password, ...)."""
        target = SSHTarget(node_id=node_id, host=self.host, port=self.port, username="root",
                           private_key=self.client_key_text,
                           host_key=self.host_key_line if pinned else None)
        return replace(target, **fields)

    def authorize(self, public_key_line: str) -> None:
        """Accept one more client key (sshd reads the file at each login)."""
        with self.authorized_keys.open("a") as handle:
            handle.write(public_key_line + "\n")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sessions(self) -> list[int]:
        return descendants(self.process.pid) if self.process else []

    def kill_sessions(self) -> None:
        """SIGKILL every connection's sshd (and what it runs), as a crash or an
        OOM kill would: clients see their connection drop."""
        _kill(self.sessions())

    def regenerate_host_key(self) -> str:
        """Restart on the same port with a new ed25519 host key; returns its line."""
        self.stop(remove=False)
        for path in (self.host_key_path, Path(f"{self.host_key_path}.pub")):
            path.unlink()
        self.host_key_line = keygen(self.host_key_path)
        self._start(fixed_port=True)
        return self.host_key_line

    def stop(self, *, remove: bool = True) -> None:
        """Stop sshd by PID, then every session it left behind (sshd does not end
        its children when the listener stops)."""
        if self.process is not None:
            leftovers = self.sessions()
            stop(self.process)
            _kill(leftovers)
            # Killed sessions linger as zombies until init reaps them: wait, so that
            # no sshd is listed once the fixture is done.
            deadline = time.monotonic() + 5
            while any(os.path.exists(f"/proc/{pid}") for pid in leftovers) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            self.process = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- internals --------------------------------------------------------------

    def _config(self) -> str:
        listen = [f"ListenAddress {address}:{self.port}" for address in self.addresses]
        return "\n".join([
            *listen,
            f"HostKey {self.host_key_path}",
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            f"PermitRootLogin {'yes' if self.password else 'prohibit-password'}",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if self.password else 'no'}",
            "KbdInteractiveAuthentication no",
            "MaxStartups 400:30:800",
            "MaxSessions 100",
            "LogLevel VERBOSE",
            f"SetEnv HOME={self.home}",
            "Subsystem sftp internal-sftp"
            + (f" -u {self.sftp_umask}" if self.sftp_umask else ""),
            "UseDNS no",
            "PrintMotd no",
            "PermitTTY no",
            "X11Forwarding no",
            "AllowTcpForwarding local",
            "AllowAgentForwarding no",
        ]) + "\n"

    def _command(self) -> list[str]:
        sshd = [self.binary, "-D", "-f", str(self.config_path), "-e"]
        mounts = []
        if self.password is not None:
            mounts.append(f"mount --bind {shlex.quote(str(self._shadow()))} /etc/shadow")
        if self.tiny_fs_bytes is not None:
            mounts.append(f"mount -t tmpfs -o size={self.tiny_fs_bytes} rpcc-tiny "
                          f"{shlex.quote(str(self.tiny_fs))}")
        if not mounts:
            return sshd
        # unshare and sh exec in place: the PID we keep is sshd's own.
        return [require_binary("unshare"), "--mount", "--propagation", "private",
                "sh", "-c", " && ".join([*mounts, 'exec "$@"']), "sh", *sshd]

    def _shadow(self) -> Path:
        """A copy of /etc/shadow in which root has ``password``."""
        assert self.password is not None
        shadow = self.root / "shadow"
        digest = subprocess.run([require_binary("openssl"), "passwd", "-6", "-stdin"],
                                input=self.password, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()
        lines = Path("/etc/shadow").read_text().splitlines()
        shadow.write_text("".join(
            (":".join([line.split(":")[0], digest, *line.split(":")[2:]])
             if line.startswith("root:") else line) + "\n" for line in lines))
        shadow.chmod(0o600)
        return shadow

    def _start(self, *, fixed_port: bool) -> None:
        """Start on a free port (another one if that was taken meanwhile), or on the
        same port again."""
        attempts = 1 if fixed_port else 3
        for attempt in range(attempts):
            if not fixed_port:
                self.port = free_port(self.addresses[0])
            self.config_path.write_text(self._config())
            try:
                self.process = start(self._command(), ready=self._answering(),
                                     log=self.log_path, timeout=START_TIMEOUT,
                                     stdin=subprocess.DEVNULL)
                return
            except RuntimeError:
                if attempt == attempts - 1:
                    raise

    def _answering(self) -> Ready:
        """Ready once every address has sent its banner: sshd is past accept() for real."""
        pending = list(self.addresses)

        def ready(_process: subprocess.Popen[bytes]) -> bool:
            while pending:
                try:
                    with socket.create_connection((pending[0], self.port), timeout=0.5) as sock:
                        sock.recv(64)
                except OSError:
                    return False
                pending.pop(0)
            return True

        return ready


class FaultyRelay:
    """A TCP relay on loopback in front of a server, breaking on command.

    ``drop_all()`` cuts every relayed connection now; ``drop_after(n)`` cuts them all
    once ``n`` more bytes went from clients to the server (the request that crosses
    the mark is cut in two); ``refuse()`` resets new connections as soon as they are
    accepted (the node is down), ``refuse(False)`` accepts them again; ``stall()``
    holds every byte without closing anything (a black hole), ``resume()`` lets them
    through.  ``accepted`` counts connection attempts, refused ones included.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1",
                 host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((host, 0))
        self.host, self.port = host, self._listener.getsockname()[1]
        self.accepted = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._refusing = False
        self._budget: int | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            self._close_pair(pair)

    def drop_after(self, nbytes: int) -> None:
        with self._lock:
            self._budget = nbytes

    def refuse(self, refusing: bool = True) -> None:
        with self._lock:
            self._refusing = refusing

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()
        self._flowing.set()
        self.drop_all()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- internals --------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                refusing = self._refusing
            if refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._pairs.append(pair)
            self._spawn(self._pump, pair, client, upstream, True)
            self._spawn(self._pump, pair, upstream, client, False)

    def _pump(self, pair: tuple[socket.socket, socket.socket], source: socket.socket,
              sink: socket.socket, to_server: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                cut = False
                if to_server:
                    with self._lock:
                        if self._budget is not None:
                            if len(data) >= self._budget:
                                data, cut, self._budget = data[:self._budget], True, None
                            else:
                                self._budget -= len(data)
                sink.sendall(data)
                if cut:
                    self.drop_all()
                    break
        except OSError:
            pass
        finally:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            self._close_pair(pair)

    @staticmethod
    def _close_pair(pair: tuple[socket.socket, socket.socket]) -> None:
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
            sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a host with nothing listening answers."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sshd_server() -> Iterator[SshServer]:
    """One sshd shared by a test module (keys and all), stopped by PID at its end."""
    server = SshServer()
    yield server
    server.stop()


@pytest.fixture()
def sshd_factory() -> Iterator[Callable[..., SshServer]]:
    """Start extra servers (``sshd_factory(password="...")``); all stopped after the test."""
    started: list[SshServer] = []

    def start(*args: Any, **kwargs: Any) -> SshServer:
        server = SshServer(*args, **kwargs)
        started.append(server)
        return server

    yield start
    with contextlib.ExitStack() as teardown:  # every one, even if stopping another fails
        for server in started:
            teardown.callback(server.stop)


@pytest.fixture()
def faulty_relay() -> Iterator[Callable[..., FaultyRelay]]:
    """Relays in front of servers (``faulty_relay(server.port)``), closed after the test."""
    relays: list[FaultyRelay] = []

    def start(*args: Any, **kwargs: Any) -> FaultyRelay:
        relay = FaultyRelay(*args, **kwargs)
        relays.append(relay)
        return relay

    yield start
    with contextlib.ExitStack() as teardown:  # every one, even if closing another fails
        for relay in relays:
            teardown.callback(relay.close)
