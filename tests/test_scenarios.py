"""The public scenarios P1-P18 (shared/scenarios/PUBLIC.md), run under ``track()``.

Each body runs unchanged on virtual streams (CPU) and on CUDA (marked ``cuda``). Each
test asserts the exact verdict: the hazard kinds with the tagged source line of the
offending use (``# @use``), or no error at all.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tag_of, verdict

N = 1 << 16


def _only(tracker, kind):
    hs = [h for h in tracker.hazards if h.kind == kind]
    assert len(hs) == 1, tracker.report()
    return hs[0]


def _reuse_races_are_consistent(t, B):
    """A reuse-race may follow an unsynced-free when the block is handed out again; when
    it does, it names the same use, the free and the new allocation."""
    for h in t.hazards:
        if h.kind == "reuse-race":
            assert tag_of(h.use_site) == "use"
            assert tag_of(h.free_site) == "free"
            assert tag_of(h.other_site) == "realloc"


# P1 --------------------------------------------------------------------------------------


def test_p1_main_to_side_freed_early_is_unsynced_free(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        x = B.randn(N)  # @alloc
        s.wait_stream(D)
        with B.stream(s):
            y = x * 2  # @use
        del x  # @free
        z = B.zeros(N)  # @realloc
    assert [v for v in verdict(t) if v[0] != "reuse-race"] == [("unsynced-free", "use")]
    h = _only(t, "unsynced-free")
    assert tag_of(h.alloc_site) == "alloc"
    assert tag_of(h.free_site) == "free"
    assert h.live is B.live
    _reuse_races_are_consistent(t, B)
    assert not verdict(t, "advice")
    del y, z


def test_p1_reuse_race_when_the_block_is_handed_out_again(V):
    # Small blocks: the CPU allocator hands a freed block straight back. The test
    # asserts the reuse-race exactly when the new allocation overlaps the freed bytes.
    s = V.Stream("s")
    D = V.current_stream()
    with V.track() as t:
        x = V.randn(256)  # @alloc
        lo, hi = x.data_ptr(), x.data_ptr() + x.nbytes
        s.wait_stream(D)
        with V.stream(s):
            y = x * 2  # @use
        del x  # @free
        z = V.zeros(256)  # @realloc
    overlaps = z.data_ptr() < hi and lo < z.data_ptr() + z.nbytes
    kinds = verdict(t)
    if overlaps:
        assert kinds == [("reuse-race", "use"), ("unsynced-free", "use")], t.report()
        _reuse_races_are_consistent(t, V)
        rr = _only(t, "reuse-race")
        assert rr.other_ptr == z.data_ptr()
        assert rr.live is True
    else:
        assert kinds == [("unsynced-free", "use")], t.report()
    del y


# P2-P5 -----------------------------------------------------------------------------------


def test_p2_record_stream_before_del_is_safe(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        x = B.randn(N)
        s.wait_stream(D)
        with B.stream(s):
            y = x * 2
        x.record_stream(s)
        del x
        z = B.zeros(N)
    assert t.hazards == [], t.report()
    del y, z


def test_p3_default_waits_for_side_before_del_is_safe(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        x = B.randn(N)
        s.wait_stream(D)
        with B.stream(s):
            y = x * 2
        D.wait_stream(s)
        del x
        z = B.zeros(N)
    assert t.hazards == [], t.report()
    del y, z


def test_p4_wait_and_record_stream_makes_the_record_redundant(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        x = B.randn(N)  # @alloc
        s.wait_stream(D)
        with B.stream(s):
            y = x * 2
        x.record_stream(s)  # @use
        D.wait_stream(s)
        del x  # @free
        z = B.zeros(N)
    assert verdict(t) == [], t.report()
    assert verdict(t, "advice") == [("redundant-record-stream", "use")]
    h = _only(t, "redundant-record-stream")
    assert tag_of(h.free_site) == "free"
    assert tag_of(h.alloc_site) == "alloc"
    del y, z


def test_p5_record_stream_on_the_allocation_stream_is_redundant(B):
    D = B.current_stream()
    with B.track() as t:
        x = B.randn(N)
        x.record_stream(D)  # @use
        del x
    assert verdict(t) == []
    assert verdict(t, "advice") == [("redundant-record-stream", "use")]


# P6 --------------------------------------------------------------------------------------


def test_p6_side_producer_main_consumer_freed_into_side_pool(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t, torch.no_grad():
        model = torch.nn.Linear(64, 64, device=B.device)
        with B.stream(s):
            batch = B.randn(32, 64)  # @alloc
        D.wait_stream(s)
        out = model(batch)  # @use
        del batch  # @free
    assert verdict(t) == [("unsynced-free", "use")], t.report()
    h = _only(t, "unsynced-free")
    assert tag_of(h.alloc_site) == "alloc"
    assert tag_of(h.free_site) == "free"
    assert h.alloc_stream != h.use_stream
    del out


def test_p6_with_backward_the_free_comes_when_autograd_lets_go(B):
    # Autograd saves the batch for the weight gradient: the storage dies at the `del`
    # after backward, and the uses on D (forward and backward) are uncovered there.
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        model = torch.nn.Linear(64, 64, device=B.device)
        with B.stream(s):
            batch = B.randn(32, 64)
        D.wait_stream(s)
        out = model(batch)
        out.sum().backward()  # @use
        del out
        del batch  # @free
    assert verdict(t) == [("unsynced-free", "use")], t.report()
    assert tag_of(_only(t, "unsynced-free").free_site) == "free"


def test_p6_fixed_by_record_stream_on_the_consumer(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t, torch.no_grad():
        model = torch.nn.Linear(64, 64, device=B.device)
        with B.stream(s):
            batch = B.randn(32, 64)
        D.wait_stream(s)
        out = model(batch)
        batch.record_stream(D)
        del batch
    assert t.hazards == [], t.report()
    del out


# P7 --------------------------------------------------------------------------------------


def test_p7_resize_to_zero_while_a_side_stream_copies_is_unsynced_free(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        g = B.randn(N)  # @alloc
        host_buf = B.pin(torch.empty(N))
        s.wait_stream(D)
        with B.stream(s):
            host_buf.copy_(g, non_blocking=True)  # @use
        g.untyped_storage().resize_(0)  # @free
    assert verdict(t) == [("unsynced-free", "use")], t.report()
    h = _only(t, "unsynced-free")
    assert tag_of(h.free_site) == "free"
    assert tag_of(h.alloc_site) == "alloc"


def test_p7_fixed_by_waiting_before_the_resize(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        g = B.randn(N)
        host_buf = B.pin(torch.empty(N))
        s.wait_stream(D)
        with B.stream(s):
            host_buf.copy_(g, non_blocking=True)
        D.wait_stream(s)
        g.untyped_storage().resize_(0)
    assert t.hazards == [], t.report()


# P8 --------------------------------------------------------------------------------------


def test_p8_views_read_on_two_streams_base_freed_is_unsynced_free_on_both(B):
    s, s2 = B.Stream("s"), B.Stream("s2")
    D = B.current_stream()
    with B.track() as t:
        samples = [B.randn(1024) for _ in range(4)]
        batch = torch.stack(samples)  # @alloc
        v1, v2 = batch.tensor_split(2)
        s.wait_stream(D)
        s2.wait_stream(D)
        with B.stream(s):
            a = v1 * 1  # @use1
        with B.stream(s2):
            b = v2 * 1  # @use2
        del batch, v1, v2  # @free
    assert verdict(t) == [("unsynced-free", "use1"), ("unsynced-free", "use2")], t.report()
    for h in t.errors:
        assert tag_of(h.alloc_site) == "alloc"
        assert tag_of(h.free_site) == "free"
    del a, b


def test_p8_record_stream_on_each_view_is_safe(B):
    s, s2 = B.Stream("s"), B.Stream("s2")
    D = B.current_stream()
    with B.track() as t:
        samples = [B.randn(1024) for _ in range(4)]
        batch = torch.stack(samples)
        v1, v2 = batch.tensor_split(2)
        s.wait_stream(D)
        s2.wait_stream(D)
        with B.stream(s):
            a = v1 * 1
        with B.stream(s2):
            b = v2 * 1
        v1.record_stream(s)
        v2.record_stream(s2)
        del batch, v1, v2
    assert t.hazards == [], t.report()
    del a, b


# P9 --------------------------------------------------------------------------------------


def test_p9_side_stream_reads_default_stream_data_without_a_wait(B):
    s = B.Stream("s")
    with B.track() as t:
        a = B.rand(N)  # @write
        with B.stream(s):
            b = a * 5  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    h = _only(t, "unsynced-access")
    assert tag_of(h.other_site) == "write"
    assert h.live is B.live
    del b


def test_p9_fixed_by_wait_stream(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        a = B.rand(N)
        s.wait_stream(D)
        with B.stream(s):
            b = a * 5
    assert t.hazards == [], t.report()
    del b


# P10 -------------------------------------------------------------------------------------


def test_p10_accumulator_recorded_waited_and_synced_has_no_error(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        v = B.ones(1)
        acc = B.zeros(1)
        acc.record_stream(s)  # @use
        s.wait_stream(D)
        with B.stream(s):
            acc.add_(v)
        s.synchronize()
        assert acc.item() == 1.0
        del acc
    assert verdict(t) == [], t.report()
    # s.synchronize() covered the use before the free: the record only delayed reuse.
    assert verdict(t, "advice") == [("redundant-record-stream", "use")]


def test_p10_without_the_synchronize_item_races_the_side_stream(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        v = B.ones(1)
        acc = B.zeros(1)
        acc.record_stream(s)
        s.wait_stream(D)
        with B.stream(s):
            acc.add_(v)  # @write
        acc.item()  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    assert tag_of(_only(t, "unsynced-access").other_site) == "write"


# P11 -------------------------------------------------------------------------------------


def test_p11_host_reads_a_non_blocking_copy_before_it_completes(B):
    with B.track() as t:
        y = B.randn(N)
        y_cpu = B.to_host(y, non_blocking=True)  # @use
        y_cpu.tolist()  # @read
    assert verdict(t) == [("host-read-before-copy", "use")], t.report()
    assert tag_of(_only(t, "host-read-before-copy").other_site) == "read"


def test_p11_fixed_by_an_event_after_the_copy(B):
    with B.track() as t:
        y = B.randn(N)
        y_cpu = B.to_host(y, non_blocking=True)
        ev = B.Event()
        ev.record()
        ev.synchronize()
        y_cpu.tolist()
    assert t.hazards == [], t.report()


# P12 -------------------------------------------------------------------------------------


def test_p12_pinned_source_written_while_its_copy_is_in_flight(B):
    with B.track() as t:
        a = B.pin(torch.ones(N))
        b = B.to_device(a, non_blocking=True)  # @use
        a.fill_(-1)  # @write
    assert verdict(t) == [("host-write-during-copy", "use")], t.report()
    assert tag_of(_only(t, "host-write-during-copy").other_site) == "write"
    del b


def test_p12_freeing_the_pinned_source_is_safe(B):
    with B.track() as t:
        a = B.pin(torch.ones(N))
        b = B.to_device(a, non_blocking=True)
        del a
    assert t.hazards == [], t.report()
    del b


# The worked example of SEMANTICS.md, each fix, and two fixes at once ---------------------


@pytest.mark.parametrize("fix", ["record", "wait", "sync"])
def test_worked_example_each_fix_makes_the_free_safe(B, fix):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        x = B.randn(N)
        s.wait_stream(D)
        with B.stream(s):
            y = x * 2
        if fix == "record":
            x.record_stream(s)
        elif fix == "wait":
            D.wait_stream(s)
        else:
            s.synchronize()
        del x
        z = B.zeros(N)
    assert t.hazards == [], t.report()
    del y, z


# Added with SEMANTICS.md version 2 ------------------------------------------------------


def _without_reuse_races(t, realloc):
    """verdict(t) without reuse races, after checking that each one names the tagged
    use and the tagged allocation that took the block (the CPU allocator may or may not
    hand a freed block straight back)."""
    for h in t.hazards:
        if h.kind == "reuse-race":
            assert tag_of(h.use_site) == "use", t.report()
            assert tag_of(h.other_site) == realloc, t.report()
    return [v for v in verdict(t) if v[0] != "reuse-race"]


# P13 -------------------------------------------------------------------------------------


def _prefetcher(B, wait_before_reuse, steps=4):
    s = B.Stream("s")
    D = B.current_stream()
    host_batches = [B.pin(torch.randn(N)) for _ in range(steps)]
    with B.track() as t, torch.no_grad():
        w = B.randn(N)
        cur = None
        outs = []
        for hb in host_batches:
            with B.stream(s):
                nxt = B.to_device(hb, non_blocking=True)  # @alloc
            D.wait_stream(s)
            cur = nxt  # @free
            del nxt
            if wait_before_reuse:
                s.wait_stream(D)  # covers the previous batch's use before s allocates
            outs.append(cur * w)  # @use
    return t, outs


def test_p13_prefetcher_whose_producer_waits_on_the_consumer_is_clean(B):
    t, outs = _prefetcher(B, wait_before_reuse=True)
    assert t.hazards == [], t.report()
    del outs


def test_p13_without_the_wait_is_unsynced_free_at_the_next_allocation(B):
    t, outs = _prefetcher(B, wait_before_reuse=False)
    assert _without_reuse_races(t, "alloc") == [("unsynced-free", "use")], t.report()
    h = _only(t, "unsynced-free")
    assert (tag_of(h.alloc_site), tag_of(h.free_site)) == ("alloc", "free")
    # three batches freed on D's use; the first two judged at the next allocation on s
    assert h.count == 3, t.report()
    assert tag_of(h.other_site) in ("alloc", None)
    del outs


# P14 -------------------------------------------------------------------------------------


def test_p14_fresh_buffer_handed_to_a_side_stream_without_a_wait(B):
    s = B.Stream("s")
    with B.track() as t:
        tmp = B.randn(N)
        r = tmp.sum()  # D has work pending on tmp's block
        del tmp
        A = B.empty(N)  # @alloc
        with B.stream(s):
            A.normal_()  # @use
    assert verdict(t) == [("unwaited-allocation", "use")], t.report()
    h = _only(t, "unwaited-allocation")
    assert tag_of(h.alloc_site) == "alloc"
    assert h.alloc_stream != h.use_stream
    del r, A


def test_p14_fixed_by_waiting_on_the_allocation_stream(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        tmp = B.randn(N)
        r = tmp.sum()
        del tmp
        A = B.empty(N)
        s.wait_stream(D)
        with B.stream(s):
            A.normal_()
    assert t.hazards == [], t.report()
    del r, A


def test_p14_a_fill_on_the_allocation_stream_is_reported_as_the_race_it_is(B):
    # The same use racing with the storage's own write on D: that unsynced-access is the
    # report, not a second error for the same mistake.
    s = B.Stream("s")
    with B.track() as t:
        A = B.zeros(N)  # @write
        with B.stream(s):
            A.normal_()  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    del A


# P15 -------------------------------------------------------------------------------------


def _offload_buffer(B, wait_before_refill):
    d2h, h2d = B.Stream("d2h"), B.Stream("h2d")
    D = B.current_stream()
    buf = B.pin(torch.empty(N))
    with B.track() as t:
        act, act2 = B.randn(N), B.randn(N)
        d2h.wait_stream(D)
        with B.stream(d2h):
            buf.copy_(act, non_blocking=True)
        h2d.wait_stream(d2h)
        with B.stream(h2d):
            back = B.to_device(buf, non_blocking=True)  # @read
        if wait_before_refill:
            d2h.wait_stream(h2d)
        with B.stream(d2h):
            buf.copy_(act2, non_blocking=True)  # @use
    return t, back


def test_p15_pinned_buffer_refilled_while_another_stream_copies_out_of_it(B):
    t, back = _offload_buffer(B, wait_before_refill=False)
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    h = _only(t, "unsynced-access")
    assert tag_of(h.other_site) == "read"
    assert h.use_stream != h.other_stream
    del back


def test_p15_fixed_by_waiting_on_the_copy_out_before_the_refill(B):
    t, back = _offload_buffer(B, wait_before_refill=True)
    assert t.hazards == [], t.report()
    del back


# P16 -------------------------------------------------------------------------------------


def test_p16_offload_and_reload_on_one_stream_is_clean(B):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t:
        a = B.randn(N)
        s.wait_stream(D)
        with B.stream(s):
            h = B.to_host(a, non_blocking=True)
            b = B.to_device(h, non_blocking=True)  # ordered after the copy into h
    assert t.hazards == [], t.report()
    del b


def test_p16_reload_on_another_stream_without_a_wait_races_the_copy(B):
    s, s2 = B.Stream("s"), B.Stream("s2")
    D = B.current_stream()
    with B.track() as t:
        a = B.randn(N)
        s.wait_stream(D)
        with B.stream(s):
            h = B.to_host(a, non_blocking=True)  # @write
        with B.stream(s2):
            b = B.to_device(h, non_blocking=True)  # @use
    assert verdict(t) == [("unsynced-access", "use")], t.report()
    assert tag_of(_only(t, "unsynced-access").other_site) == "write"
    del b


def test_activation_offloading_round_trip_on_one_stream_is_clean(B):
    s = B.Stream("offload")
    D = B.current_stream()
    with B.track() as t:
        act = B.randn(N)  # forward activation, on D
        s.wait_stream(D)
        with B.stream(s):
            h = B.to_host(act, non_blocking=True)  # offload
        act.record_stream(s)
        del act  # device memory released while the copy may run
        later = B.zeros(N)  # more forward work on D
        with B.stream(s):
            back = B.to_device(h, non_blocking=True)  # reload, same stream
        D.wait_stream(s)
        g = back * 2  # backward reads the reloaded activation
    assert t.hazards == [], t.report()
    del later, g


def test_activation_offloading_without_record_stream_is_unsynced_free(B):
    s = B.Stream("offload")
    D = B.current_stream()
    with B.track() as t:
        act = B.randn(N)  # @alloc
        s.wait_stream(D)
        with B.stream(s):
            h = B.to_host(act, non_blocking=True)  # @use
        del act  # @free
        later = B.zeros(N)  # @next
        with B.stream(s):
            back = B.to_device(h, non_blocking=True)
        D.wait_stream(s)
        g = back * 2
    assert _without_reuse_races(t, "next") == [("unsynced-free", "use")], t.report()
    h = _only(t, "unsynced-free")
    assert (tag_of(h.free_site), tag_of(h.other_site)) == ("free", "next")
    del later, g


# P17 -------------------------------------------------------------------------------------


def test_p17_empty_like_reads_nothing(B):
    s = B.Stream("s")
    with B.track() as t:
        with B.stream(s):
            w = B.ones(N)  # allocated on s
        B.synchronize()
        w2 = torch.empty_like(w)
        del w
        with B.stream(s):
            nxt = B.zeros(N)  # the next allocation on s judges the free
    assert t.hazards == [], t.report()
    del w2, nxt


def test_p17_with_a_real_read_instead_the_free_is_unsynced(B):
    s = B.Stream("s")
    with B.track() as t:
        with B.stream(s):
            w = B.ones(N)  # @alloc
        B.synchronize()
        w2 = w.clone()  # @use
        del w  # @free
        with B.stream(s):
            nxt = B.zeros(N)  # @next
    assert _without_reuse_races(t, "next") == [("unsynced-free", "use")], t.report()
    h = _only(t, "unsynced-free")
    assert (tag_of(h.alloc_site), tag_of(h.free_site)) == ("alloc", "free")
    assert tag_of(h.other_site) == "next"
    del w2, nxt


# P18 -------------------------------------------------------------------------------------


def _recording_prefetcher(B, record, sync_every_step, steps=4):
    s = B.Stream("s")
    D = B.current_stream()
    with B.track() as t, torch.no_grad():
        w = B.randn(N)
        outs = []
        for i in range(steps):
            with B.stream(s):
                cur = B.randn(N)  # @alloc
            D.wait_stream(s)
            if record:
                cur.record_stream(D)  # @record
            outs.append(cur * w)  # @use
            if sync_every_step or i == steps - 1:
                B.synchronize()  # before the last batch is freed
            del cur  # @free
    return t, outs


def test_p18_record_stream_needed_every_iteration_but_the_last_gets_no_advice(B):
    t, outs = _recording_prefetcher(B, record=True, sync_every_step=False)
    assert t.hazards == [], t.report()
    del outs


def test_p18_without_the_record_the_three_frees_are_unsynced(B):
    t, outs = _recording_prefetcher(B, record=False, sync_every_step=False)
    assert _without_reuse_races(t, "alloc") == [("unsynced-free", "use")], t.report()
    h = _only(t, "unsynced-free")
    assert h.count == 3
    assert tag_of(h.free_site) == "free"
    del outs


def test_p18_a_record_redundant_every_time_it_ran_is_advice(B):
    t, outs = _recording_prefetcher(B, record=True, sync_every_step=True)
    assert verdict(t) == [], t.report()
    assert verdict(t, "advice") == [("redundant-record-stream", "record")], t.report()
    del outs
