"""Focused tests of the engine's Python API (docs/ENGINE-API.md).

Every trace here is raw engine calls written by hand: the worked example of
SEMANTICS.md, the public scenarios P1-P18 (shared/scenarios/PUBLIC.md) and their fixes,
deferred frees and flush, unwaited allocations, adopt, copy against copy on host memory,
per-site advice, virtual-stream reuse, deduplication, liveness, messages, bad input, the
bulk path and threads.

Conventions: D is the default stream, S and S2 side streams, X/Y/Z device storages,
H a host buffer. The `write` of a factory op (randn, zeros, ...) is an access on the
stream that allocated it.
"""

from __future__ import annotations

import pickle
import re
import threading

import numpy as np
import pytest

el = pytest.importorskip("esper_lifetimes")
Engine = el.Engine
Hazard = el.Hazard
LifetimesError = el.LifetimesError
InvalidArgumentError = el.InvalidArgumentError
UnknownStorageError = el.UnknownStorageError
ops = el.ops

D, S, S2 = 0, 1, 2
N = 4096
X = 0x7F12_3400_0000
Y = X + 0x10000
Z = X + 0x20000
H = 0x5500_0000_0000

HAZARD_FIELDS = (
    "kind",
    "severity",
    "count",
    "ptr",
    "nbytes",
    "alloc_stream",
    "alloc_site",
    "use_stream",
    "use_site",
    "free_site",
    "other_stream",
    "other_site",
    "other_ptr",
    "other_nbytes",
    "live",
)
STATS_KEYS = {
    "live_storages",
    "pending_frees",
    "freed_tracked",
    "streams",
    "events",
    "sites",
    "hazards",
    "events_processed",
}


def kinds(e) -> list[str]:
    return [h.kind for h in e.hazards()]


def only(e, kind) -> Hazard:
    found = [h for h in e.hazards() if h.kind == kind]
    assert len(found) == 1, f"expected one {kind}, got {e.hazards()}"
    return found[0]


def fields(h, **expected):
    for name, value in expected.items():
        assert getattr(h, name) == value, f"{name}: {getattr(h, name)!r} != {value!r} in {h}"


def snapshot(e):
    return e.stats(), [h.to_dict() for h in e.hazards()]


# --------------------------------------------------- worked example and P1-P5


def p1_prefix(e):
    """x = randn(N) on D; s.wait_stream(D); with stream(s): y = x * 2."""
    e.alloc(X, N, D, "ex.py:1")
    e.access(X, N, D, True, "ex.py:1")
    e.stream_wait(S, D)
    e.access(X, N, S, False, "ex.py:3")


def test_worked_example_reports_unsynced_free_and_reuse_race():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    assert kinds(e) == []  # pending: judged when its bytes can next be handed out
    assert e.stats()["pending_frees"] == 1
    e.alloc(X, N, D, "ex.py:5")
    assert kinds(e) == ["unsynced-free", "reuse-race"]
    assert e.stats()["pending_frees"] == 0
    free, reuse = e.hazards()
    fields(
        free,
        severity="error",
        count=1,
        ptr=X,
        nbytes=N,
        alloc_stream=D,
        alloc_site="ex.py:1",
        use_stream=S,
        use_site="ex.py:3",
        free_site="ex.py:4",
        other_stream=D,  # the allocation that judged it
        other_site="ex.py:5",
        other_ptr=X,
        other_nbytes=N,
        live=None,
    )
    fields(
        reuse,
        severity="error",
        count=1,
        ptr=X,
        nbytes=N,
        alloc_stream=D,
        alloc_site="ex.py:1",
        use_stream=S,
        use_site="ex.py:3",
        free_site="ex.py:4",
        other_stream=D,
        other_site="ex.py:5",
        other_ptr=X,
        other_nbytes=N,
        live=None,
    )
    assert e.error_count() == 2 and e.hazard_count() == 2


def test_error_signal_is_a_flag_raised_by_the_call_that_records_an_error():
    e = Engine()
    sig: list[None] = []
    e.set_error_signal(sig)
    p1_prefix(e)
    e.free(X, "ex.py:4")
    assert sig == []  # no error yet: the free is pending
    e.alloc(X, N, D, "ex.py:5")  # judged here: unsynced-free and reuse-race
    assert e.error_count() == 2 and sig == [None]  # one entry, not one per error
    sig.clear()
    e.access(X, N, D, True, "ex.py:6")
    assert sig == []  # no new error
    with pytest.raises(InvalidArgumentError, match="already has its signal"):
        e.set_error_signal([])


def test_alloc_write_is_alloc_then_a_whole_write():
    # the fresh output's one call: the same verdicts as alloc then access(write=True)
    def run(fused: bool) -> list:
        e = Engine()
        if fused:
            e.alloc_write(X, N, D, "ex.py:1")
        else:
            e.alloc(X, N, D, "ex.py:1")
            e.access(X, N, D, True, "ex.py:1")
        e.access(X, N, S, False, "ex.py:2")  # read on S, unordered after D's write
        e.free(X, "ex.py:3")
        e.alloc(Y, N, D, "ex.py:4")  # judges the pending free
        return [(h.kind, h.use_stream, h.use_site) for h in e.hazards()]

    assert run(True) == run(False) != []
    e = Engine()
    with pytest.raises(InvalidArgumentError):
        e.alloc_write(X, 0, D)  # the checks are alloc's
    assert e.stats()["live_storages"] == 0


def test_reuse_race_on_partial_overlap_reports_both_storages():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(X + N - 512, 1024, D, "ex.py:6")  # straddles the end of the freed range
    reuse = only(e, "reuse-race")
    fields(reuse, ptr=X, nbytes=N, other_ptr=X + N - 512, other_nbytes=1024, other_site="ex.py:6")


def test_allocation_next_to_freed_range_is_not_a_reuse():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(X + N, N, D, "ex.py:6")
    e.alloc(X - N, N, D, "ex.py:7")
    assert kinds(e) == ["unsynced-free"]


def test_freed_range_is_forgotten_once_reused():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    e.free(X, "ex.py:8")  # the new storage had no use on another stream
    e.alloc(X, N, D, "ex.py:9")
    assert kinds(e) == ["unsynced-free", "reuse-race"]


P1_FIXES = {
    "record_stream": lambda e: e.record_stream(X, S, "ex.py:2"),
    "D.wait_stream(s)": lambda e: e.stream_wait(D, S),
    "s.synchronize()": lambda e: e.stream_synchronize(S),
    "device synchronize": lambda e: e.device_synchronize(),
    "event on s waited by D": lambda e: (e.event_record(7, S), e.event_wait(7, D)),
    "event on s synchronized": lambda e: (e.event_record(7, S), e.event_synchronize(7)),
    "s.query() True": lambda e: e.stream_query(S, True),
    "event.query() True": lambda e: (e.event_record(7, S), e.event_query(7, True)),
    "through a third stream": lambda e: (e.stream_wait(S2, S), e.stream_wait(D, S2)),
}


@pytest.mark.parametrize("fix", list(P1_FIXES))
def test_p1_fixes_make_free_and_reuse_safe(fix):
    e = Engine()
    p1_prefix(e)
    P1_FIXES[fix](e)
    e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    e.flush()
    assert e.hazards() == []  # one protection alone is never redundant


def test_event_recorded_before_the_use_does_not_cover_it():
    # recorded on s *before* s's read: waiting on it orders nothing useful
    e2 = Engine()
    e2.alloc(X, N, D, "ex.py:1")
    e2.access(X, N, D, True, "ex.py:1")
    e2.stream_wait(S, D)
    e2.event_record(7, S)
    e2.access(X, N, S, False, "ex.py:3")
    e2.event_wait(7, D)
    e2.event_synchronize(7)
    e2.free(X, "ex.py:4")
    e2.flush()
    assert kinds(e2) == ["unsynced-free"]


def test_re_recording_an_event_replaces_its_clock():
    e = Engine()
    p1_prefix(e)
    e.event_record(7, S)  # covers the read on s
    e.event_record(7, S2)  # re-recorded on an idle stream: no longer covers it
    e.event_wait(7, D)
    e.free(X, "ex.py:4")
    e.flush()
    assert kinds(e) == ["unsynced-free"]


def test_current_stream_at_free_does_not_matter_only_allocation_stream_waits():
    e = Engine()
    p1_prefix(e)
    e.stream_wait(S2, S)  # S2 waited on s, but X was allocated on D
    e.free(X, "ex.py:4")
    e.flush()
    assert kinds(e) == ["unsynced-free"]


@pytest.mark.parametrize("second", ["D.wait_stream(s)", "s.synchronize()", "device synchronize"])
def test_p4_record_stream_plus_wait_or_sync_is_redundant_advice(second):
    e = Engine()
    p1_prefix(e)
    e.record_stream(X, S, "ex.py:2")
    P1_FIXES[second](e)
    e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    assert e.hazards() == []  # advice is given at flush, once the site's every run is known
    e.flush()
    assert e.error_count() == 0
    adv = only(e, "redundant-record-stream")
    fields(
        adv,
        severity="advice",
        ptr=X,
        nbytes=N,
        alloc_stream=D,
        alloc_site="ex.py:1",
        use_stream=S,
        use_site="ex.py:2",
        free_site="ex.py:4",
        live=None,
    )


def test_p5_record_stream_on_allocation_stream_is_advice_at_flush():
    e = Engine()
    e.alloc(X, N, D, "ex.py:1")
    e.record_stream(X + 100, D, "ex.py:2")  # an interior pointer names the storage too
    assert e.hazards() == []
    e.flush()
    adv = only(e, "redundant-record-stream")
    fields(adv, severity="advice", count=1, ptr=X, nbytes=N, alloc_stream=D, use_stream=D)
    fields(adv, use_site="ex.py:2", free_site=None, live=None)
    assert e.error_count() == 0
    e.free(X, "ex.py:3")  # D was never added to the record set: nothing more at the free
    e.flush()
    assert e.hazard_count() == 1


