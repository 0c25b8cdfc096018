"""What each kind of rule watches, said once: its label, what it is raised about, what
its threshold means and which values it takes.  Rules validate against it, the
evaluation reads the subject from it, and the forms and the API describe it."""

from __future__ import annotations

from dataclasses import dataclass

from app.models import AlertKind, SubjectKind


@dataclass(frozen=True)
class Threshold:
    """A kind's threshold: a number between ``low`` and ``high`` in ``unit``.

    :param whole: only whole numbers (days, nodes).
    :param offers: values the form suggests.
    """

    unit: str
    low: float
    high: float
    whole: bool = False
    offers: tuple[int, ...] = ()

    def describe(self) -> str:
        span = f"{self.low:g} to {self.high:g}"
        return f"{span} {self.unit}".strip()


@dataclass(frozen=True)
class KindSpec:
    """:param subject: what one alert of the kind is about (``SITE`` kinds reach the
        site's owner; a failed deployment without a site is its pool's).
    :param help: the condition in words, for the forms and the API document."""

    label: str
    subject: SubjectKind
    help: str
    threshold: Threshold | None = None


PERCENT = Threshold("%", 1, 99)

KINDS: dict[AlertKind, KindSpec] = {
    AlertKind.CPU: KindSpec("CPU use", SubjectKind.NODE,
                            "a node's CPU use (percent) is above the threshold", PERCENT),
    AlertKind.MEMORY: KindSpec("Memory use", SubjectKind.NODE,
                               "a node's memory use (percent) is above the threshold", PERCENT),
    AlertKind.DISK: KindSpec("Disk use", SubjectKind.NODE,
                             "a node's fullest file system (percent) is above the threshold",
                             PERCENT),
    AlertKind.LOAD: KindSpec("Load average", SubjectKind.NODE,
                             "a node's 1-minute load average is above the threshold",
                             Threshold("", 0.1, 1000)),
    AlertKind.NODE_UNREACHABLE: KindSpec(
        "Node unreachable", SubjectKind.NODE,
        "the node health check could not reach the node over SSH"),
    AlertKind.PROXY_DOWN: KindSpec(
        "Proxy not answering", SubjectKind.NODE,
        "the node answers SSH but its proxy process or HTTP does not, or every site "
        "checked through it fails"),
    AlertKind.SITE_DOWN: KindSpec(
        "Site down", SubjectKind.SITE,
        "a site's checks fail through at least this many nodes of its pool (all of them "
        "when fewer were checked; a node the control plane cannot reach over SSH checks "
        "nothing)", Threshold("nodes", 1, 1000, whole=True)),
    AlertKind.CERT_EXPIRING: KindSpec(
        "Certificate expiring", SubjectKind.SITE,
        "a certificate a node serves for the site expires within this many days",
        Threshold("days", 1, 365, whole=True, offers=(14, 7, 1))),
    AlertKind.CERT_MISMATCH: KindSpec(
        "Certificate not the issued one", SubjectKind.SITE,
        "a node serves the site a certificate other than the one issued for it"),
    AlertKind.DEPLOYMENT_FAILED: KindSpec(
        "Deployment failed", SubjectKind.SITE,
        "the latest deployment of a site (or of a pool, without a site) failed; resolved "
        "when the next one succeeds"),
    AlertKind.DRIFT: KindSpec(
        "Configuration drift", SubjectKind.NODE,
        "the drift check found files on the node that differ from its deployed version"),
    AlertKind.NS_MISMATCH: KindSpec(
        "Nameservers not as expected", SubjectKind.SITE,
        "the NS records of one of a site's names are not the expected nameservers"),
}


def kind_label(kind: AlertKind) -> str:
    return KINDS[kind].label
