"""From models to engine specs, and the rules that join them: which engines serve a
pool, whether they can honour a site's settings, and config previews."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.engines import all_engines, engine_names, get_engine
from app.engines.base import BackendSpec, CertificateSpec, NodeSpec, SiteSpec
from app.errors import ValidationError
from app.extensions import db
from app.models import Node, ProxyType, Site, User
from app.services.common import get_scoped

# What each capability is called in messages (the API field it comes from).
SETTING_LABELS = {
    "backends.weight": "backend weights",
    "backend_protocol": "HTTPS backends",
    "ssl_mode": "TLS certificates",
    "force_https": "redirect to HTTPS",
    "hsts": "HSTS",
    "http2": "HTTP/2",
    "websocket": "WebSocket",
    "waf_level": "the web application firewall",
    "cache": "caching",
    "geo": "country rules",
    "ip_allow": "IP allow and deny lists",
    "basic_auth": "basic auth",
    "rate_limit": "rate limiting",
    "headers": "custom headers",
    "blocked": "the block page",
}
_PRIVATE_KEY_NOTE = "# private key: deployed to the node, never shown\n"


def site_spec(site: Site) -> SiteSpec:
    return SiteSpec(
        id=site.id,
        owner_id=site.owner_id,
        domain=site.domain,
        aliases=tuple(site.aliases),
        backends=tuple(BackendSpec(b.host, b.port, b.weight) for b in site.backends),
        backend_protocol=site.backend_protocol.value,
        ssl_mode=site.ssl_mode.value,
        force_https=site.force_https,
        hsts=site.hsts,
        http2=site.http2,
        websocket=site.websocket,
        waf_level=site.waf_level.value,
        cache_enabled=site.cache_enabled,
        cache_ttl=site.cache_ttl,
        geo_mode=site.geo_mode.value,
        geo_countries=tuple(site.geo_countries),
        ip_allow=tuple(site.ip_allow),
        ip_deny=tuple(site.ip_deny),
        basic_auth=tuple((u.username, u.password_hash) for u in site.basic_auth_users),
        rate_limit_rps=site.rate_limit_rps,
        rate_limit_burst=site.rate_limit_burst,
        headers=tuple(site.headers.items()),
        blocked=site.blocked,
        blocked_reason=site.blocked_reason,
        config_version=site.config_version,
        certificate=certificate_spec(site),
    )


def certificate_spec(site: Site) -> CertificateSpec | None:
    """The stored chain and key, whatever the latest attempt's outcome: a failed
    renewal keeps serving the previous certificate."""
    cert = site.certificate
    if cert is None or not cert.chain_pem or not cert.key_pem:
        return None
    return CertificateSpec(chain_pem=cert.chain_pem, key_pem=cert.key_pem)


def node_spec(node: Node) -> NodeSpec:
    return NodeSpec(
        id=node.id,
        name=node.name,
        proxy_type=node.proxy_type.value,
        config_dir=node.config_dir,
        test_command=node.test_command,
        reload_command=node.reload_command,
        listen_address=node.listen_address,
        http_port=node.http_port,
        https_port=node.https_port,
        log_dir=node.log_dir,
        cache_dir=node.cache_dir,
        geoip_db_path=node.geoip_db_path,
        status_port=node.status_port,
    )


def default_node_spec(engine: str) -> NodeSpec:
    """A stock node of this engine, for previews in a pool without such a node."""
    defaults = get_engine(engine).defaults
    return NodeSpec(name=f"example-{engine}", proxy_type=engine,
                    config_dir=defaults.config_dir, test_command=defaults.test_command,
                    reload_command=defaults.reload_command, log_dir=defaults.log_dir)


def pool_engines(pool_id: int) -> list[str]:
    """Engines of the enabled nodes of a pool (those that will receive the site)."""
    stmt = (select(Node.proxy_type).where(Node.pool_id == pool_id, Node.enabled.is_(True))
            .distinct())
    return sorted(proxy_type.value for proxy_type in db.session.scalars(stmt))


def check_engines_support(site: Site) -> None:
    """Refuse settings that an engine of the site's pool cannot honour, naming the
    engine and the setting, instead of silently dropping them on that engine."""
    spec = site_spec(site)
    errors: dict[str, str] = {}
    for engine_name in pool_engines(site.pool_id):
        engine = get_engine(engine_name)
        for setting in sorted(engine.missing_capabilities(spec)):
            label = SETTING_LABELS.get(setting, setting)
            message = (f"{engine_name} nodes in pool '{site.pool.name}' do not support "
                       f"{label}")
            errors[setting] = f"{errors[setting]}; {message}" if setting in errors else message
    if errors:
        raise ValidationError("a proxy engine of this pool cannot honour these settings", errors)


def capability_matrix() -> dict[str, dict[str, bool]]:
    """setting label -> {engine: supported}, for the site form (which shows the
    columns of the engines of the pool chosen in it)."""
    engines = all_engines()
    return {
        label: {name: setting in engine.capabilities for name, engine in engines.items()}
        for setting, label in SETTING_LABELS.items()
    }


def preview(actor: User, site_id: int, engine_name: str | None) -> dict[str, Any]:
    """The files one node of this engine would get for this site (its own files and
    the shared ones), as the site's owner or an admin may see them; rendered for a
    real node of the site's pool where it has one. Without an engine, the first
    engine of the pool's enabled nodes (``engines``)."""
    site: Site = get_scoped(Site, site_id, actor, "site")
    in_pool = sorted({t.value for t in db.session.scalars(
        select(Node.proxy_type).where(Node.pool_id == site.pool_id, Node.enabled.is_(True)))})
    if engine_name is None:
        engine_name = in_pool[0] if in_pool else "nginx"
    if engine_name not in all_engines():
        raise ValidationError("unknown engine",
                              {"engine": "must be one of " + ", ".join(engine_names())})
    engine = get_engine(engine_name)
    node = db.session.scalar(
        select(Node).where(Node.pool_id == site.pool_id, Node.proxy_type == ProxyType(engine_name))
        .order_by(Node.enabled.desc(), Node.name).limit(1)
    )
    # Clients see their site as the engine renders it, never the fleet's addresses,
    # ports or paths: those come from a real node only for administrators.
    spec = (node_spec(node) if node is not None and actor.is_admin
            else default_node_spec(engine_name))
    wanted = site_spec(site)
    missing = sorted(engine.missing_capabilities(wanted))
    files: dict[str, str] = {}
    if not missing:
        # An engine refuses to render a setting it cannot honour (a pool with such a
        # node refuses the site itself), so there are no files to show then.
        rendered = engine.render(spec, [wanted])
        files = {path: (_PRIVATE_KEY_NOTE if "PRIVATE KEY-----" in text else text)
                 for path, text in sorted(rendered.files.items())}
    return {
        "engine": engine_name,
        "engines": in_pool,
        "node": spec.name,
        "config_dir": spec.config_dir,
        "include_line": engine.include_line(spec),
        "missing": [SETTING_LABELS.get(name, name) for name in missing],
        "files": files,
    }

