"""Every module imports first, in a fresh interpreter: an import cycle shows only when
the module that closes it is the first one imported, which the test process, having
imported everything already, never sees."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import app

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(["wsgi", *(module.name for module in
                            pkgutil.walk_packages(app.__path__, prefix="app."))])


def test_every_module_imports_first_in_a_fresh_interpreter():
    script = ("import importlib, sys, traceback\n"
              "failed = []\n"
              "for name in sys.argv[1:]:\n"
              "    for loaded in [m for m in sys.modules if m == 'wsgi' or m.startswith('app')]:\n"
              "        del sys.modules[loaded]\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except Exception:\n"
              "        last = traceback.format_exc(limit=1).splitlines()[-1]\n"
              "        failed.append(name + ': ' + last)\n"
              "print('\\n'.join(failed))\n")
    result = subprocess.run([sys.executable, "-c", script, *MODULES], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("name", ["wsgi", "app.services.certificates.ordering",
                                  "app.services.sites"])
def test_a_module_that_closed_a_cycle_before_imports_alone(name):
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
