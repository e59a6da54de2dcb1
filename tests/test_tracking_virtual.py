"""The virtual stream API (``esper_lifetimes.virtual``) and its semantics under tracking."""

from __future__ import annotations

import esper_lifetimes
import pytest
import torch
from conftest import verdict
from esper_lifetimes import virtual

N = 4096


def test_streams_have_readable_names_and_unique_handles():
    a = virtual.Stream(name="env3")
    b = virtual.Stream()
    assert repr(a) == "virtual.Stream(name='env3')"
    assert a.name == "env3"
    assert b.name.startswith("vstream")
    assert a.handle != b.handle != virtual.default_stream().handle
    assert repr(virtual.default_stream()) == "virtual.Stream(name='default')"
    assert virtual.Stream(priority=-1, name="hi").priority == -1


def test_current_stream_context_nests_and_restores():
    d = virtual.default_stream()
    s1, s2 = virtual.Stream(name="s1"), virtual.Stream(name="s2")
    assert virtual.current_stream() is d
    with virtual.stream(s1) as got:
        assert got is s1 and virtual.current_stream() is s1
        with virtual.stream(s2):
            assert virtual.current_stream() is s2
        with virtual.stream(None):
            assert virtual.current_stream() is s1
        assert virtual.current_stream() is s1
    assert virtual.current_stream() is d
    with s2:
        assert virtual.current_stream() is s2
    virtual.set_stream(s1)
    assert virtual.current_stream() is s1
    virtual.set_stream(None)
    assert virtual.current_stream() is d


def test_stream_api_rejects_foreign_objects():
    s = virtual.Stream(name="s")
    with pytest.raises(TypeError):
        s.wait_stream(object())
    with pytest.raises(TypeError):
        s.wait_event(object())
    with pytest.raises(TypeError):
        virtual.stream(object())


def test_stream_names_reach_the_reports():
    s = virtual.Stream(name="env7")
    with esper_lifetimes.track("collect") as t:
        late = virtual.Stream(name="late")  # created while tracking
        a = torch.rand(N)
        with virtual.stream(s):
            b = a * 5
        with virtual.stream(late):
            c = a * 5
    assert sorted(h.use_stream_name for h in t.errors) == ["env7", "late"]
    del b, c


def test_work_on_a_virtual_stream_stays_in_flight_until_the_host_syncs_it():
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(N)
        s.wait_stream(virtual.default_stream())
        with virtual.stream(s):
            y = x * 2
        del x
    assert [h.live for h in t.errors] == [True]
    del y


@pytest.mark.parametrize(
    "sync",
    ["stream", "device", "event_sync", "event_wait_by_default", "query_twice"],
)
def test_host_and_stream_synchronization_cover_the_use(sync):
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(N)
        s.wait_stream(D)
        with virtual.stream(s):
            y = x * 2
        if sync == "stream":
            s.synchronize()
        elif sync == "device":
            virtual.synchronize()
        elif sync == "event_sync":
            ev = s.record_event()
            ev.synchronize()
        elif sync == "event_wait_by_default":
            ev = virtual.Event()
            ev.record(s)
            ev.wait(D)  # D waits for s's read: the allocation stream covers the use
        else:
            assert s.query() is False  # in flight: the read is pending
            assert s.query() is True  # polled until done: now complete
        del x
    assert t.errors == [], t.report()
    del y


def test_query_answers_true_when_nothing_is_pending():
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect"):
        assert s.query() is True
        torch.ones(1)
        with virtual.stream(s):
            torch.ones(1)
        assert s.query() is False
        assert s.query() is True
        s.synchronize()
        with virtual.stream(s):
            torch.ones(1)
        s.synchronize()
        assert s.query() is True


def test_event_query_false_once_then_true():
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect"):
        with virtual.stream(s):
            torch.ones(1)
        ev = s.record_event()
        assert ev.query() is False
        assert ev.query() is True
        e2 = virtual.Event()
        assert e2.query() is True  # never recorded
        virtual.synchronize()
        with virtual.stream(s):
            torch.ones(1)
        e3 = s.record_event()
        virtual.synchronize()
        assert e3.query() is True  # the device sync completed it


def test_a_query_that_returned_false_makes_the_hazard_live():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(N)
        s.wait_stream(D)
        with virtual.stream(s):
            y = x * 2
        assert s.query() is False
        del x
    assert [(h.kind, h.live) for h in t.errors] == [("unsynced-free", True)]
    del y


def test_waiting_on_an_event_never_recorded_is_a_no_op():
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect") as t:
        a = torch.rand(N)  # @write
        ev = virtual.Event()
        s.wait_event(ev)  # never recorded: orders nothing
        with virtual.stream(s):
            b = a * 5  # @use
    assert verdict(t) == [("unsynced-access", "use")]
    del b


def test_event_record_and_wait_order_two_streams():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with esper_lifetimes.track("collect") as t:
        a = torch.rand(N)
        ev = virtual.Event()
        ev.record()  # on the current stream, D
        ev.wait(s)
        with virtual.stream(s):
            b = a * 5
        ev2 = s.record_event()
        D.wait_event(ev2)
        a.zero_()  # ordered after s's read
    assert t.hazards == [], t.report()
    assert ev.elapsed_time(ev2) == 0.0
    del b


def test_record_stream_with_a_virtual_stream_works_while_tracking():
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(N)
        s.wait_stream(virtual.default_stream())
        with virtual.stream(s):
            y = x * 2
        x.record_stream(s)
        del x
    assert t.hazards == []
    del y


def test_pin_memory_and_copies_mark_host_memory():
    t0 = torch.ones(16)
    p = virtual.pin_memory(t0)
    assert virtual.is_host(p) and not virtual.is_host(t0)
    assert torch.equal(p, t0)
    h = virtual.to_host(torch.full((4,), 2.0))
    assert virtual.is_host(h) and h.tolist() == [2.0] * 4
    d = virtual.to_device(p)
    assert not virtual.is_host(d) and torch.equal(d, t0)


def test_a_blocking_host_read_synchronizes_the_current_stream():
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(N)
        s.wait_stream(D)
        with virtual.stream(s):
            y = x * 2
            y.tolist()  # blocking read on s: the host has seen s's work
        del x
    assert t.errors == [], t.report()
    del y


@pytest.mark.parametrize("read", ["item", "tolist", "numpy", "print", "cpu"])
def test_every_blocking_host_read_of_device_memory_is_a_sync(read, capsys):
    s = virtual.Stream(name="s")
    D = virtual.default_stream()
    with esper_lifetimes.track("collect") as t:
        x = torch.randn(N)
        s.wait_stream(D)
        with virtual.stream(s):
            y = x * 2
            z = y.sum()
            if read == "item":
                z.item()
            elif read == "tolist":
                z.tolist()
            elif read == "numpy":
                z.numpy()
            elif read == "print":
                print(z)
            else:
                z.cpu()
        del x
    assert t.errors == [], (read, t.report())
    del y, z
