"""Data and checks shared by the renderer tests: golden files, one site per setting,
and proof that rendering is pure.

Golden files are reviewed like code; ``UPDATE_GOLDEN=1 pytest ...`` rewrites them
from the current renderer (then read the diff before committing).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.engines.base import BackendSpec, Capability, CertificateSpec, SiteSpec

GOLDEN_ROOT = Path(__file__).parent / "golden"
# Audit events (PEP 578) that mean a file, the network or a process was touched.
_IO_EVENTS = ("open", "os.", "socket.", "subprocess.", "shutil.", "glob.")
_recorders: list[list[str]] = []

FAKE_CERTIFICATE = CertificateSpec(
    chain_pem="-----BEGIN CERTIFICATE-----\nMIIBgoldenchain\n-----END CERTIFICATE-----\n",
    key_pem="-----BEGIN PRIVATE KEY-----\nMIIBgoldenkey\n-----END PRIVATE KEY-----\n",
)
# bcrypt of "golden-password-1" and "golden-password-2" (cost 10).
HASH_1 = "$2b$10$d4Z0tQtx4QmRP0sVrcqpBeCgnAcAGwrdhZs74SyrELTtpprYES2Ci"
HASH_2 = "$2b$10$ZFFjsBWnC2Egc4ewhNHGd.dZFfZsjkUB5iQ2Z4wt0OdtaxadKJTUa"

# One site per setting, each differing from the defaults in that setting only.
SETTING_SITES: dict[str, dict[str, Any]] = {
    Capability.WEIGHTS: {"backends": (BackendSpec("10.0.0.1", 80, 3),
                                      BackendSpec("10.0.0.2", 80))},
    Capability.BACKEND_HTTPS: {"backend_protocol": "https"},
    Capability.TLS: {"ssl_mode": "custom", "certificate": FAKE_CERTIFICATE},
    Capability.FORCE_HTTPS: {"force_https": True},
    Capability.HSTS: {"hsts": True},
    Capability.WEBSOCKET: {"websocket": True},
    Capability.WAF: {"waf_level": "medium"},
    Capability.CACHE: {"cache_enabled": True},
    Capability.GEO: {"geo_mode": "deny", "geo_countries": ("KP",)},
    Capability.IP_RULES: {"ip_deny": ("192.0.2.0/24",)},
    Capability.BASIC_AUTH: {"basic_auth": (("alice", HASH_1),)},
    Capability.RATE_LIMIT: {"rate_limit_rps": 10, "rate_limit_burst": 20},
    Capability.HEADERS: {"headers": (("X-Test", "1"),)},
    Capability.BLOCK: {"blocked": True, "blocked_reason": "abuse"},
}


def setting_site(setting: str) -> SiteSpec:
    """A site that differs from the defaults in one setting only."""
    fields: dict[str, Any] = {"backends": (BackendSpec("10.0.0.1", 80),),
                              **SETTING_SITES[setting]}
    return SiteSpec(id=1, owner_id=1, domain="setting.example.com", **fields)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recorders and event.startswith(_IO_EVENTS):
        _recorders[-1].append(f"{event} {args!r}"[:200])


sys.addaudithook(_audit)


@contextmanager
def io_events() -> Iterator[list[str]]:
    """Collects every file, network and process event raised inside the block."""
    events: list[str] = []
    _recorders.append(events)
    try:
        yield events
    finally:
        _recorders.pop()


def compare_golden(engine: str, files: dict[str, str]) -> None:
    """The rendered file set equals ``tests/golden/<engine>/`` file for file."""
    directory = GOLDEN_ROOT / engine
    if os.environ.get("UPDATE_GOLDEN") == "1":
        shutil.rmtree(directory, ignore_errors=True)
        for relative, text in files.items():
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        return
    on_disk = {path.relative_to(directory).as_posix(): path.read_text()
               for path in directory.rglob("*") if path.is_file()}
    assert sorted(on_disk) == sorted(files), "file set changed: rerun with UPDATE_GOLDEN=1"
    for relative, text in files.items():
        assert text == on_disk[relative], f"{relative} differs: rerun with UPDATE_GOLDEN=1"
