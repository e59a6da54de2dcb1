"""``@checked``: full tracking for each call; storages stay watched after the call."""

from __future__ import annotations

import os
import subprocess
import sys

import esper_lifetimes
import pytest
import torch
from conftest import tag_of
from esper_lifetimes import LifetimeHazardError, LifetimeHazardWarning, tracking, virtual

N = 4096
S = virtual.Stream(name="side")
D = virtual.default_stream()


@esper_lifetimes.checked
def racy_read(a):
    with virtual.stream(S):
        return a * 5  # @use


@esper_lifetimes.checked(on_hazard="collect")
def hand_to_side(x):
    """Reads x on the side stream and returns: x is freed later, by the caller."""
    S.wait_stream(D)
    with virtual.stream(S):
        return x * 2  # @side-use


@esper_lifetimes.checked(on_hazard="raise")
def make(n):
    return torch.randn(n)  # @alloc


@esper_lifetimes.checked(on_hazard="raise")
def noop():
    return None


def test_a_hazard_inside_a_call_raises():
    a = torch.rand(N)  # before tracking: first seen as an input, no write known
    racy_read(a)
    a2 = make(N)  # written on the default stream in a decorated call
    with pytest.raises(LifetimeHazardError) as info:
        racy_read(a2)
    h = info.value.hazards[0]
    assert h.kind == "unsynced-access"
    assert tag_of(h.use_site) == "use"
    assert tag_of(h.alloc_site) == "alloc"


def test_storages_stay_watched_after_the_call_and_report_at_the_next_call():
    x = make(N)  # allocated in a decorated call: watched from now on
    y = hand_to_side(x)  # read on the side stream; collect: nothing raised
    # freed outside any call: found now, reported at the next call
    del x  # @free
    tr = esper_lifetimes.checked_tracker()
    assert [h.kind for h in tr.errors] == ["unsynced-free"]
    h = tr.errors[0]
    assert tag_of(h.use_site) == "side-use"
    assert tag_of(h.free_site) == "free"
    assert tag_of(h.alloc_site) == "alloc"
    # The storage was registered by make(), whose policy is "raise": the next decorated
    # call is the safe point where it raises.
    with pytest.raises(LifetimeHazardError) as info:
        noop()
    assert [h.kind for h in info.value.hazards] == ["unsynced-free"]
    noop()  # reported once
    del y


def test_policy_of_a_later_hazard_is_the_one_of_the_call_that_registered_the_storage():
    @esper_lifetimes.checked(on_hazard="warn")
    def make_w(n):
        return torch.randn(n)

    @esper_lifetimes.checked(on_hazard="collect")
    def quiet():
        return None

    x = make_w(N)
    y = hand_to_side(x)
    del x
    with pytest.warns(LifetimeHazardWarning):
        quiet()
    del y


def test_disabled_decorator_calls_the_function_directly():
    calls = []

    @esper_lifetimes.checked
    def f(v):
        calls.append(torch._C._len_torch_dispatch_stack())
        return v + 1

    tracking.disable()
    assert not tracking.is_enabled()
    assert f(1) == 2
    assert calls == [0]
    tracking.enable()
    assert f(1) == 2
    assert calls == [0, 1]


def test_the_environment_variable_turns_it_off():
    code = (
        "import esper_lifetimes, torch\n"
        "from esper_lifetimes import tracking\n"
        "@esper_lifetimes.checked\n"
        "def f():\n"
        "    return torch._C._len_torch_dispatch_stack()\n"
        "print(tracking.is_enabled(), f())\n"
    )
    env = dict(os.environ, ESPER_LIFETIMES="off")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "0"]


def test_wrapper_keeps_the_functions_identity():
    assert racy_read.__name__ == "racy_read"
    assert hand_to_side.__doc__.startswith("Reads x")
    assert racy_read.__wrapped__.__name__ == "racy_read"


def test_nested_and_recursive_calls_are_tracked_once():
    depths = []

    @esper_lifetimes.checked
    def rec(k):
        depths.append(torch._C._len_torch_dispatch_stack())
        return rec(k - 1) if k else torch.ones(1)

    rec(3)
    assert depths == [1, 1, 1, 1]


def test_a_checked_call_inside_a_region_is_tracked_by_the_region():
    with esper_lifetimes.track("collect") as t:
        a = torch.rand(N)
        with virtual.stream(S):
            b = a * 5
        noop()
    assert [h.kind for h in t.errors] == ["unsynced-access"]
    assert esper_lifetimes.checked_tracker().hazards == []
    del b


def test_exceptions_propagate_and_everything_is_restored():
    @esper_lifetimes.checked
    def boom():
        torch.ones(1)
        raise ValueError("x")

    with pytest.raises(ValueError):
        boom()
    assert torch._C._len_torch_dispatch_stack() == 0
    assert not esper_lifetimes.patches.installed()


def test_overhead_when_disabled_is_one_attribute_check():
    # The disabled path is `if not cfg.enabled: return f(*args, **kwargs)`.
    import timeit

    def plain(v):
        return v

    wrapped = esper_lifetimes.checked(plain)
    tracking.disable()
    n = 100_000
    best = min
    t_plain = best(timeit.repeat(lambda: plain(1), number=n, repeat=5))
    t_wrapped = best(timeit.repeat(lambda: wrapped(1), number=n, repeat=5))
    # one extra Python call frame and one attribute load: well under a microsecond
    assert (t_wrapped - t_plain) / n < 1e-6
