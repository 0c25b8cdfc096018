"""The SSH connector against a real sshd: commands, files, pooling, host keys,
credentials, timeouts and networks that fail in the middle of an operation.

Uploads are all-or-nothing for the destination: a fresh ``upload_tree`` whose
connection drops (and stays down) leaves ``remote_dir`` absent; what it wrote sits
in a ``<remote_dir>.partial-<hex>`` sibling, recognisable by that name.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.connector import (
    AuthenticationFailed,
    CommandTimeout,
    ConnectorError,
    HostKeyChanged,
    PortClosed,
    RemoteFileError,
    SSHConnectionPool,
    UnreachableError,
)
from app.connector.hostkeys import fingerprint
from tests.processes import free_port
from tests.sshd import (
    FaultyRelay,
    SshServer,
    keygen,
    ssh_keygen_fingerprint,
)
from tests.sshd import faulty_relay as faulty_relay  # noqa: F401  (fixtures)
from tests.sshd import sshd_factory as sshd_factory  # noqa: F401
from tests.sshd import sshd_server as sshd_server  # noqa: F401

Relays = Callable[..., FaultyRelay]
Servers = Callable[..., SshServer]


@pytest.fixture()
def make_pool() -> Iterator[Callable[..., SSHConnectionPool]]:
    """Pools with short timeouts and backoff, all closed after the test (list it
    after a server fixture, so its connections close before that server stops)."""
    pools: list[SSHConnectionPool] = []

    def make(**options: object) -> SSHConnectionPool:
        settings: dict[str, object] = {"connect_timeout": 5.0, "operation_timeout": 10.0,
                                       "backoff": 0.05}
        settings.update(options)
        pool = SSHConnectionPool(**settings)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture()
def pool(make_pool: Callable[..., SSHConnectionPool]) -> SSHConnectionPool:
    return make_pool()


@pytest.fixture()
def workdir(sshd_server: SshServer) -> Iterator[Path]:
    """A directory of the node's own (the server runs on this machine)."""
    path = sshd_server.root / f"work-{random.randrange(1 << 30)}"
    path.mkdir()
    yield path


def running_on(server: SshServer, program: str) -> bool:
    """Whether one of the server's sessions runs ``program`` now."""
    for pid in server.sessions():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == program.encode():
            return True
    return False


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- commands ---------------------------------------------------------------------------

