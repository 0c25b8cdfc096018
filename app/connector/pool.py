"""Pooled SSH connections to the proxy nodes: one Paramiko transport per node.

A handshake costs tens of milliseconds and a deployment makes dozens of small
calls per node, so each node keeps one authenticated transport, opened on first use,
shared by every thread (each call opens its own channel; SFTP sessions are reused),
kept alive, closed after ``idle_timeout`` without use, and replaced when it dies.

Failures and what is retried (with exponential backoff, ``retries`` times):

* Connecting: refused or reset connections, EOF or timeouts before or during the
  key exchange, a connection lost during authentication.  Wrong credentials
  (:class:`AuthenticationFailed`) and a changed host key (:class:`HostKeyChanged`)
  are final: repeating them only gets the control plane banned or hides an attack.
* A pooled transport found dead: replaced at once (counted in ``reconnects``).
* A connection lost during an operation: read-only and idempotent operations
  (reads, ``mkdir_p``, ``remove_tree``, ``write_file``, ``symlink_swap``) run again
  on a new connection.  ``run`` and ``rename`` run again only if the connection was
  lost before their request was sent; afterwards the command may or may not have
  run, so :class:`UnreachableError` says so instead of repeating it.
* ``upload_tree`` writes into a fresh staging directory beside ``remote_dir`` and
  renames it into place last, so an attempt that loses its connection leaves
  ``remote_dir`` absent; the next attempt removes that staging directory and starts
  over in a new one.  If the connection dropped while the final rename was in
  flight, the next attempt finds the staging directory gone and ``remote_dir``
  present, which can only be that rename, and reports success.
* Errors the node reports on a live connection (no such file, permission denied,
  a command's non-zero exit) and timeouts are never retried.

Writes are pipelined, and Paramiko then ignores their acknowledgements (its close()
even hides a failure), so every written file's size is checked before it is renamed
into place.  After a command starts, nothing more is sent on its channel that could
arrive after the server closed it (see ``_DRAIN_STDIN``).

Every wait is bounded: TCP connect, banner, key exchange and authentication by
``connect_timeout``; channel opens, channel requests, SFTP requests and commands by
``operation_timeout`` (or a command's own ``timeout``).  Messages and log lines name
nodes, hosts, ports, paths and fingerprints, never keys, passwords or command lines.
"""

from __future__ import annotations

import errno
import io
import logging
import posixpath
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.connector.errors import (
    AuthenticationFailed,
    CommandTimeout,
    ConnectorError,
    HostKeyChanged,
    PortClosed,
    RemoteFileError,
    UnreachableError,
)
from app.connector.hostkeys import (
    FirstContactCallback,
    HostKeyPolicy,
    fingerprint,
    key_line,
    parse_key_line,
)

logger = logging.getLogger(__name__)


