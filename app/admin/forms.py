"""Forms only the admin panel uses (the site form is shared: ``app.forms``)."""

from __future__ import annotations

from ipaddress import ip_network
from typing import Any

from wtforms import (
    BooleanField,
    EmailField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import Optional

from app.engines import get_engine
from app.forms import FilterForm, ServiceForm, enum_choices
from app.models import DnsProvider, Node, ProxyType, Role, User
from app.services import node_commands
from app.services.dns_providers import TSIG_ALGORITHMS

_NGINX = get_engine("nginx").defaults
_CADDY = get_engine("caddy").defaults


class UserForm(ServiceForm):
    """Create (with an optional password) or edit (with the active flag) an account."""

    username = StringField("Username")
    email = EmailField("Email")
    role = SelectField("Role", choices=enum_choices(Role), default=Role.CLIENT.value)
    max_sites = IntegerField("Site quota", validators=[Optional()],
                             description="How many sites the user may own.")
    password = PasswordField(
        "Password", description="Leave blank to generate one; it is shown once.",
    )
    is_active = BooleanField("Active (may sign in)", default=True)
    submit = SubmitField("Save")

    def __init__(self, *args: Any, creating: bool, own_account: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if creating:
            del self.is_active
        else:
            del self.password
        if own_account:
            # Demoting or deactivating oneself is refused: not offered either.
            del self.is_active
            self.role.choices = [choice for choice in self.role.choices
                                 if choice.value == Role.ADMIN.value]

    @staticmethod
    def initial(user: User) -> dict[str, Any]:
        return {"username": user.username, "email": user.email, "role": user.role.value,
                "max_sites": user.max_sites, "is_active": user.is_active}

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "username": (self.username.data or "").strip(),
            "email": (self.email.data or "").strip(),
            "role": self.role.data,
        }
        if self.max_sites.data is not None:
            data["max_sites"] = self.max_sites.data
        if self.password is not None and self.password.data:
            data["password"] = self.password.data
        if self.is_active is not None:
            data["is_active"] = self.is_active.data
        return data


class NodeForm(ServiceForm):
    """Every node field.  The SSH key and password are write-only: never shown, and a
    blank one keeps the stored secret."""

    name = StringField("Name")
    host = StringField("Host", description="IP address or DNS name reached over SSH.")
    ssh_port = IntegerField("SSH port", default=22, validators=[Optional()])
    ssh_user = StringField("SSH user", default="root")
    ssh_private_key = TextAreaField(
        "SSH private key", description="Unencrypted PEM or OpenSSH key. Stored encrypted; "
        "never shown again.",
    )
    ssh_password = PasswordField("SSH password", description="Instead of a key. Stored "
                                 "encrypted; never shown again.")
    proxy_type = SelectField("Proxy engine", choices=enum_choices(ProxyType))
    pool = SelectField("Pool")
    config_dir = StringField(
        "Config directory", description=f"Blank: the engine's default "
        f"(nginx: <code>{_NGINX.config_dir}</code>).",
    )
    # Chosen, not typed (see node_commands); the choices depend on the node.
    test_command = SelectField("Test command", validate_choice=False)
    reload_command = SelectField("Reload command", validate_choice=False)
    test_command_custom = StringField(
        "Custom test command", description="Instead of the choice above. Run as an "
        "argument list, never through a shell.")
    reload_command_custom = StringField(
        "Custom reload command", description="Instead of the choice above. Run as an "
        "argument list, never through a shell.")
    listen_address = StringField("Listen address",
                                 description="IP the sites bind on; blank for all addresses.")
    http_port = IntegerField("HTTP port", default=80, validators=[Optional()])
    https_port = IntegerField("HTTPS port", default=443, validators=[Optional()])
    status_port = IntegerField(
        "Status port", validators=[Optional()], description=f"Port on the node's loopback "
        f"where the control plane reads the proxy's connections and requests: nginx's "
        f"status listener, which deployments open (blank: {_NGINX.status_port}), or "
        f"Caddy's admin endpoint when the reload command names no <code>--address</code> "
        f"(blank: {_CADDY.status_port}); Traefik's are not read. Not the SSH, HTTP or "
        f"HTTPS port.")
    glances_url = StringField(
        "Glances URL", description="Where the node's metrics are read. Blank: Glances on "
        "the node's loopback (<code>127.0.0.1:61208</code>), reached through the node's SSH "
        "connection, so no port is opened. <code>ssh://127.0.0.1:PORT</code> (any loopback "
        "address): the same on another address or port. <code>http://HOST:PORT</code> or "
        "<code>https://HOST/PATH</code>: read directly from the control plane. A node "
        "without Glances shows \u201cno metrics\u201d.")
    log_dir = StringField("Log directory", description="Per-site access and error logs. "
                          "Blank: <code>/var/log/rpcc</code>.")
    cache_dir = StringField("Cache directory", description="Blank: <code>/var/cache/rpcc</code>.")
    geoip_db_path = StringField(
        "GeoIP2 database", description="Country database used by geo rules. Blank: "
        "<code>/usr/share/GeoIP/GeoLite2-Country.mmdb</code>.")
    enabled = BooleanField("Enabled (receives deployments)", default=True)
    submit = SubmitField("Save")

    def __init__(self, *args: Any, pools: list[str], creating: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool.choices = list(pools)
        if not creating:
            keep = "Leave blank to keep the stored one."
            self.ssh_private_key.description = f"Write-only. {keep}"
            self.ssh_password.description = f"Write-only. {keep}"
        initial = kwargs.get("data") or {}
        for purpose in node_commands.PURPOSES:
            self._offer_commands(purpose, None if creating else initial)
        if not node_commands.custom_commands_allowed():
            del self.test_command_custom
            del self.reload_command_custom

    def _offer_commands(self, purpose: str, initial: dict[str, Any] | None) -> None:
        """The forms every engine knows, grouped by engine (the engine may change in
        the same submission); ``sudo -n`` ones when the node is reached as another
        user than root (unknown yet on a new node). A stored command that is no known
        form is offered too: it keeps working while it stays as it is."""
        field = self[f"{purpose}_command"]
        user = (initial or {}).get("ssh_user") or "root"
        choices: list[SelectChoice] = []
        offered: set[str] = set()
        for engine, lines in node_commands.offered_by_engine(purpose).items():
            choices += [SelectChoice(line, line, optgroup=engine) for line in lines]
            offered.update(lines)
            if initial is None or user != "root":
                sudo = [node_commands.with_sudo(line) for line in lines]
                group = f"{engine}, with sudo -n (an SSH user other than root)"
                choices += [SelectChoice(line, line, optgroup=group) for line in sudo]
                offered.update(sudo)
        hint = ("Other paths in the same forms (<code>-c PATH</code>, <code>--config "
                "PATH</code>) can be set through the API or <code>nodes.yaml</code>.")
        if initial is None:
            field.choices = [SelectChoice("", "The engine's default"), *choices]
            field.description = hint
            return
        current = initial.get(f"{purpose}_command") or ""
        if current and current not in offered:
            known = node_commands.is_known(initial.get("proxy_type") or "nginx", purpose,
                                           current, user)
            label = f"{current} (current)" if known else f"{current} (current, not a known form)"
            choices.insert(0, SelectChoice(current, label))
            if not known:
                hint = ("The current command is not one of the forms the engine knows: "
                        "it keeps working while left as it is, but a change must be a "
                        "known form. " + hint)
        field.description = hint
        field.choices = choices

    def add_service_errors(self, fields: dict[str, str]) -> None:
        """A refused command is shown under the field it was typed in."""
        fields = dict(fields)
        for name in ("test_command", "reload_command"):
            custom = self._fields.get(f"{name}_custom")
            if name in fields and custom is not None and (custom.data or "").strip():
                fields[f"{name}_custom"] = fields.pop(name)
        super().add_service_errors(fields)

    @staticmethod
    def initial(node: Node) -> dict[str, Any]:
        return {
            "name": node.name, "host": node.host, "ssh_port": node.ssh_port,
            "ssh_user": node.ssh_user, "proxy_type": node.proxy_type.value,
            "pool": node.pool.name, "config_dir": node.config_dir,
            "test_command": node.test_command, "reload_command": node.reload_command,
            "listen_address": node.listen_address or "", "http_port": node.http_port,
            "https_port": node.https_port, "glances_url": node.glances_url or "",
            "enabled": node.enabled, "log_dir": node.log_dir, "cache_dir": node.cache_dir,
            "geoip_db_path": node.geoip_db_path, "status_port": node.status_port,
        }

    def to_data(self) -> dict[str, Any]:
        """Blank numbers and the blank SSH user are left out (defaults on create,
        unchanged on edit), but for the status port, whose blank is the engine's
        default; blank secrets are left out so the stored ones stay."""
        data: dict[str, Any] = {
            "name": (self.name.data or "").strip(),
            "host": (self.host.data or "").strip(),
            "proxy_type": self.proxy_type.data,
            "pool": self.pool.data,
            "enabled": self.enabled.data,
        }
        for name in ("config_dir", "test_command", "reload_command", "listen_address",
                     "glances_url", "log_dir", "cache_dir", "geoip_db_path"):
            data[name] = (self[name].data or "").strip()
        for name in ("test_command", "reload_command"):
            custom = self._fields.get(f"{name}_custom")
            if custom is not None and (custom.data or "").strip():
                data[name] = custom.data.strip()
        if (self.ssh_user.data or "").strip():
            data["ssh_user"] = self.ssh_user.data.strip()
        for name in ("ssh_port", "http_port", "https_port"):
            if self[name].data is not None:
                data[name] = self[name].data
        # Blank is the engine's default, on edit too.
        data["status_port"] = self.status_port.data
        if (self.ssh_private_key.data or "").strip():
            data["ssh_private_key"] = self.ssh_private_key.data
        if self.ssh_password.data:
            data["ssh_password"] = self.ssh_password.data
        return data


def _network(entry: str) -> str:
    """``::1`` as the policy writes it (``::1/128``); anything else as typed, for the
    service to refuse."""
    try:
        return str(ip_network(entry, strict=True))
    except ValueError:
        return entry


class BackendPolicyForm(ServiceForm):
    """The backend address policy: one network per line (commas and spaces also
    separate them, as in the environment variables)."""

    denied_networks = TextAreaField(
        "Denied networks", description="Backends may not point into these, besides the "
        "networks always denied (listed above). One per line, e.g. <code>10.0.0.0/8</code> "
        "or <code>2001:db8::/32</code>.")
    allowed_networks = TextAreaField(
        "Allowed networks", description="Exceptions to every denied network, e.g. "
        "<code>127.0.0.0/8</code> for local trials. A cloud metadata address is opened "
        "only by an entry naming it alone (<code>/32</code>, <code>/128</code>).")
    save_policy = SubmitField("Save backend policy")
    reset_policy = SubmitField("Use the environment's values")

    @staticmethod
    def initial(policy: dict[str, Any]) -> dict[str, str]:
        return {name: "\n".join(policy[name]) for name in ("denied_networks",
                                                            "allowed_networks")}

    def to_data(self, policy: dict[str, Any]) -> dict[str, Any]:
        """The lists that differ from ``policy`` (the one in force), so that a list
        left as it was keeps following the environment; a reset sends null (the
        environment's value) for both."""
        if self.reset_policy.data:
            return {"denied_networks": None, "allowed_networks": None}
        data = {name: (self[name].data or "").replace(",", " ").split()
                for name in ("denied_networks", "allowed_networks")}
        return {name: value for name, value in data.items()
                if [_network(entry) for entry in value] != policy[name]}


class PoolForm(ServiceForm):
    name = StringField("Name")
    description = StringField("Description")
    submit = SubmitField("Save")

    def to_args(self) -> tuple[str, str]:
        """The name and description ``nodes.create_pool`` and ``update_pool`` take."""
        return (self.name.data or "").strip(), (self.description.data or "").strip()


class DnsProviderForm(ServiceForm):
    """An RFC 2136 server for one zone.  The TSIG secret is write-only: never shown,
    and a blank one keeps the stored secret."""

    name = StringField("Name")
    zone = StringField("Zone", description="e.g. example.com: DNS-01 records of every "
                       "domain under it are written here (the longest matching zone wins).")
    server = StringField("Server", description="IP address or name of the primary "
                         "authoritative server that accepts signed updates.")
    port = IntegerField("Port", default=53, validators=[Optional()])
    tsig_name = StringField("TSIG key name")
    tsig_algorithm = SelectField("TSIG algorithm", choices=list(TSIG_ALGORITHMS),
                                 default="hmac-sha256")
    tsig_secret = PasswordField("TSIG secret", description="Base64, as <code>keymgr -t</code> "
                                "or <code>tsig-keygen</code> print it. Stored encrypted; "
                                "never shown again.")
    submit = SubmitField("Save")

    def __init__(self, *args: Any, creating: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not creating:
            self.tsig_secret.description = "Write-only. Leave blank to keep the stored one."

    @staticmethod
    def initial(provider: DnsProvider) -> dict[str, Any]:
        return {"name": provider.name, "zone": provider.zone, "server": provider.server,
                "port": provider.port, "tsig_name": provider.tsig_name,
                "tsig_algorithm": provider.tsig_algorithm}

    def to_data(self) -> dict[str, Any]:
        """Text as typed (the service judges it); a blank port or secret is left out."""
        data: dict[str, Any] = {
            name: (self[name].data or "").strip()
            for name in ("name", "zone", "server", "tsig_name")
        }
        data["tsig_algorithm"] = self.tsig_algorithm.data
        if self.port.data is not None:
            data["port"] = self.port.data
        if self.tsig_secret.data:
            data["tsig_secret"] = self.tsig_secret.data
        return data


class DomainGrantForm(ServiceForm):
    name = StringField("Domain",
                       description="A registered domain such as example.net: its names, the "
                                   "names under it and the wildcards over them become this "
                                   "client's only.")


class BlockForm(ServiceForm):
    blocked_reason = StringField("Reason", description="Shown to visitors of the site.")


class SearchForm(FilterForm):
    """A list that is searched by name only."""

    q = StringField("Search")