def test_recording_a_stream_twice_is_advice():
    e = Engine()
    p1_prefix(e)
    e.record_stream(X, S, "ex.py:2")
    e.record_stream(X, S, "ex.py:7")
    e.free(X, "ex.py:4")  # s's read is uncovered: the first record is needed
    e.flush()
    adv = only(e, "redundant-record-stream")
    fields(adv, use_stream=S, use_site="ex.py:7", free_site=None)
    assert e.error_count() == 0 and e.hazard_count() == 1


def test_recorded_stream_that_never_used_the_storage_is_advice_judged_at_free():
    e = Engine()
    e.alloc(X, N, D, "ex.py:1")
    e.record_stream(X, S, "ex.py:2")
    e.free(X, "ex.py:4")  # nothing uncovered: judged at once, the advice waits for flush
    assert e.hazards() == [] and e.stats()["pending_frees"] == 0
    e.flush()
    fields(
        only(e, "redundant-record-stream"), use_stream=S, use_site="ex.py:2", free_site="ex.py:4"
    )


def test_advice_at_free_follows_record_order():
    e = Engine()
    e.alloc(X, N, D, "ex.py:1")
    e.record_stream(X, S2, "ex.py:2")
    e.record_stream(X, S, "ex.py:3")
    e.free(X, "ex.py:4")
    e.flush()
    assert [(h.use_stream, h.use_site) for h in e.hazards()] == [(S2, "ex.py:2"), (S, "ex.py:3")]


# ------------------------------------------------------------------ P6-P10


def test_p6_side_producer_main_consumer_freed_into_side_pool():
    e = Engine()
    e.alloc(X, N, S, "data.py:10")  # with stream(s): t = make_batch()
    e.access(X, N, S, True, "data.py:10")
    e.stream_wait(D, S)
    e.access(X, N, D, False, "train.py:20")  # out = model(t)
    e.free(X, "train.py:21")  # del t
    assert e.hazards() == []
    e.alloc(Y, N, S, "data.py:10")  # the next batch, on s: X's block may go to it
    fields(
        only(e, "unsynced-free"),
        alloc_stream=S,
        use_stream=D,
        alloc_site="data.py:10",
        use_site="train.py:20",
        free_site="train.py:21",
        other_stream=S,
        other_site="data.py:10",
        other_ptr=Y,
        other_nbytes=N,
    )
    assert e.error_count() == 1


def test_p6_fixed_by_s_waiting_on_d():
    e = Engine()
    e.alloc(X, N, S, "data.py:10")
    e.access(X, N, S, True, "data.py:10")
    e.stream_wait(D, S)
    e.access(X, N, D, False, "train.py:20")
    e.stream_wait(S, D)
    e.free(X, "train.py:21")
    assert e.stats()["pending_frees"] == 0  # covered at the free: judged at once
    e.flush()
    assert e.hazards() == []


def test_p7_storage_released_by_resize_while_side_stream_copies_from_it():
    e = Engine()
    e.alloc(X, N, D, "opt.py:1")
    e.access(X, N, D, True, "opt.py:1")
    e.stream_wait(S, D)
    e.access(X, N, S, False, "opt.py:3")  # host_buf.copy_(g, non_blocking=True) reads g on s
    e.copy_to_host(H, N, S, "opt.py:3")
    e.free(X, "opt.py:4")  # g.untyped_storage().resize_(0)
    e.flush()
    fields(only(e, "unsynced-free"), use_stream=S, use_site="opt.py:3", free_site="opt.py:4")


def p8(e, fixed):
    e.alloc(X, N, D, "p8.py:1")  # batch = stack(samples)
    e.access(X, N, D, True, "p8.py:1")
    half = N // 2
    e.stream_wait(S, D)
    e.stream_wait(S2, D)
    e.access(X, half, S, False, "p8.py:4")  # a = v1 * 1
    e.access(X + half, half, S2, False, "p8.py:5")  # b = v2 * 1
    if fixed:
        e.record_stream(X, S, "p8.py:6")  # v1.record_stream(s)
        e.record_stream(X + half, S2, "p8.py:7")  # v2.record_stream(s2): an interior pointer
    e.free(X, "p8.py:8")  # del batch, v1, v2
    e.flush()


def test_p8_views_read_on_two_streams_base_freed_early():
    e = Engine()
    p8(e, fixed=False)
    hz = e.hazards()
    assert [(h.kind, h.use_stream, h.use_site) for h in hz] == [
        ("unsynced-free", S, "p8.py:4"),
        ("unsynced-free", S2, "p8.py:5"),
    ]
    assert all(h.ptr == X and h.nbytes == N for h in hz)


def test_p8_fixed_by_recording_both_views():
    e = Engine()
    p8(e, fixed=True)
    assert e.hazards() == []


def test_unsynced_free_lists_streams_in_order_of_first_use():
    e = Engine()
    e.alloc(X, N, D, "o.py:1")
    e.access(X, N, S2, False, "o.py:2")
    e.access(X, N, S, False, "o.py:3")
    e.access(X, N, S2, False, "o.py:4")  # s2's latest use: its place stays first
    e.free(X, "o.py:5")
    e.flush()
    assert [(h.use_stream, h.use_site) for h in e.hazards() if h.kind == "unsynced-free"] == [
        (S2, "o.py:4"),
        (S, "o.py:3"),
    ]


def test_only_latest_use_per_stream_counts_at_free():
    e = Engine()
    e.alloc(X, N, D, "u.py:1")
    e.access(X, N, S, False, "u.py:2")
    e.event_record(3, S)
    e.access(X, N, S, True, "u.py:3")
    e.event_wait(3, D)  # covers the first use only
    e.free(X, "u.py:4")
    e.flush()
    fields(only(e, "unsynced-free"), use_site="u.py:3")


def test_p9_read_on_side_stream_of_data_written_on_d_without_wait():
    e = Engine()
    e.alloc(X, N, D, "p9.py:1")  # a = rand(N)
    e.access(X, N, D, True, "p9.py:1")
    e.access(X, N, S, False, "p9.py:3")  # with stream(s): b = a * 5
    h = only(e, "unsynced-access")
    fields(
        h,
        severity="error",
        ptr=X,
        nbytes=N,
        alloc_stream=D,
        alloc_site="p9.py:1",
        use_stream=S,
        use_site="p9.py:3",
        other_stream=D,
        other_site="p9.py:1",
        free_site=None,
        live=None,
    )


@pytest.mark.parametrize(
    "order",
    [
        lambda e: e.stream_wait(S, D),
        lambda e: (e.event_record(4, D), e.event_wait(4, S)),
        lambda e: e.stream_synchronize(D),
        lambda e: e.device_synchronize(),
    ],
)
def test_p9_fixed_by_ordering(order):
    e = Engine()
    e.alloc(X, N, D, "p9.py:1")
    e.access(X, N, D, True, "p9.py:1")
    order(e)
    e.access(X, N, S, False, "p9.py:3")
    assert e.hazards() == []


def test_write_after_unordered_read_is_unsynced_access():
    e = Engine()
    e.alloc(X, N, D, "w.py:1")
    e.access(X, N, S, False, "w.py:2")  # no write before: a read alone is no race
    assert e.hazards() == []
    e.access(X, N, D, True, "w.py:3")
    fields(only(e, "unsynced-access"), use_stream=D, use_site="w.py:3", other_stream=S)
    fields(only(e, "unsynced-access"), other_site="w.py:2")


def test_reads_on_two_streams_do_not_race():
    e = Engine()
    e.alloc(X, N, D, "r.py:1")
    e.access(X, N, S, False, "r.py:2")
    e.access(X, N, S2, False, "r.py:3")
    assert e.hazards() == []


