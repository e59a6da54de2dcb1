"""``@checked``: full tracking for each call; storages stay watched after the call."""

from __future__ import annotations

import asyncio
import inspect
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


def test_storages_stay_watched_after_the_call_and_report_at_the_next_call(fresh_checked):
    x = make(N)  # allocated in a decorated call: watched from now on
    y = hand_to_side(x)  # read on the side stream; collect: nothing raised
    # freed outside any call: pending (SEMANTICS.md: judged when its bytes can next be
    # handed out, the next allocation on its stream), reported at the call that does it
    del x  # @free
    tr = esper_lifetimes.checked_tracker()
    assert tr.errors == []
    noop()  # allocates nothing: no verdict yet
    # The storage was registered by make(), whose policy is "raise": the decorated call
    # whose allocation takes the verdict is the safe point where it raises.
    with pytest.raises(LifetimeHazardError) as info:
        make(N)
    kinds = [h.kind for h in info.value.hazards]
    # the new block may be x's own (a reuse-race against the side stream's read, too)
    assert kinds[0] == "unsynced-free" and set(kinds) <= {"unsynced-free", "reuse-race"}
    h = info.value.hazards[0]
    assert tag_of(h.use_site) == "side-use"
    assert tag_of(h.free_site) == "free"
    assert tag_of(h.alloc_site) == "alloc"
    assert tag_of(h.other_site) == "alloc"  # the allocation that took the verdict
    noop()  # reported once
    del y


def test_policy_of_a_later_hazard_is_the_one_of_the_call_that_registered_the_storage(
    fresh_checked,
):
    @esper_lifetimes.checked(on_hazard="warn")
    def make_w(n):
        return torch.randn(n)

    @esper_lifetimes.checked(on_hazard="collect")
    def quiet():
        return torch.randn(N)  # the allocation on the default stream: the verdict

    x = make_w(N)
    y = hand_to_side(x)
    del x
    with pytest.warns(LifetimeHazardWarning):
        quiet()
    del y


def test_flush_checked_reports_a_free_after_the_last_call(fresh_checked):
    x = make(N)
    y = hand_to_side(x)
    del x  # @late-free
    # no decorated call follows: flush_checked() is the safe point asked for
    with pytest.raises(LifetimeHazardError) as info:
        esper_lifetimes.flush_checked()
    h = info.value.hazards[0]
    assert h.kind == "unsynced-free" and tag_of(h.free_site) == "late-free"
    assert esper_lifetimes.flush_checked() == []  # reported once
    del y


def test_flush_checked_under_collect_returns_the_errors(fresh_checked):
    @esper_lifetimes.checked(on_hazard="collect")
    def make_c(n):
        return torch.randn(n)

    x = make_c(N)
    y = hand_to_side(x)
    del x
    errors = esper_lifetimes.flush_checked()  # nothing raised: collect
    assert [h.kind for h in errors] == ["unsynced-free"]
    del y


