"""Several threads: each tracks its own region; streams, modes and patches stay per
thread; ``@checked`` shares one engine across threads."""

from __future__ import annotations

import threading

import esper_lifetimes
import torch
from conftest import verdict
from esper_lifetimes import virtual

N = 4096


def _run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported to the main thread
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def test_each_thread_gets_its_own_verdict():
    results = {}
    barrier = threading.Barrier(4)

    def racy(name):
        def body():
            s = virtual.Stream(name=f"{name}-side")
            barrier.wait()
            with esper_lifetimes.track("collect") as t:
                for _ in range(20):
                    x = torch.randn(N)
                    s.wait_stream(virtual.default_stream())
                    with virtual.stream(s):
                        y = x * 2  # @use
                    del x
                    del y
            results[name] = t

        return body

    def clean(name):
        def body():
            s = virtual.Stream(name=f"{name}-side")
            barrier.wait()
            with esper_lifetimes.track("collect") as t:
                for _ in range(20):
                    x = torch.randn(N)
                    s.wait_stream(virtual.default_stream())
                    with virtual.stream(s):
                        y = x * 2
                    x.record_stream(s)
                    del x
                    del y
            results[name] = t

        return body

    _run_threads([racy("r1"), clean("c1"), racy("r2"), clean("c2")])
    for name in ("r1", "r2"):
        t = results[name]
        assert [v for v in verdict(t) if v[0] != "reuse-race"] == [("unsynced-free", "use")]
        assert t.errors[0].use_stream_name == f"{name}-side"
        assert t.diagnostics == []
    for name in ("c1", "c2"):
        assert results[name].hazards == [], results[name].report()
        assert results[name].diagnostics == []
    assert torch._C._len_torch_dispatch_stack() == 0
    assert not esper_lifetimes.patches.installed()


def test_the_current_virtual_stream_is_per_thread():
    s = virtual.Stream(name="mine")
    seen = []
    with virtual.stream(s):
        th = threading.Thread(target=lambda: seen.append(virtual.current_stream()))
        th.start()
        th.join()
        assert virtual.current_stream() is s
    assert seen == [virtual.default_stream()]


def test_ops_on_a_thread_started_inside_the_region_are_seen_by_its_tracker():
    # (SEMANTICS.md: what the tracker cannot see must be said) the region follows the
    # threads it starts; each runs on its own current stream
    s = virtual.Stream(name="s")
    with esper_lifetimes.track("collect") as t:
        a = torch.rand(N)

        def other():
            with virtual.stream(s):
                a.mul_(2)  # @use

        th = threading.Thread(target=other)
        th.start()
        th.join()
        b = a + 1  # @read
    assert verdict(t) == [("unsynced-access", "read"), ("unsynced-access", "use")]
    del b


def test_checked_calls_from_several_threads_share_one_engine():
    side = {}

    @esper_lifetimes.checked(on_hazard="collect")
    def work(name):
        s = side.setdefault(name, virtual.Stream(name=name))
        x = torch.randn(N)
        s.wait_stream(virtual.default_stream())
        with virtual.stream(s):
            y = x * 2  # @use
        del x  # a free with an uncovered use on the side stream
        return y

    def body(name):
        def run():
            for _ in range(10):
                work(name)

        return run

    _run_threads([body(f"t{i}") for i in range(4)])
    tr = esper_lifetimes.checked_tracker()
    esper_lifetimes.flush_checked()  # the last free is judged at the end (version 2)
    kinds = {h.kind for h in tr.errors}
    assert "unsynced-free" in kinds and kinds <= {"unsynced-free", "reuse-race"}
    free = [h for h in tr.errors if h.kind == "unsynced-free"]
    assert sum(h.count for h in free) == 40
    assert tr.diagnostics == []
    assert not esper_lifetimes.patches.installed()
