"""A node's test and reload commands are chosen from the forms its engine knows:
anything else is refused (unless ALLOW_CUSTOM_NODE_COMMANDS), and a custom command is
split into arguments, never run as a line.  (Storing, auditing and the pages are in
tests/db/test_node_commands.py.)"""

from __future__ import annotations

import shlex

import pytest

from app.engines import all_engines, get_engine
from app.services import node_commands
from app.services.node_commands import clean_command

KNOWN = [
    ("nginx", "test", "nginx -t"),
    ("nginx", "test", "nginx -t -q"),
    ("nginx", "test", "nginx -t -c /etc/nginx/nginx.conf"),
    ("nginx", "test", "/usr/sbin/nginx -t -p /srv/edge/ -c /srv/edge/nginx.conf "
                      "-e /srv/edge/logs/error.log"),
    ("nginx", "reload", "nginx -s reload"),
    ("nginx", "reload", "nginx -s reload -c /opt/nginx/conf/nginx.conf"),
    ("nginx", "reload", "systemctl reload nginx"),
    ("nginx", "reload", "pkill -HUP -F /run/nginx.pid -x nginx"),
    ("nginx", "reload", "/usr/bin/pkill -HUP -F /srv/edge/logs/nginx.pid -x nginx"),
    ("caddy", "test", "caddy validate --config /etc/caddy/Caddyfile"),
    ("caddy", "test", "caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile"),
    ("caddy", "reload", "caddy reload --config /etc/caddy/Caddyfile --adapter caddyfile "
                        "--address 127.0.0.1:2019"),
    ("caddy", "reload", "caddy reload --config /etc/caddy/Caddyfile --address [::1]:2019"),
    ("caddy", "reload", "systemctl reload caddy"),
    ("traefik", "test", "traefik version"),
    ("traefik", "reload", "true"),
]

REFUSED = [
    ("nginx", "test", "nginx -t; rm -rf /", "argument '-t;' has characters"),
    ("nginx", "test", "nginx -t $(id)", "argument '$(id)' has characters"),
    ("nginx", "test", "nginx -t `id`", "has characters that are not allowed"),
    ("nginx", "test", "nginx -t && curl evil", "has characters that are not allowed"),
    ("nginx", "test", "nginx -t -c nginx.conf", "'nginx.conf' must be an absolute path"),
    ("nginx", "test", "nginx -t -c /etc/../etc/shadow", "must not contain '.' or '..'"),
    ("nginx", "test", "nginx -t -g daemon=off", "is not a known nginx test command"),
    ("nginx", "test", "/usr/bin/curl -t", "is not a known nginx test command"),
    ("nginx", "test", "nginx -c /etc/nginx/nginx.conf -t", "is not a known nginx test"),
    ("nginx", "reload", "nginx -s stop", "is not a known nginx reload command"),
    ("nginx", "reload", "systemctl restart sshd", "is not a known nginx reload command"),
    ("nginx", "reload", "caddy reload --config /etc/caddy/Caddyfile", "known nginx reload"),
    ("nginx", "reload", "sudo -n nginx -s reload", "needs no 'sudo -n'"),
    # The signal form sends HUP, to nginx, named by an absolute pid file: nothing else.
    ("nginx", "reload", "pkill -KILL -F /run/nginx.pid -x nginx", "known nginx reload"),
    ("nginx", "reload", "pkill -HUP -F /run/nginx.pid -x sshd", "known nginx reload"),
    ("nginx", "reload", "pkill -HUP -x nginx", "known nginx reload"),
    ("nginx", "reload", "pkill -HUP -F run/nginx.pid -x nginx", "must be an absolute path"),
    ("nginx", "reload", "pkill -HUP -F /run/nginx.pid -x nginx -u root", "known nginx reload"),
    ("caddy", "reload", "caddy reload --config /etc/caddy/Caddyfile --address evil;x:1",
     "has characters that are not allowed"),
    ("caddy", "reload", "caddy reload --config /etc/caddy/Caddyfile --address host",
     "'host' must be host:port"),
    ("traefik", "reload", "false", "is not a known traefik reload command"),
    ("nginx", "test", "nginx -t\nreboot", "control or invisible characters"),
    ("nginx", "test", "nginx -t 'unclosed", "cannot be split into arguments"),
    ("nginx", "test", "   ", "is required"),
]


@pytest.mark.parametrize("engine,purpose,line", KNOWN)
def test_known_forms_are_accepted_and_stored_as_their_argument_list(engine, purpose, line):
    stored = clean_command(engine, purpose, line, allow_custom=False)
    assert shlex.split(stored) == shlex.split(line)


@pytest.mark.parametrize("engine,purpose,line,reason", REFUSED)
def test_anything_else_is_refused_with_the_reason(engine, purpose, line, reason):
    with pytest.raises(ValueError) as caught:
        clean_command(engine, purpose, line, allow_custom=False)
    assert reason in str(caught.value)


def test_an_unknown_command_names_the_known_forms():
    with pytest.raises(ValueError) as caught:
        clean_command("nginx", "reload", "service nginx reload", "deploy", allow_custom=False)
    message = str(caught.value)
    assert ("nginx -s reload [-p PATH] [-c PATH] [-e PATH] | systemctl reload nginx"
            " | pkill -HUP -F PATH -x nginx") in message
    assert "PATH is an absolute path" in message and "sudo -n" in message


def test_sudo_forms_are_for_a_user_other_than_root():
    line = "sudo -n systemctl reload nginx"
    assert clean_command("nginx", "reload", line, "deploy", allow_custom=False) == line
    assert node_commands.is_known("nginx", "reload", line, "deploy")
    assert not node_commands.is_known("nginx", "reload", line, "root")
    assert not node_commands.is_known("nginx", "reload", "sudo nginx -s reload", "deploy")


def test_every_default_and_offered_line_is_a_known_form():
    for engine in all_engines():
        defaults = get_engine(engine).defaults.node_fields()
        for purpose in node_commands.PURPOSES:
            assert node_commands.is_known(engine, purpose, defaults[f"{purpose}_command"])
            for user in ("root", "deploy"):
                for line in node_commands.offered(engine, purpose, user):
                    assert node_commands.is_known(engine, purpose, line, user), line
    assert "sudo -n nginx -t" in node_commands.offered("nginx", "test", "deploy")
    assert not any("sudo" in line for line in node_commands.offered("nginx", "test"))


@pytest.mark.parametrize("line", ["nginx -t; rm -rf /", "nginx -t $(id)", "a 'b c' \"$HOME\""])
def test_custom_commands_are_split_into_arguments_never_run_as_a_line(line):
    stored = clean_command("nginx", "test", line, allow_custom=True)
    # What runs is the argument list: ";" and "$(id)" are plain arguments.
    assert shlex.split(stored) == shlex.split(line)
    with pytest.raises(ValueError, match="control or invisible"):
        clean_command("nginx", "test", line + "\nreboot", allow_custom=True)