def test_a_hazard_after_the_last_call_is_reported_at_exit():
    code = (
        "import torch, esper_lifetimes\n"
        "from esper_lifetimes import virtual as v\n"
        "S = v.Stream(name='side')\n"
        "@esper_lifetimes.checked(on_hazard='raise')\n"
        "def make():\n"
        "    return torch.randn(4096)\n"
        "@esper_lifetimes.checked(on_hazard='raise')\n"
        "def side(x):\n"
        "    S.wait_stream(v.default_stream())\n"
        "    with v.stream(S):\n"
        "        return x * 2\n"
        "x = make()\n"
        "y = side(x)\n"
        "del x  # the free, in the caller, after the last decorated call\n"
        "print('done')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["done"]
    assert "reported at exit" in out.stderr
    assert "ERROR unsynced-free" in out.stderr
    assert "<string>:14" in out.stderr  # the free's line


def test_disabled_decorator_calls_the_function_directly():
    calls = []

    @esper_lifetimes.checked
    def f(v):
        calls.append(torch._C._len_torch_dispatch_stack())
        return v + 1

    esper_lifetimes.disable()
    assert not tracking.is_enabled()
    assert f(1) == 2
    assert calls == [0]
    esper_lifetimes.enable()
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
    esper_lifetimes.disable()
    n = 100_000
    best = min
    t_plain = best(timeit.repeat(lambda: plain(1), number=n, repeat=5))
    t_wrapped = best(timeit.repeat(lambda: wrapped(1), number=n, repeat=5))
    # one extra Python call frame and one attribute load: well under a microsecond
    assert (t_wrapped - t_plain) / n < 1e-6


# -- generators, coroutines, descriptors (issue 10, item 1) ----------------------------


@pytest.fixture
def fresh_checked():
    tracking.reset_checked()
    yield
    tracking.reset_checked()


@esper_lifetimes.checked
def gen_racy(a):
    yield 1
    with virtual.stream(S):
        yield a * 5  # @gen-use


@esper_lifetimes.checked
async def coro_racy(a):
    await asyncio.sleep(0)
    with virtual.stream(S):
        return a * 5  # @coro-use


@esper_lifetimes.checked
async def agen_racy(a):
    yield 1
    await asyncio.sleep(0)
    with virtual.stream(S):
        yield a * 5  # @agen-use


def test_checked_keeps_the_kind_of_function():
    assert inspect.isgeneratorfunction(gen_racy)
    assert inspect.iscoroutinefunction(coro_racy)
    assert inspect.isasyncgenfunction(agen_racy)
    assert not inspect.isgeneratorfunction(racy_read)
    assert gen_racy.__name__ == "gen_racy" and gen_racy.__esper_checked__


def test_a_generator_body_is_tracked_across_its_yields(fresh_checked):
    a = make(N)  # written on the default stream
    g = gen_racy(a)
    assert next(g) == 1
    with pytest.raises(LifetimeHazardError) as info:
        next(g)  # the racy read runs in the body after the first yield
    h = info.value.hazards[0]
    assert h.kind == "unsynced-access"
    assert tag_of(h.use_site) == "gen-use"
    assert tag_of(h.alloc_site) == "alloc"


def test_a_generator_returns_its_value_and_the_consumer_is_not_tracked(fresh_checked):
    @esper_lifetimes.checked
    def counted(a):
        got = yield a + 1
        return got * 2

    a = make(N)
    g = counted(a)
    first = next(g)
    with virtual.stream(S):
        c = a * 5  # the consumer's own op, between the body's steps: not tracked
    with pytest.raises(StopIteration) as stop:
        g.send(3)
    assert stop.value.value == 6
    assert torch.equal(first, a + 1)
    assert esper_lifetimes.checked_tracker().errors == []
    assert torch._C._len_torch_dispatch_stack() == 0
    del c


def test_a_coroutine_body_is_tracked_across_its_awaits(fresh_checked):
    a = make(N)
    with pytest.raises(LifetimeHazardError) as info:
        asyncio.run(coro_racy(a))
    h = info.value.hazards[0]
    assert h.kind == "unsynced-access"
    assert tag_of(h.use_site) == "coro-use"


def test_an_async_generator_body_is_tracked(fresh_checked):
    a = make(N)

    async def consume():
        return [x async for x in agen_racy(a)]

    with pytest.raises(LifetimeHazardError) as info:
        asyncio.run(consume())
    assert tag_of(info.value.hazards[0].use_site) == "agen-use"


def test_clean_coroutine_and_generator_return_results(fresh_checked):
    @esper_lifetimes.checked
    async def double(x):
        await asyncio.sleep(0)
        return x * 2

    @esper_lifetimes.checked
    def twice(x):
        yield x
        yield x * 2

    a = make(8)
    assert torch.equal(asyncio.run(double(a)), a * 2)
    assert [t.sum().item() for t in twice(a)] == [a.sum().item(), (a * 2).sum().item()]
    assert esper_lifetimes.checked_tracker().errors == []


def test_checked_above_classmethod_and_staticmethod(fresh_checked):
    class K:
        @esper_lifetimes.checked
        @classmethod
        def cm(cls, a):
            with virtual.stream(S):
                return a * 5  # @cm-use

        @esper_lifetimes.checked
        @staticmethod
        def sm(a):
            with virtual.stream(S):
                return a * 5  # @sm-use

    a = make(N)
    with pytest.raises(LifetimeHazardError) as info:
        K.cm(a)
    assert tag_of(info.value.hazards[0].use_site) == "cm-use"
    b = make(N)
    with pytest.raises(LifetimeHazardError) as info:
        K().sm(b)
    assert tag_of(info.value.hazards[0].use_site) == "sm-use"


def test_checked_on_a_non_callable_fails_at_decoration():
    with pytest.raises(TypeError, match="needs a function"):
        esper_lifetimes.checked(property(lambda self: 1))


def test_a_checked_call_lists_the_registered_ops_once_per_process(monkeypatch):
    """Every @checked call outside a region installs the patches; the collectives' op
    names come from listing every registered op (about 8 ms with the filter), which
    must happen once per process, not per call."""
    from esper_lifetimes import distributed
    from esper_lifetimes.tracking import plans

    listed = []
    real = torch._C._dispatch_get_all_op_names

    def counting():
        listed.append(1)
        return real()

    monkeypatch.setattr(torch._C, "_dispatch_get_all_op_names", counting)
    monkeypatch.setattr(distributed, "_c10d_registered", False)

    @esper_lifetimes.checked
    def step(x):
        return x + 1

    x = torch.ones(N)
    for _ in range(3):
        step(x)
    assert len(listed) == 1
    assert plans.SPECIAL.get("c10d::allreduce_") == distributed._C10D_CODE


def test_a_checked_call_reuses_the_wrappers_of_the_last_install(monkeypatch):
    """Every @checked call outside a region installs the patches and restores them on
    return. The wrappers are built once and reused while the attribute they wrap still
    holds the same original; an attribute replaced meanwhile (another library's patch)
    gets a wrapper of its own around the new value, and the new value is what the call
    leaves behind."""
    from esper_lifetimes import patches

    seen = []

    @esper_lifetimes.checked
    def step(x):
        seen.append(torch.cuda.synchronize)
        return x + 1

    x = torch.ones(N)
    step(x)  # whatever earlier tests left: built here if at all
    built = []
    real = patches._wrap

    def counting(orig, feed):
        built.append(orig)
        return real(orig, feed)

    monkeypatch.setattr(patches, "_wrap", counting)
    step(x)
    step(x)
    assert built == []
    assert seen[1] is seen[2] and seen[1].__esper_patch__

    def library_sync(*args, **kwargs):  # another library's patch, outside any call
        return None

    monkeypatch.setattr(torch.cuda, "synchronize", library_sync)
    step(x)
    assert built == [library_sync]
    assert seen[3].__wrapped__ is library_sync
    assert torch.cuda.synchronize is library_sync  # restored to what it was
    assert not patches.installed()
