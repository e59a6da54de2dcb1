"""The always-on tracker's compiled hooks (rust/hooks.rs), on virtual streams: what they
decide alone, what they hand back to the Python tracker, and that they never raise."""

from __future__ import annotations

import gc
import threading
import weakref

import esper_lifetimes as el
import pytest
import torch
from esper_lifetimes import patches
from esper_lifetimes import virtual as v
from esper_lifetimes.reports import Timeline
from test_always_on import p1_step  # SEMANTICS.md's worked example, with its barrier

N = 1 << 14


@pytest.fixture(autouse=True)
def _switch_off_after():
    yield
    el.disable()
    el.enable()


def test_the_hooks_are_compiled_while_running_and_gone_after():
    tr = el.enable(mode="always-on", sample=0.0)
    hooks = tr._hooks
    for name in ("on_stream_wait", "on_stream_sync", "on_device_sync"):
        assert getattr(tr, name).__self__ is hooks  # the compiled method, no Python frame
    assert patches.fast_hooks is hooks
    el.disable()
    assert not hooks.active and patches.fast_hooks is None
    assert "on_stream_wait" not in vars(tr)  # the Python methods are back


def test_a_barrier_counts_and_advances_the_schedule_in_compiled_code():
    tr = el.enable(mode="always-on", sample=0.0)
    s = v.Stream(name="side")
    before = tr._hooks.boundary
    for _ in range(5):
        s.synchronize()
    v.synchronize()
    torch.ones(1).item()  # a CPU tensor on the virtual device: a blocking read
    assert tr.barriers == 7 and tr._hooks.boundary == before + 7
    assert tr.windows_opened == 0


def test_a_blocking_read_on_a_side_stream_synchronizes_that_stream():
    """``.item()`` synchronizes the current stream (SEMANTICS.md, fact 6), and outside a
    window only the compiled hooks see it: they must read the watched thread's current
    virtual stream. Had they synchronized the default stream, the side stream's read of
    x would still be in flight at x's free."""
    tr = el.enable(mode="always-on", sample=1.0, seed=0, max_window_ops=3)
    s = v.Stream(name="side")
    v.synchronize()  # a barrier: a window opens, for three ops
    x = torch.randn(N)  # op 1
    s.wait_stream(v.default_stream())
    with v.stream(s):
        y = (x * 2).sum()  # ops 2 and 3: the window's budget is spent
        assert tr._window is not None and tr._window.left == 0
        y.item()  # passes the window untracked: the hooks alone see the read
    del x, y  # x's use on side is complete (the host waited for side): a safe free
    torch.empty(N)  # the next allocation on the default stream: the free's verdict
    el.disable()  # and every pending free judged
    assert tr.errors == [], tr.report()


def test_a_window_opens_and_closes_at_barriers_the_hooks_hand_back():
    tr = el.enable(mode="always-on", sample=1.0, seed=0)
    s = v.Stream(name="side")
    opened = tr.windows_opened
    for _ in range(3):
        p1_step(s)
    assert tr.windows_opened == opened + 3
    assert "unsynced-free" in {h.kind for h in tr.errors}  # reuse-race too if reused


def test_a_hazard_is_logged_at_the_next_barrier(caplog):
    tr = el.enable(mode="always-on", sample=1.0, seed=0)
    s = v.Stream(name="side")
    with caplog.at_level("ERROR", logger="esper_lifetimes"):
        p1_step(s)
        tr.sample = 0.0  # the hooks' common case from here on
        v.synchronize()
        torch.ones(1).item()
    assert sum("unsynced-free" in r.getMessage() for r in caplog.records) == 1
    assert tr._hooks.logged == len(tr.hazards)


def test_a_timeline_engine_is_fed_through_its_python_methods():
    tl = Timeline(max_events=10_000)
    tr = el.enable(mode="always-on", sample=1.0, seed=0, timeline=tl)
    assert tr._hooks is not None
    p1_step(v.Stream(name="side"))
    el.disable()
    ops = {ev.op for ev in tl}
    assert {"stream_wait", "device_synchronize", "alloc", "free"} <= ops
    assert "unsynced-free" in {h.kind for h in tr.errors}  # reuse-race too if reused


def test_a_bad_argument_is_noted_never_raised():
    tr = el.enable(mode="always-on", sample=0.0)
    tr.on_stream_wait("not a handle", 1)
    tr.on_event_record(1, object())
    tr.on_stream_sync(None)
    where = [d.split(":")[0] for d in tr.diagnostics]
    assert where == ["wait_stream", "event_record", "stream_synchronize"]
    assert "InvalidArgumentError" in tr.diagnostics[0]


def test_item_raises_what_torch_raises_and_nothing_else():
    el.enable(mode="always-on", sample=0.0)
    with pytest.raises(RuntimeError) as hooked:
        torch.ones(3).item()
    el.disable()
    with pytest.raises(RuntimeError) as plain:
        torch.ones(3).item()
    assert str(hooked.value) == str(plain.value)
    el.enable(mode="always-on", sample=0.0)
    assert torch.tensor(2.5).item() == 2.5
    assert torch.tensor(7).item() == 7


