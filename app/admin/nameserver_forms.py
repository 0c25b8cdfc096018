"""Forms of the nameserver settings and the zones' expected nameservers.  Lists are
typed one entry per line (commas and spaces also separate them); the service judges
each entry and names the one it refuses."""

from __future__ import annotations

import re
from typing import Any

from wtforms import StringField, SubmitField, TextAreaField

from app.forms import ServiceForm

_SEPARATORS = re.compile(r"[,\s]+")


def _entries(text: str | None) -> list[str]:
    return [entry for entry in _SEPARATORS.split(text or "") if entry]


class NameserverSettingsForm(ServiceForm):
    """The Settings page's Nameservers section."""

    nameservers = TextAreaField(
        "Expected nameservers", description="The NS records every site's zone should have, "
        "one per line, e.g. <code>ns1.example.net</code>. A zone with its own list (zone "
        "nameservers) uses that instead. Empty: only zones with their own list are judged.")
    resolvers = TextAreaField(
        "DNS resolvers", description="The servers asked about names, one per line: an IP "
        "address with an optional port, e.g. <code>192.0.2.53</code> or "
        "<code>127.0.0.1:5300</code>. Nameserver checks and the ACME pre-check run only "
        "when some are set.")
    save_nameservers = SubmitField("Save nameserver settings")
    reset_resolvers = SubmitField("Use the environment's resolvers")

    @staticmethod
    def initial(current: dict[str, Any]) -> dict[str, str]:
        return {"nameservers": "\n".join(current["nameservers"]),
                "resolvers": "\n".join(current["resolvers"])}

    def to_data(self, current: dict[str, Any]) -> dict[str, Any]:
        """The expected list, and the resolvers only when they differ from those in
        force, so that a list left as it was keeps following the environment; a reset
        sends null (the environment's ``DNS_RESOLVERS``)."""
        if self.reset_resolvers.data:
            return {"resolvers": None}
        data: dict[str, Any] = {"nameservers": _entries(self.nameservers.data)}
        resolvers = _entries(self.resolvers.data)
        if resolvers != current["resolvers"] or current["resolver_problem"]:
            data["resolvers"] = resolvers
        return data


class ZoneNameserversForm(ServiceForm):
    zone = StringField("Zone", description="e.g. <code>example.com</code>: its names, and "
                       "those of zones under it without a list of their own, are held to "
                       "this list instead of the one in Settings.")
    nameservers = TextAreaField("Expected nameservers",
                                description="One per line, e.g. <code>ns1.example.net</code>.")
    submit = SubmitField("Save")

    @staticmethod
    def initial(zone: Any) -> dict[str, str]:
        return {"zone": zone.zone, "nameservers": "\n".join(zone.nameservers)}

    def to_data(self) -> dict[str, Any]:
        return {"zone": (self.zone.data or "").strip(),
                "nameservers": _entries(self.nameservers.data)}
