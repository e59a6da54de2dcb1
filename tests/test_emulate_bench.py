"""benchmarks/bench_emulate.py runs and prints every configuration (no timing checks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("esper_lifetimes.tracking")

from conftest import HAS_CUDA  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_emulate.py"


@pytest.mark.skipif(HAS_CUDA, reason="emulation is for machines without a GPU")
def test_bench_emulate_prints_every_configuration():
    r = subprocess.run(
        [sys.executable, str(BENCH), "--ops", "50", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    for name in ("plain", "no-op modes", "emulated", "tracked", "emulated+tracked"):
        assert any(line.split()[0] == name.split()[0] for line in r.stdout.splitlines()), name
    assert "emulation on top of tracking: +" in r.stdout
