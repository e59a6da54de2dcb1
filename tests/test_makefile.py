"""`make demo` installs no system package; only the test set-up installs the browser the
HTML report test needs (issue 10, item 18). Checked with `make -n`, which runs nothing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry_run(target: str) -> str:
    out = subprocess.run(
        ["make", "-n", "-C", ROOT, target], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_demo_installs_no_system_package():
    commands = _dry_run("demo")
    assert "esper_lifetimes demo" in commands
    for word in ("apt-get", "sudo", "chromium"):
        assert word not in commands, commands


def test_the_test_set_up_installs_the_browser():
    commands = _dry_run("py-test")
    assert "apt-get" in commands and "chromium" in commands