def test_item_is_a_compiled_method_of_tensorbase_while_running():
    """``Tensor.item`` is a C method (rust/hooks.rs ``item_method``), as torch's own: no
    Python frame, no bound method per call; torch's behaviour and doc, restored after."""
    orig = torch.Tensor.item
    tr = el.enable(mode="always-on", sample=0.0)
    hooked = torch.Tensor.item
    assert hooked is not orig and type(hooked) is type(torch._C.TensorBase.item)
    assert hooked.__name__ == "item" and hooked.__objclass__ is torch._C.TensorBase
    assert hooked.__doc__.startswith(orig.__doc__) and "esper_lifetimes" in hooked.__doc__
    assert torch.Tensor.item(torch.tensor(1.5)) == 1.5  # unbound, as torch's
    with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
        hooked(5)  # the descriptor checks its self, as torch's does
    assert tr.barriers == 1
    el.disable()
    assert torch.Tensor.item is orig


def test_a_failure_in_the_item_hook_is_noted_never_raised(monkeypatch):
    """The compiled ``.item()`` returns torch's value even when the tracker's path under
    the hook fails: the failure goes to the tracker's diagnostics."""
    tr = el.enable(mode="always-on", sample=0.0)
    t = v.mark_host(torch.tensor(4.0))  # host memory: the hook hands the read to the
    # Python tracker, which fails here

    def broken(x: torch.Tensor) -> None:
        raise RuntimeError("tracker bug")

    monkeypatch.setattr(tr, "_blocking_read", broken)
    assert t.item() == 4.0
    assert any("tracker bug" in d for d in tr.diagnostics), tr.diagnostics


def test_item_on_another_thread_or_inside_a_patched_call_is_no_barrier():
    tr = el.enable(mode="always-on", sample=0.0)
    t = threading.Thread(target=lambda: torch.ones(1).item())
    t.start()
    t.join()
    patches.thread_state.depth += 1
    try:
        torch.ones(1).item()
    finally:
        patches.thread_state.depth -= 1
    assert tr.barriers == 0
    torch.ones(1).item()
    assert tr.barriers == 1


def test_item_inside_a_region_is_the_regions_event():
    tr = el.enable(mode="always-on", sample=0.0)
    with el.track("collect"):
        torch.ones(1).item()  # the region owns the thread's events: no window games
    assert tr.barriers == 0
    torch.ones(1).item()
    assert tr.barriers == 1


def test_record_stream_of_an_untracked_storage_returns_at_once():
    tr = el.enable(mode="always-on", sample=0.0)
    s = v.Stream(name="side")
    x = torch.ones(N)  # allocated outside any window
    assert tr._hooks.skips_record(x)
    x.record_stream(s)
    assert tr.hazards == [] and tr.diagnostics == []
    with el.track("collect"):  # another tracker on the thread: its path decides
        assert not tr._hooks.skips_record(x)
    t = threading.Thread(target=lambda: out.append(tr._hooks.skips_record(x)))
    out: list[bool] = []
    t.start()
    t.join()
    assert out == [False]  # not the watched thread


def test_record_stream_after_a_window_is_recorded_for_its_storages_only():
    # Between windows the hooks skip record_stream for storages they do not track; with
    # no storage tracked at all they skip before building the tensor's storage object.
    # A storage allocated in a window stays tracked after it, and its record_stream
    # outside the window must still reach the engine.
    tr = el.enable(mode="always-on", sample=0.0)
    s = v.Stream(name="side")
    D = v.default_stream()
    assert tr._recs == {} and tr._window is None
    assert tr._hooks.skips_record(torch.ones(N))  # nothing tracked: the empty-table exit
    tr.sample = 1.0
    D.synchronize()  # a barrier: a window opens
    assert tr._window is not None
    x, y = torch.ones(N), torch.ones(N)  # allocated in the window: tracked
    s.wait_stream(D)
    with v.stream(s):
        x.mul_(2)  # used on the side stream, in the window
        y.mul_(2)
    tr.sample = 0.0
    D.synchronize()  # the window closes (the side stream's work is not complete)
    assert tr._window is None and len(tr._recs) == 2
    assert tr._hooks.skips_record(torch.ones(N))  # untracked, with tracked ones about
    assert not tr._hooks.skips_record(x)
    x.record_stream(s)  # outside the window: x's free waits for the side stream
    del x, y  # y's free does not: its use on the side stream may still run
    gc.collect()
    assert tr._recs == {}
    el.disable()  # the end of tracking: y's free is still uncovered, x's is covered
    assert [h.kind for h in tr.errors] == ["unsynced-free"]


def test_the_tracker_and_its_hooks_are_collected_after_disable():
    tr = el.enable(mode="always-on", sample=1.0, seed=0)
    p1_step(v.Stream(name="side"))
    el.disable()
    el.enable()
    ref, href = weakref.ref(tr), weakref.ref(tr._hooks)
    del tr
    gc.collect()
    assert ref() is None and href() is None
