"""API and page latency with a large fleet: 1,000 nodes, 10,000 sites, 200 clients.

Prints median and p95 of the site list (API, as admin and as a client), the admin
sites page, both dashboards and the filtered lists the admin dashboard links to,
next to ``GET /health`` as the baseline of the same stack in the same run; the SQL
queries per request at several page sizes, the dashboards' queries before and after
the fleet grows by half (they must not change), and the peak resident memory of this
(single worker) process.

    .venv/bin/python bench/api_latency.py [--sites 10000] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import g, request_started  # noqa: E402
from flask_migrate import upgrade  # noqa: E402
from sqlalchemy import event, func, insert, select  # noqa: E402
from werkzeug.security import generate_password_hash  # noqa: E402

from app import create_app  # noqa: E402
from app.extensions import db  # noqa: E402
from app.models import Node, Pool, Site, SiteBackend, SiteHostname, User  # noqa: E402
from app.services import tokens  # noqa: E402

PASSWORD = "bench-password-123"


def seed(n_nodes: int, n_sites: int, n_clients: int) -> tuple[User, User]:
    now = datetime.now(UTC)
    password_hash = generate_password_hash(PASSWORD)
    pools = [Pool(name=f"pool{i}", description="") for i in range(10)]
    db.session.add_all(pools)
    db.session.flush()
    pool_ids = [p.id for p in pools]
    stamps = {"created_at": now, "updated_at": now}
    db.session.execute(insert(User), [
        {"username": "benchadmin", "email": "benchadmin@example.com", "role": "admin",
         "password_hash": password_hash, "is_active": True, "max_sites": 0,
         **stamps}
    ] + [
        {"username": f"client{i}", "email": f"client{i}@example.com", "role": "client",
         "password_hash": password_hash, "is_active": True, "max_sites": 1000,
         **stamps}
        for i in range(n_clients)
    ])
    client_ids = list(db.session.scalars(select(User.id).where(User.role == "client")))
    db.session.execute(insert(Node), [
        {"name": f"node{i}", "host": f"10.{i // 250}.{i % 250}.1", "ssh_port": 22,
         "ssh_user": "root", "proxy_type": "nginx", "pool_id": pool_ids[i % 10],
         "config_dir": "/etc/nginx/rpcc.d", "test_command": "nginx -t",
         "reload_command": "nginx -s reload", "http_port": 80, "https_port": 443,
         "enabled": True, "status": "unknown", "is_discovered": False, **stamps}
        for i in range(n_nodes)
    ])
    db.session.execute(insert(Site), [
        {"owner_id": client_ids[i % len(client_ids)], "domain": f"site{i}.example.com",
         "pool_id": pool_ids[i % 10], "backend_protocol": "http", "ssl_mode": "none",
         "force_https": False, "hsts": False, "http2": True, "websocket": False,
         "waf_level": "off", "cache_enabled": False, "cache_ttl": 300, "geo_mode": "off",
         "geo_countries": [], "ip_allow": [], "ip_deny": [], "rate_limit_rps": None,
         "rate_limit_burst": 0, "headers": {"X-Bench": "1"}, "blocked": False,
         "blocked_reason": "", "status": "pending", "config_version": 1, **stamps}
        for i in range(n_sites)
    ])
    site_ids = list(db.session.execute(select(Site.id, Site.domain)))
    db.session.execute(insert(SiteHostname), [
        {"site_id": sid, "name": name, "position": 0} for sid, name in site_ids
    ] + [{"site_id": sid, "name": "www." + name, "position": 1} for sid, name in site_ids])
    db.session.execute(insert(SiteBackend), [
        {"site_id": sid, "host": "10.9.0.1", "port": 8080 + k, "weight": 1, "position": k}
        for sid, _ in site_ids for k in range(2)
    ])
    db.session.commit()
    admin = db.session.scalar(select(User).where(User.username == "benchadmin"))
    client = db.session.scalar(select(User).where(User.username == "client7"))
    return admin, client


def seed_more(n_nodes: int, n_sites: int) -> None:
    """Grow the fleet (nodes and sites in every state) without touching the users."""
    first = db.session.scalar(select(func.max(Node.id))) or 0
    pool_ids = list(db.session.scalars(select(Pool.id)))
    owner_ids = list(db.session.scalars(select(User.id).where(User.role == "client")))
    now = datetime.now(UTC)
    stamps = {"created_at": now, "updated_at": now}
    db.session.execute(insert(Node), [
        {"name": f"more-node{first + i}", "host": "10.200.0.1", "ssh_port": 22,
         "ssh_user": "root", "proxy_type": "nginx", "pool_id": pool_ids[i % len(pool_ids)],
         "config_dir": "/etc/nginx/rpcc.d", "test_command": "nginx -t",
         "reload_command": "nginx -s reload", "http_port": 80, "https_port": 443,
         "enabled": i % 7 != 0, "status": ("online", "offline", "draining")[i % 3],
         "drifted": i % 11 == 0, "is_discovered": False, **stamps}
        for i in range(n_nodes)])
    db.session.execute(insert(Site), [
        {"owner_id": owner_ids[i % len(owner_ids)], "domain": f"more{first}-{i}.example.com",
         "pool_id": pool_ids[i % len(pool_ids)], "backend_protocol": "http", "ssl_mode": "none",
         "force_https": False, "hsts": False, "http2": True, "websocket": False,
         "waf_level": "off", "cache_enabled": False, "cache_ttl": 300, "geo_mode": "off",
         "geo_countries": [], "ip_allow": [], "ip_deny": [], "rate_limit_rps": None,
         "rate_limit_burst": 0, "headers": {}, "blocked": i % 13 == 0, "blocked_reason": "",
         "status": ("deployed", "failed", "partial", "pending")[i % 4], "config_version": 1,
         **stamps} for i in range(n_sites)])
    db.session.commit()


class QueryCounter:
    def __init__(self) -> None:
        self.count = 0
        event.listen(db.engine, "before_cursor_execute", self._on)

    def _on(self, *args: object) -> None:
        self.count += 1


def measure(http, path: str, headers: dict[str, str], n: int, counter: QueryCounter) -> dict:
    times, queries = [], []
    for _ in range(n):
        target = path.replace("{page}", str(random.randint(1, 20)))
        counter.count = 0
        start = time.perf_counter()
        response = http.get(target, headers=headers)
        times.append((time.perf_counter() - start) * 1000)
        queries.append(counter.count)
        assert response.status_code == 200, (target, response.status_code)
    times.sort()
    return {"median": statistics.median(times), "p95": times[int(len(times) * 0.95) - 1],
            "queries": max(queries)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL") or (
        "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="rpcc-bench-"), "bench.db"))
    app = create_app("testing", {"SQLALCHEMY_DATABASE_URI": url, "RATELIMIT_ENABLED": False,
                                 "WTF_CSRF_ENABLED": False})
    with app.app_context():
        upgrade()
        start = time.perf_counter()
        admin, client = seed(args.nodes, args.sites, args.clients)
        print(f"database: {db.engine.dialect.name}")
        print(f"seeded {args.nodes} nodes, {args.sites} sites, {args.clients} clients "
              f"in {time.perf_counter() - start:.1f} s")
        admin_headers = {"Authorization": f"Bearer {tokens.create_token(admin, 'b')[1]}"}
        client_headers = {"Authorization": f"Bearer {tokens.create_token(client, 'b')[1]}"}
        counter = QueryCounter()

        def forget_user(sender: object, **extra: object) -> None:
            # Both clients share this app context's ``g``, where Flask-Login caches
            # the signed-in user: each request must load its own.
            g.pop("_login_user", None)

        request_started.connect(forget_user, app)
        admin_http, client_http = app.test_client(), app.test_client()
        for http_client, user in ((admin_http, admin), (client_http, client)):
            response = http_client.post("/auth/login", data={"username": user.username,
                                                               "password": PASSWORD})
            assert response.status_code == 302
        cases = [
            ("GET /health (baseline)", admin_http, "/health", {}),
            ("GET /admin/ dashboard", admin_http, "/admin/", {}),
            ("GET /admin/nodes?state=offline", admin_http, "/admin/nodes?state=offline", {}),
            ("GET /admin/sites?certificate=expiring", admin_http,
             "/admin/sites?certificate=expiring", {}),
            ("GET /api/v1/sites admin (50/page)", admin_http,
             "/api/v1/sites?per_page=50&page={page}", admin_headers),
            ("GET /api/v1/sites client (50/page)", client_http,
             "/api/v1/sites?per_page=50", client_headers),
            ("GET /admin/sites page", admin_http, "/admin/sites?page={page}", {}),
            ("GET /client/ dashboard", client_http, "/client/", {}),
        ]
        n = args.requests
        for label, http_client, path, headers in cases:
            measure(http_client, path, headers, 5, counter)  # warm up
            result = measure(http_client, path, headers, n, counter)
            print(f"{label}: median {result['median']:.1f} ms, p95 {result['p95']:.1f} ms, "
                  f"{result['queries']} SQL queries")
        for per_page in (10, 50, 200):
            result = measure(admin_http, f"/api/v1/sites?per_page={per_page}", admin_headers,
                             3, counter)
            print(f"SQL queries, admin API list, {per_page}/page: {result['queries']}")
        result = measure(client_http, "/api/v1/sites?per_page=50", client_headers, 3, counter)
        print(f"SQL queries, client API list (50 own sites of {args.sites}): {result['queries']}")
        before = {path: measure(http_client, path, {}, 3, counter)["queries"]
                  for path, http_client in (("/admin/", admin_http), ("/client/", client_http))}
        seed_more(args.nodes // 2, args.sites // 2)
        for path, http_client in (("/admin/", admin_http), ("/client/", client_http)):
            measure(http_client, path, {}, 1, counter)  # reloads what the commit expired
            after = measure(http_client, path, {}, 3, counter)["queries"]
            print(f"SQL queries, {path} with {args.nodes} nodes / {args.sites} sites: "
                  f"{before[path]}; with half as many more: {after}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
