"""The "fix:" line names the real tensor and stream (issue 10, item 15)."""

from __future__ import annotations

import esper_lifetimes
import torch
from esper_lifetimes import fixes, virtual
from esper_lifetimes.reports import text

N = 1024


def _line(tag: str) -> str:
    with open(__file__, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# @{tag}"):
                return f"tests/test_fixes.py:{i}"
    raise AssertionError(tag)


def test_an_unsynced_free_names_the_tensor_and_the_stream():
    env1 = virtual.Stream(name="env1")
    with esper_lifetimes.track("collect") as t:
        override = torch.randn(N)  # @alloc
        env1.wait_stream(virtual.current_stream())
        with virtual.stream(env1):
            y = override * 2  # @use
        del override  # @free
    (h,) = t.errors
    assert h.kind == "unsynced-free"
    fix = fixes.fix_for(h)
    assert fix is not None
    assert fix.startswith("call `override.record_stream(env1)`")
    assert f"allocated at {_line('alloc')}" in fix and f"free at {_line('free')}" in fix
    assert "`default.wait_stream(env1)`" in fix
    # the report's fix line is this one, not the placeholder
    report = t.report()
    assert "fix: call `override.record_stream(env1)`" in report
    assert "t.record_stream(s)" not in report
    del y


def test_a_rebinding_free_names_the_rebound_tensor():
    env = virtual.Stream(name="env0")
    with esper_lifetimes.track("collect") as t:
        scores = []
        for k in range(2):
            cfg = torch.full((N,), float(k))  # @rebind
            env.wait_stream(virtual.current_stream())
            with virtual.stream(env):
                scores.append((cfg * 2).sum())
    assert t.errors, t.report()
    assert fixes.fix_for(t.errors[0]).startswith("call `cfg.record_stream(env0)`")


def test_an_unsynced_access_names_both_streams():
    side = virtual.Stream(name="side")
    with esper_lifetimes.track("collect") as t:
        a = torch.randn(N)  # written on the default stream
        with virtual.stream(side):
            b = a * 5  # @racing
    (h,) = t.errors
    assert h.kind == "unsynced-access"
    fix = fixes.fix_for(h)
    assert fix.startswith("make side wait for default (`side.wait_stream(default)`) after")
    assert _line("racing") in fix
    del b


def test_without_names_the_fix_names_the_allocation_site():
    d = {
        "kind": "unsynced-free",
        "use_stream_name": "cuda:0 stream 0x3",
        "alloc_stream_name": "cuda:0 default",
        "alloc_site": "nowhere.py:42",
        "free_site": None,
        "use_site": None,
    }
    fix = fixes.fix_for(d)
    assert fix.startswith(
        "call record_stream(s) on the tensor allocated at nowhere.py:42, s being cuda:0 stream 0x3,"
    )
    assert "make cuda:0 default wait for cuda:0 stream 0x3 (wait_stream or an event)" in fix
    # the renderer shows it where it is given (Tracker.report and LifetimeHazardError do)
    assert "fix: call record_stream(s) on the tensor" in text.format_report(
        [{**d, "severity": "error", "count": 1, "live": None, "message": "m"}],
        fix_for=fixes.fix_for,
    )


def test_the_raised_error_carries_the_named_fix():
    import pytest

    side = virtual.Stream(name="side")
    with pytest.raises(esper_lifetimes.LifetimeHazardError) as info:
        with esper_lifetimes.track("raise"):
            a = torch.randn(N)
            with virtual.stream(side):
                a * 5  # raises here: the op is the safe point
    assert "fix: make side wait for default (`side.wait_stream(default)`" in str(info.value)


def test_unknown_streams_fall_back_to_the_kinds_hint():
    assert fixes.fix_for({"kind": "unsynced-free"}) is None
    assert fixes.fix_for(object()) is None