def test_streams_writing_disjoint_slices_of_one_buffer_do_not_race():
    e = Engine()
    e.alloc(X, N, D, "d.py:1")
    e.access(X, N // 2, S, True, "d.py:2")
    e.access(X + N // 2, N // 2, S2, True, "d.py:3")
    e.access(X + 10, 10, S, False, "d.py:4")
    e.access(X + N - 10, 10, S2, False, "d.py:5")
    assert e.hazards() == []
    e.access(X + N // 2 - 1, 2, D, False, "d.py:6")  # straddles both halves: two races
    hz = e.hazards()
    assert sorted(h.other_stream for h in hz) == [S, S2]
    assert all(h.kind == "unsynced-access" and h.use_stream == D for h in hz)


def test_one_access_over_many_split_ranges_reports_each_conflict_once():
    e = Engine()
    e.alloc(X, N, D, None)
    e.access(X, N, S, True, None)  # one write on s over everything
    for i in range(8):  # splits the shadow state into many ranges, all reads on D
        e.stream_wait(D, S)
        e.access(X + i * 512, 256, D, False, None)
    e.access(X, N, S2, True, None)  # conflicts with S's write and D's eight reads
    hz = [h for h in e.hazards() if h.use_stream == S2]
    assert sorted(h.other_stream for h in hz) == [D, S]
    assert sum(h.count for h in hz) == 9


def test_p10_accumulator_recorded_waited_and_synced_before_item():
    e = Engine()
    e.alloc(X, 4, D, "acc.py:1")  # acc = zeros(1)
    e.access(X, 4, D, True, "acc.py:1")
    e.record_stream(X, S, "acc.py:2")
    e.stream_wait(S, D)
    e.access(X, 4, S, True, "acc.py:4")  # acc.add_(v)
    e.stream_synchronize(S)
    e.access(X, 4, D, False, "acc.py:5")  # acc.item(): a read on the current stream
    e.stream_synchronize(D)
    e.free(X, "acc.py:6")
    e.flush()
    assert e.error_count() == 0
    # the sync made the record unnecessary: advice, never an error
    fields(only(e, "redundant-record-stream"), use_site="acc.py:2", free_site="acc.py:6")


# ------------------------------------------------------------- P11, P12


def test_p11_device_to_host_copy_read_before_sync():
    e = Engine()
    e.alloc(Y, N, D, "h.py:1")
    e.access(Y, N, D, True, "h.py:1")
    e.access(Y, N, D, False, "h.py:2")  # y_cpu = y.to("cpu", non_blocking=True)
    e.copy_to_host(H, N, D, "h.py:2")
    e.host_access(H, N, False, "h.py:3")  # y_cpu.tolist()
    h = only(e, "host-read-before-copy")
    fields(h, severity="error", use_stream=D, use_site="h.py:2", other_site="h.py:3")
    fields(h, alloc_stream=None, alloc_site=None, free_site=None, other_ptr=None)
    assert (h.ptr, h.nbytes) == (H, N)


@pytest.mark.parametrize(
    "wait",
    [
        lambda e: (e.event_record(5, D), e.event_synchronize(5)),
        lambda e: e.stream_synchronize(D),
        lambda e: e.device_synchronize(),
        lambda e: (e.event_record(5, D), e.event_query(5, True)),
    ],
)
def test_p11_fixed_by_waiting_for_the_copy(wait):
    e = Engine()
    e.copy_to_host(H, N, D, "h.py:2")
    wait(e)
    e.host_access(H, N, False, "h.py:3")
    assert e.hazards() == []


def test_p11_event_recorded_before_the_copy_does_not_cover_it():
    e = Engine()
    e.event_record(5, D)
    e.copy_to_host(H, N, D, "h.py:2")
    e.event_synchronize(5)
    e.host_access(H + 8, 8, False, "h.py:3")  # part of the copied range
    assert kinds(e) == ["host-read-before-copy"]


def test_host_write_over_device_to_host_copy_and_read_elsewhere_are_not_reported():
    e = Engine()
    e.copy_to_host(H, N, D, "h.py:2")
    e.host_access(H, N, True, "h.py:3")  # a host write over a device-to-host copy
    e.host_access(H + N, 16, False, "h.py:3")  # beside the copy
    e.copy_from_host(H + 2 * N, N, D, "h.py:4")
    e.host_access(H + 2 * N, N, False, "h.py:5")  # reading a pinned source is fine
    assert e.hazards() == []


def test_p12_pinned_source_written_while_copy_in_flight():
    e = Engine()
    e.copy_from_host(H, N, D, "pin.py:2")  # b = a.to("cuda", non_blocking=True)
    e.host_access(H, N, True, "pin.py:3")  # a.fill_(-1)
    h = only(e, "host-write-during-copy")
    fields(h, severity="error", use_stream=D, use_site="pin.py:2", other_site="pin.py:3")
    assert (h.ptr, h.nbytes) == (H, N)


def test_p12_fixed_by_releasing_the_pinned_block():
    e = Engine()
    e.copy_from_host(H, N, D, "pin.py:2")
    e.host_release(H, N)  # del a
    e.host_access(H, N, True, "pin.py:4")  # a new pinned block at the same address
    assert e.hazards() == []


# --------------------------------------------------------------- liveness


def test_virtual_stream_use_is_live():
    e = Engine()
    e.define_stream(S, "side", virtual=True)
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    assert [h.live for h in e.hazards()] == [True, True]


def test_non_virtual_stream_use_has_unknown_liveness():
    e = Engine()
    e.define_stream(S, "side", virtual=False)
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.flush()
    assert only(e, "unsynced-free").live is None


def test_stream_query_false_makes_the_latest_work_live():
    e = Engine()
    p1_prefix(e)
    e.stream_query(S, False)
    e.free(X, "ex.py:4")
    e.flush()
    assert only(e, "unsynced-free").live is True


def test_stream_query_false_before_the_use_says_nothing_about_it():
    e = Engine()
    e.alloc(X, N, D, "ex.py:1")
    e.stream_query(S, False)
    e.access(X, N, S, False, "ex.py:3")
    e.free(X, "ex.py:4")
    e.flush()
    assert only(e, "unsynced-free").live is None


def test_event_query_false_window_covers_work_since_the_record():
    e = Engine()
    e.alloc(X, N, D, "q.py:1")
    e.alloc(Y, N, D, "q.py:2")
    e.access(X, N, S, False, "q.py:3")  # position 1 on s: before the event
    e.event_record(9, S)
    e.access(Y, N, S, False, "q.py:4")  # position 2 on s: after it
    e.event_query(9, False)
    e.free(X, "q.py:5")
    e.free(Y, "q.py:6")
    e.flush()  # pending frees are judged in the order they were freed
    assert [(h.use_site, h.live) for h in e.hazards()] == [("q.py:3", True), ("q.py:4", True)]


def test_event_query_false_window_starts_at_the_recorded_position():
    e = Engine()
    e.alloc(X, N, D, "q.py:1")
    e.alloc(Y, N, D, "q.py:2")
    e.access(X, N, S, False, "q.py:3")  # position 1
    e.access(Y, N, S, False, "q.py:4")  # position 2
    e.event_record(9, S)
    e.event_query(9, False)  # window (2, 2)
    e.free(X, "q.py:5")
    e.free(Y, "q.py:6")
    e.flush()
    assert [(h.use_site, h.live) for h in e.hazards()] == [("q.py:3", None), ("q.py:4", True)]


def test_host_hazard_on_virtual_stream_is_live():
    e = Engine()
    e.define_stream(S, None, virtual=True)
    e.copy_to_host(H, N, S, "h.py:2")
    e.host_access(H, N, False, "h.py:3")
    assert only(e, "host-read-before-copy").live is True


def test_unsynced_access_liveness_is_the_earlier_access():
    e = Engine()
    e.define_stream(S, "side", virtual=True)
    e.alloc(X, N, D, "l.py:1")
    e.access(X, N, S, True, "l.py:2")  # earlier access on the virtual stream
    e.access(X, N, D, False, "l.py:3")
    assert only(e, "unsynced-access").live is True
    e2 = Engine()
    e2.define_stream(S, "side", virtual=True)
    e2.alloc(X, N, D, "l.py:1")
    e2.access(X, N, D, True, "l.py:2")  # earlier access on D, not virtual
    e2.access(X, N, S, False, "l.py:3")
    assert only(e2, "unsynced-access").live is None


# ----------------------------------------------- reuse-race edge, dedup, reads


def test_no_reuse_race_when_new_allocation_stream_waited_on_the_use():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.stream_wait(S2, S)
    e.alloc(X, N, S2, "ex.py:5")  # on another stream: not the verdict of X's free
    assert kinds(e) == []
    e.flush()
    fields(only(e, "unsynced-free"), other_stream=None, other_site=None, other_ptr=None)
    assert kinds(e) == ["unsynced-free"]


def test_no_reuse_race_after_host_synced_the_use():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(Y, N, D, "ex.py:6")  # the verdict: unsynced-free
    e.stream_synchronize(S)
    e.alloc(X, N, D, "ex.py:5")  # the use is known complete now: no corruption
    assert kinds(e) == ["unsynced-free"]


def test_repeated_hazard_with_same_sites_is_counted_not_duplicated():
    e = Engine()
    for _ in range(5):
        p1_prefix(e)  # its allocation judges the previous round's free
        e.free(X, "ex.py:4")
    e.flush()  # the last round's: other_site None, still the same report
    assert [(h.kind, h.count) for h in e.hazards()] == [("unsynced-free", 5), ("reuse-race", 4)]
    assert e.hazard_count() == 2 and e.stats()["hazards"] == 2


def test_dedup_keeps_first_occurrence_details():
    e = Engine()
    e.alloc(X, N, D, "k.py:1")
    e.access(X, N, S, False, "k.py:2")
    e.free(X, "k.py:3")
    e.alloc(Y, 2 * N, D, "k.py:1")  # same sites, other storage
    e.access(Y, 2 * N, S, False, "k.py:2")
    e.free(Y, "k.py:3")
    e.flush()
    h = only(e, "unsynced-free")
    assert (h.count, h.ptr, h.nbytes) == (2, X, N)


def test_dedup_keeps_first_details_but_live_if_any_repeat_was_live():
    # ENGINE-API.md: the first occurrence's details are kept, except `live`, which becomes
    # True once any repeat was proven in flight.
    e = Engine()
    e.define_stream(S, "side", virtual=True)
    e.alloc(X, 8, D)
    e.access(X, 8, S2, False, "a.py:1")  # S2 is not virtual: live unknown
    e.free(X)
    e.flush()
    h = only(e, "unsynced-free")
    assert h.live is None
    e.alloc(Y, 8, D)
    e.access(Y, 8, S, False, "a.py:1")  # same sites, on the virtual stream
    e.free(Y)
    e.flush()
    h = only(e, "unsynced-free")
    assert (h.count, h.ptr, h.use_stream) == (2, X, S2)
    assert h.live is True, h.to_dict()


def test_dedup_within_one_access_is_live_when_either_conflict_is():
    e = Engine()
    e.alloc(X, 8, D)
    e.access(X, 8, D, False, "a.py:1")  # read on D
    e.access(X, 8, S, False, "a.py:1")  # read on s, same site
    e.stream_query(S, False)  # s's read is in flight; D's is unknown
    e.access(X, 8, S2, True)  # races with both reads: one key, so one hazard, count 2
    h = only(e, "unsynced-access")
    assert h.count == 2
    assert h.live is True, h.to_dict()


def test_site_less_hazards_are_merged_only_for_same_pointer_and_streams():
    e = Engine()
    for ptr in (X, Y, X):
        e.alloc(ptr, N, D)
        e.access(ptr, N, S, False)
        e.free(ptr)
    e.alloc(Z, N, D)
    e.access(Z, N, S2, False)
    e.free(Z)
    e.flush()
    frees = [h for h in e.hazards() if h.kind == "unsynced-free"]
    assert [(h.ptr, h.use_stream, h.count) for h in frees] == [(X, S, 2), (Y, S, 1), (Z, S2, 1)]


def test_different_use_site_is_a_different_hazard():
    e = Engine()
    for site in ("a.py:1", "a.py:2"):
        e.alloc(X, N, D, "a.py:0")
        e.access(X, N, S, False, site)
        e.free(X, "a.py:9")
    e.flush()
    frees = [h for h in e.hazards() if h.kind == "unsynced-free"]
    assert [(h.use_site, h.count) for h in frees] == [("a.py:1", 1), ("a.py:2", 1)]


def test_hazards_since_returns_the_tail_in_order():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    e.access(X, N, D, True, "ex.py:5")
    e.access(X, N, S, False, "ex.py:6")  # s waited on D's first write, not this one
    all_hz = [h.to_dict() for h in e.hazards()]
    assert [h["kind"] for h in all_hz] == ["unsynced-free", "reuse-race", "unsynced-access"]
    assert [h.to_dict() for h in e.hazards(1)] == all_hz[1:]
    assert e.hazards(since=3) == []
    assert [h.kind for h in e.hazards(2)] == ["unsynced-access"]


def test_interned_site_is_reported_as_its_string():
    e = Engine()
    a, b, c = (e.intern(s) for s in ("i.py:1", "i.py:2", "i.py:3"))
    assert all(isinstance(i, int) for i in (a, b, c))
    assert e.intern("i.py:1") == a
    e.alloc(X, N, D, a)
    e.access(X, N, S, False, b)
    e.free(X, c)
    e.flush()
    fields(only(e, "unsynced-free"), alloc_site="i.py:1", use_site="i.py:2", free_site="i.py:3")


def test_hazard_is_immutable_and_to_dict_has_every_field():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.flush()
    h = e.hazards()[0]
    with pytest.raises((AttributeError, TypeError)):
        h.count = 99
    d = h.to_dict()
    for name in HAZARD_FIELDS:
        assert d[name] == getattr(h, name)
    assert isinstance(h.message, str)


def test_message_names_streams_sites_and_storage():
    e = Engine()
    e.define_stream(S, "side")
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    free, reuse = e.hazards()
    assert re.search(r"unsynced[- ]free", free.message), free.message
    assert re.search(r"reuse[- ]race", reuse.message), reuse.message
    for text in ("ex.py:1", "ex.py:3", "ex.py:4", "ex.py:5", "side"):
        assert text in free.message, (text, free.message)
    for text in ("ex.py:1", "ex.py:3", "ex.py:4", "ex.py:5", "side"):
        assert text in reuse.message, (text, reuse.message)
    assert hex(X) in free.message.lower() or str(X) in free.message


def test_message_names_unnamed_streams_by_handle():
    e = Engine()
    e.alloc(X, N, 71, "m.py:1")
    e.access(X, N, 71, True, "m.py:1")
    e.access(X, N, 89, False, "m.py:2")
    msg = only(e, "unsynced-access").message
    for handle in (71, 89):  # decimal or hex: the docs do not fix the format
        assert re.search(rf"\b({handle}|{handle:#x})\b", msg), msg
    assert "m.py:1" in msg and "m.py:2" in msg, msg


def test_exotic_handles_round_trip():
    big, neg = (1 << 64) - 5, -7
    e = Engine()
    e.alloc(X, N, big, "x.py:1")
    e.access(X, N, neg, False, "x.py:2")
    e.free(X, "x.py:3")
    e.alloc(Z, N, big, "x.py:4")  # the verdict, named by the allocation on `big`
    fields(only(e, "unsynced-free"), alloc_stream=big, use_stream=neg, other_stream=big)
    assert e.storage_at(X) is None
    e.alloc(Y, N, neg)
    assert e.storage_at(Y + 1) == (Y, N, neg)


def test_events_and_streams_are_separate_name_spaces():
    e = Engine()
    e.alloc(X, N, D, "n.py:1")
    e.access(X, N, S, False, "n.py:2")
    e.event_record(S, D)  # event number 1 recorded on D: says nothing about stream 1
    e.event_wait(S, D)
    e.free(X, "n.py:3")
    e.flush()
    assert kinds(e) == ["unsynced-free"]
    assert (e.stats()["streams"], e.stats()["events"]) == (2, 1)


# ---------------------------------------------------------- never-recorded event


def test_waiting_on_never_recorded_event_is_a_no_op():
    e = Engine()
    e.alloc(X, N, D, "p9.py:1")
    e.access(X, N, D, True, "p9.py:1")
    e.event_wait(99, S)
    e.event_synchronize(99)
    e.event_query(99, True)
    e.event_query(99, False)
    e.access(X, N, S, False, "p9.py:3")
    h = only(e, "unsynced-access")
    assert h.live is None
    e.free(X, "p9.py:4")
    e.flush()
    assert e.error_count() == 2


# ------------------------------------- deferred frees: the verdict at the next alloc


def test_deferred_free_is_judged_at_the_next_alloc_on_the_allocation_stream():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    assert e.hazards() == [] and e.stats()["pending_frees"] == 1
    e.alloc(Y, 2 * N, D, "ex.py:6")  # any size, any address on D: the block may go there
    h = only(e, "unsynced-free")
    fields(
        h,
        severity="error",
        count=1,
        ptr=X,
        nbytes=N,
        alloc_stream=D,
        alloc_site="ex.py:1",
        use_stream=S,
        use_site="ex.py:3",
        free_site="ex.py:4",
        other_stream=D,
        other_site="ex.py:6",
        other_ptr=Y,
        other_nbytes=2 * N,
        live=None,
    )
    assert kinds(e) == ["unsynced-free"]  # Y does not overlap X: no reuse-race
    assert e.stats()["pending_frees"] == 0
    e.flush()  # judged once only
    assert kinds(e) == ["unsynced-free"] and h.count == 1


COVERS_AFTER_THE_FREE = {
    "D.wait_stream(s)": lambda e: e.stream_wait(D, S),
    "s.synchronize()": lambda e: e.stream_synchronize(S),
    "device synchronize": lambda e: e.device_synchronize(),
    "event on s waited by D": lambda e: (e.event_record(7, S), e.event_wait(7, D)),
    "event on s synchronized": lambda e: (e.event_record(7, S), e.event_synchronize(7)),
    "s.query() True": lambda e: e.stream_query(S, True),
    "through a third stream": lambda e: (e.stream_wait(S2, S), e.stream_wait(D, S2)),
}


@pytest.mark.parametrize("cover", list(COVERS_AFTER_THE_FREE))
def test_deferred_free_covered_before_the_next_alloc_is_clean(cover):
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    COVERS_AFTER_THE_FREE[cover](e)
    e.alloc(X, N, D, "ex.py:5")  # over the freed bytes: no unsynced-free, no reuse-race
    e.flush()
    assert e.hazards() == []
    assert e.stats()["pending_frees"] == 0


@pytest.mark.parametrize(
    "not_a_cover",
    [
        lambda e: e.stream_wait(S, D),  # the wrong way round
        lambda e: e.stream_wait(S2, S),  # another stream waited, not the allocation stream
        lambda e: e.stream_synchronize(D),  # the host waited for D, not for s
        lambda e: e.stream_query(S, False),  # s is still busy
    ],
)
def test_deferred_free_not_covered_by_the_wrong_ordering(not_a_cover):
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    not_a_cover(e)
    e.alloc(Y, N, D, "ex.py:6")
    fields(only(e, "unsynced-free"), use_stream=S, other_site="ex.py:6", other_ptr=Y)


def test_cover_after_the_verdict_does_not_undo_it():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(Y, N, D, "ex.py:6")
    e.stream_wait(D, S)
    e.flush()
    assert [(h.kind, h.count) for h in e.hazards()] == [("unsynced-free", 1)]


def test_alloc_or_adopt_on_another_stream_does_not_judge_a_pending_free():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(Y, N, S2, "ex.py:6")  # S2's pool never holds X's block
    e.alloc(Z, N, S, "ex.py:7")  # nor does s's, the stream that used it
    e.adopt(Z + N, N, D, "ex.py:8")  # adopt takes no verdict, even on D
    assert e.hazards() == [] and e.stats()["pending_frees"] == 1
    e.stream_wait(D, S)  # still in time: the next allocation on D is after this
    e.alloc(X, N, D, "ex.py:5")
    e.flush()
    assert e.hazards() == []


def test_flush_judges_every_pending_free_in_free_order():
    e = Engine()
    e.alloc(X, N, D, "f.py:1")
    e.alloc(Y, N, S, "f.py:3")
    e.alloc(Z, N, D, "f.py:5")
    e.access(X, N, S, False, "f.py:2")
    e.access(Y, N, D, False, "f.py:4")
    e.access(Z, N, S2, False, "f.py:6")
    e.free(Y, "f.py:7")
    e.free(Z, "f.py:8")
    e.free(X, "f.py:9")
    assert e.hazards() == [] and e.stats()["pending_frees"] == 3
    e.flush()
    assert [(h.kind, h.ptr, h.use_site, h.free_site) for h in e.hazards()] == [
        ("unsynced-free", Y, "f.py:4", "f.py:7"),
        ("unsynced-free", Z, "f.py:6", "f.py:8"),
        ("unsynced-free", X, "f.py:2", "f.py:9"),
    ]
    for h in e.hazards():
        fields(h, other_stream=None, other_site=None, other_ptr=None, other_nbytes=None)
    assert e.stats()["pending_frees"] == 0
    e.flush()  # nothing left to judge
    assert e.hazard_count() == 3


def test_alloc_judges_only_the_pending_frees_of_its_stream_in_free_order():
    e = Engine()
    e.alloc(X, N, D, "g.py:1")
    e.alloc(Y, N, S, "g.py:3")
    e.alloc(Z, N, D, "g.py:5")
    e.access(X, N, S, False, "g.py:2")
    e.access(Y, N, D, False, "g.py:4")
    e.access(Z, N, S2, False, "g.py:6")
    e.free(Z, "g.py:7")
    e.free(Y, "g.py:8")
    e.free(X, "g.py:9")
    e.alloc(Z, N, D, "g.py:10")  # judges Z's and X's frees (allocated on D), not Y's
    assert [(h.kind, h.ptr, h.other_site) for h in e.hazards()] == [
        ("unsynced-free", Z, "g.py:10"),
        ("unsynced-free", X, "g.py:10"),
        ("reuse-race", Z, "g.py:10"),
    ]
    assert e.stats()["pending_frees"] == 1
    e.alloc(X, N, S, "g.py:11")  # judges Y's free; X's old bytes, but s is X's use stream
    assert [(h.kind, h.ptr, h.other_stream, h.other_site) for h in e.hazards()[3:]] == [
        ("unsynced-free", Y, S, "g.py:11"),
    ]


def test_recorded_use_is_judged_at_the_verdict_not_the_free():
    # record_stream alone: the free waits for its verdict; the record is needed then
    e = Engine()
    p1_prefix(e)
    e.record_stream(X, S, "ex.py:2")
    e.free(X, "ex.py:4")
    assert e.stats()["pending_frees"] == 1
    e.alloc(Y, N, D, "ex.py:6")
    e.flush()
    assert e.hazards() == []  # needed: no advice, and no error


def test_prefetcher_p13_producer_waits_on_consumer_before_the_next_batch():
    def run(fixed):
        e = Engine()
        slots = (X, Y)
        for i in range(4):
            batch = slots[i % 2]
            e.alloc(batch, N, S, "pf.py:2")  # with stream(s): nxt = batch.to(dev, non_blocking)
            e.access(batch, N, S, True, "pf.py:2")
            e.stream_wait(D, S)  # D.wait_stream(s)
            if i:
                e.free(slots[(i - 1) % 2], "pf.py:3")  # cur = nxt: the previous batch freed
            if fixed:
                e.stream_wait(S, D)  # s.wait_stream(D)
            e.access(batch, N, D, False, "pf.py:5")  # out = model(cur)
        e.stream_synchronize(D)  # loss.item() at the end of the epoch
        e.free(slots[3 % 2], "pf.py:3")
        e.flush()
        return e

    assert run(fixed=True).hazards() == []
    e = run(fixed=False)
    assert [(h.kind, h.count) for h in e.hazards()] == [("unsynced-free", 2), ("reuse-race", 2)]
    free, reuse = e.hazards()
    fields(
        free,
        ptr=X,
        nbytes=N,
        alloc_stream=S,
        alloc_site="pf.py:2",
        use_stream=D,
        use_site="pf.py:5",
        free_site="pf.py:3",
        other_stream=S,
        other_site="pf.py:2",
        other_ptr=X,
        other_nbytes=N,
    )
    fields(reuse, ptr=X, use_stream=D, use_site="pf.py:5", other_stream=S, other_ptr=X)


# ---------------------------------------------------------- unwaited-allocation


def p14_prefix(e):
    """tmp = randn(N) on D; r = tmp.sum(); del tmp; A = empty(N) on D."""
    e.alloc(Y, N, D, "p14.py:1")
    e.access(Y, N, D, True, "p14.py:1")
    e.access(Y, N, D, False, "p14.py:1")
    e.free(Y, "p14.py:1")  # only D used it: judged at once, safe
    e.alloc(Y, N, D, "p14.py:2")  # may be tmp's block, with D's work still pending on it


def test_p14_fresh_buffer_used_on_side_stream_without_wait_is_unwaited_allocation():
    e = Engine()
    p14_prefix(e)
    e.access(Y, N, S, True, "p14.py:4")  # with stream(s): A.normal_()
    h = only(e, "unwaited-allocation")
    fields(
        h,
        severity="error",
        count=1,
        ptr=Y,
        nbytes=N,
        alloc_stream=D,
        alloc_site="p14.py:2",
        use_stream=S,
        use_site="p14.py:4",
        free_site=None,
        other_stream=None,
        other_site=None,
        other_ptr=None,
        other_nbytes=None,
        live=None,
    )
    assert kinds(e) == ["unwaited-allocation"]
    e.access(Y, N // 2, S, False, "p14.py:4")  # the same use again: counted
    assert only(e, "unwaited-allocation").count == 2


@pytest.mark.parametrize(
    "order",
    [
        lambda e: e.stream_wait(S, D),  # s.wait_stream(D) before the `with`
        lambda e: (e.event_record(4, D), e.event_wait(4, S)),
        lambda e: e.stream_synchronize(D),
        lambda e: e.device_synchronize(),
        lambda e: (e.stream_wait(S2, D), e.stream_wait(S, S2)),
    ],
)
def test_p14_fixed_by_ordering_the_side_stream_after_the_allocation(order):
    e = Engine()
    p14_prefix(e)
    order(e)
    e.access(Y, N, S, True, "p14.py:4")
    e.flush()
    assert e.hazards() == []


def test_unwaited_allocation_needs_pending_work_on_the_allocation_stream():
    e = Engine()
    e.alloc(X, N, D, "u.py:1")  # D has no work yet: nothing the block could still be in
    e.access(X, N, S, True, "u.py:2")
    assert e.hazards() == []
    e.access(X, N, D, False, "u.py:3")  # work on D comes after the allocation: not it
    assert kinds(e) == ["unsynced-access"]  # D's read after s's unordered write


def test_unwaited_allocation_wait_before_the_allocation_is_not_enough():
    e = Engine()
    e.alloc(Z, N, D, "u.py:0")
    e.access(Z, N, D, True, "u.py:0")  # D position 1
    e.stream_wait(S, D)  # s is after D's position 1
    e.access(Z, N, D, False, "u.py:0")  # D position 2
    e.alloc(X, N, D, "u.py:1")  # allocated at D's position 2
    e.access(X, N, S, False, "u.py:2")
    fields(only(e, "unwaited-allocation"), ptr=X, alloc_site="u.py:1", use_site="u.py:2")


def test_unwaited_allocation_gives_way_to_the_race_with_the_fill():
    e = Engine()
    p14_prefix(e)
    e.access(Y, N, D, True, "p14.py:3")  # A.fill_(1) on D
    e.access(Y, N, S, False, "p14.py:4")  # read on s: races with the fill
    h = only(e, "unsynced-access")
    fields(h, use_stream=S, use_site="p14.py:4", other_stream=D, other_site="p14.py:3")
    assert kinds(e) == ["unsynced-access"]


def test_unwaited_allocation_is_live_on_a_virtual_allocation_stream():
    e = Engine()
    e.define_stream(D, "main", virtual=True)
    p14_prefix(e)
    e.access(Y, N, S, True, "p14.py:4")
    assert only(e, "unwaited-allocation").live is True


# ------------------------------------------------------------------------ adopt


def test_adopted_storage_is_never_judged_by_unwaited_allocation():
    e = Engine()
    e.alloc(Y, N, D, "a.py:1")
    e.access(Y, N, D, True, "a.py:1")  # D has pending work
    e.adopt(X, N, D, "a.py:2")  # a tensor made before tracking began
    e.access(X, N, S, True, "a.py:3")  # used on s with no wait
    assert e.hazards() == []
    assert e.storage_at(X + 5) == (X, N, D)
    e.alloc(Z, N, D, "a.py:4")  # the same on an allocation the tracker saw
    e.access(Z, N, S, True, "a.py:5")
    assert kinds(e) == ["unwaited-allocation"]


def test_adopt_takes_no_verdicts_and_forgets_overlapping_freed_bytes():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    assert e.stats()["freed_tracked"] == 1
    e.adopt(X, N, D, "ex.py:5")  # on D, over X's freed bytes
    assert e.hazards() == []
    assert e.stats()["pending_frees"] == 1  # not judged by adopt
    assert e.stats()["freed_tracked"] == 0  # the bytes belong to the adopted storage now
    e.free(X, "ex.py:6")
    e.alloc(X, N, D, "ex.py:7")  # judges the first free: no reuse-race for the forgotten
    assert kinds(e) == ["unsynced-free"]
    fields(only(e, "unsynced-free"), free_site="ex.py:4", other_site="ex.py:7")


def test_adopted_storage_is_checked_like_any_other():
    e = Engine()
    e.adopt(X, N, D, "a.py:1")
    e.access(X, N, D, True, "a.py:2")
    e.access(X, N, S, False, "a.py:3")  # unordered after D's write
    fields(only(e, "unsynced-access"), alloc_site="a.py:1", other_site="a.py:2")
    e.free(X, "a.py:4")
    e.flush()
    fields(only(e, "unsynced-free"), alloc_site="a.py:1", use_site="a.py:3", free_site="a.py:4")


# ------------------------------------------- copy against copy on pinned host memory


def test_p15_pinned_buffer_refilled_while_another_stream_copies_out_of_it():
    e = Engine()
    d2h, h2d = S, S2
    e.copy_to_host(H, N, d2h, "off.py:2")  # with stream(d2h): buf.copy_(act, non_blocking)
    e.stream_wait(h2d, d2h)
    e.copy_from_host(H, N, h2d, "off.py:3")  # with stream(h2d): back = buf.to(dev, ...)
    assert e.hazards() == []
    e.copy_to_host(H, N, d2h, "off.py:4")  # the refill: no d2h.wait_stream(h2d)
    h = only(e, "unsynced-access")
    fields(
        h,
        severity="error",
        count=1,
        ptr=H,
        nbytes=N,
        alloc_stream=None,
        alloc_site=None,
        use_stream=d2h,
        use_site="off.py:4",
        other_stream=h2d,
        other_site="off.py:3",
        free_site=None,
        other_ptr=None,
        other_nbytes=None,
        live=None,
    )


@pytest.mark.parametrize(
    "order",
    [
        lambda e: e.stream_wait(S, S2),  # d2h.wait_stream(h2d)
        lambda e: (e.event_record(6, S2), e.event_wait(6, S)),
        lambda e: e.stream_synchronize(S2),
        lambda e: e.device_synchronize(),
    ],
)
def test_p15_fixed_by_ordering_the_refill_after_the_copy_out(order):
    e = Engine()
    e.copy_to_host(H, N, S, "off.py:2")
    e.stream_wait(S2, S)
    e.copy_from_host(H, N, S2, "off.py:3")
    order(e)
    e.copy_to_host(H, N, S, "off.py:4")
    assert e.hazards() == []


def test_copy_out_of_pinned_memory_before_the_copy_in_is_ordered_is_a_race():
    e = Engine()
    e.copy_to_host(H, N, S, "off.py:2")
    e.copy_from_host(H + 64, 64, S2, "off.py:3")  # no h2d.wait_stream(d2h): overlaps
    h = only(e, "unsynced-access")
    fields(h, ptr=H + 64, nbytes=64, use_stream=S2, other_stream=S, other_site="off.py:2")


def test_copies_that_only_read_host_memory_or_touch_other_bytes_do_not_race():
    e = Engine()
    e.copy_from_host(H, N, S, "c.py:1")
    e.copy_from_host(H, N, S2, "c.py:2")  # two reads of the pinned source
    e.copy_to_host(H + N, N, S, "c.py:3")
    e.copy_to_host(H + 2 * N, N, S2, "c.py:4")  # disjoint host bytes
    e.copy_to_host(H + 3 * N, N, S, "c.py:5")
    e.host_release(H + 3 * N, N)  # the pinned block was freed and is reused
    e.copy_from_host(H + 3 * N, N, S2, "c.py:6")
    assert e.hazards() == []


def test_p16_offload_and_reload_on_one_stream_is_clean():
    e = Engine()
    e.alloc(X, N, D, "p16.py:1")  # a = randn(N)
    e.access(X, N, D, True, "p16.py:1")
    e.stream_wait(S, D)
    e.access(X, N, S, False, "p16.py:3")  # with stream(s): h = a.to("cpu", non_blocking)
    e.copy_to_host(H, N, S, "p16.py:3")
    e.copy_from_host(H, N, S, "p16.py:4")  # b = h.to(dev, non_blocking=True)
    e.alloc(Y, N, S, "p16.py:4")
    e.access(Y, N, S, True, "p16.py:4")
    e.stream_synchronize(S)
    e.free(X, "p16.py:5")
    e.free(Y, "p16.py:5")
    e.flush()
    assert e.hazards() == []


# ---------------------------------------------------- per-site record_stream advice


def prefetch_with_record(e, covered_rounds, rounds=4):
    """Batches on s read on D, each recorded on D at one line; the rounds in
    `covered_rounds` synchronize before their free (the record was not needed there)."""
    for i in range(rounds):
        ptr = X + i * 0x1000
        e.alloc(ptr, N, S, "p18.py:1")
        e.access(ptr, N, S, True, "p18.py:1")
        e.stream_wait(D, S)
        e.access(ptr, N, D, False, "p18.py:2")
        e.record_stream(ptr, D, "p18.py:3")  # cur.record_stream(D)
        if i in covered_rounds:
            e.device_synchronize()
        e.free(ptr, "p18.py:4")


@pytest.mark.parametrize("redundant_round", [0, 3])
def test_p18_record_stream_needed_three_times_and_redundant_once_gets_no_advice(
    redundant_round,
):
    e = Engine()
    prefetch_with_record(e, {redundant_round})
    e.flush()
    assert e.hazards() == []


def test_record_stream_redundant_every_time_it_ran_is_advice_with_its_count():
    e = Engine()
    prefetch_with_record(e, {0, 1, 2, 3})
    assert e.hazards() == []  # advice waits for flush
    e.flush()
    adv = only(e, "redundant-record-stream")
    fields(
        adv,
        severity="advice",
        count=4,
        ptr=X,
        nbytes=N,
        alloc_stream=S,
        alloc_site="p18.py:1",
        use_stream=D,
        use_site="p18.py:3",
        free_site="p18.py:4",
        other_stream=None,
        other_site=None,
        live=None,
    )
    assert e.error_count() == 0 and e.hazard_count() == 1


def test_a_site_needed_once_is_never_advice_again():
    e = Engine()
    prefetch_with_record(e, set(), rounds=1)  # needed (judged at flush)
    e.flush()
    assert e.hazards() == []
    prefetch_with_record(e, {0, 1}, rounds=2)  # redundant twice, later
    e.flush()
    assert e.hazards() == []


def test_advice_found_in_one_flush_window_and_repeated_in_the_next_adds_up():
    e = Engine()
    prefetch_with_record(e, {0, 1}, rounds=2)
    e.flush()
    assert only(e, "redundant-record-stream").count == 2
    prefetch_with_record(e, {0}, rounds=1)
    assert only(e, "redundant-record-stream").count == 2  # not yet
    e.flush()
    assert only(e, "redundant-record-stream").count == 3


@pytest.mark.parametrize("site, advice", [("r.py:3", False), ("r.py:5", True)])
def test_record_stream_on_the_allocation_stream_at_a_needed_site_is_not_advice(site, advice):
    e = Engine()
    e.alloc(X, N, D, "r.py:1")
    e.access(X, N, S, False, "r.py:2")
    e.record_stream(X, S, "r.py:3")  # needed: s's read stays uncovered
    e.alloc(Y, N, D, "r.py:1")
    e.record_stream(Y, D, site)  # on the allocation stream: a candidate at `site`
    e.free(X, "r.py:4")
    e.flush()  # X's verdict finds r.py:3 needed, then the candidates are weighed
    if advice:
        fields(only(e, "redundant-record-stream"), ptr=Y, use_stream=D, use_site="r.py:5")
        fields(only(e, "redundant-record-stream"), free_site=None)
        assert e.hazard_count() == 1
    else:
        assert e.hazards() == []


def test_site_less_record_stream_calls_share_one_site():
    e = Engine()
    e.alloc(X, N, D)
    e.access(X, N, S, False)
    e.record_stream(X, S)  # needed
    e.alloc(Y, N, D)
    e.record_stream(Y, D)  # redundant, also site-less: the same "line"
    e.free(X)
    e.flush()
    assert e.hazards() == []


# ------------------------------------------------------- virtual-stream reuse


@pytest.mark.parametrize(
    "virtual, race",
    [
        ((), True),  # CUDA: the bytes went back to S's pool, D could not get them
        ((S,), False),  # the freed storage's stream is virtual: the CPU allocator did it
        ((D,), False),  # the new allocation's stream is virtual
        ((S2,), True),  # only the use stream is virtual: the reuse is checked
    ],
)
def test_cross_stream_reuse_is_not_a_reuse_race_on_virtual_streams(virtual, race):
    e = Engine()
    for v in virtual:
        e.define_stream(v, "virtual", virtual=True)
    e.alloc(X, N, S, "v.py:1")
    e.access(X, N, S, True, "v.py:1")
    e.stream_wait(S2, S)
    e.access(X, N, S2, False, "v.py:2")
    e.free(X, "v.py:3")
    e.alloc(X, N, D, "v.py:4")  # on another stream than X's allocation stream
    if race:
        h = only(e, "reuse-race")
        fields(h, alloc_stream=S, use_stream=S2, other_stream=D, other_site="v.py:4")
        assert h.live is (True if S2 in virtual else None)
    else:
        assert e.hazards() == []
    e.flush()  # X's free is judged here (no allocation on s came): unsynced-free
    assert sorted(kinds(e)) == (["reuse-race", "unsynced-free"] if race else ["unsynced-free"])


def test_same_stream_reuse_on_a_virtual_stream_is_still_a_reuse_race():
    e = Engine()
    e.define_stream(S, "side", virtual=True)
    e.alloc(X, N, S, "v.py:1")
    e.access(X, N, S, True, "v.py:1")
    e.stream_wait(D, S)
    e.access(X, N, D, False, "v.py:2")
    e.free(X, "v.py:3")
    e.alloc(X, N, S, "v.py:4")
    assert kinds(e) == ["unsynced-free", "reuse-race"]
    fields(only(e, "reuse-race"), use_stream=D, other_stream=S, other_site="v.py:4")
    fields(only(e, "unsynced-free"), other_stream=S, other_site="v.py:4", other_ptr=X)


# ----------------------------------------------------------- dedup of unsynced-free


def test_unsynced_free_dedup_leaves_out_the_allocation_that_judged_it():
    e = Engine()
    for i in range(4):
        e.alloc(X, N, D, "d.py:1")
        e.access(X, N, S, False, "d.py:2")
        e.free(X, "d.py:3")
        if i < 3:
            e.alloc(Z + i * N, N, D, f"d.py:{10 + i}")  # judged by another line each time
    e.flush()  # and the last round by flush
    h = only(e, "unsynced-free")
    fields(h, count=4, other_site="d.py:10", other_ptr=Z)  # the first occurrence's details


def test_site_less_unsynced_free_dedup_keys_on_pointer_and_use_stream():
    e = Engine()
    for other in (Y, Z):  # judged by different allocations, the same site-less mistake
        e.alloc(X, N, D)
        e.access(X, N, S, False)
        e.free(X)
        e.alloc(other, N, D)
        e.free(other)
    e.alloc(X, N, D)
    e.access(X, N, S, False)
    e.free(X)
    e.flush()  # and once by flush
    frees = [h for h in e.hazards() if h.kind == "unsynced-free"]
    assert [(h.ptr, h.use_stream, h.count) for h in frees] == [(X, S, 3)]


# ------------------------------------------- Hazard objects, KINDS, bulk adopt/flush


def test_hazards_pickle_compare_and_hash():
    e = Engine()
    e.define_stream(S, "side", virtual=True)
    p1_prefix(e)
    e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    free, reuse = e.hazards()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(free, protocol))
        assert type(back) is Hazard
        assert back == free and not (back != free)
        assert hash(back) == hash(free)
        assert back.to_dict() == free.to_dict()
        assert back.message == free.message and back.live is True
    e.copy_to_host(H, N, S2, "h.py:2")
    e.host_access(H, N, False, "h.py:3")
    host = only(e, "host-read-before-copy")  # None in the storage fields
    assert pickle.loads(pickle.dumps(host)).to_dict() == host.to_dict()
    assert pickle.loads(pickle.dumps(host)) == host
    assert free != reuse
    assert e.hazards()[0] == free  # a fresh object for the same hazard
    assert len({free, reuse, pickle.loads(pickle.dumps(free)), e.hazards()[1]}) == 2
    assert free != free.to_dict()


def test_kinds_table_lists_every_kind():
    kinds_table = el._core.KINDS
    assert isinstance(kinds_table, tuple)
    by_name = {}
    for k in kinds_table:
        assert isinstance(k, dict)
        assert {"name", "severity", "title", "hint", "roles"} <= set(k)
        assert isinstance(k["title"], str) and k["title"]
        assert isinstance(k["hint"], str) and k["hint"]
        assert isinstance(k["roles"], tuple) and k["roles"]
        for role in k["roles"]:
            label, site_field, name_field = role
            assert isinstance(label, str) and label
            assert site_field in ("alloc_site", "use_site", "free_site", "other_site")
            assert name_field in (None, "alloc_stream_name", "use_stream_name", "other_stream_name")
        by_name[k["name"]] = k
    assert len(by_name) == len(kinds_table)
    assert set(by_name) == {
        "unsynced-free",
        "reuse-race",
        "unwaited-allocation",
        "unsynced-access",
        "host-read-before-copy",
        "host-write-during-copy",
        "redundant-record-stream",
    }
    assert {n for n, k in by_name.items() if k["severity"] == "advice"} == {
        "redundant-record-stream"
    }
    assert all(k["severity"] in ("error", "advice") for k in kinds_table)
    assert by_name["unwaited-allocation"]["severity"] == "error"
    sites = {site for _, site, _ in by_name["unwaited-allocation"]["roles"]}
    assert {"alloc_site", "use_site"} <= sites
    # errors come first (report order)
    sev = [k["severity"] for k in kinds_table]
    assert sev == sorted(sev, key=lambda s: s != "error")


def test_replay_adopt_and_flush_rows():
    rows = np.array(
        [
            [ops.ALLOC, X, N, D],
            [ops.WRITE, X, N, D],
            [ops.STREAM_WAIT, S, D, 0],
            [ops.READ, X, N, S],
            [ops.FREE, X, 0, 0],  # pending
            [ops.ADOPT, X, N, D],  # over X's bytes on D: no verdict, no reuse check
            [ops.READ, X, N, S2],  # adopted after D's work: no unwaited-allocation
            [ops.FLUSH, 0, 0, 0],
        ],
        dtype=np.int64,
    )
    assert (ops.ADOPT, ops.FLUSH) == (11, 12)
    e = Engine()
    assert e.replay(np.ascontiguousarray(rows[:7])) == 7
    assert e.hazards() == []
    assert e.stats()["pending_frees"] == 1 and e.storage_at(X) == (X, N, D)
    assert e.replay(np.ascontiguousarray(rows[7:])) == 1
    fields(only(e, "unsynced-free"), use_stream=S, other_stream=None, other_ptr=None)
    assert kinds(e) == ["unsynced-free"]
    single = Engine()
    apply_rows(single, rows.tolist())
    assert [h.to_dict() for h in single.hazards()] == [h.to_dict() for h in e.hazards()]


# --------------------------------------------------------------- results API


def test_storage_at_and_stats():
    e = Engine()
    assert e.storage_at(X) is None
    e.alloc(X, N, S, None)
    assert e.storage_at(X) == (X, N, S)
    assert e.storage_at(X + N - 1) == (X, N, S)
    assert e.storage_at(X + N) is None
    assert e.storage_at(X - 1) is None
    stats = e.stats()
    assert STATS_KEYS <= set(stats)
    assert stats["live_storages"] == 1
    e.free(X)
    assert e.stats()["live_storages"] == 0


def test_stats_count_streams_events_and_freed_ranges():
    e = Engine()
    p1_prefix(e)
    e.event_record(3, S)
    e.event_wait(4, D)
    e.free(X, "ex.py:4")
    stats = e.stats()
    assert stats["streams"] == 2
    assert stats["events"] == 2
    assert stats["freed_tracked"] == 1
    assert stats["pending_frees"] == 1
    assert stats["hazards"] == 0
    e.alloc(X, N, D)
    stats = e.stats()
    assert (stats["freed_tracked"], stats["pending_frees"], stats["hazards"]) == (0, 0, 2)


def test_ops_codes():
    names = [
        "ALLOC",
        "READ",
        "WRITE",
        "FREE",
        "RECORD_STREAM",
        "EVENT_RECORD",
        "EVENT_WAIT",
        "STREAM_WAIT",
        "STREAM_SYNC",
        "EVENT_SYNC",
        "DEVICE_SYNC",
        "ADOPT",
        "FLUSH",
    ]
    assert [getattr(ops, n) for n in names] == list(range(13))


# ------------------------------------------------------------------ bad input


def test_error_classes_derive_from_lifetimes_error():
    assert issubclass(InvalidArgumentError, LifetimesError)
    assert issubclass(UnknownStorageError, LifetimesError)
    assert issubclass(LifetimesError, Exception)


def prepared():
    e = Engine()
    p1_prefix(e)
    e.alloc(Y, N, D, "b.py:1")
    e.copy_to_host(H, 64, S, "b.py:2")
    return e


def _no_setup(e):
    pass


BIG = 1 << 64
TOO_NEGATIVE = -(1 << 63) - 1

# name: (setup, call, error class, texts of which the message must contain one)
BAD_CALLS = {
    "free unknown pointer": (_no_setup, lambda e: e.free(Z), UnknownStorageError, [hex(Z)]),
    "free interior pointer": (
        _no_setup,
        lambda e: e.free(X + 8),
        UnknownStorageError,
        [hex(X + 8)],
    ),
    "double free": (lambda e: e.free(Y), lambda e: e.free(Y), UnknownStorageError, [hex(Y)]),
    "access outside any storage": (
        _no_setup,
        lambda e: e.access(Z, 8, S),
        UnknownStorageError,
        [hex(Z)],
    ),
    "access of a freed storage": (
        lambda e: e.free(Y),
        lambda e: e.access(Y, 8, S),
        UnknownStorageError,
        [hex(Y)],
    ),
    "access past the end": (
        _no_setup,
        lambda e: e.access(X + N - 4, 8, S),
        UnknownStorageError,
        [hex(X + N - 4)],
    ),
    "access spanning two storages": (
        lambda e: e.alloc(X + N, 64, D),
        lambda e: e.access(X + N - 4, 8, D),
        UnknownStorageError,
        [hex(X + N - 4)],
    ),
    "record_stream on no storage": (
        _no_setup,
        lambda e: e.record_stream(Z + 4, S),
        UnknownStorageError,
        [hex(Z + 4)],
    ),
    "overlapping alloc": (
        _no_setup,
        lambda e: e.alloc(X + 16, 16, D),
        UnknownStorageError,
        [hex(X + 16)],
    ),
    "alloc overlapping the start": (
        _no_setup,
        lambda e: e.alloc(Y - 8, 16, D),
        UnknownStorageError,
        [hex(Y - 8)],
    ),
    "alloc zero size": (_no_setup, lambda e: e.alloc(Z, 0, D), InvalidArgumentError, ["0"]),
    "adopt zero size": (_no_setup, lambda e: e.adopt(Z, 0, D), InvalidArgumentError, ["0"]),
    "adopt negative size": (
        _no_setup,
        lambda e: e.adopt(Z, -16, D),
        InvalidArgumentError,
        ["-16"],
    ),
    "adopt overlapping a live storage": (
        _no_setup,
        lambda e: e.adopt(X + 16, 16, D),
        UnknownStorageError,
        [hex(X + 16)],
    ),
    "adopt overlapping the start": (
        _no_setup,
        lambda e: e.adopt(Y - 8, 16, D),
        UnknownStorageError,
        [hex(Y - 8)],
    ),
    "adopt pointer out of range": (
        _no_setup,
        lambda e: e.adopt(BIG, 8, D),
        InvalidArgumentError,
        [hex(BIG), str(BIG)],
    ),
    "adopt non-int pointer": (
        _no_setup,
        lambda e: e.adopt("0x10", 8, D),
        InvalidArgumentError,
        None,
    ),
    "adopt stream handle out of range": (
        _no_setup,
        lambda e: e.adopt(Z, 8, BIG),
        InvalidArgumentError,
        [str(BIG), hex(BIG)],
    ),
    "adopt site of a wrong type": (
        _no_setup,
        lambda e: e.adopt(Z, 8, D, 3.25),
        InvalidArgumentError,
        None,
    ),
    "alloc negative size": (
        _no_setup,
        lambda e: e.alloc(Z, -16, D),
        InvalidArgumentError,
        ["-16"],
    ),
    "access zero size": (_no_setup, lambda e: e.access(X, 0, S), InvalidArgumentError, ["0"]),
    "access negative size": (
        _no_setup,
        lambda e: e.access(X, -3, S),
        InvalidArgumentError,
        ["-3"],
    ),
    "copy zero size": (
        _no_setup,
        lambda e: e.copy_to_host(H, 0, S),
        InvalidArgumentError,
        ["0"],
    ),
    "host_access negative size": (
        _no_setup,
        lambda e: e.host_access(H, -2, False),
        InvalidArgumentError,
        ["-2"],
    ),
    "host_release zero size": (
        _no_setup,
        lambda e: e.host_release(H, 0),
        InvalidArgumentError,
        ["0"],
    ),
    "non-int pointer (float)": (_no_setup, lambda e: e.free(1.5), InvalidArgumentError, None),
    "non-int pointer (str)": (
        _no_setup,
        lambda e: e.alloc("0x10", 8, D),
        InvalidArgumentError,
        None,
    ),
    "non-int pointer (None)": (
        _no_setup,
        lambda e: e.access(None, 8, D),
        InvalidArgumentError,
        None,
    ),
    "pointer out of range": (
        _no_setup,
        lambda e: e.alloc(BIG, 8, D),
        InvalidArgumentError,
        [hex(BIG), str(BIG)],
    ),
    "stream handle out of range": (
        _no_setup,
        lambda e: e.stream_wait(S, BIG),
        InvalidArgumentError,
        [str(BIG), hex(BIG)],
    ),
    "stream handle too negative": (
        _no_setup,
        lambda e: e.stream_synchronize(TOO_NEGATIVE),
        InvalidArgumentError,
        [str(TOO_NEGATIVE), hex(TOO_NEGATIVE)],
    ),
    "stream handle not an int": (
        _no_setup,
        lambda e: e.access(X, 8, "s"),
        InvalidArgumentError,
        None,
    ),
    "event handle out of range": (
        _no_setup,
        lambda e: e.event_record(BIG, S),
        InvalidArgumentError,
        [str(BIG), hex(BIG)],
    ),
    "site of a wrong type": (
        _no_setup,
        lambda e: e.alloc(Z, 8, D, 3.25),
        InvalidArgumentError,
        None,
    ),
    "site int never interned": (
        _no_setup,
        lambda e: e.access(X, 8, S, False, 987_654_321),
        InvalidArgumentError,
        ["987654321", hex(987_654_321)],
    ),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_named_error_and_changes_nothing(name):
    setup, call, cls, texts = BAD_CALLS[name]
    e = prepared()
    setup(e)
    before = snapshot(e)
    with pytest.raises(cls) as info:
        call(e)
    assert isinstance(info.value, LifetimesError)
    if texts is not None:
        msg = str(info.value).lower()
        assert any(t.lower() in msg for t in texts), (texts, str(info.value))
    assert snapshot(e) == before
    # and the engine still works and still finds what it found before
    e.free(X, "ex.py:4")
    e.flush()
    assert "unsynced-free" in kinds(e)


WRONG_TYPES = {
    "write flag a str": lambda e: e.access(X, 8, S, "yes"),
    "complete flag None": lambda e: e.stream_query(S, None),
    "stream name an int": lambda e: e.define_stream(S, 5),
    "virtual flag a str": lambda e: e.define_stream(S, None, "x"),
    "hazards since negative": lambda e: e.hazards(-1),
    "intern of an int": lambda e: e.intern(5),
}


@pytest.mark.parametrize("name", list(WRONG_TYPES))
def test_every_error_the_engine_raises_is_a_lifetimes_error(name):
    # ENGINE-API.md: "Every error the engine raises derives from LifetimesError".
    e = prepared()
    before = snapshot(e)
    with pytest.raises(LifetimesError):
        WRONG_TYPES[name](e)
    assert snapshot(e) == before


def test_state_after_error_keeps_earlier_hazards_and_storages():
    e = Engine()
    p1_prefix(e)
    e.free(X, "ex.py:4")
    with pytest.raises(UnknownStorageError):
        e.free(X, "ex.py:4")
    e.alloc(X, N, D, "ex.py:5")
    with pytest.raises(UnknownStorageError):
        e.alloc(X, N, D, "ex.py:5")
    assert kinds(e) == ["unsynced-free", "reuse-race"]


# ------------------------------------------------------------------ bulk path


def p1_rows():
    return [
        [ops.ALLOC, X, N, D],
        [ops.WRITE, X, N, D],
        [ops.STREAM_WAIT, S, D, 0],
        [ops.READ, X, N, S],
        [ops.EVENT_RECORD, 3, S, 0],
        [ops.FREE, X, 0, 0],
        [ops.ALLOC, X, N, D],
        [ops.RECORD_STREAM, X, D, 0],
        [ops.READ, X + 8, 8, S2],
        [ops.WRITE, X, 16, S],
        [ops.ADOPT, Z, N, S],  # after S's work, but adopted: never an unwaited-allocation
        [ops.READ, Z, 8, S2],
        [ops.EVENT_WAIT, 3, D, 0],
        [ops.EVENT_SYNC, 3, 0, 0],
        [ops.STREAM_SYNC, S2, 0, 0],
        [ops.DEVICE_SYNC, 0, 0, 0],
        [ops.FREE, X, 0, 0],
        [ops.FREE, Z, 0, 0],
        [ops.FLUSH, 0, 0, 0],
    ]


def apply_rows(e, rows):
    for op, a, b, c in rows:
        if op == ops.ALLOC:
            e.alloc(a, b, c)
        elif op in (ops.READ, ops.WRITE):
            e.access(a, b, c, op == ops.WRITE)
        elif op == ops.FREE:
            e.free(a)
        elif op == ops.RECORD_STREAM:
            e.record_stream(a, b)
        elif op == ops.EVENT_RECORD:
            e.event_record(a, b)
        elif op == ops.EVENT_WAIT:
            e.event_wait(a, b)
        elif op == ops.STREAM_WAIT:
            e.stream_wait(a, b)
        elif op == ops.STREAM_SYNC:
            e.stream_synchronize(a)
        elif op == ops.EVENT_SYNC:
            e.event_synchronize(a)
        elif op == ops.DEVICE_SYNC:
            e.device_synchronize()
        elif op == ops.ADOPT:
            e.adopt(a, b, c)
        else:
            assert op == ops.FLUSH
            e.flush()


def test_replay_agrees_with_one_call_per_event():
    rows = p1_rows()
    bulk, single = Engine(), Engine()
    assert bulk.replay(np.array(rows, dtype=np.int64)) == len(rows)
    apply_rows(single, rows)
    got = [h.to_dict() for h in bulk.hazards()]
    assert got == [h.to_dict() for h in single.hazards()]
    assert [h["kind"] for h in got] == [
        "unsynced-free",  # judged at the second ALLOC on D
        "reuse-race",
        "unwaited-allocation",  # S2 reads X, allocated after D's work, without a wait
        "unsynced-access",
        "redundant-record-stream",  # the RECORD_STREAM on D, emitted at FLUSH
    ]
    assert got[0]["other_ptr"] == X and got[2]["use_stream"] == S2
    for key in ("live_storages", "streams", "events", "hazards"):
        assert bulk.stats()[key] == single.stats()[key]


def test_replay_in_chunks_equals_replay_at_once():
    rows = np.array(p1_rows() * 3, dtype=np.int64)
    whole, chunked = Engine(), Engine()
    whole.replay(rows)
    for i in range(0, len(rows), 4):
        chunked.replay(np.ascontiguousarray(rows[i : i + 4]))
    assert [h.to_dict() for h in whole.hazards()] == [h.to_dict() for h in chunked.hazards()]


def test_replay_empty_array_applies_nothing():
    e = Engine()
    assert e.replay(np.zeros((0, 4), dtype=np.int64)) == 0
    assert e.hazards() == []


def test_replay_bad_row_names_its_index_and_applies_the_rows_before():
    rows = [
        [ops.ALLOC, X, N, D],
        [ops.READ, X, N, S],
        [ops.FREE, X, 0, 0],  # pending: an unsynced-free at the next ALLOC on D or FLUSH
        [ops.FREE, Y, 0, 0],  # row 3: unknown storage
        [ops.ALLOC, Y, N, D],  # never applied
    ]
    e = Engine()
    with pytest.raises(UnknownStorageError) as info:
        e.replay(np.array(rows, dtype=np.int64))
    assert re.search(r"\b3\b", str(info.value)), str(info.value)
    assert e.storage_at(Y) is None
    assert (e.stats()["live_storages"], e.stats()["pending_frees"]) == (0, 1)
    assert kinds(e) == []
    e.flush()
    assert kinds(e) == ["unsynced-free"]


@pytest.mark.parametrize(
    "row, cls",
    [
        ([99, 0, 0, 0], InvalidArgumentError),  # unknown op code
        ([-1, 0, 0, 0], InvalidArgumentError),
        ([ops.ALLOC, Y, 0, D], InvalidArgumentError),  # zero size
        ([ops.READ, Y, -4, D], InvalidArgumentError),
        ([ops.READ, Z, 8, D], UnknownStorageError),
        ([ops.ALLOC, X + 8, 8, D], UnknownStorageError),
        ([ops.ADOPT, X + 8, 8, D], UnknownStorageError),  # adopt: the errors of alloc
        ([ops.ADOPT, Y, 0, D], InvalidArgumentError),
        ([ops.ADOPT, Y, -8, D], InvalidArgumentError),
        ([ops.RECORD_STREAM, Z, S, 0], UnknownStorageError),
    ],
)
def test_replay_bad_row_class_and_index(row, cls):
    e = Engine()
    rows = [[ops.ALLOC, X, N, D], [ops.WRITE, X, N, D], row, [ops.FREE, X, 0, 0]]
    with pytest.raises(cls) as info:
        e.replay(np.array(rows, dtype=np.int64))
    assert re.search(r"\b2\b", str(info.value)), str(info.value)
    assert e.storage_at(X) == (X, N, D)  # rows 0-1 applied, row 3 not


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((3, 4), dtype=np.float64),
        np.zeros((3, 4), dtype=np.int32),
        np.zeros((3, 3), dtype=np.int64),
        np.zeros((12,), dtype=np.int64),
        np.zeros((3, 4, 1), dtype=np.int64),
        np.zeros((4, 3), dtype=np.int64).T,  # shape (3, 4), not C-contiguous
        [[10, 0, 0, 0]],
    ],
    ids=["float64", "int32", "3-cols", "1-d", "3-d", "fortran", "list"],
)
def test_replay_malformed_array_is_invalid_argument(array):
    e = Engine()
    p1_prefix(e)
    before = snapshot(e)
    with pytest.raises(InvalidArgumentError):
        e.replay(array)
    assert snapshot(e) == before


# -------------------------------------------------------------------- threads


def test_threads_hammering_one_engine_lose_no_hazards():
    e = Engine()
    threads_n, rounds = 8, 400
    errors = []
    barrier = threading.Barrier(threads_n)

    def worker(t):
        try:
            base = X + t * 0x100_0000
            d, s = 100 + 2 * t, 101 + 2 * t  # each thread its own streams and addresses
            site = f"t{t}.py:"
            barrier.wait()
            for i in range(rounds):
                ptr = base + (i % 4) * 0x1000
                e.alloc(ptr, 256, d, site + "1")
                e.access(ptr, 256, d, True, site + "1")
                e.stream_wait(s, d)
                e.access(ptr, 128, s, False, site + "2")
                e.record_stream(ptr, d, site + "3")  # advice every round
                e.free(ptr, site + "4")  # unsynced-free every round
                e.hazards(e.hazard_count())
                e.stats()
                with pytest.raises(UnknownStorageError):
                    e.free(ptr)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    e.flush()  # the last round's free of each thread, and the advice
    by = {(h.kind, h.use_site): h.count for h in e.hazards()}
    for t in range(threads_n):
        assert by[("unsynced-free", f"t{t}.py:2")] == rounds
        assert by[("redundant-record-stream", f"t{t}.py:3")] == rounds
        # frees of slot i are reused by the alloc of round i + 4
        assert by[("reuse-race", f"t{t}.py:2")] == rounds - 4
    assert e.hazard_count() == 3 * threads_n
    assert e.stats()["live_storages"] == 0
