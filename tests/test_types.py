"""The type check (mypy, configured in pyproject.toml) as a test: ``make test`` runs it beside the other tests on
the second core instead of before them (a cold check is about 30 s on a 2-core AMD EPYC). ``make lint`` runs it on
its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip("mypy")


def test_the_package_type_checks():
    # a process of its own: mypy ends with os._exit, where in this one tearing its objects down takes longer than
    # the check
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