def test_run_returns_stdout_stderr_and_exit_status(pool, sshd_server):
    result = pool.run(sshd_server.target(), ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok
    assert pool.run(sshd_server.target(), ["true"]).ok


def test_arguments_reach_the_command_literally(pool, sshd_server, workdir):
    marker = workdir / "pwned"
    hostile = ["two words", "it's", '"quoted"', "a;b", f"; touch {marker}",
               f"$(touch {marker})", f"`touch {marker}`", f"&& touch {marker}",
               "$HOME", "*", "back\\slash", "line\nbreak", "", "-n"]
    result = pool.run(sshd_server.target(), ["printf", "%s|", *hostile])
    assert result.ok, result.stderr
    assert result.stdout == "".join(f"{arg}|" for arg in hostile)
    assert not marker.exists()


def test_stdin_is_sent_then_closed(pool, sshd_server):
    payload = os.urandom(1 << 20)
    result = pool.run(sshd_server.target(), ["wc", "-c"], stdin=payload)
    assert result.stdout.strip() == str(len(payload))
    # Without stdin the command reads an immediate end of file instead of hanging.
    assert pool.run(sshd_server.target(), ["cat"], timeout=5).stdout == ""
    # A command may end without reading what it was given.
    assert pool.run(sshd_server.target(), ["head", "-c", "1"], stdin=os.urandom(8 << 20)).ok


@pytest.mark.parametrize("order", ["stderr first", "stdout first"])
def test_megabytes_on_both_streams_do_not_deadlock(pool, sshd_server, order):
    # More than the 2 MiB channel window on each stream: reading one stream to its
    # end before the other would stall the command forever.
    first, second = (">&2", "") if order == "stderr first" else ("", ">&2")
    script = (f"head -c 3000000 /dev/zero | tr '\\0' e {first}; "
              f"head -c 3000000 /dev/zero | tr '\\0' o {second}")
    result = pool.run(sshd_server.target(), ["sh", "-c", script], timeout=30)
    assert result.ok
    assert len(result.stdout) == len(result.stderr) == 3_000_000


def test_command_timeout_closes_its_channel_and_keeps_the_connection(pool, sshd_server):
    target = sshd_server.target()
    pool.run(target, ["true"])
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        pool.run(target, ["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 3
    assert pool.run(target, ["echo", "still here"]).stdout == "still here\n"
    assert pool.stats()["connects"] == 1


def test_a_chain_runs_each_command_literally_and_stops_at_the_first_failure(
        pool, sshd_server, workdir):
    marker = workdir / "pwned"
    hostile = ["two words", "it's", "a;b", f"$(touch {marker})", f"`touch {marker}`",
               "*", "line\nbreak", "", "-n", "3", "0"]
    started: list[int] = []
    results = pool.run_chain(sshd_server.target(), [
        ["printf", "%s|", *hostile],
        ["sh", "-c", "echo out; echo err >&2"],
        ["sh", "-c", "printf 'no newline'; exit 4"],
        ["touch", str(workdir / "never")],
    ], on_next=started.append)
    assert [r.exit_status for r in results] == [0, 0, 4]
    assert results[0].stdout == "".join(f"{arg}|" for arg in hostile)
    assert results[1].stdout == "out\nerr\n"  # errors merged into the output
    assert results[2].stdout == "no newline" and not results[2].ok
    assert started == [1, 2]  # the fourth never started
    assert not marker.exists() and not (workdir / "never").exists()


def test_a_chain_gives_its_first_command_our_stdin_and_the_others_nothing(
        pool, sshd_server):
    data = bytes(range(256)) * 4096  # 1 MiB, more than a channel's window
    results = pool.run_chain(sshd_server.target(), [
        ["sh", "-c", "wc -c"], ["sh", "-c", "cat | wc -c"]], stdin=data)
    assert [r.stdout.split()[0] for r in results] == [str(len(data)), "0"]
    # A first command that reads nothing: the rest is drained, the others still run
    # and the connection stays up for everyone.
    results = pool.run_chain(sshd_server.target(), [["true"], ["echo", "next"]], stdin=data)
    assert [r.exit_status for r in results] == [0, 0] and results[1].stdout == "next\n"
    # A first command that fails stops the chain; its input was drained all the same.
    results = pool.run_chain(sshd_server.target(), [["sh", "-c", "head -c 10 >/dev/null; "
                                                     "exit 75"], ["echo", "never"]], stdin=data)
    assert [r.exit_status for r in results] == [75]
    assert pool.run(sshd_server.target(), ["echo", "still here"]).stdout == "still here\n"


def test_a_chain_output_cannot_forge_a_step(pool, sshd_server, workdir):
    # Whatever a command prints (here what looks like a report of success), only the
    # random marker of this run separates the commands.
    fake = "\n" + "0" * 32 + " 0\n"
    started: list[int] = []
    results = pool.run_chain(sshd_server.target(), [
        ["sh", "-c", 'printf "$1"; exit 0', "sh", fake], ["sh", "-c", "exit 3"]],
        on_next=started.append)
    # The fake report is only output of the first command: both ran, each with its
    # own status, and the second started once.
    assert [r.exit_status for r in results] == [0, 3]
    assert fake.strip() in results[0].stdout
    assert started == [1]


def test_a_chain_killed_by_a_signal_fails(pool, sshd_server):
    # The chain's own shell dies: it never reports the second command's status.
    results = pool.run_chain(sshd_server.target(), [["true"], ["sh", "-c", "kill -9 $PPID"]])
    assert len(results) == 2 and results[0].ok and not results[1].ok


def test_a_chain_times_out_as_a_whole(pool, sshd_server):
    with pytest.raises(CommandTimeout):
        pool.run_chain(sshd_server.target(), [["true"], ["sleep", "30"]], timeout=0.5)
    with pytest.raises(ValueError):
        pool.run_chain(sshd_server.target(), [["true"], "echo hi"])  # type: ignore[list-item]


def test_run_refuses_a_shell_string(pool, sshd_server):
    with pytest.raises(ValueError):
        pool.run(sshd_server.target(), "echo hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pool.run(sshd_server.target(), [])


# -- pooling ----------------------------------------------------------------------------

def test_twenty_runs_share_one_connection(pool, sshd_server):
    for index in range(20):
        assert pool.run(sshd_server.target(), ["echo", str(index)]).stdout == f"{index}\n"
    assert pool.stats() == {"connections": 1, "connects": 1, "reconnects": 0,
                            "idle_evictions": 0}


def test_eight_threads_share_one_connection(pool, sshd_server, workdir):
    # Commands ending at once, or before reading their stdin, race the client's last
    # messages on their channel; a message to a channel sshd already freed would make
    # it drop the connection, and every thread's work with it.
    (workdir / "shared").write_bytes(b"shared bytes")
    target = sshd_server.target()
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for step in range(10):
                result = pool.run(target, ["echo", f"{worker}-{step}"])
                assert result.stdout == f"{worker}-{step}\n"
                assert pool.run(target, ["head", "-c", "2"], stdin=b"ok" * 40_000).stdout == "ok"
                assert pool.read_file(target, str(workdir / "shared")) == b"shared bytes"
                pool.write_file(target, str(workdir / f"w{worker}"), f"{step}".encode())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert pool.stats()["connects"] == 1
    assert all((workdir / f"w{n}").read_bytes() == b"9" for n in range(8))


def test_idle_connection_is_closed_by_the_reaper(make_pool, sshd_server):
    pool = make_pool(idle_timeout=0.3)
    pool.run(sshd_server.target(), ["true"])
    assert pool.stats()["connections"] == 1
    assert wait_until(lambda: pool.stats()["connections"] == 0, timeout=3)
    assert pool.stats()["idle_evictions"] == 1
    pool.run(sshd_server.target(), ["true"])
    assert pool.stats()["connects"] == 2


def test_reconnects_after_the_session_sshd_is_killed(pool, sshd_server):
    target = sshd_server.target()
    pool.run(target, ["true"])
    sshd_server.kill_sessions()
    assert pool.run(target, ["echo", "back"]).stdout == "back\n"
    stats = pool.stats()
    assert (stats["connects"], stats["reconnects"]) == (2, 1)


def test_reconnects_after_the_network_drops_the_connection(pool, sshd_server, faulty_relay):
    relay = faulty_relay(sshd_server.port)
    target = sshd_server.target(port=relay.port)
    pool.run(target, ["true"])
    relay.drop_all()
    assert pool.read_file(target, "/etc/hostname") == Path("/etc/hostname").read_bytes()
    relay.drop_all()
    time.sleep(0.2)  # the transport notices the drop by itself, then is replaced
    assert pool.run(target, ["echo", "ok"]).stdout == "ok\n"
    assert pool.stats()["reconnects"] == 2


def test_changed_settings_open_a_new_connection(pool, sshd_server, faulty_relay):
    relay = faulty_relay(sshd_server.port)
    pool.run(sshd_server.target(7), ["true"])
    pool.run(sshd_server.target(7, port=relay.port), ["true"])
    assert pool.stats()["connections"] == 1 and pool.stats()["connects"] == 2
    pool.evict(7)
    assert pool.stats()["connections"] == 0
    assert wait_until(lambda: relay.open_connections == 0)  # the old one was closed


def test_a_command_cut_off_midway_is_not_repeated(make_pool, sshd_server, workdir):
    pool = make_pool(retries=3)
    counter = workdir / "runs"
    killer = threading.Timer(0.7, sshd_server.kill_sessions)
    killer.start()
    with pytest.raises(UnreachableError, match="not repeated"):
        pool.run(sshd_server.target(), ["sh", "-c", f"echo run >> {counter}; sleep 5"])
    killer.join()
    assert counter.read_text() == "run\n"


@pytest.mark.parametrize("pause", [0.0, 0.0002, 0.001, 0.01])
def test_closing_the_pool_after_the_server_dropped_the_connection_never_raises(
        make_pool, sshd_server, faulty_relay, workdir, pause):
    # Closing a channel or an SFTP session sends a message: right after the server
    # side went away that send fails, at a moment that depends on when the
    # transport's reader notices. Each pause closes at another point of that race.
    relay = faulty_relay(sshd_server.port)
    baseline = len(os.listdir("/proc/self/fd"))
    for _ in range(8):
        pool = make_pool(retries=0)
        target = sshd_server.target(port=relay.port)
        assert pool.kind(target, str(workdir)) == "dir"  # leaves an idle SFTP session
        started, outcome = threading.Event(), []

        def long_command(pool: SSHConnectionPool = pool, target=target, started=started,
                         outcome=outcome) -> None:
            started.set()
            try:
                pool.run(target, ["sleep", "30"])
            except ConnectorError as exc:
                outcome.append(exc)

        runner = threading.Thread(target=long_command)
        runner.start()
        started.wait()
        assert wait_until(lambda: running_on(sshd_server, "sleep"))  # its channel is open
        relay.drop_all()
        time.sleep(pause)
        pool.close()  # must not raise, whatever the transport has noticed by now
        runner.join(10)
        assert not runner.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], ConnectorError)
        assert pool.stats()["connections"] == 0
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) <= baseline)


