"""Views, slices and storages under ``track()``: what is an access, what is a free, and
which bytes an access touches."""

from __future__ import annotations

import numpy as np
import torch
from conftest import tag_of, verdict

N = 4096


def test_two_streams_writing_disjoint_halves_of_one_buffer_is_safe(B):
    s, s2 = B.Stream("s"), B.Stream("s2")
    D = B.current_stream()
    with B.track() as t:
        buf = B.zeros(2, N)
        s.wait_stream(D)
        s2.wait_stream(D)
        with B.stream(s):
            buf[0].fill_(1.0)
        with B.stream(s2):
            buf[1].fill_(2.0)
        D.wait_stream(s)
        D.wait_stream(s2)
        total = buf.sum()
    assert t.hazards == [], t.report()
    del total


def test_two_streams_writing_overlapping_slices_race(B):
    s, s2 = B.Stream("s"), B.Stream("s2")
    D = B.current_stream()
    with B.track() as t:
        buf = B.zeros(N)
        s.wait_stream(D)
        s2.wait_stream(D)
        with B.stream(s):
            buf[: N // 2 + 1].fill_(1.0)  # @first
        with B.stream(s2):
            buf[N // 2 :].fill_(2.0)  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    assert tag_of(t.errors[0].other_site) == "first"


def test_reading_one_slice_while_another_stream_writes_the_other_is_safe(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        buf = B.randn(N)
        s.wait_stream(D)
        with B.stream(s):
            head = buf[: N // 2] * 2
        buf[N // 2 :].zero_()  # D writes the other half while s reads the first
    assert t.hazards == [], t.report()
    del head


def test_writing_the_slice_another_stream_reads_races(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        buf = B.randn(N)
        s.wait_stream(D)
        with B.stream(s):
            head = buf[: N // 2] * 2  # @read
        buf[: N // 4].zero_()  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    assert tag_of(t.errors[0].other_site) == "read"
    del head


def test_view_ops_touch_no_bytes(B):
    # Taking views on another stream without any wait is not an access.
    s = B.Stream("s")
    with B.track() as t:
        x = B.randn(64, 64)
        with B.stream(s):
            views = [x.t(), x.view(-1), x[3], x[:, 1:], x.unsqueeze(0), x.detach(), x.T]
    assert t.hazards == [], t.report()
    del views


def test_a_strided_view_touches_its_span_within_the_storage(B):
    # A column of a row-major matrix spans (rows-1)*cols+1 elements from its offset: a
    # write on D past that span does not race with a read of the column on s.
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        m = B.randn(8, 8)
        tail = B.zeros(1)
        s.wait_stream(D)
        with B.stream(s):
            col = m[:4, 2] * 1  # rows 0-3 only: elements 2 .. 26
        m[5:].zero_()  # elements 40 .. 63: outside the column's span
    assert t.hazards == [], t.report()
    del col, tail


def test_the_storage_is_freed_when_its_last_view_dies(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        base = B.randn(N)
        view = base[10:20]
        s.wait_stream(D)
        with B.stream(s):
            y = view * 2  # @use
        del base  # a view still holds the storage: no free here
        assert t.hazards == []
        del view  # @free
    assert verdict(t) == [("unsynced-free", "use")], t.report()
    assert tag_of(t.errors[0].free_site) == "free"
    del y


def test_to_same_device_non_blocking_returns_the_tensor_and_registers_nothing(B):
    with B.track() as t:
        x = B.randn(N)
        live = t.engine.stats()["live_storages"]
        y = x.to(B.device, non_blocking=True)
        assert y is x
        assert t.engine.stats()["live_storages"] == live
    assert t.hazards == []


def test_resize_to_zero_is_a_free_and_growing_back_a_new_allocation(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        x = B.randn(N)
        st = x.untyped_storage()
        nbytes = st.nbytes()
        live = t.engine.stats()["live_storages"]
        st.resize_(0)
        assert t.engine.stats()["live_storages"] == live - 1
        st.resize_(nbytes)  # FSDP-style: the same storage object gets memory again
        assert t.engine.stats()["live_storages"] == live
        s.wait_stream(D)
        with B.stream(s):
            y = x * 2
        D.wait_stream(s)
        del x, st
    assert t.hazards == [], t.report()
    del y


def test_a_storage_from_before_tracking_is_registered_on_first_use(B):
    s = B.Stream("s")
    x = B.randn(N)  # allocated before tracking began
    with B.track() as t:
        s.wait_stream(B.current_stream())
        with B.stream(s):
            y = x * 2  # @use
        del x  # @free
    assert verdict(t) == [("unsynced-free", "use")], t.report()
    h = t.errors[0]
    assert h.alloc_site is None  # not seen allocated
    assert h.alloc_stream == t.errors[0].alloc_stream
    assert "before tracking" in t.report()
    del y


def test_torch_tensor_literals_are_allocated_on_the_current_stream(V):
    # torch.tensor([...]) dispatches only lift_fresh: it is registered there, on the
    # stream current at that line, with that line as its site. It is a blocking copy
    # from host data: the host then waits for s, so the read on D races nothing, but
    # the free still leaves D's use uncovered for s's pool.
    s = V.Stream("s")
    with V.track() as t:
        with V.stream(s):
            lit = torch.tensor([1.0, 2.0, 3.0])  # @alloc
        y = lit * 2  # @use
        del lit  # @free
    assert verdict(t) == [("unsynced-free", "use")], t.report()
    uf = next(h for h in t.errors if h.kind == "unsynced-free")
    assert tag_of(uf.alloc_site) == "alloc"
    del y


def test_from_numpy_storages_are_seen_as_inputs(V):
    arr = np.ones(N, dtype=np.float32)
    s = V.Stream("s")
    with V.track() as t:
        x = torch.from_numpy(arr)
        with V.stream(s):
            y = x + 1
    assert t.hazards == [] or {h.kind for h in t.hazards} <= {"unsynced-access"}
    assert t.diagnostics == []
    del y


def test_in_place_ops_and_out_arguments_are_writes(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        a = B.randn(N)
        out = B.empty(N)
        s.wait_stream(D)
        with B.stream(s):
            r = a * 1  # @read
        torch.add(a, 1, out=out)
        a.mul_(3)  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    assert tag_of(t.errors[0].other_site) == "read"
    del r


def test_out_argument_resized_by_the_op_is_reallocated_quietly(V):
    with V.track() as t:
        a = V.randn(N)
        out = V.empty(0)
        torch.add(a, 1, out=out)  # resizes out's storage
        b = out * 2
    assert t.hazards == [] and t.diagnostics == [], (t.report(), t.diagnostics)
    del b


def test_foreach_ops_touch_every_tensor_of_their_lists(B):
    s = B.Stream("s")
    with B.track() as t:
        xs = [B.randn(128) for _ in range(3)]
        with B.stream(s):
            torch._foreach_mul_(xs, 2.0)  # @use
    # one distinct hazard (same sites), found once per tensor of the list
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    assert t.errors[0].count == 3
