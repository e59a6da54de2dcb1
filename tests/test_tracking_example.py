"""The main job's example (esper_lifetimes/examples/vectorized_step.py, run by
examples/vectorized_step.py and `esper-lifetimes demo`): the step as shipped shows the
real hazard and the redundant record_stream calls; the corrected step is clean."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "examples", "vectorized_step.py")


@pytest.fixture(scope="module")
def example():
    return importlib.import_module("esper_lifetimes.examples.vectorized_step")


def _line(mod, fn, needle):
    import inspect

    lines, first = inspect.getsourcelines(fn)
    hits = [first + i for i, line in enumerate(lines) if needle in line]
    assert len(hits) == 1, (needle, hits)
    return f"vectorized_step.py:{hits[0]}"


def test_the_shipped_step_frees_the_override_while_the_env_stream_reads_it(example):
    B = example.Backend(cuda=False)
    t = example.run(B, fixed=False)
    read = _line(example, example.validation_pass, "scores.append(env.policy(obs * override)")
    rebind = _line(example, example.validation_pass, "override = torch.full(")
    kinds = {h.kind for h in t.errors}
    assert kinds <= {"unsynced-free", "reuse-race"} and "unsynced-free" in kinds, t.report()
    frees = [h for h in t.errors if h.kind == "unsynced-free"]
    assert all(h.use_site.endswith(read) for h in t.errors)
    # A free is judged at the next allocation on its stream (D). Each rebinding frees
    # the previous override, and the override after it is allocated on D while that
    # env stream may still read the freed one: an error for every environment but the
    # last two. The second-to-last override's free and the last one's `del` are followed
    # by the synchronize before D allocates again, so those frees are safe.
    assert {h.free_site.split("/")[-1] for h in frees} == {rebind}
    assert all(h.other_site.split("/")[-1] == rebind for h in frees)
    assert all(h.live for h in t.errors)
    assert sum(h.count for h in frees) == example.N_ENVS - 2
    # when the CPU allocator hands a freed override out again, that is the corruption
    for h in t.errors:
        if h.kind == "reuse-race":
            assert h.free_site.endswith(rebind)


def test_the_shipped_step_has_two_redundant_record_stream_calls(example):
    B = example.Backend(cuda=False)
    t = example.run(B, fixed=False)
    batch = _line(example, example.train_step, "batch.record_stream(env.stream)")
    loss = _line(example, example.train_step, "loss.record_stream(env.stream)")
    assert sorted(h.use_site.split("/")[-1] for h in t.advice) == sorted([batch, loss])
    assert all(h.kind == "redundant-record-stream" for h in t.advice)
    # the hand-off of the cloned slices is safe and needed: it is named nowhere
    handoff = _line(example, example.train_step, "x.record_stream(env.stream)")
    assert not any(
        s and s.endswith(handoff)
        for h in t.hazards
        for s in (h.use_site, h.other_site, h.free_site)
    )


def test_the_corrected_step_is_clean(example):
    B = example.Backend(cuda=False)
    t = example.run(B, fixed=True)
    assert t.hazards == [], t.report()
    assert t.diagnostics == []


def test_the_demo_script_prints_the_report_and_succeeds():
    out = subprocess.run(
        [sys.executable, PATH, "--virtual"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR unsynced-free" in out.stdout
    assert "ADVICE redundant-record-stream" in out.stdout
    assert "Safe:" in out.stdout
    assert out.stdout.rstrip().endswith("clean.")