def test_evicting_a_connection_the_server_dropped_never_raises(make_pool, sshd_server,
                                                               faulty_relay, workdir):
    relay = faulty_relay(sshd_server.port)
    pool = make_pool()
    target = sshd_server.target(port=relay.port)
    pool.kind(target, str(workdir))
    baseline = len(os.listdir("/proc/self/fd"))
    relay.drop_all()
    pool.evict(target.node_id)
    assert pool.stats()["connections"] == 0
    assert wait_until(lambda: len(os.listdir("/proc/self/fd")) < baseline)
    assert pool.run(target, ["echo", "again"]).stdout == "again\n"


def test_closed_pool_refuses_work(make_pool, sshd_server):
    pool = make_pool()
    pool.run(sshd_server.target(), ["true"])
    reaper = pool._reaper
    pool.close()
    assert reaper is not None and not reaper.is_alive()
    assert pool.stats()["connections"] == 0
    with pytest.raises(ConnectorError, match="closed"):
        pool.run(sshd_server.target(), ["true"])


# -- host keys --------------------------------------------------------------------------

def test_a_tunnel_reaches_a_port_on_the_nodes_loopback_over_the_pooled_connection(
        pool, sshd_server):
    """What Glances and the proxy's status page are read through: a service that
    listens only on the node's loopback, reached without opening a port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            received.append(conn.recv(100))
            conn.sendall(b"pong " + received[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def talk(channel) -> bytes:
        channel.sendall(b"ping")
        return channel.recv(100)

    try:
        assert pool.tunnel(sshd_server.target(), "127.0.0.1", port, talk) == b"pong ping"
        assert pool.run(sshd_server.target(), ["true"]).ok
        assert pool.stats()["connections"] == 1
    finally:
        thread.join(5)
        listener.close()
    assert received == [b"ping"]


def test_a_tunnel_to_a_closed_port_says_nothing_answers(pool, sshd_server, caplog):
    """Once, in the caller's words: Paramiko's own error line about the refused
    channel is not repeated in the log at every poll."""
    port = free_port()
    with caplog.at_level("DEBUG"), pytest.raises(
            PortClosed, match=f"nothing answers on 127.0.0.1:{port}"):
        pool.tunnel(sshd_server.target(), "127.0.0.1", port, lambda channel: None)
    assert pool.run(sshd_server.target(), ["true"]).ok
    assert not [r for r in caplog.records if "open FAILED" in r.getMessage()]


def test_first_contact_reports_the_servers_key(make_pool, sshd_server):
    seen: list[tuple[int, str]] = []
    pool = make_pool(on_first_contact=lambda node_id, line: seen.append((node_id, line)))
    pool.run(sshd_server.target(42), ["true"])
    assert len(seen) == 1
    node_id, line = seen[0]
    assert node_id == 42
    assert line.split()[:2] == sshd_server.host_key_line.split()
    assert fingerprint(line) == sshd_server.host_fingerprint  # as ssh-keygen -lf prints it


def test_pinned_matching_key_connects_without_first_contact(make_pool, sshd_server):
    seen: list[str] = []
    pool = make_pool(on_first_contact=lambda node_id, line: seen.append(line))
    assert pool.run(sshd_server.target(pinned=True), ["true"]).ok
    assert seen == []


def test_changed_host_key_refuses_and_sends_nothing(sshd_factory, make_pool):
    server = sshd_factory()
    old_target = server.target(pinned=True)
    old_fingerprint = server.host_fingerprint
    pool = make_pool()
    pool.run(old_target, ["true"])
    new_line = server.regenerate_host_key()
    marker = server.root / "ran"
    log_start = len(server.log())
    with pytest.raises(HostKeyChanged) as caught:
        pool.run(old_target, ["touch", str(marker)])
    error = caught.value
    assert (error.node_id, error.expected) == (1, old_fingerprint)
    assert error.presented == ssh_keygen_fingerprint(Path(f"{server.host_key_path}.pub"))
    assert error.presented_key is not None and error.presented_key.split() == new_line.split()
    assert not marker.exists()
    attempt_log = server.log()[log_start:]
    assert "publickey" not in attempt_log and "Accepted" not in attempt_log, attempt_log
    # Once an admin accepts the new key, the node is reachable again.
    assert pool.run(server.target(pinned=True), ["true"]).ok


def test_pinned_key_of_a_type_the_server_lacks_counts_as_changed(pool, sshd_server, tmp_path):
    other = keygen(tmp_path / "ecdsa", "ecdsa")
    with pytest.raises(HostKeyChanged) as caught:
        pool.run(sshd_server.target(host_key=other), ["true"])
    assert caught.value.presented == sshd_server.host_fingerprint


def test_failing_first_contact_callback_abandons_the_connection(make_pool, sshd_server):
    def refuse(node_id: int, line: str) -> None:
        raise RuntimeError("database down")

    pool = make_pool(on_first_contact=refuse, retries=2)
    log_start = len(sshd_server.log())
    with pytest.raises(ConnectorError, match="host key"):
        pool.run(sshd_server.target(), ["true"])
    assert "Accepted" not in sshd_server.log()[log_start:]
    assert pool.stats()["connections"] == 0


# -- credentials ------------------------------------------------------------------------

def test_wrong_client_key_fails_at_once(make_pool, sshd_server, faulty_relay, tmp_path):
    keygen(tmp_path / "stranger")
    stranger = (tmp_path / "stranger").read_text()
    relay = faulty_relay(sshd_server.port)
    pool = make_pool(retries=3)
    with pytest.raises(AuthenticationFailed) as caught:
        pool.run(sshd_server.target(port=relay.port, private_key=stranger), ["true"])
    assert relay.accepted == 1  # never retried
    body = stranger.split("-----")[2].split()[0]
    assert "PRIVATE KEY" not in str(caught.value) and body[:20] not in str(caught.value)


def test_unreadable_private_key_is_an_authentication_failure(pool, sshd_server):
    garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LXNlY3JldA==\n" \
              "-----END OPENSSH PRIVATE KEY-----\n"
    with pytest.raises(AuthenticationFailed) as caught:
        pool.run(sshd_server.target(private_key=garbage), ["true"])
    assert "c2VjcmV0" not in str(caught.value) and caught.value.__cause__ is None


@pytest.mark.parametrize("key_type,pem", [("ecdsa", False), ("rsa", False), ("rsa", True),
                                          ("ecdsa", True)])
def test_ecdsa_and_rsa_client_keys(pool, sshd_server, tmp_path, key_type, pem):
    path = tmp_path / f"client_{key_type}"
    sshd_server.authorize(keygen(path, key_type, pem=pem))
    text = path.read_text()
    assert ("BEGIN OPENSSH" not in text) == pem
    assert pool.run(sshd_server.target(node_id=9, private_key=text), ["true"]).ok


def test_ecdsa_keys_without_comment(pool, sshd_server, tmp_path):
    # About half of these need no padding, which Paramiko's own reader misparses.
    for index in range(8):
        path = tmp_path / f"ecdsa{index}"
        sshd_server.authorize(keygen(path, "ecdsa"))
        target = sshd_server.target(node_id=100 + index, private_key=path.read_text())
        assert pool.run(target, ["true"]).ok


def test_password_authentication(sshd_factory, make_pool):
    server = sshd_factory(password="correct horse battery")
    pool = make_pool()
    target = server.target(private_key=None, password="correct horse battery")
    assert pool.run(target, ["echo", "in"]).stdout == "in\n"
    wrong = server.target(node_id=2, private_key=None, password="wrong horse")
    with pytest.raises(AuthenticationFailed) as caught:
        pool.run(wrong, ["true"])
    assert "wrong horse" not in str(caught.value) and "wrong horse" not in repr(wrong)


# -- unreachable nodes and timeouts -----------------------------------------------------

def test_closed_port_is_unreachable_after_retries_with_backoff(make_pool, sshd_server):
    pool = make_pool(retries=2, backoff=0.1)
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="after 3 attempt"):
        pool.run(sshd_server.target(port=free_port()), ["true"])
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3  # waited 0.1 s, then 0.2 s


def test_refused_connections_are_retried_then_unreachable(make_pool, sshd_server, faulty_relay):
    relay = faulty_relay(sshd_server.port)
    relay.refuse()
    pool = make_pool(retries=2)
    with pytest.raises(UnreachableError):
        pool.run(sshd_server.target(port=relay.port), ["true"])
    assert relay.accepted == 3
    relay.refuse(False)
    assert pool.run(sshd_server.target(port=relay.port), ["true"]).ok


def test_silent_network_times_out_while_connecting(make_pool, sshd_server, faulty_relay):
    relay = faulty_relay(sshd_server.port)
    relay.stall()
    pool = make_pool(connect_timeout=0.5, retries=1)
    started = time.monotonic()
    with pytest.raises(UnreachableError):
        pool.run(sshd_server.target(port=relay.port), ["true"])
    assert time.monotonic() - started < 4


def test_silent_network_times_out_file_operations(make_pool, sshd_server, faulty_relay):
    relay = faulty_relay(sshd_server.port)
    pool = make_pool(operation_timeout=0.5, connect_timeout=1.0, retries=0)
    target = sshd_server.target(port=relay.port)
    assert pool.kind(target, "/etc") == "dir"
    relay.stall()
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        pool.kind(target, "/etc")
    assert time.monotonic() - started < 3
    relay.resume()
    assert pool.kind(target, "/etc") == "dir"  # on a fresh connection
    assert pool.stats()["connects"] == 2


# -- files ------------------------------------------------------------------------------

def sample_tree() -> dict[str, bytes]:
    return {
        "nginx.conf": b"include sites/*.conf;\n",
        "sites/a.example.com.conf": b"server { listen 127.0.0.1:80; }\n",
        "sites/nested/deeper/b.conf": bytes(range(256)) * 3,
        "empty": b"",
        "big.bin": os.urandom(300_000),
        "with space & 'quote'.txt": b"\x00\xff binary \r\n",
    }


def test_uploaded_modes_are_exact_whatever_the_servers_umask(pool, sshd_factory, workdir):
    server = sshd_factory(sftp_umask="077")
    target, tree = server.target(), sample_tree()
    release = workdir / "v1"
    pool.upload_tree(target, str(release), tree)
    assert {str(p.relative_to(release)): p.read_bytes()
            for p in release.rglob("*") if p.is_file()} == tree
    assert {oct(p.stat().st_mode & 0o777) for p in release.rglob("*") if p.is_file()} == {"0o644"}
    assert {oct(p.stat().st_mode & 0o777) for p in [release, *release.rglob("*")]
            if p.is_dir()} == {"0o755"}
    pool.upload_tree(target, str(workdir / "v2"), {"key.pem": b"secret"}, mode=0o600)
    assert (workdir / "v2" / "key.pem").stat().st_mode & 0o777 == 0o600


def test_upload_and_read_tree_round_trip(pool, sshd_server, workdir):
    target, tree = sshd_server.target(), sample_tree()
    release = workdir / "v1"
    pool.upload_tree(target, str(release), tree)
    local = {str(p.relative_to(release)): p.read_bytes()
             for p in release.rglob("*") if p.is_file()}
    assert local == tree
    assert {oct(p.stat().st_mode & 0o777) for p in release.rglob("*") if p.is_file()} == {"0o644"}
    assert {oct(p.stat().st_mode & 0o777) for p in [release, *release.rglob("*")]
            if p.is_dir()} == {"0o755"}
    assert pool.read_tree(target, str(release)) == tree
    assert [p.name for p in workdir.iterdir()] == ["v1"]  # no staging left behind


def test_read_tree_follows_the_top_link_only(pool, sshd_server, workdir):
    target = sshd_server.target()
    pool.upload_tree(target, str(workdir / "v1"), {"a.conf": b"a"})
    (workdir / "v1" / "escape").symlink_to("/etc")
    (workdir / "v1" / "passwd").symlink_to("/etc/passwd")
    (workdir / "live").symlink_to(workdir / "v1")
    assert pool.read_tree(target, str(workdir / "live")) == {"a.conf": b"a"}
    with pytest.raises(RemoteFileError) as caught:
        pool.read_tree(target, str(workdir / "missing"))
    assert caught.value.errno == errno.ENOENT


def test_upload_tree_refuses_an_existing_directory(pool, sshd_server, workdir):
    (workdir / "v1").mkdir()
    (workdir / "v1" / "keep").write_text("mine")
    with pytest.raises(RemoteFileError) as caught:
        pool.upload_tree(sshd_server.target(), str(workdir / "v1"), {"keep": b"theirs"})
    assert caught.value.errno == errno.EEXIST
    assert (workdir / "v1" / "keep").read_text() == "mine"
    assert sorted(p.name for p in workdir.iterdir()) == ["v1"]


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a//b", "./a", "a/..", "", "a\0b"])
def test_upload_tree_refuses_paths_leaving_the_tree(pool, sshd_server, workdir, bad):
    with pytest.raises(ValueError):
        pool.upload_tree(sshd_server.target(), str(workdir / "v1"), {"ok": b"", bad: b"x"})
    assert list(workdir.iterdir()) == []


def test_upload_dropped_midway_leaves_no_destination(make_pool, sshd_server, faulty_relay,
                                                    workdir):
    relay = faulty_relay(sshd_server.port)
    pool = make_pool(retries=2)
    target = sshd_server.target(port=relay.port)
    pool.kind(target, str(workdir))  # connected, so the cut lands inside the upload
    relay.drop_after(100_000)
    relay.refuse()  # and the node stays down
    files = {f"f{n}.bin": os.urandom(50_000) for n in range(10)}
    with pytest.raises(ConnectorError):
        pool.upload_tree(target, str(workdir / "v2"), files)
    assert not (workdir / "v2").exists()
    leftovers = [p.name for p in workdir.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith("v2.partial-")
    relay.refuse(False)
    pool.upload_tree(target, str(workdir / "v2"), files)
    assert pool.read_tree(target, str(workdir / "v2")) == files


def test_upload_retried_after_a_drop_completes_cleanly(make_pool, sshd_server, faulty_relay,
                                                      workdir):
    relay = faulty_relay(sshd_server.port)
    pool = make_pool(retries=2)
    target = sshd_server.target(port=relay.port)
    pool.kind(target, str(workdir))
    relay.drop_after(100_000)
    files = {f"dir{n % 3}/f{n}.bin": os.urandom(50_000) for n in range(10)}
    pool.upload_tree(target, str(workdir / "v3"), files)
    assert pool.read_tree(target, str(workdir / "v3")) == files
    assert [p.name for p in workdir.iterdir()] == ["v3"]  # the broken attempt was cleared
    assert pool.stats()["reconnects"] == 1


def test_full_disk_fails_uploads_and_writes_cleanly(sshd_factory, make_pool):
    # Pipelined writes are not acknowledged one by one: the failure shows as a short
    # file, caught before anything is renamed into place.
    server = sshd_factory(tiny_fs_bytes=64 * 1024)
    pool, disk = make_pool(), str(server.tiny_fs)
    target = server.target()
    with pytest.raises(RemoteFileError):
        pool.upload_tree(target, f"{disk}/v1", {"a.bin": os.urandom(40_000),
                                               "b/c.bin": os.urandom(40_000)})
    assert pool.kind(target, f"{disk}/v1") is None
    with pytest.raises(RemoteFileError):
        pool.write_file(target, f"{disk}/nginx.conf", os.urandom(100_000))
    assert pool.kind(target, f"{disk}/nginx.conf") is None
    assert pool.run(target, ["ls", "-A", disk]).stdout == ""  # no staging, no temp file
    pool.upload_tree(target, f"{disk}/v1", {"small.conf": b"fits"})
    assert pool.read_tree(target, f"{disk}/v1") == {"small.conf": b"fits"}


def test_symlink_swap_never_leaves_the_link_missing(pool, sshd_server, workdir):
    target = sshd_server.target()
    releases = []
    for name in ("v1", "v2"):
        pool.upload_tree(target, str(workdir / name), {"which": name.encode()})
        releases.append(str(workdir / name))
    link = workdir / "live"
    pool.symlink_swap(target, str(link), releases[0])  # the link did not exist yet
    stop = threading.Event()
    seen: set[bytes] = set()
    failures: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add((link / "which").read_bytes())
            except OSError as exc:
                failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for swap in range(200):
            pool.symlink_swap(target, str(link), releases[(swap + 1) % 2])
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    assert seen == {b"v1", b"v2"}
    assert os.readlink(link) == releases[0]
    assert sorted(p.name for p in workdir.iterdir()) == ["live", "v1", "v2"]


def test_symlink_swap_refuses_a_real_directory(pool, sshd_server, workdir):
    (workdir / "config").mkdir()
    (workdir / "config" / "keep").write_text("operator's")
    with pytest.raises(RemoteFileError) as caught:
        pool.symlink_swap(sshd_server.target(), str(workdir / "config"), "/tmp")
    assert caught.value.errno == errno.EISDIR
    assert (workdir / "config" / "keep").read_text() == "operator's"
    assert sorted(p.name for p in workdir.iterdir()) == ["config"]


def test_write_file_is_atomic_for_readers(pool, sshd_server, workdir):
    target, path = sshd_server.target(), workdir / "nginx.conf"
    versions = [b"A" * 200_000, b"B" * 150_000]
    pool.write_file(target, str(path), versions[0], mode=0o640)
    stop = threading.Event()
    wrong: list[object] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                content = path.read_bytes()
            except OSError as exc:
                wrong.append(exc)
                continue
            if content not in versions:
                wrong.append(len(content))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for step in range(100):
            pool.write_file(target, str(path), versions[step % 2], mode=0o640)
    finally:
        stop.set()
        thread.join()
    assert not wrong, wrong[:3]
    assert path.read_bytes() == versions[1] and path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in workdir.iterdir()] == ["nginx.conf"]
    assert pool.read_file(target, str(path)) == versions[1]


def test_remove_tree_never_follows_links(pool, sshd_server, workdir):
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    tree = workdir / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    (tree / "dir-link").symlink_to(outside)
    (tree / "file-link").symlink_to(outside / "precious")
    (workdir / "top-link").symlink_to(outside)
    target = sshd_server.target()
    pool.remove_tree(target, str(tree))
    pool.remove_tree(target, str(workdir / "top-link"))  # the link goes, not its target
    pool.remove_tree(target, str(workdir / "missing"))  # nothing to do, no error
    assert sorted(p.name for p in workdir.iterdir()) == ["outside"]
    assert (outside / "precious").read_text() == "keep"
    with pytest.raises(ValueError):
        pool.remove_tree(target, "/")


def test_kind_and_readlink(pool, sshd_server, workdir):
    (workdir / "d").mkdir()
    (workdir / "f").write_text("x")
    (workdir / "l").symlink_to("d")
    (workdir / "dangling").symlink_to(workdir / "nowhere")
    target = sshd_server.target()
    kinds = {name: pool.kind(target, str(workdir / name))
             for name in ("d", "f", "l", "dangling", "missing")}
    assert kinds == {"d": "dir", "f": "file", "l": "link", "dangling": "link", "missing": None}
    assert pool.readlink(target, str(workdir / "l")) == "d"
    assert pool.readlink(target, str(workdir / "dangling")) == str(workdir / "nowhere")
    assert pool.readlink(target, str(workdir / "f")) is None
    assert pool.readlink(target, str(workdir / "d")) is None
    assert pool.readlink(target, str(workdir / "missing")) is None


def test_mkdir_p_rename_and_file_errors(pool, sshd_server, workdir):
    target = sshd_server.target()
    pool.mkdir_p(target, str(workdir / "a" / "b" / "c"), 0o750)
    pool.mkdir_p(target, str(workdir / "a" / "b" / "c"))  # already there: fine
    assert (workdir / "a" / "b" / "c").stat().st_mode & 0o777 == 0o750
    (workdir / "file").write_text("x")
    with pytest.raises(RemoteFileError) as caught:
        pool.mkdir_p(target, str(workdir / "file" / "sub"))
    assert caught.value.errno == errno.ENOTDIR
    pool.rename(target, str(workdir / "a"), str(workdir / "renamed"))
    assert (workdir / "renamed" / "b" / "c").is_dir() and not (workdir / "a").exists()
    with pytest.raises(RemoteFileError) as missing:
        pool.read_file(target, str(workdir / "nope"))
    assert missing.value.errno == errno.ENOENT
    with pytest.raises(ValueError):
        pool.read_file(target, "relative/path")
    assert pool.stats()["connects"] == 1  # errors on a live connection keep it


# -- resources --------------------------------------------------------------------------

def test_no_descriptor_growth_over_operations_and_evictions(make_pool, sshd_server, workdir):
    pool = make_pool()
    target = sshd_server.target()
    path = str(workdir / "f")

    def operation(step: int) -> None:
        kind = step % 4
        if kind == 0:
            assert pool.run(target, ["echo", str(step)]).stdout == f"{step}\n"
        elif kind == 1:
            pool.write_file(target, path, str(step).encode())
        elif kind == 2:
            assert pool.read_file(target, path) == str(step - 1).encode()
        else:
            assert pool.kind(target, path) == "file"
        if step % 10 == 9:
            pool.evict(target.node_id)

    for step in range(10):  # warm up: imports, thread pools, lazy state
        operation(step)
    baseline = len(os.listdir("/proc/self/fd"))
    for step in range(10, 210):
        operation(step)
    assert pool.stats()["connects"] == 21
    assert len(os.listdir("/proc/self/fd")) <= baseline
