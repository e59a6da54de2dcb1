"""``pytest --lifetimes --lifetimes-emulate-cuda`` on a CUDA test suite, through pytester.

The inner suite is ordinary CUDA test code, guarded as such suites are with
``skipif(not torch.cuda.is_available())``: without emulation it is skipped on this
machine; with it, it runs, and the leaky test fails with the report.
"""

from __future__ import annotations

import re

import pytest

pytest_plugins = ["pytester"]

pytest.importorskip("torch")
pytest.importorskip("esper_lifetimes.tracking")

from conftest import HAS_CUDA  # noqa: E402

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="emulation is for machines without a GPU")

SUITE = """\
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

N = 1024


def test_leaky():
    side = torch.cuda.Stream()
    x = torch.randn(N, device="cuda")  # @alloc
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x * 2  # @use
    del x  # @free
    assert y.is_cuda


def test_correct():
    side = torch.cuda.Stream()
    x = torch.randn(N, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = x * 2
    x.record_stream(side)
    del x
    assert y.is_cuda
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESPER_LIFETIMES", raising=False)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def _line(tag: str) -> int:
    for i, line in enumerate(SUITE.splitlines(), 1):
        if line.rstrip().endswith(f"# @{tag}"):
            return i
    raise AssertionError(tag)


def _outcomes(result: pytest.RunResult) -> dict[str, str]:
    out = {}
    for line in result.outlines:
        m = re.match(r"^\S+::(\w+) (PASSED|FAILED|ERROR|SKIPPED)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_cuda_suite=SUITE)
    return pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", *args, timeout=240)


def test_without_emulation_the_cuda_suite_is_skipped(pytester):
    result = _run(pytester, "--lifetimes")
    assert _outcomes(result) == {"test_leaky": "SKIPPED", "test_correct": "SKIPPED"}


def test_emulated_cuda_suite_fails_the_leaky_test_with_the_report(pytester):
    result = _run(pytester, "--lifetimes", "--lifetimes-emulate-cuda")
    assert _outcomes(result) == {"test_leaky": "FAILED", "test_correct": "PASSED"}, (
        result.stdout.str()
    )
    text = result.stdout.str()
    assert "unsynced-free" in text
    for tag in ("alloc", "use", "free"):
        assert f"test_cuda_suite.py:{_line(tag)}" in text, tag
    assert "cuda:0 default" in text
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_the_ini_option_switches_emulation_on(pytester):
    pytester.makeini("[pytest]\nlifetimes = full\nlifetimes_emulate_cuda = true\n")
    result = _run(pytester)
    assert _outcomes(result) == {"test_leaky": "FAILED", "test_correct": "PASSED"}


def test_emulation_without_tracking_runs_the_cuda_suite(pytester):
    result = _run(pytester, "--lifetimes-emulate-cuda")
    assert _outcomes(result) == {"test_leaky": "PASSED", "test_correct": "PASSED"}
