"""What import-linter cannot see: views must not reach the database handle that
``app.extensions`` also exports (contracts forbid modules, not names)."""

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
VIEWS = ["admin", "client", "api", "auth", "main", "web", "cli.py", "forms.py"]


def _view_modules() -> list[Path]:
    found: list[Path] = []
    for name in VIEWS:
        path = APP / name
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path] * path.exists())
    return found


def test_views_never_import_the_database_handle():
    offenders = []
    for path in _view_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "app.extensions" and any(
                    alias.name == "db" for alias in node.names):
                offenders.append(f"{path.relative_to(APP)}:{node.lineno}")
    assert offenders == []


def test_the_scan_covers_every_view_package():
    scanned = {path.relative_to(APP).parts[0] for path in _view_modules()}
    assert {"admin", "client", "api", "auth", "main", "cli.py"} <= scanned
