"""A load balancer on loopback in front of several app instances: a real nginx,
round robin, configured by the test and stopped by its PID."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.processes import free_port, listening, require_binary, start, stop


class LoadBalancer:
    """nginx on ``address`` passing every request to the next of ``upstreams`` in
    turn, unbuffered (progress streams reach the client as they are written) and
    with the client's address in ``X-Forwarded-For``."""

    def __init__(self, upstreams: Sequence[tuple[str, int]], address: str) -> None:
        self.address, self.port = address, free_port(address)
        self.root = Path(tempfile.mkdtemp(prefix="rpcc-balancer-"))
        self.root.chmod(0o755)
        (self.root / "logs").mkdir()
        (self.root / "temp").mkdir()
        servers = "\n".join(f"        server {host}:{port};" for host, port in upstreams)
        temp = self.root / "temp"
        conf = self.root / "nginx.conf"
        conf.write_text("\n".join([
            "daemon off;",
            "worker_processes 1;",
            f"pid {self.root / 'logs' / 'nginx.pid'};",
            f"error_log {self.root / 'logs' / 'error.log'};",
            "events { worker_connections 256; }",
            "http {",
            f"    access_log {self.root / 'logs' / 'access.log'};",
            *(f"    {kind}_temp_path {temp / kind};"
              for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            "    upstream app {",
            servers,
            "    }",
            "    server {",
            f"        listen {address}:{self.port};",
            "        location / {",
            "            proxy_pass http://app;",
            "            proxy_http_version 1.1;",
            "            proxy_set_header Connection \"\";",
            "            proxy_set_header Host $http_host;",
            "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "            proxy_buffering off;",
            "            proxy_read_timeout 120s;",
            "        }",
            "    }",
            "}",
            "",
        ]))
        try:
            self.process = start([require_binary("nginx"), "-p", str(self.root), "-c", str(conf)],
                                 ready=listening((address, self.port)),
                                 log=self.root / "logs" / "nginx.out")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def stop(self) -> None:
        stop(self.process)
        shutil.rmtree(self.root, ignore_errors=True)
