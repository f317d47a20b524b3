"""The project's code is ruff-clean, with the settings in pyproject.toml: the app, the steps, the tests."""

import importlib.util
import subprocess
import sys

import pytest

from helpers import ON_CI, PROJECT


def test_ruff_finds_nothing_to_fix_in_the_project():
    if importlib.util.find_spec("ruff") is None:
        if ON_CI:
            pytest.fail("ruff is not installed: pip install -r requirements-dev.txt", pytrace=False)
        pytest.skip("ruff is not installed: pip install -r requirements-dev.txt")
    checked = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                             cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
