"""``on_hazard``: where a hazard raises, warns or is only collected; and the report."""

from __future__ import annotations

import sys
import warnings

import esper_lifetimes
import pytest
import torch
from conftest import tag_of
from esper_lifetimes import LifetimeHazardError, LifetimeHazardWarning, tracking, virtual

N = 4096


def _line(tag: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# @{tag}"):
                return i
    raise AssertionError(tag)


def test_raise_comes_at_the_first_op_after_the_free_never_from_the_finalizer():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with pytest.raises(LifetimeHazardError) as info:
        with esper_lifetimes.track("raise"):
            x = torch.randn(N)
            s.wait_stream(D)
            with virtual.stream(s):
                y = x * 2
            del x  # the free is found here, in a weakref callback: nothing raised yet
            z = torch.zeros(1)  # @raises
            del y, z
    tb = info.traceback
    assert any(e.lineno + 1 == _line("raises") for e in tb), tb
    err = info.value
    assert [h.kind for h in err.hazards] == ["unsynced-free"]
    assert "unsynced-free" in str(err)
    assert str(err) == esper_lifetimes.tracking.format_report(err.hazards)


def test_raise_at_exit_when_no_op_follows_the_free():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with pytest.raises(LifetimeHazardError) as info:
        with esper_lifetimes.track("raise") as t:
            x = torch.randn(N)
            s.wait_stream(D)
            with virtual.stream(s):
                y = x * 2
            del x
    assert [h.to_dict() for h in t.errors] == [h.to_dict() for h in info.value.hazards]
    del y


def test_raise_in_a_stream_call_is_a_safe_point():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with pytest.raises(LifetimeHazardError) as info:
        with esper_lifetimes.track("raise"):
            x = torch.randn(N)
            s.wait_stream(D)
            with virtual.stream(s):
                y = x * 2
            del x
            s.synchronize()  # @raises2
            del y
    assert any(e.lineno + 1 == _line("raises2") for e in info.traceback)


def test_each_error_is_raised_once():
    s = virtual.Stream(name="s")
    raised = 0
    with esper_lifetimes.track("raise") as t:
        a = torch.rand(N)
        for _ in range(3):
            try:
                with virtual.stream(s):
                    b = a * 5  # the same race, three times: one distinct hazard
            except LifetimeHazardError:
                raised += 1
    assert raised == 1
    assert t.errors[0].count == 3
    del b


def test_advice_never_raises():
    with esper_lifetimes.track("raise") as t:
        x = torch.randn(N)
        x.record_stream(virtual.default_stream())
        del x
    assert [h.kind for h in t.advice] == ["redundant-record-stream"]
    assert t.errors == []


def test_warn_points_at_the_users_line():
    s = virtual.Stream(name="s")
    with pytest.warns(LifetimeHazardWarning) as rec:
        with esper_lifetimes.track("warn") as t:
            a = torch.rand(N)
            with virtual.stream(s):
                b = a * 5  # @warned
    assert len(rec) == 1
    w = rec[0]
    assert w.filename == __file__
    assert w.lineno == _line("warned")
    assert "unsynced-access" in str(w.message)
    assert [h.kind for h in t.errors] == ["unsynced-access"]
    del b


def test_warn_category_is_a_runtime_warning_that_filters_can_silence():
    assert issubclass(LifetimeHazardWarning, RuntimeWarning)
    s = virtual.Stream(name="s")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LifetimeHazardWarning)
        with pytest.raises(LifetimeHazardWarning):
            with esper_lifetimes.track("warn"):
                a = torch.rand(N)
                with virtual.stream(s):
                    a * 5


def test_collect_raises_and_warns_nothing():
    s = virtual.Stream(name="s")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with esper_lifetimes.track("collect") as t:
            a = torch.rand(N)
            with virtual.stream(s):
                b = a * 5
    assert len(t.errors) == 1
    del b


def test_a_body_exception_is_never_masked_and_carries_the_report_as_a_note():
    s = virtual.Stream(name="s")
    with pytest.raises(KeyError) as info:
        with esper_lifetimes.track("raise") as t:
            a = torch.rand(N)
            with virtual.stream(s):
                try:
                    a * 5
                except LifetimeHazardError:
                    pass
            x = torch.randn(N)
            s.wait_stream(virtual.default_stream())
            with virtual.stream(s):
                y = x * 2
            del x
            raise KeyError("boom")
    assert info.value.args == ("boom",)
    notes = getattr(info.value, "__notes__", [])
    assert any("unsynced-free" in n for n in notes), notes
    assert {h.kind for h in t.errors} == {"unsynced-access", "unsynced-free"}
    del y


def test_bad_policy_is_rejected():
    with pytest.raises(ValueError, match="on_hazard"):
        esper_lifetimes.track("ignore")
    with pytest.raises(ValueError, match="on_hazard"):
        esper_lifetimes.checked(on_hazard="loud")
    with pytest.raises(ValueError, match="cpu"):
        esper_lifetimes.track("collect", cpu="gpu")


def test_report_names_kind_streams_sites_and_code():
    s = virtual.Stream(name="env3")
    D = virtual.default_stream()
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(N)  # @alloc
        s.wait_stream(D)
        with virtual.stream(s):
            y = x * 2  # @use
        del x  # @free
    text = t.report()
    assert text.startswith("esper-lifetimes: 1 error, 0 advice")
    assert "ERROR unsynced-free" in text
    assert "env3" in text and "default" in text
    for tag, code in (("alloc", "x = torch.randn(N)"), ("use", "y = x * 2"), ("free", "del x")):
        assert f"test_tracking_policy.py:{_line(tag)}" in text
        assert code in text
    h = t.errors[0]
    assert (tag_of(h.alloc_site), tag_of(h.use_site), tag_of(h.free_site)) == (
        "alloc",
        "use",
        "free",
    )
    assert h.use_stream_name == "env3"
    assert h.alloc_stream_name == "default"
    assert h.live is True
    del y


def test_a_clean_region_reports_nothing_and_has_no_diagnostics():
    with esper_lifetimes.track("raise") as t:
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
        opt = torch.optim.Adam(model.parameters())
        for _ in range(3):
            loss = model(torch.randn(4, 8)).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
        print(loss, file=sys.stderr)
        loss.item()
    assert t.hazards == []
    assert t.diagnostics == []
    assert t.report() == "esper-lifetimes: 0 errors, 0 advice"


def test_disabled_track_records_nothing():
    tracking.disable()
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("raise") as t:
        assert torch._C._len_torch_dispatch_stack() == 0
        a = torch.rand(N)
        with virtual.stream(s):
            b = a * 5
    assert t.hazards == [] and t.engine is None
    del b


def test_a_tracker_is_entered_once():
    t = esper_lifetimes.track("collect")
    with t:
        pass
    with pytest.raises(RuntimeError, match="once"):
        with t:
            pass
