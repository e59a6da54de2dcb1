"""Everything ``track()`` changes is restored on exit, also when the body raises."""

from __future__ import annotations

import esper_lifetimes
import pytest
import torch
from esper_lifetimes import LifetimeHazardError, patches, virtual


def _snapshot():
    return (
        patches.originals(),
        torch._C._len_torch_dispatch_stack(),
        list(patches.active()),
        patches.installed(),
        torch.Tensor.record_stream,
        torch.cuda.Stream.wait_stream,
        torch.cuda.synchronize,
        torch.UntypedStorage.resize_,
        "cpu" in torch.Tensor.__dict__,
    )


def test_patches_are_installed_only_while_tracking():
    before = _snapshot()
    assert before[3] is False and before[8] is False
    with esper_lifetimes.track("collect"):
        assert patches.installed()
        assert torch.Tensor.record_stream is not before[4]
        assert torch.cuda.synchronize is not before[6]
        assert torch._C._len_torch_dispatch_stack() == 1
    assert _snapshot() == before


@pytest.mark.parametrize("policy", ["raise", "warn", "collect"])
def test_everything_is_restored_when_the_body_raises(policy):
    before = _snapshot()
    s = virtual.Stream(name="s")
    with pytest.raises(ZeroDivisionError):
        with esper_lifetimes.track(policy):
            with virtual.stream(s):
                torch.ones(3).add_(1)
                raise ZeroDivisionError
    assert _snapshot() == before
    assert virtual.current_stream() is virtual.default_stream()


def test_everything_is_restored_when_exit_raises_the_hazard():
    before = _snapshot()
    s = virtual.Stream(name="s")
    with pytest.raises(LifetimeHazardError):
        with esper_lifetimes.track("raise"):
            x = torch.randn(1024)
            s.wait_stream(virtual.default_stream())
            with virtual.stream(s):
                y = x * 2
            del x  # found in the finalizer, raised on exit
    assert _snapshot() == before
    del y


def test_nested_regions_each_see_the_ops_and_restore_in_order():
    before = _snapshot()
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect") as outer:
        a = torch.rand(1024)
        with esper_lifetimes.track("collect") as inner:
            assert torch._C._len_torch_dispatch_stack() == 2
            with virtual.stream(s):
                b = a * 5
        assert patches.installed()
        assert torch._C._len_torch_dispatch_stack() == 1
        assert list(patches.active()) == [outer]
    assert _snapshot() == before
    # the outer region saw a's write and the racing read; the inner only the read of a
    # storage it never saw written
    assert [h.kind for h in outer.errors] == ["unsynced-access"]
    assert inner.errors == []
    del b


def test_after_exit_frees_are_no_longer_watched():
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(1024)
        s.wait_stream(virtual.default_stream())
        with virtual.stream(s):
            y = x * 2
    del x  # outside the region: not this tracker's business
    assert t.hazards == []
    del y


def test_virtual_stream_methods_outside_tracking_do_nothing_harmful():
    s = virtual.Stream(name="s")
    e = virtual.Event()
    s.wait_stream(virtual.default_stream())
    s.wait_event(e)
    e.record(s)
    e.wait()
    e.synchronize()
    s.synchronize()
    virtual.synchronize()
    assert s.query() is True
    assert e.query() is True
    assert s.record_event() is not None
    assert not patches.installed()


def test_a_region_that_yields_to_inner_ones_is_suspended_while_they_run():
    """The pytest plugin's per-test region yields: a test's own region owns its events."""
    s = virtual.Stream(name="s")
    outer = esper_lifetimes.track("collect")
    outer.yield_to_inner = True
    with outer:
        a = torch.rand(1024)
        with esper_lifetimes.track("collect") as inner:
            with virtual.stream(s):
                b = a * 5
        with virtual.stream(s):
            c = a * 5
    assert [h.kind for h in outer.errors] == ["unsynced-access"]
    assert outer.errors[0].count == 1  # only the read made after the inner region
    assert inner.errors == []
    del b, c
