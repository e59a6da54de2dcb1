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
    assert str(err) == esper_lifetimes.tracking.format_report(
        err.hazards, fix_for=esper_lifetimes.fixes.fix_for
    )


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


def test_a_pending_free_raises_at_the_allocation_that_may_reuse_its_block():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with pytest.raises(LifetimeHazardError) as info:
        with esper_lifetimes.track("raise"):
            x = torch.randn(N)
            s.wait_stream(D)
            with virtual.stream(s):
                y = x * 2
            del x  # pending: judged when its bytes can next be handed out
            D.synchronize()  # orders nothing after s's read
            z = torch.empty(N)  # @raises2
            del y, z
    assert any(e.lineno + 1 == _line("raises2") for e in info.traceback)


def test_a_sync_before_the_reuse_covers_a_pending_free():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with esper_lifetimes.track("raise") as t:
        x = torch.randn(N)
        s.wait_stream(D)
        with virtual.stream(s):
            y = x * 2
        del x
        s.synchronize()  # the host is ordered after s's read before any reuse
        z = torch.empty(N)
        del y, z
    assert t.errors == []


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


def test_bad_policy_is_rejected_with_a_lifetimes_error_naming_the_value():
    # one class for every bad argument: a LifetimesError (and a ValueError)
    for call, value in (
        (lambda: esper_lifetimes.track("ignore"), "'ignore'"),
        (lambda: esper_lifetimes.checked(on_hazard="loud"), "'loud'"),
        (lambda: esper_lifetimes.checked(on_hazard=None), "None"),
        (lambda: esper_lifetimes.track("collect", cpu="gpu"), "'gpu'"),
    ):
        with pytest.raises(esper_lifetimes.ConfigError, match=value) as info:
            call()
        assert isinstance(info.value, esper_lifetimes.LifetimesError)
        assert isinstance(info.value, ValueError)


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
    esper_lifetimes.disable()
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


# -- a finalizer is never a safe point (issue 10, item 3) -------------------------------


class _ReadsOnDel:
    """A user's object whose finalizer reads a tensor on a side stream."""

    def __init__(self, t: torch.Tensor, s: virtual.Stream) -> None:
        self.t = t
        self.s = s

    def __del__(self) -> None:
        with virtual.stream(self.s):
            self.t * 2  # @del-use


def test_a_hazard_found_inside_a_finalizer_raises_at_region_exit():
    s = virtual.Stream(name="s")
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with pytest.raises(LifetimeHazardError) as info:
            with esper_lifetimes.track("raise"):
                a = torch.randn(N)  # written on the default stream
                h = _ReadsOnDel(a, s)
                del h  # __del__ runs the racy read: nothing may be raised there
                marker = 1  # @after-del
            assert marker == 1  # not reached: the region's exit raises
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == []  # nothing raised into (and swallowed by) the finalizer
    hz = info.value.hazards
    assert [x.kind for x in hz] == ["unsynced-access"]
    assert tag_of(hz[0].use_site) == "del-use"


def test_a_hazard_held_from_a_finalizer_raises_at_the_next_op():
    s = virtual.Stream(name="s")
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        with pytest.raises(LifetimeHazardError) as info:
            with esper_lifetimes.track("raise"):
                a = torch.randn(N)
                h = _ReadsOnDel(a, s)
                del h
                s.synchronize()  # a patched call: the next safe point  # @next-safe-point
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == []
    assert any(e.lineno + 1 == _line("next-safe-point") for e in info.traceback)
    assert tag_of(info.value.hazards[0].use_site) == "del-use"


def test_checked_never_raises_inside_a_finalizer():
    tracking.reset_checked()
    s = virtual.Stream(name="s")

    @esper_lifetimes.checked(on_hazard="raise")
    def drop(holder):
        holder.pop()  # the last reference: __del__ runs inside the call

    @esper_lifetimes.checked(on_hazard="raise")
    def make():
        return torch.randn(N)

    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        a = make()
        holder = [_ReadsOnDel(a, s)]
        with pytest.raises(LifetimeHazardError) as info:
            drop(holder)  # raised at the call's exit, not inside __del__
    finally:
        sys.unraisablehook = old_hook
        tracking.reset_checked()
    assert unraisable == []
    assert tag_of(info.value.hazards[0].use_site) == "del-use"