class _RefusedChannelFilter(logging.Filter):
    """Paramiko logs every refused channel as an error; to this pool a refused forward
    is an answer (:class:`PortClosed`), which its caller reports once in words."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open FAILED" not in record.getMessage()


logging.getLogger("paramiko.transport").addFilter(_RefusedChannelFilter())

T = TypeVar("T")

#: Largest SFTP read or write request (OpenSSH's and Paramiko's limit).
_SFTP_CHUNK = 32768
#: Idle SFTP sessions kept per connection; more concurrent users open their own.
_IDLE_SFTP_SESSIONS = 4
_RECV_SIZE = 65536
#: Runs "$@" with the stdin we send, then reads what it left unread.  The server
#: closes a channel as soon as its command exits; stdin still in flight (or our EOF)
#: would then reach a channel OpenSSH has freed, and OpenSSH drops the whole
#: connection, every other user's channels with it.  Draining keeps the command alive
#: until our EOF has arrived.
_DRAIN_STDIN = '"$@"; status=$?; cat >/dev/null; exit "$status"'
#: Runs commands given as positional words ("N word1 .. wordN" per command, after a
#: nonce and whether the first reads our stdin) one after the other, output and
#: errors merged, printing "<nonce> <status>" on a line after each and stopping at
#: the first that fails.  Each command runs alone in a subshell: the words before it
#: are rotated behind the others, the others shifted away.  The first command may
#: read the stdin we send; what it leaves is drained before anything else runs (see
#: _DRAIN_STDIN), and the others read /dev/null.  Nothing from the caller is ever
#: parsed as shell code.
_CHAIN = """nonce=$1 input=$2; shift 2
if [ "$input" = 1 ]; then exec 3<&0; else exec 3</dev/null; fi
while [ "$#" -gt 0 ]; do
  n=$1; shift
  (k=$(($# - n)); i=0
   while [ "$i" -lt "$n" ]; do set -- "$@" "$1"; shift; i=$((i + 1)); done
   shift "$k"; exec "$@") <&3 3<&- 2>&1
  status=$?
  if [ "$input" = 1 ]; then cat >/dev/null; input=0; exec 3</dev/null; fi
  printf '\\n%s %d\\n' "$nonce" "$status"
  [ "$status" -eq 0 ] || exit "$status"
  shift "$n"
done"""


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one node.  Secrets stay out of ``repr`` (and so out of logs)."""

    node_id: int
    host: str
    port: int
    username: str
    private_key: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    host_key: str | None = None


@dataclass(frozen=True)
class CommandResult:
    exit_status: int  # -1 when the command ended without a status (killed by a signal)
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class _Transient(Exception):
    """A network failure worth another attempt.

    :param sent: whether the operation's request may have reached the node.
    """

    def __init__(self, reason: str, *, sent: bool = False) -> None:
        super().__init__(reason)
        self.sent = sent


def _connection_params(target: SSHTarget) -> tuple[object, ...]:
    return (target.host, target.port, target.username, target.private_key, target.password)


def _same_key(pinned: str, presented: str) -> bool:
    try:
        return parse_key_line(pinned) == parse_key_line(presented)
    except ValueError:
        return False


def _describe(exc: BaseException) -> str:
    """A short reason for a network error (paramiko's messages carry no secrets)."""
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _close_quietly(resource: Any, what: str, node_id: int | None = None) -> None:
    """Close a channel, SFTP session, transport or socket whatever state it is in.

    Closing a channel or an SFTP session sends a message to the server; when the
    server has just dropped the connection, Paramiko raises ``EOFError`` or
    ``OSError`` from that send. A cleanup path must never replace the error that led
    to it, nor leave the rest of what it was closing open, so the failure is logged.
    """
    try:
        resource.close()
    except Exception as exc:  # noqa: BLE001 - any failure of a close is only logged
        logger.debug("closing the %s (node %s) failed: %s", what, node_id, _describe(exc))


def _bounded(channel: paramiko.Channel, seconds: float, request: Callable[[], Any]) -> None:
    """Run a channel request (exec, subsystem), failing with TimeoutError after
    ``seconds``: Paramiko waits for the server's reply without any timeout, so a
    server that never answers would hang the caller forever."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        _close_quietly(channel, "timed-out channel")  # wakes the waiting request

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        request()
    except paramiko.SSHException as exc:
        if fired.is_set():
            raise TimeoutError(f"no answer within {seconds:g}s") from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise TimeoutError(f"no answer within {seconds:g}s")


def _load_private_key(target: SSHTarget) -> paramiko.PKey:
    """Paramiko's key classes, then ``cryptography`` for the RSA and ECDSA keys in
    OpenSSH format that Paramiko misreads (with an empty comment and no padding it
    takes the comment's zero length for padding and keeps nothing)."""
    assert target.private_key is not None
    encrypted = AuthenticationFailed(f"node {target.node_id}: the private key is protected "
                                     "by a passphrase; store it unencrypted")
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(target.private_key))
        except paramiko.PasswordRequiredException:
            raise encrypted from None  # no parser message: it could quote key material
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    data = target.private_key.encode()
    try:
        key = (serialization.load_ssh_private_key(data, password=None)
               if b"BEGIN OPENSSH PRIVATE KEY" in data
               else serialization.load_pem_private_key(data, password=None))
    except TypeError:
        raise encrypted from None
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if isinstance(key, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return paramiko.ECDSAKey(vals=(key, key.public_key()))
    raise AuthenticationFailed(
        f"node {target.node_id}: the private key is not an ed25519, ecdsa or rsa key "
        "in OpenSSH or PEM format") from None


class _Connection:
    """One authenticated transport, its idle SFTP sessions and its users."""

    def __init__(self, target: SSHTarget, sock: socket.socket,
                 transport: paramiko.Transport, host_key: str) -> None:
        self.node_id = target.node_id
        self.params = _connection_params(target)
        self.sock = sock
        self.transport = transport
        self.host_key = host_key
        # Guarded by the pool's lock:
        self.users = 0
        self.last_used = time.monotonic()
        self.retired = False
        self._idle_sftp: list[paramiko.SFTPClient] = []
        self._sftp_lock = threading.Lock()

    def alive(self) -> bool:
        return bool(self.transport.is_active())

    def serves(self, target: SSHTarget) -> bool:
        """Same connection parameters, and the key it verified is still the pinned one."""
        if _connection_params(target) != self.params:
            return False
        return target.host_key is None or _same_key(target.host_key, self.host_key)

    def open_channel(self, timeout: float) -> paramiko.Channel:
        channel = self.transport.open_session(timeout=timeout)
        channel.settimeout(timeout)
        return channel

    def take_sftp(self, timeout: float) -> paramiko.SFTPClient:
        with self._sftp_lock:
            if self._idle_sftp:
                client = self._idle_sftp.pop()
                client.get_channel().settimeout(timeout)
                return client
        channel = self.open_channel(timeout)
        try:
            _bounded(channel, timeout, lambda: channel.invoke_subsystem("sftp"))
            return paramiko.SFTPClient(channel)
        except BaseException:
            _close_quietly(channel, "SFTP channel", self.node_id)
            raise

    def give_sftp(self, client: paramiko.SFTPClient, reusable: bool) -> None:
        """Keep a session for the next caller unless its stream may be out of step
        (a timeout or a protocol error leaves replies in flight)."""
        if reusable and self.alive() and not client.get_channel().closed:
            with self._sftp_lock:
                if len(self._idle_sftp) < _IDLE_SFTP_SESSIONS and not self.retired:
                    self._idle_sftp.append(client)
                    return
        _close_quietly(client, "SFTP session", self.node_id)

    def close(self) -> None:
        """Close the sessions, the transport and the socket; never raises, so that
        closing a connection the server dropped still releases all of it."""
        with self._sftp_lock:
            idle, self._idle_sftp = self._idle_sftp, []
        for client in idle:
            _close_quietly(client, "SFTP session", self.node_id)
        _close_quietly(self.transport, "transport", self.node_id)
        # The transport skips the socket when it already died by itself.
        _close_quietly(self.sock, "socket", self.node_id)


class _UploadState:
    """What earlier attempts of one ``upload_tree`` left on the node."""

    def __init__(self) -> None:
        self.staging: str | None = None
        self.renaming = False
        self.done = False


class SSHConnectionPool:
    """Pooled SSH and SFTP access to the nodes, safe to share between threads.

    :param on_first_contact: called with (node id, host key line) when a node without
        a pinned key is reached, before any credential is sent; see
        :class:`~app.connector.hostkeys.HostKeyPolicy`.
    """

    def __init__(self, *, connect_timeout: float = 10.0, operation_timeout: float = 30.0,
                 idle_timeout: float = 300.0, keepalive_interval: int = 15,
                 retries: int = 2, backoff: float = 0.2,
                 on_first_contact: FirstContactCallback | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self.idle_timeout = idle_timeout
        self.keepalive_interval = keepalive_interval
        self.retries = retries
        self.backoff = backoff
        self._policy = HostKeyPolicy(on_first_contact)
        self._lock = threading.Lock()
        self._connections: dict[int, _Connection] = {}
        self._node_locks: dict[int, threading.Lock] = {}
        self._lost_nodes: set[int] = set()
        self._counters = {"connects": 0, "reconnects": 0, "idle_evictions": 0}
        self._stopping = threading.Event()
        self._closed = False
        self._reaper: threading.Thread | None = None

    # -- commands -----------------------------------------------------------------

    def run(self, target: SSHTarget, argv: Sequence[str], *, timeout: float | None = None,
            stdin: bytes | None = None) -> CommandResult:
        """Run a command from an argument list; a non-zero exit is returned, not raised.

        The remote login shell receives ``shlex.join(argv)``, so every argument
        arrives literally, whatever quotes, spaces or ``$(...)`` it holds.  Without
        ``stdin`` the command reads ``/dev/null``; with it, the command runs under
        ``sh -c`` which afterwards discards what the command did not read (so a
        command killed by a signal then exits 128+N instead of -1).

        :raises CommandTimeout: if it does not finish within ``timeout`` (default
            ``operation_timeout``); its channel is closed.
        :raises UnreachableError: if the connection is lost while it runs (it may
            have run: never repeated).
        """
        if isinstance(argv, str | bytes) or not argv:
            raise ValueError("argv must be a non-empty list of arguments")
        if stdin is None:
            # Nothing, not even an EOF, is sent after the exec (see _DRAIN_STDIN).
            command = shlex.join(argv) + " </dev/null"
        else:
            command = shlex.join(["sh", "-c", _DRAIN_STDIN, "sh", *argv])
        return self._command(target, command, f"command {argv[0]!r}", timeout, stdin)

    def tunnel(self, target: SSHTarget, host: str, port: int,
               body: Callable[[paramiko.Channel], T], *, timeout: float | None = None) -> T:
        """Call ``body`` with a channel forwarded to ``host:port`` as the node sees it
        (usually its loopback), over the node's pooled connection.

        This is how services that listen only on a node's loopback (Glances, the
        proxy's status page) are read without opening a port.  The channel is a
        socket-like object (``sendall``, ``recv``, ``makefile``) with ``timeout`` on
        each operation, closed when ``body`` returns.  Opening it is retried like any
        idempotent call; ``body`` runs once.

        :raises PortClosed: if the node refuses the channel (nothing listens there).
        :raises CommandTimeout: if the channel stalls for ``timeout`` seconds.
        """
        seconds = self.operation_timeout if timeout is None else timeout
        what = f"a channel to port {port}"

        def attempt(conn: _Connection) -> T:
            try:
                channel = conn.transport.open_channel(
                    "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=seconds)
            except paramiko.ChannelException as exc:
                raise PortClosed(f"node {target.node_id}: nothing answers on {host}:{port} "
                                 f"there ({exc.text or 'channel refused'})") from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _Transient(f"could not open {what}: {_describe(exc)}") from exc
            channel.settimeout(seconds)
            try:
                return body(channel)
            except TimeoutError:
                raise CommandTimeout(f"node {target.node_id}: {what} stalled for more than "
                                     f"{seconds:g}s") from None
            finally:
                _close_quietly(channel, "forwarded channel", target.node_id)

        return self._call(target, what, attempt, idempotent=True)

    def _command(self, target: SSHTarget, command: str, what: str, timeout: float | None,
                 stdin: bytes | None = None,
                 on_stdout: Callable[[bytes], None] | None = None) -> CommandResult:
        limit = self.operation_timeout if timeout is None else timeout

        def attempt(conn: _Connection) -> CommandResult:
            try:
                channel = conn.open_channel(self.operation_timeout)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _Transient(f"could not open a channel: {_describe(exc)}") from exc
            try:
                return self._execute(target, channel, command, what, limit, stdin, on_stdout)
            finally:
                _close_quietly(channel, "channel", target.node_id)

        return self._call(target, what, attempt, idempotent=False)

    def run_chain(self, target: SSHTarget, commands: Sequence[Sequence[str]], *,
                  timeout: float | None = None,
                  on_next: Callable[[int], None] | None = None,
                  stdin: bytes | None = None) -> list[CommandResult]:
        """Run commands one after another in one remote session (one channel, one
        shell), stopping at the first that fails; returns the results of those that
        ran, each with its output and errors merged in ``stdout``.

        ``on_next(i)`` is called as soon as command ``i - 1`` has succeeded and
        command ``i`` starts (to time each).  Arguments reach the node as in
        :meth:`run`; a random marker separates the outputs, so no output can pass for
        one.  ``stdin`` is the first command's input (the others read /dev/null).

        :raises CommandTimeout: if the whole chain does not finish within ``timeout``.
        :raises UnreachableError: if the connection is lost meanwhile (never repeated).
        """
        if not commands or any(isinstance(argv, str | bytes) or not argv for argv in commands):
            raise ValueError("commands must be non-empty lists of arguments")
        nonce = secrets.token_hex(16)
        words: list[str] = ["sh", "-c", _CHAIN, "sh", nonce, "0" if stdin is None else "1"]
        for argv in commands:
            words += [str(len(argv)), *argv]
        mark = f"\n{nonce} "
        started = [0]  # commands known to have started after the first

        def watch(out: bytes) -> None:
            text = out.decode("utf-8", "replace")
            position = 0
            for index in range(1, len(commands)):
                at = text.find(mark, position)
                end = text.find("\n", at + len(mark)) if at >= 0 else -1
                if end < 0 or text[at + len(mark):end] != "0":
                    return
                position = end
                if index > started[0]:
                    started[0] = index
                    if on_next is not None:
                        on_next(index)

        command = shlex.join(words) + (" </dev/null" if stdin is None else "")
        result = self._command(target, command, f"command {commands[0][0]!r} and the next",
                               timeout, stdin, on_stdout=watch)
        results: list[CommandResult] = []
        rest = result.stdout
        for _ in commands:
            output, found, tail = rest.partition(mark)
            if not found:
                break
            status_text, _, rest = tail.partition("\n")
            results.append(CommandResult(int(status_text), output, ""))
        if len(results) < len(commands) and (not results or results[-1].ok):
            # It ended without reporting (killed by a signal): a failure all the same.
            results.append(CommandResult(result.exit_status or -1, rest, result.stderr))
        return results

    def _execute(self, target: SSHTarget, channel: paramiko.Channel, command: str, what: str,
                 limit: float, stdin: bytes | None,
                 on_stdout: Callable[[bytes], None] | None = None) -> CommandResult:
        deadline = time.monotonic() + limit
        out, err = bytearray(), bytearray()
        try:
            _bounded(channel, limit, lambda: channel.exec_command(command))
            if stdin is not None:
                channel.sendall(stdin)
                channel.shutdown_write()
            # The channel's pipe becomes readable when stdout or stderr has data or the
            # channel closes; reading both as they come keeps a chatty stderr from
            # filling the window while we wait on stdout.
            poller = select.poll()
            poller.register(channel.fileno(), select.POLLIN)
            while True:
                # Sampled before draining: data always arrives before the EOF.
                finished = channel.eof_received or channel.closed
                received = len(out)
                while channel.recv_ready():
                    out += channel.recv(_RECV_SIZE)
                if on_stdout is not None and len(out) > received:
                    on_stdout(bytes(out))
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_RECV_SIZE)
                if finished:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                poller.poll(remaining * 1000)
            remaining = deadline - time.monotonic()
            if not channel.status_event.wait(max(remaining, 0)):
                raise TimeoutError
        except TimeoutError:
            raise CommandTimeout(f"node {target.node_id}: {what} did not finish within "
                                 f"{limit:g}s; its channel was closed") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _Transient(f"connection lost while running {what}: {_describe(exc)}",
                             sent=True) from exc
        if not channel.eof_received:
            # The server always ends the output with an EOF; a channel closed without
            # one went down with its connection (Paramiko closes the channels before
            # it marks the transport inactive, so that cannot be asked instead).
            raise _Transient(f"connection lost while running {what}", sent=True)
        return CommandResult(channel.recv_exit_status(), out.decode("utf-8", "replace"),
                             err.decode("utf-8", "replace"))

    # -- files --------------------------------------------------------------------

    def upload_tree(self, target: SSHTarget, remote_dir: str, files: Mapping[str, bytes], *,
                    mode: int = 0o644) -> None:
        """Create ``remote_dir`` holding exactly ``files`` (relative paths with '/'),
        directories 0o755; it appears complete or not at all (see the module notes).

        A lost connection may leave a ``<remote_dir>.partial-<hex>`` sibling behind
        when the retries run out; it is safe to remove.

        :raises RemoteFileError: if ``remote_dir`` already exists (``errno.EEXIST``),
            or the node refuses a write.
        :raises ValueError: for a file path that is absolute, empty or has '.' or '..'.
        """
        remote_dir = _absolute(remote_dir)
        directories, ordered = _tree_plan(files)
        state = _UploadState()

        def body(sftp: paramiko.SFTPClient) -> None:
            if state.staging is not None:  # an earlier attempt lost its connection
                if (state.renaming and _lstat(sftp, state.staging) is None
                        and _lstat(sftp, remote_dir) is not None):
                    state.done = True
                    return
                _rmtree(sftp, state.staging)
            if _lstat(sftp, remote_dir) is not None:
                raise _exists(target, remote_dir)
            staging = state.staging = f"{remote_dir}.partial-{secrets.token_hex(4)}"
            state.renaming = False
            # Private while the modes inside are whatever the server's umask made them;
            # the listing that proves the writes also shows the modes to correct.
            sftp.mkdir(staging, 0o700)
            for directory in directories:
                sftp.mkdir(posixpath.join(staging, directory), 0o755)
            for relative, data in ordered:
                _put(sftp, f"{staging}/{relative}", data)
            _check_tree(target, sftp, staging, directories, ordered, mode)
            sftp.chmod(staging, 0o755)
            state.renaming = True
            try:
                # Plain SFTP rename: unlike posix-rename it refuses an existing target.
                sftp.rename(staging, remote_dir)
            except OSError as exc:
                if exc.errno is not None or _lstat(sftp, remote_dir) is None:
                    raise
                raise _exists(target, remote_dir) from exc  # the staging goes below
            state.done = True

        try:
            self._file_op(target, f"upload to {remote_dir}", body)
        except ConnectorError as exc:
            if state.staging is not None and not state.done \
                    and not isinstance(exc, UnreachableError):
                self._discard_staging(target, state.staging)
            raise

    def _discard_staging(self, target: SSHTarget, staging: str) -> None:
        try:
            self.remove_tree(target, staging)
        except ConnectorError:
            logger.warning("node %s: could not remove the staging directory %s",
                           target.node_id, staging)

    def read_tree(self, target: SSHTarget, remote_dir: str) -> dict[str, bytes]:
        """Every regular file under ``remote_dir`` by relative path ('/' separated).

        ``remote_dir`` itself may be a symbolic link (a release link); links inside the
        tree are not followed, so the tree cannot lead outside itself.
        """
        remote_dir = _absolute(remote_dir)

        def body(sftp: paramiko.SFTPClient) -> dict[str, bytes]:
            if not stat.S_ISDIR(sftp.stat(remote_dir).st_mode or 0):
                raise RemoteFileError(f"node {target.node_id}: {remote_dir} is not a directory",
                                      errno.ENOTDIR)
            found: dict[str, bytes] = {}
            pending = [""]
            while pending:
                relative = pending.pop()
                for entry in sftp.listdir_attr(posixpath.join(remote_dir, relative)):
                    child = f"{relative}/{entry.filename}" if relative else entry.filename
                    if stat.S_ISDIR(entry.st_mode or 0):
                        pending.append(child)
                    elif stat.S_ISREG(entry.st_mode or 0):
                        found[child] = _get(sftp, f"{remote_dir}/{child}", entry.st_size or 0)
            return dict(sorted(found.items()))

        return self._file_op(target, f"read {remote_dir}", body)

    def read_file(self, target: SSHTarget, path: str) -> bytes:
        path = _absolute(path)
        return self._file_op(target, f"read {path}",
                             lambda sftp: _get(sftp, path, sftp.stat(path).st_size or 0))

    def write_file(self, target: SSHTarget, path: str, data: bytes, *,
                   mode: int = 0o644) -> None:
        """Replace ``path`` atomically: readers see the old or the new content, never
        a partial file (written beside it, then renamed over it)."""
        path = _absolute(path)
        previous: list[str] = []

        def body(sftp: paramiko.SFTPClient) -> None:
            for leftover in previous:  # from an attempt that lost its connection
                _remove_quietly(sftp, leftover)
            temp = _sibling(path, "tmp")
            previous.append(temp)
            _put(sftp, temp, data, mode)
            try:
                _check_size(target, temp, sftp.stat(temp).st_size, len(data))
                sftp.posix_rename(temp, path)
            except (OSError, RemoteFileError):
                _remove_quietly(sftp, temp)
                raise

        self._file_op(target, f"write {path}", body)

    def listdir(self, target: SSHTarget, path: str) -> list[str]:
        """The names in directory ``path`` (sorted; no '.' or '..'); nothing if it is
        missing.  One SFTP request: no process starts on the node."""
        path = _absolute(path)

        def body(sftp: paramiko.SFTPClient) -> list[str]:
            try:
                return sorted(sftp.listdir(path))
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return []
                raise

        return self._file_op(target, f"list {path}", body)

    def readlink(self, target: SSHTarget, path: str) -> str | None:
        """The target of the symbolic link ``path``; None if it is missing or no link."""
        path = _absolute(path)

        def body(sftp: paramiko.SFTPClient) -> str | None:
            try:
                return sftp.readlink(path)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                attributes = _lstat(sftp, path)
                if attributes is None or not stat.S_ISLNK(attributes.st_mode or 0):
                    return None
                raise

        return self._file_op(target, f"readlink {path}", body)

    def kind(self, target: SSHTarget, path: str) -> str | None:
        """"dir", "link" or "file" (anything else that exists) for ``path`` itself,
        not what a link points to; None if missing."""
        path = _absolute(path)

        def body(sftp: paramiko.SFTPClient) -> str | None:
            attributes = _lstat(sftp, path)
            if attributes is None:
                return None
            mode = attributes.st_mode or 0
            return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"

        return self._file_op(target, f"lstat {path}", body)

    def symlink_swap(self, target: SSHTarget, link_path: str, new_target: str) -> None:
        """Point ``link_path`` at ``new_target`` in one step: a reader finds the old
        link or the new one, never nothing (a new link beside it is renamed over it
        with OpenSSH's posix-rename).

        :raises RemoteFileError: if ``link_path`` exists and is not a symbolic link
            (``errno.EISDIR`` for a directory): it is never replaced.
        """
        link_path = _absolute(link_path)
        previous: list[str] = []

        def body(sftp: paramiko.SFTPClient) -> None:
            for leftover in previous:
                _remove_quietly(sftp, leftover)
            attributes = _lstat(sftp, link_path)
            if attributes is not None and not stat.S_ISLNK(attributes.st_mode or 0):
                is_dir = stat.S_ISDIR(attributes.st_mode or 0)
                raise RemoteFileError(
                    f"node {target.node_id}: {link_path} is a "
                    f"{'directory' if is_dir else 'file'}, not a symbolic link; "
                    "refusing to replace it", errno.EISDIR if is_dir else errno.EEXIST)
            temp = _sibling(link_path, "swap")
            previous.append(temp)
            sftp.symlink(new_target, temp)
            try:
                sftp.posix_rename(temp, link_path)
            except OSError:
                _remove_quietly(sftp, temp)
                raise

        self._file_op(target, f"swap link {link_path}", body)

    def rename(self, target: SSHTarget, src: str, dst: str) -> None:
        """posix-rename ``src`` to ``dst`` (replacing a file or empty directory there)."""
        src, dst = _absolute(src), _absolute(dst)
        self._file_op(target, f"rename {src} to {dst}",
                      lambda sftp: sftp.posix_rename(src, dst), idempotent=False)

    def remove_tree(self, target: SSHTarget, path: str) -> None:
        """Remove ``path`` and everything under it; nothing if it is missing.  A link
        (``path`` itself or inside) is removed, never followed."""
        path = _absolute(path)
        if path == "/":
            raise ValueError("refusing to remove /")
        self._file_op(target, f"remove {path}", lambda sftp: _rmtree(sftp, path))

    def mkdir_p(self, target: SSHTarget, path: str, mode: int = 0o755) -> None:
        """Create ``path`` and missing parents with exactly ``mode``; an existing
        directory (or link to one) is fine.

        :raises RemoteFileError: if ``path`` or a parent exists and is no directory.
        """
        path = _absolute(path)

        def body(sftp: paramiko.SFTPClient) -> None:
            missing: list[str] = []
            current = path
            while current != "/":
                try:
                    attributes = sftp.stat(current)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    missing.append(current)
                    current = posixpath.dirname(current)
                    continue
                if not stat.S_ISDIR(attributes.st_mode or 0):
                    raise RemoteFileError(f"node {target.node_id}: {current} is not a directory",
                                          errno.ENOTDIR)
                break
            for directory in reversed(missing):
                try:
                    sftp.mkdir(directory)
                except OSError:
                    # Created meanwhile by someone else: fine if it is a directory now.
                    if not stat.S_ISDIR(sftp.stat(directory).st_mode or 0):
                        raise
                    continue
                sftp.chmod(directory, mode)

        self._file_op(target, f"mkdir {path}", body)

    # -- pool management ----------------------------------------------------------

    def evict(self, node_id: int) -> None:
        """Drop the node's connection: closed now if idle, else when its last user
        is done, so a settings change never cuts an operation in half."""
        with self._lock:
            conn = self._connections.get(node_id)
            self._lost_nodes.discard(node_id)
        if conn is not None:
            self._drop(conn)

    def close(self) -> None:
        """Close every connection, in use or not, and stop the reaper."""
        with self._lock:
            self._closed = True
            conns = list(self._connections.values())
            self._connections.clear()
            reaper = self._reaper
        self._stopping.set()
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join()
        for conn in conns:
            conn.close()

    def stats(self) -> dict[str, int]:
        """Pooled connections now, successful connects, connects that replaced a lost
        connection, and connections closed for being idle."""
        with self._lock:
            return {"connections": len(self._connections), **self._counters}

    # -- internals: calls and retries ---------------------------------------------

    def _call(self, target: SSHTarget, what: str, attempt: Callable[[_Connection], T], *,
              idempotent: bool) -> T:
        failures = 0
        while True:
            try:
                return self._once(target, attempt)
            except _Transient as exc:
                failures += 1
                where = f"node {target.node_id} ({target.host}:{target.port})"
                if exc.sent and not idempotent:
                    raise UnreachableError(f"{where}: {exc}; it may or may not have taken "
                                           "effect, so it was not repeated") from exc
                if failures > self.retries:
                    raise UnreachableError(f"{where} unreachable after {failures} "
                                           f"attempt(s) ({what}): {exc}") from exc
                delay = self.backoff * 2 ** (failures - 1)
                logger.warning("node %s: %s (%s); attempt %d of %d in %.2fs", target.node_id,
                               exc, what, failures + 1, self.retries + 1, delay)
                if self._stopping.wait(delay):
                    raise ConnectorError("the SSH pool is closed") from exc

    def _once(self, target: SSHTarget, attempt: Callable[[_Connection], T]) -> T:
        conn = self._checkout(target)
        try:
            return attempt(conn)
        except _Transient:
            if not conn.alive():
                self._drop(conn, lost=True)  # its other users are failing too
            raise
        finally:
            self._checkin(conn)

    def _file_op(self, target: SSHTarget, what: str, body: Callable[[paramiko.SFTPClient], T],
                 *, idempotent: bool = True) -> T:
        """Run ``body`` with an SFTP session, turning Paramiko's failures into ours."""

        def attempt(conn: _Connection) -> T:
            try:
                sftp = conn.take_sftp(self.operation_timeout)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                raise _Transient(f"could not open an SFTP session: {_describe(exc)}") from exc
            reusable = False
            try:
                result = body(sftp)
                reusable = True
                return result
            except ConnectorError:
                reusable = True
                raise
            except TimeoutError:
                # A node whose file operations stall may have lost its network: the
                # next call connects afresh rather than waiting on this transport.
                self._drop(conn)
                raise CommandTimeout(f"node {target.node_id}: {what} did not finish within "
                                     f"{self.operation_timeout:g}s") from None
            except OSError as exc:
                if sftp.get_channel().closed or not conn.alive():
                    raise _Transient(f"connection lost during {what}: {_describe(exc)}",
                                     sent=True) from exc
                reusable = True  # the server answered with an error status
                raise _remote_error(target, what, exc) from exc
            except (EOFError, paramiko.SSHException, paramiko.SFTPError) as exc:
                raise _Transient(f"connection lost during {what}: {_describe(exc)}",
                                 sent=True) from exc
            finally:
                conn.give_sftp(sftp, reusable)

        return self._call(target, what, attempt, idempotent=idempotent)

    # -- internals: connections ---------------------------------------------------

    def _checkout(self, target: SSHTarget) -> _Connection:
        """The node's live connection with one more user, connecting if needed (one
        attempt; ``_call`` retries)."""
        node_id = target.node_id
        with self._lock:
            self._check_open()
            conn = self._connections.get(node_id)
            if conn is not None and conn.serves(target) and conn.alive():
                conn.users += 1
                return conn
            node_leases = self._node_locks.setdefault(node_id, threading.Lock())
        # One thread connects per node; the others wait here and then share it.
        with node_leases:
            with self._lock:
                self._check_open()
                conn = self._connections.get(node_id)
                if conn is not None and conn.serves(target) and conn.alive():
                    conn.users += 1
                    return conn
            if conn is not None:  # dead, or the node's settings changed
                self._drop(conn, lost=not conn.alive())
            new = self._connect(target)
            with self._lock:
                if self._closed:
                    new.close()
                    self._check_open()
                new.users = 1
                self._connections[node_id] = new
                self._counters["connects"] += 1
                if node_id in self._lost_nodes:
                    self._lost_nodes.discard(node_id)
                    self._counters["reconnects"] += 1
                self._start_reaper_locked()
            return new

    def _checkin(self, conn: _Connection) -> None:
        with self._lock:
            conn.users -= 1
            conn.last_used = time.monotonic()
            close_now = conn.retired and conn.users == 0
        if close_now:
            conn.close()

    def _drop(self, conn: _Connection, *, lost: bool = False) -> None:
        """Take ``conn`` out of the pool (unless a newer one replaced it already) and
        close it once nobody uses it; a ``lost`` one is dead and closed at once."""
        with self._lock:
            if self._connections.get(conn.node_id) is conn:
                del self._connections[conn.node_id]
                if lost:
                    self._lost_nodes.add(conn.node_id)
            conn.retired = True
            close_now = lost or conn.users == 0
        if close_now:
            conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectorError("the SSH pool is closed")

    def _connect(self, target: SSHTarget) -> _Connection:
        where = f"node {target.node_id} ({target.host}:{target.port})"
        started = time.monotonic()
        try:
            sock = socket.create_connection((target.host, target.port),
                                            timeout=self.connect_timeout)
        except socket.gaierror as exc:
            raise UnreachableError(f"{where}: the host name does not resolve") from exc
        except OSError as exc:
            raise _Transient(f"connect failed: {_describe(exc)}") from exc
        transport: paramiko.Transport | None = None
        try:
            # Paramiko leaves Nagle on: every small request would wait for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(sock)
            transport.banner_timeout = self.connect_timeout
            transport.handshake_timeout = self.connect_timeout
            transport.auth_timeout = self.connect_timeout
            algorithms = self._policy.algorithms(target.node_id, target.host_key)
            if algorithms is not None:
                transport.get_security_options().key_types = algorithms
            self._handshake(transport, target)
            presented = key_line(transport.get_remote_server_key())
            try:
                self._policy.verify(target.node_id, target.host_key, presented)
            except ConnectorError:
                raise
            except Exception as exc:
                raise ConnectorError(f"node {target.node_id}: recording the host key of the "
                                     "first contact failed") from exc
            self._authenticate(transport, target)
            if self.keepalive_interval > 0:
                transport.set_keepalive(self.keepalive_interval)
        except BaseException:
            if transport is not None:
                _close_quietly(transport, "transport", target.node_id)
            _close_quietly(sock, "socket", target.node_id)
            raise
        logger.info("node %s: connected to %s:%s in %.0f ms", target.node_id, target.host,
                    target.port, (time.monotonic() - started) * 1000)
        return _Connection(target, sock, transport, presented)

    def _handshake(self, transport: paramiko.Transport, target: SSHTarget) -> None:
        done = threading.Event()
        transport.start_client(event=done)
        # Paramiko's own timeout returns silently on expiry: wait on the event instead.
        if not done.wait(self.connect_timeout):
            raise _Transient(f"no key exchange within {self.connect_timeout:g}s")
        if transport.is_active():
            return
        exc = transport.get_exception()
        if isinstance(exc, paramiko.IncompatiblePeer):
            if target.host_key is not None:
                # The server no longer has a key of the pinned type: a changed key;
                # learn the new one (no credential is sent) so the admin can compare.
                presented = self._probe_host_key(target)
                raise HostKeyChanged(target.node_id, fingerprint(target.host_key),
                                     fingerprint(presented), presented)
            raise ConnectorError(f"node {target.node_id}: no common SSH algorithms: "
                                 f"{_describe(exc)}") from exc
        raise _Transient(f"key exchange failed: {_describe(exc or EOFError())}") from exc

    def _probe_host_key(self, target: SSHTarget) -> str:
        try:
            with socket.create_connection((target.host, target.port),
                                          timeout=self.connect_timeout) as sock:
                transport = paramiko.Transport(sock)
                try:
                    transport.banner_timeout = self.connect_timeout
                    transport.handshake_timeout = self.connect_timeout
                    done = threading.Event()
                    transport.start_client(event=done)
                    if not done.wait(self.connect_timeout) or not transport.is_active():
                        raise OSError("no key exchange")
                    return key_line(transport.get_remote_server_key())
                finally:
                    _close_quietly(transport, "probing transport", target.node_id)
        except (OSError, paramiko.SSHException) as exc:
            raise ConnectorError(f"node {target.node_id}: the server offers no host key of "
                                 "the pinned type, and reading its key failed") from exc

    def _authenticate(self, transport: paramiko.Transport, target: SSHTarget) -> None:
        if target.private_key is None and target.password is None:
            raise AuthenticationFailed(f"node {target.node_id}: neither a private key nor a "
                                       "password is configured")
        started = time.monotonic()
        try:
            if target.private_key is not None:
                key = _load_private_key(target)
                try:
                    transport.auth_publickey(target.username, key)
                except paramiko.AuthenticationException:
                    if target.password is None or not transport.is_active():
                        raise
            if not transport.is_authenticated() and target.password is not None:
                transport.auth_password(target.username, target.password)
        except paramiko.AuthenticationException as exc:
            if not transport.is_active() or time.monotonic() - started >= self.connect_timeout:
                raise _Transient(f"connection lost during authentication: "
                                 f"{_describe(exc)}") from exc
            allowed = getattr(exc, "allowed_types", None)
            hint = f" (the server allows: {', '.join(allowed)})" if allowed else ""
            raise AuthenticationFailed(f"node {target.node_id}: {target.host}:{target.port} "
                                       f"refused the credentials of user "
                                       f"{target.username!r}{hint}") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _Transient(f"authentication failed: {_describe(exc)}") from exc

    # -- internals: idle reaper ---------------------------------------------------

    def _start_reaper_locked(self) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="ssh-pool-reaper",
                                            daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Close connections idle for ``idle_timeout`` and drop dead ones."""
        interval = max(0.05, min(self.idle_timeout / 4, 30.0))
        while not self._stopping.wait(interval):
            now = time.monotonic()
            with self._lock:
                doomed = [conn for conn in self._connections.values()
                          if conn.users == 0 and (now - conn.last_used >= self.idle_timeout
                                                  or not conn.alive())]
                for conn in doomed:
                    del self._connections[conn.node_id]
                    conn.retired = True
                    if conn.alive():
                        self._counters["idle_evictions"] += 1
                    else:
                        self._lost_nodes.add(conn.node_id)
            for conn in doomed:
                logger.debug("node %s: closing the idle connection", conn.node_id)
                conn.close()


# -- SFTP helpers -------------------------------------------------------------------

def _absolute(path: str) -> str:
    """Remote paths are absolute (SFTP would resolve others against the login's home
    directory); a trailing '/' is dropped."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path \
            or any(part in (".", "..") for part in path.split("/")):
        raise ValueError(f"remote paths must be absolute, without '.' or '..': {path!r}")
    return path.rstrip("/") or "/"


def check_tree_path(relative: str) -> str:
    """``relative`` if it names a file inside a tree: a path that is absolute, empty,
    or has '.', '..' or an empty part could reach outside it, on the node.

    :raises ValueError: for any other path."""
    if not relative or relative.startswith("/") or "\0" in relative \
            or any(part in ("", ".", "..") for part in relative.split("/")):
        raise ValueError(f"not a relative file path inside the tree: {relative!r}")
    return relative


def _tree_plan(files: Mapping[str, bytes]) -> tuple[list[str], list[tuple[str, bytes]]]:
    """Directories to create (parents first) and files to write, after refusing any
    path that could leave the tree."""
    directories: set[str] = set()
    ordered: list[tuple[str, bytes]] = []
    for relative in sorted(files):
        parts = check_tree_path(relative).split("/")
        for depth in range(1, len(parts)):
            directories.add("/".join(parts[:depth]))
        ordered.append((relative, bytes(files[relative])))
    if directories & set(files):
        raise ValueError("a path is used both as a file and as a directory")
    return sorted(directories, key=lambda d: (d.count("/"), d)), ordered


def _sibling(path: str, purpose: str) -> str:
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}.{purpose}-{secrets.token_hex(4)}")


def _lstat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    try:
        return sftp.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


def _put(sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int | None = None) -> None:
    """Write a new file (always a fresh name: "x" refuses to reuse one), with exactly
    ``mode`` if given (else the server's umask decides; see :func:`_check_tree`).

    Pipelined: writes do not wait for their acknowledgements.  Paramiko then drops
    their statuses, and its close() hides a failure too, so callers check the sizes
    (:func:`_check_size`, :func:`_check_tree`) before anything depends on the file.
    """
    with sftp.open(path, "wxb") as handle:
        handle.set_pipelined(True)
        if mode is not None:
            handle.chmod(mode)  # exact, whatever the server's umask
        if data:
            handle.write(data)


def _check_size(target: SSHTarget, path: str, size: int | None, expected: int) -> None:
    if size != expected:
        raise RemoteFileError(f"node {target.node_id}: {path} holds {size or 0} of {expected} "
                              "bytes after writing (disk full?)", errno.EIO)


def _check_tree(target: SSHTarget, sftp: paramiko.SFTPClient, root: str,
                directories: Sequence[str], files: Sequence[tuple[str, bytes]],
                mode: int) -> None:
    """Prove the pipelined writes of a tree landed (one listing per directory), and
    give every file ``mode`` and every directory below ``root`` 0o755 exactly, where
    the server's umask made them otherwise."""
    found: dict[str, paramiko.SFTPAttributes] = {}
    for directory in ("", *directories):
        for entry in sftp.listdir_attr(posixpath.join(root, directory) if directory else root):
            found[f"{directory}/{entry.filename}" if directory else entry.filename] = entry
    for relative, data in files:
        entry = found.get(relative)
        _check_size(target, f"{root}/{relative}", entry.st_size if entry else None, len(data))
    wanted = {**{relative: mode for relative, _ in files}, **dict.fromkeys(directories, 0o755)}
    for relative, bits in wanted.items():
        if (found[relative].st_mode or 0) & 0o7777 != bits:
            sftp.chmod(f"{root}/{relative}", bits)


def _get(sftp: paramiko.SFTPClient, path: str, size: int) -> bytes:
    with sftp.open(path, "rb") as handle:
        if size > _SFTP_CHUNK:
            handle.prefetch(size)  # all read requests in flight at once
        return bytes(handle.read(size))


def _rmtree(sftp: paramiko.SFTPClient, path: str) -> None:
    attributes = _lstat(sftp, path)
    if attributes is None:
        return
    if not stat.S_ISDIR(attributes.st_mode or 0):
        _remove_missing_ok(sftp, path)
        return
    for entry in sftp.listdir_attr(path):
        child = posixpath.join(path, entry.filename)
        if stat.S_ISDIR(entry.st_mode or 0):  # lstat: a link to a directory is no dir
            _rmtree(sftp, child)
        else:
            _remove_missing_ok(sftp, child)
    sftp.rmdir(path)


def _remove_missing_ok(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.remove(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> None:
    """Best-effort removal of our own temporary names; a failure here must not hide
    the error that led to it."""
    try:
        sftp.remove(path)
    except (OSError, EOFError, paramiko.SSHException):
        logger.debug("could not remove the temporary %s", path)


def _exists(target: SSHTarget, path: str) -> RemoteFileError:
    return RemoteFileError(f"node {target.node_id}: {path} already exists", errno.EEXIST)


def _remote_error(target: SSHTarget, what: str, exc: OSError) -> RemoteFileError:
    reason = exc.strerror or (str(exc.args[0]) if exc.args else "failed")
    return RemoteFileError(f"node {target.node_id}: {what}: {reason}", exc.errno)
