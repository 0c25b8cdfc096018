"""Forms shared by the admin and client panels.

The site form converts its textareas into the API's site dict (and back), so that the
web UI and the API hand ``services.sites`` the same shape and the service alone
decides what is valid.  The form only rejects what it cannot even parse.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Any

from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    IntegerField,
    SelectChoice,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import Optional, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget

from app.models import BackendProtocol, SslMode, User, WafLevel
from app.services.nodes import PoolChoice


def enum_choices(enum_cls: type[enum.Enum]) -> list[SelectChoice]:
    return [SelectChoice(member.value, str(member.value).replace("_", " ")) for member in enum_cls]


def form_status(form: FlaskForm) -> int:
    """A submitted form that comes back with errors is answered 422, so that
    scripts and tests can tell a refused submission from a first view."""
    return 422 if form.is_submitted() and form.errors else 200


class ServiceForm(FlaskForm):
    """A form whose field names match the keys of the service's
    ``ValidationError.fields``; keys without a field become form-level errors."""

    def add_service_errors(self, fields: dict[str, str]) -> None:
        for key, message in fields.items():
            field = self._fields.get(key)
            if field is not None and key not in {"csrf_token", "submit"}:
                field.errors = [*field.errors, message]
            else:
                self.form_errors.append(message if key == "_" else f"{key}: {message}")


class CheckboxesField(SelectMultipleField):
    """A choice of several, as a checkbox each (``macros.field`` draws a fieldset)."""

    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


# ----------------------------------------------------------------------------- site form


class LinesField(TextAreaField):
    """A textarea with one entry per line; blank lines are ignored.

    The service reports list errors by position (``aliases.2``); the field remembers
    which line produced each entry so that the message can name the line.
    """

    errors: list[str]

    def parse_line(self, line: str) -> Any:
        return line

    def pre_validate(self, form: Any) -> None:
        self.values: list[Any] = []
        self.line_numbers: list[int] = []
        for number, raw in enumerate((self.data or "").splitlines(), 1):
            line = raw.strip()
            if not line:
                continue
            try:
                self.values.append(self.parse_line(line))
                self.line_numbers.append(number)
            except ValueError as exc:
                self.errors.append(f"line {number}: {exc}")

    def add_entry_error(self, index: int, message: str) -> None:
        known = 0 <= index < len(getattr(self, "line_numbers", []))
        number = self.line_numbers[index] if known else index + 1
        self.errors = [*self.errors, f"line {number}: {message}"]


_BACKEND = re.compile(
    r"^(?:\[(?P<ipv6>[^\[\]\s]+)\]|(?P<host>[^\[\]\s:]+)):(?P<port>\S+)(?:\s+(?P<weight>\S+))?$"
)


class FilterForm(FlaskForm):
    """Query-string filters of a list page: no CSRF token, read from ``request.args``."""

    class Meta:
        csrf = False


# The orders a site list offers, in the administrator's list and the client's.
SITE_ORDER = [SelectChoice("domain", "by name"),
              SelectChoice("-updated", "recently changed first"),
              SelectChoice("status", "by state")]


def _pool_label(pool: PoolChoice) -> str:
    if not pool.usable:
        return f"{pool.name} (no node yet)"
    count = f"{pool.nodes} node{'' if pool.nodes == 1 else 's'}"
    return f"{pool.name} ({count}: {', '.join(pool.engines)})"


class BackendsField(LinesField):
    def parse_line(self, line: str) -> dict[str, Any]:
        if "://" in line:
            raise ValueError("write host:port without http:// or https:// (the backend "
                             "protocol is chosen below)")
        match = _BACKEND.match(line)
        if match is None:
            if line.count(":") > 1 and not line.startswith("["):
                raise ValueError("write IPv6 addresses in brackets, e.g. [::1]:8080")
            raise ValueError("write host:port or host:port weight")
        port, weight = match["port"], match["weight"]
        if not port.isdigit():
            raise ValueError(f"port '{port[:20]}' is not a number")
        if weight is not None and not weight.isdigit():
            raise ValueError(f"weight '{weight[:20]}' is not a number")
        return {
            "host": match["ipv6"] or match["host"],
            "port": int(port),
            "weight": int(weight) if weight is not None else 1,
        }


class HeadersField(LinesField):
    def parse_line(self, line: str) -> tuple[str, str]:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError("write Name: value")
        return name.strip(), value.strip()

    def pre_validate(self, form: Any) -> None:
        super().pre_validate(form)
        # A dict would silently keep only the last of two equal names.
        seen: set[str] = set()
        for (name, _), number in zip(self.values, self.line_numbers, strict=True):
            if name.lower() in seen:
                self.errors.append(f"line {number}: {name} is listed twice")
            seen.add(name.lower())

    def add_name_error(self, name: str, message: str) -> None:
        for index, (header, _) in enumerate(getattr(self, "values", [])):
            if header[:64] == name:
                self.add_entry_error(index, f"{header}: {message}")
                return
        self.errors = [*self.errors, f"{name}: {message}"]


class BasicAuthField(LinesField):
    def parse_line(self, line: str) -> dict[str, str]:
        username, colon, password = line.partition(":")
        item = {"username": username.strip()}
        if colon and password.strip():
            item["password"] = password.strip()
        return item


class CountriesField(StringField):
    def pre_validate(self, form: Any) -> None:
        self.values = [code for code in re.split(r"[\s,;]+", self.data or "") if code]


_SITE_ERROR_FIELDS = {
    "cache": "cache_enabled", "cache.enabled": "cache_enabled", "cache.ttl": "cache_ttl",
    "geo": "geo_mode", "geo.mode": "geo_mode", "geo.countries": "geo_countries",
    "rate_limit": "rate_limit_rps", "rate_limit.requests_per_second": "rate_limit_rps",
    "rate_limit.burst": "rate_limit_burst",
}
_LINE_FIELDS = ("aliases", "backends", "ip_allow", "ip_deny", "basic_auth")


class SiteForm(ServiceForm):
    """Every site setting.  Built with ``owners`` it is the admin's form (owner and
    blocking fields); without, the client's."""

    domain = StringField("Domain", description="The main name, e.g. www.example.com.")
    aliases = LinesField(
        "Aliases", description="Other names of the same site, one per line "
        "(a wildcard such as *.example.com is allowed).",
    )
    backends = BackendsField(
        "Backends", description="One per line: <code>host:port</code> or "
        "<code>host:port weight</code>; IPv6 as <code>[::1]:8080</code>.",
    )
    backend_protocol = SelectField("Backend protocol", choices=enum_choices(BackendProtocol))
    pool = SelectField("Pool", description="The group of proxy nodes that serves the site.")
    ssl_mode = SelectField("TLS certificate", choices=enum_choices(SslMode))
    acme_challenge = SelectField(
        "ACME validation",
        choices=[SelectChoice("http-01", "HTTP-01 (through the proxy nodes)"),
                 SelectChoice("dns-01", "DNS-01 (TXT record in the zone's DNS)")],
        validate_choice=False,  # the service checks it, with its own message
        description="For letsencrypt: DNS-01 needs a DNS provider for the domain's zone "
                    "(ask an administrator) and is the only way to get wildcard names.")
    force_https = BooleanField("Redirect HTTP to HTTPS")
    hsts = BooleanField("HSTS (tell browsers to use HTTPS only)")
    http2 = BooleanField("HTTP/2", default=True)
    websocket = BooleanField("WebSocket connections")
    waf_level = SelectField("Web application firewall", choices=enum_choices(WafLevel))
    cache_enabled = BooleanField("Cache responses")
    cache_ttl = IntegerField("Cache lifetime (seconds)", default=300, validators=[Optional()])
    geo_mode = SelectField(
        "Country filter", choices=[SelectChoice("off"),
                                   SelectChoice("allow", "allow only these countries"),
                                   SelectChoice("deny", "deny these countries")],
    )
    geo_countries = CountriesField(
        "Countries", description="ISO codes separated by commas or spaces, e.g. DE, FR.",
    )
    ip_allow = LinesField(
        "Allowed addresses", description="One IP address or CIDR network per line; "
        "when set, every other address is refused.",
    )
    ip_deny = LinesField("Denied addresses", description="One IP address or CIDR per line.")
    basic_auth = BasicAuthField(
        "Basic auth users", description="One <code>username:password</code> per line. "
        "A line with only the username keeps that user's current password.",
    )
    rate_limit_rps = IntegerField(
        "Rate limit (requests per second per client)", validators=[Optional()],
        description="Leave blank for no limit.",
    )
    rate_limit_burst = IntegerField("Burst", default=0, validators=[Optional()],
                                    description="Requests allowed above the rate.")
    headers = HeadersField(
        "Custom headers", description="One <code>Name: value</code> per line.",
    )
    owner_id = SelectField("Owner", coerce=int)
    blocked = BooleanField("Blocked")
    blocked_reason = StringField("Reason for blocking", description="Shown to visitors.")
    submit = SubmitField("Save")

    def __init__(self, *args: Any, pools: list[PoolChoice], owners: list[User] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        current = kwargs.get("data", {}).get("pool")
        # A client cannot choose a pool that would serve the site nowhere (its current
        # pool stays choosable, so that saving other changes never fails on it).
        self._unusable = {p.name for p in pools
                          if not p.usable and owners is None and p.name != current}
        self.pool.choices = [SelectChoice(p.name, _pool_label(p), render_kw={
            "data-engines": " ".join(p.engines),
            **({"disabled": True} if p.name in self._unusable else {})}) for p in pools]
        if owners is None:
            del self.owner_id
            del self.blocked
            del self.blocked_reason
        else:
            self.owner_id.choices = [
                SelectChoice(u.id, f"{u.username} ({u.role.value})") for u in owners
            ]

    def validate_pool(self, field: SelectField) -> None:
        if field.data in self._unusable:
            raise ValidationError("this pool has no enabled node yet: choose another, or ask "
                                  "an administrator to add a node")

    @property
    def is_admin_form(self) -> bool:
        return self.owner_id is not None

    @staticmethod
    def initial(site: dict[str, Any]) -> dict[str, Any]:
        """Form data from the API representation of a site (passwords are not in it)."""

        def backend(b: dict[str, Any]) -> str:
            host = f"[{b['host']}]" if ":" in b["host"] else b["host"]
            return f"{host}:{b['port']}" + (f" {b['weight']}" if b["weight"] != 1 else "")

        limit = site["rate_limit"]
        data = {
            "domain": site["domain"],
            "aliases": "\n".join(site["aliases"]),
            "backends": "\n".join(backend(b) for b in site["backends"]),
            "backend_protocol": site["backend_protocol"],
            "pool": site["pool"],
            "ssl_mode": site["ssl_mode"],
            "acme_challenge": site["acme_challenge"],
            "force_https": site["force_https"],
            "hsts": site["hsts"],
            "http2": site["http2"],
            "websocket": site["websocket"],
            "waf_level": site["waf_level"],
            "cache_enabled": site["cache"]["enabled"],
            "cache_ttl": site["cache"]["ttl"],
            "geo_mode": site["geo"]["mode"],
            "geo_countries": ", ".join(site["geo"]["countries"]),
            "ip_allow": "\n".join(site["ip_allow"]),
            "ip_deny": "\n".join(site["ip_deny"]),
            "basic_auth": "\n".join(u["username"] for u in site["basic_auth"]),
            "rate_limit_rps": limit["requests_per_second"] if limit else None,
            "rate_limit_burst": limit["burst"] if limit else 0,
            "headers": "\n".join(f"{name}: {value}" for name, value in site["headers"].items()),
            "blocked": site["blocked"],
            "blocked_reason": site["blocked_reason"],
        }
        if "owner_id" in site:
            data["owner_id"] = site["owner_id"]
        return data

    def to_data(self) -> dict[str, Any]:
        """The site dict with the API's field names (call after ``validate``)."""
        cache: dict[str, Any] = {"enabled": self.cache_enabled.data}
        if self.cache_ttl.data is not None:
            cache["ttl"] = self.cache_ttl.data
        rps = self.rate_limit_rps.data
        data: dict[str, Any] = {
            "domain": (self.domain.data or "").strip(),
            "aliases": self.aliases.values,
            "backends": self.backends.values,
            "backend_protocol": self.backend_protocol.data,
            "pool": self.pool.data,
            "ssl_mode": self.ssl_mode.data,
            "force_https": self.force_https.data,
            "hsts": self.hsts.data,
            "http2": self.http2.data,
            "websocket": self.websocket.data,
            "waf_level": self.waf_level.data,
            "cache": cache,
            "geo": {"mode": self.geo_mode.data, "countries": self.geo_countries.values},
            "ip_allow": self.ip_allow.values,
            "ip_deny": self.ip_deny.values,
            "basic_auth": self.basic_auth.values,
            "rate_limit": None if rps is None else {
                "requests_per_second": rps, "burst": self.rate_limit_burst.data or 0,
            },
            "headers": dict(self.headers.values),
        }
        if self.acme_challenge.data:
            data["acme_challenge"] = self.acme_challenge.data
        if self.is_admin_form:
            data["owner_id"] = self.owner_id.data
            data["blocked"] = self.blocked.data
            data["blocked_reason"] = (self.blocked_reason.data or "").strip()
        return data

    def validate_on_submit_with(self, check: Callable[[dict[str, Any]], dict[str, str]]) -> bool:
        """``validate_on_submit``; when some fields fail to parse, the service still
        checks what the others hold (``check`` returns its field errors), so that one
        submission shows every problem instead of revealing them in rounds."""
        if not self.is_submitted():
            return False
        if self.validate():
            return True
        failed = {name for name, field in self._fields.items() if field.errors}
        self.add_service_errors({key: message for key, message in check(self.to_data()).items()
                                 if self._field_of(key) not in failed})
        return False

    @staticmethod
    def _field_of(key: str) -> str:
        if key in _SITE_ERROR_FIELDS:
            return _SITE_ERROR_FIELDS[key]
        if key.startswith("geo.countries."):
            return "geo_countries"
        return key.partition(".")[0]

    def add_service_errors(self, fields: dict[str, str]) -> None:
        """Put each of the service's error keys ("backends.0.host", "cache.ttl",
        "headers.X-Name", ...) under the field that produced the value."""
        for key, message in fields.items():
            if key in _SITE_ERROR_FIELDS:
                self._append(_SITE_ERROR_FIELDS[key], message)
                continue
            root, _, rest = key.partition(".")
            if key.startswith("geo.countries."):
                self._append("geo_countries", message)
            elif root in _LINE_FIELDS and rest:
                index, _, sub = rest.partition(".")
                field: LinesField = self[root]
                if index.isdigit():
                    field.add_entry_error(int(index), f"{sub} {message}" if sub else message)
                else:
                    self._append(root, f"{rest}: {message}")
            elif root == "headers" and rest:
                self.headers.add_name_error(rest, message)
            else:
                super().add_service_errors({key: message})

    def _append(self, name: str, message: str) -> None:
        field = self[name]
        field.errors = [*field.errors, message]



# ----------------------------------------------------------------------- certificates


class CertificateUploadForm(ServiceForm):
    chain_pem = TextAreaField(
        "Certificate chain (PEM)",
        description="The site's certificate first, then its intermediates.")
    key_pem = TextAreaField("Private key (PEM)",
                            description="Unencrypted; it is stored encrypted.")
    submit = SubmitField("Upload and deploy")


class AcmeSettingsForm(ServiceForm):
    directory_url = StringField(
        "ACME directory URL", description="Empty restores the default from ACME_DIRECTORY_URL.")
    email = StringField("Account email", description="The CA writes here about expiring "
                                                     "certificates; may be empty.")
    ca_bundle_pem = TextAreaField(
        "CA bundle (PEM)", description="Roots that sign a private CA's TLS certificate; "
                                       "empty uses the system's trust store.")
    submit = SubmitField("Save")

    def to_data(self) -> dict[str, str]:
        return {"directory_url": (self.directory_url.data or "").strip(),
                "email": (self.email.data or "").strip(),
                "ca_bundle_pem": self.ca_bundle_pem.data or ""}


class SecuritySettingsForm(ServiceForm):
    require_admin_two_factor = BooleanField(
        "Require two-factor sign-in for administrators",
        description="An administrator without it is taken to its set-up after the password "
                    "and can reach nothing else until done. API tokens keep working.")
    submit_security = SubmitField("Save sign-in settings")
