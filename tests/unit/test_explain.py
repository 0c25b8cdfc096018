"""Failures in words: each kind of node failure becomes a sentence saying what to do;
clients never read the fleet's names, addresses, ports or paths."""

from __future__ import annotations

import pytest

from app.services import explain

RAW = {
    "refused": "upload: UnreachableError: node 3 (10.0.0.7:22) unreachable after 3 attempt(s) "
               "(mkdir /etc/nginx/rpcc.d.releases): connect failed: [Errno 111] Connection "
               "refused",
    "credentials": "upload: AuthenticationFailed: node 3: 10.0.0.7:22 refused the credentials "
                   "of user 'root'",
    "host key": "upload: HostKeyChanged: node 3: the host key changed (SHA256:abc)",
    "timeout": "test: CommandTimeout: node 3: command 'nginx' did not finish within 60s",
    "test": "test: nginx: [emerg] host not found in upstream \"db.internal:5432\" in "
            "/etc/nginx/rpcc.d/sites/12/site.conf:14",
    "verify": "verify: shop.example.com answered 502 from 10.0.0.7:80",
    "other": "swap: something nobody foresaw at /srv/x",
    "descriptors": "verify: the node did not load the new configuration within 10 s; "
                   "nginx: [emerg] epoll_create() failed (24: Too many open files) in "
                   "/etc/nginx/rpcc.d/rpcc.conf",
}
EXPECTED_ADMIN = {
    "refused": "SSH connection to node eu-1 refused: is sshd running and the port open?",
    "credentials": "Node eu-1 refused the SSH credentials",
    "host key": "Node eu-1 presents a new SSH host key",
    "timeout": "Node eu-1 did not answer in time",
    "test": "Node eu-1 refused the new configuration",
    "verify": "a site on node eu-1 did not answer correctly",
    "other": "The deployment to node eu-1 failed",
    "descriptors": "Node eu-1's proxy ran out of file descriptors",
}


@pytest.mark.parametrize("kind", sorted(RAW))
def test_administrators_read_a_sentence_naming_the_node_and_keep_the_raw_detail(kind):
    told = explain.node_failure(RAW[kind], "eu-1", admin=True)
    assert told.summary.startswith(EXPECTED_ADMIN[kind]) or EXPECTED_ADMIN[kind] in told.summary
    assert told.detail == RAW[kind]


@pytest.mark.parametrize("kind", sorted(RAW))
def test_clients_read_what_it_means_for_their_site_and_nothing_of_the_fleet(kind):
    told = explain.node_failure(RAW[kind], "eu-1", admin=False)
    assert told.summary and told.detail == ""
    for secret in ("eu-1", "10.0.0.7", ":22", "/etc/", "/srv", "node 3", "Errno", "root",
                   "db.internal", "SHA256"):
        assert secret not in told.summary, (kind, secret)


def test_no_failure_has_no_sentence():
    assert explain.node_failure("", "eu-1", admin=True) == explain.Explanation("", "")
    assert explain.rollout_failure(0, 3, admin=False).summary == ""


def test_a_rollout_says_how_many_nodes_failed():
    assert explain.rollout_failure(2, 5, admin=False).summary.startswith(
        "The deployment failed on 2 of 5 nodes")
    assert "the node" in explain.rollout_failure(1, 1, admin=True, error="x").summary


def test_a_failed_node_check_says_which_part_and_what_to_do():
    ssh = explain.check_failure("ssh", RAW["refused"].split(": ", 1)[1], "eu-1")
    assert ssh.summary.startswith("SSH connection to node eu-1 refused")
    http = explain.check_failure(
        "http", "no HTTP answer on 10.0.0.7:80: [Errno 111] Connection refused", "eu-1")
    assert http.summary.startswith("Node eu-1 does not answer HTTP")
    assert "10.0.0.7:80" in http.detail
    skipped = explain.check_failure("service", "not checked: SSH failed", "eu-1")
    assert skipped == explain.Explanation("not checked: SSH failed", "")
