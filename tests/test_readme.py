"""The README's runnable examples run, and say what the README says they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


def test_track_example_reports_unsynced_free_at_the_readme_lines(tmp_path):
    (code,) = [b for b in _blocks() if "esper_lifetimes.track(" in b]
    out = _run(tmp_path, code)
    assert out.returncode == 0, out.stderr
    lines = code.splitlines()
    at = {
        name: lines.index(next(line for line in lines if line.startswith(stmt))) + 1
        for name, stmt in (
            ("alloc", "    x = torch.randn"),
            ("use", "        y = x * 2"),
            ("free", "    del x"),
        )
    }
    assert "esper-lifetimes: 1 error, 0 advice" in out.stdout
    assert (
        f"allocated on default at example.py:{at['alloc']}, was freed at "
        f"example.py:{at['free']} while its use on side at example.py:{at['use']}"
    ) in out.stdout.replace(str(tmp_path) + "/", "")
    # the README shows the same line numbers
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"used on side:                example.py:{at['use']}" in readme


def test_engine_example_prints_its_verdict(tmp_path):
    (code,) = [b for b in _blocks() if "Engine()" in b]
    out = _run(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['unsynced-free']"
