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


# -- restore exactly what was installed (issue 10, item 12) -----------------------------


def test_a_region_exited_on_another_thread_is_refused_and_its_thread_stays_right():
    import threading

    before = _snapshot()
    region = esper_lifetimes.track("collect")
    region.__enter__()
    assert torch._C._len_torch_dispatch_stack() == 1
    errors = []

    def exit_elsewhere():
        depth = torch._C._len_torch_dispatch_stack()  # a thread started inside: tracked
        try:
            region.__exit__(None, None, None)
        except RuntimeError as exc:
            errors.append(str(exc))
        errors.append(torch._C._len_torch_dispatch_stack() - depth)

    t = threading.Thread(target=exit_elsewhere)
    t.start()
    t.join()
    assert len(errors) == 2 and "exited on the thread that entered it" in errors[0]
    assert errors[1] == 0  # nothing pushed or popped on the other thread
    # nothing changed on the owning thread: still tracked, and its own exit restores all
    assert region.active and patches.installed()
    assert torch._C._len_torch_dispatch_stack() == 1
    region.__exit__(None, None, None)
    assert _snapshot() == before


def test_a_patch_another_library_installs_during_a_region_survives_its_exit():
    before = torch.cuda.synchronize

    def library_sync(*args, **kwargs):  # another library's wrapper, installed inside
        return inner(*args, **kwargs)

    with esper_lifetimes.track("collect"):
        inner = torch.cuda.synchronize  # ours
        torch.cuda.synchronize = library_sync
        tolist_inside = torch.Tensor.tolist
    try:
        assert torch.cuda.synchronize is library_sync  # theirs stays
        assert torch.Tensor.tolist is not tolist_inside  # ours, not covered: restored
        assert not patches.installed()
    finally:
        torch.cuda.synchronize = before
        patches.heal()


def test_a_monkeypatch_inside_a_region_leaves_no_wrapper_behind():
    original = torch.Tensor.__dict__["record_stream"]
    mp = pytest.MonkeyPatch()
    with esper_lifetimes.track("collect"):
        mp.setattr(torch.Tensor, "record_stream", lambda self, s: None)  # saves ours
    assert torch.Tensor.__dict__["record_stream"] is not original  # the monkeypatch's
    mp.undo()  # puts back what it saved: our wrapper, restored since
    patches.heal()  # the plugin calls it after each test; the next install does too
    assert torch.Tensor.__dict__["record_stream"] is original


def test_a_wrapper_put_back_heals_itself_at_its_next_call():
    original = torch.cuda.synchronize
    mp = pytest.MonkeyPatch()
    with esper_lifetimes.track("collect"):
        mp.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    mp.undo()
    assert torch.cuda.synchronize is not original  # ours, put back by the monkeypatch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    else:
        with pytest.raises((RuntimeError, AssertionError)):
            torch.cuda.synchronize()  # the original runs (and fails without a GPU)
    assert torch.cuda.synchronize is original
